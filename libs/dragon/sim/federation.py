"""What the simulator knows about a federation that does not change between intervals.

Hosts have a capacity per metric (in the units of the windows the simulator is given) and a
power profile; hosts are grouped into LEIs, each led by a broker; links inside an LEI are a LAN,
links between brokers a WAN. A path between two hosts of different LEIs goes worker → broker
(LAN), broker → broker (WAN), broker → worker (LAN), as the topology graph G of sec. IV-B.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

MIB = 1024 * 1024


@dataclass(frozen=True)
class PowerProfile:
    """A host's electrical power, linear in its CPU utilisation between idle and full load.

    The linear model is the one CloudSim and COSCO use between their measured points; a Pi's
    draw at intermediate loads lies close to the line (docs/simulator.md gives the sources).
    """

    name: str
    idle_w: float
    full_w: float

    def __post_init__(self) -> None:
        if not 0 < self.idle_w <= self.full_w:
            raise ValueError(f"power profile {self.name}: need 0 < idle ({self.idle_w}) <= full ({self.full_w})")


# Raspberry Pi 4 Model B, Raspbian Lite, Ethernet, no peripherals: 540 mA idle and 1280 mA with
# `stress --cpu 4`, at 5 V (Pi Dramble power benchmarks, also quoted in Raspberry Pi's own
# forums). The 8 GB board has the same SoC and power circuit; no separate measurement of it
# could be found, so it shares the figures (docs/simulator.md).
RPI4B_4GB = PowerProfile("rpi4b-4gb", idle_w=2.7, full_w=6.4)
RPI4B_8GB = PowerProfile("rpi4b-8gb", idle_w=2.7, full_w=6.4)
POWER_PROFILES = {profile.name: profile for profile in (RPI4B_4GB, RPI4B_8GB)}


@dataclass(frozen=True)
class Link:
    """One hop: one-way latency in seconds and bandwidth in bytes per second."""

    latency_s: float
    bandwidth_bps: float

    def __post_init__(self) -> None:
        if self.latency_s < 0 or self.bandwidth_bps <= 0:
            raise ValueError(f"a link needs latency >= 0 and bandwidth > 0, got {self}")


# A Pi 4's Gigabit Ethernet on a switch, and a broker-to-broker WAN of a small-city edge
# deployment (100 Mbit/s, 10 ms one way). Both are settings; these are the defaults.
GIGABIT_LAN = Link(latency_s=0.0005, bandwidth_bps=125e6)
EDGE_WAN = Link(latency_s=0.010, bandwidth_bps=12.5e6)


@dataclass(frozen=True, eq=False)  # numpy fields
class Federation:
    """m hosts in LEIs, with capacities (m, n) and power profiles, and the LAN and WAN links.

    ``capacity[h, f]`` is host h's capacity of metric f in the units of the windows; use
    ``inf`` for a metric without a ceiling (bytes per second of a disk, say). ``cpu_metric``
    and ``ram_metric`` name the columns that drive power and response time.
    """

    lei_of_host: tuple[str, ...]
    brokers: tuple[int, ...]
    capacity: np.ndarray  # (m, n)
    metrics: tuple[str, ...]
    power: tuple[PowerProfile, ...]
    lan: Link = GIGABIT_LAN
    wan: Link = EDGE_WAN
    cpu_metric: str = "cpu"
    ram_metric: str = "ram"
    leis: tuple[str, ...] = field(init=False)
    lei_index: np.ndarray = field(init=False)  # (m,) index into leis

    def __post_init__(self) -> None:
        m = len(self.lei_of_host)
        if m < 1:
            raise ValueError("a federation needs at least one host")
        if self.capacity.shape != (m, len(self.metrics)):
            raise ValueError(f"capacity must be ({m}, {len(self.metrics)}), got {self.capacity.shape}")
        if not (self.capacity > 0).all():
            raise ValueError("capacities must be positive (inf for no ceiling)")
        if len(self.power) != m:
            raise ValueError(f"{m} hosts need {m} power profiles, got {len(self.power)}")
        for name in (self.cpu_metric, self.ram_metric):
            if name not in self.metrics:
                raise ValueError(f"metric {name!r} is not one of {self.metrics}")
        leis = tuple(dict.fromkeys(self.lei_of_host))
        broker_leis = [self.lei_of_host[b] for b in self.brokers if 0 <= b < m]
        if len(broker_leis) != len(self.brokers) or sorted(broker_leis) != sorted(leis):
            raise ValueError(f"every LEI needs exactly one broker among hosts 0..{m - 1}, got {list(self.brokers)}")
        object.__setattr__(self, "leis", leis)
        object.__setattr__(self, "lei_index", np.array([leis.index(lei) for lei in self.lei_of_host]))

    @classmethod
    def uniform(
        cls,
        lei_of_host: Sequence[str],
        brokers: Sequence[int],
        metrics: Sequence[str],
        capacity: Sequence[float],
        power: PowerProfile = RPI4B_4GB,
        **links: Link,
    ) -> Federation:
        """A federation of identical hosts: one capacity row and one power profile for all."""
        m = len(lei_of_host)
        caps = np.tile(np.asarray(capacity, dtype=np.float64), (m, 1))
        return cls(tuple(lei_of_host), tuple(brokers), caps, tuple(metrics), (power,) * m, **links)

    @property
    def hosts(self) -> int:
        return len(self.lei_of_host)

    @property
    def cpu(self) -> int:
        return self.metrics.index(self.cpu_metric)

    @property
    def ram(self) -> int:
        return self.metrics.index(self.ram_metric)

    @property
    def idle_w(self) -> np.ndarray:
        return np.array([p.idle_w for p in self.power])

    @property
    def full_w(self) -> np.ndarray:
        return np.array([p.full_w for p in self.power])

    def power_w(self, cpu_utilisation: np.ndarray) -> np.ndarray:
        """Each host's power (..., m) at CPU utilisations (..., m); a saturated host draws its full load."""
        idle, full = self.idle_w, self.full_w
        return idle + (full - idle) * np.clip(cpu_utilisation, 0.0, 1.0)

    def path(self, source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One-way latency (s) and bottleneck bandwidth (B/s) from hosts ``source`` to ``target``.

        Same host: no transfer (latency 0, infinite bandwidth). Same LEI: one LAN hop through
        the switch. Different LEIs: LAN to the broker, WAN between brokers, LAN to the host.
        """
        source, target = np.asarray(source), np.asarray(target)
        same_host = source == target
        same_lei = self.lei_index[source] == self.lei_index[target]
        latency = np.where(same_lei, self.lan.latency_s, 2 * self.lan.latency_s + self.wan.latency_s)
        bandwidth = np.where(same_lei, self.lan.bandwidth_bps, min(self.lan.bandwidth_bps, self.wan.bandwidth_bps))
        return np.where(same_host, 0.0, latency), np.where(same_host, np.inf, bandwidth)

    def migration_time(self, ram_bytes: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Seconds to move tasks of ``ram_bytes`` resident memory from ``source`` to ``target``.

        A migration ships the task's memory once over the path (a CRIU checkpoint, or the state a
        restart rebuilds) and pays a round trip to set it up; staying put costs nothing.
        """
        latency, bandwidth = self.path(source, target)
        return np.where(np.asarray(source) == np.asarray(target), 0.0, 2 * latency + ram_bytes / bandwidth)
