"""Probes: read one host's usage as :class:`HostMetrics` plus its tasks' usage.

A probe reads cumulative counters (CPU time, disk and network bytes) and turns them into
rates by difference with the previous read, divided by the elapsed time of the caller's
clock; the first read only primes the counters and reports rates of 0.

- :class:`PsutilProbe` reads a whole real machine (a Raspberry Pi, a VM).
- :class:`CgroupProbe` reads an emulated host: one parent cgroup plus the network
  counters of the containers that run in it.

Both report per-task usage when given a Docker client: DRAGON task containers are the
running containers labelled ``dragon.task=true`` and ``dragon.host=<host>``; their CPU and
memory are read from their own cgroup files (microseconds), not ``container.stats()``
(about 1 s per call on the development machine). Fault hog containers
(``dragon.fault=true``) are not tasks, but they run in the host's cgroup, so their usage
counts for the host.

A probe never calls Docker while it reads: it reads its host's container list
(:class:`HostContainers`) as last refreshed, and the collector refreshes the lists on a thread
of their own, so a slow or hung Docker daemon makes the task list late, never the samples.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Hashable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import docker.errors
import psutil
import structlog

from dragon.collector.cgroups import (
    DEFAULT_ROOT,
    CgroupError,
    CgroupHost,
    detect_version,
    emulated_host_path,
    parse_stat,
)
from dragon.collector.docker_api import (
    DOCKER_ERRORS,
    FAULT_LABEL,
    HOST_LABEL,
    LEI_LABEL,
    TASK_LABEL,
    reportable,
    task_id,
)
from dragon.logs import EveryInterval
from dragon.messages.schema import clip
from dragon.messages.schemas import MAX_FRACTION, HostMetrics, TaskUsage

log = structlog.get_logger(__name__)


# Interfaces whose bytes are not the machine's own traffic: loopback, and on a real host the
# veth/bridge side of container traffic, which would otherwise count every container byte
# twice (once on the veth, once on the physical interface).
DEFAULT_EXCLUDED_NICS: tuple[str, ...] = ("lo", "veth", "docker", "br-")


class Probe(Protocol):
    """What the collector needs from a host reader."""

    host: str
    containers: HostContainers | None  # the host's container list, refreshed by the collector; None: no Docker
    # Whether the last read measured its rates over an interval: not the first read, whose rates
    # are 0, and published would pass for a measured 0.
    measured: bool
    ram_capacity_bytes: float  # what the last read's ram is a fraction of (0 until a read)

    def read(self, now: float) -> HostMetrics:
        """Usage over the interval since the previous read (rates 0 on the first read); ``now`` is
        a monotonic clock's reading (``time.monotonic``): the wall clock steps (NTP), and a rate
        over a stepped interval is multiplied, or all but zero."""

    def tasks(self) -> tuple[TaskUsage, ...]:
        """Per-task usage over the same interval as the last :meth:`read`."""


def parse_net_dev(text: str, excluded: Iterable[str] = ("lo",)) -> tuple[int, int]:
    """Received and transmitted bytes summed over the interfaces of ``/proc/<pid>/net/dev``.

    An interface is skipped when its name starts with one of ``excluded``.
    """
    prefixes = tuple(excluded)
    rx = tx = 0
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if not sep or "|" in line:
            continue  # the two header lines
        name = name.strip()
        if prefixes and name.startswith(prefixes):
            continue
        fields = rest.split()
        rx += int(fields[0])
        tx += int(fields[8])
    return rx, tx


RESET_LOG_INTERVAL_S = 60.0  # counters that went down are logged at most this often per host


class _Deltas:
    """Differences of named cumulative counters between consecutive reads.

    A counter that went down (reset: a cgroup made again, a network card gone, a 32-bit counter
    wrapped) makes the read a new start, as the first read is: measured as 0 for that interval,
    it would pass for an idle host (the simulator's background of the host is its lowest usage).
    One that goes down again at the next read is a counter that keeps stepping back (a kernel's
    quirk), not a reset: from then on its decreases count as 0, or the host would never be
    published.
    """

    def __init__(self, host: str) -> None:
        self.host = host
        self._last: dict[str, float] = {}
        self._last_ts: float | None = None
        self._went_down_before = False
        self._resets_logged = EveryInterval(RESET_LOG_INTERVAL_S)

    def update(self, now: float, counters: dict[str, float]) -> tuple[dict[str, float], float]:
        """(deltas, elapsed seconds); elapsed is 0, nothing measured, on the first read, a clock
        going back, or a counter that went down."""
        previous, previous_ts = self._last, self._last_ts
        self._last, self._last_ts = dict(counters), now
        deltas = {name: value - previous.get(name, value) for name, value in counters.items()}
        went_down = sorted(name for name, delta in deltas.items() if delta < 0)
        went_down_before, self._went_down_before = self._went_down_before, bool(went_down)
        if previous_ts is None or now <= previous_ts:
            return {name: 0.0 for name in counters}, 0.0
        if went_down and (held_back := self._resets_logged.due()) is not None:
            log.warning("counters_went_down", host=self.host, counters=went_down, held_back=held_back)
        if went_down and not went_down_before:
            return {name: 0.0 for name in counters}, 0.0
        return {name: max(0.0, delta) for name, delta in deltas.items()}, now - previous_ts


LIST_REFRESH_S = 5.0  # the collector lists each host's containers this often (a cheap call)
# Docker may show a container as running a little after its StartedAt: one started this long
# before a list began, and missing from it, still started since that list.
START_SLACK_S = 1.0


class _KeyedSum:
    """A never-decreasing sum of per-key cumulative counters whose keys come and go.

    Each key adds the growth of its counters. A key seen for the first time counts from zero if
    it is ``fresh`` (its counters began since the keys were last known in full: a new container,
    a fault's hog), else from now on: a container that ran long before it was seen (the first
    container list failed, a paused container back) would put its whole past in one interval,
    a spike no host made. A key whose counters went down counts from zero; a key that
    disappears keeps what it added.
    """

    def __init__(self, width: int) -> None:
        self._last: dict[Hashable, tuple[int, ...]] = {}
        self._total = [0] * width

    def update(self, values: dict[Hashable, tuple[int, ...]], fresh: Collection[Hashable]) -> tuple[int, ...]:
        for key, value in values.items():
            old = self._last.get(key)
            if old is None:
                old = (0,) * len(value) if key in fresh else value
            elif any(new < prev for new, prev in zip(value, old, strict=True)):
                old = (0,) * len(value)
            for i, (new, prev) in enumerate(zip(value, old, strict=True)):
                self._total[i] += new - prev
        self._last = dict(values)
        return tuple(self._total)


# ---------------------------------------------------------------------------------------
# Containers of one host, from the Docker API, cached.


@dataclass(frozen=True)
class ContainerInfo:
    """A running container labelled for this host: a task or a fault hog."""

    id: str
    name: str
    task_id: str
    pid: int
    is_task: bool
    cgroup: CgroupHost | None
    pid_start: int = 0  # when its process started (/proc/<pid>/stat field 22, clock ticks); 0: unknown
    fresh: bool = False  # started since the list before the one that first showed it: all its counters are new

    def running(self, proc_root: Path) -> bool:
        """Whether its process still runs: the pid may since belong to another process (after a
        list that Docker did not answer for a while), whose counters are not the container's."""
        started = process_start(proc_root, self.pid)
        return started is not None and (self.pid_start == 0 or started == self.pid_start)


def process_start(proc_root: Path, pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot), or None when there is none."""
    try:
        return parse_stat((proc_root / str(pid) / "stat").read_text())[1]
    except (OSError, ValueError, IndexError):
        return None


class HostContainers:
    """The running containers labelled ``dragon.host=<host>`` (one cheap list call; ``inspect``
    only for new containers).

    :meth:`get` only reads the list as last refreshed, and :meth:`refresh` asks Docker: the
    collector calls it from its Docker thread every ``LIST_REFRESH_S``, so that the sampling
    thread never waits on the daemon. The list is replaced whole, never changed in place, so a
    reader on another thread sees the old list or the new one.
    """

    def __init__(
        self,
        docker_client: Any,
        host: str,
        *,
        lei: str | None = None,
        cgroup_root: str | os.PathLike[str] = DEFAULT_ROOT,
        proc_root: str | os.PathLike[str] = "/proc",
    ) -> None:
        self._client = docker_client
        self._host = host
        self._lei = lei
        self._cgroup_root = Path(cgroup_root)
        self._proc_root = Path(proc_root)
        self._cache: dict[str, ContainerInfo] = {}
        self._version: int | None = None
        self._listed_at: float | None = None  # when the last list Docker answered was asked for (wall clock)

    def get(self) -> list[ContainerInfo]:
        """The list as last refreshed (empty until the first refresh); never calls Docker."""
        return list(self._cache.values())

    def refresh(self) -> None:
        """List the host's containers again; a failed call keeps the last list."""
        labels = [f"{HOST_LABEL}={self._host}"]
        if self._lei:
            labels.append(f"{LEI_LABEL}={self._lei}")
        began = time.time()  # Docker's StartedAt is on the wall clock too
        try:
            listed = self._client.containers.list(sparse=True, filters={"label": labels, "status": "running"})
            current: dict[str, ContainerInfo] = {}
            for container in listed:
                known = self._cache.get(container.id)
                if known is None or not known.running(self._proc_root):
                    known = self._inspect(container.id)  # new, or restarted with a new process
                if known is not None:
                    current[container.id] = known
        except DOCKER_ERRORS as exc:
            log.warning("container_list_failed", host=self._host, error=str(exc))
            return  # keep the last list
        if current.keys() != self._cache.keys():
            log.info("host_containers_changed", host=self._host, containers=sorted(c.name for c in current.values()))
        self._cache = current
        self._listed_at = began

    def _inspect(self, container_id: str) -> ContainerInfo | None:
        try:
            attrs = self._client.api.inspect_container(container_id)
        except docker.errors.NotFound:
            return None  # removed since it was listed
        labels = attrs["Config"].get("Labels") or {}
        is_task = labels.get(TASK_LABEL) == "true"
        if not is_task and labels.get(FAULT_LABEL) != "true":
            return None
        pid = int(attrs["State"].get("Pid") or 0)
        if pid <= 0:
            return None
        name = attrs["Name"].lstrip("/")
        task = task_id(labels, name)
        if is_task and not reportable(task):  # inspected once: the list keeps it while it runs
            log.warning("task_left_out_id_too_long", host=self._host, container=clip(name), length=len(task))
        since = started_at(attrs["State"].get("StartedAt", ""))
        return ContainerInfo(
            id=container_id,
            name=clip(name),
            task_id=task,
            pid=pid,
            is_task=is_task,
            cgroup=self._container_cgroup(container_id, pid, attrs["HostConfig"].get("CgroupParent") or ""),
            pid_start=process_start(self._proc_root, pid) or 0,
            # Not in the last list, and started since it was asked for: nothing of it was counted.
            # The first list of all (at start-up) knows of no such time: all from now on.
            fresh=self._listed_at is not None and since >= self._listed_at - START_SLACK_S,
        )

    def _container_cgroup(self, container_id: str, pid: int, cgroup_parent: str) -> CgroupHost | None:
        """The container's own cgroup: from ``/proc/<pid>/cgroup``, else Docker's cgroupfs scheme."""
        try:
            if self._version is None:
                self._version = detect_version(self._cgroup_root)
        except CgroupError as exc:
            log.warning("task_cgroups_unreadable", cgroup_root=str(self._cgroup_root), error=str(exc))
            return None
        path = ""
        try:
            for line in (self._proc_root / str(pid) / "cgroup").read_text().splitlines():
                _hid, controllers, cgroup_path = line.split(":", 2)
                if (self._version == 2 and controllers == "") or "memory" in controllers.split(","):
                    path = cgroup_path
                    break
        except (OSError, ValueError):
            pass
        if not path or ".." in path:
            # A private cgroup namespace shows paths relative to itself.
            path = f"{cgroup_parent or '/docker'}/{container_id}"
        try:
            return CgroupHost(path, self._cgroup_root, proc_root=self._proc_root, version=self._version)
        except ValueError:
            return None


class _TaskMeter:
    """Per-task CPU (fraction of the host's capacity) and memory from container cgroups."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}

    def measure(self, now: float, capacity_cores: float, infos: list[ContainerInfo]) -> tuple[TaskUsage, ...]:
        usages = []
        seen: dict[str, tuple[float, int]] = {}
        for info in infos:
            # A task whose id no message may carry still counts for its host (its network), not alone.
            if not info.is_task or info.cgroup is None or not reportable(info.task_id):
                continue
            try:
                cpu_ns = info.cgroup.cpu_usage_ns()
                ram = info.cgroup.memory_usage_bytes()
            except CgroupError:
                continue  # the container stopped since the list was refreshed
            seen[info.id] = (now, cpu_ns)
            previous = self._last.get(info.id)
            cpu = 0.0
            if previous is not None and now > previous[0] and cpu_ns >= previous[1]:
                # A quota enforced late can show a burst above capacity; HostSample allows up to 4.
                cpu = min((cpu_ns - previous[1]) / ((now - previous[0]) * capacity_cores * 1e9), MAX_FRACTION)
            usages.append(TaskUsage(id=info.task_id, name=info.name, cpu=cpu, ram_bytes=float(ram)))
        self._last = seen
        return tuple(sorted(usages, key=lambda usage: usage.name))


# ---------------------------------------------------------------------------------------


class PsutilProbe:
    """The whole real machine, through psutil."""

    def __init__(
        self,
        host: str,
        docker_client: Any = None,
        *,
        lei: str | None = None,
        cgroup_root: str | os.PathLike[str] = DEFAULT_ROOT,
        proc_root: str | os.PathLike[str] = "/proc",
        excluded_nics: tuple[str, ...] = DEFAULT_EXCLUDED_NICS,
    ) -> None:
        self.host = host
        self._excluded_nics = excluded_nics
        # The machine's own network namespace is that of its pid 1: in a container (with the
        # host's /proc mounted and pid: host) psutil would see only the container's interfaces.
        self._host_net_dev = Path(proc_root) / "1" / "net" / "dev"
        self._deltas = _Deltas(host)
        self.measured = False
        self.ram_capacity_bytes = 0.0
        self._tasks: tuple[TaskUsage, ...] = ()
        self.containers: HostContainers | None = None
        self._meter = None
        if docker_client is not None:
            self.containers = HostContainers(docker_client, host, lei=lei, cgroup_root=cgroup_root, proc_root=proc_root)
            self._meter = _TaskMeter()

    def read(self, now: float) -> HostMetrics:
        times = psutil.cpu_times()
        # As psutil.cpu_percent: iowait is idle time, and Linux already counts guest time
        # inside user and nice.
        total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
        idle = times.idle + getattr(times, "iowait", 0.0)
        disk = psutil.disk_io_counters()
        rx, tx = self._net_bytes()
        counters = {
            "cpu_busy": total - idle,
            "cpu_total": total,
            "disk_read": disk.read_bytes if disk else 0,
            "disk_write": disk.write_bytes if disk else 0,
            "net_rx": rx,
            "net_tx": tx,
        }
        deltas, elapsed = self._deltas.update(now, counters)
        self.measured = elapsed > 0
        memory = psutil.virtual_memory()
        self.ram_capacity_bytes = float(memory.total)
        swap = psutil.swap_memory()
        # Clamped as psutil.cpu_percent does: idle and iowait can step back on some kernels.
        cpu = min(1.0, deltas["cpu_busy"] / deltas["cpu_total"]) if deltas["cpu_total"] > 0 else 0.0
        if self._meter is not None:
            self._tasks = self._meter.measure(now, float(psutil.cpu_count() or 1), self.containers.get())
        return HostMetrics(
            cpu=cpu,
            ram=(memory.total - memory.available) / memory.total,
            swap=swap.used / swap.total if swap.total else 0.0,
            **_rates(deltas, elapsed, ("disk_read", "disk_write", "net_rx", "net_tx")),
        )

    def tasks(self) -> tuple[TaskUsage, ...]:
        return self._tasks

    def _net_bytes(self) -> tuple[int, int]:
        try:
            return parse_net_dev(self._host_net_dev.read_text(), self._excluded_nics)
        except OSError:
            pass  # not readable (no pid 1 of the host visible): this process's namespace
        rx = tx = 0
        for name, counters in psutil.net_io_counters(pernic=True).items():
            if not name.startswith(self._excluded_nics):
                rx += counters.bytes_recv
                tx += counters.bytes_sent
        return rx, tx


class CgroupProbe:
    """An emulated host: one parent cgroup and the containers running in it.

    CPU is the cgroup's CPU time over the elapsed time and its capacity (quota) in cores;
    RAM and swap are fractions of the cgroup's limits; disk bytes come from
    :meth:`CgroupHost.io_bytes`; network bytes are summed over ``<proc_root>/<pid>/net/dev``
    of one process per container (the network namespace is per container), for every
    container labelled for this host (tasks and fault hogs).
    """

    def __init__(
        self,
        host: str,
        cgroup: CgroupHost,
        proc_root: str | os.PathLike[str] = "/proc",
        docker_client: Any = None,
        *,
        lei: str | None = None,
    ) -> None:
        self.host = host
        self.cgroup = cgroup
        self._proc_root = Path(proc_root)
        self._deltas = _Deltas(host)
        self.measured = False
        self.ram_capacity_bytes = 0.0
        self._net = _KeyedSum(2)
        self._tasks: tuple[TaskUsage, ...] = ()
        self.containers: HostContainers | None = None
        self._meter = None
        if docker_client is not None:
            self.containers = HostContainers(docker_client, host, lei=lei, cgroup_root=cgroup.root, proc_root=proc_root)
            self._meter = _TaskMeter()

    def read(self, now: float) -> HostMetrics:
        infos = self.containers.get() if self.containers is not None else []
        cpu_ns = self.cgroup.cpu_usage_ns()
        disk_read, disk_write = self.cgroup.io_bytes()
        fresh = {(info.id, info.pid) for info in infos if info.fresh}
        net_rx, net_tx = self._net.update(self._container_net(infos), fresh)
        counters = {
            "cpu_ns": cpu_ns,
            "disk_read": disk_read,
            "disk_write": disk_write,
            "net_rx": net_rx,
            "net_tx": net_tx,
        }
        deltas, elapsed = self._deltas.update(now, counters)
        self.measured = elapsed > 0
        capacity = self.cgroup.cpu_capacity_cores()
        # At most the samples' bound, as a task's: a quota enforced late reads briefly above 1.
        cpu = min(deltas["cpu_ns"] / (elapsed * capacity * 1e9), MAX_FRACTION) if elapsed > 0 else 0.0
        swap_limit = self.cgroup.swap_limit_bytes()
        self.ram_capacity_bytes = float(self.cgroup.memory_limit_bytes())
        metrics = HostMetrics(
            cpu=cpu,
            ram=self.cgroup.memory_usage_bytes() / self.ram_capacity_bytes,
            swap=self.cgroup.swap_usage_bytes() / swap_limit if swap_limit > 0 else 0.0,
            **_rates(deltas, elapsed, ("disk_read", "disk_write", "net_rx", "net_tx")),
        )
        if self._meter is not None:
            self._tasks = self._meter.measure(now, capacity, infos)
        return metrics

    def tasks(self) -> tuple[TaskUsage, ...]:
        return self._tasks

    def _container_net(self, infos: list[ContainerInfo]) -> dict[Hashable, tuple[int, ...]]:
        values: dict[Hashable, tuple[int, ...]] = {}
        for info in infos:
            if not info.running(self._proc_root):
                continue  # exited since the list was refreshed; its pid may be another process's now
            try:
                text = (self._proc_root / str(info.pid) / "net" / "dev").read_text()
            except OSError:
                continue  # exited since the list was refreshed
            # Keyed by pid too: a restarted container has a new namespace with new counters.
            values[(info.id, info.pid)] = parse_net_dev(text)
        return values


def _rates(deltas: dict[str, float], elapsed: float, names: tuple[str, ...]) -> dict[str, float]:
    return {name: deltas[name] / elapsed if elapsed > 0 else 0.0 for name in names}


# ---------------------------------------------------------------------------------------


def _cgroup_probe(
    host: str,
    *,
    cgroup_parent: str | None = None,
    cgroup_root: str | os.PathLike[str] = DEFAULT_ROOT,
    proc_root: str | os.PathLike[str] = "/proc",
    docker_client: Any = None,
    lei: str | None = None,
) -> CgroupProbe:
    if cgroup_parent is None:
        if not lei:
            raise ValueError("a cgroup probe needs cgroup_parent, or lei to derive it from")
        cgroup_parent = emulated_host_path(lei, host)
    cgroup = CgroupHost(cgroup_parent, cgroup_root, proc_root=proc_root)
    return CgroupProbe(host, cgroup, proc_root, docker_client, lei=lei)


PROBES: dict[str, Callable[..., Probe]] = {
    "psutil": PsutilProbe,
    "cgroup": _cgroup_probe,
}


def create_probe(kind: str, host: str, **options: Any) -> Probe:
    """Build a probe by kind: ``psutil`` (options of :class:`PsutilProbe`) or ``cgroup``
    (``cgroup_parent`` such as ``dragon/lei1/h1``, by default the emulated host's
    ``dragon/<lei>/<host>``; ``cgroup_root``, ``proc_root``, ``docker_client``, ``lei``)."""
    try:
        factory = PROBES[kind]
    except KeyError:
        raise ValueError(f"unknown probe kind {kind!r}; known: {', '.join(sorted(PROBES))}") from None
    return factory(host, **options)


def started_at(text: str) -> float:
    """Docker's RFC 3339 time with nanoseconds (``2026-12-02T17:11:52.123456789Z``) as epoch seconds."""
    if not text or text.startswith("0001-"):
        return 0.0
    stamp, _, fraction = text.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(stamp + "+00:00").timestamp()
    return seconds + (float(f"0.{fraction}") if fraction else 0.0)
