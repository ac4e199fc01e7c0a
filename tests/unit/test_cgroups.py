"""CgroupHost on v1 and v2 fixture trees (files with the kernel's formats), no real cgroups."""

from __future__ import annotations

from pathlib import Path

import pytest

from dragon.collector.cgroups import (
    CgroupError,
    CgroupHost,
    ProcIoCounter,
    detect_version,
    parse_blkio,
    parse_io_stat,
    parse_keyed,
    parse_meminfo,
    parse_proc_io,
    parse_stat,
)

pytestmark = pytest.mark.unit

MIB = 1024**2
PARENT = "dragon/lei1/h1"
V1_UNLIMITED = "9223372036854771712"

MEMINFO = """\
MemTotal:       24683520 kB
MemFree:        22364160 kB
MemAvailable:   23939584 kB
Buffers:           12288 kB
Cached:          1830912 kB
SwapCached:            0 kB
SwapTotal:       2097148 kB
SwapFree:        2097148 kB
"""

V1_MEMORY_STAT = """\
cache 52428800
rss 100663296
rss_huge 0
shmem 0
mapped_file 4096000
swap 0
inactive_anon 0
active_anon 100663296
inactive_file 41943040
active_file 10485760
unevictable 0
hierarchical_memory_limit 268435456
hierarchical_memsw_limit 268435456
total_cache 52428800
total_rss 100663296
total_inactive_anon 0
total_active_anon 100663296
total_inactive_file 41943040
total_active_file 10485760
"""

V1_BLKIO = """\
254:0 Read 1048576
254:0 Write 4194304
254:0 Sync 5242880
254:0 Async 0
254:0 Discard 0
254:0 Total 5242880
253:0 Read 4096
253:0 Write 0
253:0 Sync 4096
253:0 Async 0
253:0 Discard 0
253:0 Total 4096
Total 5246976
"""

V2_MEMORY_STAT = """\
anon 104857600
file 62914560
kernel 2097152
kernel_stack 65536
sock 0
shmem 0
file_mapped 4194304
file_dirty 0
file_writeback 0
inactive_anon 0
active_anon 104857600
inactive_file 52428800
active_file 10485760
unevictable 0
"""

V2_IO_STAT = """\
254:0 rbytes=2097152 wbytes=8388608 rios=64 wios=512 dbytes=0 dios=0
253:0 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0
"""


def write_files(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def make_v1(root: Path, *, quota: str = "50000", limit: str = "268435456", memsw: str | None = "268435456") -> Path:
    """A v1 tree with cpu and cpuacct mounted separately (as on the development machine)."""
    write_files(root / "cpu" / PARENT, {"cpu.cfs_quota_us": f"{quota}\n", "cpu.cfs_period_us": "100000\n"})
    write_files(root / "cpuacct" / PARENT, {"cpuacct.usage": "2500000000\n"})
    memory = {
        "memory.usage_in_bytes": f"{160 * MIB}\n",
        "memory.limit_in_bytes": f"{limit}\n",
        "memory.stat": V1_MEMORY_STAT,
    }
    if memsw is not None:
        memory["memory.memsw.usage_in_bytes"] = f"{160 * MIB + 8 * MIB}\n"
        memory["memory.memsw.limit_in_bytes"] = f"{memsw}\n"
    write_files(root / "memory" / PARENT, memory)
    write_files(root / "blkio" / PARENT, {"blkio.throttle.io_service_bytes_recursive": V1_BLKIO})
    write_files(root / "pids" / PARENT, {"cgroup.procs": "101\n102\n"})
    write_files(root / "pids" / PARENT / "c0ffee", {"cgroup.procs": "201\n"})
    return root


def make_v2(root: Path, *, cpu_max: str = "50000 100000", memory_max: str = "268435456") -> Path:
    controllers = "cpuset cpu io memory hugetlb pids rdma misc\n"
    write_files(root, {"cgroup.controllers": controllers, "cgroup.subtree_control": ""})
    write_files(
        root / PARENT,
        {
            "cgroup.controllers": "cpu io memory pids\n",
            "cgroup.subtree_control": "",
            "cgroup.procs": "101\n",
            "cpu.max": f"{cpu_max}\n",
            "cpu.stat": "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\nnr_periods 10\n",
            "memory.current": f"{150 * MIB}\n",
            "memory.max": f"{memory_max}\n",
            "memory.stat": V2_MEMORY_STAT,
            "memory.swap.current": f"{4 * MIB}\n",
            "memory.swap.max": "max\n",
            "io.stat": V2_IO_STAT,
        },
    )
    write_files(root / PARENT / "c0ffee", {"cgroup.procs": "201\n202\n"})
    return root


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    write_files(root, {"meminfo": MEMINFO})
    return root


# --- parsers ------------------------------------------------------------------------------


def test_parsers_read_kernel_formats() -> None:
    assert parse_blkio(V1_BLKIO) == (1048576 + 4096, 4194304)
    assert parse_io_stat(V2_IO_STAT) == (2097152 + 4096, 8388608)
    assert parse_keyed(V2_MEMORY_STAT)["inactive_file"] == 52428800
    assert parse_meminfo(MEMINFO)["MemTotal"] == 24683520 * 1024
    proc_io = "rchar: 10\nwchar: 20\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\nwrite_bytes: 8192\n"
    assert parse_proc_io(proc_io) == (4096, 8192)
    line = "42 (python3 -m (x)) S 7 42 42 0 -1 4194560 10 0 0 0 5 2 0 0 20 0 1 0 123456 1000 50"
    assert parse_stat(line) == (7, 123456)


def test_detect_version(tmp_path: Path) -> None:
    assert detect_version(make_v1(tmp_path / "v1")) == 1
    assert detect_version(make_v2(tmp_path / "v2")) == 2
    with pytest.raises(CgroupError):
        detect_version(tmp_path / "nothing")


def test_parent_path_must_be_plain(tmp_path: Path) -> None:
    make_v1(tmp_path)
    with pytest.raises(ValueError):
        CgroupHost("dragon/../etc", tmp_path)
    assert CgroupHost("/dragon/lei1/h1/", tmp_path).cgroup_parent == "/dragon/lei1/h1"


# --- v1 -----------------------------------------------------------------------------------


def test_v1_usage_and_limits(tmp_path: Path, proc: Path) -> None:
    host = CgroupHost(PARENT, make_v1(tmp_path / "cg"), proc_root=proc, machine_cores=2)
    assert host.version == 1
    assert host.cpu_usage_ns() == 2_500_000_000
    assert host.cpu_capacity_cores() == pytest.approx(0.5)
    # usage minus total_inactive_file: page cache the kernel can drop is not "in use"
    assert host.memory_usage_bytes() == 160 * MIB - 41943040
    assert host.memory_limit_bytes() == 256 * MIB
    assert host.swap_usage_bytes() == 8 * MIB
    assert host.swap_limit_bytes() == 0  # memsw == mem: the host may not swap
    assert host.pids() == [101, 102, 201]


def test_v1_unlimited_falls_back_to_the_machine(tmp_path: Path, proc: Path) -> None:
    root = make_v1(tmp_path / "cg", quota="-1", limit=V1_UNLIMITED, memsw=V1_UNLIMITED)
    host = CgroupHost(PARENT, root, proc_root=proc, machine_cores=4)
    assert host.cpu_capacity_cores() == 4
    assert host.memory_limit_bytes() == 24683520 * 1024
    assert host.swap_limit_bytes() == 2097148 * 1024


def test_v1_without_swap_accounting(tmp_path: Path, proc: Path) -> None:
    host = CgroupHost(PARENT, make_v1(tmp_path / "cg", memsw=None), proc_root=proc)
    assert host.swap_usage_bytes() == 0
    assert host.swap_limit_bytes() == 0


def test_v1_co_mounted_cpu_cpuacct(tmp_path: Path, proc: Path) -> None:
    root = make_v1(tmp_path / "cg")
    (root / "cpu").rename(root / "cpu,cpuacct")
    write_files(root / "cpu,cpuacct" / PARENT, {"cpuacct.usage": "7\n"})
    (root / "cpuacct").rename(root / "unused")
    host = CgroupHost(PARENT, root, proc_root=proc, machine_cores=2)
    assert host.cpu_usage_ns() == 7
    assert host.cpu_capacity_cores() == pytest.approx(0.5)


def test_v1_io_from_blkio_when_asked(tmp_path: Path, proc: Path) -> None:
    host = CgroupHost(PARENT, make_v1(tmp_path / "cg"), proc_root=proc, io_source="cgroup")
    assert host.io_bytes() == (1048576 + 4096, 4194304)


def test_v1_ensure_creates_and_limits(tmp_path: Path, proc: Path) -> None:
    root = tmp_path / "cg"
    for controller in ("cpu", "cpuacct", "memory", "blkio", "pids", "cpuset"):
        (root / controller).mkdir(parents=True)
    host = CgroupHost("dragon/lei9/h2", root, proc_root=proc)
    host.ensure(cpus=0.5, memory_bytes=128 * MIB)
    base = Path("dragon/lei9/h2")
    assert (root / "cpu" / base / "cpu.cfs_quota_us").read_text() == "50000"
    assert (root / "cpu" / base / "cpu.cfs_period_us").read_text() == "100000"
    assert (root / "memory" / base / "memory.limit_in_bytes").read_text() == str(128 * MIB)
    assert (root / "blkio" / base).is_dir() and (root / "pids" / base).is_dir()
    assert not (root / "cpuset" / base).exists()  # Docker creates the controllers we do not limit
    with pytest.raises(ValueError):
        host.ensure(cpus=0, memory_bytes=MIB)


def test_v1_ensure_keeps_memsw_above_memory(tmp_path: Path, proc: Path) -> None:
    root = make_v1(tmp_path / "cg")
    host = CgroupHost(PARENT, root, proc_root=proc)
    host.ensure(cpus=1.5, memory_bytes=512 * MIB, swap_bytes=64 * MIB)
    memory = root / "memory" / PARENT
    assert (memory / "memory.limit_in_bytes").read_text() == str(512 * MIB)
    assert (memory / "memory.memsw.limit_in_bytes").read_text() == str(576 * MIB)
    assert (root / "cpu" / PARENT / "cpu.cfs_quota_us").read_text() == "150000"
    host.ensure(cpus=None, memory_bytes=None)
    assert (root / "cpu" / PARENT / "cpu.cfs_quota_us").read_text() == "-1"
    assert (memory / "memory.limit_in_bytes").read_text() == "-1"


def test_remove_deletes_empty_tree_and_ancestors(tmp_path: Path, proc: Path) -> None:
    root = tmp_path / "cg"
    for controller in ("cpu", "cpuacct", "memory", "blkio", "pids"):
        (root / controller / PARENT / "c0ffee").mkdir(parents=True)
    # Hierarchies no limit is read from, where Docker's cgroupfs driver makes the paths too.
    for hierarchy in ("cpuset", "devices", "systemd"):
        (root / hierarchy / PARENT / "c0ffee").mkdir(parents=True)
    (root / "net_cls,net_prio" / PARENT).mkdir(parents=True)
    (root / "net_cls").symlink_to("net_cls,net_prio")
    (root / "cpu" / "dragon" / "other-lei").mkdir()
    CgroupHost(PARENT, root, proc_root=proc).remove()
    assert not (root / "memory" / "dragon").exists()
    assert not (root / "cpu" / PARENT).exists()
    assert [h for h in ("cpuset", "devices", "systemd", "net_cls,net_prio") if (root / h / "dragon").exists()] == []
    assert (root / "cpu" / "dragon" / "other-lei").is_dir()  # not ours: kept


def test_remove_tries_every_hierarchy_before_it_says_one_is_busy(tmp_path: Path, proc: Path) -> None:
    """One hierarchy still busy (a container someone else started in the host) must not leave the
    cgroups of the hierarchies after it."""
    root = tmp_path / "cg"
    for controller in ("blkio", "cpu", "cpuacct", "memory", "pids"):
        (root / controller / PARENT).mkdir(parents=True)
    (root / "cpu" / PARENT / "busy").write_text("")  # rmdir fails as on a cgroup with a process
    with pytest.raises(CgroupError):
        CgroupHost(PARENT, root, proc_root=proc).remove()
    assert [c for c in ("blkio", "cpuacct", "memory", "pids") if (root / c / PARENT).exists()] == []


# --- v2 -----------------------------------------------------------------------------------


def test_v2_usage_and_limits(tmp_path: Path, proc: Path) -> None:
    host = CgroupHost(PARENT, make_v2(tmp_path / "cg"), proc_root=proc, machine_cores=4)
    assert host.version == 2
    assert host.cpu_usage_ns() == 1_500_000_000
    assert host.cpu_capacity_cores() == pytest.approx(0.5)
    assert host.memory_usage_bytes() == 150 * MIB - 52428800
    assert host.memory_limit_bytes() == 256 * MIB
    assert host.swap_usage_bytes() == 4 * MIB
    assert host.swap_limit_bytes() == 2097148 * 1024  # "max": the machine's swap
    assert host.io_bytes() == (2097152 + 4096, 8388608)
    assert host.pids() == [101, 201, 202]


def test_v2_unlimited(tmp_path: Path, proc: Path) -> None:
    root = make_v2(tmp_path / "cg", cpu_max="max 100000", memory_max="max")
    host = CgroupHost(PARENT, root, proc_root=proc, machine_cores=3)
    assert host.cpu_capacity_cores() == 3
    assert host.memory_limit_bytes() == 24683520 * 1024


def test_v2_ensure_enables_controllers_down_the_chain(tmp_path: Path, proc: Path) -> None:
    root = tmp_path / "cg"
    write_files(root, {"cgroup.controllers": "cpuset cpu io memory pids\n", "cgroup.subtree_control": "cpu memory\n"})
    for path in ("dragon", "dragon/lei1", PARENT):
        write_files(root / path, {"cgroup.controllers": "cpu io memory pids\n", "cgroup.subtree_control": ""})
    host = CgroupHost(PARENT, root, proc_root=proc)
    host.ensure(cpus=0.25, memory_bytes=64 * MIB)
    # a real kernel merges "+x" writes into the set; the fixture keeps the last write
    assert (root / "cgroup.subtree_control").read_text() == "+io +pids"
    assert (root / "dragon/lei1" / "cgroup.subtree_control").read_text() == "+cpu +memory +io +pids"
    assert (root / PARENT / "cgroup.subtree_control").read_text() == "+cpu +memory +io +pids"
    assert (root / PARENT / "cpu.max").read_text() == "25000 100000"
    assert (root / PARENT / "memory.max").read_text() == str(64 * MIB)


# --- /proc/<pid>/io ---------------------------------------------------------------------


def _proc_pid(proc: Path, pid: int, ppid: int, read: int, write: int, started: int = 1000) -> None:
    write_files(
        proc / str(pid),
        {
            "io": f"rchar: 0\nwchar: 0\nread_bytes: {read}\nwrite_bytes: {write}\ncancelled_write_bytes: 0\n",
            "stat": f"{pid} (python3) S {ppid} {pid} {pid} 0 -1 4194560 0 0 0 0 3 1 0 0 20 0 1 0 {started} 1000 50",
        },
    )


def test_proc_io_counter_sums_growth_and_never_decreases(proc: Path) -> None:
    counter = ProcIoCounter(proc)
    _proc_pid(proc, 10, 1, read=1000, write=5000)
    _proc_pid(proc, 11, 10, read=0, write=100)
    assert counter.update([10, 11]) == (0, 0)  # the first update primes
    _proc_pid(proc, 10, 1, read=1500, write=5000)
    _proc_pid(proc, 11, 10, read=0, write=400)
    _proc_pid(proc, 12, 10, read=0, write=50)  # a new process counts in full
    assert counter.update([10, 11, 12]) == (500, 350)
    # 11 exits and 10 reaps it: the kernel adds 11's 400 bytes to 10's counters.
    (proc / "11" / "io").unlink()
    _proc_pid(proc, 10, 1, read=1500, write=5000 + 400 + 30)
    assert counter.update([10, 11, 12]) == (500, 350 + 30)
    # 12 exits without being reaped yet: nothing is lost or subtracted.
    (proc / "12" / "io").unlink()
    assert counter.update([10]) == (500, 380)


def test_proc_io_counter_counts_a_reparented_process_once_and_a_reused_pid_anew(proc: Path) -> None:
    """A daemon's double fork: its parent exits and it is reparented (its ppid changes), not new."""
    counter = ProcIoCounter(proc)
    _proc_pid(proc, 20, 10, read=0, write=5_000_000_000)
    assert counter.update([20]) == (0, 0)  # primes
    _proc_pid(proc, 20, 1, read=0, write=5_000_001_000)  # reparented to init, wrote 1000 more
    assert counter.update([20]) == (0, 1000)
    _proc_pid(proc, 20, 1, read=0, write=300, started=9000)  # the pid reused by a new process
    assert counter.update([20]) == (0, 1300)


def test_proc_io_counter_skips_unreadable(proc: Path) -> None:
    counter = ProcIoCounter(proc)
    assert counter.update([999]) == (0, 0)
