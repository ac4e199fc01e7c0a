"""Probes on fixture trees with a controlled clock; PsutilProbe on this machine; the
Poisson fault schedule; the workloads command line."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import docker.errors
import psutil
import pytest
import requests
import structlog
import structlog.testing

from dragon.collector.cgroups import CgroupHost
from dragon.collector.docker_api import unanswered
from dragon.collector.injector import PoissonFaults
from dragon.collector.probes import (
    CgroupProbe,
    HostContainers,
    PsutilProbe,
    _KeyedSum,
    create_probe,
    parse_net_dev,
)
from dragon.messages import codec
from dragon.messages.schemas import FAULT_KINDS, HOST_METRICS, HostMetrics, HostSample

pytestmark = pytest.mark.unit

MIB = 1024**2
PARENT = "dragon/lei1/h1"
TASK_ID = "a" * 64
HOG_ID = "b" * 64

NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    {lo}      10    0    0    0     0          0         0     {lo}      10    0    0    0     0       0          0
  eth0: {rx}    4000    0    0    0     0          0         0   {tx}    2000    0    0    0     0       0          0
"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def set_cgroup(root: Path, cgroup: str, *, cpu_ns: int, memory: int, quota: int = 50000) -> None:
    """One v1 cgroup: CPU time, memory in use (no page cache) and an 256 MiB limit."""
    write(root / "cpu" / cgroup / "cpu.cfs_quota_us", f"{quota}\n")
    write(root / "cpu" / cgroup / "cpu.cfs_period_us", "100000\n")
    write(root / "cpuacct" / cgroup / "cpuacct.usage", f"{cpu_ns}\n")
    write(root / "memory" / cgroup / "memory.usage_in_bytes", f"{memory}\n")
    write(root / "memory" / cgroup / "memory.limit_in_bytes", f"{256 * MIB}\n")
    write(root / "memory" / cgroup / "memory.stat", "total_inactive_file 0\n")


def set_blkio(root: Path, read: int, write_bytes: int) -> None:
    write(
        root / "blkio" / PARENT / "blkio.throttle.io_service_bytes_recursive",
        f"254:0 Read {read}\n254:0 Write {write_bytes}\n254:0 Total {read + write_bytes}\nTotal {read + write_bytes}\n",
    )


def set_net(proc: Path, pid: int, rx: int, tx: int) -> None:
    write(proc / str(pid) / "net" / "dev", NET_DEV.format(lo=99999, rx=rx, tx=tx))


def set_stat(proc: Path, pid: int, started: int) -> None:
    """/proc/<pid>/stat with the process's start time (field 22) and parent 1 (field 4)."""
    fields = ["S", "1", *["0"] * 17, str(started), "0"]
    write(proc / str(pid) / "stat", f"{pid} (python3 x) {' '.join(fields)}\n")


class FakeDocker:
    """Just what HostContainers uses: a filtered sparse list and inspect."""

    def __init__(self, containers: dict[str, dict[str, Any]]) -> None:
        self._attrs = containers
        self.containers = self
        self.api = self

    def list(self, sparse: bool = False, filters: dict[str, Any] | None = None, all: bool = False) -> list[Any]:
        wanted = dict(item.split("=", 1) for item in (filters or {}).get("label", []))
        return [
            type("Container", (), {"id": cid})()
            for cid, attrs in self._attrs.items()
            if wanted.items() <= attrs["Config"]["Labels"].items()
        ]

    def inspect_container(self, cid: str) -> dict[str, Any]:
        return self._attrs[cid]

    def add(self, cid: str, attrs: dict[str, Any]) -> None:
        self._attrs[cid] = attrs


def container_attrs(name: str, pid: int, labels: dict[str, str], started: float = 0.0) -> dict[str, Any]:
    return {
        "Name": f"/{name}",
        "State": {"Pid": pid, "StartedAt": stamp(started) if started else ""},
        "Config": {"Labels": {"dragon.host": "h1", "dragon.lei": "lei1", **labels}},
        "HostConfig": {"CgroupParent": f"/{PARENT}"},
    }


@pytest.fixture
def emulated(tmp_path: Path) -> tuple[Path, Path]:
    """A v1 host with one task container (pid 300) and one fault hog (pid 400)."""
    root, proc = tmp_path / "cg", tmp_path / "proc"
    for controller in ("cpu", "cpuacct", "memory", "blkio", "pids"):
        (root / controller).mkdir(parents=True)
    write(proc / "meminfo", "MemTotal:       24683520 kB\nSwapTotal:             0 kB\n")
    set_cgroup(root, PARENT, cpu_ns=10_000_000_000, memory=64 * MIB)
    set_cgroup(root, f"{PARENT}/{TASK_ID}", cpu_ns=1_000_000_000, memory=20 * MIB, quota=-1)
    set_blkio(root, 0, 1000)
    for pid, cid in ((300, TASK_ID), (400, HOG_ID)):
        lines = [
            f"{hid}:{controller}:/{PARENT}/{cid}" for hid, controller in ((4, "memory"), (2, "cpuacct"), (1, "cpu"))
        ]
        write(proc / str(pid) / "cgroup", "\n".join(lines) + "\n")
    set_net(proc, 300, rx=1000, tx=500)
    set_net(proc, 400, rx=0, tx=0)
    set_stat(proc, 300, started=5000)
    set_stat(proc, 400, started=6000)
    return root, proc


def fake_docker() -> FakeDocker:
    return FakeDocker(
        {
            TASK_ID: container_attrs("web-1", 300, {"dragon.task": "true", "dragon.task.id": "web"}),
            HOG_ID: container_attrs("hog-1", 400, {"dragon.fault": "true"}),
            "c" * 64: container_attrs("other-lei", 500, {"dragon.task": "true", "dragon.lei": "lei2"}),
        }
    )


# --- helpers --------------------------------------------------------------------------


def test_parse_net_dev_excludes_loopback() -> None:
    assert parse_net_dev(NET_DEV.format(lo=123, rx=5000000, tx=250000)) == (5000000, 250000)
    assert parse_net_dev(NET_DEV.format(lo=123, rx=1, tx=2), excluded=()) == (124, 125)


def test_keyed_sum_survives_containers_coming_and_going() -> None:
    total = _KeyedSum(2)
    assert total.update({"a": (100, 10)}, set()) == (0, 0)  # known from the start: from now on
    assert total.update({"a": (150, 20), "b": (5, 5)}, {"b"}) == (55, 15)  # b is new: counts in full
    assert total.update({"b": (6, 5)}, set()) == (56, 15)  # a left: what it added stays
    assert total.update({"b": (2, 1)}, set()) == (58, 16)  # b's counters went back: from zero


def test_keyed_sum_counts_a_container_it_first_sees_late_from_then_on() -> None:
    """A container that ran before the collector saw it (the first container list failed, say):
    its lifetime's bytes are not this interval's; counted, they were a spike of 25 GB/s."""
    total = _KeyedSum(2)
    assert total.update({}, set()) == (0, 0)  # no container: Docker did not answer
    assert total.update({"old": (50_000_000_000, 50_000_000_000)}, set()) == (0, 0)
    assert total.update({"old": (50_000_002_000, 50_000_001_000)}, set()) == (2000, 1000)
    assert total.update({"hog": (700, 300)}, {"hog"}) == (2700, 1300)  # started since a list: all new


def stamp(epoch: float) -> str:
    """Docker's StartedAt for ``epoch``."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def test_a_container_is_fresh_only_if_it_started_since_the_list_before_the_one_that_showed_it(
    emulated: tuple[Path, Path],
) -> None:
    """All of a fresh container's counters are new (a fault's hog, however late the list that
    shows it came); one that ran before it was listed counts from then on."""
    root, proc = emulated
    docker = FakeDocker({TASK_ID: container_attrs("web-1", 300, {"dragon.task": "true"}, started=time.time() - 3600)})
    containers = HostContainers(docker, "h1", lei="lei1", cgroup_root=root, proc_root=proc)
    containers.refresh()  # the first list: nothing in it is known to be new
    assert [c.fresh for c in containers.get()] == [False]
    set_net(proc, 600, rx=0, tx=0)
    set_stat(proc, 600, started=9000)
    set_net(proc, 700, rx=0, tx=0)
    set_stat(proc, 700, started=100)
    docker.add(HOG_ID, container_attrs("hog-1", 600, {"dragon.fault": "true"}, started=time.time()))
    docker.add("d" * 64, container_attrs("back", 700, {"dragon.task": "true"}, started=time.time() - 600))
    containers.refresh()
    assert {c.name: c.fresh for c in containers.get()} == {"web-1": False, "hog-1": True, "back": False}


def test_a_task_whose_id_no_message_may_carry_is_left_out_not_its_hosts_whole_sample(
    emulated: tuple[Path, Path],
) -> None:
    """Every reader refuses a sample with a task id over 256 characters: one such label (users set
    dragon.task.id) made the whole host look silent. The task alone is left out, said once."""
    root, proc = emulated
    docker = fake_docker()
    docker.add("d" * 64, container_attrs("long", 300, {"dragon.task": "true", "dragon.task.id": "x" * 300}))
    probe = CgroupProbe("h1", CgroupHost(PARENT, root, proc_root=proc), proc, docker, lei="lei1")
    with structlog.testing.capture_logs() as logs:
        probe.containers.refresh()
        probe.containers.refresh()
    probe.read(100.0)
    assert [task.id for task in probe.tasks()] == ["web"]
    sample = HostSample("lei1", "h1", 1.0, 1, 1.0, probe.read(102.0), probe.tasks())
    assert codec.decode(HostSample, codec.encode(sample), 65536) == sample
    assert [line["event"] for line in logs].count("task_left_out_id_too_long") == 1


def test_a_pid_taken_by_another_process_is_not_the_container(emulated: tuple[Path, Path]) -> None:
    """Between two lists (Docker slow to answer, say) a container's process may end and its pid go
    to another process: in the host's network namespace, that one's counters are the machine's."""
    root, proc = emulated
    probe = CgroupProbe("h1", CgroupHost(PARENT, root, proc_root=proc), proc, fake_docker(), lei="lei1")
    probe.containers.refresh()
    probe.read(100.0)
    set_stat(proc, 400, started=424242)  # the hog's pid, now another process's...
    set_net(proc, 400, rx=480_000_000_000, tx=0)  # ...which sees the whole machine's traffic
    set_net(proc, 300, rx=3000, tx=500)
    assert probe.read(102.0).net_rx == pytest.approx(1000)  # the task's 2000 bytes over 2 s, no more


# --- CgroupProbe ------------------------------------------------------------------------


def test_cgroup_probe_rates_from_two_reads(emulated: tuple[Path, Path]) -> None:
    root, proc = emulated
    cgroup = CgroupHost(PARENT, root, proc_root=proc, io_source="cgroup", machine_cores=2)
    probe = CgroupProbe("h1", cgroup, proc, fake_docker(), lei="lei1")
    probe.containers.refresh()  # the collector's Docker thread does this

    first = probe.read(100.0)
    assert (first.cpu, first.disk_write, first.net_rx, first.net_tx) == (0.0, 0.0, 0.0, 0.0)
    assert not probe.measured  # so the collector does not publish these zeros
    assert first.ram == pytest.approx(0.25)
    assert [t.id for t in probe.tasks()] == ["web"]  # the hog and the other LEI are not tasks here

    # 2 s later: the host used 0.4 s of CPU (0.2 cores of its 0.5), wrote 2 MB, and both
    # containers moved bytes (the hog's count for the host too).
    set_cgroup(root, PARENT, cpu_ns=10_400_000_000, memory=128 * MIB)
    set_cgroup(root, f"{PARENT}/{TASK_ID}", cpu_ns=1_100_000_000, memory=24 * MIB, quota=-1)
    set_blkio(root, 4096, 1000 + 2_000_000)
    set_net(proc, 300, rx=3000, tx=1500)
    set_net(proc, 400, rx=1000, tx=0)
    second = probe.read(102.0)
    assert probe.measured
    assert probe.ram_capacity_bytes == 256 * MIB  # the host's limit, which its ram is a fraction of

    assert second.cpu == pytest.approx(0.4)
    assert second.ram == pytest.approx(0.5)
    assert second.swap == 0.0
    assert second.disk_read == pytest.approx(2048)
    assert second.disk_write == pytest.approx(1_000_000)
    assert second.net_rx == pytest.approx(1500)
    assert second.net_tx == pytest.approx(500)
    (task,) = probe.tasks()
    assert (task.id, task.name) == ("web", "web-1")
    assert task.cpu == pytest.approx(0.1)  # 0.1 s over 2 s of a 0.5-core host
    assert task.ram_bytes == 24 * MIB


def test_cgroup_probe_without_docker(emulated: tuple[Path, Path]) -> None:
    root, proc = emulated
    probe = create_probe("cgroup", "h1", cgroup_parent=PARENT, cgroup_root=root, proc_root=proc)
    assert isinstance(probe, CgroupProbe)
    probe.read(10.0)
    set_cgroup(root, PARENT, cpu_ns=10_250_000_000, memory=64 * MIB)
    metrics = probe.read(11.0)
    assert metrics.cpu == pytest.approx(0.5)
    assert (metrics.net_rx, metrics.net_tx) == (0.0, 0.0)
    assert probe.tasks() == ()


def test_a_counter_that_went_down_starts_the_rates_over_rather_than_measure_zero(emulated: tuple[Path, Path]) -> None:
    """A cgroup made again counts from 0: that interval's CPU is unknown, not an idle host (which
    would hold the simulator's background of the host at 0 for hours)."""
    root, proc = emulated
    probe = create_probe("cgroup", "h1", cgroup_parent=PARENT, cgroup_root=root, proc_root=proc)
    probe.read(10.0)
    set_cgroup(root, PARENT, cpu_ns=10_250_000_000, memory=64 * MIB)
    assert probe.read(11.0).cpu == pytest.approx(0.5) and probe.measured
    set_cgroup(root, PARENT, cpu_ns=1_000_000, memory=64 * MIB)  # made again: its counters restart
    probe.read(12.0)
    assert not probe.measured
    set_cgroup(root, PARENT, cpu_ns=251_000_000, memory=64 * MIB)
    assert probe.read(13.0).cpu == pytest.approx(0.5) and probe.measured
    # One that goes down at two reads in a row keeps stepping back: the host is published all
    # the same, the counter's decrease as 0, or it would never be.
    set_cgroup(root, PARENT, cpu_ns=200_000_000, memory=64 * MIB)
    probe.read(14.0)
    assert not probe.measured
    set_cgroup(root, PARENT, cpu_ns=150_000_000, memory=64 * MIB)
    assert probe.read(15.0).cpu == 0.0 and probe.measured
    set_cgroup(root, PARENT, cpu_ns=400_000_000, memory=64 * MIB)
    assert probe.read(16.0).cpu == pytest.approx(0.5) and probe.measured


def test_a_clock_going_back_gives_zero_rates(emulated: tuple[Path, Path]) -> None:
    root, proc = emulated
    probe = CgroupProbe("h1", CgroupHost(PARENT, root, proc_root=proc, io_source="cgroup"), proc)
    probe.read(50.0)
    set_blkio(root, 0, 10_000)
    assert probe.read(49.0).disk_write == 0.0


# --- PsutilProbe ------------------------------------------------------------------------


def test_psutil_probe_on_this_machine() -> None:
    probe = PsutilProbe("this-machine", FakeDocker({}))
    first = probe.read(time.time())
    assert (first.cpu, first.disk_read, first.net_tx) == (0.0, 0.0, 0.0)
    sum(i * i for i in range(200_000))
    time.sleep(0.2)
    metrics = probe.read(time.time())
    assert isinstance(metrics, HostMetrics)
    for name in ("cpu", "ram", "swap"):
        assert 0.0 <= getattr(metrics, name) <= 1.0, metrics
    assert 0.0 < metrics.ram
    assert probe.ram_capacity_bytes == psutil.virtual_memory().total
    for name in HOST_METRICS[3:]:
        assert getattr(metrics, name) >= 0.0, metrics
    assert probe.tasks() == ()


def test_create_probe_registry(emulated: tuple[Path, Path]) -> None:
    root, proc = emulated
    assert isinstance(create_probe("psutil", "h1", lei="lei1", cgroup_root=root, proc_root=proc), PsutilProbe)
    # the cgroup of an emulated host follows from its LEI and name: dragon/<lei>/<host>
    probe = create_probe("cgroup", "h1", lei="lei1", cgroup_root=root, proc_root=proc)
    assert isinstance(probe, CgroupProbe) and probe.cgroup.parent == PARENT
    with pytest.raises(ValueError, match="cgroup, psutil"):
        create_probe("snmp", "h1")


# --- Poisson fault schedule -------------------------------------------------------------


def run_schedule(seed: int, hours: float, step_s: float = 30.0) -> list[tuple[str, Any]]:
    faults = PoissonFaults(12.0, FAULT_KINDS, ("h1", "h2"), (60.0, 300.0), random.Random(seed))
    out = []
    now = 1_000_000.0
    end = now + hours * 3600
    while now <= end:
        out.extend(faults.due(now))
        now += step_s
    return out


def test_poisson_rate_is_right_over_a_long_horizon() -> None:
    schedule = run_schedule(seed=1, hours=500)
    # 12 per hour across 2 hosts for 500 h: 6000 expected, standard deviation about 77.
    assert 5700 < len(schedule) < 6300
    hosts = [host for host, _ in schedule]
    assert abs(hosts.count("h1") - hosts.count("h2")) < 400
    assert {fault.kind for _, fault in schedule} == set(FAULT_KINDS)
    arrivals = [fault.ts for _, fault in schedule]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert sum(gaps) / len(gaps) == pytest.approx(300.0, rel=0.05)  # exponential, mean 3600 / 12
    assert all(60.0 <= fault.duration_s <= 300.0 and 0 < fault.intensity <= 1 for _, fault in schedule)
    assert len({fault.id for _, fault in schedule}) == len(schedule)
    for _, fault in schedule[:50]:
        fault.check()


def test_poisson_is_deterministic_with_a_seed() -> None:
    assert run_schedule(seed=7, hours=20) == run_schedule(seed=7, hours=20)
    assert run_schedule(seed=7, hours=20) != run_schedule(seed=8, hours=20)


def test_poisson_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        PoissonFaults(1.0, ("meteor",), ("h1",), (10, 20), random.Random(0))
    with pytest.raises(ValueError):
        PoissonFaults(0.0, ("cpu",), ("h1",), (10, 20), random.Random(0))


# --- workloads --------------------------------------------------------------------------


def test_workloads_help_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dragon.collector.workloads", "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    for kind in ("demo", "cpu", "memory", "disk", "flood"):
        assert kind in result.stdout


def test_workloads_cpu_ends_after_its_duration() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "dragon.collector.workloads", "cpu", "--duration", "0.5", "--intensity", "0.1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 10
    assert '"event": "cpu_stopped"' in result.stderr


def test_the_poisson_schedule_runs_on_the_monotonic_clock_and_stamps_with_the_wall_clock() -> None:
    """A Pi without a real-time clock steps its wall clock by months once NTP answers: arrivals drawn
    on it were walked one by one across the step (or stopped for as long, stepping back)."""
    faults = PoissonFaults(12.0, FAULT_KINDS, ("h1",), (60.0, 300.0), random.Random(3))
    wall_offset = 1_700_000_000.0
    faults.due(100.0, 100.0 + wall_offset)  # starts the clock
    out = []
    for mono in range(130, 3700, 30):  # an hour, stamped on a wall clock far from the monotonic one
        out.extend(faults.due(float(mono), mono + wall_offset))
    assert out and all(abs(fault.ts - (wall_offset + 1800)) < 1900 for _, fault in out)
    assert all(str(int(fault.ts)) in fault.id for _, fault in out)
    stepped = faults.due(3730.0, 3730.0 + wall_offset + 365 * 86400)  # NTP steps the wall clock a year on
    assert len(stepped) <= 2  # the arrivals of 30 s, not of the year skipped


def test_a_call_docker_refused_is_an_answer_and_one_it_left_hanging_is_not() -> None:
    """The SDK's APIError is a requests HTTPError too: taken for no answer, one refused removal
    (a 409: a removal already in progress) stopped the reaper and the stop, and hogs kept running
    in hosts being removed."""
    conflict = requests.Response()
    conflict.status_code = 409
    assert not unanswered(docker.errors.APIError("removal already in progress", response=conflict))
    assert not unanswered(docker.errors.NotFound("no such container"))
    assert unanswered(requests.exceptions.ReadTimeout("the daemon did not answer"))
    assert unanswered(requests.exceptions.ConnectionError("connection refused"))
