"""One frozen schema per topic (docs/messages.md is the prose version)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dragon.messages.schema import Message, require
from dragon.settings import PLAIN_ID_RULE, is_plain_id

# Order matters: it is the feature axis of every window and model.
HOST_METRICS: tuple[str, ...] = ("cpu", "ram", "swap", "disk_read", "disk_write", "net_rx", "net_tx")
FAULT_KINDS: tuple[str, ...] = ("cpu", "memory", "disk", "flood")
# How a verdict was reached: on the window a sample closed, or on the co-simulator's forecast of
# the next one (eq. 13 with W_{t+1} <- Sim(W_t, S_t), Alg. 2 line 4).
VERDICT_MODES: tuple[str, ...] = ("observed", "predicted")
# What a verdict rests on: a window's fault score, or no window at all (the host's samples stopped
# while its LEI's others came: dragon.detector.silence).
FAULT_CAUSES: tuple[str, ...] = ("score", "silent")
# Bounds a real sample stays far within. Beyond them a value is a glitch or forged, and the
# models' float32 arithmetic would overflow (1e300 bytes/s is inf in float32).
MAX_RATE_BPS = 1e12  # bytes per second: no disk or link of an edge device comes near
MAX_FRACTION = 4.0  # of a host's capacity: a quota enforced late reads briefly above 1, never this
MAX_RAM_BYTES = 1e15
MIN_INTERVAL_S, MAX_INTERVAL_S = 0.01, 86_400.0
MAX_SEQ = 2**63 - 1  # msgpack's signed range
# How far a sample's clock may run ahead of a receiver's: 3 of its intervals, at least 10 s and at
# most a minute (the interval is the sender's word: a day's would let a sample from 3 days ahead
# in). Further ahead it is refused: kept, it would hide every real sample of its host until then.
FUTURE_TOLERANCE_S, MAX_FUTURE_TOLERANCE_S = 10.0, 60.0


def stamped_ahead(ts: float, interval_s: float, now: float) -> bool:
    """Whether a message stamped ``ts`` lies further in the future than clock skew explains."""
    return ts > now + min(max(FUTURE_TOLERANCE_S, 3 * interval_s), MAX_FUTURE_TOLERANCE_S)


@dataclass(frozen=True)
class HostMetrics:
    """One host's usage over the last interval.

    cpu, ram, swap: fractions of the host's capacity (0..1, cpu may briefly exceed 1
    when a quota is enforced late); disk_* and net_*: bytes per second.
    """

    cpu: float
    ram: float
    swap: float
    disk_read: float
    disk_write: float
    net_rx: float
    net_tx: float

    def vector(self) -> list[float]:
        return [getattr(self, name) for name in HOST_METRICS]

    def check(self, where: str) -> None:
        """Raise ValueError unless every value is one a host can show (see :data:`MAX_RATE_BPS`)."""
        for name in HOST_METRICS:
            require(getattr(self, name) >= 0, f"{where}.metrics.{name} must not be negative")
        for name in ("cpu", "ram", "swap"):
            require(getattr(self, name) <= MAX_FRACTION, f"{where}.metrics.{name} is a fraction of capacity")
        for name in ("disk_read", "disk_write", "net_rx", "net_tx"):
            require(getattr(self, name) <= MAX_RATE_BPS, f"{where}.metrics.{name} is above {MAX_RATE_BPS:.0e} B/s")


@dataclass(frozen=True)
class TaskUsage:
    """A DRAGON task container on the host: cpu as a fraction of the host, ram in bytes."""

    id: str
    name: str
    cpu: float
    ram_bytes: float


@dataclass(frozen=True)
class HostSample(Message):
    """``dragon/<lei>/hosts/<host>/sample`` — collector → detector."""

    lei: str
    host: str
    ts: float
    seq: int
    interval_s: float
    metrics: HostMetrics
    tasks: tuple[TaskUsage, ...] = ()
    # The memory ``metrics.ram`` is a fraction of, in bytes (its limit, for an emulated host), so a
    # task's ``ram_bytes`` is a share of the host too; 0: not said (a collector older than 2026-12-07).
    ram_capacity_bytes: float = 0.0

    def check(self) -> None:
        require(MIN_INTERVAL_S <= self.interval_s <= MAX_INTERVAL_S, "HostSample.interval_s must be in 0.01 s..1 day")
        require(0 <= self.ram_capacity_bytes <= MAX_RAM_BYTES, "HostSample.ram_capacity_bytes must be in 0..1e15")
        require(self.ts > 0, "HostSample.ts must be an epoch time in seconds")
        require(0 <= self.seq <= MAX_SEQ, "HostSample.seq must be a non-negative 64-bit integer")
        self.metrics.check("HostSample")
        # Task usage feeds the detector's model of the LEI (task windows): an out-of-range share
        # would be a huge scaled input.
        for task in self.tasks:
            require(0.0 <= task.cpu <= MAX_FRACTION, "HostSample.tasks[].cpu is a fraction of the host's capacity")
            require(0 <= task.ram_bytes <= MAX_RAM_BYTES, "HostSample.tasks[].ram_bytes must be in 0..1e15")
            require(len(task.id) > 0, "HostSample.tasks[].id must not be empty")

    def ahead_of(self, now: float) -> bool:
        """Stamped further in the future than clock skew explains (:func:`stamped_ahead`)."""
        return stamped_ahead(self.ts, self.interval_s, now)


@dataclass(frozen=True)
class MetricContribution:
    metric: str
    contribution: float


@dataclass(frozen=True)
class FaultEvent(Message):
    """``dragon/faults/<lei>/<host>`` — the public API for other tools.

    ``type`` is ``start`` when a host becomes faulty and ``end`` when it has been
    normal again for the configured number of windows. ``event_id`` is stable for a
    given host, window and type, so a consumer can drop a redelivered duplicate. ``cause`` is
    ``score`` (a window's score) or ``silent`` (the host's samples stopped; score and threshold 0).
    """

    event_id: str
    type: str
    lei: str
    host: str
    ts: float
    window_ts: float
    score: float
    threshold: float
    label: int
    mode: str
    top_metrics: tuple[MetricContribution, ...]
    model_id: str
    detector: str
    cause: str = "score"

    def check(self) -> None:
        require(self.type in {"start", "end"}, "FaultEvent.type must be start or end")
        require(self.mode in VERDICT_MODES, "FaultEvent.mode must be observed or predicted")
        require(self.label in {0, 1}, "FaultEvent.label must be 0 or 1")
        require(self.cause in FAULT_CAUSES, "FaultEvent.cause must be score or silent")


@dataclass(frozen=True)
class HostHealth(Message):
    """``dragon/<lei>/hosts/<host>/health`` (retained) — the latest verdict per host."""

    lei: str
    host: str
    ts: float
    score: float
    threshold: float
    label: int
    mode: str
    faulty_since: float | None = None
    cause: str = "score"

    @property
    def in_a_fault(self) -> bool:
        """An alarm within a fault that has started: with DRAGON_FAULT_START_WINDOWS > 1 the alarms
        before the N-th in a row are not one yet (no ``faulty_since``)."""
        return self.label == 1 and self.faulty_since is not None

    def check(self) -> None:
        require(self.label in {0, 1}, "HostHealth.label must be 0 or 1")
        require(self.mode in VERDICT_MODES, "HostHealth.mode must be observed or predicted")
        require(self.cause in FAULT_CAUSES, "HostHealth.cause must be score or silent")


@dataclass(frozen=True)
class FaultInjection(Message):
    """``dragon/<lei>/inject/<host>`` — start a real fault inside an emulated host."""

    id: str
    kind: str
    duration_s: float
    intensity: float = 1.0
    ts: float = 0.0

    def check(self) -> None:
        require(self.kind in FAULT_KINDS, f"FaultInjection.kind must be one of {', '.join(FAULT_KINDS)}")
        require(0 < self.duration_s <= 3600, "FaultInjection.duration_s must be in (0, 3600]")
        require(0 < self.intensity <= 1, "FaultInjection.intensity must be in (0, 1]")
        require(0 < len(self.id) <= 64, "FaultInjection.id must be 1-64 characters")
        # 0: not stamped (not checked for age); anything else an epoch time, or the age check is moot.
        require(math.isfinite(self.ts) and self.ts >= 0, "FaultInjection.ts must be 0 or an epoch time in seconds")


@dataclass(frozen=True)
class InjectionEvent(Message):
    """``dragon/<lei>/injections`` — ground truth of every injected fault."""

    id: str
    lei: str
    host: str
    kind: str
    status: str
    ts: float
    started_at: float | None = None
    ends_at: float | None = None
    reason: str = ""

    def check(self) -> None:
        require(self.status in {"started", "finished", "failed", "rejected"}, "InjectionEvent.status is unknown")


SIM_KINDS: tuple[str, ...] = ("evaluate", "next_window")


@dataclass(frozen=True)
class TaskMove:
    """One migration of a decision: ``task`` (its container id) to ``host`` of LEI ``lei``."""

    task: str
    lei: str
    host: str


@dataclass(frozen=True)
class SimRequest(Message):
    """``dragon/<lei>/sim/request`` — a co-simulation query, answered on the MQTT v5 response topic.

    ``evaluate``: score each of ``decisions`` (eq. 15-18) on the federation's current state.
    ``next_window``: the hosts' predicted next metrics (eq. 12) under the current schedule with
    the moves of ``decisions[0]``, if any, applied.
    """

    id: str
    kind: str
    decisions: tuple[tuple[TaskMove, ...], ...] = ()
    ts: float = 0.0

    def check(self) -> None:
        require(0 < len(self.id) <= 64, "SimRequest.id must be 1-64 characters")
        require(self.kind in SIM_KINDS, f"SimRequest.kind must be one of {', '.join(SIM_KINDS)}")
        require(self.kind != "evaluate" or len(self.decisions) > 0, "SimRequest: evaluate needs decisions")
        require(self.kind != "next_window" or len(self.decisions) <= 1, "SimRequest: next_window takes one decision")


@dataclass(frozen=True)
class DecisionVerdict:
    """The co-simulator's prediction for one decision; ``anomalous_hosts`` are ``<lei>/<host>``."""

    fitness: float
    qos: float
    art: float
    aec: float
    slo_violations: float
    anomalous_hosts: tuple[str, ...]
    migration_s: float
    overhead: float


@dataclass(frozen=True)
class HostForecast:
    lei: str
    host: str
    metrics: HostMetrics


@dataclass(frozen=True)
class ForecastSample(Message):
    """``dragon/<lei>/hosts/<host>/forecast`` — simulator → detector: the host's next sample as the
    co-simulator predicts it under the LEI's current schedule (Sim(W_t, S_t), eq. 12).

    ``based_on_ts`` is the newest observed sample of the host the forecast starts from (the end
    of W_t); ``for_ts`` the time it forecasts (one interval later). ``ts`` is that sample's time,
    on the host's clock, plus 1 ms for each time the forecast was made again from it because a
    schedule moved a task (at most half an interval), so every simulator replica stamps the same
    forecast alike and a consumer can drop the older of two. ``tasks`` are the task ids the
    forecast places on the host.
    """

    lei: str
    host: str
    ts: float
    based_on_ts: float
    for_ts: float
    metrics: HostMetrics
    tasks: tuple[str, ...] = ()
    simulator: str = ""

    def check(self) -> None:
        require(self.based_on_ts > 0 and self.ts >= self.based_on_ts, "ForecastSample.ts must not precede based_on_ts")
        ahead = self.for_ts - self.based_on_ts
        require(0 < ahead <= MAX_INTERVAL_S, "ForecastSample.for_ts must follow based_on_ts by at most a day")
        self.metrics.check("ForecastSample")

    @property
    def interval_s(self) -> float:
        """The host's interval, as the forecast's step says it."""
        return self.for_ts - self.based_on_ts

    def ahead_of(self, now: float) -> bool:
        """Stamped further in the future than clock skew explains (:func:`stamped_ahead`)."""
        return stamped_ahead(self.ts, self.interval_s, now)


@dataclass(frozen=True)
class SimResponse(Message):
    """The answer to a :class:`SimRequest`, on its response topic with its correlation data.

    ``ok`` false: ``error`` says why (``reason`` is machine-readable) and nothing else is set.
    ``state_ts`` is the newest sample the answer is based on; ``hosts`` and ``tasks`` what it saw.
    """

    id: str
    ok: bool
    kind: str = ""
    reason: str = ""
    error: str = ""
    state_ts: float = 0.0
    hosts: int = 0
    tasks: int = 0
    verdicts: tuple[DecisionVerdict, ...] = ()
    forecast: tuple[HostForecast, ...] = ()
    simulator: str = ""


PLAN_MODES: tuple[str, ...] = ("dragon", "dragon+")


@dataclass(frozen=True)
class PlannedMove:
    """A task to migrate: from ``source_lei``/``source_host`` to ``target_lei``/``target_host``."""

    task: str
    source_lei: str
    source_host: str
    target_lei: str
    target_host: str
    migration_s: float


@dataclass(frozen=True)
class PlanDecision(Message):
    """``dragon/fed/<lei>/decision`` — a broker's preemptive migration decision M_t* (Alg. 2, 3).

    ``moves`` is the whole federation's decision as this broker played it (fictitious play): its
    own LEI's tasks' moves, a best response to the other LEIs' moves of theirs, which it holds as
    their brokers last decided them; it carries out only those whose ``source_lei`` is its ``lei``. ``fitness`` and
    ``qos`` are the co-simulator's predictions for the decision, ``fitness_unmoved`` for moving
    nothing. ``isolated``: no peer LEI was heard from recently, so the broker planned for its own
    LEI alone, moving tasks between its own hosts; ``stale_leis`` names the peers it lost.
    """

    id: str
    lei: str
    ts: float
    mode: str
    look_ahead: int
    moves: tuple[PlannedMove, ...]
    faulty_hosts: tuple[str, ...]
    fitness: float
    fitness_unmoved: float
    qos: float
    art: float
    aec: float
    predicted_anomalous: int
    decision_ms: float
    isolated: bool
    leis: tuple[str, ...]
    stale_leis: tuple[str, ...] = ()
    planner: str = ""
    # Its broker commands its moves (its planner holds the migration key); one that only decides
    # moves nothing, and its peers do not hold its moves as happening.
    commanded: bool = True

    def check(self) -> None:
        require(self.mode in PLAN_MODES, f"PlanDecision.mode must be one of {', '.join(PLAN_MODES)}")
        require(self.look_ahead >= 1, "PlanDecision.look_ahead must be at least 1")


@dataclass(frozen=True)
class MigrationCommand(Message):
    """``dragon/<lei>/migrations/commands`` — move ``task`` of this LEI to ``target_host`` of ``target_lei``.

    ``id`` makes the command idempotent (the migrator's journal refuses a known id); ``ts`` lets
    a stale command be refused; ``signature`` is HMAC-SHA256 over the other fields with the key
    the planner and the migrator share (``dragon.migrator.commands``), so a command is accepted
    only from a holder of the key, whatever the broker lets through.
    """

    id: str
    lei: str
    task: str
    target_lei: str
    target_host: str
    ts: float
    issuer: str
    signature: str = ""

    def check(self) -> None:
        require(0 < len(self.id) <= 64, "MigrationCommand.id must be 1-64 characters")
        require(len(self.task) > 0, "MigrationCommand needs a task")
        for name in ("lei", "target_lei", "target_host"):  # they become cgroup paths and topic levels
            require(is_plain_id(getattr(self, name)), f"MigrationCommand.{name} must be {PLAIN_ID_RULE}")
        require(self.ts > 0, "MigrationCommand.ts must be an epoch time in seconds")


MIGRATION_OUTCOMES: tuple[str, ...] = ("done", "rolled_back", "failed", "refused")


@dataclass(frozen=True)
class StepDuration:
    step: str
    seconds: float


@dataclass(frozen=True)
class MigrationEvent(Message):
    """``dragon/<lei>/migrations/events`` — what the migrator did with command ``id``.

    ``outcome``: ``done`` (the task runs on the target), ``rolled_back`` (it runs on its source as
    before), ``failed`` (nothing was moved, e.g. no such task) or ``refused`` (the command was not
    carried out: ``reason`` says why — unsigned, bad_signature, wrong_lei, stale, future,
    duplicate, busy, superseded, unknown_host, journal_unavailable, malformed). ``mode`` is the
    kind of move and ``mode_reason`` why it was chosen; ``steps`` each journal step's duration.
    ``recovered``: finished by a migrator that restarted after being stopped mid-move.
    """

    id: str
    lei: str
    task: str
    outcome: str
    ts: float
    source_host: str = ""
    target_lei: str = ""
    target_host: str = ""
    mode: str = ""
    mode_reason: str = ""
    reason: str = ""
    error: str = ""
    steps: tuple[StepDuration, ...] = ()
    total_s: float = 0.0
    recovered: bool = False
    migrator: str = ""

    def check(self) -> None:
        outcomes = ", ".join(MIGRATION_OUTCOMES)
        require(self.outcome in MIGRATION_OUTCOMES, f"MigrationEvent.outcome must be one of {outcomes}")


@dataclass(frozen=True)
class TaskPlacement:
    """Task ``task`` runs in container ``container`` on host ``host``, there since ``since``."""

    task: str
    container: str
    host: str
    since: float


@dataclass(frozen=True)
class Schedule(Message):
    """``dragon/<lei>/tasks`` (retained) — the LEI's schedule S_t as its migrator knows it.

    Republished after every move, so the planner and the simulator see a move at once rather
    than at the hosts' next samples; ``since`` of a moved task is when it started on its host.
    """

    lei: str
    ts: float
    tasks: tuple[TaskPlacement, ...]
    migrator: str = ""


@dataclass(frozen=True)
class ServiceCounters(Message):
    """``dragon/<service>/<instance>/counters`` (retained, JSON) — what one service instance has
    counted since it started: messages dropped by reason, windows judged, handler errors…

    Published every ``DRAGON_COUNTERS_INTERVAL`` seconds while they change, and on a clean stop,
    so an operator sees drops as they happen; they restart from zero with the instance
    (``started_ts`` tells a restart from a quiet spell).
    """

    service: str
    instance: str
    ts: float
    started_ts: float
    counters: dict[str, int]

    def check(self) -> None:
        for name, value in self.counters.items():
            require(value >= 0, f"ServiceCounters.counters[{name!r}] must not be negative")
