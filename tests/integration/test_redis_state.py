"""Windows, fault state, streaming thresholds and kept clean windows against a real Redis (the dragon-redis image)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import msgpack
import numpy as np
import pytest
import redis
import structlog.testing

from dragon import config
from dragon.detector.config import DetectorConfig
from dragon.detector.health import (
    FaultHysteresis,
    HostFaultState,
    SampleWindow,
    fault_starts,
    gaps_before,
    unjudged,
)
from dragon.detector.learning import CHECK_INTERVAL_S, FineTuner, OnlineLearner
from dragon.detector.lei import LeiStep
from dragon.detector.membership import Membership
from dragon.detector.modelstore import ModelStore
from dragon.detector.pot import StreamingPot
from dragon.detector.scorer import Verdict
from dragon.detector.service import Detector, Judged
from dragon.detector.thresholds import HostThreshold, ThresholdStore
from dragon.detector.tunerstate import SETTLE_ATTEMPTS, GateFloors, KeptWindows, TunerState
from dragon.lateness import FORGET_AFTER_S
from dragon.messages import codec, topics
from dragon.messages.schemas import HOST_METRICS, FaultEvent, HostHealth, HostMetrics, HostSample
from dragon.mqtt import Incoming
from dragon.service.replicas import SLOT_TTL_S, ReplicaSlot, SlotTaken
from dragon.store import WindowStore, padded_window, retry_until

from .conftest import LEARN_QUICKLY, detector_on, settled_long_ago

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Window:
    host: str
    ts: float


@pytest.fixture(scope="module")
def client(redis_client):
    return redis_client


def test_appends_are_idempotent_time_ordered_and_capped(client):
    store = WindowStore(client, "t1", history=5)
    rows = [("h1", float(ts), ts, [float(ts), 0.5]) for ts in range(1, 9)]
    store.append_many(list(reversed(rows[:4])))  # out of order, as two replicas might write
    store.append_many(rows)  # every sample again (redelivery) plus four new ones
    assert [ts for ts, _ in store.all_samples("h1")] == [4.0, 5.0, 6.0, 7.0, 8.0]
    assert store.sequence_numbers("h1", since_ts=6.0) == [6, 7, 8]
    assert store.hosts() == ["h1"]
    recent = [row for _, row in store.recent("h1", 3)]
    assert padded_window(recent, 4) == [[6.0, 0.5], [6.0, 0.5], [7.0, 0.5], [8.0, 0.5]]


def test_samples_keep_their_tasks_and_a_redelivery_with_tasks_stays_one_member(client):
    store = WindowStore(client, "t3", history=10)
    rows = [
        ("h1", 1.0, 1, [0.1, 0.5], {"b": 0.2, "a": 0.1}),
        ("h2", 1.0, 1, [0.3, 0.5]),
        ("h1", 2.0, 2, [0.2, 0.5], {}),
    ]
    store.append_many(rows)
    store.append_many([("h1", 1.0, 1, [0.1, 0.5], {"a": 0.1, "b": 0.2})])  # the same sample, tasks in another order
    until = store.samples_until(1.5, count=5)
    assert [s.ts for s in until["h1"]] == [1.0] and [s.ts for s in until["h2"]] == [1.0]
    assert [s.ts for s in store.samples_until(9.0, count=1)["h1"]] == [2.0]
    first, second = store.all_stored("h1")
    assert (first.ts, first.vector, dict(first.tasks)) == (1.0, [0.1, 0.5], {"a": 0.1, "b": 0.2})
    assert dict(second.tasks) == {} and store.recent("h2", 1) == [(1.0, [0.3, 0.5])]


def test_scaler_bounds_round_trip(client):
    store = WindowStore(client, "t2", history=5)
    assert store.load_bounds() is None
    store.save_bounds(["cpu", "ram"], [0.0, 0.1], [1.0, 0.9], "m1")
    assert store.load_bounds() == {"features": ("cpu", "ram"), "lo": [0.0, 0.1], "hi": [1.0, 0.9], "version": "m1"}


def test_fault_state_starts_once_ends_after_hysteresis_and_ignores_stale_windows(client):
    state = HostFaultState(client, "t3", clear_windows=2)
    kinds = [t.kind for t in state.update_many([("h1", 1.0, 0), ("h1", 2.0, 1), ("h1", 3.0, 1), ("h1", 4.0, 0)])]
    assert kinds == ["", "start", "", ""]
    assert state.update("h1", 3.5, 0).kind == "stale"  # older than the last window seen
    end = state.update("h1", 5.0, 0)
    assert end.kind == "end" and end.faulty_since == 2.0
    assert state.update("h1", 6.0, 1).kind == "start"


def test_a_fault_starts_after_start_windows_alarms_in_a_row_dated_at_the_first(client):
    state = HostFaultState(client, "t-start", clear_windows=1, start_windows=3)
    labels = [1, 1, 0, 1, 1, 1, 1, 0]  # a run of two breaks; the next run's third alarm opens the fault
    transitions = [state.update("h1", float(ts), label) for ts, label in enumerate(labels, start=1)]
    assert [t.kind for t in transitions] == ["", "", "", "", "", "start", "", "end"]
    assert [t.faulty_since for t in transitions[3:]] == [None, None, 4.0, 4.0, 4.0]
    assert [t.clean_streak for t in transitions[:4]] == [0, 0, 1, 0]  # an alarm is never clean
    assert state.update("h1", 9.0, 1).kind == ""  # the run that follows counts from 1 again
    assert state.update("h1", 8.5, 1).kind == "stale"  # a redelivered alarm does not lengthen it
    assert state.update("h1", 10.0, 1).kind == ""
    silence = state.update_many([("h1", 10.5, 1)], at_once=[True])[0]  # no window follows a silence
    assert (silence.kind, silence.faulty_since) == ("start", 9.0)  # dated at the run's first alarm


def test_a_run_of_alarms_does_not_go_on_across_a_spell_without_windows_or_a_verdict_that_did_not_count(client):
    state = HostFaultState(client, "t-run", clear_windows=1, start_windows=2)
    gap = [2.5]  # seconds: the service allows 2.5 of the host's intervals
    assert state.update_many([("h1", 1.0, 1)], run_gaps_s=gap)[0].kind == ""
    assert state.update_many([("h1", 9.0, 1)], run_gaps_s=gap)[0].kind == ""  # the host was away
    started = state.update_many([("h1", 11.0, 1)], run_gaps_s=gap)[0]  # one sample lost in between
    assert (started.kind, started.faulty_since) == ("start", 9.0)
    # A replica of an earlier version judges nothing by runs: its verdict in between (a newer
    # window time, the run's fields left alone) breaks the run.
    assert state.update("h2", 1.0, 1).kind == ""
    client.hset("dragon:t-run:fault:h2", "ts", repr(2.0))
    assert state.update("h2", 3.0, 1).kind == ""
    assert state.update("h2", 4.0, 1).faulty_since == 3.0


def test_clean_streaks_count_normal_windows_with_no_fault_in_force_for_every_replica(client):
    state, other = (
        HostFaultState(client, "t6", clear_windows=2),
        HostFaultState(client, "t6", clear_windows=2),
    )
    labels = [0, 0, 0, 1, 0, 0, 0, 0]  # a fault at 4, ended by the window at 6 (hysteresis 2)
    streaks, returned = [], []
    for ts, label in enumerate(labels, start=1):
        returned.append(state.update("h1", float(ts), label).clean_streak)  # what the judging replica learns
        streaks.append(other.clean_streaks(["h1"])["h1"])  # what another replica reads
    assert streaks == returned == [1, 2, 3, 0, 0, 0, 1, 2]
    assert state.update("h1", 2.5, 0).clean_streak == 0  # a stale window changes nothing
    assert other.clean_streaks(["h1", "never-seen"]) == {"h1": 2, "never-seen": 0}


def test_the_replay_in_memory_keeps_the_scripts_clean_streaks(client):
    """FaultHysteresis (what `bench --online` learns by) counts what the service's script counts."""
    labels = np.random.default_rng(3).random(400) < 0.3  # alarms now and then, some in runs
    for clear, start in ((1, 1), (3, 1), (3, 2), (1, 3)):
        key = f"t-replay-{clear}-{start}"
        state, replay, run = HostFaultState(client, key, clear, start_windows=start), FaultHysteresis(clear, start), 0
        starts = []
        for ts, label in enumerate(labels.astype(int), start=1):
            if state.update("h1", float(ts), int(label)).kind == "start":
                starts.append(ts - 1)
            run = run + 1 if replay.update(int(label)) else 0
            assert state.clean_streaks(["h1"])["h1"] == run, (clear, start, ts)
        assert starts == fault_starts(labels.astype(int).tolist(), clear, start) != []


def test_a_transition_keeps_its_event_in_the_outbox_until_it_is_sent(client):
    state, other = (
        HostFaultState(client, "t-outbox", clear_windows=1),
        HostFaultState(client, "t-outbox", 1),
    )
    verdicts = [("h1", 1.0, 0), ("h1", 2.0, 1), ("h1", 3.0, 1), ("h1", 4.0, 0)]
    events = [("e1", b"end?"), ("e2", b"start"), ("e3", b"start?"), ("e4", b"end")]
    assert [t.kind for t in state.update_many(verdicts, events)] == ["", "start", "", "end"]
    assert other.outbox() == {"e2": b"start", "e4": b"end"}  # only the transitions', for any replica
    # The same window again (a retry after a lost reply) is stale, and its event stays to be sent.
    assert state.update_many([("h1", 4.0, 0)], [("e4", b"end")])[0].kind == "stale"
    other.sent(["e2"])
    assert state.outbox() == {"e4": b"end"}
    assert HostFaultState(client, "t-outbox", 1, mode="predicted").outbox() == {}  # each mode its own


def test_two_replicas_applying_the_same_window_publish_it_once(client):
    first, second = HostFaultState(client, "t4", 3), HostFaultState(client, "t4", 3)
    assert first.update("h9", 10.0, 1).kind == "start"
    assert second.update("h9", 10.0, 1).kind == "stale"


def test_any_replica_reads_the_newest_window_judged_per_host_and_drops_what_is_not_newer(client):
    first, second = (
        HostFaultState(client, "t7", 3, mode="predicted"),
        HostFaultState(client, "t7", 3, mode="predicted"),
    )
    first.update_many([("h1", 10.0, 0), ("h1", 11.5, 1)])
    last = second.last_judged(["h1", "h2"])
    assert last == {"h1": 11.5, "h2": None}
    copies = [Window("h1", 11.5), Window("h1", 12.0), Window("h1", 12.0), Window("h2", 3.0), Window("h1", 11.0)]
    assert unjudged(copies, last) == [Window("h1", 12.0), Window("h2", 3.0)]
    assert HostFaultState(client, "t7", 3).last_judged(["h1"]) == {"h1": None}  # observed verdicts are apart


@dataclass(frozen=True)
class Sample:
    host: str
    ts: float
    interval_s: float = 1.0


def test_stored_samples_after_a_hosts_last_judged_window_are_found_newest_first_within_a_bound(client):
    """What a replica that died before judging them left: samples 11 to 14 of h1, stored, never judged."""
    store, state = WindowStore(client, "t11", history=100), HostFaultState(client, "t11", 3)
    store.append_many([("h1", float(ts), ts, [0.1]) for ts in range(10, 16)] + [("h2", 10.0, 1, [0.1])])
    state.update_many([("h1", 10.0, 0), ("h2", 10.0, 0)])
    batch: list[SampleWindow] = [Sample("h1", 16.0), Sample("h1", 15.0), Sample("h2", 11.0), Sample("h3", 5.0)]
    gaps = gaps_before(batch, state.last_judged(["h1", "h2", "h3"]))
    assert gaps == {"h1": (10.0, 15.0, 1.0)}  # h2's next sample follows its last; h3 was never judged
    spans = {host: (after, before) for host, (after, before, _) in gaps.items()}
    assert store.stamps_between(spans, count=10) == {"h1": ([11.0, 12.0, 13.0, 14.0], 0)}
    assert store.stamps_between(spans, count=3) == {"h1": ([12.0, 13.0, 14.0], 1)}  # the newest, and how many left out


def test_replicas_take_the_lowest_free_slot_and_a_restarted_one_its_own(client):
    first, second = (
        ReplicaSlot(client, "t12", "detector", "c1"),
        ReplicaSlot(client, "t12", "detector", "c2"),
    )
    assert (first.claim(), second.claim()) == ("t12-0", "t12-1")
    first.release()
    assert ReplicaSlot(client, "t12", "detector", "c3").claim() == "t12-0"  # the one recreated in its place
    assert ReplicaSlot(client, "t12", "detector", "c2").claim() == "t12-1"  # c2's container restarted
    second.release()
    first.release()  # no longer its slot: c3 keeps it
    assert ReplicaSlot(client, "t12", "detector", "c4").claim() == "t12-1"
    with pytest.raises(SlotTaken):
        first.renew()
    assert ReplicaSlot(client, "t12", "simulator", "c1").claim() == "t12-0"  # each service counts its own


def test_a_slot_that_expired_while_its_holder_was_away_is_claimed_and_its_holder_told(client):
    away = ReplicaSlot(client, "t13", "detector", "c1")
    away.claim()
    client.pexpire(f"dragon:t13:detector:slots:{away.number}", 1)  # its renewals did not reach Redis
    time.sleep(0.05)
    assert ReplicaSlot(client, "t13", "detector", "c2").claim() == "t13-0"
    with pytest.raises(SlotTaken):
        away.renew()
    expired = ReplicaSlot(client, "t13", "detector", "c3")
    expired.claim()
    client.delete(f"dragon:t13:detector:slots:{expired.number}")
    expired.renew()  # expired and free: still ours
    assert client.pttl(f"dragon:t13:detector:slots:{expired.number}") > (SLOT_TTL_S - 5) * 1000


def calls(client, command: str) -> int:
    return client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


def test_streaming_thresholds_live_in_one_hash_read_and_written_in_one_call_each(client):
    store = ThresholdStore(client, "t5")
    assert store.load(["h1", "h2"]) == {"h1": None, "h2": None}
    rng = np.random.default_rng(0)
    states = {host: HostThreshold("m1", StreamingPot.calibrate(rng.exponential(size=500), q=1e-3)) for host in "abc"}
    for ts, state in enumerate(states.values()):
        state.judge(float(ts), 0.5)
    hmget, hset = calls(client, "hmget"), calls(client, "hset")
    store.save(states)
    loaded = store.load(["a", "b", "c", "d"])
    assert (calls(client, "hmget"), calls(client, "hset")) == (hmget + 1, hset + 1)
    assert loaded == states | {"d": None}
    assert sorted(client.hkeys("dragon:t5:pot")) == [b"a", b"b", b"c"]


def test_an_unreadable_threshold_state_counts_as_none(client):
    client.hset("dragon:t6:pot", mapping={"h1": b"\xc1 not msgpack", "h2": b"\x81\xa1x\x01"})
    assert ThresholdStore(client, "t6").load(["h1", "h2"]) == {"h1": None, "h2": None}


def test_a_threshold_state_a_newer_version_wrote_is_judged_from_calibration_and_left_alone(client):
    """An older replica in a rolling upgrade must not throw away what the newer ones learnt."""
    store = ThresholdStore(client, "t8")
    rng = np.random.default_rng(0)
    learnt = HostThreshold("m1", StreamingPot.calibrate(rng.exponential(size=500), q=1e-3))
    newer = msgpack.packb(learnt.to_dict() | {"added_by_a_newer_version": 1})
    client.hset("dragon:t8:pot", mapping={"h1": newer, "h2": b"\xc1 not msgpack"})
    assert store.load(["h1", "h2"]) == {"h1": None, "h2": None}
    store.save({"h1": learnt, "h2": learnt})  # recalibrated in memory, judged, written back
    assert client.hget("dragon:t8:pot", "h1") == newer  # left for the replicas that read it
    assert store.load(["h2"]) == {"h2": learnt}  # the unreadable one is mended


def pair(value: float, k: int = 3, n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    return np.full((k, n), value), np.full((k, n), value + 0.5)


def lei_step(value: float, hosts: int = 2, tasks: int = 1, k: int = 3, n: int = 2) -> LeiStep:
    rng = np.random.default_rng(int(value))
    return LeiStep(
        hosts=tuple(f"h{i}" for i in range(hosts)),
        broker=0,
        prev=rng.random((hosts, k, n)),
        next=rng.random((hosts, k, n)) + value,
        tasks=tuple(f"t{i}" for i in range(tasks)),
        task_prev=rng.random((tasks, k)),
        task_next=rng.random((tasks, k)),
        schedule=np.eye(tasks, hosts),
        judged=(),
    )


def keep(kept: KeptWindows, *values: float, host: str = "h1") -> None:
    kept.keep_pairs([host] * len(values), [pair(v) for v in values])


def test_kept_pairs_round_trip_exactly_once_each_in_its_first_place_newest_kept(client):
    kept = KeptWindows(client, "kw1", capacity=4)
    keep(kept, 1.0, 2.0)
    keep(kept, 1 / 3, 1.0, 4.0)  # 1.0 again: a redelivery, which keeps its first place
    keep(kept, 5.0)
    restored = kept.pairs()
    assert [p[0][0, 0] for p in restored] == [2.0, 1 / 3, 4.0, 5.0]  # the oldest, 1.0, made room
    for got, want in zip(restored[:2], [pair(2.0), pair(1 / 3)], strict=True):
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert KeptWindows(client, "kw-other", capacity=4).pairs() == []


def test_new_windows_count_on_from_the_newest_score_in_the_set_whatever_wrote_it(client):
    kept = KeptWindows(client, "kw9", capacity=2)
    keep(kept, 1.0)
    (member,) = client.zrange("dragon:kw9:finetune:windows", 0, -1)
    client.zadd("dragon:kw9:finetune:windows", {member: 1.7e9})  # as a writer scoring by its clock left it
    keep(kept, 2.0)
    keep(kept, 3.0)
    assert [p[0][0, 0] for p in kept.pairs()] == [2.0, 3.0]


def test_kept_windows_are_forgotten_when_none_was_kept_for_keep_for_and_kept_until_trimmed_without_it(client):
    forgetting, lasting = (
        KeptWindows(client, "kw-expiring", 4, keep_for_s=3.0),
        KeptWindows(client, "kw-lasting", 4),
    )
    for kept in (forgetting, lasting):
        keep(kept, 1.0)
        kept.keep_steps([lei_step(1.0)])
    assert 0 < client.pttl("dragon:kw-expiring:finetune:windows") <= 3000
    assert 0 < client.pttl("dragon:kw-expiring:finetune:steps") <= 3000
    assert client.pttl("dragon:kw-lasting:finetune:windows") == -1  # no expiry
    time.sleep(1.8)
    keep(forgetting, 2.0)  # a write restarts the clock of its set
    assert client.pttl("dragon:kw-expiring:finetune:windows") > 2000
    time.sleep(1.8)  # margins of 0.6 s (steps gone) and 1.2 s (windows still there)
    assert [p[0][0, 0] for p in forgetting.pairs()] == [1.0, 2.0] and forgetting.steps() == []
    time.sleep(1.8)
    assert forgetting.pairs() == [] and len(lasting.pairs()) == 1 and len(lasting.steps()) == 1


def test_equal_windows_of_two_hosts_are_two_and_a_float32_window_stays_float32(client):
    kept = KeptWindows(client, "kw6", capacity=8)
    keep(kept, 7.0, host="h1")
    keep(kept, 7.0, host="h2")
    window = np.arange(6, dtype=np.float32).reshape(3, 2) / 3
    kept.keep_pairs(["h1"], [(window, window + 1)])
    restored = kept.pairs()
    assert len(restored) == 3
    assert restored[-1][0].dtype == np.float32 and np.array_equal(restored[-1][0], window)


def test_kept_steps_round_trip_and_fill_the_capacity_in_host_windows(client):
    kept = KeptWindows(client, "kw2", capacity=5)  # two steps of two hosts fit, a third does not
    steps = [lei_step(v) for v in (1.0, 2.0, 3.0)]
    kept.keep_steps(steps[:1])
    kept.keep_steps(steps[1:])
    restored = kept.steps()
    assert len(restored) == 2
    for got, want in zip(restored, steps[1:], strict=True):
        assert (got.hosts, got.broker, got.tasks, got.judged) == (want.hosts, want.broker, want.tasks, ())
        for name in ("prev", "next", "task_prev", "task_next", "schedule"):
            assert np.array_equal(getattr(got, name), getattr(want, name)), name


def test_unreadable_kept_windows_are_removed_with_one_log_line(client):
    kept = KeptWindows(client, "kw3", capacity=4)
    keep(kept, 1.0)
    client.zadd("dragon:kw3:finetune:windows", {b"\xc1 not msgpack": 0.0, msgpack.packb([[[2], b"x"]]): 0.5})
    with structlog.testing.capture_logs() as logs:
        assert [p[0][0, 0] for p in kept.pairs()] == [1.0]
    assert [(e["event"], e["count"]) for e in logs] == [("kept_windows_unreadable_removed", 2)]
    assert client.zcard("dragon:kw3:finetune:windows") == 1


def clean_from(streak: int, windows: int, k: int) -> list[bool]:
    """Which of ``windows`` normal windows may be learnt from, the first being the host's
    ``streak``-th clean one in a row (``Transition.clean_streak``)."""
    return [streak + i >= k for i in range(windows)]


def replica(client, lei: str, name: str, **settings) -> FineTuner:
    """A fine-tuner keeping each clean window at once (pot_lag 0: the delay has its own unit tests)."""
    defaults = {"window": 4, "finetune_windows": 64, "finetune_reference": 10, "pot_lag": 0}
    config = DetectorConfig(**(defaults | settings))
    models = ModelStore(client, lei, "")
    return FineTuner(config, models, name, lei, TunerState.in_redis(client, lei, config.finetune_windows))


def test_windows_held_unconfirmed_are_dropped_when_another_replica_judged_their_host_since(client, host_scorer):
    """h1 was the other replica's a while, and it judged h1's windows (the fault the held ones may
    lead into among them): back here, they must not be confirmed across those."""
    scorer, windows = host_scorer
    k = scorer.window
    a, b = detector_on(client, "held", "a"), detector_on(client, "held", "b")
    a.scorer = b.scorer = scorer
    a.tuner = replica(client, "held", "a", pot_lag=3)
    normal = Verdict(0.1, 1.0, 0, (("cpu", 1.0),))
    a._publish([(Judged("h1", 1.0, 1.0, 1.0), normal)], "observed")
    a.tuner.observe(scorer, ["h1"] * (k + 2), windows[: k + 2], windows[1 : k + 3], clean_from(1, k + 2, k))
    kept = len(a.tuner._normal)
    a._unjudged([SimpleNamespace(host="h1", ts=3.0)], "observed")
    a._drop_held_judged_elsewhere({"h1"})  # nobody else judged h1: nothing dropped
    b._publish([(Judged("h1", 2.0, 2.0, 1.0), normal)], "observed")
    a._unjudged([SimpleNamespace(host="h1", ts=3.0)], "observed")
    a._drop_held_judged_elsewhere({"h1"})
    a.tuner.observe(scorer, ["h1"], windows[k + 2 : k + 3], windows[k + 3 : k + 4], [True])
    assert len(a.tuner._normal) == kept  # the three held before were dropped, not confirmed


def test_a_replica_that_starts_restores_the_clean_windows_another_kept(client, host_scorer):
    scorer, windows = host_scorer
    k, n = scorer.window, len(HOST_METRICS)
    first = replica(client, "kw4", "a")
    judged = len(windows) - 1
    first.observe(scorer, ["h1"] * judged, windows[:-1], windows[1:], clean_from(1, judged, k))
    assert len(first._normal) == len(windows) - k  # a window counts once k verdicts in a row were normal
    other_length = KeptWindows(client, "kw4", 64)  # kept under a model of another window length
    other_length.keep_pairs(["h9"], [pair(9.0, k=k + 1, n=n)])
    other_length.keep_steps([lei_step(1.0, k=k, n=n), lei_step(2.0, k=k + 1, n=n)])

    second = replica(client, "kw4", "b")
    second.restore()
    second.restore()  # idempotent: a retry after a lost connection does not double them
    assert (len(second._normal), len(second._steps)) == (len(first._normal) + 1, 2)
    # Scoring with the served model drops what it cannot take (a model of single hosts learns
    # from no LEI step), and the gate's floor, measured on the first replica's reference
    # windows, counts under the same model after a restart.
    assert first.gate.floor("h1") is not None
    second.observe(scorer, ["h1"], windows[-2:-1], windows[-1:], clean_from(1, 1, k))
    assert list(second._steps) == []
    assert len(second._normal) == len(first._normal)
    for (p, n_), (q, m) in zip(second._normal, first._normal, strict=True):
        assert np.array_equal(p, q) and np.array_equal(n_, m)
    assert second.gate.floor("h1") == first.gate.floor("h1")


def test_a_replica_behind_another_judges_a_sample_on_the_window_up_to_it(client, host_scorer):
    """Every replica stores every sample; the owner of a host may be behind another that stored
    newer ones (it reconnected later, it is slower): its window ends at the sample it judges, not
    at the newest stored, nor is it padded for want of older rows."""
    scorer, _ = host_scorer
    n = len(HOST_METRICS)
    detector = detector_on(client, "behind", "a", DRAGON_WINDOW=str(scorer.window))
    detector.scorer = scorer
    detector.windows.append_many([("h1", float(ts), ts, [ts / 100] * n) for ts in range(30)])
    judged = HostSample("behind", "h1", 24.0, 24, 1.0, HostMetrics(*[0.24] * n))
    scored = detector._score([judged])
    k = scorer.window
    assert np.allclose(scored.next[0][:, 0], [ts / 100 for ts in range(25 - k, 25)])
    assert np.allclose(scored.prev[0][:, 0], [ts / 100 for ts in range(24 - k, 24)])


def waiting(detector: Detector) -> list[tuple[str, bytes]]:
    return [(m.topic, m.payload) for m in detector.mqtt._client._out_messages.values()]


def test_a_silent_host_is_reported_once_by_its_owner_with_a_model_dated_after_its_last_sample(client, host_scorer):
    scorer, _ = host_scorer
    detector = detector_on(client, "quiet", "a", DRAGON_DETECTOR_SILENT_INTERVALS="3")
    hear_h2_fall_silent(detector)

    detector._report_silent()  # no model served yet (an on-line warm-up): nobody is judged
    assert waiting(detector) == [] and detector.counters.snapshot().get("silences_reported") is None

    detector.scorer = scorer
    detector._silence_checked_at = 0.0
    detector._report_silent()
    began = math.nextafter(1_000_049.0, math.inf)
    health = detector._health[("h2", "observed")]  # retained at QoS 0: paho keeps none while away
    assert (health.host, health.ts, health.label, health.cause) == ("h2", began, 1, "silent")
    (event,) = [codec.decode(FaultEvent, payload, 65536) for topic, payload in waiting(detector) if "faults/" in topic]
    assert (event.type, event.host, event.window_ts, event.cause) == ("start", "h2", began, "silent")
    queued = len(waiting(detector))

    detector._silence_checked_at = 0.0
    detector._report_silent()  # the same silence: not again
    assert len(waiting(detector)) == queued and detector.counters.snapshot()["silences_reported"] == 1


def test_a_silence_opens_its_fault_at_its_own_time_after_windows_nobody_judged(client, host_scorer):
    """With DRAGON_FAULT_START_WINDOWS > 1, h2's last verdict was a pending alarm at 1_000_040; its
    samples up to 1_000_049 were stored and never judged (its replica was killed). The silence
    must not carry that alarm's run across them and date the fault 9 s back."""
    scorer, _ = host_scorer
    detector = detector_on(
        client, "quiet-run", "a", DRAGON_DETECTOR_SILENT_INTERVALS="3", DRAGON_FAULT_START_WINDOWS="3"
    )
    detector.scorer = scorer
    alarm = Verdict(2.0, 1.0, 1, (("cpu", 1.0),))
    assert detector._publish([(Judged("h2", 1_000_040.0, 1_000_040.0, 1.0), alarm)], "observed")[0].kind == ""
    hear_h2_fall_silent(detector)
    detector._report_silent()
    health = detector._health[("h2", "observed")]
    assert (health.cause, health.faulty_since) == ("silent", math.nextafter(1_000_049.0, math.inf))


def test_a_reconnect_restores_only_the_verdicts_that_are_still_their_hosts_newest(client, host_scorer):
    """While replica b owned h2 it judged a newer window (h2 fell silent, say). Back to a, h2's
    retained health must not go back to a's older verdict at a's next reconnect: it would
    contradict the fault state, for good if h2 never sends again."""
    scorer, _ = host_scorer
    a, b = (detector_on(client, "republish", name) for name in ("a", "b"))
    a.scorer = b.scorer = scorer
    normal, alarm = Verdict(0.1, 1.0, 0, (("cpu", 1.0),)), Verdict(2.0, 1.0, 1, (("cpu", 1.0),))
    a._publish([(Judged(host, 1.0, 1.0, 1.0), normal) for host in ("h1", "h2")], "observed")
    b._publish([(Judged("h2", 2.0, 2.0, 1.0), alarm)], "observed")
    a.republish_state()
    republished = [codec.decode(HostHealth, p, 65536) for topic, p in waiting(a) if topic.endswith("/health")]
    assert [(h.host, h.ts) for h in republished] == [("h1", 1.0)]
    assert ("h2", "observed") not in a._health


def test_a_silence_recorded_before_a_lost_reply_still_shows_in_health(client, host_scorer):
    """The reply to the silence's transition was lost: the retry found it recorded (stale) and
    published no health, and no window of the silent host ever comes to publish one."""
    scorer, _ = host_scorer
    detector = detector_on(client, "quiet-lost", "a", DRAGON_DETECTOR_SILENT_INTERVALS="3")
    detector.scorer = scorer
    hear_h2_fall_silent(detector)
    began = math.nextafter(1_000_049.0, math.inf)
    detector.faults["observed"].update_many([("h2", began, 1)], at_once=[True])  # the lost reply's
    detector._report_silent()
    health = detector._health[("h2", "observed")]
    assert (health.ts, health.label, health.cause, health.faulty_since) == (began, 1, "silent", began)


def test_a_host_gone_for_an_hour_is_forgotten_in_memory_and_kept_in_redis(client, host_scorer):
    """h2 fell silent (reported) and sent nothing for over an hour: it left the LEI. The replica
    forgets it; Redis keeps its fault, which a sample of it coming back would go on from."""
    scorer, _ = host_scorer
    detector = detector_on(client, "departed", "a", DRAGON_DETECTOR_SILENT_INTERVALS="3")
    detector.scorer = scorer
    start = time.monotonic() - FORGET_AFTER_S - 200
    for second in range(60):
        hosts = ("h1", "h2") if second < 50 else ("h1",)
        samples = [SimpleNamespace(host=host, ts=1_000_000.0 + second, interval_s=1.0) for host in hosts]
        detector.silence.heard(samples, start + second)
    for second in range(60, int(FORGET_AFTER_S) + 150, 10):  # h1 sends on, every 10 s here, till 50 s ago
        samples = [SimpleNamespace(host="h1", ts=1_000_000.0 + second, interval_s=1.0)]
        detector.silence.heard(samples, start + second)
    detector._forget_departed()  # h2 left an hour ago, but its silence is not reported yet
    assert detector.silence.interval("h2") == 1.0
    detector._report_silent()
    assert ("h2", "observed") in detector._health and "h2" in detector._reported_silent
    now = time.monotonic()
    detector._forgot_at = 0.0
    with structlog.testing.capture_logs() as logs:
        detector._forget_departed()
    assert [entry["hosts"] for entry in logs if entry["event"] == "hosts_forgotten"] == [["h2"]]
    assert ("h2", "observed") not in detector._health and "h2" not in detector._reported_silent
    assert detector.silence.departed(now) == {} and detector.silence.interval("h2") == 0.0
    assert detector.faults["observed"].last_judged(["h2"]) == {"h2": math.nextafter(1_000_049.0, math.inf)}


def test_a_reconnect_that_finds_redis_away_republishes_once_it_is_back(client, host_scorer, monkeypatch):
    """Redis still loading after a reboot when the broker connection came back: which verdicts are
    current is unknown, so none is republished then, and all are after the next batch."""
    scorer, _ = host_scorer
    detector = detector_on(client, "republish-later", "a")
    detector.scorer = scorer
    detector._publish([(Judged("h1", 1.0, 1.0, 1.0), Verdict(0.1, 1.0, 0, (("cpu", 1.0),)))], "observed")
    faults = detector.faults["observed"]
    with monkeypatch.context() as away:
        away.setattr(faults, "last_judged", lambda hosts: (_ for _ in ()).throw(redis.ConnectionError("loading")))
        detector.republish_state()
    assert detector._republish_owed and not [t for t, _ in waiting(detector) if t.endswith("/health")]
    sample = HostSample("republish-later", "h2", time.time(), 1, 1.0, HostMetrics(*[0.1] * len(HOST_METRICS)))
    detector.on_samples([Incoming(topics.host_sample("republish-later", "h2"), codec.encode(sample), 1, False, "")])
    assert not detector._republish_owed
    assert topics.host_health("republish-later", "h1") in [t for t, _ in waiting(detector)]


def hear_h2_fall_silent(detector: Detector) -> None:
    """h1 and h2 every second, then h1 alone for 10 s: h2's last sample is at 1_000_049."""
    start = time.monotonic() - 100  # long enough ago for the grace after the first sample to be over
    for second in range(60):
        hosts = ("h1", "h2") if second < 50 else ("h1",)
        samples = [SimpleNamespace(host=host, ts=1_000_000.0 + second, interval_s=1.0) for host in hosts]
        detector.silence.heard(samples, start + second)


def test_a_silent_host_is_reported_by_its_owner_only(client, host_scorer):
    scorer, _ = host_scorer
    a, b = (detector_on(client, "quiet2", name, DRAGON_DETECTOR_SILENT_INTERVALS="3") for name in ("a", "b"))
    for replica in (a, b):
        replica.membership.beat()
    for replica in (a, b):
        replica.membership._refreshed = float("-inf")  # read the members now
        replica.scorer = scorer
        hear_h2_fall_silent(replica)
    (owner,) = [replica for replica in (a, b) if replica.membership.owns("h2")]
    (other,) = [replica for replica in (a, b) if replica is not owner]
    other._report_silent()  # first: the fault state would take its report as well as the owner's
    owner._report_silent()
    assert waiting(other) == [] and any("faults/" in topic for topic, _ in waiting(owner))


def test_a_redis_that_refuses_leaves_the_state_in_memory_and_scoring_goes_on(client, host_scorer):
    scorer, windows = host_scorer
    client.set("dragon:kw7:finetune:windows", "not a sorted set")  # every call on it: WRONGTYPE
    tuner = replica(client, "kw7", "a")
    with structlog.testing.capture_logs() as logs:
        tuner.restore()
        for i in range(8):  # one scored batch each: from the k-th on, each keeps a window
            tuner.observe(
                scorer, ["h1"], windows[i : i + 1], windows[i + 1 : i + 2], clean_from(i + 1, 1, scorer.window)
            )
    events = [entry["event"] for entry in logs]
    assert "finetune_windows_not_restored" in events
    failed = 8 - scorer.window + 1
    assert len(tuner._normal) == failed
    # Not a line per batch: one, and a counter of every write that failed.
    assert events.count("finetune_state_not_written") == 1
    assert tuner.counters.snapshot()["finetune_state_not_written"] == failed
    client.delete("dragon:kw7:finetune:windows")  # Redis takes writes again
    with structlog.testing.capture_logs() as logs:
        tuner.observe(scorer, ["h1"], windows[8:9], windows[9:10], clean_from(9, 1, scorer.window))
    assert [(e["event"], e.get("failed_writes")) for e in logs if "written" in e["event"]] == [
        ("finetune_state_written_again", failed)
    ]
    assert client.zcard("dragon:kw7:finetune:windows") == 1


def test_a_replica_that_measures_a_floor_stored_first_by_another_adopts_that_one(client, host_scorer):
    scorer, windows = host_scorer
    k = scorer.window
    second = replica(client, "kw10", "b")
    second.observe(scorer, ["h1"], windows[:1], windows[1:2], clean_from(1, 1, k))  # serving, no floor stored yet
    first = replica(client, "kw10", "a")
    first.observe(scorer, ["h1"] * 20, windows[:20], windows[1:21], clean_from(1, 20, k))
    # The second measures its reference on later windows: another floor, but the first one stays.
    later = k + 9
    second.observe(scorer, ["h1"] * later, windows[-k - 10 : -1], windows[-k - 9 :], clean_from(2, later, k))
    assert first.gate.floor("h1") is not None and second.gate.floor("h1") == first.gate.floor("h1")
    assert GateFloors(client, "kw10").load(scorer.model_id, second.gate.how_measured) == {"h1": first.gate.floor("h1")}


def test_the_first_floor_of_a_host_under_a_model_stays(client):
    floors = GateFloors(client, "kw8")
    assert floors.settle("model-a", "q1", {"h1": 0.75}) == {"h1": 0.75}
    # A replica that took h1 over measured a later, lower floor: the first one is in force.
    assert floors.settle("model-a", "q1", {"h1": 0.25, "h2": 0.5}) == {"h1": 0.75, "h2": 0.5}
    assert floors.load("model-a", "q1") == {"h1": 0.75, "h2": 0.5}


def client_after_whose_first_read_a_rival_settles(client, lei: str, rival_floor: float) -> redis.Redis:
    """A client of the same Redis; right after its first HMGET another replica settles h1's floor.

    The interleaving two replicas hit only by chance, forced: whether the floors are read
    directly or inside a transaction, the rival writes between the read and the write.
    """
    rival, fired = GateFloors(client, lei), []

    def rival_settles_once() -> None:
        if not fired:
            fired.append(True)
            rival.settle("model-a", "q1", {"h1": rival_floor})

    class Pipeline(redis.client.Pipeline):
        def hmget(self, *args, **kwargs):
            read = super().hmget(*args, **kwargs)
            rival_settles_once()
            return read

    class Client(redis.Redis):
        def hmget(self, *args, **kwargs):
            read = super().hmget(*args, **kwargs)
            rival_settles_once()
            return read

        def pipeline(self, transaction=True, shard_hint=None):
            return Pipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)

    return Client(connection_pool=client.connection_pool)


def test_a_floor_settled_by_another_replica_between_the_read_and_the_write_is_the_one_in_force(client):
    racing = GateFloors(client_after_whose_first_read_a_rival_settles(client, "kw-race", 0.75), "kw-race")
    # Read and write apart, this replica read "no floor", wrote 0.25 over the rival's and used it.
    assert racing.settle("model-a", "q1", {"h1": 0.25}) == {"h1": 0.75}
    assert GateFloors(client, "kw-race").load("model-a", "q1") == {"h1": 0.75}


def test_settling_floors_gives_up_when_another_replica_writes_during_every_attempt(client):
    reads = []

    class Pipeline(redis.client.Pipeline):
        def hmget(self, *args, **kwargs):
            read = super().hmget(*args, **kwargs)
            reads.append(read)
            if len(reads) > 50:  # the old code retried for ever: fail here, not hang
                raise AssertionError("settle did not give up")
            client.hset("dragon:kw-busy:finetune:floors", "other", len(reads))  # a rival's write, each time
            return read

    class Client(redis.Redis):
        def pipeline(self, transaction=True, shard_hint=None):
            return Pipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)

    busy = GateFloors(Client(connection_pool=client.connection_pool), "kw-busy")
    with pytest.raises(redis.WatchError, match=f"{SETTLE_ATTEMPTS} attempts"):
        busy.settle("model-a", "q1", {"h1": 0.25})
    assert len(reads) == SETTLE_ATTEMPTS
    assert GateFloors(client, "kw-busy").load("model-a", "q1") == {}  # nothing half-written
    # The next batch, with no rival, stores it.
    assert GateFloors(client, "kw-busy").settle("model-a", "q1", {"h1": 0.25}) == {"h1": 0.25}


def test_gate_floors_count_only_under_the_model_and_gate_settings_they_were_measured_with(client):
    floors = GateFloors(client, "kw5")
    floors.settle("model-a", "q1", {"h1": 0.75, "h2": 0.5, "h4": 0.125})
    floors.settle("model-b", "q1", {"h2": 0.25})  # h2 measured again under a newer model
    floors.settle("model-a", "q2", {"h4": 0.0625})  # h4 by a replica whose gate measures otherwise
    client.hset("dragon:kw5:finetune:floors", "h3", b"\xc1 not msgpack")
    assert floors.load("model-a", "q1") == {"h1": 0.75}
    assert floors.load("model-b", "q1") == {"h2": 0.25}
    assert floors.load("model-a", "q2") == {"h4": 0.0625}
    assert floors.load("model-c", "q1") == {}


def test_a_write_redis_refuses_for_now_waits_until_it_is_taken_not_dropped(client):
    """At maxmemory (or read-only, or unable to persist) Redis answers with an error: the write is
    retried until Redis takes it again, as during an outage, not given up (and its data lost)."""
    store = WindowStore(client, "oom", history=10)
    client.config_set("maxmemory", "1")  # below what is used: every write is refused
    written = threading.Event()

    def write() -> None:
        retry_until(lambda: store.append("h1", 1.0, 1, [0.5] * 7), threading.Event(), "append")
        written.set()

    worker = threading.Thread(target=write)
    try:
        worker.start()
        assert not written.wait(1.0), "a write was taken at maxmemory"
    finally:
        client.config_set("maxmemory", "0")  # an operator frees memory
    assert written.wait(10) and store.count("h1") == 1
    worker.join(5)


def test_the_learner_waits_while_redis_refuses_writes_instead_of_dying(client):
    """Recorded enough to learn, but Redis at maxmemory refuses the training lock: the learner
    must wait and try again (before, its thread died and the detector never served a model)."""
    lei = "oom-learner"
    windows = WindowStore(client, lei, history=100)
    now = time.time()
    windows.append_many([("h1", now - 60 + i, i, [0.1] * len(HOST_METRICS)) for i in range(40)])
    cfg = config.load(DetectorConfig, LEARN_QUICKLY)
    stop = threading.Event()
    learner = OnlineLearner(cfg, windows, ModelStore(client, lei, ""), stop, "replica-1")
    client.config_set("maxmemory", "1")
    try:
        learner.start()
        time.sleep(2 * CHECK_INTERVAL_S + 1)  # two tries at the lock, each refused
        assert learner._thread.is_alive()
    finally:
        stop.set()
        client.config_set("maxmemory", "0")
    learner._thread.join(10)


def test_a_host_gone_long_before_the_others_does_not_keep_the_lei_from_learning(client):
    """A collector that ran a moment under a wrong name, or a host renamed: its few samples stay in
    the record, and the learner waited for it to be recorded long enough, for good, silently."""
    lei = "gone-host"
    windows = WindowStore(client, lei, history=100)
    now = time.time()
    windows.append_many([("h1", now - 60 + i, i, [0.1 + 0.01 * (i % 3)] * len(HOST_METRICS)) for i in range(60)])
    windows.append_many([("pi-typo", now - 3600 + i, i, [0.1] * len(HOST_METRICS)) for i in range(5)])
    cfg = config.load(
        DetectorConfig,
        {
            "DRAGON_DETECTOR_WARMUP": "10",
            "DRAGON_DETECTOR_WARMUP_MIN_SAMPLES": "20",
            "DRAGON_DETECTOR_TRAIN_EPOCHS": "2",
        },
    )
    stop = threading.Event()
    models = ModelStore(client, lei, "")
    learner = OnlineLearner(cfg, windows, models, stop, "replica-1")
    try:
        learner.start()
        deadline = time.monotonic() + 60
        while models.current_id() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert models.current_id() is not None, "no model learnt"
    finally:
        stop.set()
    learner._thread.join(10)


def test_a_replica_retakes_the_learning_lock_it_left_and_no_other_does(client):
    """Killed while learning (OOM on a Pi), a replica comes back under its slot's name: it must not
    wait out the lock it left (15 min), and no other replica may take it meanwhile."""
    models = ModelStore(client, "relock", "")
    assert models.try_lock("relock-0")
    assert not models.try_lock("relock-1")
    assert models.try_lock("relock-0")  # back after a crash
    models.unlock("relock-0")
    assert models.try_lock("relock-1")


def test_a_fault_in_force_when_redis_lost_its_data_still_ends_with_an_event(client, host_scorer):
    """A Redis restarted without its data forgot the fault a host was in: its normal windows ended
    nothing, and every subscriber that saw the fault start kept it open for good."""
    scorer, _ = host_scorer
    detector = detector_on(client, "lost-fault", "a", DRAGON_FAULT_CLEAR_WINDOWS="2")
    detector.scorer = scorer
    judge = judging(detector)
    assert [judge(1.0, 1), judge(2.0, 1)] == ["start", ""]
    client.flushall()
    assert [judge(3.0, 0), judge(4.0, 0)] == ["", "end"]
    topic = topics.fault_event("lost-fault", "h1")
    sent = [codec.decode(FaultEvent, payload, 65536) for to, payload in waiting(detector) if to == topic]
    assert [(e.type, e.window_ts) for e in sent] == [("start", 1.0), ("end", 4.0)]


def test_the_service_opens_a_fault_on_its_start_windows_th_alarm_and_a_silence_at_once(client, host_scorer):
    scorer, _ = host_scorer
    detector = detector_on(client, "start-windows", "a", DRAGON_FAULT_START_WINDOWS="2")
    detector.scorer = scorer
    judge = judging(detector)
    assert [judge(1.0, 1), judge(2.0, 0), judge(3.0, 1), judge(4.0, 1), judge(5.0, 1)] == ["", "", "", "start", ""]
    health = detector._health[("h1", "observed")]
    assert (health.label, health.faulty_since) == (1, 3.0)
    topic = topics.fault_event("start-windows", "h1")
    sent = [codec.decode(FaultEvent, payload, 65536) for to, payload in waiting(detector) if to == topic]
    assert [(e.type, e.window_ts) for e in sent] == [("start", 4.0)]
    silence = detector._publish([(Judged("h2", 7.5, 7.5), Verdict.silent())], "observed")  # as _report_silent
    assert [t.kind for t in silence] == ["start"]
    assert [judge(6.0, 0), judge(7.0, 0), judge(8.0, 0)] == ["", "", "end"]
    # A run of alarms spans at most 2.5 of the host's intervals between two windows (1 s here).
    assert [judge(10.0, 1), judge(13.0, 1), judge(14.0, 1)] == ["", "", "start"]
    assert detector._health[("h1", "observed")].faulty_since == 13.0


def test_a_start_opened_within_a_batch_is_kept_in_the_outbox(client, host_scorer):
    """Two alarms of a host in one batch, after a pending one: the replica took the first for the
    opening one and gave the second no event to keep, so the start that came was sent from
    nowhere, and lost if the broker never had it."""
    scorer, _ = host_scorer
    detector = detector_on(client, "start-batch", "a", DRAGON_FAULT_START_WINDOWS="3")
    detector.scorer = scorer
    assert judging(detector)(1.0, 1) == ""
    alarm = Verdict(2.0, 1.0, 1, (("cpu", 1.0),))
    batch = [(Judged("h1", ts, ts, 1.0), alarm) for ts in (2.0, 3.0)]
    assert [t.kind for t in detector._publish(batch, "observed")] == ["", "start"]
    (start,) = [
        e for e in map(lambda p: codec.decode(FaultEvent, p, 65536), detector.faults["observed"].outbox().values())
    ]
    assert (start.type, start.window_ts) == ("start", 3.0)


def test_a_fault_that_ended_or_that_another_replica_may_have_ended_is_not_restored(client, host_scorer):
    """Restored from the replica's last verdict that ended it, a fault ended twice and the next
    one never started; restored from a verdict long ago, one another replica ended came back."""
    scorer, _ = host_scorer
    detector = detector_on(client, "ended-fault", "a", DRAGON_FAULT_CLEAR_WINDOWS="2")
    detector.scorer = scorer
    judge = judging(detector)
    assert [judge(1.0, 1), judge(2.0, 0), judge(3.0, 0)] == ["start", "", "end"]
    client.flushall()
    assert judge(4.0, 1) == "start"
    client.flushall()  # the replica's last verdict is at 4.0, a fault in force; its next window comes much later
    assert [judge(20.0, 0), judge(21.0, 0)] == ["", ""]


def test_after_redis_lost_its_data_the_first_replica_to_beat_takes_no_other_replicas_hosts(client):
    """The first replica to beat after a data loss took itself for the only member for a second:
    it judged the other's hosts, with no memory of their faults, and its normal verdict, first on
    a host with no state, kept the owner from restoring the fault (which then never ended)."""
    a, b = Membership(client, "settling", "a"), Membership(client, "settling", "b")
    a.beat()
    b.beat()
    settled_long_ago(client, "settling")
    assert members_now(a) == members_now(b) == ["a", "b"]
    hosts_of_b = [host for host in (f"h{i}" for i in range(20)) if b.owns(host)]
    client.flushall()
    a.beat()  # b's next beat comes up to a second later
    assert members_now(a) == ["a", "b"] and not any(a.owns(host) for host in hosts_of_b)
    # A replica that died with the data is noticed once the members' set has settled.
    settled_long_ago(client, "settling")
    assert members_now(a) == ["a"]
    b.beat()
    assert members_now(a) == ["a", "b"]  # and one that comes back, at once


def test_settling_ends_a_lifetime_after_the_loss_even_if_nobody_beats_and_spares_those_that_left(client):
    """A set nobody beat since the loss (every replica benched) never recorded its beginning: the
    replicas counted the members they knew for good, and the dead ones' hosts were never judged.
    A replica that left on purpose while the set settled kept its hosts from the others."""
    a, b, d = (Membership(client, "settling-2", name) for name in "abd")
    for replica in (a, b, d):
        replica.beat()
    assert members_now(a) == ["a", "b", "d"]
    client.flushall()
    assert members_now(a) == ["a", "b", "d"]  # nobody beats since the loss, yet a's read dated the set:
    assert client.exists("dragon:settling-2:detectors:began")  # it settles a lifetime after
    settled_long_ago(client, "settling-2")
    assert members_now(a) == ["a"]
    client.flushall()
    a._members = ["a", "b", "d"]
    b.beat()
    d.leave()
    assert members_now(a) == ["a", "b"]  # settling, but d said it left
    d.beat()
    assert members_now(a) == ["a", "b", "d"]  # and it is back
    seconds, _ = client.time()
    client.set("dragon:settling-2:detectors:began", str(seconds + 3600))  # Redis's clock set back an hour
    a._members = ["a", "b", "d", "gone"]
    assert members_now(a) == ["a", "b", "d"]  # settling ended, not stretched until the clock catches up


def test_the_members_are_read_while_redis_refuses_writes(client):
    """A read dates the members' set: at maxmemory (or read-only) Redis refused the whole read,
    and owns() raised in the middle of a batch, which was then acknowledged and never judged."""
    a, b = Membership(client, "refusing", "a"), Membership(client, "refusing", "b")
    a.beat()
    b.beat()
    client.delete("dragon:refusing:detectors:began")  # not dated yet: the read would date it
    client.config_set("maxmemory", "1")  # below what is used: every write is refused
    try:
        assert members_now(a) == ["a", "b"]
    finally:
        client.config_set("maxmemory", "0")
    assert not client.exists("dragon:refusing:detectors:began")
    members_now(a)
    assert client.exists("dragon:refusing:detectors:began")  # dated once Redis takes writes again


def members_now(membership: Membership) -> list[str]:
    membership._refreshed = float("-inf")  # read now, not after a second
    return membership.members()


def judging(detector: Detector) -> Callable[[float, int], str]:
    """Judge h1's window at ``ts`` (one a second) with ``label``; the transition's kind."""

    def judge(ts: float, label: int) -> str:
        verdict = Verdict(2.0 if label else 0.1, 1.0, label, (("cpu", 1.0),))
        return detector._publish([(Judged("h1", ts, ts, 1.0), verdict)], "observed")[0].kind

    return judge


def test_replicas_whose_clocks_differ_by_an_hour_see_each_other_as_members(client, monkeypatch):
    """Stamped on each replica's clock, a heartbeat an hour ahead never expired and one an hour
    behind was never live: two replicas judged the same hosts, or none."""
    real = time.time
    ahead, behind = Membership(client, "clocks", "ahead"), Membership(client, "clocks", "behind")
    monkeypatch.setattr(time, "time", lambda: real() + 3600)
    ahead.beat()
    monkeypatch.setattr(time, "time", lambda: real() - 3600)
    behind.beat()
    assert behind.members() == ["ahead", "behind"]
    monkeypatch.setattr(time, "time", lambda: real() + 3600)
    time.sleep(1.1)  # members are read at most once a second (on the monotonic clock)
    assert ahead.members() == ["ahead", "behind"]


def test_windows_held_unconfirmed_are_dropped_when_a_reconnect_finds_another_replica_judged_the_host(
    client, host_scorer
):
    """A broker restart's republish forgets our verdict of a host another replica judged since; the
    held windows then escaped the check that looks for such hosts by our verdict, and were
    confirmed across what the other replica saw."""
    scorer, windows = host_scorer
    k = scorer.window
    a, b = detector_on(client, "held-reconnect", "a"), detector_on(client, "held-reconnect", "b")
    a.scorer = b.scorer = scorer
    a.tuner = replica(client, "held-reconnect", "a", pot_lag=3)
    a.membership.beat()  # a alone is a member: it owns h1
    normal = Verdict(0.1, 1.0, 0, (("cpu", 1.0),))
    a._publish([(Judged("h1", 1.0, 1.0, 1.0), normal)], "observed")
    a.tuner.observe(scorer, ["h1"] * (k + 2), windows[: k + 2], windows[1 : k + 3], clean_from(1, k + 2, k))
    kept = len(a.tuner._normal)
    b._publish([(Judged("h1", 2.0, 2.0, 1.0), normal)], "observed")  # while h1 was b's
    a.republish_state()  # the broker came back
    assert ("h1", "observed") not in a._health
    a.tuner.observe(scorer, ["h1"], windows[k + 2 : k + 3], windows[k + 3 : k + 4], [True])
    assert len(a.tuner._normal) == kept  # the three held before were dropped, not confirmed
