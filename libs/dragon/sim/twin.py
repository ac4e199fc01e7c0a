"""``Sim(W_t, S_t) -> W_{t+1}`` (eq. 12 and 16): the hosts' next usage under a placement.

The twin keeps what persists and moves what the placement moves. A host's usage is its own
background (what it uses with no task) plus what its tasks use. When a placement changes, a
task's demand leaves its old host and arrives at its new one; everything else persists, apart
from a relaxation towards the background (load that ends by itself: finished requests,
emptied caches):

    Ŵ_{t+1}[h] = W_t[h] + λ · (Σ_{j → h under S_{t+1}} d_j − Σ_{j on h under S_t} d_j) + ρ · (b_h − W_t[h])

per metric, clipped to [0, capacity]. d_j is task j's usage where the collector measured it
(per-task cpu and ram), and otherwise the host's usage above background shared equally by the
tasks on it. λ (the share of a task's demand that follows it) and ρ are fitted per metric on a
trace, within [0, 1] so that the twin stays physical, to the least mean absolute error of its
one-step forecasts (:func:`calibrate`); λ = ρ = 0 is the persistence forecast W_{t+1} = W_t,
so a calibrated twin is never worse than persistence on the trace it was fitted to. A host's
steady drift (its median change per interval) is added where it helps the fit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

UNPLACED = -1


def placements(schedule: np.ndarray) -> np.ndarray:
    """One-hot schedules (..., p, m) as host indices (..., p), ``UNPLACED`` for an empty slot."""
    return np.where(schedule.any(axis=-1), schedule.argmax(axis=-1), UNPLACED)


def scatter_tasks(values: np.ndarray, placement: np.ndarray, hosts: int) -> np.ndarray:
    """Sum of the tasks' ``values`` (p, n) per host under placements (B, p): (B, hosts, n)."""
    batch, tasks = placement.shape
    placed = placement >= 0
    index = (np.arange(batch)[:, None] * hosts + placement)[placed]  # one bin per (decision, host)
    contributions = np.broadcast_to(values, (batch, tasks, values.shape[1]))[placed]
    sums = [np.bincount(index, weights=contributions[:, f], minlength=batch * hosts) for f in range(values.shape[1])]
    return np.stack(sums, axis=-1).reshape(batch, hosts, values.shape[1])


@dataclass(frozen=True, eq=False)  # numpy fields
class TwinParams:
    """The calibrated twin: each host's background (m, n), λ and ρ per metric (n,), and drift (m, n).

    ``drift`` is a host's steady change per interval (storage filling up, a slow leak); zero
    unless a calibration found that following it forecasts better.
    """

    background: np.ndarray  # (m, n) usage with no task
    move_gain: np.ndarray  # (n,) λ
    relax: np.ndarray  # (n,) ρ
    drift: np.ndarray | None = None  # (m, n) per interval

    @classmethod
    def persistence(cls, hosts: int, metrics: int) -> TwinParams:
        """The twin that predicts W_{t+1} = W_t: the baseline every calibration must beat."""
        return cls(np.zeros((hosts, metrics)), np.zeros(metrics), np.zeros(metrics))


def task_demand(
    usage: np.ndarray, placement: np.ndarray, background: np.ndarray, measured: np.ndarray | None = None
) -> np.ndarray:
    """Each task's usage (p, n): measured where known, else its share of its host's excess.

    ``usage`` (m, n) is W_t's last row, ``placement`` (p,) S_t, ``measured`` (p, n) the
    collector's per-task figures with NaN where a metric is not measured per task. A task not
    placed yet (a new arrival, or a moved task between two hosts) is given the mean demand of
    the placed ones where it has no measured figure.
    """
    m = usage.shape[0]
    placed = placement >= 0
    per_host = np.bincount(placement[placed], minlength=m)
    excess = np.maximum(usage - background, 0.0) / np.maximum(per_host, 1)[:, None]
    demand = np.zeros((len(placement), usage.shape[1]))
    demand[placed] = excess[placement[placed]]
    known = ~np.isnan(measured) if measured is not None else np.zeros(demand.shape, dtype=bool)
    if measured is not None:
        demand = np.where(known, measured, demand)
    if placed.any() and not placed.all():
        demand[~placed] = np.where(known[~placed], demand[~placed], demand[placed].mean(axis=0))
    return demand


def moved_demand(
    demand: np.ndarray,
    placement: np.ndarray,
    next_placements: np.ndarray,
    hosts: int,
    current_load: np.ndarray | None = None,
) -> np.ndarray:
    """Demand arriving minus demand leaving each host (B, m, n) when S_t (p,) becomes each of (B, p).

    ``current_load`` (m, n), the demand per host under S_t, may be passed when already known.
    """
    if current_load is None:
        current_load = scatter_tasks(demand, placement[None, :], hosts)[0]
    return scatter_tasks(demand, next_placements, hosts) - current_load


def next_usage(
    params: TwinParams,
    usage: np.ndarray,
    placement: np.ndarray,
    demand: np.ndarray,
    next_placements: np.ndarray,
    capacity: np.ndarray | float = np.inf,
    current_load: np.ndarray | None = None,
) -> np.ndarray:
    """Ŵ_{t+1} (B, m, n) for each of B next placements (B, p), from W_t's last row (m, n)."""
    moved = moved_demand(demand, placement, next_placements, usage.shape[0], current_load)
    predicted = usage + params.move_gain * moved + params.relax * (params.background - usage)
    if params.drift is not None:
        predicted = predicted + params.drift
    return np.clip(predicted, 0.0, capacity)


def idle_background(hosts: np.ndarray, schedule: np.ndarray) -> np.ndarray:
    """Each host's usage with no task (m, n): the median over the intervals it ran none, else its minimum."""
    busy = schedule.any(axis=1)  # (T, m)
    background = hosts.min(axis=0)
    for h in range(hosts.shape[1]):
        idle = ~busy[:, h]
        if idle.any():
            background[h] = np.median(hosts[idle, h], axis=0)
    return background


def transition_features(
    hosts: np.ndarray, schedule: np.ndarray, background: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For every step t -> t+1 of a trace: the moved demand and the relaxation term, each (T-1, m, n)."""
    place = placements(schedule)
    moves, relaxation = np.zeros_like(hosts[1:]), background - hosts[:-1]
    for t in range(len(hosts) - 1):
        demand = task_demand(hosts[t], place[t], background)
        moves[t] = moved_demand(demand, place[t], place[t + 1][None], hosts.shape[1])[0]
    return moves, relaxation


def _forecast_mae(
    hosts: np.ndarray, moves: np.ndarray, relaxation: np.ndarray, gains: np.ndarray, capacity: np.ndarray
) -> np.ndarray:
    """MAE per metric (G, n) of the clipped one-step forecasts for G candidate (λ, ρ) rows (G, 2, n)."""
    move_gain, relax = gains[:, 0, None, None, :], gains[:, 1, None, None, :]  # (G, 1, 1, n)
    predicted = np.clip(hosts[:-1] + move_gain * moves + relax * relaxation, 0.0, capacity)  # (G, T-1, m, n)
    return np.abs(predicted - hosts[1:]).mean(axis=(1, 2))


def _best_gains(
    hosts: np.ndarray, moves: np.ndarray, relaxation: np.ndarray, capacity: np.ndarray, centre: np.ndarray, step: float
) -> np.ndarray:
    """The (λ, ρ) per metric (2, n) with the least MAE on a 11 x 11 grid of ``step`` around ``centre``."""
    offsets = step * np.arange(-5, 6)
    pairs = np.stack(np.meshgrid(offsets, offsets, indexing="ij"), axis=-1).reshape(-1, 2)  # (G, 2)
    gains = np.clip(centre[None] + pairs[:, :, None], 0.0, 1.0)  # (G, 2, n): metrics are independent
    best = _forecast_mae(hosts, moves, relaxation, gains, capacity).argmin(axis=0)  # (n,)
    return gains[best, :, np.arange(hosts.shape[2])].T


def calibrate(hosts: np.ndarray, schedule: np.ndarray, capacity: np.ndarray | float = np.inf) -> TwinParams:
    """Fit the twin to a trace: host usage (T, m, n), one-hot schedules (T, p, m), T >= 3.

    λ and ρ minimise, per metric, the MAE of the one-step forecasts clipped to ``capacity``
    ((n,), (m, n) or a scalar; ``inf`` where a metric has no ceiling): first on a grid of
    step 0.1 over [0, 1], then of step 0.01 around the best. The clip matters: on a trace whose
    hosts saturate, a task that arrives at a full host adds nothing, and a linear fit that
    ignores this learns λ = 0.
    """
    if hosts.ndim != 3 or schedule.ndim != 3 or len(hosts) != len(schedule) or len(hosts) < 3:
        raise ValueError(
            f"need hosts (T, m, n) and schedule (T, p, m) with T >= 3, got {hosts.shape}, {schedule.shape}"
        )
    background = idle_background(hosts, schedule)
    moves, relaxation = transition_features(hosts, schedule, background)
    capacity = np.asarray(capacity, dtype=np.float64)
    coarse = _best_gains(hosts, moves, relaxation, capacity, np.full((2, hosts.shape[2]), 0.5), step=0.1)
    move_gain, relax = _best_gains(hosts, moves, relaxation, capacity, coarse, step=0.01)
    fitted = TwinParams(background, move_gain, relax)
    return replace(fitted, drift=_best_drift(fitted, hosts, schedule, capacity))


DRIFT_SHARES = (0.0, 0.5, 1.0)


def _best_drift(params: TwinParams, hosts: np.ndarray, schedule: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Each host's median change per interval, times the share in DRIFT_SHARES that forecasts best, per metric.

    The median is the constant step with the least absolute error; the share lets a metric
    whose changes have no trend keep none (on rpi16-testbed the disk, storage in use, has one).
    """
    median_step = np.median(np.diff(hosts, axis=0), axis=0)  # (m, n)
    errors = [
        forecast_error(replace(params, drift=share * median_step), hosts, schedule, capacity) for share in DRIFT_SHARES
    ]
    best = np.asarray(DRIFT_SHARES)[np.argmin(np.stack(errors), axis=0)]  # (n,)
    return best * median_step


def forecast_error(
    params: TwinParams, hosts: np.ndarray, schedule: np.ndarray, capacity: np.ndarray | float = np.inf
) -> np.ndarray:
    """Mean absolute error per metric (n,) of one-step forecasts over a trace, S_{t+1} known."""
    place = placements(schedule)
    errors = np.zeros((len(hosts) - 1, hosts.shape[2]))
    for t in range(len(hosts) - 1):
        demand = task_demand(hosts[t], place[t], params.background)
        predicted = next_usage(params, hosts[t], place[t], demand, place[t + 1][None], capacity)[0]
        errors[t] = np.abs(predicted - hosts[t + 1]).mean(axis=0)
    return errors.mean(axis=0)
