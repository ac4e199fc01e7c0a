"""Command-line plumbing shared by the service entry points."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

from dragon import config, logs
from dragon.config import ConfigError


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration from the environment, print it (secrets hidden) and exit",
    )
    parser.add_argument(
        "--healthcheck",
        action="store_true",
        help="exit 0 when the running service reports healthy (used by the container healthcheck)",
    )


def load_or_exit(cls: type, known: Iterable[str]):
    """Build the config or exit 2 with the reason on stderr (no traceback for operator errors)."""
    try:
        return config.load(cls, known=known)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def print_config(cfg) -> int:
    print(json.dumps(config.redacted(cfg), indent=2, default=str))
    return 0


def setup_logging(cfg, service: str) -> None:
    logs.configure(cfg.common.service.log_level, service=service)


def run_service(
    argv: list[str] | None,
    prog: str,
    description: str,
    config_class: type,
    health_max_age_s: Callable[[Any], float],
    start: Callable[[Any], None],
) -> int:
    """The whole entry point of a service without subcommands.

    ``--help``, ``--check-config`` and ``--healthcheck`` answer without starting anything;
    otherwise logging is set up and ``start(config)`` runs the service (import the service module
    inside it, so that ``--help`` stays fast and light).
    """
    from dragon.service.known import known_env_names  # every service's settings: imports them all
    from dragon.service.lifecycle import health_check

    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    cfg = load_or_exit(config_class, known_env_names())
    if args.check_config:
        return print_config(cfg)
    if args.healthcheck:
        return health_check(cfg.common.service.health_file, health_max_age_s(cfg))
    setup_logging(cfg, prog.removeprefix("dragon-"))
    start(cfg)
    return 0
