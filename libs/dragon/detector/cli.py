"""``dragon-detector``: serve the GON detector, train a checkpoint for it, or benchmark a model."""

from __future__ import annotations

import argparse

from dragon.detector.config import DetectorConfig
from dragon.service import cli
from dragon.service.known import known_env_names
from dragon.service.lifecycle import health_check

HEALTH_MAX_AGE_S = 30.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dragon-detector",
        description="Score host windows with a Generative Optimization Network, label them with "
        "Peaks-Over-Threshold and publish fault events on dragon/faults/<lei>/<host>. Without a command it "
        "runs the service, configured by DRAGON_* environment variables (see README.md).",
    )
    cli.add_common_arguments(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", help="run the detector service (the default)")
    from dragon.detector.bench_cli import add_bench_parser, add_federation_bench_parser
    from dragon.detector.train_cli import add_train_parser

    add_train_parser(commands)
    add_bench_parser(commands)
    add_federation_bench_parser(commands)
    args = parser.parse_args(argv)
    if args.command in ("train", "bench", "bench-federation"):
        return args.handler(args)
    config = cli.load_or_exit(DetectorConfig, known_env_names())
    if args.check_config:
        return cli.print_config(config)
    if args.healthcheck:
        return health_check(config.common.service.health_file, HEALTH_MAX_AGE_S)
    cli.setup_logging(config, "detector")
    from dragon.detector.service import Detector  # torch is imported only when serving

    Detector(config).run()
    return 0
