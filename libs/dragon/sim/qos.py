"""``SimQoS(W^M_t, M_t)`` (eq. 15, 17) and the fitness of eq. 18, for many decisions at once.

A decision M_t gives some tasks a new host. For each candidate decision the co-simulator
predicts the next usage of every host (:mod:`dragon.sim.twin`) and from it:

- ART: the tasks' average response time, normalised by the worst the model allows (a host at
  its saturation cap, the request crossing the WAN), so it lies in [0, 1];
- AEC: the hosts' average power, normalised by the largest full-load power, in [0, 1];
- SLO violations: the share of tasks whose response time exceeds their SLO;
- N_{t+1}: the hosts predicted anomalous in the next interval (an :data:`AnomalyJudge`);
- O_t: the decision's total migration time, normalised by the longest seen, counting as seen
  the worst the current state allows (every running task over the WAN), so O_t is in [0, 1];
- fitness = α·ART + β·AEC + δ1·N/H + δ2·O, to be minimised. The paper's text extraction reads
  "QoS = α·ART − β·AEC"; both terms are costs the paper says it minimises, so both are added.

Response time: a task's requests enter at its home LEI's broker, cross to the host that runs
it and queue behind the host's CPU load (an M/M/1 slowdown 1/(1 − u), u capped at the
saturation level), then return. docs/simulator.md discusses each choice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from dragon.sim.federation import Federation
from dragon.sim.twin import UNPLACED, TwinParams, next_usage, scatter_tasks

# (B, m, n) predicted usage -> (B, m) True where a host is predicted anomalous.
AnomalyJudge = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class FitnessWeights:
    """α, β (eq. 17) and δ1, δ2 (eq. 18); the paper's experiments use 0.5 for all four."""

    alpha: float = 0.5
    beta: float = 0.5
    delta1: float = 0.5
    delta2: float = 0.5


@dataclass(frozen=True)
class ServiceModel:
    """How tasks answer requests: service time, the CPU saturation cap, the SLO, the overload line."""

    service_time_s: float = 1.0  # a request's time on an idle host
    saturation: float = 0.95  # utilisation at which the queueing slowdown stops growing
    slo_factor: float = 3.0  # SLO = slo_factor × service_time_s
    overload: float = 0.9  # share of CPU or RAM above which a host is predicted anomalous

    def __post_init__(self) -> None:
        if self.service_time_s <= 0 or not 0 < self.saturation < 1 or self.slo_factor <= 1 or self.overload <= 0:
            raise ValueError(f"invalid service model {self}")


def overload_judge(federation: Federation, threshold: float) -> AnomalyJudge:
    """Predicted anomalous = CPU or RAM above ``threshold`` of capacity: the overload faults of sec. VI."""
    columns = [federation.cpu, federation.ram]
    capacity = federation.capacity[:, columns]  # (m, 2); inf capacity never overloads

    def judge(usage: np.ndarray) -> np.ndarray:
        return (usage[..., columns] / capacity > threshold).any(axis=-1)

    return judge


@dataclass(frozen=True, eq=False)  # numpy fields
class FederationState:
    """W^M_t as the co-simulator needs it: the hosts' latest usage and the tasks on them.

    ``usage`` (m, n) is each host's last window row; ``placement`` (p,) S_t as host indices
    (``UNPLACED`` for none); ``demand`` (p, n) each task's usage (``twin.task_demand``);
    ``ram_bytes`` (p,) what a migration of the task ships; ``home_lei`` (p,) the index of the
    LEI whose users send the task its requests.
    """

    usage: np.ndarray
    placement: np.ndarray
    demand: np.ndarray
    ram_bytes: np.ndarray
    home_lei: np.ndarray

    def __post_init__(self) -> None:
        p = len(self.placement)
        if self.usage.ndim != 2 or self.demand.shape != (p, self.usage.shape[1]):
            raise ValueError(f"usage (m, n) and demand (p, n) disagree: {self.usage.shape}, {self.demand.shape}")
        if self.ram_bytes.shape != (p,) or self.home_lei.shape != (p,):
            raise ValueError(f"ram_bytes and home_lei need one entry per task ({p})")
        # The co-simulator caches per-state tables by identity: a state must not change under it.
        for array in (self.usage, self.placement, self.demand, self.ram_bytes, self.home_lei):
            array.flags.writeable = False

    def after(self, usage: np.ndarray, placement: np.ndarray) -> FederationState:
        """The state one interval on: the predicted usage (m, n) under the new placement (p,).

        A task's demand, memory and home LEI travel with it (DRAGON+ plans on this).
        """
        return replace(self, usage=usage, placement=placement)

    def unmoved(self) -> np.ndarray:
        """The decision that moves nothing, as one row (1, p): what every plan is weighed against."""
        return np.full((1, len(self.placement)), UNPLACED)

    def apply(self, decisions: np.ndarray) -> np.ndarray:
        """The placements (B, p) after each decision (B, p): a task's new host, or where it was."""
        return np.where(decisions != UNPLACED, decisions, self.placement)


@dataclass(frozen=True, eq=False)  # numpy fields
class Outcome:
    """What the co-simulator predicts for each of B decisions: every array has B rows."""

    usage: np.ndarray  # (B, m, n) W_{t+1}
    art: np.ndarray  # normalised average response time, [0, 1]
    aec: np.ndarray  # normalised average power, [0, 1]
    slo_violations: np.ndarray  # share of placed tasks over their SLO, [0, 1]
    anomalous: np.ndarray  # N_{t+1}, hosts predicted anomalous
    anomalous_hosts: np.ndarray  # (B, m) which ones
    migration_s: np.ndarray  # total migration time, seconds
    overhead: np.ndarray  # O_t
    qos: np.ndarray  # α·ART + β·AEC
    fitness: np.ndarray  # eq. 18, lower is better


@dataclass(frozen=True, eq=False)  # numpy fields
class StateTables:
    """What every decision on one state shares, computed once per state (the planner's hot loop)."""

    state: FederationState
    current_load: np.ndarray  # (m, n) the tasks' demand summed per host under S_t
    round_trip_s: np.ndarray  # (p, m) a request's network round trip to each host from the task's home broker
    migration_s: np.ndarray  # (p, m) moving each task to each host
    migration_scale_s: float  # O_t's denominator


@dataclass
class CoSimulator:
    """The twin of one federation, scoring batches of decisions; it remembers the longest migration."""

    federation: Federation
    params: TwinParams
    weights: FitnessWeights = field(default_factory=FitnessWeights)
    service: ServiceModel = field(default_factory=ServiceModel)
    judge: AnomalyJudge | None = None
    longest_migration_s: float = 0.0
    _tables: StateTables | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.judge is None:
            self.judge = overload_judge(self.federation, self.service.overload)

    def evaluate(self, state: FederationState, decisions: np.ndarray) -> Outcome:
        """Score B candidate decisions (B, p): entry j is task j's target host, or ``UNPLACED`` to stay."""
        decisions = np.atleast_2d(np.asarray(decisions))
        tables = self._tables_for(state)
        self._check_decisions(state, decisions)
        fed = self.federation
        placement = state.apply(decisions)  # (B, p)
        usage = next_usage(
            self.params, state.usage, state.placement, state.demand, placement, fed.capacity, tables.current_load
        )
        cpu = usage[..., fed.cpu] / fed.capacity[:, fed.cpu]  # (B, m) utilisation
        art, slo = self._response(tables, placement, cpu)
        aec = fed.power_w(cpu).mean(axis=1) / fed.full_w.max()
        anomalous_hosts = self.judge(usage)
        anomalous = anomalous_hosts.sum(axis=1)
        tasks = np.arange(decisions.shape[1])
        moved = tables.migration_s[tasks, np.maximum(decisions, 0)]  # (B, p)
        migration_s = np.where(decisions != UNPLACED, moved, 0.0).sum(axis=1)
        overhead = migration_s / max(tables.migration_scale_s, self.longest_migration_s)
        w = self.weights
        qos = w.alpha * art + w.beta * aec
        fitness = qos + w.delta1 * anomalous / fed.hosts + w.delta2 * overhead
        return Outcome(usage, art, aec, slo, anomalous, anomalous_hosts, migration_s, overhead, qos, fitness)

    def record_migration(self, seconds: float) -> None:
        """A migration that was carried out (or chosen) took this long: it may set a new scale for O_t."""
        self.longest_migration_s = max(self.longest_migration_s, float(seconds))

    def _tables_for(self, state: FederationState) -> StateTables:
        """The tables of ``state``, reused while states share the arrays they are built from.

        The tables read the tasks' placement, demand, memory and home LEIs, never the hosts'
        usage: a state one interval on with nothing moved (``FederationState.after``, as
        DRAGON+'s horizon rolls forward) shares them and is not built again.
        """
        cached = self._tables.state if self._tables is not None else None
        if cached is not state:
            self._check_state(state)
        if cached is None or not all(
            getattr(cached, name) is getattr(state, name) for name in ("placement", "demand", "ram_bytes", "home_lei")
        ):
            self._tables = self._build_tables(state)
        return self._tables

    def _build_tables(self, state: FederationState) -> StateTables:
        fed, p, m = self.federation, len(state.placement), self.federation.hosts
        hosts = np.broadcast_to(np.arange(m), (p, m))
        entry = np.asarray(fed.brokers)[state.home_lei]  # (p,) where each task's requests arrive
        latency, _ = fed.path(np.broadcast_to(entry[:, None], (p, m)), hosts)
        source = np.broadcast_to(state.placement[:, None], (p, m))
        migration = fed.migration_time(state.ram_bytes[:, None], np.maximum(source, 0), hosts)
        migration = np.where(source == UNPLACED, 0.0, migration)  # placing a new task is not a migration
        current_load = scatter_tasks(state.demand, state.placement[None, :], m)[0]
        return StateTables(state, current_load, 2 * latency, migration, self._worst_migration_s(state))

    def _response(self, tables: StateTables, placement: np.ndarray, cpu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised ART (B,) and the share of tasks over their SLO (B,) under each placement."""
        fed, svc = self.federation, self.service
        placed = placement != UNPLACED  # (B, p)
        host = np.where(placed, placement, 0)
        slowdown = 1.0 / (1.0 - np.minimum(np.take_along_axis(cpu, host, axis=1), svc.saturation))
        response = svc.service_time_s * slowdown + tables.round_trip_s[np.arange(host.shape[1]), host]  # (B, p) s
        worst = svc.service_time_s / (1.0 - svc.saturation) + 2 * (2 * fed.lan.latency_s + fed.wan.latency_s)
        tasks = np.maximum(placed.sum(axis=1), 1)
        art = np.where(placed, response, 0.0).sum(axis=1) / tasks / worst
        over = placed & (response > svc.slo_factor * svc.service_time_s)
        return art, over.sum(axis=1) / tasks

    def _worst_migration_s(self, state: FederationState) -> float:
        """Every running task over the WAN: the worst decision the state allows, a floor for O_t's scale.

        With it O_t stays in [0, 1] like ART and AEC, and the first intervals, with nothing seen
        yet, have a scale.
        """
        fed = self.federation
        running = state.placement != UNPLACED
        wan_latency = 2 * fed.lan.latency_s + fed.wan.latency_s
        bottleneck = min(fed.lan.bandwidth_bps, fed.wan.bandwidth_bps)
        everything = running.sum() * 2 * wan_latency + state.ram_bytes[running].sum() / bottleneck
        return max(float(everything), 1e-9)

    def _check_state(self, state: FederationState) -> None:
        m = self.federation.hosts
        if state.usage.shape != (m, len(self.federation.metrics)):
            raise ValueError(f"usage must be ({m}, {len(self.federation.metrics)}), got {state.usage.shape}")
        if ((state.placement < UNPLACED) | (state.placement >= m)).any():
            raise ValueError(f"hosts must be in [0, {m}) or {UNPLACED} (not placed)")
        if ((state.home_lei < 0) | (state.home_lei >= len(self.federation.leis))).any():
            raise ValueError("home_lei must index the federation's LEIs")

    def _check_decisions(self, state: FederationState, decisions: np.ndarray) -> None:
        m, p = self.federation.hosts, len(state.placement)
        if decisions.ndim != 2 or decisions.shape[1] != p:
            raise ValueError(f"decisions must be (B, {p}) target hosts, got {decisions.shape}")
        if ((decisions < UNPLACED) | (decisions >= m)).any():
            raise ValueError(f"hosts must be in [0, {m}) or {UNPLACED} (stay)")
