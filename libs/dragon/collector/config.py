"""The collector's configuration (see the table in README.md)."""

from __future__ import annotations

from dataclasses import dataclass

from dragon.config import ConfigError, section, setting
from dragon.settings import CommonConfig, check_id

PROBES = ("cgroup", "psutil")


@dataclass(frozen=True)
class CollectorConfig:
    common: CommonConfig = section(CommonConfig)
    probe: str = setting(
        "DRAGON_COLLECTOR_PROBE",
        "cgroup",
        "cgroup: emulated hosts, one parent cgroup each; psutil: this whole machine is one real host",
    )
    hosts: tuple[str, ...] = setting(
        "DRAGON_COLLECTOR_HOSTS", ("h1", "h2", "h3"), "comma-separated host ids this collector samples (psutil: one)"
    )
    interval_s: float = setting("DRAGON_COLLECTOR_INTERVAL", 10.0, "sampling interval", "s")
    cgroup_root: str = setting("DRAGON_CGROUP_ROOT", "/sys/fs/cgroup", "where the host's cgroupfs is mounted")
    proc_root: str = setting("DRAGON_PROC_ROOT", "/proc", "where the host's /proc is mounted")
    emulate: bool = setting(
        "DRAGON_EMULATE", True, "create the emulated hosts' cgroups (with limits) and their demo task containers"
    )
    host_cpus: float = setting("DRAGON_EMULATED_CPUS", 0.5, "CPU quota of each emulated host", "cores")
    host_memory_mb: int = setting("DRAGON_EMULATED_MEMORY_MB", 512, "memory limit of each emulated host", "MiB")
    demo_tasks: int = setting("DRAGON_DEMO_TASKS", 2, "demo task containers started per emulated host", "containers")
    task_image: str = setting("DRAGON_TASK_IMAGE", "dragon-collector:local", "image of demo tasks and fault hogs")
    task_network: str = setting(
        "DRAGON_TASK_NETWORK", "", "Docker network for demo tasks and hogs (empty: dragon-<lei>, created when missing)"
    )
    injector: bool = setting("DRAGON_INJECTOR", True, "accept fault-injection commands (emulated hosts only)")
    random_faults_per_hour: float = setting(
        "DRAGON_RANDOM_FAULTS_PER_HOUR", 0.0, "rate of random faults across this collector's hosts (Poisson)", "1/h"
    )
    random_fault_seed: int = setting("DRAGON_RANDOM_FAULT_SEED", 0, "seed of the random fault process")
    random_fault_duration_s: float = setting("DRAGON_RANDOM_FAULT_DURATION", 60.0, "duration of a random fault", "s")
    random_fault_delay_s: float = setting(
        "DRAGON_RANDOM_FAULT_DELAY",
        300.0,
        "no random fault before this long after start (a detector learning normal operation needs it quiet)",
        "s",
    )

    def validate(self) -> None:
        if self.probe not in PROBES:
            raise ConfigError(f"DRAGON_COLLECTOR_PROBE={self.probe!r} must be one of {', '.join(PROBES)}")
        if not self.hosts:
            raise ConfigError("DRAGON_COLLECTOR_HOSTS must name at least one host")
        for host in self.hosts:
            check_id("DRAGON_COLLECTOR_HOSTS", host)
        if self.probe == "psutil" and len(self.hosts) != 1:
            raise ConfigError("the psutil probe samples this machine: DRAGON_COLLECTOR_HOSTS must name one host")
        if not 0.5 <= self.interval_s <= 3600:
            raise ConfigError("DRAGON_COLLECTOR_INTERVAL must be between 0.5 and 3600 seconds")
        if self.random_faults_per_hour < 0:
            raise ConfigError("DRAGON_RANDOM_FAULTS_PER_HOUR must not be negative")

    @property
    def emulated(self) -> bool:
        return self.probe == "cgroup"
