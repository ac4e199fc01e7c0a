"""``dragon-planner``: decide preemptive migrations for the federation, every interval a host of this LEI is faulty."""

from __future__ import annotations

import argparse

from dragon.planner.config import PlannerConfig
from dragon.service import cli
from dragon.service.known import known_env_names
from dragon.service.lifecycle import health_check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dragon-planner",
        description="Fictitious play across brokers (DRAGON Alg. 2 and 3): while a host of this LEI is faulty, "
        "decide every interval which tasks of the federation to migrate to which LEI, by simulated annealing on "
        "the co-simulator's fitness (DRAGON; with DRAGON_PLANNER_LOOKAHEAD > 1, DRAGON+ looks ahead), and publish "
        "the decision on dragon/fed/<lei>/decision. Cut off from every peer LEI, it plans for its own LEI alone "
        "and says so. Configured by DRAGON_* environment variables (see README.md).",
    )
    cli.add_common_arguments(parser)
    args = parser.parse_args(argv)
    config = cli.load_or_exit(PlannerConfig, known_env_names())
    if args.check_config:
        return cli.print_config(config)
    if args.healthcheck:
        return health_check(config.common.service.health_file, max(30.0, 3 * config.interval_s))
    cli.setup_logging(config, "planner")
    from dragon.planner.service import Planner  # imported late: --help needs no numpy

    Planner(config).run()
    return 0
