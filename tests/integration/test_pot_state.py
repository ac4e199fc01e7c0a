"""Streaming thresholds in a running LEI: each host's state learns in Redis, the published
threshold is the one in force, and a restarted detector continues from Redis."""

from __future__ import annotations

import time

import pytest

from dragon.detector.config import DEFAULT_POT_LAG
from dragon.detector.modelstore import ModelStore
from dragon.detector.thresholds import HostThreshold, ThresholdStore
from dragon.messages import topics
from dragon.testing.listener import Listener

from .conftest import health_of

pytestmark = pytest.mark.integration


def stored_states(lei, mode: str = "observed") -> dict[str, HostThreshold | None]:
    return ThresholdStore(lei.redis_client(), lei.lei, mode).load(lei.hosts)


def wait_until_learnt(
    lei, beyond: dict[str, int], timeout: float = 30.0, mode: str = "observed"
) -> dict[str, HostThreshold]:
    """Poll Redis until every host's state (of ``mode``'s verdicts) counts more than ``beyond[host]`` normal windows."""
    deadline = time.monotonic() + timeout
    while True:
        states = stored_states(lei, mode)
        if all(s is not None and s.pot.tail.n > beyond[h] for h, s in states.items()):
            return states
        if time.monotonic() > deadline:
            raise TimeoutError(f"states did not grow beyond {beyond}: {states}")
        time.sleep(0.5)


def test_thresholds_learn_in_redis_and_survive_a_detector_restart(lei):
    checkpoint = ModelStore(lei.redis_client(), lei.lei, "").fetch()
    calibration_n = {host: checkpoint.pot_state(host).n for host in lei.hosts}
    learnt = wait_until_learnt(lei, {host: n + 3 for host, n in calibration_n.items()})
    # SPOT by default, learning each normal window DEFAULT_POT_LAG windows late: the held ones are in Redis too.
    rules = {(s.model_id, s.pot.depth, s.pot.lag) for s in learnt.values()}
    assert rules == {(checkpoint.model_id, 0, DEFAULT_POT_LAG)}
    assert any(s.pot.held for s in learnt.values()) and all(len(s.pot.held) <= DEFAULT_POT_LAG for s in learnt.values())
    assert "pot_state_calibrated" in lei.logs("detector")

    restarted_at = int(time.time())
    lei.restart("detector", "mqtt_connected")
    resumed = stored_states(lei)
    for host in lei.hosts:
        assert resumed[host].pot.tail.n >= learnt[host].pot.tail.n  # not back to the checkpoint's n
    wait_until_learnt(lei, {host: s.pot.tail.n for host, s in resumed.items()})
    logs = lei.containers["detector"].get_wrapped_container().logs(since=restarted_at)
    assert b"model_serving" in logs and b"pot_state_calibrated" not in logs  # continued from Redis


def test_published_threshold_is_the_one_in_force_for_that_window(lei):
    with Listener(lei.mqtt_settings(), [topics.host_health(lei.lei, "h1")]) as listener:
        state = stored_states(lei)["h1"]  # what the next window of h1 will be judged by
        (message,) = listener.wait_for(lambda m: not m.retain and health_of(m).ts > state.ts, 30)[:1]
    health = health_of(message)
    assert health.threshold == state.pot.threshold
    assert health.label == int(health.score >= health.threshold)
