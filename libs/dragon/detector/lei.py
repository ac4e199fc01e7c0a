"""An LEI judged as one federation: every host's window, the tasks, the schedule and the graph.

A model with ``GonConfig.scope == "lei"`` judges all hosts of the LEI at once with D(G, W, S)
(eq. 6-10) instead of each host's window alone: a host whose load follows the tasks it runs is
normal, the same rise on a host whose tasks did not change is not. The detector stores every
sample with the tasks its host ran (:class:`~dragon.store.StoredSample`); from those this module
builds

- :func:`steps_to_judge`: for the samples a replica must judge, the LEI as it stood at each of
  their steps (:class:`LeiStep`), which :meth:`~dragon.detector.scorer.Scorer.score_steps` scores;
- :func:`forecast_steps`: the same for the simulator's forecasts (predicted mode): the LEI at the
  step a forecast starts from, with the forecast as its host's next window;
- :func:`lei_trace`: the LEI's recorded history as a :class:`FederationTrace` plus each task
  slot's usage, which :func:`train_from_lei` learns a model from.

Choices (docs/design.md, "Scoring an LEI jointly"):

- A step is the samples of the LEI's hosts taken within half a sample interval of each other:
  one collector samples all its hosts in one tick with one time stamp, collectors on separate
  machines are not synchronised.
- Every host whose newest sample at a step is at most ``STALE_INTERVALS`` intervals old is part
  of it; a host that stopped reporting is not. A host whose sample for the step has not arrived
  yet is context with its window as of its newest sample; its own sample is judged when it
  arrives, in the LEI as it then stands.
- The tasks are the ones the hosts' samples at the step name, and S_t places each on the host
  that reported it (during a move a task may show on two hosts: the larger cpu share wins). A
  task's window is its cpu share over its host's window, in the cpu column; the other columns
  are 0 in scaled units, since a sample gives a task's RAM in bytes, not as a share of the host.
- The graph is the LEI: every host a worker of the broker host (``DRAGON_DETECTOR_BROKER_HOST``;
  when that is not a sampled host, the first host in name order stands in for it). Samples of
  other LEIs do not reach this detector, so there are no broker-to-broker edges here.

Shapes: ``m`` hosts, ``p`` tasks, ``k`` window length, ``n`` features, ``T`` steps.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import structlog
import torch
from torch import Tensor, nn

from dragon.detector.checkpoint import Checkpoint
from dragon.detector.federation_data import (
    FederationTrace,
    FederationWindows,
    batch_size_for,
    federation_fault_scores,
    federation_of,
)
from dragon.detector.federation_model import FederationGraph, HostsInContext
from dragon.detector.gon import GonConfig, train_gon
from dragon.detector.scaling import MinMaxScaler
from dragon.detector.train import calibrated_checkpoint, training_meta
from dragon.messages.schemas import ForecastSample, HostSample
from dragon.store import StoredSample, padded_window, sampling_interval

log = structlog.get_logger(__name__)
ItemT = TypeVar("ItemT", HostSample, ForecastSample)

# A host whose newest sample is older than this many intervals is not part of the LEI now.
STALE_INTERVALS = 3.0
# The metric a task's usage fills in its window (a sample reports a task's cpu share of its host).
TASK_METRIC = "cpu"


@dataclass(frozen=True, eq=False)  # numpy fields
class LeiStep:
    """The LEI at one step, as D(G, W, S) judges it, and which of its hosts' samples (or forecasts) to judge."""

    hosts: tuple[str, ...]  # the m hosts of the LEI at this step, in name order
    broker: int  # index of the broker host (the graph's centre)
    prev: np.ndarray  # (m, k, n) raw W_{t-1} of every host
    next: np.ndarray  # (m, k, n) raw W_t of every host
    tasks: tuple[str, ...]  # the p tasks running at this step
    task_prev: np.ndarray  # (p, k) each task's cpu share over its host's W_{t-1}
    task_next: np.ndarray  # (p, k) and over its host's W_t
    schedule: np.ndarray  # (p, m) S_t: one-hot task -> host
    # (host index, what to judge): its sample, or a forecast (forecast_steps); a host at most once
    judged: tuple[tuple[int, HostSample | ForecastSample], ...]

    @property
    def shape_key(self) -> tuple[int, int, int]:
        """Steps with equal keys have the same graph and can be judged in one batch."""
        return len(self.hosts), len(self.tasks), self.broker


@dataclass(frozen=True, eq=False)  # tensor fields
class LeiBatch:
    """Steps of one shape as D(G, W, S) takes them: scaled windows, task windows, schedule, graph."""

    prev: Tensor  # (B, m, k, n) W_{t-1} of every host
    next: Tensor  # (B, m, k, n) W_t
    tasks_prev: Tensor  # (B, p, k, n) task windows over W_{t-1}
    tasks_next: Tensor  # (B, p, k, n) task windows over W_t
    schedule: Tensor  # (B, p, m) S_t
    graph: FederationGraph

    @classmethod
    def of(cls, steps: Sequence[LeiStep], scaler: MinMaxScaler, feature_names: Sequence[str]) -> LeiBatch:
        """``steps`` must share one :attr:`LeiStep.shape_key` (:func:`by_shape`)."""
        if len({step.shape_key for step in steps}) != 1:
            raise ValueError("a batch takes LEI steps of one shape (hosts, tasks, broker)")

        def scaled(windows: list[np.ndarray]) -> Tensor:
            return torch.as_tensor(scaler.transform(np.stack(windows)), dtype=torch.float32)

        def tasks(cpu: list[np.ndarray]) -> Tensor:
            return torch.from_numpy(task_rows(np.stack(cpu), scaler, feature_names))

        hosts, broker = len(steps[0].hosts), steps[0].broker
        return cls(
            prev=scaled([step.prev for step in steps]),
            next=scaled([step.next for step in steps]),
            tasks_prev=tasks([step.task_prev for step in steps]),
            tasks_next=tasks([step.task_next for step in steps]),
            schedule=torch.from_numpy(np.stack([step.schedule for step in steps])),
            graph=FederationGraph.build(["lei"] * hosts, [broker]),
        )

    def __len__(self) -> int:
        return int(self.next.shape[0])

    def judging(self, model: nn.Module) -> HostsInContext:
        """D as eq. 13 uses it for Ŵ_t generated from W_{t-1}: the tasks' previous windows, S_t."""
        return HostsInContext(federation_of(model), self.tasks_prev, self.schedule, self.graph)

    def arrived(self, model: nn.Module) -> HostsInContext:
        """D as it judges the true windows W_t themselves: the tasks' windows over W_t, S_t."""
        return HostsInContext(federation_of(model), self.tasks_next, self.schedule, self.graph)

    def real(self) -> FederationWindows:
        """The true windows W_t with their own context, as Algorithm 1 (and eq. 19) learns from them."""
        return FederationWindows(self.next, self.tasks_next, self.schedule, self.graph)


def by_shape(steps: Sequence[LeiStep]) -> list[list[int]]:
    """Indices of ``steps`` grouped by :attr:`LeiStep.shape_key`, each group in order."""
    groups: dict[tuple[int, int, int], list[int]] = {}
    for i, step in enumerate(steps):
        groups.setdefault(step.shape_key, []).append(i)
    return list(groups.values())


def broker_index(hosts: Sequence[str], broker_host: str) -> int:
    """Index of the broker host among ``hosts``; the first host stands in when it is not one of them."""
    return hosts.index(broker_host) if broker_host in hosts else 0


def task_rows(task_cpu: np.ndarray, scaler: MinMaxScaler, feature_names: Sequence[str]) -> np.ndarray:
    """Scaled task rows (..., n) from cpu shares (...): the cpu column scaled like a host's, 0 elsewhere."""
    column = feature_names.index(TASK_METRIC)
    raw = np.zeros((*task_cpu.shape, len(feature_names)))
    raw[..., column] = task_cpu
    scaled = np.zeros_like(raw)
    scaled[..., column] = scaler.transform(raw)[..., column]
    return scaled.astype(np.float32)


# --- judging -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Due:
    """Something to judge at a step: a host's sample, or a forecast that starts from one."""

    host: str
    ts: float  # the stored sample it is, or the one it starts from
    interval_s: float
    item: HostSample | ForecastSample


def _due(item: HostSample | ForecastSample) -> _Due:
    if isinstance(item, ForecastSample):
        return _Due(item.host, item.based_on_ts, item.for_ts - item.based_on_ts, item)
    return _Due(item.host, item.ts, item.interval_s, item)


def steps_to_judge(
    samples: Sequence[HostSample],
    history: Mapping[str, Sequence[StoredSample]],
    k: int,
    broker_host: str = "",
) -> list[LeiStep]:
    """The LEI at the step of each sample to judge, oldest step first.

    ``history`` holds every host's stored samples (oldest first), reaching at least k + 1
    samples before the oldest sample to judge. A sample missing from its host's history (trimmed
    away long ago) is not judged.
    """
    steps = [_step(group, history, k, broker_host) for group in _by_step([_due(s) for s in samples])]
    return [step for step in steps if step.judged]


def forecast_steps(
    forecasts: Sequence[ForecastSample],
    history: Mapping[str, Sequence[StoredSample]],
    k: int,
    broker_host: str = "",
) -> list[LeiStep]:
    """The LEI at the step each forecast starts from, the forecast in its host's W_{t+1} (predicted mode).

    Alg. 2 lines 4-6 for a whole LEI: Ŵ_{t+1} is generated from every host's W_t (their
    windows up to the step's samples) with the tasks' windows over W_t and the schedule the
    forecasts give: on a forecast's host S holds exactly the tasks the forecast names (the
    move the simulator applied: a task that left is an empty slot unless another forecast of
    the step places it), elsewhere the tasks stay where the samples show them. Generation
    (from W_t, the default) does not read W_{t+1}, so the forecasts of one step share one
    step; each host's own placement is the same as if its forecast were judged alone, and only
    where a task that left it went (context) can differ. The hosts without a forecast are
    context (their W_{t+1} is their W_t, and their score is not used). A task only a forecast
    names has no measured usage to make a window of and is left out of S; its demand is in
    the forecast's metrics. A forecast whose sample is not in ``history`` is not judged. Each
    step's ``judged`` holds the forecasts.
    """
    steps = [_forecast_step(group, history, k, broker_host) for group in _by_step([_due(f) for f in forecasts])]
    return [step for step in steps if step.judged]


def _by_step(due: Sequence[_Due]) -> list[list[_Due]]:
    """Items grouped into steps: taken within half an interval of the step's first, one per host."""
    groups: list[list[_Due]] = []
    hosts: set[str] = set()  # hosts of the newest group: a set, as a group may hold hundreds
    for item in sorted(due, key=lambda d: (d.ts, d.host)):
        group = groups[-1] if groups else None
        if group is None or item.ts - group[0].ts > group[0].interval_s / 2 or item.host in hosts:
            groups.append([item])
            hosts = {item.host}
        else:
            group.append(item)
            hosts.add(item.host)
    return groups


def read_together(items: Sequence[ItemT], k: int) -> list[list[ItemT]]:
    """``items`` in runs of time that one history read each serves, oldest first.

    :func:`history_needed` reads every host's samples across the whole time a batch spans. A run
    ends where the next item is more than k + 2 of its intervals later: reading across that gap
    would read more per host than a second read does. Without this, one host whose clock runs an
    hour behind the others made every batch read an hour of every host's samples.
    """
    runs: list[list[ItemT]] = []
    last: _Due | None = None
    for item, due in sorted(((item, _due(item)) for item in items), key=lambda pair: pair[1].ts):
        if last is None or due.ts - last.ts > (k + 2) * min(due.interval_s, last.interval_s):
            runs.append([])
        runs[-1].append(item)
        last = due
    return runs


def history_needed(items: Sequence[HostSample | ForecastSample], k: int) -> tuple[float, int]:
    """How much stored history judging ``items`` needs: (up to which time, samples per host).

    Each host's newest samples up to the batch's last step: k + 1 before its oldest step make
    that step's windows, and then about one per step the batch spans. A batch can span steps in
    two ways, so both count: as many items of one host as it holds (a backlog or flood, where
    samples come faster than the interval) and the batch's time span in intervals. A forecast
    counts at the sample it starts from.
    """
    due = [_due(item) for item in items]
    until = max(d.ts + d.interval_s / 2 for d in due)
    per_host: dict[str, int] = {}
    for d in due:
        per_host[d.host] = per_host.get(d.host, 0) + 1
    interval = min(d.interval_s for d in due)
    span = math.ceil((max(d.ts for d in due) - min(d.ts for d in due)) / interval)
    return until, k + 2 + max(per_host.values()) + span


def _members(
    group: list[_Due], history: Mapping[str, Sequence[StoredSample]]
) -> tuple[list[str], list[int], list[tuple[int, _Due]]]:
    """The LEI's hosts at a step, each one's newest sample then, and the group's items with their host."""
    interval = group[0].interval_s
    until = max(d.ts for d in group) + interval / 2
    due = {d.host: d for d in group}
    hosts, index, judged = [], [], []
    for host in sorted(history):
        stamps = [s.ts for s in history[host]]
        item = due.get(host)
        if item is not None and item.ts in stamps:
            i = stamps.index(item.ts)
            judged.append((len(hosts), item))
        else:
            i = bisect_right(stamps, until) - 1  # the host's newest sample at this step
            if i < 0 or until - stamps[i] > (STALE_INTERVALS + 0.5) * interval:
                continue
        hosts.append(host)
        index.append(i)
    return hosts, index, judged


def _step(group: list[_Due], history: Mapping[str, Sequence[StoredSample]], k: int, broker: str) -> LeiStep:
    hosts, index, judged = _members(group, history)
    rows = [[s.vector for s in history[h]] for h in hosts]
    prev = np.asarray([padded_window(r[: max(i, 1)], k) for r, i in zip(rows, index, strict=True)])
    nxt = np.asarray([padded_window(r[: i + 1], k) for r, i in zip(rows, index, strict=True)])
    tasks, task_prev, task_next, schedule = _placement([history[h] for h in hosts], index, k)
    on_hosts = tuple((h, d.item) for h, d in judged)
    broker_at = broker_index(hosts, broker)
    return LeiStep(tuple(hosts), broker_at, prev, nxt, tasks, task_prev, task_next, schedule, on_hosts)


def _forecast_step(group: list[_Due], history: Mapping[str, Sequence[StoredSample]], k: int, broker: str) -> LeiStep:
    hosts, index, judged = _members(group, history)
    rows = [[s.vector for s in history[h]] for h in hosts]
    now = np.asarray([padded_window(r[: i + 1], k) for r, i in zip(rows, index, strict=True)])  # W_t
    ahead = now.copy()  # W_{t+1}: the forecast's row after W_t where there is one
    for h, d in judged:
        ahead[h] = padded_window([*rows[h][: index[h] + 1], d.item.metrics.vector()], k)
    tasks, _, task_now, schedule = _placement([history[h] for h in hosts], index, k)
    for h, d in judged:
        named = set(d.item.tasks)
        for j, task in enumerate(tasks):
            if task in named:
                schedule[j] = 0.0
                schedule[j, h] = 1.0
            elif schedule[j, h]:
                schedule[j, h] = 0.0  # moved away: an empty slot, unless another forecast names it
    on_hosts = tuple((h, d.item) for h, d in judged)
    broker_at = broker_index(hosts, broker)
    return LeiStep(tuple(hosts), broker_at, now, ahead, tasks, task_now, task_now, schedule, on_hosts)


def _placement(
    stored: Sequence[Sequence[StoredSample]], index: Sequence[int], k: int
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray]:
    """The tasks at a step, their cpu share over their host's previous and current window (p, k), S_t (p, m)."""
    where: dict[str, tuple[float, int]] = {}  # task -> (cpu share now, host)
    for host, (samples, i) in enumerate(zip(stored, index, strict=True)):
        for task, cpu in samples[i].tasks.items():
            if task not in where or cpu > where[task][0]:
                where[task] = (cpu, host)
    tasks = tuple(sorted(where))
    schedule = np.zeros((len(tasks), len(stored)), dtype=np.float32)
    usage_prev = np.zeros((len(tasks), k), dtype=np.float32)
    usage_next = np.zeros((len(tasks), k), dtype=np.float32)
    for j, task in enumerate(tasks):
        host, i = where[task][1], index[where[task][1]]
        schedule[j, host] = 1.0
        shares = [[s.tasks.get(task, 0.0)] for s in stored[host][: i + 1]]
        usage_prev[j] = np.ravel(padded_window(shares[: max(i, 1)], k))
        usage_next[j] = np.ravel(padded_window(shares, k))
    return tasks, usage_prev, usage_next, schedule


# --- learning ------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class LeiTrace:
    """An LEI's recorded normal operation: the federation trace and each task slot's cpu share."""

    trace: FederationTrace  # hosts (T, m, n), schedule (T, p, m), one LEI led by its broker
    task_cpu: np.ndarray  # (T, p) cpu share of each task slot, 0 where it did not run
    tasks: tuple[str, ...]  # the p task slots


def lei_trace(
    history: Mapping[str, Sequence[StoredSample]],
    feature_names: Sequence[str],
    broker_host: str = "",
    lei: str = "lei",
) -> LeiTrace:
    """The LEI's recorded steps as one trace, each host as it stood at each step (as when judging).

    The steps are the sample times of the broker host (the first host when it has none). At
    each, every other host takes part with its newest sample up to half an interval later (the
    median sampling interval), as a context host does when a sample is judged; a step at which
    some host has no sample, or only one older than ``STALE_INTERVALS``, is left out. So samples
    of unsynchronised collectors align as well as those of one collector's tick. Every task seen
    is a slot; a slot is empty (all zeros in S) while its task does not run. Raises
    ``ValueError`` when fewer than two steps remain.
    """
    hosts = sorted(history)
    if not hosts:
        raise ValueError("no host has samples")
    reference = hosts[broker_index(hosts, broker_host)]
    interval = sampling_interval([s.ts for s in history[reference]]) or 0.0
    # A host that stopped reporting (its samples linger in Redis) is not part of the LEI now:
    # judging leaves it out once stale, and so does learning, or no step would be complete.
    newest = history[reference][-1].ts
    gone = [h for h in hosts if newest - history[h][-1].ts > (STALE_INTERVALS + 0.5) * interval]
    if gone:
        log.warning("lei_trace_hosts_left_out", hosts=gone, reason="no recent sample")
        hosts = [h for h in hosts if h not in gone]
    stamps = {host: [s.ts for s in history[host]] for host in hosts}
    rows, placements = [], []
    for ts in stamps[reference]:
        until = ts + interval / 2
        at_step = []
        for host in hosts:
            i = bisect_right(stamps[host], until) - 1
            if i < 0 or until - stamps[host][i] > (STALE_INTERVALS + 0.5) * interval:
                break
            at_step.append(history[host][i])
        else:
            rows.append([sample.vector for sample in at_step])
            placements.append([sample.tasks for sample in at_step])
    if len(rows) < 2:
        raise ValueError(f"{len(rows)} step(s) with a fresh sample of every host; need at least 2")
    tasks = tuple(sorted({task for step in placements for on_host in step for task in on_host}))
    schedule = np.zeros((len(rows), len(tasks), len(hosts)))
    task_cpu = np.zeros((len(rows), len(tasks)))
    for t, step in enumerate(placements):
        for j, task in enumerate(tasks):
            shares = [(on_host.get(task, -1.0), h) for h, on_host in enumerate(step)]
            cpu, host = max(shares)
            if cpu >= 0:
                schedule[t, j, host], task_cpu[t, j] = 1.0, cpu
    trace = FederationTrace(
        hosts=np.asarray(rows, dtype=np.float64),
        schedule=schedule,
        lei_of_host=(lei,) * len(hosts),
        brokers=(broker_index(hosts, broker_host),),
        feature_names=tuple(feature_names),
    )
    return LeiTrace(trace, task_cpu, tasks)


def train_from_lei(
    recorded: LeiTrace,
    cfg: GonConfig,
    *,
    min_span: Sequence[float],
    pot_q: float,
    pot_level: float,
    progress: bool = False,
    source: str = "",
) -> Checkpoint:
    """Train D(G, W, S) on an LEI's normal operation (Algorithm 1 over whole LEI steps).

    One scaler serves every host. POT is fitted on the pooled scores of every host at every step
    (a host's own scores would be a few hundred, too few for a tail). ``cfg.scope`` must be
    ``lei``; its minibatch is set to hold about as many host windows as the per-host model's.
    """
    if cfg.scope != "lei":
        raise ValueError(f"train_from_lei needs GonConfig.scope 'lei', got {cfg.scope!r}")
    trace = recorded.trace
    m, n = trace.hosts.shape[1:]
    cfg = GonConfig.from_dict(cfg.to_dict() | {"batch_size": batch_size_for(m)})
    started = time.perf_counter()
    scaler = MinMaxScaler.fit(trace.hosts.reshape(-1, n), min_span)
    scaled = scaler.transform(trace.hosts).astype(np.float32)  # (T, m, n)
    tasks = task_rows(recorded.task_cpu, scaler, trace.feature_names)  # (T, p, n)
    windows = FederationWindows.from_scaled(scaled, trace.schedule, trace.graph, cfg.window, tasks)
    model, history = train_gon(windows, cfg, progress=progress)
    scores = federation_fault_scores(model, cfg, windows)[0].ravel()  # (T * m,) in time order
    seconds = time.perf_counter() - started
    bounds = scaler.to_dict()
    checkpoint = calibrated_checkpoint(
        model,
        cfg,
        trace.feature_names,
        bounds["lo"],
        bounds["hi"],
        scores,
        pot_q=pot_q,
        pot_level=pot_level,
        meta=training_meta(source, len(scores), seconds, history, scores) | {"hosts": m, "tasks": len(recorded.tasks)},
    )
    log.info(
        "lei_detector_trained",
        model_id=checkpoint.model_id,
        steps=trace.steps,
        hosts=m,
        tasks=len(recorded.tasks),
        seconds=round(seconds, 2),
        threshold=checkpoint.pot_state().z_q,
    )
    return checkpoint
