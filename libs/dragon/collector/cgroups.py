"""Read and write the cgroup of one emulated host, on cgroup v1 or v2.

An emulated host is a parent cgroup such as ``dragon/lei1/h1``; its task containers run
with ``--cgroup-parent=/dragon/lei1/h1``. Docker's cgroupfs driver then creates
``<root>/<controller>/dragon/lei1/h1/<full container id>`` in every v1 hierarchy
(verified with Docker 20.10 on cgroup v1; the parent directories stay after the
container is removed), or ``<root>/dragon/lei1/h1/<id>`` on v2. The parent's limits cap
all of its children and its counters are their sum, so the host is read from the parent
alone. :class:`CgroupHost` works for any cgroup path, so a task container's own cgroup
(``dragon/lei1/h1/<id>``) is read the same way.

Choices, measured on the development machine (kernel 6.18, Docker 20.10, cgroup v1):

- Memory in use excludes reclaimable page cache, as ``docker stats`` does:
  v1 ``memory.usage_in_bytes - total_inactive_file``, v2 ``memory.current - inactive_file``.
- Disk bytes: v2 ``io.stat`` (rbytes, wbytes), which includes buffered writeback. v1 blkio
  never sees buffered writeback (the flusher threads write it from the root cgroup), and
  on the measured kernel ``blkio.throttle.io_service_bytes_recursive`` stayed at 0 even for
  O_DIRECT reads and writes (the kernel keeps throttle statistics only where a throttle
  rule is set; bfq is not the active scheduler). So on v1 the host's disk bytes are the sum
  of ``/proc/<pid>/io`` over its processes (:class:`ProcIoCounter`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

DEFAULT_ROOT = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000
# v1 reports "no limit" as PAGE_COUNTER_MAX * page size (9223372036854771712 with 4 KiB
# pages); anything this large is no limit.
_V1_UNLIMITED = 1 << 62
_V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "blkio", "pids")
_V2_CONTROLLERS = ("cpu", "memory", "io", "pids")


class CgroupError(RuntimeError):
    """A cgroup file is missing, unreadable or refused a value; the message names it."""


# ---------------------------------------------------------------------------------------
# Parsers of the kernel's file formats (pure functions, tested on fixture text).


def parse_keyed(text: str) -> dict[str, int]:
    """``key value`` lines (memory.stat, cpu.stat) as a dict; other lines are skipped."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def parse_blkio(text: str) -> tuple[int, int]:
    """Read and write bytes summed over devices from a v1 ``blkio.*io_service_bytes*`` file."""
    totals = {"Read": 0, "Write": 0}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in totals:
            totals[parts[1]] += int(parts[2])
    return totals["Read"], totals["Write"]


def parse_io_stat(text: str) -> tuple[int, int]:
    """Read and write bytes summed over devices from a v2 ``io.stat`` file."""
    read = write = 0
    for line in text.splitlines():
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if key == "rbytes":
                read += int(value)
            elif key == "wbytes":
                write += int(value)
    return read, write


def parse_proc_io(text: str) -> tuple[int, int]:
    """``read_bytes`` and ``write_bytes`` of ``/proc/<pid>/io`` (bytes that reached storage)."""
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        values[key.strip()] = value.strip()
    return int(values.get("read_bytes", 0)), int(values.get("write_bytes", 0))


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` in bytes."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            factor = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
            out[key.strip()] = int(parts[0]) * factor
    return out


def parse_stat(stat_text: str) -> tuple[int, int]:
    """Parent pid and start time (clock ticks after boot) from ``/proc/<pid>/stat``, fields 4 and 22
    (the command name, field 2, may contain spaces and parens)."""
    fields = stat_text.rsplit(")", 1)[1].split()  # from field 3 on
    return int(fields[1]), int(fields[19])


def emulated_lei_path(lei: str, prefix: str = "dragon") -> str:
    """The cgroup path that holds a LEI's emulated hosts: ``<prefix>/<lei>``."""
    return f"{prefix.strip('/')}/{lei}"


def emulated_host_path(lei: str, host: str, prefix: str = "dragon") -> str:
    """The cgroup path of an emulated host: ``<prefix>/<lei>/<host>`` (one scheme for all)."""
    return f"{emulated_lei_path(lei, prefix)}/{host}"


def detect_version(root: str | os.PathLike[str] = DEFAULT_ROOT) -> int:
    """1 or 2: which cgroup hierarchy is mounted at ``root``.

    A hybrid system (v1 controllers plus an empty v2 tree at ``root/unified``) counts as
    v1, because the controllers that hold the limits are the v1 ones.
    """
    root = Path(root)
    if (root / "cgroup.controllers").is_file():
        return 2
    if any(_v1_mount(root, controller) is not None for controller in ("cpu", "memory")):
        return 1
    raise CgroupError(f"no cgroup v1 or v2 hierarchy under {root}")


# ---------------------------------------------------------------------------------------
# File helpers.


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise CgroupError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _read_int(path: Path) -> int:
    return int(_read(path).strip())


def _write(path: Path, value: str | int) -> None:
    try:
        with open(path, "w") as handle:
            handle.write(str(value))
    except OSError as exc:
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror or exc}") from exc


def _v1_mount(root: Path, controller: str) -> Path | None:
    """The v1 hierarchy holding ``controller``: ``root/cpu`` or a co-mount like ``cpu,cpuacct``."""
    direct = root / controller
    if direct.is_dir():
        return direct
    try:
        entries = list(root.iterdir())
    except OSError:
        return None
    for entry in entries:
        if controller in entry.name.split(",") and entry.is_dir():
            return entry
    return None


def _normalize(parent: str) -> str:
    parts = [part for part in parent.strip().split("/") if part]
    if not parts or any(part in {".", ".."} for part in parts):
        raise ValueError(f"cgroup path {parent!r} must be a relative path like 'dragon/lei1/h1'")
    return "/".join(parts)


def _remove_tree(path: Path) -> None:
    """rmdir a cgroup and its child cgroups, deepest first (their files are virtual)."""
    if not path.is_dir():
        return
    for dirpath, _dirnames, _files in sorted(os.walk(path), key=lambda item: -len(item[0])):
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            pass
        except OSError as exc:
            # EBUSY: a process is still inside (a container that is still running).
            raise CgroupError(f"cannot remove {dirpath}: {exc.strerror}") from exc


def _prune_empty_ancestors(path: Path, stop: Path) -> None:
    current = path.parent
    while current != stop and stop in current.parents:
        try:
            os.rmdir(current)
        except OSError as exc:
            if exc.errno in {errno.ENOTEMPTY, errno.EBUSY, errno.EEXIST}:
                return
            if exc.errno != errno.ENOENT:
                raise CgroupError(f"cannot remove {current}: {exc.strerror}") from exc
        current = current.parent


# ---------------------------------------------------------------------------------------
# One class per cgroup version with the same methods; CgroupHost picks one.
# Limits are returned as None when unlimited; CgroupHost substitutes the machine's size.


class _CgroupV1:
    def __init__(self, root: Path, parent: str) -> None:
        self._root = root
        self._parent = parent
        self._mounts = {c: m for c in _V1_CONTROLLERS if (m := _v1_mount(root, c)) is not None}
        self._dirs = {c: mount / parent for c, mount in self._mounts.items()}

    def dir(self, controller: str) -> Path:
        try:
            return self._dirs[controller]
        except KeyError:
            raise CgroupError(f"cgroup v1 controller {controller!r} is not mounted under {self._root}") from None

    def exists(self) -> bool:
        return self.dir("memory").is_dir() and self.dir("cpu").is_dir()

    def create(self) -> None:
        for path in self._dirs.values():
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CgroupError(f"cannot create {path}: {exc.strerror}") from exc

    def set_limits(self, cpus: float | None, memory_bytes: int | None, swap_bytes: int) -> None:
        cpu = self.dir("cpu")
        _write(cpu / "cpu.cfs_period_us", CFS_PERIOD_US)
        _write(cpu / "cpu.cfs_quota_us", -1 if cpus is None else max(1000, round(cpus * CFS_PERIOD_US)))
        memory = self.dir("memory")
        memsw = memory / "memory.memsw.limit_in_bytes"
        mem_value = -1 if memory_bytes is None else memory_bytes
        memsw_value = -1 if memory_bytes is None else memory_bytes + swap_bytes
        if not memsw.exists():
            _write(memory / "memory.limit_in_bytes", mem_value)
            return
        # The kernel keeps memsw >= mem at every step: raise memsw first when growing.
        current_memsw = _read_int(memsw)
        growing = memsw_value == -1 or memsw_value >= current_memsw
        steps = [(memsw, memsw_value), (memory / "memory.limit_in_bytes", mem_value)]
        for path, value in steps if growing else reversed(steps):
            _write(path, value)

    def cpu_usage_ns(self) -> int:
        return _read_int(self.dir("cpuacct") / "cpuacct.usage")

    def cpu_limit_cores(self) -> float | None:
        cpu = self.dir("cpu")
        quota = _read_int(cpu / "cpu.cfs_quota_us")
        if quota < 0:
            return None
        return quota / _read_int(cpu / "cpu.cfs_period_us")

    def memory_usage(self) -> int:
        memory = self.dir("memory")
        stat = parse_keyed(_read(memory / "memory.stat"))
        inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
        return max(0, _read_int(memory / "memory.usage_in_bytes") - inactive)

    def memory_limit(self) -> int | None:
        limit = _read_int(self.dir("memory") / "memory.limit_in_bytes")
        return None if limit >= _V1_UNLIMITED else limit

    def swap_usage(self) -> int:
        memory = self.dir("memory")
        memsw = memory / "memory.memsw.usage_in_bytes"
        if not memsw.exists():
            return 0
        return max(0, _read_int(memsw) - _read_int(memory / "memory.usage_in_bytes"))

    def swap_limit(self) -> int | None:
        memory = self.dir("memory")
        memsw = memory / "memory.memsw.limit_in_bytes"
        if not memsw.exists():
            return 0  # no swap accounting (swapaccount=0): swap is not part of the host
        total = _read_int(memsw)
        if total >= _V1_UNLIMITED:
            return None
        return max(0, total - _read_int(memory / "memory.limit_in_bytes"))

    def io_bytes(self) -> tuple[int, int]:
        blkio = self.dir("blkio")
        for name in ("blkio.throttle.io_service_bytes_recursive", "blkio.io_service_bytes_recursive"):
            if (blkio / name).exists():
                return parse_blkio(_read(blkio / name))
        raise CgroupError(f"no blkio byte counters in {blkio}")

    def procs_dir(self) -> Path:
        return self._dirs.get("pids") or self.dir("cpu")

    def all_dirs(self) -> list[tuple[Path, Path]]:
        """(cgroup dir, hierarchy mount) pairs, for removal: in every hierarchy, not only the
        controllers read here, since Docker's cgroupfs driver makes a container's parent path
        in each (cpuset, devices, freezer, the named systemd one...)."""
        mounts = {mount.resolve() for mount in self._mounts.values()}
        try:
            mounts.update(entry.resolve() for entry in self._root.iterdir() if entry.is_dir())
        except OSError:
            pass  # the controllers found at start are still removed
        return [(mount / self._parent, mount) for mount in sorted(mounts)]


class _CgroupV2:
    def __init__(self, root: Path, parent: str) -> None:
        self._root = root
        self._dir = root / parent

    def exists(self) -> bool:
        return self._dir.is_dir()

    def create(self) -> None:
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CgroupError(f"cannot create {self._dir}: {exc.strerror}") from exc
        # A controller's files appear in a cgroup only when its parent enables it in
        # cgroup.subtree_control; enable them from the root down to the host itself, so
        # the host has cpu.max/memory.max and its containers get their own files too.
        relative = self._dir.relative_to(self._root)
        chain = [self._root] + [self._root / Path(*relative.parts[: i + 1]) for i in range(len(relative.parts))]
        for path in chain:
            available = set(_read(path / "cgroup.controllers").split())
            enabled = set(_read(path / "cgroup.subtree_control").split())
            missing = [c for c in _V2_CONTROLLERS if c in available and c not in enabled]
            if missing:
                _write(path / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))

    def set_limits(self, cpus: float | None, memory_bytes: int | None, swap_bytes: int) -> None:
        quota = "max" if cpus is None else str(max(1000, round(cpus * CFS_PERIOD_US)))
        _write(self._dir / "cpu.max", f"{quota} {CFS_PERIOD_US}")
        _write(self._dir / "memory.max", "max" if memory_bytes is None else memory_bytes)
        if (self._dir / "memory.swap.max").exists():
            _write(self._dir / "memory.swap.max", "max" if memory_bytes is None else swap_bytes)

    def cpu_usage_ns(self) -> int:
        return parse_keyed(_read(self._dir / "cpu.stat"))["usage_usec"] * 1000

    def cpu_limit_cores(self) -> float | None:
        path = self._dir / "cpu.max"
        if not path.exists():
            return None
        quota, _, period = _read(path).strip().partition(" ")
        return None if quota == "max" else int(quota) / int(period or CFS_PERIOD_US)

    def memory_usage(self) -> int:
        stat = parse_keyed(_read(self._dir / "memory.stat"))
        return max(0, _read_int(self._dir / "memory.current") - stat.get("inactive_file", 0))

    def memory_limit(self) -> int | None:
        return self._limit("memory.max")

    def swap_usage(self) -> int:
        path = self._dir / "memory.swap.current"
        return _read_int(path) if path.exists() else 0

    def swap_limit(self) -> int | None:
        if not (self._dir / "memory.swap.max").exists():
            return 0
        return self._limit("memory.swap.max")

    def io_bytes(self) -> tuple[int, int]:
        return parse_io_stat(_read(self._dir / "io.stat"))

    def procs_dir(self) -> Path:
        return self._dir

    def all_dirs(self) -> list[tuple[Path, Path]]:
        return [(self._dir, self._root)]

    def _limit(self, name: str) -> int | None:
        path = self._dir / name
        if not path.exists():
            return None
        raw = _read(path).strip()
        return None if raw == "max" else int(raw)


_BACKENDS: dict[int, type[_CgroupV1] | type[_CgroupV2]] = {1: _CgroupV1, 2: _CgroupV2}
# See the module docstring for why v1 reads /proc/<pid>/io.
_DEFAULT_IO_SOURCE = {1: "proc", 2: "cgroup"}


# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ProcIoSample:
    ppid: int
    started: int  # clock ticks after boot: with the pid, who the process is
    read: int
    write: int


class ProcIoCounter:
    """Cumulative storage bytes of a changing set of processes, from ``/proc/<pid>/io``.

    Each update adds, per process, the growth of its counters since the previous update,
    so the total never decreases when processes exit. A process seen for the first time
    counts in full (its counters start at 0 when it is forked). When a child exits and is
    reaped, the kernel adds its counters to the parent's; the bytes already counted for the
    child are then subtracted from the parent's jump so they do not count twice. Bytes a
    process did between the last update and its exit are lost unless its parent reaps it.
    """

    def __init__(self, proc_root: str | os.PathLike[str] = "/proc") -> None:
        self._proc_root = Path(proc_root)
        self._seen: dict[int, _ProcIoSample] = {}
        self._credit: dict[int, list[int]] = {}
        self._read = 0
        self._write = 0
        self._primed = False
        self._warned = False

    def update(self, pids: Iterable[int]) -> tuple[int, int]:
        current = {pid: sample for pid in pids if (sample := self._sample(pid)) is not None}
        for pid, old in self._seen.items():
            if pid not in current:
                credit = self._credit.setdefault(old.ppid, [0, 0])
                credit[0] += old.read
                credit[1] += old.write
        for pid, new in current.items():
            old = self._seen.get(pid)
            # A process is its pid and start time: a reparented one (its parent exited: a daemon's
            # double fork) keeps both and is not counted again in full.
            if old is None or old.started != new.started or new.read < old.read or new.write < old.write:
                delta = [new.read, new.write]  # new process (or a reused pid)
            else:
                delta = [new.read - old.read, new.write - old.write]
            credit = self._credit.get(pid)
            if credit:
                for i in (0, 1):
                    used = min(delta[i], credit[i])
                    delta[i] -= used
                    credit[i] -= used
            if self._primed:
                self._read += delta[0]
                self._write += delta[1]
        self._credit = {pid: credit for pid, credit in self._credit.items() if pid in current and any(credit)}
        self._seen = current
        self._primed = True
        return self._read, self._write

    def _sample(self, pid: int) -> _ProcIoSample | None:
        base = self._proc_root / str(pid)
        try:
            read, write = parse_proc_io((base / "io").read_text())
            ppid, started = parse_stat((base / "stat").read_text())
        except PermissionError:
            if not self._warned:
                # Reading another process's io needs ptrace-read access (same user, or
                # CAP_SYS_PTRACE, and no LSM refusing it).
                log.warning("proc_io_unreadable", pid=pid, proc_root=str(self._proc_root))
                self._warned = True
            return None
        except (OSError, ValueError, IndexError):
            return None  # the process exited between listing and reading
        return _ProcIoSample(ppid, started, read, write)


class CgroupHost:
    """One cgroup (an emulated host, or a container's own cgroup) on v1 or v2.

    ``parent`` is the path below each hierarchy, e.g. ``dragon/lei1/h1`` (the value of
    ``--cgroup-parent`` without the leading slash). ``root`` is where the cgroup file
    systems are mounted: ``/sys/fs/cgroup`` on a host, ``/host/sys/fs/cgroup`` in the
    collector container. ``proc_root`` must show the same pid namespace as the one the
    cgroup files are read from (``cgroup.procs`` lists pids as the reader sees them).
    """

    def __init__(
        self,
        parent: str,
        root: str | os.PathLike[str] = DEFAULT_ROOT,
        *,
        proc_root: str | os.PathLike[str] = "/proc",
        version: int | None = None,
        io_source: str | None = None,
        machine_cores: float | None = None,
    ) -> None:
        self.parent = _normalize(parent)
        self.root = Path(root)
        self.version = version or detect_version(self.root)
        if self.version not in _BACKENDS:
            raise ValueError(f"cgroup version must be 1 or 2, not {self.version!r}")
        self.io_source = io_source or _DEFAULT_IO_SOURCE[self.version]
        if self.io_source not in {"proc", "cgroup"}:
            raise ValueError(f"io_source must be 'proc' or 'cgroup', not {self.io_source!r}")
        self.proc_root = Path(proc_root)
        self._cg = _BACKENDS[self.version](self.root, self.parent)
        self._machine_cores = machine_cores
        self._proc_io = ProcIoCounter(self.proc_root)

    def __repr__(self) -> str:
        return f"CgroupHost({self.parent!r}, root={str(self.root)!r}, version={self.version})"

    @property
    def cgroup_parent(self) -> str:
        """The value for Docker's ``cgroup_parent`` (absolute, so Docker does not nest it)."""
        return "/" + self.parent

    def exists(self) -> bool:
        return self._cg.exists()

    def ensure(self, cpus: float | None, memory_bytes: int | None, swap_bytes: int = 0) -> None:
        """Create the cgroup (idempotent) and set its limits; None means unlimited.

        ``swap_bytes`` is how much the host may swap on top of ``memory_bytes`` (0: none).
        """
        if cpus is not None and cpus <= 0:
            raise ValueError("cpus must be positive (or None for no limit)")
        if memory_bytes is not None and memory_bytes <= 0:
            raise ValueError("memory_bytes must be positive (or None for no limit)")
        if swap_bytes < 0:
            raise ValueError("swap_bytes must not be negative")
        self._cg.create()
        self._cg.set_limits(cpus, memory_bytes, swap_bytes)
        log.info(
            "cgroup_host_ensured",
            cgroup=self.parent,
            version=self.version,
            cpus=cpus,
            memory_bytes=memory_bytes,
            swap_bytes=swap_bytes,
        )

    def remove(self, prune_ancestors: bool = True) -> None:
        """rmdir this cgroup and its (empty) children, then its ancestors that became empty.

        Raises CgroupError while a process is still inside, after trying every hierarchy.
        """
        errors = []
        for path, mount in self._cg.all_dirs():
            try:
                _remove_tree(path)
                if prune_ancestors:
                    _prune_empty_ancestors(path, mount)
            except CgroupError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
        log.info("cgroup_host_removed", cgroup=self.parent)

    # --- usage --------------------------------------------------------------------------

    def cpu_usage_ns(self) -> int:
        """CPU time used by every process in the cgroup since it was created."""
        return self._cg.cpu_usage_ns()

    def cpu_capacity_cores(self) -> float:
        """The quota in cores, or the machine's cores when there is no quota (or a larger one)."""
        machine = self.machine_cores()
        limit = self._cg.cpu_limit_cores()
        return machine if limit is None else min(limit, machine)

    def memory_usage_bytes(self) -> int:
        """Memory in use without reclaimable page cache (see the module docstring)."""
        return self._cg.memory_usage()

    def memory_limit_bytes(self) -> int:
        """The memory limit, or the machine's RAM when there is none (or a larger one)."""
        machine = self._meminfo()["MemTotal"]
        limit = self._cg.memory_limit()
        return machine if limit is None else min(limit, machine)

    def swap_usage_bytes(self) -> int:
        return self._cg.swap_usage()

    def swap_limit_bytes(self) -> int:
        """Swap the cgroup may use: 0 with no swap accounting, the machine's swap when unlimited."""
        machine = self._meminfo().get("SwapTotal", 0)
        limit = self._cg.swap_limit()
        return machine if limit is None else min(limit, machine)

    def io_bytes(self) -> tuple[int, int]:
        """Cumulative (read, write) bytes that reached storage; never decreases."""
        if self.io_source == "proc":
            return self._proc_io.update(self.pids())
        return self._cg.io_bytes()

    def pids(self) -> list[int]:
        """Every process in this cgroup and its children, as seen from this pid namespace."""
        found: set[int] = set()
        for dirpath, _dirnames, _files in os.walk(self._cg.procs_dir()):
            try:
                text = Path(dirpath, "cgroup.procs").read_text()
            except OSError:
                continue  # a container's cgroup removed while walking
            found.update(int(line) for line in text.split() if line.isdigit())
        return sorted(found)

    # --- the machine, for unlimited cgroups ---------------------------------------------

    def machine_cores(self) -> float:
        return float(self._machine_cores or os.cpu_count() or 1)

    def _meminfo(self) -> dict[str, int]:
        return parse_meminfo(_read(self.proc_root / "meminfo"))
