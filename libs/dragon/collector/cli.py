"""``dragon-collector``: sample this LEI's hosts and publish their windows' samples."""

from __future__ import annotations

from dragon.collector.config import CollectorConfig
from dragon.service import cli

DESCRIPTION = (
    "Sample the hosts of an LEI (CPU, RAM, swap, disk and network I/O, per-task usage) every interval and publish "
    "one sample per host on dragon/<lei>/hosts/<host>/sample. For emulated hosts it also runs their demo tasks and "
    "injects faults on request. Configured by DRAGON_* environment variables (see README.md)."
)


def start(config: CollectorConfig) -> None:
    from dragon.collector.service import Collector  # imported late: --help needs no Docker SDK set-up

    Collector(config).run()


def main(argv: list[str] | None = None) -> int:
    # Stale after three missed intervals (or 30 s, whichever is longer).
    return cli.run_service(
        argv, "dragon-collector", DESCRIPTION, CollectorConfig, lambda c: max(30.0, 3 * c.interval_s), start
    )
