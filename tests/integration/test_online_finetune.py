"""On-line fine-tuning in a real LEI: a replica whose gate is forced open publishes a new model."""

from __future__ import annotations

import json
import time

import pytest

from dragon.detector.membership import owner
from dragon.detector.modelstore import ModelStore

from .conftest import fresh_health, live_counters

pytestmark = pytest.mark.integration

FINE_TUNE_TIMEOUT_S = 60
# Forced open: fine-tune as soon as the mean confidence of a host's newest 2 normal windows is
# below the largest of its first 6 under the model, at once after the model starts serving, and
# with a store of 12 clean windows that is full long before POT's 500 at level 0.98.
FORCED_ENV = {
    "DRAGON_FINETUNE_MIN_INTERVAL": "0",
    "DRAGON_FINETUNE_QUANTILE": "1.0",
    "DRAGON_FINETUNE_REFERENCE": "6",
    "DRAGON_FINETUNE_WINDOWS": "12",
    "DRAGON_FINETUNE_STEPS": "3",
}


def log_lines(logs: str) -> list[dict]:
    """The service's structured log lines (JSON), skipping anything else it printed."""
    lines = []
    for text in logs.splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return lines


def instance_owning_a_host(members: list[str], hosts: list[str]) -> str:
    """An instance id that, joining ``members``, scores at least one host (rendezvous hashing)."""
    for i in range(1000):
        candidate = f"finetuner-{i}"
        if any(owner(host, [*members, candidate]) == candidate for host in hosts):
            return candidate
    raise AssertionError("no instance id owns a host")


def test_forced_fine_tune_publishes_a_new_model_and_scoring_continues(lei, tmp_path):
    client = lei.redis_client()
    models = ModelStore(client, lei.lei, "")
    original = models.fetch()
    assert original is not None
    members = sorted(m.decode() for m in client.zrangebyscore(f"dragon:{lei.lei}:detectors", time.time() - 10, "+inf"))
    instance = instance_owning_a_host(members, lei.hosts)
    try:
        lei.start_detector("finetuner", {**FORCED_ENV, "DRAGON_INSTANCE": instance})
        deadline = time.monotonic() + FINE_TUNE_TIMEOUT_S
        while models.current_id() == original.model_id and time.monotonic() < deadline:
            time.sleep(0.5)
        tuned_id = models.current_id()
        assert tuned_id != original.model_id, "no fine-tuned model within the timeout"
        tuned = models.fetch()
        assert tuned is not None and tuned.meta["fine_tuned_from"] == original.model_id
        assert tuned.meta["source"] == f"redis:{lei.lei}"
        assert tuned.meta["fine_tune"]["windows"] >= 2
        assert tuned.gon == original.gon and (tuned.lo, tuned.hi) == (original.lo, original.hi)
        assert '"model_fine_tuned"' in lei.logs("finetuner")
        # Operators see it on the replica's counters topic.
        live_counters(lei, "detector", lambda c: c.get("fine_tunes_served", 0) >= 1, container="finetuner")
        # Scoring goes on: every host gets fresh verdicts.
        for host in lei.hosts:
            fresh_health(lei, host, timeout=30)

        # The LEI's clean windows are in Redis (this replica's or the session's other one's).
        assert client.zcard(f"dragon:{lei.lei}:finetune:windows") >= 2

        # A replica configured with the original checkpoint that (re)starts now must serve the
        # LEI's fine-tuned descendant, not publish the original over it, and start with the
        # LEI's kept clean windows instead of waiting for new ones.
        tmp_path.chmod(0o755)
        original.save(tmp_path / "original.pt")
        (tmp_path / "original.pt").chmod(0o644)
        lei.start_detector(
            "configured", {"DRAGON_DETECTOR_CHECKPOINT": "/models/original.pt"}, volumes={str(tmp_path): "/models"}
        )
        deadline = time.monotonic() + 20
        while '"model_serving"' not in lei.logs("configured") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert '"serving_fine_tuned_descendant"' in lei.logs("configured")
        assert models.current_id() != original.model_id
        assert models.fetch().meta["base_model_id"] == original.model_id
        lines = log_lines(lei.logs("configured"))
        (restored,) = [line for line in lines if line["event"] == "finetune_windows_restored"]
        assert restored["windows"] >= 2
    finally:
        for name in ("finetuner", "configured"):
            container = lei.containers.pop(name, None)
            if container is not None:
                container.stop()
        # Give the rest of the session the model it had, so their thresholds are the usual ones,
        # and no kept windows from this test's forced fine-tunes.
        models.publish(original)
        client.delete(*(f"dragon:{lei.lei}:finetune:{key}" for key in ("windows", "steps", "floors")))
        client.close()
