"""DRAGON+ (Alg. 3): N steps of DRAGON on the co-simulated future, merged into one decision.

Step k anneals M_{t+k} on the state the twin predicts after M_t … M_{t+k-1} (lines 11-15), with
the faults it predicts there; M+ keeps, for each task, the host of the *latest* step that moved
it (lines 16-20: planned to h_p and then h_q, it goes straight to h_max(p, q), one migration
instead of two). A task whose merged host lies in its own LEI stays (Alg. 2 lines 12-14: only
moves to another LEI are carried out). DRAGON is the special case N = 1.

Which decision goes out is judged over the same N intervals: the merged decision, its variant
(:func:`merged_candidates`) and doing nothing are each carried out now and followed by no
further move, and the one with the lowest mean fitness over the co-simulated horizon wins. So a
plan may cost more now than staying (a migration's overhead) when the twin predicts it pays
back within the horizon, but never when it does not: annealed steps that answer a fault the
twin does not confirm (a false alarm, say) do not turn into migrations that only cost.

The underlying scheduler's S_{t+k} is not simulated: between the steps the placement changes
only by the planned moves.
"""

from __future__ import annotations

import numpy as np

from dragon.planner.annealing import NO_TASKS, AnnealingConfig, Plan, anneal, held, plan_of
from dragon.sim.qos import CoSimulator, FederationState
from dragon.sim.twin import UNPLACED

DEFAULT_STEPS = 5


def merge(merged: np.ndarray, decision: np.ndarray) -> np.ndarray:
    """M+ after one more step: a task the step moves takes the step's host, the others keep theirs."""
    return np.where(decision != UNPLACED, decision, merged)


def only_across_leis(
    sim: CoSimulator, state: FederationState, decision: np.ndarray, groups: np.ndarray | None = None
) -> np.ndarray:
    """Drop the moves whose target lies in the task's own LEI at ``state``: they are not migrations.

    ``groups`` as for ``anneal``: with every host its own group, only moves to the same host go.
    """
    lei = sim.federation.lei_index if groups is None else groups
    running = state.placement != UNPLACED
    home = np.where(running, lei[np.maximum(state.placement, 0)], -1)
    target = np.where(decision != UNPLACED, lei[np.maximum(decision, 0)], -2)
    return np.where(running & (target != home), decision, UNPLACED)


def look_ahead(
    sim: CoSimulator,
    state: FederationState,
    faulty_hosts: np.ndarray,
    steps: int = DEFAULT_STEPS,
    config: AnnealingConfig | None = None,
    rng: np.random.Generator | None = None,
    groups: np.ndarray | None = None,
    frozen: np.ndarray = NO_TASKS,
    fixed: np.ndarray | None = None,
    avoid: np.ndarray | None = None,
) -> Plan:
    """DRAGON+ with ``steps`` look-ahead intervals; its plan's fitness is M+'s on the current state.

    ``frozen`` tasks are not the search's at any step: now they take their entry of ``fixed``
    (as for ``anneal``), later they stay where that put them. ``avoid``: hosts never a target, at
    any step; the faulty hosts by default."""
    if steps < 1:
        raise ValueError(f"look-ahead needs at least one step, got {steps}")
    rng = rng or np.random.default_rng()
    faulty = np.asarray(faulty_hosts, dtype=int)
    flagged = faulty if avoid is None else np.union1d(faulty, avoid)  # what the detectors said
    merged, last_across = np.full(len(state.placement), UNPLACED), np.full(len(state.placement), UNPLACED)
    future, now_fixed = state, fixed
    horizon, evaluations = [], 0
    for _ in range(steps):
        never_targets = np.union1d(flagged, faulty)
        plan = anneal(sim, future, faulty, config, rng, groups, avoid=never_targets, frozen=frozen, fixed=now_fixed)
        now_fixed = None  # carried out at the first step
        merged = merge(merged, plan.decision)
        last_across = merge(last_across, only_across_leis(sim, state, plan.decision, groups))
        horizon.append(plan.fitness)
        evaluations += plan.evaluations
        future = future.after(plan.outcome.usage[0], future.apply(plan.decision[None, :])[0])
        faulty = np.flatnonzero(plan.outcome.anomalous_hosts[0])
    nothing = held(len(state.placement), frozen, fixed)
    candidates = np.vstack([merged_candidates(sim, state, merged, last_across, groups), nothing[None, :]])
    # The frozen tasks' moves are not the search's to merge or drop (a peer cut off from the others
    # moves tasks within its own LEI, which only_across_leis would drop): as given, in every candidate.
    candidates[:, frozen] = nothing[frozen]
    # The two merges are often the same decision, or nothing at all: score each once, in order.
    _, first = np.unique(candidates, axis=0, return_index=True)
    final = best_over_horizon(sim, state, candidates[np.sort(first)], steps, evaluations)
    return Plan(final.decision, final.fitness, final.outcome, final.evaluations, tuple(horizon))


def merged_candidates(
    sim: CoSimulator, state: FederationState, merged: np.ndarray, last_across: np.ndarray, groups: np.ndarray | None
) -> np.ndarray:
    """M+ as Alg. 3 merges it, and M+ with every task that a later step brought home sent instead
    to the last LEI an earlier step chose for it (2, p).

    Alg. 2 drops moves that end in the task's own LEI, so a task sent away at step 1 and back home
    at step 2 would stay where it is, on a host it was sent away from: no step chose that.
    """
    literal = only_across_leis(sim, state, merged, groups)
    fallback = np.where(literal == UNPLACED, last_across, literal)
    return np.stack([literal, fallback])


def horizon_fitness(sim: CoSimulator, state: FederationState, candidates: np.ndarray, steps: int) -> np.ndarray:
    """Mean fitness (B,) of each candidate decision (B, p) over ``steps`` co-simulated intervals,
    carried out now and followed by no further move (its migration overhead counts once)."""
    outcome = sim.evaluate(state, candidates)
    total = outcome.fitness.astype(float)
    for row, (usage, placement) in enumerate(zip(outcome.usage, state.apply(candidates), strict=True)):
        future = state.after(usage, placement)
        for _ in range(steps - 1):
            later = sim.evaluate(future, future.unmoved())
            total[row] += later.fitness[0]
            future = future.after(later.usage[0], future.placement)
    return total / steps


def best_over_horizon(
    sim: CoSimulator, state: FederationState, candidates: np.ndarray, steps: int, evaluations: int
) -> Plan:
    """The candidate decision (one per row) with the best :func:`horizon_fitness`, as a plan on ``state``."""
    best = int(horizon_fitness(sim, state, candidates, steps).argmin())
    return plan_of(sim, state, candidates[best], evaluations + len(candidates) * steps)
