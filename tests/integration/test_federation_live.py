"""End to end across two bridged brokers with every real part: a CPU hog in an emulated host of
LEI A is caught by A's detector, and A's planner moves that host's task to LEI B.

LEI A runs a collector (two emulated hosts, one demo task each), a detector that learns their
normal operation, and a planner; LEI B runs a collector and a planner. The brokers are bridged
with the generated bridge file over an internal network. The hog is not a task, so moving the
task off cannot clear the fault: what pays for the move is the task's response time behind the
hog, which the default δ2 = 0.5 weighs about even with the migration (docs/simulator.md). The
planners run with δ2 = 0.1, as an operator who values response time would set it.
"""

from __future__ import annotations

import secrets as tokens

import pytest

from dragon.messages import codec, topics
from dragon.messages.schemas import FaultInjection, PlanDecision
from dragon.testing.listener import Listener, publish

from .conftest import COLLECTOR_ENV, DETECTOR_ENV, bridged_brokers, wait_until_scoring

pytestmark = pytest.mark.integration

PLANNER_ENV = {"DRAGON_PLANNER_INTERVAL": "1", "DRAGON_SIM_DELTA2": "0.1", "DRAGON_SIM_STALE_INTERVALS": "6"}
DECISION_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def federation(tmp_path_factory, repo):
    with bridged_brokers(tmp_path_factory, repo, "l") as (a, b, _):
        b.start_collector("collector", COLLECTOR_ENV)
        a.start_collector("collector", COLLECTOR_ENV)
        a.start_detector("detector", DETECTOR_ENV)
        wait_until_scoring(a)
        a.start_planner("planner", PLANNER_ENV)
        b.start_planner("planner", PLANNER_ENV)
        yield a, b


def test_a_real_fault_in_one_lei_moves_its_task_to_the_other(federation):
    a, b = federation
    with Listener(a.mqtt_settings("viewer"), [topics.fed_decision(a.lei)]) as listener:
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
