"""Answering a co-simulation request from a snapshot: ids to indices, outcomes to messages."""

from __future__ import annotations

import numpy as np

from dragon.messages.schema import clip
from dragon.messages.schemas import (
    DecisionVerdict,
    HostForecast,
    SimRequest,
    SimResponse,
    TaskMove,
)
from dragon.sim.qos import CoSimulator, Outcome
from dragon.sim.twin import UNPLACED
from dragon.simulator.forecasting import host_metrics, next_usage
from dragon.simulator.view import Snapshot


class RequestError(ValueError):
    """A request that cannot be answered; ``reason`` is machine-readable, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def decision_array(snapshot: Snapshot, moves: tuple[TaskMove, ...]) -> np.ndarray:
    """One decision as target host indices per task (``UNPLACED`` = stays); unknown ids are refused."""
    decision = np.full(len(snapshot.tasks), UNPLACED)
    for move in moves:
        try:
            task, host = snapshot.task_index(move.task), snapshot.host_index(move.lei, move.host)
        except KeyError as exc:
            raise RequestError("unknown", str(exc.args[0])) from None
        if decision[task] != UNPLACED:
            raise RequestError("invalid", f"task {move.task!r} is moved twice in one decision")
        decision[task] = host
    return decision


def answer(request: SimRequest, snapshot: Snapshot, sim: CoSimulator, max_decisions: int) -> SimResponse:
    """The response to a valid request, or RequestError."""
    if len(request.decisions) > max_decisions:
        raise RequestError("too_many", f"{len(request.decisions)} decisions; at most {max_decisions} per request")
    decisions = (
        np.stack([decision_array(snapshot, moves) for moves in request.decisions])
        if request.decisions
        else np.full((1, len(snapshot.tasks)), UNPLACED)
    )
    common = dict(id=request.id, ok=True, kind=request.kind, state_ts=snapshot.ts)
    common.update(hosts=len(snapshot.hosts), tasks=len(snapshot.tasks))
    if request.kind == "next_window":
        # The same forecast the detector gets (forecasting.py), with the request's moves on top.
        usage = next_usage(snapshot, sim, decisions[0])
        check_finite(usage)
        return SimResponse(**common, forecast=forecast(snapshot, usage))
    with np.errstate(over="ignore", invalid="ignore"):  # checked just below
        outcome = sim.evaluate(snapshot.state, decisions)
    check_finite(outcome.usage, outcome.fitness)
    return SimResponse(**common, verdicts=tuple(verdict(snapshot, outcome, row) for row in range(len(decisions))))


def check_finite(*arrays: np.ndarray) -> None:
    """Finite but absurd sample values (1e308 bytes/s) can overflow; our schemas carry finite numbers only."""
    if not all(np.isfinite(array).all() for array in arrays):
        raise RequestError("invalid", "the simulation overflowed: a host reports values too large to simulate")


def verdict(snapshot: Snapshot, outcome: Outcome, row: int) -> DecisionVerdict:
    flagged = np.flatnonzero(outcome.anomalous_hosts[row])
    return DecisionVerdict(
        fitness=float(outcome.fitness[row]),
        qos=float(outcome.qos[row]),
        art=float(outcome.art[row]),
        aec=float(outcome.aec[row]),
        slo_violations=float(outcome.slo_violations[row]),
        anomalous_hosts=tuple("/".join(snapshot.hosts[index]) for index in flagged),
        migration_s=float(outcome.migration_s[row]),
        overhead=float(outcome.overhead[row]),
    )


def forecast(snapshot: Snapshot, usage: np.ndarray) -> tuple[HostForecast, ...]:
    """Each host's predicted metrics (m, n) as messages."""
    return tuple(
        HostForecast(lei, host, host_metrics(row)) for (lei, host), row in zip(snapshot.hosts, usage, strict=True)
    )


def error_response(request_id: str, reason: str, message: str, simulator: str) -> SimResponse:
    return SimResponse(id=request_id, ok=False, reason=reason, error=clip(message), simulator=simulator)


def too_large_response(response: SimResponse, size: int, limit: int, simulator: str) -> SimResponse:
    """The refusal of an answer of ``size`` bytes, over the payload limit, saying what makes it that large."""
    over = f"the answer takes {size} bytes, over the payload limit DRAGON_MAX_PAYLOAD ({limit} bytes)"
    if response.kind == "next_window":
        # One decision at most: asking about less does not help, the forecast covers every host.
        why = f"{over}: it forecasts every one of the federation's {response.hosts} hosts"
    else:
        why = f"{over}: ask about fewer decisions per request (this one asked about {len(response.verdicts)})"
    return error_response(response.id, "too_large", why, simulator)
