"""Command-line plumbing shared by the service entry points."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable

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
