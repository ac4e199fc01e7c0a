"""The collector service: sample hosts every interval, publish samples, run injected faults.

One collector samples the hosts it is configured with: the machine it runs on
(``psutil`` probe) or a set of emulated hosts on this machine (``cgroup`` probe,
one parent cgroup per host). For emulated hosts it also creates the hosts, starts
their demo tasks and accepts fault-injection commands for them.

Two threads keep time: the sampling thread reads the hosts and publishes, and never calls
Docker; the Docker thread refreshes each host's container list and reaps and draws faults. A
slow or hung Docker daemon (an SD card at its limit, a daemon restart) makes the task lists and
the fault reports late, not the samples the detector judges every host by.
"""

from __future__ import annotations

import random
import threading
import time

import docker
import structlog

from dragon.collector.config import CollectorConfig
from dragon.collector.emulation import EmulatedHostSpec, EmulatedLei, EmulationUnsupported, require_cgroupfs_driver
from dragon.collector.injector import FaultInjector, PoissonFaults
from dragon.collector.probes import LIST_REFRESH_S, Probe, create_probe
from dragon.messages import topics
from dragon.messages.codec import DecodeError
from dragon.messages.schemas import FAULT_KINDS, FaultInjection, HostSample, InjectionEvent
from dragon.mqtt import Counters, Incoming, MqttClient
from dragon.service.lifecycle import Lifecycle

log = structlog.get_logger(__name__)

SERVICE = "collector"
# The stop has 30 s (compose's stop_grace_period) for its Docker calls and the MQTT goodbye: a
# Docker call in flight gets this long to end, and each call of the stop this long to answer.
DOCKER_THREAD_JOIN_S = 3.0
STOP_CALL_S = 5.0


class Collector:
    def __init__(self, config: CollectorConfig) -> None:
        self.config = config
        self.lei = config.common.service.lei
        self.instance = config.common.service.instance_id
        self.lifecycle = Lifecycle(config.common.service.health_file)
        self.counters = Counters()
        self.injector: FaultInjector | None = None
        self.random_faults: PoissonFaults | None = None
        self._seq = 0
        self._started = time.monotonic()
        self.docker: docker.DockerClient | None = None
        self.emulation: EmulatedLei | None = None
        self._docker_thread: threading.Thread | None = None
        self._listed = threading.Event()  # the Docker thread's first pass is done

    # --- lifecycle --------------------------------------------------------------
    def run(self) -> None:
        self.lifecycle.install_signal_handlers()
        self.start()
        try:
            self.sample_forever()
        finally:
            self.shutdown()

    def start(self) -> None:
        """Everything but the sampling loop: hosts, probes, injector, broker and the Docker thread."""
        self.init_docker()
        try:
            self.init_hosts()
        except EmulationUnsupported as exc:
            log.error("emulation_unsupported", error=str(exc))
            raise SystemExit(2) from None
        self.init_probes()
        self.init_injector()
        self.init_mqtt()
        self.start_mqtt()
        self.start_docker_thread()

    def init_docker(self) -> None:
        # Per-task usage and emulated hosts need the Docker API; a real host without
        # Docker still gets its host metrics.
        try:
            self.docker = docker.from_env()
            self.docker.ping()
        except docker.errors.DockerException as exc:
            if self.config.emulated:
                raise
            log.warning("docker_unavailable_no_task_metrics", error=str(exc))
            self.docker = None

    def init_hosts(self) -> None:
        self.emulation = None
        if not (self.config.emulated and self.config.emulate):
            return
        require_cgroupfs_driver(self.docker.info())
        self.emulation = EmulatedLei(
            self.docker, self.lei, self.config.cgroup_root, self.config.task_image, self.config.task_network or None
        )
        for host in self.config.hosts:
            spec = EmulatedHostSpec(host, self.config.host_cpus, self.config.host_memory_mb)
            self.emulation.ensure_host(spec)
            self.emulation.ensure_demo_tasks(spec, self.config.demo_tasks)

    def init_probes(self) -> None:
        self.probes: list[Probe] = [
            create_probe(
                self.config.probe,
                host=host,
                lei=self.lei,
                cgroup_root=self.config.cgroup_root,
                proc_root=self.config.proc_root,
                docker_client=self.docker,
            )
            for host in self.config.hosts
        ]

    def init_injector(self) -> None:
        if not (self.config.emulated and self.config.injector):
            return
        self.injector = FaultInjector(
            self.docker,
            self.lei,
            self.config.task_image,
            hosts=list(self.config.hosts),
            cgroup_root=self.config.cgroup_root,
        )
        if self.config.random_faults_per_hour > 0:
            self.random_faults = PoissonFaults(
                self.config.random_faults_per_hour,
                FAULT_KINDS,
                list(self.config.hosts),
                (self.config.random_fault_duration_s, self.config.random_fault_duration_s),
                random.Random(self.config.random_fault_seed),
            )

    def init_mqtt(self) -> None:
        self.mqtt = MqttClient(self.config.common.mqtt, SERVICE, self.instance, self.counters)
        # What versions before 2026-12-07 subscribed, injector or not: resumed, their session would
        # deliver each command twice, and hold a subscriber for every host.
        self.mqtt.retire(topics.inject(self.lei, "+"))
        if self.injector is not None:
            # Each host's own topic, not inject/+: a command for a host no collector emulates (a
            # typo) then has no subscriber, which the broker tells its sender at once.
            for host in self.config.hosts:
                self.mqtt.subscribe(topics.inject(self.lei, host), self.on_inject, qos=1)

    def start_mqtt(self) -> None:
        self.mqtt.start()

    def start_docker_thread(self) -> None:
        if self.docker is None:
            return
        self._docker_thread = threading.Thread(target=self.docker_forever, name="collector-docker", daemon=True)
        self._docker_thread.start()

    def shutdown(self) -> None:
        log.info("collector_stopping", counters=self.counters.snapshot())
        self.lifecycle.stop.set()
        self.lifecycle.clear()
        if self.docker is not None:
            self.docker.api.timeout = STOP_CALL_S  # the SDK's 60 s per call would outlast the grace period
        if self._docker_thread is not None:
            # A reap in flight and stop_all below would race over the same hogs; a hung daemon
            # answers neither, and the hogs are then left to the next start's reaper.
            self._docker_thread.join(DOCKER_THREAD_JOIN_S)
            if self._docker_thread.is_alive():
                log.warning("docker_thread_not_stopping", waited_s=DOCKER_THREAD_JOIN_S)
        try:
            if self.injector is not None:
                for event in self.injector.stop_all():
                    self._publish_injection(event)
            if self.emulation is not None:
                # Emulated hosts belong to this collector: a clean stop (compose down) takes
                # their task containers and cgroups with it; a crash leaves them to be found again.
                self.emulation.remove_all()
        finally:
            self.mqtt.stop()  # the retained "offline" and the session's last acknowledgements

    # --- sampling -------------------------------------------------------------------
    def sample_forever(self) -> None:
        interval = self.config.interval_s
        if self._docker_thread is not None:
            # The first samples should name the tasks already running; a daemon slow to list
            # them delays the samples one interval at most.
            self._listed.wait(interval)
        next_tick = time.monotonic()
        while not self.lifecycle.stop.is_set():
            self.tick()
            next_tick += interval
            # If a tick overran (a slow probe), skip ahead rather than burst.
            next_tick = max(next_tick, time.monotonic())
            self.lifecycle.stop.wait(max(0.0, next_tick - time.monotonic()))

    def tick(self) -> None:
        read = self.sample_once()
        # Healthy only while hosts are read: every probe failing (a host's cgroup gone, io.stat
        # missing) leaves the LEI's detector blind, whatever the broker connection says. A read
        # that measured no rates yet (the first, or after a counter reset) is not a failure.
        self.lifecycle.healthy(self.mqtt.connected and (read > 0 or not self.probes))

    def sample_once(self) -> int:
        """Sample every host once and publish what measured its rates; the number of hosts read."""
        now = time.time()  # one time stamp per tick: a LEI's samples of a tick line up
        self._seq += 1
        read = 0
        for probe in self.probes:
            try:
                # Rates over each probe's own read times: a probe slow to read (cgroup and /proc
                # files under heavy I/O) delays the probes after it, and the tick's time would
                # stretch their interval by that delay, then shrink the next one by as much. On
                # the monotonic clock: an NTP step of the wall clock would multiply a rate, or zero it.
                metrics = probe.read(time.monotonic())
                tasks = probe.tasks()
                read += 1
                if not probe.measured:
                    # A rate needs two reads: the first went out as a measured 0 of CPU, disk and
                    # network, and held the simulator's background of the host at 0 for hundreds
                    # of samples. The host's first sample comes an interval later.
                    continue
            except Exception:
                # A vanished cgroup must not stop the other hosts.
                self.counters.add("probe_errors")
                log.exception("probe_failed", host=probe.host)
                continue
            sample = HostSample(
                lei=self.lei,
                host=probe.host,
                ts=now,
                seq=self._seq,
                interval_s=self.config.interval_s,
                metrics=metrics,
                tasks=tasks,
                ram_capacity_bytes=probe.ram_capacity_bytes,
            )
            self.mqtt.publish_message(topics.host_sample(self.lei, probe.host), sample)
            self.counters.add("samples_published")
        return read

    # --- Docker: container lists and faults -----------------------------------------
    def docker_forever(self) -> None:
        """Refresh the container lists every ``LIST_REFRESH_S`` and run the faults every interval."""
        lists_due = faults_due = time.monotonic()
        while not self.lifecycle.stop.is_set():
            now = time.monotonic()
            try:
                if now >= lists_due:
                    lists_due = now + LIST_REFRESH_S
                    self.refresh_containers()
                    self._listed.set()
                # A list may have taken long: the stop may have begun, and cleared the faults.
                if now >= faults_due and not self.lifecycle.stop.is_set():
                    faults_due = now + self.config.interval_s
                    self.run_faults()
            except Exception:
                # This thread must outlive any one failure: a reaper that died leaves every hog running.
                self.counters.add("docker_errors")
                log.exception("docker_thread_failed")
            self.lifecycle.stop.wait(max(0.0, min(lists_due, faults_due) - time.monotonic()))

    def refresh_containers(self) -> None:
        for probe in self.probes:
            if probe.containers is not None and not self.lifecycle.stop.is_set():
                probe.containers.refresh()

    def run_faults(self) -> None:
        if self.injector is None:
            return
        now = time.time()
        for event in self.injector.reap(now):
            self._publish_injection(event)
        quiet = time.monotonic() - self._started < self.config.random_fault_delay_s
        if self.random_faults is not None and not quiet:
            for host, command in self.random_faults.due(time.monotonic(), now):
                # Stamped when it was drawn; a stalled loop may start it late, never too late.
                self._publish_injection(self.injector.inject(host, command, queued=False))

    def on_inject(self, message: Incoming) -> None:
        host = topics.host_of(message.topic)  # one of ours: only their topics are routed here
        if message.retain:
            # The broker hands a retained command to every (re)subscription: the fault would
            # start again at each reconnect (an unstamped one at any age).
            self.mqtt.drop(message, DecodeError("retained", "a fault injection must not be retained"))
            return
        if self.lifecycle.stop.is_set():
            # Stopping: the hogs were stopped and the hosts' cgroups may be gone already.
            self.mqtt.drop(message, DecodeError("stopping", "the collector is stopping"))
            return
        command = self.mqtt.decode_or_drop(FaultInjection, message)
        if command is not None:
            self._publish_injection(self.injector.inject(host, command))

    def _publish_injection(self, event: InjectionEvent) -> None:
        self.mqtt.publish_message(topics.injections(self.lei), event)
        log.info(
            "fault_injection", id=event.id, host=event.host, kind=event.kind, status=event.status, reason=event.reason
        )
