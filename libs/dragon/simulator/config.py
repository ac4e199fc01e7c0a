"""The simulator's configuration (see the table in README.md)."""

from __future__ import annotations

from dataclasses import dataclass

from dragon.config import ConfigError, section, setting
from dragon.settings import CommonConfig

MAX_DECISIONS = 1024  # what one request's list can hold (dragon.messages.schema.MAX_ITEMS)


@dataclass(frozen=True)
class CoSimSettings:
    """The co-simulator's model of the federation; the simulator and the planner share it."""

    stale_intervals: float = setting(
        "DRAGON_SIM_STALE_INTERVALS",
        3.0,
        "a host whose newest sample is older than this is left out (since it arrived, plus how late it came)",
        "intervals",
    )
    background_samples: int = setting(
        "DRAGON_SIM_BACKGROUND_SAMPLES",
        360,
        "a host's background (usage with no task) is its lowest usage over this many recent samples",
        "samples",
    )
    move_gain: float = setting(
        "DRAGON_SIM_MOVE_GAIN", 1.0, "λ: the share of a task's demand that moves with it (docs/simulator.md)"
    )
    relax: float = setting(
        "DRAGON_SIM_RELAX", 0.0, "ρ: how far a host's usage falls back to its background per interval"
    )
    alpha: float = setting("DRAGON_SIM_ALPHA", 0.5, "α: weight of the response time in QoS (eq. 17)")
    beta: float = setting("DRAGON_SIM_BETA", 0.5, "β: weight of the energy in QoS (eq. 17)")
    delta1: float = setting("DRAGON_SIM_DELTA1", 0.5, "δ1: weight of the predicted faults in the fitness (eq. 18)")
    delta2: float = setting("DRAGON_SIM_DELTA2", 0.5, "δ2: weight of the migration overhead in the fitness (eq. 18)")
    service_time_s: float = setting(
        "DRAGON_SIM_SERVICE_TIME", 1.0, "a task's response time on an idle host, the unit of its SLO", "s"
    )
    slo_factor: float = setting(
        "DRAGON_SIM_SLO_FACTOR", 3.0, "a response slower than this many service times misses its SLO"
    )
    overload: float = setting(
        "DRAGON_SIM_OVERLOAD", 0.9, "a host predicted above this share of its CPU or RAM counts as anomalous"
    )
    disk_bandwidth_bps: float = setting(
        "DRAGON_SIM_DISK_BANDWIDTH",
        45e6,
        "a host's disk throughput, per direction (a Pi 4's SD card reads about 45 MB/s); predictions stop there",
        "bytes/s",
    )
    lan_latency_s: float = setting("DRAGON_SIM_LAN_LATENCY", 0.0005, "one-way latency inside an LEI", "s")
    lan_bandwidth_bps: float = setting(
        "DRAGON_SIM_LAN_BANDWIDTH", 125e6, "bandwidth inside an LEI, also each host's network throughput", "bytes/s"
    )
    wan_latency_s: float = setting("DRAGON_SIM_WAN_LATENCY", 0.010, "one-way latency between brokers", "s")
    wan_bandwidth_bps: float = setting("DRAGON_SIM_WAN_BANDWIDTH", 12.5e6, "bandwidth between brokers", "bytes/s")

    def validate(self) -> None:
        if self.stale_intervals <= 0 or self.background_samples < 1:
            raise ConfigError("DRAGON_SIM_STALE_INTERVALS must be positive, DRAGON_SIM_BACKGROUND_SAMPLES at least 1")
        if not (0 <= self.move_gain <= 1 and 0 <= self.relax <= 1):
            raise ConfigError("DRAGON_SIM_MOVE_GAIN and DRAGON_SIM_RELAX must be in [0, 1]")
        if min(self.alpha, self.beta, self.delta1, self.delta2) < 0:
            raise ConfigError("the fitness weights DRAGON_SIM_ALPHA/BETA/DELTA1/DELTA2 must not be negative")
        if self.service_time_s <= 0 or self.slo_factor <= 1 or not 0 < self.overload:
            raise ConfigError("DRAGON_SIM_SERVICE_TIME > 0, DRAGON_SIM_SLO_FACTOR > 1 and DRAGON_SIM_OVERLOAD > 0")
        if (
            min(self.lan_bandwidth_bps, self.wan_bandwidth_bps, self.disk_bandwidth_bps) <= 0
            or min(self.lan_latency_s, self.wan_latency_s) < 0
        ):
            raise ConfigError("link bandwidths must be positive and latencies not negative")


@dataclass(frozen=True)
class SimulatorConfig:
    common: CommonConfig = section(CommonConfig)
    cosim: CoSimSettings = section(CoSimSettings)
    max_decisions: int = setting(
        "DRAGON_SIM_MAX_DECISIONS", 256, "decisions one evaluate request may carry", "decisions"
    )

    def validate(self) -> None:
        if not 1 <= self.max_decisions <= MAX_DECISIONS:
            raise ConfigError(f"DRAGON_SIM_MAX_DECISIONS must be between 1 and {MAX_DECISIONS}")
