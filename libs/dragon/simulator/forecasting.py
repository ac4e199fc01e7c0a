"""Predicted mode's input: each host's next sample as the co-simulator forecasts it.

Alg. 2 line 4 scores W_{t+1} <- Sim(W_t, S_t) instead of waiting for the window to happen. The
forecast starts from what the samples show (``Snapshot.sampled``) and applies the moves of the
LEI's schedule that no sample shows yet: right after the migrator moves a task onto a host, the
host's forecast carries the task's demand before the host's next sample does, and the detector
can flag the host before it is overloaded (docs/messages.md, "Predicted mode").
"""

from __future__ import annotations

import math
from collections.abc import Collection, MutableMapping
from dataclasses import replace

import numpy as np

from dragon.messages.schemas import HOST_METRICS, ForecastSample, HostMetrics
from dragon.sim.qos import CoSimulator
from dragon.sim.twin import UNPLACED
from dragon.simulator.view import Snapshot


def next_usage(snapshot: Snapshot, sim: CoSimulator, decision: np.ndarray | None = None) -> np.ndarray:
    """Every host's next usage (m, n), in the samples' units: the schedule's moves no sample shows
    yet, and ``decision``'s.

    ``decision`` (p,) moves tasks on top of the schedule (``UNPLACED``: as scheduled). Starts
    from where the samples show each task, so a move counts as demand leaving one host and
    arriving on another. Not finite where absurd sample values overflow the sums.
    """
    moves = snapshot.pending_moves()
    if decision is not None:
        moves = np.where(decision != UNPLACED, decision, moves)
    with np.errstate(over="ignore", invalid="ignore"):
        return sim.evaluate(snapshot.sampled, moves[None, :]).usage[0] / snapshot.units


def host_metrics(row: np.ndarray) -> HostMetrics:
    """One host's usage row, in ``HOST_METRICS`` order, as a message field."""
    return HostMetrics(**dict(zip(HOST_METRICS, map(float, row), strict=True)))


def forecast_samples(
    snapshot: Snapshot,
    sim: CoSimulator,
    lei: str,
    hosts: Collection[str] | None = None,
    simulator: str = "",
) -> list[ForecastSample]:
    """The next sample of each of ``lei``'s hosts in the snapshot (of ``hosts`` only, if given),
    stamped with the sample it starts from (:func:`stamped` stamps a revision later).

    A host whose forecast is not finite (absurd sample values overflowing the sums) is left out.
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
                ts=based_on,
                based_on_ts=based_on,
                for_ts=based_on + snapshot.intervals_s[index],
                metrics=host_metrics(usage[index]),
                tasks=tasks,
                simulator=simulator,
            )
        )
    return found


REVISION_STEP_S = 1e-3  # each revision of a sample's forecast is stamped this much after the one before
# host -> its last forecast (before stamping) and how many times its sample's forecast was revised
Revisions = MutableMapping[str, tuple[ForecastSample, int]]


def stamped(forecasts: list[ForecastSample], revisions: Revisions, revised: bool) -> list[ForecastSample]:
    """The forecasts to publish, stamped on their hosts' clocks; ``revisions`` updated.

    The detector judges a host's forecast only if it is stamped after the last one it judged.
    A forecast is stamped with the time of the sample it starts from, plus ``REVISION_STEP_S``
    for each time it was made again from that sample because a schedule moved a task
    (``revised``): the revision that knows of the move supersedes the forecast that did not,
    and the next sample's forecast, stamped with the next sample's time, supersedes both. Only
    the host's own times count: our clock or a migrator's (a schedule's arrival, its ``ts``)
    would let a revision overtake the next sample's forecast when the host's clock runs
    behind, and stamp consecutive samples' forecasts alike. A revision that forecasts what the
    host's last forecast did (the move was elsewhere: another host, another LEI) is left out:
    judged, it would count as one more window of the host, as if it had sampled again.
    """
    out = []
    for forecast in forecasts:
        last, count = revisions.get(forecast.host, (None, 0))
        same_sample = last is not None and last.based_on_ts == forecast.based_on_ts
        if revised and same_sample and last == forecast:
            continue
        count = (count if same_sample else 0) + int(revised)
        revisions[forecast.host] = (forecast, count)
        out.append(replace(forecast, ts=revision_ts(forecast, count)))
    return out


def revision_ts(forecast: ForecastSample, revision: int) -> float:
    """The stamp of the ``revision``-th revision of the forecast of a sample: at most half the host's
    interval after the sample, so before the host's next sample (further revisions share it)."""
    most = math.floor(forecast.interval_s / 2 / REVISION_STEP_S)
    return forecast.based_on_ts + min(revision, most) * REVISION_STEP_S
