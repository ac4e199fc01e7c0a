"""A plan of the annealing core as the message the federation reads (``PlanDecision``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np

from dragon.messages.schemas import PlanDecision, PlannedMove
from dragon.planner.annealing import Plan
from dragon.simulator.view import Snapshot


@dataclass(frozen=True)
class PlanContext:
    """Who planned, how, and what the planner knew of the federation when it did."""

    lei: str
    planner: str
    mode: str
    look_ahead: int
    faulty_hosts: tuple[str, ...]
    isolated: bool
    stale_leis: tuple[str, ...]
    commanded: bool = True


def planned_moves(plan: Plan, snapshot: Snapshot) -> tuple[PlannedMove, ...]:
    """Each move of the plan with its task id, both ends and its predicted migration time."""
    fed, state = snapshot.federation, snapshot.state
    moves = []
    for task, target in plan.moves:
        source = int(state.placement[task])
        seconds = fed.migration_time(state.ram_bytes[task : task + 1], np.array([source]), np.array([target]))[0]
        (source_lei, source_host), (target_lei, target_host) = snapshot.hosts[source], snapshot.hosts[target]
        moves.append(
            PlannedMove(snapshot.tasks[task], source_lei, source_host, target_lei, target_host, float(seconds))
        )
    return tuple(moves)


def decision_message(
    plan: Plan, snapshot: Snapshot, context: PlanContext, fitness_unmoved: float, ts: float, decision_ms: float
) -> PlanDecision:
    outcome = plan.outcome
    return PlanDecision(
        id=uuid.uuid4().hex,
        lei=context.lei,
        ts=ts,
        mode=context.mode,
        look_ahead=context.look_ahead,
        moves=planned_moves(plan, snapshot),
        faulty_hosts=context.faulty_hosts,
        fitness=plan.fitness,
        fitness_unmoved=fitness_unmoved,
        qos=float(outcome.qos[0]),
        art=float(outcome.art[0]),
        aec=float(outcome.aec[0]),
        predicted_anomalous=int(outcome.anomalous[0]),
        decision_ms=decision_ms,
        isolated=context.isolated,
        leis=snapshot.federation.leis,
        stale_leis=context.stale_leis,
        planner=context.planner,
        commanded=context.commanded,
    )
