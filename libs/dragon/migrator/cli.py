"""``dragon-migrator``: carry out this LEI's signed migration commands on real containers."""

from __future__ import annotations

from dragon.migrator.config import MigratorConfig
from dragon.service import cli

DESCRIPTION = (
    "The migrator of one LEI. It takes migration commands on dragon/<lei>/migrations/commands, signed by the "
    "planner with the key both hold (DRAGON_MIGRATION_KEY), and moves the task containers between hosts: the "
    "LEI's emulated hosts through the Docker socket, and hosts with an engine of their own, in this LEI or "
    "another (DRAGON_MIGRATOR_ENDPOINTS). A CRIU move (checkpoint, restore) where the engine can, else a restart "
    "move (the task recreated on its target, started, and only then removed from its source), journalled step "
    "by step in Redis so that a migrator stopped at any "
    "point finishes or rolls back the move on restart. Each command gets an event on "
    "dragon/<lei>/migrations/events; the schedule (task -> host) is kept retained on dragon/<lei>/tasks. "
    "Configured by DRAGON_* environment variables (see README.md)."
)


def start(config: MigratorConfig) -> None:
    from dragon.migrator.service import Migrator  # imported late: --help stays fast

    Migrator(config).run()


def main(argv: list[str] | None = None) -> int:
    return cli.run_service(argv, "dragon-migrator", DESCRIPTION, MigratorConfig, lambda c: 30.0, start)
