"""The collector's tick: one time stamp for a LEI's samples, rates over each probe's own reads."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from dragon import config
from dragon.collector import service
from dragon.collector.config import CollectorConfig
from dragon.collector.service import Collector
from dragon.messages.schemas import HostMetrics, HostSample

pytestmark = pytest.mark.unit

STALL_S = 0.3  # what a Docker call of one probe can take under load
GAP_S = 0.2


class ClockRateProbe:
    """A host whose counter is the wall clock: read over a true interval, its rate is 1.

    ``stall_s`` on the first read stands for a probe slow to read (a host under heavy I/O), which
    delays the probes read after it.
    """

    containers = None  # no Docker
    measured = False
    ram_capacity_bytes = 0.0

    def __init__(self, host: str, stall_s: float = 0.0) -> None:
        self.host = host
        self._stall_s = stall_s
        self._last: tuple[float, float] | None = None  # (now given, counter read)

    def read(self, now: float) -> HostMetrics:
        counter = time.monotonic()
        self.read_at = now
        rate = 0.0
        self.measured = self._last is not None
        if self._last is not None:
            rate = (counter - self._last[1]) / (now - self._last[0])
        self._last = (now, counter)
        time.sleep(self._stall_s)
        self._stall_s = 0.0
        return HostMetrics(cpu=min(rate, 4.0), ram=0.0, swap=0.0, disk_read=0, disk_write=0, net_rx=0, net_tx=0)

    def tasks(self) -> tuple:
        return ()


class Published:
    connected = True

    def __init__(self) -> None:
        self.samples: list[HostSample] = []

    def publish_message(self, topic: str, message: HostSample, **_options) -> None:
        self.samples.append(message)


def test_a_probe_delayed_by_the_one_before_still_measures_its_rates_over_its_own_interval() -> None:
    collector = Collector(config.load(CollectorConfig, {"DRAGON_COLLECTOR_HOSTS": "h1,h2"}))
    collector.probes = [ClockRateProbe("h1", stall_s=STALL_S), ClockRateProbe("h2")]
    collector.mqtt = published = Published()

    collector.sample_once()  # h1 stalls after its read: h2 is read STALL_S late; nothing measured yet
    assert published.samples == []
    time.sleep(GAP_S)
    collector.sample_once()  # no stall: h2 read on time, GAP_S after its late first read
    collector.sample_once()

    second, third = published.samples[:2], published.samples[2:]
    assert [s.host for s in second] == ["h1", "h2"]
    assert len({s.ts for s in second}) == 1 and len({s.ts for s in third}) == 1  # a tick's samples line up
    # Over the tick's times h2's rate would read GAP_S / (STALL_S + GAP_S) = 0.4.
    assert [s.metrics.cpu for s in second] == pytest.approx([1.0, 1.0], abs=0.05)


def test_nothing_is_published_before_a_rate_can_be_measured() -> None:
    """A rate needs two reads: the first sample after a start went out as a measured 0 (CPU, disk,
    network), and the simulator's background of the host, the least of its samples, stayed 0.
    So it was for a probe whose first read came later (one that failed at first)."""
    collector = Collector(
        config.load(CollectorConfig, {"DRAGON_COLLECTOR_HOSTS": "h1", "DRAGON_COLLECTOR_INTERVAL": "0.5"})
    )
    collector.probes = [ClockRateProbe("h1")]
    collector.mqtt = published = Published()
    sampling = threading.Thread(target=collector.sample_forever, daemon=True)
    sampling.start()
    time.sleep(1.3)
    collector.lifecycle.stop.set()
    sampling.join(timeout=5)
    assert published.samples, "nothing published"
    assert [s.metrics.cpu for s in published.samples] == pytest.approx([1.0] * len(published.samples), abs=0.05)


class VanishedCgroupProbe(ClockRateProbe):
    """A host whose cgroup is gone: every read fails."""

    def read(self, now: float) -> HostMetrics:
        raise FileNotFoundError("/sys/fs/cgroup/dragon/lei1/h1/cpu.stat")


def test_the_collector_is_healthy_only_while_its_hosts_are_read(tmp_path) -> None:
    """Every probe failing leaves the detector blind: the healthcheck must say so, not only the
    probe_errors counter. A read that measured no rates yet (the first, or after a counter reset)
    is no failure: counted as one, a one-host collector's healthcheck flapped at every reset."""
    health = tmp_path / "healthy"
    settings = {"DRAGON_COLLECTOR_HOSTS": "h1", "DRAGON_HEALTH_FILE": str(health)}
    collector = Collector(config.load(CollectorConfig, settings))
    collector.mqtt = Published()
    collector.probes = [VanishedCgroupProbe("h1")]
    collector.tick()
    assert not health.exists() and collector.counters.snapshot()["probe_errors"] == 1
    collector.probes = [ClockRateProbe("h1")]
    collector.tick()  # its first read: no rate yet, nothing goes out, but the host was read
    assert health.exists() and collector.mqtt.samples == []
    collector.tick()
    assert health.exists() and len(collector.mqtt.samples) == 1


def test_rates_are_measured_on_the_monotonic_clock_not_the_wall_clock() -> None:
    """An NTP step of the wall clock between two reads would multiply a rate, or zero it."""
    collector = Collector(config.load(CollectorConfig, {"DRAGON_COLLECTOR_HOSTS": "h1"}))
    collector.probes = [probe := ClockRateProbe("h1")]
    collector.mqtt = published = Published()
    collector.sample_once()  # the first read: no rate yet
    before = time.monotonic()
    collector.sample_once()
    assert before <= probe.read_at <= time.monotonic()
    assert abs(published.samples[0].ts - time.time()) < 5  # the sample's own time is the wall clock's


def test_emulated_hosts_refuse_a_docker_whose_cgroup_driver_cannot_place_them() -> None:
    """Under the systemd driver Docker refuses --cgroup-parent=/dragon/<lei>/<host> for every demo
    task and fault: the collector says so and what to do, instead of failing task by task."""
    from dragon.collector.emulation import EmulationUnsupported, require_cgroupfs_driver

    require_cgroupfs_driver({"CgroupDriver": "cgroupfs", "CgroupVersion": "1"})
    with pytest.raises(EmulationUnsupported, match=r"native.cgroupdriver=cgroupfs.*DRAGON_COLLECTOR_PROBE=psutil"):
        require_cgroupfs_driver({"CgroupDriver": "systemd", "CgroupVersion": "2"})


class FailingOnceList:
    """A host's container list whose first refresh fails as no Docker error would (a bug, a surprise)."""

    def __init__(self) -> None:
        self.refreshes = 0

    def refresh(self) -> None:
        self.refreshes += 1
        if self.refreshes == 1:
            raise KeyError("State")


def test_the_docker_thread_outlives_a_failure_of_one_pass(monkeypatch) -> None:
    """The thread that lists containers also reaps the fault hogs: dead, it would leave them running."""
    monkeypatch.setattr(service, "LIST_REFRESH_S", 0.05)
    collector = Collector(config.load(CollectorConfig, {"DRAGON_COLLECTOR_HOSTS": "h1"}))
    probe = ClockRateProbe("h1")
    probe.containers = listed = FailingOnceList()
    collector.probes = [probe]
    thread = threading.Thread(target=collector.docker_forever, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while listed.refreshes < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    collector.lifecycle.stop.set()
    thread.join(5)
    assert listed.refreshes >= 3 and not thread.is_alive()
    assert collector.counters.snapshot()["docker_errors"] == 1


def test_random_faults_are_drawn_on_the_monotonic_clock() -> None:
    """An NTP step of a Pi's wall clock must not fire (or stop) the arrivals of the span it skips."""
    collector = Collector(config.load(CollectorConfig, {"DRAGON_COLLECTOR_HOSTS": "h1"}))
    asked: list[tuple[float, float]] = []
    collector.injector = type("NoHogs", (), {"reap": lambda self, now: []})()
    collector.random_faults = type("Clock", (), {"due": lambda self, now, wall: asked.append((now, wall)) or []})()
    collector.config = dataclasses.replace(collector.config, random_fault_delay_s=0.0)
    collector.run_faults()
    ((now, wall),) = asked
    assert abs(now - time.monotonic()) < 5 and abs(wall - time.time()) < 5
