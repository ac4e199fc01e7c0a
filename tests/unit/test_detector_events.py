"""Which verdicts carry the event they would publish into the fault state's outbox.

A verdict that may start or end its host's fault must: the transition script keeps that event
until the broker has it. One that cannot (an alarm in a fault, a normal window with none) need
not, and is not encoded.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dragon import config
from dragon.detector.config import DetectorConfig
from dragon.detector.scorer import Verdict
from dragon.detector.service import Detector, Judged
from dragon.messages.schemas import HostHealth
from dragon.service.replicas import SLOT_TTL_S, ReplicaSlot, SlotTaken
from dragon.store import redis_for_now

pytestmark = pytest.mark.unit


def detector_that_judged(last_ts: float, label: int, faulty_since: float | None) -> Detector:
    """A detector whose last verdict of h1 (at ``last_ts``) is still the newest in Redis."""
    detector = Detector(config.load(DetectorConfig, {}))
    detector.scorer = SimpleNamespace(model_id="m1")  # all an event takes from the model
    health = HostHealth("lei1", "h1", last_ts, 1.0, 0.5, label, "observed", faulty_since)
    detector._health[("h1", "observed")] = health
    detector._last_judged["observed"] = {"h1": last_ts}
    return detector


def carried(detector: Detector, labels: list[int], first_ts: float) -> list[str | None]:
    verdicts = [
        (Judged("h1", first_ts + i, first_ts + i), Verdict(1.0, 0.5, label, (("cpu", 1.0),)))
        for i, label in enumerate(labels)
    ]
    return [None if event is None else event.type for event in detector._possible_events(verdicts, "observed")]


def test_normal_windows_of_a_healthy_host_carry_nothing():
    assert carried(detector_that_judged(10.0, 0, None), [0, 0, 0], 11.0) == [None, None, None]


def test_an_alarm_after_the_window_that_ended_a_fault_carries_its_start():
    # The end's own verdict still names when the fault began: it is not a fault in force.
    assert carried(detector_that_judged(10.0, 0, faulty_since=4.0), [1], 11.0) == ["start"]


def test_in_a_batch_every_window_that_may_end_or_start_a_fault_carries_its_event():
    # An alarm, normal windows that may end the fault, and an alarm that may start another.
    events = carried(detector_that_judged(10.0, 0, None), [1, 1, 0, 0, 0, 1], 11.0)
    assert events == ["start", None, "end", "end", "end", "start"]


def test_a_host_another_replica_judged_since_is_unknown():
    detector = detector_that_judged(10.0, 0, None)
    detector._last_judged["observed"] = {"h1": 12.0}  # not our verdict any more
    assert carried(detector, [0], 13.0) == ["end"]


def test_redis_away_or_refusing_writes_skips_a_beat_and_a_bad_command_raises():
    def raising(error: Exception):
        def action() -> None:
            raise error

        return action

    assert redis_for_now(lambda: None)
    assert not redis_for_now(raising(redis.ConnectionError("gone")))
    assert not redis_for_now(raising(redis.exceptions.OutOfMemoryError("maxmemory")))  # a beat is a write
    with pytest.raises(redis.ResponseError):
        redis_for_now(raising(redis.ResponseError("WRONGTYPE Operation against a key")))


def detector_holding(slot: ReplicaSlot) -> Detector:
    detector = Detector(config.load(DetectorConfig, {}))
    detector.slot, detector.instance = slot, "lei1-0"
    return detector


def test_a_replica_whose_slot_lapsed_or_was_taken_leaves_and_leaves_the_name_alone():
    """Cut off from Redis a moment, a replica keeps its slot; for as long as a slot lives without
    renewal, another replica may hold it (and its MQTT session): it leaves, without touching the
    membership entry under that name, which may be the other one's now."""
    unreachable = redis.Redis(port=1, socket_connect_timeout=0.05, retry=Retry(NoBackoff(), 0))  # nothing listens
    slot = ReplicaSlot(unreachable, "lei1", "detector", "host-a")
    slot.number, slot.held_at = 0, time.monotonic()
    detector = detector_holding(slot)
    detector._keep_slot()  # Redis away for a moment: nothing happens
    slot.held_at -= SLOT_TTL_S + 1
    with pytest.raises(SystemExit, match="lapsed"):
        detector._keep_slot()
    assert detector._slot_lost

    class Taken:
        def renew(self) -> None:
            raise SlotTaken("replica slot lei1-0 was taken by another replica")

    detector = detector_holding(Taken())
    with pytest.raises(SystemExit, match="taken"):
        detector._keep_slot()
    assert detector._slot_lost
