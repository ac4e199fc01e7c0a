"""``dragon-collector``: sample this LEI's hosts and publish their windows' samples."""

from __future__ import annotations

import argparse

from dragon.collector.config import CollectorConfig
from dragon.service import cli
from dragon.service.known import known_env_names
from dragon.service.lifecycle import health_check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dragon-collector",
        description="Sample the hosts of an LEI (CPU, RAM, swap, disk and network I/O, per-task usage) every "
        "interval and publish one sample per host on dragon/<lei>/hosts/<host>/sample. For emulated hosts it "
        "also runs their demo tasks and injects faults on request. Configured by DRAGON_* environment variables "
        "(see README.md).",
    )
    cli.add_common_arguments(parser)
    args = parser.parse_args(argv)
    config = cli.load_or_exit(CollectorConfig, known_env_names())
    if args.check_config:
        return cli.print_config(config)
    if args.healthcheck:
        # Stale after three missed intervals (or 30 s, whichever is longer).
        return health_check(config.common.service.health_file, max(30.0, 3 * config.interval_s))
    cli.setup_logging(config, "collector")
    from dragon.collector.service import Collector  # imported late: --help needs no Docker SDK set-up

    Collector(config).run()
    return 0
