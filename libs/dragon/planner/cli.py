"""``dragon-planner``: decide preemptive migrations for the federation, every interval a host of this LEI is faulty."""

from __future__ import annotations

from dragon.planner.config import PlannerConfig
from dragon.service import cli

DESCRIPTION = (
    "Fictitious play across brokers (DRAGON Alg. 2 and 3): while a host of this LEI is faulty, decide every "
    "interval which tasks of the federation to migrate to which LEI, by simulated annealing on the co-simulator's "
    "fitness (DRAGON; with DRAGON_PLANNER_LOOKAHEAD > 1, DRAGON+ looks ahead), and publish the decision on "
    "dragon/fed/<lei>/decision. Cut off from every peer LEI, it plans for its own LEI alone and says so. "
    "Configured by DRAGON_* environment variables (see README.md)."
)


def start(config: PlannerConfig) -> None:
    from dragon.planner.service import Planner  # imported late: --help needs no numpy

    Planner(config).run()


def main(argv: list[str] | None = None) -> int:
    return cli.run_service(
        argv, "dragon-planner", DESCRIPTION, PlannerConfig, lambda c: max(30.0, 3 * c.interval_s), start
    )
