"""Confidence-gated on-line fine-tuning: the gate, fine_tune (eq. 19) and the replica's FineTuner."""

from __future__ import annotations

import dataclasses
import weakref
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pytest
import redis
import structlog.testing
import torch

from dragon.detector import learning
from dragon.detector.checkpoint import DEFAULT_HOST, Checkpoint
from dragon.detector.config import DetectorConfig
from dragon.detector.finetune import (
    CleanStreaks,
    ConfidenceGate,
    Unconfirmed,
    confidence,
    enough_to_recalibrate,
    fine_tune,
    model_age_s,
)
from dragon.detector.gon import GonConfig, evaluate_gon, fault_scores, make_windows
from dragon.detector.health import Transition
from dragon.detector.learning import FineTuner, min_span
from dragon.detector.scorer import Scorer, Verdict
from dragon.detector.service import Detector, Scored
from dragon.detector.train import train_from_series
from dragon.logs import EveryInterval
from dragon.messages.schemas import HOST_METRICS

pytestmark = pytest.mark.unit

WINDOW = 5
LEVELS = np.array([0.3, 0.4, 0.01, 1e6, 2e6, 1e5, 1e5])  # typical host metrics, in their units


def host_series(t: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """Raw host metrics (T, 7): a periodic load around LEVELS times ``scale``, with noise."""
    rng = np.random.default_rng(seed)
    steps = np.arange(t)[:, None]
    shape = 1 + 0.2 * np.sin(2 * np.pi * steps / 30 + np.arange(len(LEVELS)))
    return scale * LEVELS * shape + 0.05 * LEVELS * rng.standard_normal((t, len(LEVELS)))


def window_pairs(series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(W_t, W_{t+1}) for every step of a raw series: prev (T, k, n), next (T, k, n)."""
    nxt = make_windows(series, WINDOW).astype(np.float64)
    return np.concatenate([nxt[:1], nxt[:-1]]), nxt


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    cfg = GonConfig(n_features=len(HOST_METRICS), window=WINDOW, hidden=16, gen_steps=3, epochs=3)
    return train_from_series(host_series(200), HOST_METRICS, cfg, min_span=min_span(), source="unit-test")


@pytest.fixture(scope="module")
def drifted() -> tuple[np.ndarray, np.ndarray]:
    """Normal operation that moved: a heavier workload than the model was trained on."""
    return window_pairs(host_series(120, seed=1, scale=1.3))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fed_gate(values, clock=None, min_interval_s=0.0, quantile=0.01, host="h1") -> ConfidenceGate:
    gate = ConfidenceGate(min_interval_s, quantile, reference=60, recent=20, clock=clock or Clock())
    for value in values:
        gate.observe(host, value, normal=True)
    return gate


def stable(count: int, seed: int = 0) -> np.ndarray:
    return 0.6 + 0.01 * np.random.default_rng(seed).standard_normal(count)


# --- the gate --------------------------------------------------------------------------------


def test_gate_stays_quiet_while_confidence_is_stable():
    gate = fed_gate(stable(60))
    for value in stable(500, seed=1):
        gate.observe("h1", value, normal=True)
        assert gate.check() == []
    assert gate.mean_recent("h1") == pytest.approx(0.6, abs=0.01)


def test_gate_fires_when_confidence_drops():
    gate = fed_gate(stable(60))
    for value in stable(19, seed=1) - 0.1:
        gate.observe("h1", value, normal=True)
        assert gate.check() == []  # not enough recent windows yet
    gate.observe("h1", 0.5, normal=True)
    assert gate.check() == ["h1"]
    assert gate.mean_recent("h1") < gate.floor("h1") < 0.6


def test_gate_fires_only_for_the_host_that_dropped():
    gate = fed_gate(stable(60))
    for value in stable(60, seed=2):
        gate.observe("h2", value, normal=True)
    for value in stable(20, seed=3):
        gate.observe("h1", value - 0.1, normal=True)
        gate.observe("h2", value, normal=True)
    assert gate.check() == ["h1"]


def test_a_host_that_left_is_forgotten_by_the_gate_and_measures_its_reference_again_if_back():
    gate = ConfidenceGate(min_interval_s=0.0, quantile=0.05, reference=10, recent=3)
    for host, values in (("h1", [0.9] * 13), ("gone", [0.9] * 5)):  # gone: part of a reference
        for value in values:
            gate.observe(host, value, normal=True)
    gate.forget(["gone"])
    assert gate.floor("gone") is None and gate.floor("h1") is not None
    for value in [0.9] * 10 + [0.2] * 3:  # a whole reference anew, then a drop
        gate.observe("gone", value, normal=True)
    assert gate.check() == ["gone"]


def test_gate_respects_the_minimum_interval():
    clock = Clock()
    gate = fed_gate(stable(60), clock=clock, min_interval_s=100.0)
    for value in stable(20, seed=1) - 0.1:
        gate.observe("h1", value, normal=True)
    clock.now = 99.0
    assert gate.check() == []  # too soon after the model started serving
    clock.now = 100.0
    assert gate.check() == ["h1"]
    clock.now = 150.0
    assert gate.check() == []  # still low, but too soon after the last firing
    clock.now = 200.0
    assert gate.check() == ["h1"]


def test_gate_counts_the_interval_from_when_the_model_was_made():
    clock = Clock()
    gate = fed_gate(stable(60), clock=clock, min_interval_s=100.0)
    gate.reset(model_age_s=40.0)  # a restarted replica, serving a model made 40 s ago
    for value in stable(60):
        gate.observe("h1", value, normal=True)
    for value in stable(20, seed=1) - 0.1:
        gate.observe("h1", value, normal=True)
    clock.now = 59.0
    assert gate.check() == []
    clock.now = 60.0
    assert gate.check() == ["h1"]


def test_model_age_is_read_from_when_it_was_made_and_never_negative(checkpoint):
    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)

    def made(created_at) -> Checkpoint:
        return dataclasses.replace(checkpoint, meta={**checkpoint.meta, "created_at": created_at})

    assert model_age_s(made("2026-12-06T11:00:00+00:00"), now) == 3600.0
    assert model_age_s(made("2026-12-06T12:05:00+00:00"), now) == 0.0  # its maker's clock runs ahead
    for unknown in ("yesterday", "2026-12-06T11:00:00", None):  # unreadable, or no time zone
        assert model_age_s(made(unknown), now) == 0.0
    assert model_age_s(dataclasses.replace(checkpoint, meta={}), now) == 0.0


def test_gate_ignores_windows_judged_faulty():
    gate = fed_gate(stable(60))
    for _ in range(100):
        gate.observe("h1", 0.01, normal=False)
    assert gate.check() == []
    assert gate.mean_recent("h1") is None
    # Nor do faulty windows count towards the reference.
    fresh = ConfidenceGate(0.0, 0.01, reference=60, recent=20)
    for _ in range(100):
        fresh.observe("h1", 0.01, normal=False)
    assert fresh.floor("h1") is None


def test_gate_reset_starts_a_new_reference():
    gate = fed_gate(stable(60))
    for value in stable(20, seed=1) - 0.1:
        gate.observe("h1", value, normal=True)
    gate.reset()
    assert gate.floor("h1") is None
    assert gate.check() == []


def test_gate_hands_out_each_new_floor_once_and_adopts_a_stored_one():
    gate = fed_gate(stable(59))
    assert gate.new_floors() == {}  # the reference is not complete yet
    gate.observe("h1", 0.6, normal=True)
    floor = gate.floor("h1")
    assert gate.new_floors() == {"h1": floor} == gate.new_floors()  # until it is stored
    gate.floors_stored(["h1"])
    assert gate.new_floors() == {}
    # A restarted replica adopts the floor instead of measuring a new reference: 20 recent
    # windows and it judges, and the adopted floor is not handed out again as new.
    restarted = ConfidenceGate(0.0, 0.01, reference=60, recent=20)
    restarted.adopt_floor("h1", floor)
    for value in stable(20, seed=1) - 0.1:
        restarted.observe("h1", value, normal=True)
    assert restarted.check() == ["h1"] and restarted.new_floors() == {}


# --- fine_tune -------------------------------------------------------------------------------


def test_a_window_is_clean_once_a_whole_window_of_verdicts_was_normal():
    streaks = CleanStreaks()
    verdicts = [True, True, True, False, True, True, True, True]
    assert [streaks.update("h1", normal, window=3) for normal in verdicts] == [
        False, False, True, False, False, False, True, True,
    ]  # fmt: skip
    assert streaks.update("h2", True, window=3) is False  # each host counts its own
    assert streaks.update("h1", True, window=10) is False  # the window of the model now served


def test_a_clean_window_is_kept_once_lag_later_ones_were_clean_and_a_fault_s_onset_never():
    """Windows 3-4 scored just under the threshold before the alarm at 5: the fault's onset."""
    held = Unconfirmed(lag=2)
    clean = {0: True, 1: True, 2: True, 3: True, 4: True, 5: False, 6: True, 7: True, 8: True, 9: True}
    kept = [window for step, is_clean in clean.items() for window in held.offer("h1", step, is_clean)]
    assert kept == [0, 1, 2, 6, 7]
    assert held.offer("h2", 0, True) == [] and Unconfirmed(lag=0).offer("h1", 0, True) == [0]


def scaled(checkpoint: Checkpoint, windows: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(checkpoint.scaler().transform(windows), dtype=torch.float32)


def test_fine_tune_lowers_eq19_loss_and_separates_real_from_generated(checkpoint, drifted):
    prev, nxt = drifted
    tuned = fine_tune(checkpoint, prev, nxt, steps=10)
    real = scaled(checkpoint, nxt)
    before = evaluate_gon(checkpoint.build_model(), real, checkpoint.config)
    after = evaluate_gon(tuned.build_model(), real, tuned.config)
    assert after["loss"] < before["loss"] - 1e-3
    assert after["d_real"] - after["d_gen"] > before["d_real"] - before["d_gen"]
    assert after["d_real"] > before["d_real"]


def test_fine_tuned_checkpoint_is_a_new_model_with_recalibrated_pot(checkpoint, drifted):
    prev, nxt = drifted
    tuned = fine_tune(checkpoint, prev, nxt, steps=5, source="unit-test")
    assert tuned.model_id != checkpoint.model_id
    assert tuned.gon == checkpoint.gon
    assert tuned.feature_names == checkpoint.feature_names
    assert (tuned.lo, tuned.hi) == (checkpoint.lo, checkpoint.hi)
    assert tuned.meta["fine_tuned_from"] == checkpoint.model_id
    assert tuned.meta["fine_tune"]["windows"] == len(nxt)
    assert tuned.meta["fine_tune"]["steps"] == 5
    # POT is fitted on the new model's scores of the windows it was tuned on, with the same risk.
    expected = fault_scores(tuned.build_model(), scaled(checkpoint, prev), scaled(checkpoint, nxt), tuned.config)[0]
    np.testing.assert_allclose(tuned.calibration_tail, expected.double().numpy(), rtol=1e-6)
    pot, base = tuned.pot_state(), checkpoint.pot_state()
    assert pot.n == len(nxt) != base.n
    assert (pot.q, pot.level) == (base.q, base.level)
    assert pot.t == pytest.approx(np.quantile(expected.double().numpy(), base.level))
    # It survives the trip through Redis bytes, lineage included.
    restored = Checkpoint.from_bytes(tuned.to_bytes())
    assert restored.model_id == tuned.model_id and restored.meta["base_model_id"] == checkpoint.model_id
    # A fine-tune of a fine-tune still names the model the chain started from.
    again = fine_tune(restored, prev, nxt, steps=1)
    assert again.meta["fine_tuned_from"] == tuned.model_id and again.meta["base_model_id"] == checkpoint.model_id
    # ... and its revision (its calibration), unless an earlier fine-tune of the chain did not name it.
    assert again.meta["base_revision"] == tuned.meta["base_revision"] == checkpoint.revision
    unnamed = dataclasses.replace(tuned, meta={k: v for k, v in tuned.meta.items() if k != "base_revision"})
    assert "base_revision" not in fine_tune(unnamed, prev, nxt, steps=1).meta


def test_fine_tune_leaves_the_served_model_untouched(checkpoint, drifted):
    prev, nxt = drifted
    scorer = Scorer(checkpoint)
    base_id = checkpoint.model_id
    weights = {key: value.clone() for key, value in scorer.model.state_dict().items()}
    flags = [p.requires_grad for p in scorer.model.parameters()]
    verdicts = scorer.score(["h1"] * len(nxt), list(range(len(nxt))), prev, nxt)
    fine_tune(scorer.checkpoint, prev, nxt, steps=3)
    for key, value in scorer.model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert [p.requires_grad for p in scorer.model.parameters()] == flags
    assert not scorer.model.training
    assert scorer.score(["h1"] * len(nxt), list(range(len(nxt))), prev, nxt) == verdicts
    assert checkpoint.model_id == base_id  # nor the weights of the checkpoint it serves


def test_fine_tune_needs_a_step_and_matching_windows(checkpoint, drifted):
    prev, nxt = drifted
    with pytest.raises(ValueError):
        fine_tune(checkpoint, prev, nxt, steps=0)
    with pytest.raises(ValueError):
        fine_tune(checkpoint, prev[:-1], nxt, steps=1)


# --- FineTuner: the replica's wiring ---------------------------------------------------------


class FakeModels:
    """ModelStore's lock and conditional publish, in memory."""

    def __init__(self, current: str, lock_free: bool = True) -> None:
        self.current = current
        self.lock_free = lock_free
        self.published: list[Checkpoint] = []
        self.unlocked = 0

    def try_lock(self, owner: str) -> bool:
        return self.lock_free

    def unlock(self, owner: str) -> None:
        self.unlocked += 1

    def replace(self, checkpoint: Checkpoint, expected_id: str, expected_revision: str | None = None) -> bool:
        if expected_id != self.current:
            return False
        self.published.append(checkpoint)
        self.current = checkpoint.model_id
        return True


@pytest.fixture
def two_windows_suffice(monkeypatch):
    """Let a fine-tune start on two windows: what is learnt is under test, not how many POT needs."""
    monkeypatch.setattr(learning, "enough_to_recalibrate", lambda checkpoint, windows, full: windows >= 2)


_streaks: weakref.WeakKeyDictionary[FineTuner, dict[str, int]] = weakref.WeakKeyDictionary()


def observe(tuner: FineTuner, scorer: Scorer, hosts: list[str], prev, nxt, normal: list[bool]) -> None:
    """``tuner.observe`` of windows judged ``normal``, learnable once their host's clean streak (as
    the transition script counts it: a normal verdict adds one, an alarm starts again from 0)
    reaches a whole window."""
    streaks = _streaks.setdefault(tuner, {})
    learnable = []
    for host, is_normal in zip(hosts, normal, strict=True):
        streaks[host] = streaks.get(host, 0) + 1 if is_normal else 0
        learnable.append(streaks[host] >= scorer.window)
    tuner.observe(scorer, hosts, prev, nxt, learnable)


def tuner_with(models: FakeModels, windows: int = 64) -> FineTuner:
    # pot_lag 0: each clean window is kept at once (Unconfirmed has its own test).
    config = DetectorConfig(
        finetune_min_interval_s=0.0, finetune_quantile=1.0, finetune_windows=windows, finetune_steps=2, pot_lag=0
    )
    tuner = FineTuner(config, models, "replica-a", "lei-test")
    # Reference: one window; fire when the newest normal window is less confident than it.
    tuner.gate = ConfidenceGate(0.0, 1.0, reference=1, recent=1)
    return tuner


def by_confidence(scorer: Scorer, prev: np.ndarray, nxt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pairs ordered from the most to the least confident W_{t+1}."""
    order = np.argsort(-confidence(scorer.model, scorer.scaler.transform(nxt)))
    return prev[order], nxt[order]


def test_fine_tuner_publishes_a_model_tuned_on_normal_windows_only(checkpoint, drifted, two_windows_suffice):
    scorer = Scorer(checkpoint)
    prev, nxt = by_confidence(scorer, *drifted)
    models = FakeModels(checkpoint.model_id)
    tuner = tuner_with(models)
    # A window counts once the host's last k (5) windows were normal: the 5th is the reference.
    observe(tuner, scorer, ["h1"] * WINDOW, prev[:WINDOW], nxt[:WINDOW], [True] * WINDOW)
    # Faulty windows are never learnt from, and the windows just after them hold fault rows.
    observe(tuner, scorer, ["h1"] * 3, prev[5:8], nxt[5:8], [False] * 3)
    observe(tuner, scorer, ["h1"] * (WINDOW - 1), prev[-WINDOW:-1], nxt[-WINDOW:-1], [True] * (WINDOW - 1))
    assert not tuner.busy and models.published == []
    observe(tuner, scorer, ["h1"], prev[-1:], nxt[-1:], [True])  # the 5th in a row, least confident: fires
    tuner._thread.join(timeout=60)
    assert len(models.published) == 1
    tuned = models.published[0]
    assert tuned.meta["fine_tuned_from"] == checkpoint.model_id
    assert tuned.meta["fine_tune"]["windows"] == 2  # the reference and the last one, nothing near the fault
    assert models.unlocked == 1
    assert tuner.counters.snapshot() == {"fine_tunes_served": 1}  # for the service's counters topic
    assert scorer.model_id == checkpoint.model_id  # the served model is replaced by the service, not here


def test_fine_tuner_keeps_no_window_of_a_fault_s_onset(checkpoint, drifted):
    """With DRAGON_POT_LAG 3, a clean window is kept once 3 later ones of its host were clean:
    the 3 before an alarm (scored just under the threshold, say) never are, another host's are."""
    scorer = Scorer(checkpoint)
    prev, nxt = drifted
    tuner = FineTuner(dataclasses.replace(DetectorConfig(), pot_lag=3), FakeModels(checkpoint.model_id), "a", "lei")
    clean = WINDOW + 5  # windows 0..k-2 are not clean yet (a whole window of normal verdicts before)
    observe(tuner, scorer, ["h1"] * clean, prev[:clean], nxt[:clean], [True] * clean)
    assert len(tuner._normal) == clean - (WINDOW - 1) - 3
    observe(tuner, scorer, ["h1", "h2", "h2", "h2", "h2"], prev[:5], nxt[:5], [False, True, True, True, True])
    assert len(tuner._normal) == clean - (WINDOW - 1) - 3  # h1's three held are dropped; h2 not clean yet
    observe(tuner, scorer, ["h2"] * (WINDOW + 3), prev[: WINDOW + 3], nxt[: WINDOW + 3], [True] * (WINDOW + 3))
    assert len(tuner._normal) == clean - (WINDOW - 1) - 3 + (4 + WINDOW + 3) - (WINDOW - 1) - 3


@pytest.mark.parametrize(("made_ago_s", "fires"), [(3600.0, True), (0.0, False)])
def test_a_replica_that_restarts_counts_the_interval_from_the_models_making(
    checkpoint, drifted, two_windows_suffice, made_ago_s, fires
):
    """Restarts must not put fine-tuning off again and again: a model made an hour ago may be
    tuned at once by a replica that just started, one made just now not for 600 s."""
    made = (datetime.now(UTC) - timedelta(seconds=made_ago_s)).isoformat(timespec="seconds")
    served = dataclasses.replace(checkpoint, meta={**checkpoint.meta, "created_at": made})
    scorer = Scorer(served)
    prev, nxt = by_confidence(scorer, *drifted)
    tuner = tuner_with(FakeModels(served.model_id))
    tuner.gate = ConfidenceGate(600.0, 1.0, reference=1, recent=1)
    observe(tuner, scorer, ["h1"] * WINDOW, prev[:WINDOW], nxt[:WINDOW], [True] * WINDOW)
    observe(tuner, scorer, ["h1"], prev[-1:], nxt[-1:], [True])  # less confident than the reference
    assert (tuner._thread is not None) == fires
    if fires:
        tuner._thread.join(timeout=60)


def test_a_fine_tune_waits_for_windows_enough_to_give_pot_its_peaks(checkpoint):
    assert checkpoint.pot_state().level == 0.98  # MIN_PEAKS (10) / 0.02 = 500 windows
    assert not enough_to_recalibrate(checkpoint, 499, full=False)
    assert enough_to_recalibrate(checkpoint, 500, full=False)
    assert enough_to_recalibrate(checkpoint, 20, full=True)  # all that DRAGON_FINETUNE_WINDOWS keeps
    level_90 = dataclasses.replace(checkpoint, pot={DEFAULT_HOST: checkpoint.pot_state().to_dict() | {"level": 0.9}})
    assert [enough_to_recalibrate(level_90, n, full=False) for n in (99, 100)] == [False, True]


def test_fine_tuner_with_room_for_more_waits_until_pot_can_be_fitted(checkpoint, drifted):
    scorer = Scorer(checkpoint)
    prev, nxt = by_confidence(scorer, *drifted)
    models = FakeModels(checkpoint.model_id)
    config = DetectorConfig(
        finetune_min_interval_s=0.0, finetune_quantile=1.0, finetune_steps=2, pot_lag=0
    )  # 1024 kept
    tuner = FineTuner(config, models, "replica-a", "lei-test")
    tuner.gate = ConfidenceGate(0.0, 1.0, reference=1, recent=1)  # open: the wait is under test
    observe(tuner, scorer, ["h1"] * len(nxt), prev, nxt, [True] * len(nxt))
    assert len(tuner._normal) < 500 and tuner._thread is None


def test_fine_tuner_starts_once_pot_has_its_windows_before_the_store_is_full(checkpoint, drifted):
    scorer = Scorer(checkpoint)
    prev, nxt = by_confidence(scorer, *drifted)
    models = FakeModels(checkpoint.model_id)
    tuner = tuner_with(models, windows=1024)  # the default store: 501 windows do not fill it
    # 504 copies of the most confident window, then the least confident: 501 clean ones in all.
    order = [0] * (WINDOW + 499) + [len(nxt) - 1]
    observe(tuner, scorer, ["h1"] * len(order), prev[order], nxt[order], [True] * len(order))
    tuner._thread.join(timeout=60)
    assert models.published[0].meta["fine_tune"]["windows"] == 500 + 1


def test_a_fine_tune_discarded_for_a_newer_model_is_not_counted_as_served(checkpoint, drifted, two_windows_suffice):
    scorer = Scorer(checkpoint)
    prev, nxt = by_confidence(scorer, *drifted)
    models = FakeModels("a-newer-model")  # another replica published since: replace refuses
    tuner = tuner_with(models)
    observe(tuner, scorer, ["h1"] * WINDOW, prev[:WINDOW], nxt[:WINDOW], [True] * WINDOW)
    observe(tuner, scorer, ["h1"], prev[-1:], nxt[-1:], [True])
    tuner._thread.join(timeout=60)
    assert models.published == [] and tuner.counters.snapshot() == {}


class RefusingState:
    """A TunerState whose Redis refuses the kept windows while ``refusing``, and whose floors are contended."""

    def __init__(self) -> None:
        self.refusing = True
        self.kept_pairs = 0
        self.kept = SimpleNamespace(keep_pairs=self._keep_pairs)
        self.floors = SimpleNamespace(settle=self._settle, load=lambda model_id, how: {})

    def _keep_pairs(self, hosts, pairs) -> None:
        if self.refusing:
            raise redis.ConnectionError("Redis is away")
        self.kept_pairs += len(pairs)

    def _settle(self, model_id, how, floors) -> dict[str, float]:
        raise redis.WatchError("the floors changed during each of 5 attempts")


def test_refused_writes_are_counted_each_and_logged_once_a_minute(checkpoint, drifted):
    scorer = Scorer(checkpoint)
    prev, nxt = drifted
    now = [0.0]
    state = RefusingState()
    tuner = FineTuner(DetectorConfig(pot_lag=0), FakeModels(checkpoint.model_id), "replica-a", "lei-test", state)
    tuner._write_warnings = EveryInterval(60.0, clock=lambda: now[0])
    tuner.gate = ConfidenceGate(0.0, 1.0, reference=1, recent=1)  # a floor after the first clean window

    def one_window(i: int, t: float) -> list[str]:
        now[0] = t
        with structlog.testing.capture_logs() as logs:
            observe(tuner, scorer, ["h1"], prev[i : i + 1], nxt[i : i + 1], [True])
        return [entry["event"] for entry in logs]

    for i in range(WINDOW - 1):  # not clean yet: nothing to write
        assert one_window(i, 0.0) == []
    # Clean from here: each window is a write Redis refuses. The first is logged at once...
    first = one_window(WINDOW - 1, 1.0)
    assert first.count("finetune_state_not_written") == 1
    # ...with the floor it just measured, whose settling other replicas' writes kept from going
    # through: counted apart, not as a refusal.
    assert "finetune_state_contended" in first
    assert [one_window(i, t).count("finetune_state_not_written") for i, t in ((5, 30), (6, 59))] == [0, 0]
    assert one_window(7, 61.0).count("finetune_state_not_written") == 1  # a minute on
    counts = tuner.counters.snapshot()
    assert counts["finetune_state_not_written"] == 4
    assert counts["finetune_state_contended"] == 4  # the floor is offered again with every batch
    # Redis takes writes again: said once, and the next outage is logged at once.
    state.refusing = False
    assert "finetune_state_written_again" in one_window(8, 62.0)
    assert state.kept_pairs == 1
    state.refusing = True
    assert one_window(9, 63.0).count("finetune_state_not_written") == 1


def test_fine_tuner_does_nothing_without_the_lock(checkpoint, drifted, two_windows_suffice):
    scorer = Scorer(checkpoint)
    prev, nxt = by_confidence(scorer, *drifted)
    models = FakeModels(checkpoint.model_id, lock_free=False)
    tuner = tuner_with(models)
    observe(tuner, scorer, ["h1"] * WINDOW, prev[:WINDOW], nxt[:WINDOW], [True] * WINDOW)
    observe(tuner, scorer, ["h1"], prev[-1:], nxt[-1:], [True])
    assert tuner._thread is not None
    tuner._thread.join(timeout=60)
    assert models.published == [] and models.unlocked == 0


class RecordingTuner:
    def observe(self, scorer, hosts, prev, nxt, learnable) -> None:
        self.seen = (hosts, prev, nxt, learnable)


def test_detector_feeds_only_normal_windows_of_hosts_not_in_a_fault(drifted):
    prev, nxt = drifted
    detector = Detector(DetectorConfig())
    detector.tuner = RecordingTuner()
    detector.scorer = SimpleNamespace(window=5)

    def verdict(label: int):
        return (SimpleNamespace(host="h1"), Verdict(1.0, 2.0, label, ()))

    clean = 7  # the host's clean windows in a row with this one, by every replica's verdicts
    cases = [  # (label, transition) -> learnt from?
        (0, Transition("", None, clean), True),
        (0, Transition("", None, 3), False),  # a fault (another replica's verdicts) ended 3 windows ago
        (1, Transition("start", 5.0), False),  # an alarm
        (0, Transition("", 5.0), False),  # below the threshold, but the fault has not ended yet
        (0, Transition("end", 5.0), False),  # the window that ends it
        (0, Transition("stale", None), False),  # a redelivered window
    ]
    scored = Scored([verdict(label) for label, _, _ in cases], prev[: len(cases)], nxt[: len(cases)])
    detector._observe_confidence(scored, [transition for _, transition, _ in cases])
    hosts, seen_prev, seen_next, learnable = detector.tuner.seen
    assert learnable == [expected for _, _, expected in cases]
    assert seen_next is scored.next and seen_prev is scored.prev and hosts == ["h1"] * len(cases)
