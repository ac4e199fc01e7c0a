"""Two brokers bridged by Mosquitto, a planner on each: fictitious play across LEIs, and a cut bridge.

Each LEI's hosts report through its own broker (as its collector would) and one host per LEI is
judged faulty (as its detector would: a retained verdict). The bridges, the ACLs and the
planners are the real ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from dragon.messages import codec, topics
from dragon.messages.schemas import HostHealth, HostMetrics, HostSample, PlanDecision, TaskUsage
from dragon.testing.lei import LeiStack
from dragon.testing.listener import Listener, publish

from .conftest import bridged_brokers

pytestmark = pytest.mark.integration

INTERVAL_S = 0.5
PLANNER_ENV = {
    "DRAGON_PLANNER_INTERVAL": "1",
    "DRAGON_PLANNER_SEED": "0",
    "DRAGON_SIM_STALE_INTERVALS": "4",  # a peer silent for 2 s is cut off
}
DECISION_TIMEOUT_S = 30


def loads(lei: str, hot: str, cool: str) -> dict[str, tuple[float, list[tuple[str, float]]]]:
    """The hot host is overloaded by two tasks; the cool one runs one light task."""
    return {hot: (0.97, [(f"{lei}-t1", 0.5), (f"{lei}-t2", 0.42)]), cool: (0.3, [(f"{lei}-t3", 0.2)])}


@contextmanager
def reporting(stack: LeiStack, hot: str, cool: str) -> Iterator[None]:
    """Samples every interval from the LEI's collector, and the detector's verdict that ``hot`` is faulty."""
    stop = threading.Event()
    collector, detector = stack.mqtt_settings("collector"), stack.mqtt_settings("detector")

    def run() -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            for host, (cpu, tasks) in loads(stack.lei, hot, cool).items():
                metrics = HostMetrics(cpu, 0.4, 0.0, 0.0, 0.0, 0.0, 0.0)
                usage = tuple(TaskUsage(t, t, c, 60e6) for t, c in tasks)
                sample = HostSample(stack.lei, host, time.time(), seq, INTERVAL_S, metrics, usage)
                publish(collector, topics.host_sample(stack.lei, host), codec.encode(sample), codec.MSGPACK)
            now = time.time()
            verdict = HostHealth(stack.lei, hot, now, 2.0, 1.0, 1, "observed", faulty_since=now)
            health = codec.encode(verdict)
            publish(detector, topics.host_health(stack.lei, hot), health, codec.MSGPACK, retain=True)
            stop.wait(INTERVAL_S)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def federation(tmp_path_factory, repo):
    with bridged_brokers(tmp_path_factory, repo, "f") as (a, b, wan):
        a.start_planner("planner-a", PLANNER_ENV)
        b.start_planner("planner-b", PLANNER_ENV)
        with reporting(a, hot="h1", cool="h2"), reporting(b, hot="h3", cool="h4"):
            yield a, b, wan


def next_decision(stack: LeiStack, of: LeiStack, predicate=lambda d: True) -> PlanDecision:
    """The next decision of ``of``'s planner that satisfies ``predicate``, as ``stack``'s broker carries it."""
    with Listener(stack.mqtt_settings("viewer"), [topics.fed_decision(of.lei)]) as listener:
        messages = listener.wait_for(
            lambda m: predicate(codec.decode(PlanDecision, m.payload, 1 << 20, m.content_type)), DECISION_TIMEOUT_S
        )
    return codec.decode(PlanDecision, messages[0].payload, 1 << 20, messages[0].content_type)


def test_a_fault_in_one_lei_moves_its_task_to_the_other_lei(federation):
    a, b, _ = federation
    decision = next_decision(a, a, lambda d: not d.isolated)
    assert set(decision.leis) == {a.lei, b.lei}
    own = [m for m in decision.moves if m.source_lei == a.lei]
    assert own and all(m.source_host == "h1" and m.target_lei == b.lei for m in own)
    assert decision.fitness < decision.fitness_unmoved
    assert f"{a.lei}/h1" in decision.faulty_hosts


def test_each_broker_publishes_its_decision_to_the_federation(federation):
    a, b, _ = federation
    from_b = next_decision(a, b, lambda d: not d.isolated)  # b's decision, carried by a's broker
    assert from_b.lei == b.lei and from_b.planner == "planner-b"
    assert any(m.source_lei == b.lei and m.target_lei == a.lei for m in from_b.moves)


def test_a_restarted_planner_rebuilds_the_federation_and_decides_again(federation):
    a, b, _ = federation
    a.restart("planner-a", wait_for="planner_started")
    decision = next_decision(a, a, lambda d: not d.isolated)  # samples and retained verdicts rebuild its state
    assert set(decision.leis) == {a.lei, b.lei} and decision.moves


def test_a_peers_bridge_login_may_publish_its_own_leis_topics_only(federation):
    """Peers' relays log in as bridge-<peer>: not this LEI's topics (a fault injection starts
    containers), not another peer's."""
    a, b, _ = federation
    peer = b.mqtt_settings(f"bridge-{a.lei}")
    sample = codec.encode(HostSample(a.lei, "h1", time.time(), 1, INTERVAL_S, HostMetrics(0.1, 0.1, 0, 0, 0, 0, 0)))
    refused = [
        publish(peer, f"dragon/{b.lei}/inject/h3", b"{}"),
        publish(peer, topics.host_health(b.lei, "h3"), b"{}"),
        publish(peer, topics.host_sample("another-lei", "x1"), sample),
    ]
    assert [str(code) for code in refused] == ["Not authorized"] * 3
    assert str(publish(peer, topics.host_sample(a.lei, "h1"), sample, codec.MSGPACK)) == "Success"


def test_cutting_the_bridge_leaves_each_broker_planning_on_its_own(federation):
    a, b, wan = federation
    a.leave_wan(wan)
    for stack, other, hot, cool in ((a, b, "h1", "h2"), (b, a, "h3", "h4")):
        decision = next_decision(stack, stack, lambda d: d.isolated)
        assert decision.leis == (stack.lei,) and decision.stale_leis == (other.lei,)
        assert decision.moves and all(
            m.source_host == hot and m.target_lei == stack.lei and m.target_host == cool for m in decision.moves
        )
