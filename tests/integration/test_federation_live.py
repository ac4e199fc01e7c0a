"""End to end across two bridged brokers with every real part: a CPU hog in an emulated host of
LEI A is caught by A's detector, A's planner decides to move that host's task to LEI B, A's
migrator moves the container, and B's collector measures the task on its new host.

LEI A runs a collector (two emulated hosts, one demo task each), a detector that learns their
normal operation, a planner that signs commands and a migrator; LEI B runs a collector and a
planner. The brokers are bridged
with the generated bridge file over an internal network. The hog is not a task, so moving the
task off cannot clear the fault: what pays for the move is the task's response time behind the
hog, which the default δ2 = 0.5 weighs about even with the migration (docs/simulator.md). The
planners run with δ2 = 0.1, as an operator who values response time would set it.
"""

from __future__ import annotations

import secrets as tokens

import pytest

from dragon.messages import codec, topics
from dragon.messages.schemas import FaultInjection, HostSample, MigrationEvent, PlanDecision
from dragon.testing.listener import Listener, Received, publish

from .conftest import COLLECTOR_ENV, DETECTOR_ENV, bridged_brokers, wait_until_scoring

pytestmark = pytest.mark.integration

# A task rests for the move cooldown after it came to its host (docs/simulator.md); the demo tasks
# start with the collector, less than the default minute before the hog here.
PLANNER_ENV = {
    "DRAGON_PLANNER_INTERVAL": "1",
    "DRAGON_SIM_DELTA2": "0.1",
    "DRAGON_SIM_STALE_INTERVALS": "6",
    "DRAGON_PLANNER_MOVE_COOLDOWN": "10",
}
COMMANDING = {"DRAGON_MIGRATION_KEY_FILE": "/secrets/migration.key"}
DECISION_TIMEOUT_S = 60
MOVE_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def federation(tmp_path_factory, repo):
    with bridged_brokers(tmp_path_factory, repo, "l") as (a, b, _):
        b.start_collector("collector", COLLECTOR_ENV)
        a.start_collector("collector", COLLECTOR_ENV)
        a.start_detector("detector", DETECTOR_ENV)
        wait_until_scoring(a)
        a.start_migrator("migrator")
        a.start_planner("planner", {**PLANNER_ENV, **COMMANDING})
        b.start_planner("planner", PLANNER_ENV)
        yield a, b


def test_a_real_fault_in_one_lei_moves_its_task_to_the_other(federation):
    a, b = federation
    watched = [topics.fed_decision(a.lei), topics.migration_events(a.lei)]
    with Listener(a.mqtt_settings("viewer"), watched) as listener:
        hog = FaultInjection(id=tokens.token_hex(6), kind="cpu", duration_s=40)
        publish(a.mqtt_settings(), topics.inject(a.lei, "h1"), codec.encode(hog), codec.MSGPACK)

        def moves_h1_to_b(message) -> bool:
            decision = codec.decode(PlanDecision, message.payload, 1 << 20, message.content_type)
            own = [m for m in decision.moves if m.source_lei == a.lei]
            return any(m.source_host == "h1" and m.target_lei == b.lei for m in own)

        (message,) = listener.wait_for(moves_h1_to_b, DECISION_TIMEOUT_S)[:1]
        decision = codec.decode(PlanDecision, message.payload, 1 << 20, message.content_type)
        assert f"{a.lei}/h1" in decision.faulty_hosts and not decision.isolated
        assert set(decision.leis) == {a.lei, b.lei}
        assert decision.fitness < decision.fitness_unmoved

        def moved_to_b(message: Received) -> bool:
            if not message.topic.endswith("/migrations/events"):
                return False
            event = codec.decode(MigrationEvent, message.payload, 65536, message.content_type)
            return event.outcome == "done" and event.source_host == "h1" and event.target_lei == b.lei

        (done,) = listener.wait_for(moved_to_b, MOVE_TIMEOUT_S)[:1]
    event = codec.decode(MigrationEvent, done.payload, 65536, done.content_type)
    moved = a.docker.containers.get(event.task)
    assert moved.status == "running"
    assert (moved.labels["dragon.lei"], moved.labels["dragon.host"]) == (b.lei, event.target_host)
    assert moved.attrs["HostConfig"]["CgroupParent"].endswith(f"/{b.lei}/{event.target_host}")
    assert_measured_by(b, event.task, event.target_host)


def assert_measured_by(lei, task: str, host: str) -> None:
    """The task shows up in the samples of its new host, from that LEI's own collector."""

    def lists_the_task(message: Received) -> bool:
        sample = codec.decode(HostSample, message.payload, 65536, message.content_type)
        return any(usage.id == task for usage in sample.tasks)

    with Listener(lei.mqtt_settings("viewer"), [topics.host_sample(lei.lei, host)]) as samples:
        samples.wait_for(lists_the_task, MOVE_TIMEOUT_S)
