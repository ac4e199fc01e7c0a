"""The learner thread of a detector with no model yet: it outlives what goes wrong, and learns once."""

from __future__ import annotations

import threading
import time

import pytest
import structlog.testing

from dragon import config
from dragon.detector import learning
from dragon.detector.config import DetectorConfig
from dragon.detector.learning import OnlineLearner
from dragon.messages.schemas import HOST_METRICS
from dragon.store import StoredSample

pytestmark = pytest.mark.unit


class RecordedLei:
    """A WindowStore's reads: one host recorded long enough to learn from, after ``failures`` errors."""

    lei = "lei1"

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.reads = 0
        now = time.time()
        self._samples = [StoredSample(now - 60 + i, [0.1 + 0.01 * (i % 3)] * len(HOST_METRICS), {}) for i in range(60)]

    def hosts(self) -> list[str]:
        self.reads += 1
        if self.reads <= self.failures:
            raise RuntimeError("CUDA error: out of memory")  # as torch or anything unforeseen would
        return ["h1"]

    def all_stored(self, host: str) -> list[StoredSample]:
        return self._samples


class Models:
    """A ModelStore's lock and publish; ``published_meanwhile``: another replica publishes while
    this one reads the record, and unlocks before this one takes the lock."""

    def __init__(self, published_meanwhile: bool = False, current: str | None = None) -> None:
        self.published_meanwhile = published_meanwhile
        self.current = current
        self.published = 0

    def current_id(self) -> str | None:
        return self.current

    def try_lock(self, owner: str) -> bool:
        if self.published_meanwhile:
            self.current = "theirs"
        return True

    def unlock(self, owner: str) -> None:
        pass

    def replace(self, checkpoint, expected_id: str | None) -> bool:
        if self.current != expected_id:
            return False
        self.published += 1
        self.current = checkpoint.model_id
        return True


def learner_for(windows, models, monkeypatch, replaces: str | None = None) -> tuple[OnlineLearner, threading.Event]:
    monkeypatch.setattr(learning, "CHECK_INTERVAL_S", 0.01)
    monkeypatch.setattr(learning, "RETRY_AFTER_FAILURE_S", 0.01)
    settings = {"DRAGON_DETECTOR_WARMUP": "10", "DRAGON_DETECTOR_WARMUP_MIN_SAMPLES": "20"}
    cfg = config.load(DetectorConfig, settings | {"DRAGON_DETECTOR_TRAIN_EPOCHS": "1"})
    stop = threading.Event()
    return OnlineLearner(cfg, windows, models, stop, "lei1-0", replaces=replaces), stop


def run_until(learner: OnlineLearner, stop: threading.Event, done, timeout_s: float = 60.0) -> None:
    learner.start()
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    learner._thread.join(10)


def test_the_learner_outlives_an_error_it_did_not_foresee(monkeypatch) -> None:
    """A learner thread that died left the LEI without a model, every replica healthy and judging nothing."""
    windows, models = RecordedLei(failures=2), Models()
    learner, stop = learner_for(windows, models, monkeypatch)
    run_until(learner, stop, lambda: models.published)
    assert windows.reads > 2 and models.published == 1


def test_the_learner_does_not_overwrite_a_model_published_while_it_read_the_record(monkeypatch) -> None:
    """Every replica would recalibrate its thresholds to a second first model."""
    models = Models(published_meanwhile=True)
    learner, stop = learner_for(RecordedLei(), models, monkeypatch)
    run_until(learner, stop, lambda: not learner._thread.is_alive(), timeout_s=10)
    assert models.published == 0 and models.current == "theirs"


def test_a_learner_over_a_model_nobody_can_use_replaces_it(monkeypatch) -> None:
    """A model in Redis no replica can read (corrupt, or an older DRAGON's) kept every replica from
    learning: the learner took any model in Redis for one it need not learn."""
    models = Models(current="unreadable")
    learner, stop = learner_for(RecordedLei(), models, monkeypatch, replaces="unreadable")
    run_until(learner, stop, lambda: models.published)
    assert models.published == 1 and models.current not in (None, "unreadable")


def test_a_learner_over_a_model_nobody_can_use_leaves_one_another_replica_put_there(monkeypatch) -> None:
    models = Models(published_meanwhile=True, current="unreadable")
    learner, stop = learner_for(RecordedLei(), models, monkeypatch, replaces="unreadable")
    with structlog.testing.capture_logs() as logs:
        run_until(learner, stop, lambda: not learner._thread.is_alive(), timeout_s=10)
    assert models.published == 0 and models.current == "theirs"
    assert "learning_normal_operation" not in [e["event"] for e in logs]  # looked again under the lock


def test_a_learnt_model_is_not_published_over_one_the_replica_may_no_longer_replace(monkeypatch) -> None:
    """A newer DRAGON's replicas came back while a rolled-back replica learnt over their model."""
    models = Models(current="newer")
    learner, stop = learner_for(RecordedLei(), models, monkeypatch, replaces="newer")
    asked: list[str | None] = []
    learner.may_replace = lambda model_id: asked.append(model_id) or False
    run_until(learner, stop, lambda: not learner._thread.is_alive(), timeout_s=30)
    assert asked == ["newer"] and models.published == 0 and models.current == "newer"
