"""A federation's trace as the DRAGON discriminator sees it: host windows, tasks, schedule, graph.

The per-host view (:class:`~dragon.detector.federation_model.SingleHostDiscriminator`) judges
each host's window alone. Here the same weights judge all m hosts of a federation at once,
with the schedule placing tasks on hosts and the graph joining workers to their brokers and
brokers to each other (eq. 6-10): a host whose load follows the tasks it was given is normal,
the same rise on a host whose placement did not change is not.

- :class:`FederationTrace`: raw host metrics (T, m, n), schedule (T, p, m), LEIs and brokers.
  :func:`load_federation_dir` reads the rpi16 traces of ``../shared/data`` (``time_series.npy``
  [T, n*m], ``schedule_series.npy`` [T, p, m]).
- :class:`FederationWindows`: the scaled windows of a trace as a :class:`~dragon.detector.gon.
  WindowSet`, so Algorithm 1 (``gon.train_gon``) trains on whole federations unchanged.
- :func:`federation_fault_scores`: eq. 13 for every host of every step.

Which window meets which schedule: the trace's row t is what the hosts did during interval t
under placement S_t, known when the interval starts. A real window W_t is judged with S_t.
The score of step t generates Ŵ_t from W_{t-1} with S_t, so the ascent asks what the hosts'
windows should look like under the placement now in force, and the score is how far the true
W_t rises above that (eq. 12-13: a prediction under the new schedule).

Task windows: the rpi16 traces carry no per-task usage, only placements, so task windows are
zeros and a task is known by where it runs; the schedule then tells each host how many tasks
it has and which hosts share them (``FederationDiscriminator.encode``). A service that
collects per-task usage fills them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dragon.detector.federation_model import (
    FederationDiscriminator,
    FederationGraph,
    HostsInContext,
    SingleHostDiscriminator,
)
from dragon.detector.gon import SCORE_BATCH, GonConfig, fault_scores, make_windows
from dragon.detector.train import DatasetError, load_npy

# Host windows per minibatch when a sample is a whole federation: the per-host model's minibatch.
HOST_WINDOWS_PER_BATCH = GonConfig.__dataclass_fields__["batch_size"].default
# The rpi16 traces' metrics per host, in column order (data README).
RPI16_FEATURES: tuple[str, ...] = ("cpu", "ram", "disk")


@dataclass(frozen=True, eq=False)  # numpy fields
class FederationTrace:
    """Raw metrics of m hosts over T intervals, the schedule of p task slots, and the LEIs.

    ``schedule[t, j]`` is the one-hot host of task slot j during interval t, or all zeros when
    the slot is empty. ``lei_of_host[i]`` names host i's LEI; ``brokers`` are the indices of the
    LEIs' broker hosts, one per LEI.
    """

    hosts: np.ndarray  # (T, m, n) raw metrics
    schedule: np.ndarray  # (T, p, m) one-hot task slot -> host
    lei_of_host: tuple[str, ...]
    brokers: tuple[int, ...]
    feature_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.hosts.ndim != 3:  # T may be 0: no history yet
            raise ValueError(f"hosts must be a (T, m, n) array, got {self.hosts.shape}")
        t, m, n = self.hosts.shape
        if self.schedule.ndim != 3 or self.schedule.shape[0] != t or self.schedule.shape[2] != m:
            raise ValueError(f"schedule must be ({t}, p, {m}) for hosts {self.hosts.shape}, got {self.schedule.shape}")
        if not np.isin(self.schedule, (0, 1)).all() or (self.schedule.sum(axis=2) > 1).any():
            raise ValueError("schedule rows must be one-hot (a task slot on one host) or all zeros (empty)")
        if len(self.lei_of_host) != m or len(self.feature_names) != n:
            raise ValueError(f"{m} hosts and {n} features need as many LEI and feature names")
        if not np.isfinite(self.hosts).all():
            raise ValueError("host metrics contain NaN or infinite values")
        self.graph  # noqa: B018 - the LEIs and brokers must make a graph; FederationGraph says why not

    @property
    def steps(self) -> int:
        return int(self.hosts.shape[0])

    @property
    def graph(self) -> FederationGraph:
        return FederationGraph.build(self.lei_of_host, self.brokers)

    def part(self, start: int, stop: int | None = None) -> FederationTrace:
        """Intervals ``start:stop`` of this trace."""
        return replace(self, hosts=self.hosts[start:stop], schedule=self.schedule[start:stop])

    def with_hosts(self, hosts: np.ndarray) -> FederationTrace:
        """The same federation and schedule with other host metrics (e.g. with injected faults)."""
        return replace(self, hosts=np.asarray(hosts, dtype=np.float64))

    def then(self, later: FederationTrace) -> FederationTrace:
        """This trace followed by ``later``, of the same federation."""
        hosts, schedule = np.concatenate([self.hosts, later.hosts]), np.concatenate([self.schedule, later.schedule])
        return replace(self, hosts=hosts, schedule=schedule)

    def started(self) -> FederationTrace:
        """From the first interval with a task placed: a trace may begin with an empty federation."""
        busy = np.flatnonzero(self.schedule.any(axis=(1, 2)))
        if len(busy) == 0:
            raise ValueError("no interval of the trace has a task placed")
        return self.part(int(busy[0]))


def equal_leis(hosts: int, leis: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """``leis`` LEIs of consecutive hosts, the first of each its broker (the paper's configuration 2)."""
    if leis < 1 or hosts % leis:
        raise ValueError(f"{hosts} hosts cannot be split into {leis} LEIs of equal size")
    size = hosts // leis
    return tuple(f"lei{i // size}" for i in range(hosts)), tuple(range(0, hosts, size))


def load_federation_dir(path: str | Path, leis: int = 4) -> FederationTrace:
    """Read an rpi16-shaped folder: ``time_series.npy`` [T, n*m] and ``schedule_series.npy`` [T, p, m].

    Host i's metrics are columns n*i .. n*i+n-1 (cpu, ram, disk for n = 3). The hosts are split
    into ``leis`` LEIs of consecutive hosts, each led by its first host. Any problem raises
    :class:`DatasetError` naming the file.
    """
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    series, schedule = load_npy(root / "time_series.npy", ndim=2), load_npy(root / "schedule_series.npy", ndim=3)
    steps, m = schedule.shape[0], schedule.shape[2]
    if series.shape[0] != steps:
        raise DatasetError(f"{root}: time_series.npy has {series.shape[0]} steps, schedule_series.npy {steps}")
    if series.shape[1] % m:
        raise DatasetError(f"{root / 'time_series.npy'}: {series.shape[1]} columns are not n metrics for {m} hosts")
    n = series.shape[1] // m
    names = RPI16_FEATURES if n == len(RPI16_FEATURES) else tuple(f"metric{j}" for j in range(n))
    try:
        lei_of_host, brokers = equal_leis(m, leis)
        return FederationTrace(series.reshape(steps, m, n), schedule, lei_of_host, brokers, names)
    except ValueError as exc:
        raise DatasetError(f"{root}: {exc}") from exc


@dataclass(frozen=True, eq=False)
class FederationWindows:
    """Scaled windows of a federation, one sample per interval: all hosts, their tasks, the schedule.

    A :class:`~dragon.detector.gon.WindowSet`: ``batch`` binds D (the ``federation`` of a
    ``dragon`` model) to the batch's tasks and schedule, so Algorithm 1 and eq. 13 run on it
    as on plain windows, with one logit and one score per host.
    """

    hosts: Tensor  # (N, m, k, n) W_t of every host
    tasks: Tensor  # (N, p, k, n) every task slot's window (zeros when unknown)
    schedule: Tensor  # (N, p, m) S_t
    graph: FederationGraph

    @classmethod
    def from_scaled(
        cls,
        hosts: np.ndarray,
        schedule: np.ndarray,
        graph: FederationGraph,
        k: int,
        tasks: np.ndarray | None = None,
    ) -> FederationWindows:
        """Windows of scaled host metrics (T, m, n) with replication padding (eq. 1), and their schedule.

        ``tasks`` (T, p, n) are the task slots' scaled usage per interval, windowed the same way;
        without them task windows are zeros (a task is then known by where it runs).
        """
        windows = torch.from_numpy(_windows_per_node(hosts, k))  # (T, m, k, n)
        steps, p = schedule.shape[:2]
        if tasks is None:
            task_windows = windows.new_zeros((steps, p, k, hosts.shape[2]))  # (T, p, k, n)
        else:
            task_windows = torch.from_numpy(_windows_per_node(tasks, k)) if p else windows[:, :0]
        return cls(windows, task_windows, torch.as_tensor(schedule, dtype=torch.float32), graph)

    def __len__(self) -> int:
        return int(self.hosts.shape[0])

    def batch(self, model: nn.Module, index: Tensor) -> tuple[HostsInContext, Tensor]:
        view = HostsInContext(federation_of(model), self.tasks[index], self.schedule[index], self.graph)
        return view, self.hosts[index]  # (B, m, k, n)


def _windows_per_node(rows: np.ndarray, k: int) -> np.ndarray:
    """(T, nodes, n) rows -> (T, nodes, k, n) windows of each node's series (eq. 1), float32."""
    return np.stack([make_windows(rows[:, i], k) for i in range(rows.shape[1])], axis=1)


def batch_size_for(hosts: int) -> int:
    """Federations per minibatch: as many host windows as the per-host model's minibatch (64).

    With 64 federations of 16 hosts per step, the 141 training intervals of an rpi16 trace gave
    3 steps per epoch and D never left 0.5 (validation loss 1.386 = 2 ln 2) within 60 epochs;
    with 4 it did (0.845).
    """
    return max(1, round(HOST_WINDOWS_PER_BATCH / hosts))


def federation_of(model: nn.Module) -> FederationDiscriminator:
    """The D(G, W, S) inside a model built by ``gon.build_discriminator``; only ``dragon`` has one."""
    if not isinstance(model, SingleHostDiscriminator):
        raise ValueError("federation data need GonConfig.architecture 'dragon' (one D over hosts, tasks and schedule)")
    return model.federation


@torch.no_grad()
def federation_fault_scores(
    model: nn.Module, cfg: GonConfig, data: FederationWindows, start: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 13 for every host of steps ``start``.. of ``data``: scores (T, m), contributions (T, m, n).

    Step t compares W_t with Ŵ_t generated from W_{t-1} under S_t (step 0 with itself), see the
    module docstring. Only the steps from ``start`` are generated, so history costs nothing.
    """
    model.eval()
    federation = federation_of(model)
    scores, contributions = [], []
    for first in range(start, len(data), SCORE_BATCH):
        now = torch.arange(first, min(first + SCORE_BATCH, len(data)))
        before = (now - 1).clamp_min(0)
        view = HostsInContext(federation, data.tasks[before], data.schedule[now], data.graph)
        arrived = HostsInContext(federation, data.tasks[now], data.schedule[now], data.graph)
        s, c = fault_scores(view, data.hosts[before], data.hosts[now], cfg, arrived)  # (B, m), (B, m, n)
        scores.append(s)
        contributions.append(c)
    return torch.cat(scores).double().numpy(), torch.cat(contributions).double().numpy()


def host_series(trace: FederationTrace) -> list[np.ndarray]:
    """Each host's (T, n) series, for models that see one host at a time."""
    return [trace.hosts[:, i] for i in range(trace.hosts.shape[1])]


def schedule_changed(schedule: np.ndarray, previous: Sequence[np.ndarray] | np.ndarray | None = None) -> np.ndarray:
    """(T, m) True where a host's set of tasks differs from the interval before (row 0: from ``previous``)."""
    before = np.concatenate([schedule[:1] if previous is None else np.asarray(previous)[-1:], schedule[:-1]])
    return (before != schedule).any(axis=1)  # (T, m)
