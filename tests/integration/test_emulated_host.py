"""An emulated host for real: a parent cgroup with 0.5 CPU, a demo task in it, and real
fault hogs started by FaultInjector, read through CgroupProbe.

Needs the Docker daemon, root (to write cgroups) and a local image with Python 3.11
(``dragon-collector:local``, else ``dragon-base:bookworm``). The test builds a throwaway
image on top of it holding this checkout's ``libs/dragon`` and removes it afterwards;
every container, cgroup and network it creates carries a per-run LEI name and is removed.
"""

from __future__ import annotations

import gc
import io
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dragon.collector import injector as injection
from dragon.collector.cgroups import DEFAULT_ROOT, CgroupError, CgroupHost, detect_version
from dragon.collector.emulation import EmulatedHostSpec, EmulatedLei
from dragon.collector.injector import FaultInjector
from dragon.collector.probes import CgroupProbe
from dragon.messages import codec
from dragon.messages.schemas import FaultInjection, HostMetrics, InjectionEvent
from dragon.testing.stalling_docker import StallingDocker

docker = pytest.importorskip("docker")

pytestmark = pytest.mark.integration

BASE_IMAGES = ("dragon-collector:local", "dragon-base:bookworm")
LIBS = Path(__file__).resolve().parents[2] / "libs" / "dragon"
HOST = EmulatedHostSpec("h1", cpus=0.5, memory_mb=256)
IDLE_HOST = EmulatedHostSpec("h2", cpus=0.25, memory_mb=128)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    if os.geteuid() != 0:
        pytest.skip("writing cgroup limits needs root")
    try:
        detect_version(DEFAULT_ROOT)
    except CgroupError as exc:
        pytest.skip(f"no cgroup hierarchy: {exc}")
    error = ""
    try:
        docker_client = docker.from_env()
        docker_client.ping()
    except Exception as exc:  # DockerException, or requests' ConnectionError
        error = str(exc)
    if error:
        # docker-py leaves the socket of its failed version probe open: collect it now, with
        # its expected ResourceWarning silenced, rather than let it fail an unrelated test.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        pytest.skip(f"no Docker daemon reachable: {error}")
    yield docker_client
    docker_client.close()


@pytest.fixture(scope="module")
def image(client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway image: a local base plus this checkout's package on PYTHONPATH."""
    base = next((name for name in BASE_IMAGES if client.images.list(name=name)), None)
    if base is None:
        pytest.skip(f"none of the local base images {BASE_IMAGES} exists (build them first)")
    context = tmp_path_factory.mktemp("image")
    shutil.copytree(LIBS, context / "dragon", ignore=shutil.ignore_patterns("__pycache__"))
    (context / "Dockerfile").write_text(
        f"FROM {base}\nCOPY dragon /opt/dragon-src/dragon\nENV PYTHONPATH=/opt/dragon-src\n"
    )
    tag = f"dragon-collector-test:{uuid.uuid4().hex[:12]}"
    client.images.build(path=str(context), tag=tag, rm=True, forcerm=True, labels={"dragon.test": "true"})
    try:
        yield tag
    finally:
        client.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def lei(client: Any, image: str) -> Iterator[EmulatedLei]:
    name = f"it{uuid.uuid4().hex[:8]}"
    emulated = EmulatedLei(client, name, image=image, network=f"dragon-{name}")
    try:
        yield emulated
    finally:
        emulated.remove_all()


@pytest.fixture(scope="module")
def host(lei: EmulatedLei) -> CgroupHost:
    cgroup = lei.ensure_host(HOST)
    (task,) = lei.ensure_demo_tasks(HOST, 1)
    task.reload()
    ip = next(iter(task.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
    wait_for_http(f"http://{ip}:8080/")
    return cgroup


@pytest.fixture(scope="module")
def injector(client: Any, lei: EmulatedLei, image: str, host: CgroupHost) -> Iterator[FaultInjector]:
    hosts = {HOST.name: host, IDLE_HOST.name: lei.ensure_host(IDLE_HOST)}
    fault_injector = FaultInjector(client, lei.lei, image, hosts, max_per_host=2)
    try:
        yield fault_injector
    finally:
        fault_injector.stop_all()


@pytest.fixture
def probe(client: Any, lei: EmulatedLei, host: CgroupHost) -> CgroupProbe:
    return CgroupProbe(HOST.name, host, "/proc", client, lei=lei.lei)


def wait_for_http(url: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def measure(probe: CgroupProbe, seconds: float) -> HostMetrics:
    probe.containers.refresh()  # as the collector's Docker thread does: the hogs and tasks started since
    probe.read(time.time())
    time.sleep(seconds)
    return probe.read(time.time())


def wait_for_end(injector: FaultInjector, fault_id: str, timeout_s: float = 20.0) -> InjectionEvent:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for event in injector.reap():
            if event.id == fault_id:
                return event
        time.sleep(0.25)
    raise AssertionError(f"fault {fault_id} was not reaped within {timeout_s} s")


def start(injector: FaultInjector, fault_id: str, kind: str, duration_s: float, host: str = HOST.name) -> None:
    event = injector.inject(host, FaultInjection(id=fault_id, kind=kind, duration_s=duration_s))
    assert event.status == "started", event.reason
    assert event.ends_at == pytest.approx(event.ts + duration_s)


# --- tests ------------------------------------------------------------------------------


def test_docker_puts_task_containers_under_the_host_cgroup(client: Any, lei: EmulatedLei, host: CgroupHost) -> None:
    (task,) = lei.ensure_demo_tasks(HOST, 1)  # idempotent: the same container again
    task.reload()
    pid = task.attrs["State"]["Pid"]
    expected = f"/dragon/{lei.lei}/{HOST.name}/{task.id}"
    assert expected in Path(f"/proc/{pid}/cgroup").read_text()
    assert pid in host.pids()
    assert host.cpu_capacity_cores() == pytest.approx(0.5)
    assert host.memory_limit_bytes() == 256 * 1024 * 1024


def test_cpu_fault_fills_the_host_and_the_quota_caps_it(injector: FaultInjector, probe: CgroupProbe) -> None:
    idle = measure(probe, 2.0)
    assert idle.cpu < 0.3
    assert [task.name for task in probe.tasks()] == [f"dragon-{injector.lei}-h1-demo0"]

    fault_id = f"{injector.lei}-cpu"
    start(injector, fault_id, "cpu", duration_s=5)
    time.sleep(1.0)  # container start
    loaded = measure(probe, 2.0)
    # Two busy processes on a 2-core machine, held to the host's 0.5 core.
    assert 0.8 <= loaded.cpu <= 1.1
    assert probe.tasks()[0].cpu < 0.3  # the hog is not a task

    event = wait_for_end(injector, fault_id)
    assert (event.status, event.kind, event.host) == ("finished", "cpu", HOST.name)


def test_memory_fault_raises_ram(injector: FaultInjector, probe: CgroupProbe) -> None:
    before = measure(probe, 0.5).ram
    fault_id = f"{injector.lei}-memory"
    start(injector, fault_id, "memory", duration_s=4)
    time.sleep(2.5)  # start, then a ramp of about 160 MB/s
    during = probe.read(time.time()).ram
    assert during >= before + 0.3
    assert during <= 1.0
    assert wait_for_end(injector, fault_id).status == "finished"


def test_disk_fault_raises_disk_write(injector: FaultInjector, probe: CgroupProbe) -> None:
    before = measure(probe, 0.5).disk_write
    fault_id = f"{injector.lei}-disk"
    start(injector, fault_id, "disk", duration_s=4)
    time.sleep(1.0)
    during = measure(probe, 1.5).disk_write
    assert during > max(5e6, 10 * before)
    assert wait_for_end(injector, fault_id).status == "finished"


def test_flood_raises_network_of_the_host(injector: FaultInjector, probe: CgroupProbe) -> None:
    before = measure(probe, 1.0)
    fault_id = f"{injector.lei}-flood"
    start(injector, fault_id, "flood", duration_s=4)
    time.sleep(1.0)
    during = measure(probe, 1.5)
    for name in ("net_rx", "net_tx"):
        assert getattr(during, name) > max(1e5, 10 * getattr(before, name)), name
    assert wait_for_end(injector, fault_id).status == "finished"


def test_injector_refuses_and_reports_failures(client: Any, lei: EmulatedLei, injector: FaultInjector) -> None:
    # Built from host names, as the collector service does: dragon/<lei>/<host> under /sys/fs/cgroup.
    injector = FaultInjector(client, lei.lei, injector.image, [HOST.name, IDLE_HOST.name], max_per_host=2)

    def inject(host: str, fault_id: str, kind: str = "cpu") -> InjectionEvent:
        return injector.inject(host, FaultInjection(id=fault_id, kind=kind, duration_s=20, intensity=0.1))

    assert inject("nowhere", "x1").reason.startswith("unknown host")
    # A command that waited (the broker kept it while the collector was away) starts nothing.
    late = FaultInjection(id="x0", kind="cpu", duration_s=20, intensity=0.1, ts=time.time() - 61)
    stale = injector.inject(IDLE_HOST.name, late)
    assert stale.status == "rejected" and re.search(r"\b6\d s old", stale.reason), stale
    # A fault the random mode drew a minute ago, started late by a stalled loop, was never queued:
    # its age is not held against it (here it fails on the host, checked next).
    drawn = injector.inject("nowhere", late, queued=False)
    assert drawn.status == "rejected" and drawn.reason.startswith("unknown host"), drawn
    flood = inject(IDLE_HOST.name, "x2", kind="flood")
    assert flood.status == "rejected"
    assert flood.reason == f"no running task with an IP address on host {IDLE_HOST.name!r} to flood"

    first = f"{injector.lei}-a"
    assert inject(IDLE_HOST.name, first).status == "started"
    assert inject(IDLE_HOST.name, first).reason == f"fault {first!r} is still running"
    assert inject(IDLE_HOST.name, f"{injector.lei}-b").status == "started"
    crowded = inject(IDLE_HOST.name, f"{injector.lei}-c")
    assert crowded.status == "rejected"
    assert crowded.reason == f"host {IDLE_HOST.name!r} already runs 2 faults (at most 2)"
    assert sorted(injector.running(IDLE_HOST.name)) == [first, f"{injector.lei}-b"]

    # A hog killed from outside is a failed fault.
    client.containers.get(f"dragon-{injector.lei}-fault-{first}").kill()
    failed = wait_for_end(injector, first)
    assert (failed.status, failed.reason) == ("failed", "exit code 137")

    stopped = injector.stop_all()
    assert [(e.id, e.status) for e in stopped] == [(f"{injector.lei}-b", "finished")]
    assert injector.running() == []

    # Docker's error, longer than a message string may be, still reaches every reader, cut.
    missing = FaultInjector(client, lei.lei, "dragon-no-such-image-" + "x" * 150, [IDLE_HOST.name])
    unreadable = missing.inject(IDLE_HOST.name, FaultInjection(id="x3", kind="cpu", duration_s=20, intensity=0.1))
    assert unreadable.status == "failed" and unreadable.reason.startswith("docker: "), unreadable
    assert codec.decode(InjectionEvent, codec.encode(unreadable), 65536) == unreadable


@pytest.fixture
def image_without_python(client: Any) -> Iterator[str]:
    """An image Docker can create a hog from but not start one in (no python3): a failed start."""
    tag = f"dragon-test-no-python-{uuid.uuid4().hex[:8]}:local"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, text in (("Dockerfile", b"FROM scratch\nCOPY marker /marker\n"), ("marker", b"x\n")):
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    context.seek(0)
    client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True)
    try:
        yield tag
    finally:
        client.images.remove(tag, force=True)


def test_a_hog_that_cannot_start_leaves_nothing_that_blocks_the_host(
    client: Any, lei: EmulatedLei, injector: FaultInjector, image_without_python: str
) -> None:
    """Docker creates a hog, then starts it: a failed start must not leave a "created" hog, which
    counted as a running fault, so two failures refused every later injection on the host."""
    broken = FaultInjector(client, lei.lei, image_without_python, [IDLE_HOST.name], max_per_host=2)
    for n in range(3):
        fault = FaultInjection(id=f"{lei.lei}-broken-{n}", kind="cpu", duration_s=20, intensity=0.1)
        failed = broken.inject(IDLE_HOST.name, fault)
        assert failed.status == "failed" and "unable to start" in failed.reason, failed
    labels = [f"{injection.FAULT_LABEL}=true", f"{injection.LEI_LABEL}={lei.lei}"]
    assert client.containers.list(all=True, filters={"label": labels}) == []
    # One a collector left "created" (killed between Docker's create and start) is reaped as failed.
    now = time.time()
    left = client.containers.create(
        image_without_python,
        ["python3"],
        name=f"dragon-{lei.lei}-fault-left",
        labels={
            injection.FAULT_LABEL: "true",
            injection.FAULT_ID_LABEL: "left",
            injection.LEI_LABEL: lei.lei,
            injection.HOST_LABEL: IDLE_HOST.name,
            injection.STARTED_LABEL: repr(now),
            injection.ENDS_LABEL: repr(now + 20),
        },
    )
    assert broken.reap(now + 1) == []  # being started, for all the reaper knows
    (reaped,) = broken.reap(now + injection.NEVER_STARTED_AFTER_S + 1)
    assert (reaped.id, reaped.status, reaped.reason) == ("left", "failed", "never started")
    with pytest.raises(docker.errors.NotFound):
        left.reload()


def test_a_fault_whose_hog_name_is_taken_fails_without_touching_the_hog_that_has_it(
    client: Any, lei: EmulatedLei, injector: FaultInjector
) -> None:
    """Ids that differ only in characters a container name cannot hold name the same hog: the
    second is refused by Docker, and its clean-up must not remove the first fault's hog."""
    first = FaultInjection(id=f"{lei.lei} name", kind="cpu", duration_s=20, intensity=0.1)
    second = FaultInjection(id=f"{lei.lei}-name", kind="cpu", duration_s=20, intensity=0.1)
    try:
        assert injector.inject(IDLE_HOST.name, first).status == "started"
        clash = injector.inject(IDLE_HOST.name, second)
        assert clash.status == "failed" and "409" in clash.reason, clash
        assert injector.running(IDLE_HOST.name) == [first.id]
    finally:
        injector.stop_all()


def test_removing_a_lei_stops_calling_a_daemon_that_does_not_answer(client: Any, image: str) -> None:
    """At ``compose down`` the collector removes its LEI within the stop's grace period: once the
    daemon leaves a removal unanswered, the next calls would wait as long, so it stops calling,
    removes what needs no Docker, and returns instead of raising (the shutdown's MQTT goodbye
    comes after it)."""
    name = f"it{uuid.uuid4().hex[:8]}"
    # A short directory: a Unix socket's path holds at most 107 bytes.
    with tempfile.TemporaryDirectory(prefix="dragon-") as short, StallingDocker(Path(short)) as daemon:
        slow = docker.DockerClient(base_url=daemon.url, timeout=2)
        emulated = EmulatedLei(slow, name, image=image, network=f"dragon-{name}")
        try:
            emulated.ensure_host(IDLE_HOST)
            assert len(emulated.ensure_demo_tasks(IDLE_HOST, 2)) == 2
            daemon.stall("DELETE ")
            emulated.remove_all()  # the first removal times out, and it returns
            assert daemon.held == 1  # not the second task's nor the network's: each would wait 2 s more
        finally:
            daemon.resume()  # the held removal reaches the daemon now: let it finish first
            slow.close()
            deadline = time.monotonic() + 20
            while len(client.containers.list(all=True, filters={"label": f"dragon.lei={name}"})) > 1:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            EmulatedLei(client, name, image=image, network=f"dragon-{name}").remove_all()


def test_a_stopped_injector_starts_no_fault(client: Any, lei: EmulatedLei, image: str, host: CgroupHost) -> None:
    """A command the MQTT worker took, or a random fault the Docker thread drew, just as the
    collector stops would start a hog after the stop removed them all, in a host about to go."""
    stopping = FaultInjector(client, lei.lei, image, {HOST.name: host})
    stopping.stop_all()
    fault = FaultInjection(id=f"{lei.lei}-late", kind="cpu", duration_s=5, intensity=0.1)
    event = stopping.inject(HOST.name, fault)
    assert (event.status, event.reason) == ("rejected", "the collector is stopping")
    labels = [f"{injection.FAULT_ID_LABEL}={fault.id}", f"{injection.LEI_LABEL}={lei.lei}"]
    assert client.containers.list(all=True, filters={"label": labels}) == []


def test_a_hog_overruns_by_the_time_it_ran_not_by_the_wall_clock(
    client: Any, lei: EmulatedLei, image: str, host: CgroupHost
) -> None:
    """A clock stepped forward (NTP) past a fault's end killed its hog early, reported failed.
    How long a hog ran is told by the monotonic clock, by a restarted collector's too, which
    kills a hog that really ran past its end and the overrun."""
    ticks = {"started": 0.0, "restarted": 0.0}
    hosts = {HOST.name: host}
    started = FaultInjector(client, lei.lei, image, hosts, overrun_s=5, monotonic=lambda: ticks["started"])
    restarted = FaultInjector(client, lei.lei, image, hosts, overrun_s=5, monotonic=lambda: ticks["restarted"])
    fault = FaultInjection(id=f"{lei.lei}-overrun", kind="cpu", duration_s=60, intensity=0.1)
    assert started.inject(HOST.name, fault).status == "started"
    try:
        a_year_on = time.time() + 365 * 86400
        assert started.reap(a_year_on) == []
        assert restarted.reap() == []  # the hog an earlier run started: its labels say 60 s are left
        assert started.running(HOST.name) == [fault.id]
        ticks["restarted"] = 60 + 5 + 1  # it ran past its end and the overrun
        (killed,) = restarted.reap()
        assert (killed.id, killed.status, killed.reason) == (fault.id, "failed", "still running long after its end")
        # One an earlier run started, first seen past its end and the overrun, is killed at once.
        late = FaultInjection(id=f"{lei.lei}-overrun-late", kind="cpu", duration_s=60, intensity=0.1)
        assert started.inject(HOST.name, late).status == "started"
        found_late = FaultInjector(client, lei.lei, image, hosts, overrun_s=5, monotonic=lambda: 0.0)
        (killed,) = found_late.reap(time.time() + 60 + 5 + 1)
        assert (killed.id, killed.reason) == (late.id, "still running long after its end")
    finally:
        started.stop_all()


def test_a_hog_docker_does_not_remove_is_reported_once_and_the_daemon_called_once_per_reap(
    client: Any, lei: EmulatedLei, image: str, host: CgroupHost
) -> None:
    """A hog whose removal failed was reported ended again at every reap (every interval), and
    a daemon that left a removal unanswered was called once per hog, each call as long: at the
    stop, past the stop's grace period."""
    faults = [FaultInjection(id=f"{lei.lei}-unremoved-{n}", kind="cpu", duration_s=1, intensity=0.1) for n in range(2)]
    labels = [f"{injection.FAULT_LABEL}=true", f"{injection.LEI_LABEL}={lei.lei}"]
    # A short directory: a Unix socket's path holds at most 107 bytes.
    with tempfile.TemporaryDirectory(prefix="dragon-") as short, StallingDocker(Path(short)) as daemon:
        slow = docker.DockerClient(base_url=daemon.url, timeout=2)
        hung_on_removals = FaultInjector(slow, lei.lei, image, {HOST.name: host}, max_per_host=2)
        try:
            for fault in faults:
                assert hung_on_removals.inject(HOST.name, fault).status == "started"
            deadline = time.monotonic() + 20
            while any(hog.status != "exited" for hog in client.containers.list(all=True, filters={"label": labels})):
                assert time.monotonic() < deadline, "the hogs did not end"
                time.sleep(0.2)
            daemon.stall("DELETE ")
            reported = [event for _ in range(3) for event in hung_on_removals.reap()]
            assert daemon.held == 3  # one removal per reap, not one per hog
            assert len({event.id for event in reported}) == len(reported)  # none reported twice
        finally:
            daemon.resume()
            slow.close()
    deadline = time.monotonic() + 20
    reported_ids = {event.id for event in reported}
    while any(_hog_fault(hog) in reported_ids for hog in client.containers.list(all=True, filters={"label": labels})):
        assert time.monotonic() < deadline, "the held removals did not reach the daemon"
        time.sleep(0.2)
    rest = FaultInjector(client, lei.lei, image, {HOST.name: host}).reap()
    assert sorted(event.id for event in reported + rest) == sorted(fault.id for fault in faults)
    assert {event.status for event in reported + rest} == {"finished"}
    assert client.containers.list(all=True, filters={"label": labels}) == []


def _hog_fault(hog: Any) -> str:
    return (hog.labels or {}).get(injection.FAULT_ID_LABEL, "")
