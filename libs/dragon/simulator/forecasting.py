"""Predicted mode's input: each host's next sample as the co-simulator forecasts it.

Alg. 2 line 4 scores W_{t+1} <- Sim(W_t, S_t) instead of waiting for the window to happen. The
forecast starts from what the samples show (``Snapshot.sampled``) and applies the moves of the
LEI's schedule that no sample shows yet: right after the migrator moves a task onto a host, the
host's forecast carries the task's demand before the host's next sample does, and the detector
can flag the host before it is overloaded (docs/messages.md, "Predicted mode").
"""

from __future__ import annotations

from collections.abc import Collection, MutableMapping
from dataclasses import replace

import numpy as np

from dragon.messages.schemas import HOST_METRICS, ForecastSample, HostMetrics
from dragon.sim.qos import CoSimulator
from dragon.sim.twin import UNPLACED
from dragon.simulator.view import Snapshot


def next_usage(snapshot: Snapshot, sim: CoSimulator, decision: np.ndarray | None = None) -> np.ndarray:
    """Every host's next usage (m, n): the schedule's moves no sample shows yet, and ``decision``'s.

    ``decision`` (p,) moves tasks on top of the schedule (``UNPLACED``: as scheduled). Starts
    from where the samples show each task, so a move counts as demand leaving one host and
    arriving on another. Not finite where absurd sample values overflow the sums.
    """
    moves = snapshot.pending_moves()
    if decision is not None:
        moves = np.where(decision != UNPLACED, decision, moves)
    with np.errstate(over="ignore", invalid="ignore"):
        return sim.evaluate(snapshot.sampled, moves[None, :]).usage[0]


def host_metrics(row: np.ndarray) -> HostMetrics:
    """One host's usage row, in ``HOST_METRICS`` order, as a message field."""
    return HostMetrics(**dict(zip(HOST_METRICS, map(float, row), strict=True)))


def forecast_samples(
    snapshot: Snapshot,
    sim: CoSimulator,
    lei: str,
    schedule_ts: float,
    hosts: Collection[str] | None = None,
    simulator: str = "",
) -> list[ForecastSample]:
    """The next sample of each of ``lei``'s hosts in the snapshot (of ``hosts`` only, if given).

    ``schedule_ts`` is the time of the LEI's newest schedule: a forecast made because of a move
    is stamped with it, so it is newer than the forecast of the same sample before the move. A
    host whose forecast is not finite (absurd sample values overflowing the sums) is left out.
    """
    usage = next_usage(snapshot, sim)
    placement = snapshot.state.placement
    found = []
    for index, (host_lei, host) in enumerate(snapshot.hosts):
        if host_lei != lei or (hosts is not None and host not in hosts) or not np.isfinite(usage[index]).all():
            continue
        based_on = snapshot.sampled_at[index]
        tasks = tuple(task for task, at in zip(snapshot.tasks, placement, strict=True) if at == index)
        found.append(
            ForecastSample(
                lei=lei,
                host=host,
                ts=max(based_on, schedule_ts),
                based_on_ts=based_on,
                for_ts=based_on + snapshot.intervals_s[index],
                metrics=host_metrics(usage[index]),
                tasks=tasks,
                simulator=simulator,
            )
        )
    return found


REVISION_STEP_S = 1e-3  # a revised forecast is stamped this much after the one it replaces


def stamped(
    forecasts: list[ForecastSample], last_ts: MutableMapping[str, float], revised: bool
) -> list[ForecastSample]:
    """The forecasts, each revised one stamped after its host's last forecast; ``last_ts`` updated.

    A forecast made again because a schedule changed starts from the same samples as the one
    before it; when the schedule is stamped before the host's newest sample, both would carry
    that sample's time, and the detector would drop the revision (the one that knows of the
    move) as stale. So a revision is always stamped after its samples' own forecast, even when
    ``last_ts`` does not know that forecast (a restarted simulator sent it before the restart).
    A forecast from a new sample keeps its own stamp.
    """
    out = []
    for forecast in forecasts:
        last = last_ts.get(forecast.host, 0.0)
        if revised:
            forecast = replace(forecast, ts=max(forecast.ts, last) + REVISION_STEP_S)
        last_ts[forecast.host] = max(last, forecast.ts)
        out.append(forecast)
    return out
