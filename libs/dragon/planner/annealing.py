"""Simulated annealing over preemptive migration decisions (DRAGON, Alg. 2 lines 9-11).

A decision gives each task a target host or leaves it where it is (``UNPLACED``). As in the
paper, a decision only moves a task to *another LEI*; the receiving broker's scheduler chooses
the host there, which the co-simulator needs, so a move names a host of the target LEI.

- Start: every task on a faulty host is sent to a random host of another LEI (line 10).
- No task is ever sent onto a faulty host: migrations leave ω. The co-simulator's own judge only
  sees predicted overload, so without this a host the detector flags for, say, a disk attack
  looked like a fine target (seen in the two-LEI demo).
- Neighbour (sec. V-B): either a task not in the decision is sent to another LEI, or a task
  in it is sent to a different LEI than the one it was planned for. Its own LEI is one of those,
  and sending a task back to its own LEI means it stays: otherwise no decision could ever
  shrink, and annealing could not undo a bad start.
- Several independent chains anneal side by side (each from its own random start): at each step
  every chain proposes one neighbour, all proposals are scored in one ``CoSimulator.evaluate``
  call, and each chain accepts its own by the Metropolis rule at a geometrically cooling
  temperature. The batch keeps the simulator's vector speed; independent chains keep what
  makes annealing work (a chain that takes the best of many neighbours each step is a greedy
  descent and stalls where two moves are needed: 3 cases in 100 off the optimum by 5-12 %).
  The best decision any chain saw wins; "do nothing" is scored too, so the plan is never
  predicted worse than not migrating.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from dragon.sim.qos import CoSimulator, FederationState, Outcome
from dragon.sim.twin import UNPLACED

NO_HOSTS = np.zeros(0, dtype=int)
NO_TASKS = np.zeros(0, dtype=int)


@dataclass(frozen=True)
class AnnealingConfig:
    """Independent chains, steps per chain and the temperature schedule (in fitness units).

    The temperature is scaled to the fitness changes the first moves make, so the same settings
    serve 16 and 256 hosts. The tasks on faulty hosts are what the search is about, so each adds
    ``steps_per_candidate`` steps: with a fixed number, a 256-host federation with 32 faulty hosts
    ended 5 % above what four times the steps found (docs/simulator.md).
    """

    chains: int = 16
    steps: int = 150  # per chain, plus steps_per_candidate for every task on a faulty host
    steps_per_candidate: int = 4
    start_share: float = 0.25  # each task on a faulty host starts migrated with this chance
    start_temperature: float | None = None  # None: the median fitness change of the first moves
    final_temperature_ratio: float = 0.01  # the temperature cools geometrically to this share

    def __post_init__(self) -> None:
        if (
            self.steps < 1
            or self.chains < 1
            or self.steps_per_candidate < 0
            or not 0 < self.final_temperature_ratio < 1
        ):
            raise ValueError(f"invalid annealing settings {self}")
        if not 0 < self.start_share <= 1:
            raise ValueError(f"invalid annealing settings {self}")
        if self.start_temperature is not None and self.start_temperature <= 0:
            raise ValueError(f"invalid annealing settings {self}")


@dataclass(frozen=True, eq=False)  # numpy fields
class Plan:
    """The chosen decision (p,) with its predicted outcome, and how much search it took."""

    decision: np.ndarray
    fitness: float
    outcome: Outcome  # of this decision alone (one row)
    evaluations: int
    horizon: tuple[float, ...] = ()  # DRAGON+: the fitness of each look-ahead step's decision

    @property
    def moves(self) -> list[tuple[int, int]]:
        """(task, target host) for every task the decision migrates."""
        return [(int(j), int(h)) for j, h in enumerate(self.decision) if h != UNPLACED]


def held(tasks: int, frozen: np.ndarray, fixed: np.ndarray | None) -> np.ndarray:
    """The decision (p,) that moves the ``frozen`` tasks as ``fixed`` says and leaves the others:
    doing nothing, as far as the search is concerned."""
    decision = np.full(tasks, UNPLACED)
    if fixed is not None:
        mask = np.isin(np.arange(tasks), frozen)
        decision[mask] = np.asarray(fixed)[mask]
    return decision


def groups_of(sim: CoSimulator, within_lei: bool = False) -> np.ndarray:
    """The group of each host that a migration must leave: its LEI (the paper), or the host itself.

    ``within_lei`` is for a broker cut off from its peers: with only its own LEI to plan for, it
    moves tasks between its own hosts, so every host is a group of its own.
    """
    return np.arange(sim.federation.hosts) if within_lei else sim.federation.lei_index


class Neighbourhood:
    """The moves of sec. V-B over one federation state, drawn for many decisions at once.

    The code says LEI for the groups a migration must leave (``groups_of``): LEIs by default.
    """

    def __init__(
        self,
        sim: CoSimulator,
        state: FederationState,
        rng: np.random.Generator,
        groups: np.ndarray | None = None,
        avoid: np.ndarray = NO_HOSTS,
        frozen: np.ndarray = NO_TASKS,
        fixed: np.ndarray | None = None,
    ):
        """``avoid``: hosts no task may be moved onto (the faulty ones: migrations leave them);
        ``frozen``: tasks the search does not decide, which keep their entry of ``fixed`` (a
        decision (p,); by default, and for the others, UNPLACED: they stay where they are)."""
        groups = sim.federation.lei_index if groups is None else groups
        self.rng = rng
        self.lei_of_host = groups
        self.leis = int(groups.max()) + 1
        targets = np.setdiff1d(np.arange(len(groups)), avoid)
        sizes = np.bincount(groups[targets], minlength=self.leis)
        self.lei_sizes = sizes
        # hosts_by_lei[l, i]: the i-th target host of LEI l (rows padded; only i < lei_sizes[l] is drawn)
        self.hosts_by_lei = np.zeros((self.leis, max(int(sizes.max()), 1)), dtype=int)
        for lei in range(self.leis):
            self.hosts_by_lei[lei, : sizes[lei]] = targets[groups[targets] == lei]
        self.placement = state.placement
        running = state.placement != UNPLACED  # a task not running cannot migrate
        self.movable = np.flatnonzero(running & ~np.isin(np.arange(len(running)), frozen))
        self.base = held(len(self.placement), frozen, fixed)  # what every decision holds for the frozen tasks
        self.home = np.where(state.placement != UNPLACED, groups[np.maximum(state.placement, 0)], -1)

    def start(self, faulty_hosts: np.ndarray, share: float = 1.0) -> np.ndarray:
        """Line 10: tasks on faulty hosts go to random hosts of other LEIs, each with chance ``share``."""
        decision = self.base.copy()
        if self.leis < 2:  # one LEI: nowhere to migrate to
            return decision
        on_faulty = self.movable[np.isin(self.placement[self.movable], faulty_hosts)]
        on_faulty = on_faulty[self.rng.random(len(on_faulty)) < share]
        decision[on_faulty] = self._hosts_in_other_leis(self.home[on_faulty])
        return decision

    def neighbours(self, decisions: np.ndarray) -> np.ndarray:
        """One neighbour of each decision (K, p), changing one task (sec. V-B):

        - half the time (always, if M is empty) a task not in M goes to another LEI;
        - otherwise a task in M goes to a different LEI than planned: its own (it stays) or,
          equally likely, any LEI other than its own and the planned one.

        Choosing the kind first keeps both moves frequent whatever the numbers of tasks and LEIs:
        drawn uniformly over tasks and LEIs, a 256-host federation would almost never undo a move.
        """
        out = decisions.copy()
        if len(self.movable) == 0 or self.leis < 2:
            return out
        rows = np.arange(len(out))
        in_plan, can_add = np.zeros(out.shape, dtype=bool), np.zeros(out.shape, dtype=bool)
        in_plan[:, self.movable] = out[:, self.movable] != UNPLACED  # a frozen task's entry is not the search's
        can_add[:, self.movable] = ~in_plan[:, self.movable]
        revise = in_plan.any(axis=1) & ((self.rng.random(len(out)) < 0.5) | ~can_add.any(axis=1))
        tasks = self._pick(np.where(revise[:, None], in_plan, can_add))
        planned = out[rows, tasks]
        home = self.home[tasks]
        planned_lei = np.where(revise, self.lei_of_host[np.maximum(planned, 0)], home)
        go_home = revise & ((self.rng.random(len(out)) < 0.5) | (self.leis < 3))
        targets = self._hosts_avoiding(home, planned_lei)
        out[rows, tasks] = np.where(go_home, UNPLACED, targets)
        return out

    def _pick(self, allowed: np.ndarray) -> np.ndarray:
        """For each row of ``allowed`` (K, p), one allowed column uniformly at random."""
        return np.where(allowed, self.rng.random(allowed.shape), -1.0).argmax(axis=1)

    def _hosts_in_other_leis(self, leis: np.ndarray) -> np.ndarray:
        """For each LEI index, a random host of a different LEI, uniformly over the other LEIs."""
        return self._hosts_avoiding(leis, leis)

    def _hosts_avoiding(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """A random host of an LEI other than ``first`` and ``second`` (per row; they may be equal).

        Needs one LEI left: 2 LEIs, if the two differ, leave none (the caller sends the task home).
        """
        low, high = np.minimum(first, second), np.maximum(first, second)
        distinct = (low != high).astype(int)
        other = self.rng.integers(0, np.maximum(self.leis - 1 - distinct, 1))
        other = other + (other >= low)
        other = np.minimum(other + (distinct.astype(bool) & (other >= high)), self.leis - 1)
        hosts = self.hosts_by_lei[other, (self.rng.random(len(other)) * self.lei_sizes[other]).astype(int)]
        return np.where(self.lei_sizes[other] > 0, hosts, UNPLACED)  # an LEI with no host to take it: stay


def anneal(
    sim: CoSimulator,
    state: FederationState,
    faulty_hosts: np.ndarray,
    config: AnnealingConfig | None = None,
    rng: np.random.Generator | None = None,
    groups: np.ndarray | None = None,
    avoid: np.ndarray | None = None,
    frozen: np.ndarray = NO_TASKS,
    fixed: np.ndarray | None = None,
) -> Plan:
    """DRAGON's decision M_t*: simulated annealing from random migrations off ``faulty_hosts``.

    ``groups`` (``groups_of``) says what a migration must leave: the task's LEI by default.
    ``avoid``: hosts no task may be moved onto; the faulty hosts by default. ``frozen``: tasks
    the search does not decide; each keeps its entry of the decision ``fixed`` (default: it
    stays), and "doing nothing" is the frozen tasks' moves alone.
    """
    config = config or AnnealingConfig()
    rng = rng or np.random.default_rng()
    faulty_hosts = np.asarray(faulty_hosts, dtype=int)
    avoid = faulty_hosts if avoid is None else np.asarray(avoid, dtype=int)
    moves = Neighbourhood(sim, state, rng, groups, avoid=avoid, frozen=frozen, fixed=fixed)
    chains = np.stack([moves.start(faulty_hosts, config.start_share) for _ in range(config.chains)])
    candidates = np.vstack([chains, moves.base[None, :]])  # the chains' starts, and doing nothing
    scores = sim.evaluate(state, candidates).fitness
    fitness, evaluations = scores[:-1], len(scores)
    best_at = int(scores.argmin())
    best, best_fitness = candidates[best_at].copy(), float(scores[best_at])
    candidates_on_faulty = int(np.isin(state.placement[moves.movable], faulty_hosts).sum())  # the search's own
    steps = config.steps + config.steps_per_candidate * candidates_on_faulty
    temperature, cooling = None, config.final_temperature_ratio ** (1.0 / steps)
    for _ in range(steps):
        proposals = moves.neighbours(chains)
        proposed = sim.evaluate(state, proposals).fitness
        evaluations += len(proposals)
        if temperature is None:  # the first proposals set the scale: a typical uphill step is taken with p = 1/e
            temperature = config.start_temperature or typical_step(proposed - fitness)
        uphill = np.exp(np.minimum(fitness - proposed, 0.0) / temperature)  # Metropolis: 1 when downhill
        accept = rng.random(len(chains)) < uphill
        chains[accept], fitness[accept] = proposals[accept], proposed[accept]
        if fitness.min() < best_fitness:
            best, best_fitness = chains[fitness.argmin()].copy(), float(fitness.min())
        temperature *= cooling
    return plan_of(sim, state, best, evaluations)


def typical_step(deltas: np.ndarray) -> float:
    """The median size of the fitness changes one move makes (a tiny positive number if none)."""
    sizes = np.abs(deltas[deltas != 0])
    return float(np.median(sizes)) if len(sizes) else 1e-6


def plan_of(sim: CoSimulator, state: FederationState, decision: np.ndarray, evaluations: int) -> Plan:
    """A :class:`Plan` for ``decision`` with its predicted outcome on ``state``."""
    outcome = sim.evaluate(state, decision[None, :])
    return Plan(decision, float(outcome.fitness[0]), outcome, evaluations + 1)


def exhaustive(
    sim: CoSimulator,
    state: FederationState,
    batch: int = 4096,
    groups: np.ndarray | None = None,
    avoid: np.ndarray = NO_HOSTS,
) -> Plan:
    """The optimum over every decision of the neighbourhood's space: each running task stays or goes
    to any host of another LEI but those in ``avoid``. (1 + such hosts)^tasks decisions: small cases only.
    """
    groups = sim.federation.lei_index if groups is None else groups
    allowed = ~np.isin(np.arange(len(groups)), avoid)
    options = []
    for host in state.placement:
        away = [] if host == UNPLACED else np.flatnonzero((groups != groups[host]) & allowed).tolist()
        options.append([UNPLACED, *away])
    best, best_fitness, evaluations = None, np.inf, 0
    combos = itertools.product(*options)
    while chunk := list(itertools.islice(combos, batch)):
        decisions = np.array(chunk, dtype=int).reshape(len(chunk), len(options))
        fitness = sim.evaluate(state, decisions).fitness
        evaluations += len(chunk)
        if fitness.min() < best_fitness:
            best, best_fitness = decisions[fitness.argmin()], float(fitness.min())
    return plan_of(sim, state, best, evaluations)
