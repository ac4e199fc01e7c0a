"""The simulator service's state and answers, without MQTT: samples in, snapshots and responses out."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import paho.mqtt.client as paho
import pytest

from dragon.lateness import OwnClockSteps
from dragon.messages import codec
from dragon.messages.schemas import (
    DecisionVerdict,
    ForecastSample,
    HostForecast,
    HostMetrics,
    HostSample,
    Schedule,
    SimRequest,
    SimResponse,
    TaskMove,
    TaskPlacement,
    TaskUsage,
)
from dragon.mqtt import Counters, MqttClient
from dragon.settings import MqttSettings
from dragon.sim.federation import EDGE_WAN, GIGABIT_LAN
from dragon.sim.qos import CoSimulator
from dragon.sim.twin import UNPLACED, TwinParams
from dragon.simulator.answers import RequestError, answer, decision_array
from dragon.simulator.forecasting import REVISION_STEP_S, Revisions, forecast_samples, stamped
from dragon.simulator.view import FederationView, follow_samples, follow_schedules

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0


def sample(lei: str, host: str, cpu: float, tasks=(), ts: float = NOW, ram: float = 0.3) -> HostSample:
    metrics = HostMetrics(cpu=cpu, ram=ram, swap=0.0, disk_read=0.0, disk_write=1e3, net_rx=1e4, net_tx=1e4)
    usage = tuple(TaskUsage(id=t, name=t, cpu=c, ram_bytes=100e6) for t, c in tasks)
    return HostSample(lei=lei, host=host, ts=ts, seq=1, interval_s=1.0, metrics=metrics, tasks=usage)


def two_lei_view() -> FederationView:
    """LEI a: h1 overloaded by tasks t1, t2; h2 idle. LEI b: h3 idle, h4 running t3."""
    view = FederationView(stale_intervals=3, background_samples=10, lan=GIGABIT_LAN, wan=EDGE_WAN)
    view.observe(sample("a", "h1", 0.1, ts=NOW - 5), NOW)  # an idle moment: h1's background
    view.observe(sample("a", "h1", 0.95, [("t1", 0.5), ("t2", 0.35)]), NOW)
    view.observe(sample("a", "h2", 0.05), NOW)
    view.observe(sample("b", "h3", 0.05), NOW)
    view.observe(sample("b", "h4", 0.3, [("t3", 0.25)]), NOW)
    return view


def simulator_of(snapshot) -> CoSimulator:
    n = snapshot.background.shape[1]
    return CoSimulator(snapshot.federation, TwinParams(snapshot.background, np.ones(n), np.zeros(n)))


def test_a_snapshot_orders_hosts_by_lei_and_places_tasks_where_they_were_last_seen():
    snap = two_lei_view().snapshot(NOW)
    assert snap.hosts == (("a", "h1"), ("a", "h2"), ("b", "h3"), ("b", "h4"))
    assert snap.tasks == ("t1", "t2", "t3")
    assert snap.state.placement.tolist() == [0, 0, 3]
    assert snap.federation.lei_of_host == ("a", "a", "b", "b") and snap.federation.brokers == (0, 2)
    assert snap.state.demand[:, 0].tolist() == [0.5, 0.35, 0.25]  # measured per-task cpu
    assert snap.background[0, 0] == pytest.approx(0.1)


def test_stale_hosts_are_left_out_and_an_empty_view_is_an_error():
    view = two_lei_view()
    assert len(view.snapshot(NOW + 2.5).hosts) == 4
    assert view.snapshot(NOW + 2.5).ts == NOW
    with pytest.raises(ValueError, match="no host has reported"):
        view.snapshot(NOW + 10)


def test_a_task_that_moved_counts_where_its_newest_sample_lists_it_and_keeps_its_home_lei():
    view = two_lei_view()
    view.observe(sample("a", "h1", 0.6, [("t2", 0.35)], ts=NOW + 1), NOW)
    view.observe(sample("b", "h3", 0.55, [("t1", 0.5)], ts=NOW + 1), NOW)
    snap = view.snapshot(NOW + 1)
    assert snap.state.placement[snap.task_index("t1")] == snap.host_index("b", "h3")
    assert snap.federation.leis[snap.state.home_lei[snap.task_index("t1")]] == "a"


def test_a_task_two_samples_of_one_instant_list_runs_where_it_uses_more_cpu():
    """Mid-move, one collector tick may list a task on both hosts: the larger share wins, whatever
    the hosts' names, as in the detector's schedule (lei._placement)."""
    for old, new in (("h1", "h2"), ("h2", "h1")):
        view = FederationView(stale_intervals=3, background_samples=10, lan=GIGABIT_LAN, wan=EDGE_WAN)
        view.observe(sample("a", old, 0.1, [("t1", 0.05)]), NOW)  # winding down
        view.observe(sample("a", new, 0.5, [("t1", 0.45)]), NOW)  # restored, running
        snap = view.snapshot(NOW)
        assert snap.state.placement[snap.task_index("t1")] == snap.host_index("a", new), (old, new)


def test_a_task_listed_nowhere_while_it_moves_keeps_its_home_lei():
    """A CRIU move stops the task on its old host before it runs on the new one: a snapshot taken
    between the two samples sees it nowhere, and must not forget where its users are."""
    view = two_lei_view()
    view.observe(sample("a", "h1", 0.45, [("t2", 0.35)], ts=NOW + 1), NOW + 1)  # t1 checkpointed
    assert "t1" not in view.snapshot(NOW + 1).tasks
    view.observe(sample("b", "h3", 0.55, [("t1", 0.5)], ts=NOW + 2), NOW + 2)  # restored in LEI b
    snap = view.snapshot(NOW + 2)
    assert snap.federation.leis[snap.state.home_lei[snap.task_index("t1")]] == "a"


def test_a_schedule_newer_than_the_samples_places_a_moved_task_at_once():
    view = two_lei_view()
    moved = Schedule(lei="a", ts=NOW + 1, tasks=(TaskPlacement("t1", "c1", "h2", since=NOW + 0.5),))
    view.observe_schedule(moved, now=NOW + 1)
    assert view.snapshot(NOW + 1).state.placement.tolist() == [1, 0, 3]  # t1 on h2 before h2 reports it


def test_a_moved_tasks_load_leaves_its_old_host_in_the_state_the_planner_plans_from():
    view = two_lei_view()
    moved = Schedule(lei="a", ts=NOW + 1, tasks=(TaskPlacement("t1", "c1", "h2", since=NOW + 0.5),))
    view.observe_schedule(moved, now=NOW + 1)
    snap = view.snapshot(NOW + 1)
    assert snap.state.usage[:2, 0].tolist() == pytest.approx([0.95 - 0.5, 0.05 + 0.5])
    assert snap.sampled.usage[:2, 0].tolist() == pytest.approx([0.95, 0.05])  # what was measured
    assert snap.state.demand[:, 0].tolist() == pytest.approx([0.5, 0.35, 0.25])  # measured where it ran
    # Planning from it, moving nothing forecasts what the detector's forecast says.
    unmoved = simulator_of(snap).evaluate(snap.state, np.full((1, 3), UNPLACED)).usage[0]
    assert unmoved[:2, 0].tolist() == pytest.approx(
        [f.metrics.cpu for f in forecast_samples(snap, simulator_of(snap), "a")]
    )


def test_a_schedule_older_than_the_samples_changes_nothing():
    view = two_lei_view()
    old = Schedule(lei="a", ts=NOW, tasks=(TaskPlacement("t1", "c1", "h2", since=NOW - 60),))
    view.observe_schedule(old, now=NOW)  # t1 ran on h2 once; h1's newer sample lists it: it moved back
    assert view.snapshot(NOW).state.placement.tolist() == [0, 0, 3]


def test_an_older_schedule_never_replaces_a_newer_one():
    view = two_lei_view()
    view.observe_schedule(
        Schedule(lei="a", ts=NOW + 2, tasks=(TaskPlacement("t1", "c1", "h2", since=NOW + 1),)), now=NOW + 2
    )
    view.observe_schedule(Schedule(lei="a", ts=NOW + 1, tasks=()), now=NOW + 2)  # redelivered late
    assert view.snapshot(NOW + 2).state.placement.tolist() == [1, 0, 3]


def test_an_older_sample_never_replaces_a_newer_one_and_is_refused():
    view = two_lei_view()
    assert not view.observe(sample("a", "h2", 0.9, ts=NOW - 1), NOW)
    assert not view.observe(sample("a", "h2", 0.9, ts=NOW), NOW)  # redelivered
    assert view.snapshot(NOW).state.usage[1, 0] == pytest.approx(0.05)


def test_evaluate_answers_every_decision_and_moving_off_the_overloaded_host_clears_it():
    snap = two_lei_view().snapshot(NOW)
    request = SimRequest(id="r1", kind="evaluate", decisions=((), (TaskMove("t1", "b", "h3"),)))
    response = answer(request, snap, simulator_of(snap), max_decisions=8)
    assert response.ok and response.id == "r1" and (response.hosts, response.tasks) == (4, 3)
    stay, move = response.verdicts
    assert stay.anomalous_hosts == ("a/h1",) and move.anomalous_hosts == ()
    assert stay.migration_s == 0 and move.migration_s > 0
    assert move.fitness < stay.fitness
    assert codec.decode(SimResponse, codec.encode(response), 65536) == response  # it fits its own schema


def test_next_window_forecasts_every_host_under_the_moves():
    snap = two_lei_view().snapshot(NOW)
    request = SimRequest(id="r2", kind="next_window", decisions=((TaskMove("t1", "a", "h2"),),))
    response = answer(request, snap, simulator_of(snap), max_decisions=8)
    by_host = {(f.lei, f.host): f.metrics for f in response.forecast}
    assert by_host[("a", "h1")].cpu == pytest.approx(0.45)
    assert by_host[("a", "h2")].cpu == pytest.approx(0.55)
    assert by_host[("b", "h4")].cpu == pytest.approx(0.3)


def test_a_moved_task_takes_the_memory_its_host_said_it_uses():
    """A task that ran through all of its host's last samples is part of the host's background
    (its lowest usage), so its share of the host's excess memory is about 0: only the memory
    the collector measured for it, as a share of the host's, moves with it."""
    view = FederationView(stale_intervals=3, background_samples=10, lan=GIGABIT_LAN, wan=EDGE_WAN)
    capacity = 4e9
    for t in range(12):  # t1 on h1 all along, holding half its memory
        busy = HostMetrics(cpu=0.6, ram=0.7, swap=0.0, disk_read=0.0, disk_write=0.0, net_rx=0.0, net_tx=0.0)
        usage = (TaskUsage(id="t1", name="t1", cpu=0.5, ram_bytes=0.5 * capacity),)
        view.observe(HostSample("a", "h1", NOW - 11 + t, 1, 1.0, busy, usage, ram_capacity_bytes=capacity), NOW)
        view.observe(sample("a", "h2", 0.1, ts=NOW - 11 + t, ram=0.2), NOW)
    snap = view.snapshot(NOW)
    request = SimRequest(id="r", kind="next_window", decisions=((TaskMove("t1", "a", "h2"),),))
    by_host = {(f.lei, f.host): f.metrics for f in answer(request, snap, simulator_of(snap), 8).forecast}
    assert by_host[("a", "h2")].ram == pytest.approx(0.7)
    assert by_host[("a", "h1")].ram == pytest.approx(0.2)
    # From a collector that does not say its hosts' memory: the share of the excess, as before.
    older = HostSample("a", "h1", NOW + 1, 1, 1.0, busy, usage)
    view.observe(older, NOW + 1)
    snap = view.snapshot(NOW + 1)
    by_host = {(f.lei, f.host): f.metrics for f in answer(request, snap, simulator_of(snap), 8).forecast}
    assert by_host[("a", "h2")].ram == pytest.approx(0.2)


def test_a_task_moved_to_a_host_with_less_memory_takes_its_bytes_not_its_share():
    """Every host says its memory: a task's memory moves in bytes. Half of an 8 GB host is all of
    a 2 GB one (its share, 0.5, moved as a share, left the small host at 0.7 and no overload)."""
    view = FederationView(stale_intervals=3, background_samples=10, lan=GIGABIT_LAN, wan=EDGE_WAN)
    big, small = 8e9, 2e9
    for t in range(12):
        busy = HostMetrics(cpu=0.6, ram=0.7, swap=0.0, disk_read=0.0, disk_write=0.0, net_rx=0.0, net_tx=0.0)
        idle = dataclasses.replace(busy, cpu=0.1, ram=0.2)
        usage = (TaskUsage(id="t1", name="t1", cpu=0.5, ram_bytes=0.5 * big),)
        view.observe(HostSample("a", "h1", NOW - 11 + t, 1, 1.0, busy, usage, ram_capacity_bytes=big), NOW)
        view.observe(HostSample("a", "h2", NOW - 11 + t, 1, 1.0, idle, (), ram_capacity_bytes=small), NOW)
    snap = view.snapshot(NOW)
    request = SimRequest(id="r", kind="next_window", decisions=((TaskMove("t1", "a", "h2"),),))
    by_host = {(f.lei, f.host): f.metrics for f in answer(request, snap, simulator_of(snap), 8).forecast}
    assert by_host[("a", "h2")].ram == pytest.approx(1.0)  # full: more than it has
    assert by_host[("a", "h1")].ram == pytest.approx(0.2)
    evaluated = answer(dataclasses.replace(request, kind="evaluate"), snap, simulator_of(snap), 8)
    (verdict,) = evaluated.verdicts
    assert "a/h2" in verdict.anomalous_hosts


@pytest.mark.parametrize(
    ("moves", "reason", "message"),
    [
        ((TaskMove("nope", "b", "h3"),), "unknown", "task 'nope'"),
        ((TaskMove("t1", "c", "h9"),), "unknown", "host c/h9"),
        ((TaskMove("t1", "b", "h3"), TaskMove("t1", "b", "h4")), "invalid", "moved twice"),
    ],
)
def test_decisions_naming_what_is_not_there_are_refused_with_the_reason(moves, reason, message):
    snap = two_lei_view().snapshot(NOW)
    with pytest.raises(RequestError, match=message) as refused:
        decision_array(snap, moves)
    assert refused.value.reason == reason


def test_too_many_decisions_are_refused():
    snap = two_lei_view().snapshot(NOW)
    request = SimRequest(id="r3", kind="evaluate", decisions=((),) * 5)
    with pytest.raises(RequestError, match="at most 4") as refused:
        answer(request, snap, simulator_of(snap), max_decisions=4)
    assert refused.value.reason == "too_many"


def test_an_empty_decision_stays_put():
    snap = two_lei_view().snapshot(NOW)
    assert decision_array(snap, ()).tolist() == [UNPLACED] * 3


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"id": "x", "kind": "evaluate"}, "needs decisions"),
        ({"id": "x", "kind": "explode"}, "kind must be"),
        ({"id": "", "kind": "next_window"}, "1-64"),
        ({"id": "x", "kind": "next_window", "decisions": [[], []]}, "one decision"),
    ],
)
def test_sim_requests_are_validated(fields, message):
    with pytest.raises(ValueError, match=message):
        SimRequest.from_dict({"v": 1, **fields})


def test_a_sample_from_the_future_is_refused_and_hides_nothing():
    view = two_lei_view()
    assert not view.observe(sample("a", "h2", 0.8, ts=NOW + 3600), NOW)
    assert view.observe(sample("a", "h2", 0.2, ts=NOW + 1), NOW + 1)
    assert view.snapshot(NOW + 1).state.usage[1, 0] == pytest.approx(0.2)


def test_hosts_gone_for_an_hour_are_forgotten_with_their_tasks_home_leis():
    view = two_lei_view()
    later = NOW + 3700
    view.observe(sample("b", "h3", 0.1, ts=later), later)
    snap = view.snapshot(later)
    assert snap.hosts == (("b", "h3"),) and view.known_leis() == {"b"}
    assert view._home_lei == {} and view._dropped == {}  # t1..t3 ran on hosts now forgotten


def test_an_overflowing_simulation_is_refused_not_answered_with_infinities():
    view = FederationView(stale_intervals=3, background_samples=10, lan=GIGABIT_LAN, wan=EDGE_WAN)
    huge = HostMetrics(cpu=0.5, ram=0.3, swap=0.0, disk_read=1.7e308, disk_write=0.0, net_rx=0.0, net_tx=0.0)
    task = (TaskUsage(id="t1", name="t1", cpu=0.1, ram_bytes=1e6),)
    view.observe(sample("a", "h1", 0.1, ts=NOW - 5), NOW)  # h1's background: no disk reads
    view.observe(HostSample("a", "h1", NOW, 1, 1.0, huge, task), NOW)  # t1 reads 1.7e308 B/s, so it seems
    view.observe(HostSample("a", "h2", NOW, 1, 1.0, huge, ()), NOW)
    snap = view.snapshot(NOW)
    request = SimRequest(id="r", kind="next_window", decisions=((TaskMove("t1", "a", "h2"),),))
    with pytest.raises(RequestError, match="overflowed"):
        answer(request, snap, simulator_of(snap), max_decisions=8)


def simulator_service():
    from dragon import config
    from dragon.simulator.config import SimulatorConfig
    from dragon.simulator.service import Simulator

    return Simulator(config.load(SimulatorConfig, {"DRAGON_LEI": "a", "DRAGON_INSTANCE": "sim-1"}))


@pytest.mark.parametrize(
    ("topic", "ok"),
    [
        ("dragon/a/sim/response/me", True),
        ("dragon/a/sim/response/app/q1", False),  # the ACL lets us write one level down only
        ("dragon/a/sim/response/", False),
        ("dragon/a/sim/response", False),
        ("dragon/a/sim/response/#", False),
        ("dragon/a/sim/response/+", False),
        ("dragon/b/sim/response/me", False),
        ("dragon/a/migrations/commands", False),
        ("", False),
    ],
)
def test_answers_go_only_to_one_topic_under_the_response_prefix(topic, ok):
    assert simulator_service().answerable(topic) is ok


def test_the_size_limit_is_checked_on_the_bytes_actually_sent():
    service = simulator_service()
    verdict = DecisionVerdict(0.51234567, 0.41234567, 0.31234567, 0.61234567, 0.0, ("a/h1",), 0.0123456, 0.0123456)
    big = SimResponse(id="r", ok=True, kind="evaluate", verdicts=(verdict,) * 400)
    packed, as_json = len(codec.encode(big)), len(codec.encode_json(big))
    assert packed <= 65536 < as_json  # the JSON rendering is the one over the limit
    response, payload = service.encoded(big, as_json=True)
    assert not response.ok and response.reason == "too_large" and len(payload) < 65536
    assert "DRAGON_MAX_PAYLOAD" in response.error and "fewer decisions" in response.error
    assert service.encoded(big, as_json=False)[0].ok


def test_a_next_window_answer_too_large_says_the_federation_is_what_makes_it_so():
    """It carries one decision at most: "ask about fewer decisions" would send its requester nowhere."""
    metrics = HostMetrics(*(0.5123456789012345,) * 3, *(12345678.901234567,) * 4)  # full-precision floats
    forecast = HostForecast("lei1", "h100", metrics)
    big = SimResponse(id="r", ok=True, kind="next_window", hosts=400, tasks=0, forecast=(forecast,) * 400)
    response, _ = simulator_service().encoded(big, as_json=True)
    assert response.reason == "too_large" and "DRAGON_MAX_PAYLOAD" in response.error
    assert "400 hosts" in response.error and "fewer decisions" not in response.error


def test_forecasts_stop_at_the_hosts_disk_and_network_throughput():
    view = FederationView(3, 10, GIGABIT_LAN, EDGE_WAN, disk_bps=45e6, net_bps=125e6)
    busy = HostMetrics(cpu=0.5, ram=0.3, swap=0.0, disk_read=40e6, disk_write=0.0, net_rx=100e6, net_tx=0.0)
    view.observe(sample("a", "h1", 0.1, ts=NOW - 5), NOW)
    view.observe(HostSample("a", "h1", NOW, 1, 1.0, busy, (TaskUsage("t1", "t1", 0.4, 1e6),)), NOW)
    view.observe(HostSample("a", "h2", NOW, 1, 1.0, busy, ()), NOW)
    snap = view.snapshot(NOW)
    request = SimRequest(id="r", kind="next_window", decisions=((TaskMove("t1", "a", "h2"),),))
    (_, h2) = answer(request, snap, simulator_of(snap), max_decisions=8).forecast
    assert (h2.metrics.disk_read, h2.metrics.net_rx) == (45e6, 125e6)  # 80 MB/s and 200 MB/s cannot happen


def test_values_beyond_a_hosts_capacity_are_taken_at_capacity():
    view = FederationView(3, 10, GIGABIT_LAN, EDGE_WAN, disk_bps=45e6, net_bps=125e6)
    absurd = HostMetrics(cpu=3.5, ram=0.3, swap=0.0, disk_read=1.7e308, disk_write=0.0, net_rx=0.0, net_tx=0.0)
    view.observe(HostSample("a", "h1", NOW, 1, 1.0, absurd, (TaskUsage("t1", "t1", 3.0, 1e6),)), NOW)
    snap = view.snapshot(NOW)
    assert snap.state.usage[0, 0] == 1.0 and snap.state.usage[0, 3] == 45e6
    assert snap.state.demand[0, 0] == 1.0


def test_samples_may_arrive_while_another_thread_takes_snapshots():
    import sys
    import threading

    view = two_lei_view()
    stop, errors = threading.Event(), []

    def feed() -> None:
        step = 0
        while not stop.is_set():
            step += 1
            view.observe(sample("a", f"n{step % 50}", 0.2, [(f"x{step}", 0.1)], ts=NOW + step * 1e-6), NOW + 1)

    feeder = threading.Thread(target=feed)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, so an unguarded race shows
    feeder.start()
    try:
        for _ in range(300):
            view.snapshot(NOW + 1)
    except Exception as exc:  # a dict or deque changed size during iteration, before the lock
        errors.append(exc)
    finally:
        stop.set()
        feeder.join()
        sys.setswitchinterval(interval)
    assert errors == []


def test_a_hosts_background_is_the_minimum_of_its_last_samples():
    from dragon.simulator.view import HostRecord

    rng = np.random.default_rng(5)
    record, history = HostRecord(0.0, 1.0, 0.0, np.zeros(3), {}), []
    for _ in range(500):
        usage = np.round(rng.uniform(0, 1, 3), 1)  # rounded: many ties, as constant metrics give
        history.append(usage)
        record.add(usage, keep=40)
        assert np.array_equal(record.background, np.min(history[-40:], axis=0))


# --- forecasts for the detector's predicted mode ------------------------------------------------
def test_without_a_move_a_hosts_forecast_is_its_newest_sample_one_interval_on():
    snap = two_lei_view().snapshot(NOW)
    forecasts = forecast_samples(snap, simulator_of(snap), "a", simulator="sim-1")
    assert [(f.lei, f.host) for f in forecasts] == [("a", "h1"), ("a", "h2")]  # its own LEI only
    h1, h2 = forecasts
    assert (h1.ts, h1.based_on_ts, h1.for_ts) == (NOW, NOW, NOW + 1.0)
    assert h1.metrics.cpu == pytest.approx(0.95) and h2.metrics.cpu == pytest.approx(0.05)
    assert h1.tasks == ("t1", "t2") and h2.tasks == () and h1.simulator == "sim-1"
    assert codec.decode(ForecastSample, codec.encode(h1), 65536) == h1


def test_a_move_the_samples_do_not_show_yet_is_in_the_forecast_of_both_hosts():
    view = two_lei_view()
    moved = Schedule(lei="a", ts=NOW + 0.6, tasks=(TaskPlacement("t1", "c1", "h2", since=NOW + 0.5),))
    view.observe_schedule(moved, now=NOW + 0.7)
    snap = view.snapshot(NOW + 0.7)
    assert snap.pending_moves().tolist() == [1, UNPLACED, UNPLACED]  # t1 -> h2 (index 1)
    h1, h2 = forecast_samples(snap, simulator_of(snap), "a")
    assert h2.metrics.cpu == pytest.approx(0.05 + 0.5)  # t1's measured demand arrives on h2
    assert h1.metrics.cpu == pytest.approx(0.95 - 0.5)  # and leaves h1
    assert h2.tasks == ("t1",) and h1.tasks == ("t2",)
    assert h2.ts == h2.based_on_ts == NOW  # stamped with its sample: stamped() marks a revision


def test_a_task_restored_on_its_new_host_counts_there_before_any_sample_lists_it():
    """Checkpoint/restore stops t1 on h1 before it runs on h2: h1's next sample lists it no more,
    the migrator's schedule places it on h2, and h2 has not sampled since. Its load must be in
    the planner's state and in h2's forecast, not missing from both."""
    view = two_lei_view()
    view.observe(sample("a", "h1", 0.45, [("t2", 0.35)], ts=NOW + 1), NOW + 1)
    restored = Schedule(lei="a", ts=NOW + 2, tasks=(TaskPlacement("t1", "c9", "h2", since=NOW + 1.5),))
    view.observe_schedule(restored, now=NOW + 2)
    snap = view.snapshot(NOW + 2)
    t1, h2 = snap.task_index("t1"), snap.host_index("a", "h2")
    assert snap.sampled.placement[t1] == UNPLACED and snap.state.placement[t1] == h2
    assert snap.state.usage[h2, 0] == pytest.approx(0.05 + 0.5)  # its measured cpu, carried to h2
    assert snap.federation.leis[snap.state.home_lei[t1]] == "a"
    h1_forecast, h2_forecast = forecast_samples(snap, simulator_of(snap), "a")
    assert h2_forecast.metrics.cpu == pytest.approx(0.05 + 0.5) and h2_forecast.tasks == ("t1",)
    assert h1_forecast.metrics.cpu == pytest.approx(0.45) and h1_forecast.tasks == ("t2",)


def test_a_task_moved_off_a_host_gone_silent_is_brought_back_on_its_new_host():
    """h4 stopped reporting (it is stale, its last sample still lists t3); LEI b's migrator restored
    t3 on h3, which has not listed it yet."""
    view = two_lei_view()
    for lei, host in (("a", "h1"), ("a", "h2"), ("b", "h3")):
        view.observe(sample(lei, host, 0.05, ts=NOW + 5), NOW + 5)
    view.observe_schedule(Schedule(lei="b", ts=NOW + 5, tasks=(TaskPlacement("t3", "c7", "h3", NOW + 4),)), now=NOW + 5)
    snap = view.snapshot(NOW + 5)
    assert ("b", "h4") not in snap.hosts
    assert snap.state.placement[snap.task_index("t3")] == snap.host_index("b", "h3")
    assert snap.state.demand[snap.task_index("t3"), 0] == pytest.approx(0.25)  # as h4 last measured it


def test_a_task_that_stopped_after_its_move_is_not_brought_back_by_a_silent_hosts_old_sample():
    """t3 moved off h4, which then fell silent still listing it; h3 ran it and then dropped it (it
    stopped for good). The drop on h3 is t3's last word, not h4's older sample."""
    view = two_lei_view()
    for lei, host in (("a", "h1"), ("a", "h2"), ("b", "h3")):
        view.observe(sample(lei, host, 0.05, ts=NOW + 2), NOW + 2)
    view.observe_schedule(Schedule(lei="b", ts=NOW + 2, tasks=(TaskPlacement("t3", "c7", "h3", NOW + 2),)), now=NOW + 2)
    view.observe(sample("b", "h3", 0.65, [("t3", 0.6)], ts=NOW + 4), NOW + 4)
    view.observe(sample("b", "h3", 0.05, ts=NOW + 5), NOW + 5)  # t3 stopped
    for at in (NOW + 5, NOW + 6):
        snap = view.snapshot(at)
        assert "t3" not in snap.tasks, at
    assert view._home_lei["t3"] == "b" and view._dropped["t3"].cpu == 0.6


def test_a_restored_task_its_new_host_keeps_not_listing_is_let_go():
    """The schedule placed t1 on h2, but h2 has sampled since, well after t1 started there, without
    it: the schedule is out of date (its migrator stopped republishing) and t1 no phantom load."""
    view = two_lei_view()
    view.observe(sample("a", "h1", 0.45, [("t2", 0.35)], ts=NOW + 1), NOW + 1)
    view.observe_schedule(
        Schedule(lei="a", ts=NOW + 2, tasks=(TaskPlacement("t1", "c9", "h2", NOW + 1.5),)), now=NOW + 2
    )
    view.observe(sample("a", "h2", 0.05, ts=NOW + 3), NOW + 3)  # within the collector's cache refresh
    assert "t1" in view.snapshot(NOW + 3).tasks
    view.observe(sample("a", "h1", 0.45, [("t2", 0.35)], ts=NOW + 9), NOW + 9)
    view.observe(sample("a", "h2", 0.05, ts=NOW + 9), NOW + 9)
    snap = view.snapshot(NOW + 9)
    assert "t1" not in snap.tasks and snap.state.usage[snap.host_index("a", "h2"), 0] == pytest.approx(0.05)


def test_a_migrator_clock_ahead_of_ours_does_not_keep_a_task_arriving():
    """Its ``since`` 60 s ahead would hold the grace open for a minute: it counts from the arrival."""
    view = two_lei_view()
    view.observe(sample("a", "h1", 0.45, [("t2", 0.35)], ts=NOW + 1), NOW + 1)
    ahead = Schedule(lei="a", ts=NOW + 62, tasks=(TaskPlacement("t1", "c9", "h2", NOW + 61.5),))
    view.observe_schedule(ahead, now=NOW + 2)
    view.observe(sample("a", "h1", 0.45, [("t2", 0.35)], ts=NOW + 12), NOW + 12)
    view.observe(sample("a", "h2", 0.05, ts=NOW + 12), NOW + 12)
    assert "t1" not in view.snapshot(NOW + 12).tasks


def test_a_migrator_clock_ahead_of_ours_does_not_outvote_a_newer_sample():
    """A schedule placing t1 on h2 since 60 s ahead counts from its arrival: h1's sample after
    that still lists t1 (a move that did not happen), and the sample wins."""
    view = two_lei_view()
    ahead = Schedule(lei="a", ts=NOW + 62, tasks=(TaskPlacement("t1", "c9", "h2", NOW + 61.5),))
    view.observe_schedule(ahead, now=NOW + 2)
    view.observe(sample("a", "h1", 0.95, [("t1", 0.5), ("t2", 0.35)], ts=NOW + 2.5), NOW + 2.5)
    assert view.snapshot(NOW + 2.5).state.placement.tolist() == [0, 0, 3]


def test_a_task_a_stale_schedule_still_lists_is_not_brought_back():
    """A task stopped for good: the schedule that placed it is older than its last sample."""
    view = two_lei_view()
    view.observe(sample("a", "h1", 0.45, [("t2", 0.35)], ts=NOW + 1), NOW + 1)
    stale = Schedule(lei="a", ts=NOW + 2, tasks=(TaskPlacement("t1", "c1", "h1", since=NOW - 60),))
    view.observe_schedule(stale, now=NOW + 2)
    assert "t1" not in view.snapshot(NOW + 2).tasks


def test_a_task_its_new_host_reports_first_leaves_the_old_hosts_forecast_at_once():
    """t1 moved from h1 to h2; h2 reported it before h1 sampled again. h1's newest sample still
    carries t1's load, which must not count twice."""
    view = FederationView(stale_intervals=3, background_samples=10, lan=GIGABIT_LAN, wan=EDGE_WAN)
    view.observe(sample("a", "h1", 0.1, ts=NOW - 5), NOW)  # background: cpu 0.1, ram 0.3
    view.observe(sample("a", "h1", 0.95, [("t1", 0.5), ("t2", 0.35)], ram=0.7), NOW)
    view.observe(sample("a", "h2", 0.55, [("t1", 0.5)], ts=NOW + 0.5, ram=0.5), NOW + 0.5)
    snap = view.snapshot(NOW + 0.5)
    h1, h2 = forecast_samples(snap, simulator_of(snap), "a")
    assert h1.metrics.cpu == pytest.approx(0.95 - 0.5) and h1.tasks == ("t2",)
    # Not measured per task: t1 takes its share of h1's excess over background, (0.7 - 0.3) / 2.
    assert h1.metrics.ram == pytest.approx(0.7 - 0.2)
    assert (h2.metrics.cpu, h2.metrics.ram) == pytest.approx((0.55, 0.5)) and h2.tasks == ("t1",)
    assert snap.sampled.usage[snap.host_index("a", "h1"), 0] == pytest.approx(0.45)  # the planner's view too


def test_forecasts_of_only_the_hosts_asked_for_and_of_no_other_lei():
    view = two_lei_view()
    snap = view.snapshot(NOW)
    assert [f.host for f in forecast_samples(snap, simulator_of(snap), "a", hosts={"h2"})] == ["h2"]
    assert forecast_samples(snap, simulator_of(snap), "c") == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(ts=NOW - 1), "precede"),
        (dict(for_ts=NOW), "follow"),
        (dict(metrics=HostMetrics(2.0 * 4, 0, 0, 0, 0, 0, 0)), "fraction"),
        (dict(metrics=HostMetrics(0.1, 0, 0, -1.0, 0, 0, 0)), "negative"),
    ],
)
def test_forecast_samples_are_validated(fields, message):
    good = dict(lei="a", host="h1", ts=NOW, based_on_ts=NOW, for_ts=NOW + 1, metrics=HostMetrics(0.1, 0, 0, 0, 0, 0, 0))
    with pytest.raises(ValueError, match=message):
        ForecastSample.from_dict(ForecastSample(**(good | fields)).to_dict())


def test_next_window_answers_the_forecast_the_detector_gets_with_the_requested_moves_on_top():
    view = two_lei_view()
    view.observe_schedule(
        Schedule(lei="a", ts=NOW + 1, tasks=(TaskPlacement("t1", "c1", "h2", since=NOW + 0.5),)), now=NOW + 1
    )
    snap = view.snapshot(NOW + 1)
    sim = simulator_of(snap)
    published = {f.host: f.metrics for f in forecast_samples(snap, sim, "a")}
    plain = answer(SimRequest(id="r", kind="next_window"), snap, sim, max_decisions=8)
    assert {f.host: f.metrics for f in plain.forecast if f.lei == "a"} == published
    t2_too = SimRequest(id="r", kind="next_window", decisions=((TaskMove("t2", "a", "h2"),),))
    by_host = {f.host: f.metrics.cpu for f in answer(t2_too, snap, sim, max_decisions=8).forecast}
    assert by_host["h2"] == pytest.approx(0.05 + 0.5 + 0.35) and by_host["h1"] == pytest.approx(0.1)


def moved_on(forecast, step: int):
    """``forecast`` as another move would change it: ``step`` tasks more on its host."""
    return dataclasses.replace(forecast, tasks=forecast.tasks + tuple(f"extra-{i}" for i in range(step)))


def test_a_revision_that_forecasts_what_the_last_forecast_did_is_not_published():
    """A move between two hosts of a peer LEI changes nothing our hosts will see: republished
    1 ms later, the same forecast was judged as one more window (two alarms in a row from one
    sample, with DRAGON_FAULT_START_WINDOWS 2), and POT learnt its score twice."""
    view = two_lei_view()
    snap = view.snapshot(NOW)
    revisions: Revisions = {}
    stamped(forecast_samples(snap, simulator_of(snap), "a"), revisions, revised=False)
    view.observe_schedule(
        Schedule(lei="b", ts=NOW + 0.2, tasks=(TaskPlacement("t3", "c3", "h3", since=NOW + 0.1),)), now=NOW + 0.2
    )
    snap = view.snapshot(NOW + 0.2)
    assert snap.hosts[snap.state.placement[snap.tasks.index("t3")]] == ("b", "h3")  # the move is in the state
    assert stamped(forecast_samples(snap, simulator_of(snap), "a"), revisions, revised=True) == []


def test_each_revision_of_a_samples_forecast_is_newer_than_the_last_and_older_than_the_next_samples():
    """A schedule moved t1 after the samples: the forecasts made again from them must be judged in
    place of those already sent, and must never hide the next sample's forecast (1 s later)."""
    view = two_lei_view()
    snap = view.snapshot(NOW)
    revisions: Revisions = {}
    first = stamped(forecast_samples(snap, simulator_of(snap), "a"), revisions, revised=False)
    assert [f.ts for f in first] == [NOW, NOW]  # the samples' own times
    view.observe_schedule(
        Schedule(lei="a", ts=NOW + 0.2, tasks=(TaskPlacement("t1", "c1", "h2", since=NOW + 0.1),)), now=NOW + 0.2
    )
    snap = view.snapshot(NOW + 0.2)
    again = forecast_samples(snap, simulator_of(snap), "a")
    assert [f.ts for f in stamped(again, revisions, revised=True)] == [NOW + REVISION_STEP_S] * 2
    assert stamped(again, revisions, revised=True) == []  # the same forecast again: nothing new to judge
    for step in range(2, 1000):  # however often it is revised, at most half an interval after its sample
        latest = stamped([moved_on(f, step) for f in again], revisions, revised=True)
        if step == 2:
            assert [f.ts for f in latest] == [NOW + 2 * REVISION_STEP_S] * 2
    assert [f.ts for f in latest] == [NOW + 0.5] * 2
    view.observe(sample("a", "h2", 0.6, [("t1", 0.5)], ts=NOW + 1), NOW + 1)
    snap = view.snapshot(NOW + 1)
    (h2,) = stamped(forecast_samples(snap, simulator_of(snap), "a", hosts={"h2"}), revisions, revised=False)
    assert h2.ts == NOW + 1  # the next sample's: newer than every revision of the one before
    # A restarted simulator has forgotten its revisions: its first still supersedes the sample's forecast.
    assert stamped(again, {}, revised=True)[0].ts == NOW + REVISION_STEP_S


def delivered(topic: str, message) -> paho.MQTTMessage:
    received = paho.MQTTMessage(mid=1, topic=topic.encode())
    received.payload, received.qos = codec.encode(message), 1
    return received


def test_a_sample_posing_as_another_hosts_is_dropped_and_hides_nothing():
    """A peer's bridge may write its own LEI's topics only, but the payload names any host: filed
    under the payload's, a sample of b's would hide a's h1 and its tasks from the planner."""
    now = time.time()
    client, view = MqttClient(MqttSettings(), "simulator", "t-1", Counters()), two_lei_view()
    follow_samples(client, view)
    client._dispatch([delivered("dragon/b/hosts/h9/sample", sample("a", "h1", 0.0, ts=now))])
    assert client.counters.snapshot().get("dropped_schema") == 1
    assert view.snapshot(NOW).state.usage[0, 0] == pytest.approx(0.95)  # h1 as its own sample said


def test_a_schedule_stamped_ahead_is_dropped_and_an_unchanged_one_revises_no_forecast():
    now = time.time()
    client, view = MqttClient(MqttSettings(), "simulator", "t-1", Counters()), two_lei_view()
    changed: list[Schedule] = []
    follow_schedules(client, view, then=changed.append)
    moved = Schedule(lei="a", ts=now, tasks=(TaskPlacement("t1", "c1", "h2", since=now),))
    ahead = Schedule(lei="a", ts=now + 3600, tasks=())
    for schedule in (moved, ahead, dataclasses.replace(moved, ts=now + 1)):  # the migrator republishes it
        client._dispatch([delivered("dragon/a/tasks", schedule)])
    assert changed == [moved] and client.counters.snapshot().get("dropped_future") == 1
    assert view._schedule_ts["a"] == now + 1  # a real schedule of a is still taken


def test_a_host_whose_clock_runs_behind_stays_in_view_while_its_samples_arrive():
    """A Pi without a real-time clock and no NTP yet stamps its samples a minute behind: they
    still arrive, each interval, so the host is as fresh as any (by its stamps it was stale on
    arrival, and out of every plan)."""
    view = FederationView(stale_intervals=3, background_samples=10, lan=GIGABIT_LAN, wan=EDGE_WAN)
    view.observe(sample("a", "h1", 0.3, ts=NOW), NOW)
    view.observe(sample("b", "h3", 0.3, ts=NOW - 61), NOW - 1)  # the first: judged by its stamp, stale
    assert ("b", "h3") not in view.snapshot(NOW - 1).hosts
    view.observe(sample("b", "h3", 0.3, ts=NOW - 60), NOW)  # an interval later: it comes live
    assert {lei for lei, _ in view.snapshot(NOW + 1).hosts} == {"a", "b"}
    with pytest.raises(ValueError, match="no host has reported"):
        view.snapshot(NOW + 10)  # nothing arrived for 10 intervals


def test_a_step_of_our_own_clock_leaves_the_hosts_in_view():
    """NTP setting our clock (a Pi has no real-time clock) moved every host's lag by the step at
    once and not its usual lag (the least of its last LIVE_LAGS): stepped 10 s forward, every host
    looked 10 s late, stale, for 20 intervals, and no plan or forecast was made."""
    clocks = {"wall": NOW, "monotonic": 0.0}
    own_clock = OwnClockSteps(lambda: clocks["wall"], lambda: clocks["monotonic"])
    view = FederationView(3, 10, GIGABIT_LAN, EDGE_WAN, own_clock=own_clock)
    for t in range(25):  # our clock 10 s behind the hosts'
        view.observe(sample("a", "h1", 0.3, ts=NOW + 10 + t), clocks["wall"])
        clocks["wall"] += 1.0
        clocks["monotonic"] += 1.0
    clocks["wall"] += 10.0  # NTP sets it right
    for t in range(25, 28):
        view.observe(sample("a", "h1", 0.3, ts=NOW + 10 + t), clocks["wall"])
        assert view.snapshot(clocks["wall"]).hosts == (("a", "h1"),)
        clocks["wall"] += 1.0
        clocks["monotonic"] += 1.0
    assert view.usual_lag("a", "h1") == pytest.approx(0.0)


@pytest.mark.parametrize("order", ["the_old_lei_last", "the_new_lei_last"])
def test_a_task_two_schedules_list_is_where_it_began_last_whichever_is_heard_last(order):
    """t1 moved from b/h5 to a/h1; b's schedule still listing it (b republishes after the move, or
    its bridge was down) put it back on b/h5 when b's came last: the planner then held t1 as
    not where scheduled and could not move it off a faulty host."""
    view = FederationView(stale_intervals=3, background_samples=10, lan=GIGABIT_LAN, wan=EDGE_WAN)
    new = Schedule(lei="a", ts=NOW, tasks=(TaskPlacement("t1", "c1", "h1", since=NOW - 10),))
    old = Schedule(lei="b", ts=NOW - 20, tasks=(TaskPlacement("t1", "c0", "h5", since=NOW - 100),))
    for schedule in (new, old) if order == "the_old_lei_last" else (old, new):
        view.observe_schedule(schedule, NOW)
    assert view.scheduled() == {"t1": (("a", "h1"), NOW - 10)}


def test_a_task_two_schedules_list_is_where_a_schedule_placed_it_last_whatever_the_hosts_clocks_say():
    """Containers' starts are stamped on their hosts' clocks: t1 came to a/h1, whose clock runs 10
    minutes behind, after b (cut off since, its schedule retained) had it on b/h5. Compared by
    start, b/h5 won for as long as b stayed cut off."""
    view = FederationView(stale_intervals=3, background_samples=10, lan=GIGABIT_LAN, wan=EDGE_WAN)
    old = Schedule(lei="b", ts=NOW - 300, tasks=(TaskPlacement("t1", "c0", "h5", NOW - 400),))
    view.observe_schedule(old, NOW - 300)
    view.observe_schedule(Schedule(lei="a", ts=NOW, tasks=(TaskPlacement("t1", "c1", "h1", NOW - 600),)), NOW)
    view.observe_schedule(dataclasses.replace(old, ts=NOW + 30), NOW + 30)  # b's, again unchanged
    assert view.scheduled() == {"t1": (("a", "h1"), NOW - 600)}


@pytest.mark.parametrize("b_last", [True, False])
def test_retained_schedules_a_restarted_view_is_handed_in_any_order_are_ranked_by_start(b_last):
    """Handed over at subscription one after another, they did not place their tasks as they came:
    by arrival the one heard last won, whichever it was."""
    view = FederationView(stale_intervals=3, background_samples=10, lan=GIGABIT_LAN, wan=EDGE_WAN)
    a = Schedule(lei="a", ts=NOW, tasks=(TaskPlacement("t1", "c1", "h1", NOW - 10),))
    b = Schedule(lei="b", ts=NOW - 20, tasks=(TaskPlacement("t1", "c0", "h5", NOW - 100),))
    for n, schedule in enumerate((a, b) if b_last else (b, a)):
        view.observe_schedule(schedule, NOW + 0.01 * n, retained=True)
    assert view.scheduled() == {"t1": (("a", "h1"), NOW - 10)}


@pytest.mark.parametrize("b_last", [True, False])
def test_a_task_two_schedules_list_is_where_a_sample_lists_it_whichever_schedule_a_restarted_view_heard_last(b_last):
    """A restarted planner is handed every retained schedule at once, in any order: b's, cut off,
    still lists t1 on b/h5; a/h1's sample lists it there."""
    view = FederationView(stale_intervals=3, background_samples=10, lan=GIGABIT_LAN, wan=EDGE_WAN)
    view.observe(sample("a", "h1", 0.5, [("t1", 0.4)]), NOW)
    a = Schedule(lei="a", ts=NOW, tasks=(TaskPlacement("t1", "c1", "h1", NOW - 600),))
    b = Schedule(lei="b", ts=NOW - 300, tasks=(TaskPlacement("t1", "c0", "h5", NOW - 400),))
    for n, schedule in enumerate((a, b) if b_last else (b, a)):
        view.observe_schedule(schedule, NOW + 0.01 * n)
    assert view.scheduled() == {"t1": (("a", "h1"), NOW - 600)}


def test_a_view_just_started_takes_a_backlog_for_what_it_is():
    """A restarted planner's broker session hands it the samples kept while it was down, in one
    burst: a host that died meanwhile is not fresh because its last sample arrived a moment ago."""
    view = FederationView(stale_intervals=3, background_samples=10, lan=GIGABIT_LAN, wan=EDGE_WAN)
    for t in range(10):
        view.observe(sample("b", "h4", 0.1, ts=NOW - 300 + t), NOW)
    view.observe(sample("b", "h3", 0.1, ts=NOW), NOW)
    assert view.snapshot(NOW).hosts == (("b", "h3"),)


def test_a_backlog_delivered_after_an_outage_is_not_news_of_a_host_that_died_during_it():
    """The relay keeps a peer's samples through a WAN outage and delivers them at once when the
    link is back: the newest of a host that died meanwhile arrives now, stamped long ago. It is
    as old as it is late (its usual lag was about nothing), so the host is out of the view."""
    view = FederationView(stale_intervals=3, background_samples=10, lan=GIGABIT_LAN, wan=EDGE_WAN)
    for t in range(10):  # before the outage, live
        view.observe(sample("b", "h4", 0.1, ts=NOW - 3000 + t), NOW - 3000 + t)
        view.observe(sample("b", "h3", 0.1, ts=NOW - 3000 + t), NOW - 3000 + t)
    for t in range(10, 60):  # h4 died at NOW - 2940; the backlog of both, longer than LIVE_LAGS, comes at NOW
        view.observe(sample("b", "h3", 0.1, ts=NOW - 3000 + t), NOW)
        view.observe(sample("b", "h4", 0.1, ts=NOW - 3000 + t), NOW)
    view.observe(sample("b", "h3", 0.1, ts=NOW), NOW)  # h3 is alive: its newest is current
    assert view.snapshot(NOW).hosts == (("b", "h3"),)
