"""``dragon-simulator``: answer co-simulation requests about this broker's federation."""

from __future__ import annotations

from dragon.service import cli
from dragon.simulator.config import SimulatorConfig

DESCRIPTION = (
    "The co-simulator (digital twin) of the federation this broker sees. It keeps the hosts' newest samples and "
    "tasks, and answers MQTT v5 requests on dragon/<lei>/sim/request: the QoS, predicted faults, migration cost and "
    "fitness of candidate migration decisions (DRAGON eq. 15-18), or the hosts' next window under a schedule "
    "(eq. 12). Answers go to the request's response topic, which must be dragon/<lei>/sim/response/<requester>. "
    "Configured by DRAGON_* environment variables (see README.md)."
)


def start(config: SimulatorConfig) -> None:
    from dragon.simulator.service import Simulator  # imported late: --help needs no numpy

    Simulator(config).run()


def main(argv: list[str] | None = None) -> int:
    return cli.run_service(argv, "dragon-simulator", DESCRIPTION, SimulatorConfig, lambda c: 30.0, start)
