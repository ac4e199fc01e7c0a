"""Bad input, restarted infrastructure and scaled detectors: the LEI keeps working, loses nothing."""

from __future__ import annotations

import time

import msgpack
import pytest

from dragon.detector.health import HostFaultState
from dragon.detector.membership import HEARTBEAT_TTL_S, owner
from dragon.detector.service import OUTBOX_SWEEP_S
from dragon.messages import codec, topics
from dragon.messages.schemas import FaultEvent, HostMetrics, HostSample
from dragon.store import WindowStore
from dragon.testing.listener import Listener, publish

from .conftest import SAMPLE_INTERVAL_S, fresh_health, health_of, live_counters
from .test_faults import events, finished, inject_into_quiet_host, watch

pytestmark = pytest.mark.integration


DROP_REASONS = ("malformed", "oversized", "schema", "version", "future")
A_YEAR_S = 365 * 86400.0


def test_garbage_oversized_and_wrong_shape_payloads_are_dropped(lei):
    before = live_counters(lei, "detector")
    sample_topic = topics.host_sample(lei.lei, "h1")
    collector = lei.mqtt_settings("collector")
    publish(collector, sample_topic, b"\xc1\xc1 not msgpack")
    publish(collector, sample_topic, b"\x00" * 70_000)  # over 64 KiB; far larger, the broker keeps it
    publish(collector, sample_topic, msgpack.packb({"v": 1, "lei": lei.lei, "host": "h1", "ts": "yesterday"}))
    publish(collector, sample_topic, msgpack.packb({"v": 9}))
    # Well formed, but from a year ahead: judged, it would make h1's real windows look judged already.
    ahead = HostSample(lei.lei, "h1", time.time() + A_YEAR_S, 1, 1.0, HostMetrics(0.1, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0))
    publish(collector, sample_topic, codec.encode(ahead), codec.MSGPACK)
    # A rate no disk reaches (float32 overflows on it).
    flood = HostSample(lei.lei, "h1", time.time(), 2, 1.0, HostMetrics(0.1, 0.1, 0.0, 1e300, 0.0, 0.0, 0.0))
    publish(collector, sample_topic, codec.encode(flood), codec.MSGPACK)
    fresh_health(lei, "h1")
    logs = lei.logs("detector")
    for reason in DROP_REASONS:
        assert f'"reason": "{reason}"' in logs, f"no drop logged for {reason}"
    assert "mqtt_handler_failed" not in logs
    # Each drop is counted, and the counters are published while the detector runs on.
    live_counters(
        lei, "detector", lambda c: all(c.get(f"dropped_{r}", 0) > before.get(f"dropped_{r}", 0) for r in DROP_REASONS)
    )


def test_a_sample_delivered_again_after_it_was_judged_is_not_judged_again(lei):
    """A broker redelivers what was not acknowledged before a restart: the copy is dropped before
    its generation (as the detector's published counters say) and publishes nothing."""
    before = live_counters(lei, "detector").get("windows_already_judged", 0)
    with Listener(lei.mqtt_settings(), [topics.host_sample(lei.lei, "h1")]) as samples:
        (message, *_) = samples.wait_for(lambda m: True, 10)
    judged_ts = codec.decode(HostSample, message.payload, 65536, message.content_type).ts
    fresh_health(lei, "h1")  # judged, and a newer one too
    with Listener(lei.mqtt_settings(), [topics.host_health(lei.lei, "h1")]) as health:
        publish(lei.mqtt_settings("collector"), topics.host_sample(lei.lei, "h1"), message.payload, codec.MSGPACK)
        health.wait_for(lambda m: not m.retain and health_of(m).ts > judged_ts, 10)
        time.sleep(2 * SAMPLE_INTERVAL_S)
        assert not [m for m in health.matching(lambda m: not m.retain) if health_of(m).ts == judged_ts]
    live_counters(lei, "detector", lambda c: c.get("windows_already_judged", 0) > before)


def test_mosquitto_restart_loses_no_sample(lei):
    store = WindowStore(lei.redis_client(), lei.lei, history=10**6)
    since = time.time()
    time.sleep(4 * SAMPLE_INTERVAL_S)
    lei.restart("mosquitto", "running")
    time.sleep(4 * SAMPLE_INTERVAL_S)  # the collector keeps sampling while the detector reconnects
    for host in lei.hosts:
        fresh_health(lei, host, timeout=60)
    assert_no_gap(store, since)


def test_redis_restart_loses_no_sample(lei):
    since = time.time()
    time.sleep(4 * SAMPLE_INTERVAL_S)  # samples before the restart must survive it too
    lei.restart("redis", "Ready to accept connections")
    for host in lei.hosts:
        fresh_health(lei, host, timeout=60)
    # A new client: the restarted container's port mapping has changed.
    assert_no_gap(WindowStore(lei.redis_client(), lei.lei, history=10**6), since)


def assert_no_gap(store: WindowStore, since: float) -> None:
    for host in ("h1", "h2"):
        seqs = store.sequence_numbers(host, since - 2.0)
        assert len(seqs) > 5, f"too few samples of {host} since the restart: {seqs}"
        missing = sorted(set(range(seqs[0], seqs[-1] + 1)) - set(seqs))
        assert missing == [], f"{host}: samples {missing} were lost"


def test_the_samples_a_killed_replica_left_unjudged_are_judged_by_the_one_taking_its_hosts_over(lei):
    """A replica killed without leaving owns its hosts until its heartbeat expires, while the other
    replicas only store their samples. The replica that takes a host over judges those, in order,
    before the host's next sample: every sample of h1 taken after the kill gets its verdict."""
    first = lei.containers["detector"].env["DRAGON_INSTANCE"]
    second = next(name for name in (f"detector-2-{i}" for i in range(100)) if owner("h1", [first, name]) == name)
    store = WindowStore(lei.redis_client(), lei.lei, history=10**6)
    before = live_counters(lei, "detector").get("windows_judged_late", 0)
    with Listener(lei.mqtt_settings(), [topics.host_health(lei.lei, "h1")]) as health:
        lei.start_detector("detector-2", {"DRAGON_INSTANCE": second, "DRAGON_DETECTOR_WARMUP": "20"})
        try:
            time.sleep(4)  # h1 is the new replica's once both have seen its first heartbeat
            lei.containers["detector-2"].get_wrapped_container().kill()
            killed = time.time()
            (last, *_) = health.wait_for(
                lambda m: not m.retain and health_of(m).ts > killed + HEARTBEAT_TTL_S + 2, HEARTBEAT_TTL_S + 30
            )
        finally:
            lei.stop_service("detector-2")
        judged = {health_of(m).ts for m in health.matching(lambda m: not m.retain)}
    # From the kill on (a verdict recorded by the killed replica just before it may never have been sent).
    stored = [ts for ts, _ in store.recent("h1", 10_000) if killed < ts <= health_of(last).ts]
    assert len(stored) > 2 * HEARTBEAT_TTL_S / SAMPLE_INTERVAL_S / 3, stored  # the collector sampled on
    assert [ts for ts in stored if ts not in judged] == []
    live_counters(lei, "detector", lambda c: c.get("windows_judged_late", 0) > before)


def test_a_detector_recreated_in_place_of_another_resumes_its_session_and_loses_no_sample(lei):
    """Compose recreates a container (a new image, a changed setting) under a new host name. Named
    after its container, the new replica came back under a new MQTT session, and the samples
    published while neither ran were never stored. Named after its slot, it takes the stopped
    one's slot, and so its session with those samples."""
    store = WindowStore(lei.redis_client(), lei.lei, history=10**6)
    main = lei.containers["detector"].get_wrapped_container()
    main.stop(timeout=30)  # its own session keeps what comes meanwhile; the replicas below have none yet
    try:
        lei.start_detector("old", {"DRAGON_INSTANCE": ""})
        fresh_health(lei, "h1", timeout=60)
        slot = f'"slot": "{lei.lei}-0"'
        assert slot in lei.logs("old")
        lei.stop_service("old", grace_s=30)  # as compose stops a container it recreates
        since = time.time()
        time.sleep(6 * SAMPLE_INTERVAL_S)  # samples no detector receives now
        lei.start_detector("new", {"DRAGON_INSTANCE": ""})
        assert slot in lei.logs("new")
        for host in lei.hosts:
            fresh_health(lei, host, timeout=60)
        assert_no_gap(store, since)
    finally:
        lei.stop_service("new")
        started = int(time.time())
        main.start()
        lei.restart_wait("detector", "mqtt_connected", since=started)


def test_two_detectors_publish_one_event_per_fault(lei):
    lei.start_detector("detector-2", {"DRAGON_DETECTOR_WARMUP": "20"})
    try:
        with watch(lei) as listener:
            injected = inject_into_quiet_host(lei, listener, "h2", "cpu", duration_s=15)
            time.sleep(8)  # the fault goes on, both replicas judging: a second start would come by now
            heard = [e for e in events(listener, "h2") if e.window_ts > injected.began]
            # Modules after this one share the LEI: they need h2's CPU to itself.
            listener.wait_for(lambda m: finished(m, injected.command.id), 30)
        assert heard == [injected.starts["observed"]], heard
        # Both replicas took part: each one scored windows (the shared subscription splits samples).
        for name in ("detector", "detector-2"):
            assert '"model_serving"' in lei.logs(name)
    finally:
        # As compose stops it: it leaves the membership at once, so the next test finds one
        # detector, as the LEI had before this one, not a dead one owning hosts for 10 s more.
        lei.stop_service("detector-2", grace_s=10)


def test_a_fault_event_whose_sender_died_before_the_broker_had_it_is_sent_again(lei):
    """A replica records the transition, then dies before its event reaches the broker (or the
    Redis reply is lost): the event waits in the outbox, and the host's owner sends it again."""
    host, event_id = "h-lost", f"lost-{time.time_ns()}"
    event = FaultEvent(
        event_id, "start", lei.lei, host, time.time() - 60, time.time() - 60, 3.0, 1.0, 1, "observed", (), "m", "gone"
    )
    with Listener(lei.mqtt_settings(), [topics.fault_event(lei.lei, host)]) as listener:
        state = HostFaultState(lei.redis_client(), lei.lei, clear_windows=3)
        assert state.update_many([(host, event.window_ts, 1)], [(event_id, codec.encode(event))])[0].kind == "start"
        # Within a sweep of the outbox, once the host's owner is known (a replica that died leaves it
        # with its heartbeat).
        (message, *_) = listener.wait_for(lambda m: True, OUTBOX_SWEEP_S + HEARTBEAT_TTL_S + 5)
    sent = codec.decode(FaultEvent, message.payload, 65536, message.content_type)
    assert (sent.event_id, sent.type, sent.host) == (event_id, "start", host)
    deadline = time.monotonic() + 10
    while event_id in state.outbox() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert event_id not in state.outbox()  # acknowledged by the broker: sent once
    # The real hosts' events (of the faults before) left the outbox as soon as the broker had them.
    waiting = [codec.decode(FaultEvent, payload, 65536, codec.MSGPACK) for payload in state.outbox().values()]
    assert all(time.time() - event.ts < 30 for event in waiting), waiting
    live_counters(lei, "detector", lambda c: c.get("events_sent_again", 0) >= 1)
