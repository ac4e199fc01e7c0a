"""What the simulator knows of the federation now: W^M_t and S_t, kept from the host samples.

Every sample the broker carries (its own LEI's and, through bridges, the other LEIs') updates
its host's newest usage and the tasks running there; every LEI's schedule, which its migrator
republishes after each move, places a moved task on its new host before the next samples show
it there (one that no sample lists any more, restored from a checkpoint, with the demand its
last sample measured). A snapshot turns that into the arrays the
co-simulator takes: hosts ordered by (LEI, host), a task's placement from the newest sample
that lists it, a host's background from its lowest recent usage, and each task's home LEI (the
LEI it was first seen in: its users' requests still enter there after it moves).

It lives in memory: after a restart the samples that follow rebuild it, hosts at once, their
backgrounds over the next samples, and never the home LEIs of tasks that moved before the
restart, which then count as at home where they run (docs/simulator.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from typing import NamedTuple

import numpy as np
import structlog

from dragon.lateness import FORGET_AFTER_S, Lateness, OwnClockSteps, SlidingMinimum
from dragon.logs import EveryInterval
from dragon.messages import topics
from dragon.messages.codec import DecodeError
from dragon.messages.schemas import HOST_METRICS, HostSample, Schedule
from dragon.mqtt import Incoming, MqttClient
from dragon.sim.federation import RPI4B_4GB, Federation, Link, PowerProfile
from dragon.sim.qos import CoSimulator, FederationState, FitnessWeights, ServiceModel
from dragon.sim.twin import UNPLACED, TwinParams, moved_demand, task_demand
from dragon.simulator.config import CoSimSettings

log = structlog.get_logger(__name__)

FRACTIONS = {"cpu", "ram", "swap"}  # of the host's capacity; the other metrics are bytes per second
CPU = HOST_METRICS.index("cpu")
RAM = HOST_METRICS.index("ram")
HostKey = tuple[str, str]  # (lei, host)
# How long after a task starts on a host that host's samples may still miss it: the collector
# lists containers from a cache refreshed every 5 s (collector/probes.py), and then it samples.
ARRIVAL_GRACE_S = 5.0
# Samples no newer than their host's newest are counted each and logged at most this often: a
# broker's redelivery after a reconnect brings a burst of them, a host whose clock stepped back
# one per interval until its clock passes its newest sample again.
STALE_LOG_INTERVAL_S = 60.0


class TaskSeen(NamedTuple):
    """A task as its host's sample measured it: its cpu share of the host, its memory in bytes,
    and that memory as a share of the host's (NaN when the sample does not say the host's)."""

    cpu: float
    ram_bytes: float
    ram_share: float

    def memory(self, in_bytes: bool) -> float:
        """Its memory in the twin's units: bytes, or a share of its host's."""
        return self.ram_bytes if in_bytes else self.ram_share


class Listing(NamedTuple):
    """A sample that listed a task: when, and the task's cpu share and memory there.

    Compared as a tuple: the newer wins, and between two samples of the same instant the larger
    cpu share, as in :meth:`FederationView._tasks`.
    """

    ts: float
    cpu: float
    ram_bytes: float
    ram_share: float

    def memory(self, in_bytes: bool) -> float:
        """Its memory in the twin's units: bytes, or a share of its host's."""
        return self.ram_bytes if in_bytes else self.ram_share


@dataclass
class HostRecord:
    ts: float
    interval_s: float
    first_arrived: InitVar[float]  # when its first sample arrived, on our clock
    usage: np.ndarray  # (n,) newest metrics
    tasks: dict[str, TaskSeen]
    background: np.ndarray | None = None  # element-wise minimum of the last samples' usage
    minima: list[SlidingMinimum] = field(default_factory=list)  # per metric, over the last samples
    lateness: Lateness = field(init=False)  # how long after their stamps its samples arrive
    ram_capacity: float = 0.0  # bytes its ram is a fraction of, as its newest sample says (0: not said)

    def __post_init__(self, first_arrived: float) -> None:
        self.lateness = Lateness(first_arrived)

    @property
    def received(self) -> float:
        """When its newest sample arrived, on our clock."""
        return self.lateness.received

    def arrived(self, received: float, ts: float) -> None:
        """Note that a sample stamped ``ts`` arrived at ``received`` (our clock)."""
        self.lateness.arrived(received, ts, self.interval_s)

    @property
    def usual_lag(self) -> float | None:
        """How long after its stamp a sample of the host usually arrives; None until one came live."""
        return self.lateness.usual

    def age(self, now: float) -> float:
        """How old the host's newest news is (:meth:`Lateness.age`): a sample delivered late (a
        backlog the broker or a peer's relay kept through an outage) is as old as its lateness."""
        return self.lateness.age(now, self.ts)

    def add(self, usage: np.ndarray, keep: int) -> None:
        """Take ``usage`` in and keep the minimum of the last ``keep`` samples, per metric."""
        if not self.minima:
            self.minima = [SlidingMinimum(keep) for _ in usage]
        for minimum, value in zip(self.minima, usage.tolist(), strict=True):
            minimum.push(value)
        self.background = np.array([minimum.minimum for minimum in self.minima])


@dataclass(frozen=True, eq=False)  # numpy fields
class Snapshot:
    """The federation as of ``ts``: index maps for hosts and tasks, and the co-simulator's inputs.

    ``sampled`` places each task where the samples show it (a task restored on a new host
    that no sample lists yet on none, ``UNPLACED``), with the usage they measured;
    ``state`` where its LEI's schedule says, with those moves' demand carried to the new hosts
    (what the planner plans from). They differ for a task that moved after its hosts' newest
    samples: a move whose effect no sample shows yet (:meth:`pending_moves`).
    """

    ts: float
    hosts: tuple[HostKey, ...]
    tasks: tuple[str, ...]
    federation: Federation
    state: FederationState
    background: np.ndarray  # (m, n)
    sampled: FederationState
    sampled_at: tuple[float, ...]  # (m,) each host's newest sample
    intervals_s: tuple[float, ...]  # (m,) each host's sample interval
    # (m, n): a sample's metrics times this are the twin's units: memory in bytes when every host
    # says its memory (a task's memory then moves as bytes between unlike hosts), else all ones
    units: np.ndarray

    def host_index(self, lei: str, host: str) -> int:
        try:
            return self.hosts.index((lei, host))
        except ValueError:
            raise KeyError(f"host {lei}/{host} is not in the federation's current state") from None

    def task_index(self, task: str) -> int:
        try:
            return self.tasks.index(task)
        except ValueError:
            raise KeyError(f"task {task!r} is not running in the federation's current state") from None

    def pending_moves(self) -> np.ndarray:
        """The schedule's moves the samples do not show yet, as a decision (p,) on ``sampled``."""
        moved = self.state.placement != self.sampled.placement
        return np.where(moved, self.state.placement, UNPLACED)


class FederationView:
    """The newest sample of every host, turned into snapshots on request."""

    def __init__(
        self,
        stale_intervals: float,
        background_samples: int,
        lan: Link,
        wan: Link,
        power: PowerProfile = RPI4B_4GB,
        disk_bps: float = np.inf,
        net_bps: float = np.inf,
        move_gain: float = 1.0,
        own_clock: OwnClockSteps | None = None,
    ) -> None:
        """``disk_bps`` and ``net_bps``: each host's disk and network throughput, per direction;
        ``move_gain``: the twin's λ, the share of a task's demand that follows it to a new host;
        ``own_clock``: tells steps of the wall clock the ``now`` given to every call is read from."""
        ceilings = {"disk_read": disk_bps, "disk_write": disk_bps, "net_rx": net_bps, "net_tx": net_bps}
        self.capacity = np.array([1.0 if name in FRACTIONS else ceilings[name] for name in HOST_METRICS])
        self.stale_intervals = stale_intervals
        self.background_samples = background_samples
        self.lan, self.wan, self.power = lan, wan, power
        self.move_gain = move_gain
        self._hosts: dict[HostKey, HostRecord] = {}
        self._home_lei: dict[str, str] = {}
        # Task -> the last sample that listed it, kept when its host's next sample no longer does.
        self._dropped: dict[str, Listing] = {}
        self._scheduled: dict[str, dict[str, tuple[str, float]]] = {}  # lei -> task -> (host, since)
        # lei -> task -> when (our clock) its schedule first placed the task on its current host
        self._first_listed: dict[str, dict[str, float]] = {}
        self._schedule_ts: dict[str, float] = {}  # lei -> its newest schedule's ts
        self._schedule_at: dict[str, float] = {}  # lei -> the same, capped at when it arrived
        self._own_clock = own_clock or OwnClockSteps()
        # Samples arrive on the MQTT worker thread while the planner snapshots on its own.
        self._lock = threading.Lock()

    def observe(self, sample: HostSample, now: float) -> bool:
        """Take a sample in; False if it is refused.

        One no newer than its host's newest is refused (redelivered, reordered, or its host's
        clock stepped back): it tells nothing new. One stamped in the future is refused: kept, it
        would hide every real sample of its host until that time (a collector whose clock was
        wrong, then corrected).
        """
        if sample.ahead_of(now):
            return False
        # What a host cannot do is not simulated either: a value above capacity (a clock glitch,
        # a 1e308 byte rate) would otherwise overflow the twin's sums.
        usage = np.minimum(np.array(sample.metrics.vector(), dtype=np.float64), self.capacity)
        capacity = sample.ram_capacity_bytes
        tasks = {
            task.id: TaskSeen(
                min(task.cpu, 1.0), task.ram_bytes, min(task.ram_bytes / capacity, 1.0) if capacity else np.nan
            )
            for task in sample.tasks
        }
        with self._lock:
            self._follow_own_clock()
            return self._remember(sample, usage, tasks, now)

    def _remember(self, sample: HostSample, usage: np.ndarray, tasks: dict[str, TaskSeen], now: float) -> bool:
        """Take a sample in, unless it is no newer than its host's newest; True if taken."""
        key = (sample.lei, sample.host)
        record = self._hosts.get(key)
        if record is not None and sample.ts <= record.ts:
            return False
        if record is None:
            record = self._hosts[key] = HostRecord(sample.ts, sample.interval_s, now, usage, tasks)
        record.arrived(now, sample.ts)
        for task in record.tasks.keys() - tasks.keys():  # gone from this host: moved, or stopped
            dropped = Listing(record.ts, *record.tasks[task])
            if task not in self._dropped or dropped > self._dropped[task]:
                self._dropped[task] = dropped
        record.ts, record.interval_s, record.usage, record.tasks = sample.ts, sample.interval_s, usage, tasks
        record.ram_capacity = sample.ram_capacity_bytes
        record.add(usage, self.background_samples)
        for task in tasks:
            self._home_lei.setdefault(task, sample.lei)
        return True

    def observe_schedule(self, schedule: Schedule, now: float | None = None, retained: bool = False) -> bool:
        """Take an LEI's schedule in: where each of its tasks runs, and since when (an older one
        than the LEI's newest, redelivered or reordered, is ignored). True if it changed where a
        task runs (a migrator republishes its schedule unchanged every so often). A ``retained``
        one (handed over at subscription, in any order) did not place its tasks when it came."""
        placements = {p.task: (p.host, p.since) for p in schedule.tasks}
        received = time.time() if now is None else now
        placed_at = 0.0 if retained else received
        with self._lock:
            if schedule.ts < self._schedule_ts.get(schedule.lei, 0.0):
                return False
            before = self._scheduled.get(schedule.lei, {})
            changed = placements != before
            first_listed = self._first_listed.get(schedule.lei, {})
            self._first_listed[schedule.lei] = {
                task: first_listed[task] if before.get(task, ("",))[0] == host else placed_at
                for task, (host, _) in placements.items()
            }
            self._scheduled[schedule.lei] = placements
            self._schedule_ts[schedule.lei] = schedule.ts
            # The migrator's clock may run ahead of ours: its moves count from when their
            # schedule arrived at the latest (_scheduled_moves).
            self._schedule_at[schedule.lei] = min(schedule.ts, received)
            return changed

    def usual_lag(self, lei: str, host: str) -> float | None:
        """How long after its stamp a sample of the host usually arrives (HostRecord.usual_lag);
        None until one came live."""
        with self._lock:
            record = self._hosts.get((lei, host))
            return record.usual_lag if record is not None else None

    def sampled_at(self, lei: str, host: str) -> float:
        """The time of the host's newest sample, on its clock; 0 if none came."""
        with self._lock:
            record = self._hosts.get((lei, host))
            return record.ts if record is not None else 0.0

    def interval_of(self, lei: str, host: str) -> float:
        """The host's sampling interval as its newest sample gave it; 0 if none came."""
        with self._lock:
            record = self._hosts.get((lei, host))
            return record.interval_s if record is not None else 0.0

    def known_leis(self) -> set[str]:
        """Every LEI a sample ever came from, fresh or not."""
        with self._lock:
            return {lei for lei, _ in self._hosts}

    def scheduled(self) -> dict[str, tuple[HostKey, float]]:
        """Where the LEIs' newest schedules place their tasks: task -> (its host, since when)."""
        with self._lock:
            return {task: ((lei, host), since) for task, (lei, host, since) in self._placements().items()}

    def _placements(self) -> dict[str, tuple[str, str, float]]:
        """Task -> (LEI, host, since) of its newest placement in the LEIs' schedules.

        Two list a task for a moment after it moved between them (the one it left republishes at
        once), or for as long as the one it left is cut off, its last schedule retained. Which is
        where it runs, by what tells it best: a placement on a host whose newest sample lists the
        task; then the one a schedule showed first the latest, on our clock (a restarted view is
        handed every retained schedule at once, in any order); then the latest start (``since``,
        on the hosts' own clocks, capped as in :meth:`_scheduled_moves`)."""
        newest: dict[str, tuple[str, str, float]] = {}
        rank: dict[str, tuple[bool, float, float]] = {}
        for lei, tasks in self._scheduled.items():
            for task, (host, since) in tasks.items():
                record = self._hosts.get((lei, host))
                sampled_there = record is not None and task in record.tasks
                order = (sampled_there, self._first_listed[lei][task], min(since, self._schedule_at[lei]))
                if task not in rank or order > rank[task]:
                    newest[task], rank[task] = (lei, host, since), order
        return newest

    def forget(self, now: float) -> None:
        """Drop the hosts and tasks gone long enough, as every snapshot does: for a follower that
        takes snapshots only now and then (the planner, only while a host of its LEI is faulty)."""
        with self._lock:
            self._follow_own_clock()
            self._forget(now)

    def snapshot(self, now: float) -> Snapshot:
        """The fresh hosts and their tasks; ValueError when no host is fresh."""
        with self._lock:
            return self._snapshot(now)

    def _snapshot(self, now: float) -> Snapshot:
        self._follow_own_clock()
        self._forget(now)
        # Fresh while its samples keep arriving, on our clock (HostRecord.age): a host whose own
        # clock runs behind (a Pi without a real-time clock, no NTP yet) is as fresh as any; by its
        # stamps it would look stale on arrival once it is a few intervals behind, and drop out of
        # every plan.
        fresh = sorted(key for key, rec in self._hosts.items() if rec.age(now) <= self.stale_intervals * rec.interval_s)
        if not fresh:
            raise ValueError("no host has reported recently: the simulator has no state to simulate")
        records = [self._hosts[key] for key in fresh]
        in_bytes = all(rec.ram_capacity > 0 for rec in records)
        units = _units(records, in_bytes)
        federation = self._federation([lei for lei, _ in fresh], units)
        background = np.stack([rec.background for rec in records]) * units
        placement, measured, ram_bytes = self._tasks(records, in_bytes)
        usage = _without_departed(records, placement, background, units, in_bytes)
        moved, arriving = self._scheduled_moves(placement, fresh)
        for task, (_, listing) in arriving.items():  # on no host in the samples: as its last sample measured
            measured[task], ram_bytes[task] = _measured_row(listing.cpu, listing.memory(in_bytes)), listing.ram_bytes
        task_ids = (*placement, *arriving)
        sampled_place = np.array([placement.get(task, UNPLACED) for task in task_ids], dtype=int)
        scheduled = placement | moved | {task: target for task, (target, _) in arriving.items()}
        place = np.array([scheduled[task] for task in task_ids], dtype=int)
        measured_rows = np.array([measured[task] for task in task_ids]).reshape(len(task_ids), len(HOST_METRICS))
        home = [
            self._home_of(task, federation.lei_of_host[host], federation.leis)
            for task, host in zip(task_ids, place, strict=True)
        ]
        ram = np.array([ram_bytes[task] for task in task_ids], dtype=np.float64)

        def state_for(placed: np.ndarray) -> FederationState:
            demand = task_demand(usage, placed, background, measured_rows)
            return FederationState(usage, placed, demand, ram, np.array(home, dtype=int))

        sampled = state_for(sampled_place)
        moving = not np.array_equal(place, sampled_place)
        state = self._after_moves(sampled, place, federation.capacity) if moving else sampled
        return Snapshot(
            max(rec.ts for rec in records),
            tuple(fresh),
            task_ids,
            federation,
            state,
            background,
            sampled,
            tuple(rec.ts for rec in records),
            tuple(rec.interval_s for rec in records),
            units,
        )

    def _after_moves(self, sampled: FederationState, place: np.ndarray, capacity: np.ndarray) -> FederationState:
        """``sampled`` with the schedule's moves that no sample shows yet carried out.

        A moved task's demand (measured where it ran) leaves its old host's usage and arrives
        on its new host's, as the twin moves it. Placing the task on its new host with the
        hosts' pre-move usage would show its load on the host it left and not where it runs:
        for an interval the planner would see the old host as loaded as before the move.
        """
        moved = moved_demand(sampled.demand, sampled.placement, place[None, :], len(sampled.usage))[0]
        usage = np.clip(sampled.usage + self.move_gain * moved, 0.0, capacity)
        return sampled.after(usage, place)

    def _federation(self, lei_of_host: list[str], units: np.ndarray) -> Federation:
        """Hosts of the samples' LEIs; an LEI's first host by name stands for its broker (requests enter there)."""
        brokers = [lei_of_host.index(lei) for lei in dict.fromkeys(lei_of_host)]
        m = len(lei_of_host)
        capacity = np.tile(self.capacity, (m, 1)) * units
        return Federation(
            tuple(lei_of_host), tuple(brokers), capacity, HOST_METRICS, (self.power,) * m, lan=self.lan, wan=self.wan
        )

    def _follow_own_clock(self) -> None:
        """Move what was timed on our wall clock (each host's arrivals and lags) by a step it took:
        else, stepped forward, every host would look late by the step, stale, for LIVE_LAGS of its
        intervals (blanking every plan and forecast), and stepped back, fresh for as long."""
        step = self._own_clock.since_last_look()
        if step:
            log.warning("own_clock_stepped", step_s=round(step, 3), hosts=len(self._hosts))
            for record in self._hosts.values():
                record.lateness.shift(step)

    def _forget(self, now: float) -> None:
        """Drop hosts silent for FORGET_AFTER_S, and the home LEIs of tasks no host has listed as long.

        Not as soon as no host lists a task: a task in the middle of a move (checkpointed on its
        old host, not yet restored on its new one) is listed nowhere for a while, and forgetting
        its home then would make it at home wherever it lands, for good.
        """
        for key in [key for key, rec in self._hosts.items() if rec.lateness.gone(now)]:
            del self._hosts[key]
        listed_at: dict[str, float] = {}  # task -> the newest sample that lists it, silent hosts' too
        for rec in self._hosts.values():
            for task in rec.tasks:
                listed_at[task] = max(listed_at.get(task, rec.ts), rec.ts)
        running = set(listed_at)
        # A drop is history once a newer sample lists the task again; a silent host's older one does not count.
        for task in [task for task, drop in self._dropped.items() if listed_at.get(task, -np.inf) >= drop.ts]:
            del self._dropped[task]
        gone = [
            task
            for task in self._home_lei
            if task not in running and (task not in self._dropped or now - self._dropped[task].ts > FORGET_AFTER_S)
        ]
        for task in gone:
            self._dropped.pop(task, None)
            del self._home_lei[task]

    def _tasks(
        self, records: list[HostRecord], in_bytes: bool
    ) -> tuple[dict[str, int], dict[str, np.ndarray], dict[str, float]]:
        """Each task's host index, measured demand (memory in bytes or as a share, ``in_bytes``) and memory in bytes.

        The newest sample listing a task wins; between samples of the same instant (two hosts
        of one collector tick, mid-move), the larger cpu share, as the detector's schedule
        (``lei._placement``) decides, so both see the task on the same host.
        """
        placement: dict[str, int] = {}
        seen: dict[str, tuple[float, float]] = {}  # task -> (sample ts, cpu share) of the winner
        measured: dict[str, np.ndarray] = {}
        ram: dict[str, float] = {}
        for index, rec in enumerate(records):
            for task, task_seen in rec.tasks.items():
                if task in seen and seen[task] >= (rec.ts, task_seen.cpu):
                    continue
                placement[task], seen[task], ram[task] = index, (rec.ts, task_seen.cpu), task_seen.ram_bytes
                measured[task] = _measured_row(task_seen.cpu, task_seen.memory(in_bytes))
        return placement, measured, ram

    def _scheduled_moves(
        self, placement: dict[str, int], fresh: list[HostKey]
    ) -> tuple[dict[str, int], dict[str, tuple[int, Listing]]]:
        """Where the LEIs' schedules place tasks that the samples do not show there yet.

        Returns the tasks a fresh sample lists elsewhere that moved (each one's new host), and
        the tasks no fresh sample lists that are arriving (each one's new host and its last
        listing). Both count from when the task started on its new host, capped at when its
        schedule arrived: a migrator's clock ahead of ours moves nothing.
        """
        index = {key: i for i, key in enumerate(fresh)}
        moved: dict[str, int] = {}
        arriving: dict[str, tuple[int, Listing]] = {}
        for task, (lei, host, since) in self._placements().items():
            target = index.get((lei, host))
            if target is None or placement.get(task) == target:
                continue
            since = min(since, self._schedule_at[lei])
            if task in placement:
                # Started on its new host after the newest sample that listed it elsewhere: its
                # usage travels with it until the new host's samples list it.
                if since > self._hosts[fresh[placement[task]]].ts:
                    moved[task] = target
            elif (listing := self._arrival(task, self._hosts[fresh[target]], since)) is not None:
                arriving[task] = (target, listing)
        return moved, arriving

    def _arrival(self, task: str, target: HostRecord, since: float) -> Listing | None:
        """The last listing of a task that no fresh sample lists, if it is arriving on ``target``
        since ``since``: moved (a checkpoint restored, say) and not sampled there yet.

        Without it a task moved by checkpoint/restore, stopped on its old host before it runs on
        the new one, would be missing from snapshots and forecasts until the new host's next sample.
        """
        # Once the new host has sampled well after the task started there without listing it,
        # the schedule is out of date (a migrator that stopped republishing it).
        if target.ts > since + ARRIVAL_GRACE_S + target.interval_s:
            return None
        listing = self._last_listing(task)  # scans every host: after the cheap test
        return listing if listing is not None and listing.ts < since else None

    def _last_listing(self, task: str) -> Listing | None:
        """The newest sample that listed ``task``: one its host's next sample dropped it from, or a
        silent host's, whose newest sample still lists it."""
        listings = [Listing(rec.ts, *rec.tasks[task]) for rec in self._hosts.values() if task in rec.tasks]
        if task in self._dropped:
            listings.append(self._dropped[task])
        return max(listings, default=None)

    def _home_of(self, task: str, current_lei: str, leis: tuple[str, ...]) -> int:
        """Index in ``leis`` of the LEI the task was first seen in, if it is one of them; else of where it runs."""
        home = self._home_lei.get(task, current_lei)
        return leis.index(home if home in leis else current_lei)


def follow_samples(
    mqtt: MqttClient, view: FederationView, then: Callable[[list[HostSample]], None] | None = None
) -> None:
    """Feed ``view`` every host sample of every LEI the broker carries (before ``mqtt.start()``);
    ``then`` gets the samples of each batch that were taken in."""
    stale_lines = EveryInterval(STALE_LOG_INTERVAL_S)

    def refused(sample: HostSample, now: float) -> None:
        """Count and log a sample the view refused: stamped in the future, or no newer than its host's newest."""
        if sample.ahead_of(now):
            mqtt.counters.add("dropped_future")
            log.warning("sample_from_the_future", lei=sample.lei, host=sample.host, ahead_s=round(sample.ts - now, 1))
            return
        mqtt.counters.add("dropped_stale")
        held_back = stale_lines.due()
        if held_back is not None:
            behind_s = view.sampled_at(sample.lei, sample.host) - sample.ts
            log.warning(
                "sample_not_newer_than_its_hosts_last",
                lei=sample.lei,
                host=sample.host,
                behind_s=round(behind_s, 3),
                held_back=held_back,
            )

    def on_samples(batch: list[Incoming]) -> None:
        now = time.time()
        taken = []
        for incoming in batch:
            sample = mqtt.decode_or_drop(HostSample, incoming)
            if sample is None:
                continue
            if topics.host_sample(sample.lei, sample.host) != incoming.topic:
                # A peer's bridge may write its own LEI's topics only, a collector its own host's
                # (ACL): a sample must not pose as another host's.
                mqtt.drop(incoming, DecodeError("schema", "the sample's lei or host does not match its topic"))
                continue
            if view.observe(sample, now):
                taken.append(sample)
            else:
                refused(sample, now)
        if then is not None and taken:
            then(taken)

    mqtt.subscribe_batch(topics.all_host_samples(), on_samples, qos=1)


def follow_schedules(mqtt: MqttClient, view: FederationView, then: Callable[[Schedule], None] | None = None) -> None:
    """Feed ``view`` the schedule of every LEI the broker carries (before ``mqtt.start()``);
    ``then`` gets each schedule that changed where a task runs."""

    def on_schedule(incoming: Incoming) -> None:
        schedule = mqtt.decode_or_drop(Schedule, incoming)
        if schedule is None:
            return
        if topics.schedule(schedule.lei) != incoming.topic:
            # A peer's bridge may write its own LEI's topics only (ACL): one LEI's schedule must
            # not pose as another's.
            mqtt.drop(incoming, DecodeError("schema", "the schedule's lei does not match its topic"))
            return
        if mqtt.dropped_if_ahead(incoming, schedule.ts):  # kept, it would hide its LEI's real schedules
            return
        if view.observe_schedule(schedule, retained=incoming.retain) and then is not None:
            then(schedule)

    mqtt.subscribe(topics.all_schedules(), on_schedule, qos=1)


def view_from(settings: CoSimSettings) -> FederationView:
    """The view a service keeps, with the links of its settings."""
    return FederationView(
        settings.stale_intervals,
        settings.background_samples,
        lan=Link(settings.lan_latency_s, settings.lan_bandwidth_bps),
        wan=Link(settings.wan_latency_s, settings.wan_bandwidth_bps),
        disk_bps=settings.disk_bandwidth_bps,
        net_bps=settings.lan_bandwidth_bps,  # a host's network interface is its LAN link
        move_gain=settings.move_gain,
    )


def co_simulator(settings: CoSimSettings, snapshot: Snapshot, longest_migration_s: float = 0.0) -> CoSimulator:
    """The co-simulator of the federation as a snapshot shows it (hosts come and go between snapshots)."""
    metrics = snapshot.background.shape[1]
    params = TwinParams(snapshot.background, np.full(metrics, settings.move_gain), np.full(metrics, settings.relax))
    return CoSimulator(
        snapshot.federation,
        params,
        FitnessWeights(settings.alpha, settings.beta, settings.delta1, settings.delta2),
        ServiceModel(settings.service_time_s, slo_factor=settings.slo_factor, overload=settings.overload),
        longest_migration_s=longest_migration_s,
    )


def _units(records: list[HostRecord], in_bytes: bool) -> np.ndarray:
    """(m, n) ones, with each host's memory in bytes in the ram column ``in_bytes`` (:attr:`Snapshot.units`)."""
    units = np.ones((len(records), len(HOST_METRICS)))
    if in_bytes:
        units[:, RAM] = [rec.ram_capacity for rec in records]
    return units


def _without_departed(
    records: list[HostRecord], placement: dict[str, int], background: np.ndarray, units: np.ndarray, in_bytes: bool
) -> np.ndarray:
    """Each host's newest usage (m, n), in the twin's ``units``, without the tasks a newer sample
    shows running elsewhere.

    When a moved task's new host reports it before its old host samples again, the old host's
    newest sample still carries the task's load; forecasting and planning from it would see the
    task on both hosts for an interval. The task's demand there, as ``twin.task_demand`` splits
    it (its measured CPU, its share of the host's excess in the other metrics), leaves that host.
    """
    usage = np.stack([rec.usage for rec in records]) * units  # (m, n)
    for index, rec in enumerate(records):
        departed = [placement[task] != index for task in rec.tasks]
        if not any(departed):
            continue
        # Each task's demand on this host as its own sample saw it: the host alone, all its tasks.
        measured = np.stack([_measured_row(seen.cpu, seen.memory(in_bytes)) for seen in rec.tasks.values()])
        alone = np.zeros(len(rec.tasks), dtype=int)
        demand = task_demand(usage[index : index + 1], alone, background[index : index + 1], measured)
        usage[index] = np.maximum(usage[index] - demand[departed].sum(axis=0), 0.0)
    return usage


def _measured_row(cpu: float, memory: float) -> np.ndarray:
    """A task's measured demand (n,): its CPU share of its host and its memory (in bytes, or as a
    share of its host's; NaN when unknown); NaN where only the host's excess, shared, is known.

    Memory measured matters: the excess over the host's background (its lowest usage of the
    last samples) is about 0 for a task that ran through all of them, and a move would carry
    none of its memory, so no move could be forecast to overload a host's memory."""
    row = np.full(len(HOST_METRICS), np.nan)
    row[CPU], row[RAM] = cpu, memory
    return row
