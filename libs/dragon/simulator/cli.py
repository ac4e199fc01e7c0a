"""``dragon-simulator``: answer co-simulation requests about this broker's federation."""

from __future__ import annotations

import argparse

from dragon.service import cli
from dragon.service.known import known_env_names
from dragon.service.lifecycle import health_check
from dragon.simulator.config import SimulatorConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dragon-simulator",
        description="The co-simulator (digital twin) of the federation this broker sees. It keeps the hosts' "
        "newest samples and tasks, and answers MQTT v5 requests on dragon/<lei>/sim/request: the QoS, predicted "
        "faults, migration cost and fitness of candidate migration decisions (DRAGON eq. 15-18), or the hosts' "
        "next window under a schedule (eq. 12). Answers go to the request's response topic, which must lie under "
        "dragon/<lei>/sim/response/. Configured by DRAGON_* environment variables (see README.md).",
    )
    cli.add_common_arguments(parser)
    args = parser.parse_args(argv)
    config = cli.load_or_exit(SimulatorConfig, known_env_names())
    if args.check_config:
        return cli.print_config(config)
    if args.healthcheck:
        return health_check(config.common.service.health_file, 30.0)
    cli.setup_logging(config, "simulator")
    from dragon.simulator.service import Simulator  # imported late: --help needs no numpy

    Simulator(config).run()
    return 0
