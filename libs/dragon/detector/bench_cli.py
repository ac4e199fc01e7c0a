"""``dragon-detector bench``: measure a model on a FTSAD-shaped folder and write a JSON report.

The protocol and the outputs are in :mod:`dragon.detector.bench`; this module only parses
arguments. It imports nothing heavy at module level because ``dragon-detector`` builds this
parser on every start, health checks included. Malformed input exits with code 2 and a
message that names the file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

PROG = "dragon-detector bench"


def add_bench_parser(commands) -> None:
    parser = commands.add_parser(
        "bench",
        help="benchmark a model on a folder with train.npy, test.npy and labels.npy",
        description="Train on train.npy only, score test.npy, threshold with POT fitted on the training "
        "scores, and write quality, cost and parameters as JSON (RESULT.json), the per-step test scores "
        "beside it (RESULT.scores.npy) and optionally a plot. Test labels are used for measuring only.",
    )
    parser.add_argument("--data", required=True, metavar="DIR", help="folder with train.npy, test.npy, labels.npy")
    parser.add_argument("--out", required=True, metavar="RESULT.json", help="report to write; scores go beside it")
    parser.add_argument(
        "--model",
        default="gon",
        help="a model registered in dragon.detector.baselines: gon (default), zscore, pca, random; "
        "an unknown name lists the registered ones",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model setting, repeatable; VALUE is read as JSON, else as a string (e.g. --param epochs=5)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the model (default: 0)")
    parser.add_argument("--pot-q", type=float, help="POT risk q (default: dragon.detector.pot.DEFAULT_Q, 1e-4)")
    parser.add_argument(
        "--pot-level", type=float, help="POT initial quantile (default: dragon.detector.pot.DEFAULT_LEVEL, 0.98)"
    )
    parser.add_argument(
        "--pot-mode",
        default="static",
        choices=("static", "spot", "dspot"),
        help="static POT threshold, or streaming SPOT / drift-aware DSPOT updated as test scores arrive",
    )
    parser.add_argument("--dspot-depth", type=int, default=20, help="DSPOT moving-average depth (default: 20)")
    parser.add_argument("--plot", metavar="PATH", help="draw scores, threshold and labelled segments (.svg, or .png)")
    parser.add_argument(
        "--latency-samples", type=int, default=200, help="single-step scoring calls timed (default: 200)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    parser.set_defaults(handler=run_bench_command)


def run_bench_command(args) -> int:
    # Heavy imports only when benchmarking, so `dragon-detector --help` stays fast.
    import torch

    from dragon.detector.bench import BenchConfig, plotter_for, run_bench, write_outputs
    from dragon.detector.train import DatasetError
    from dragon.logs import configure

    configure(level=args.log_level, json=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    pot = {"pot_q": args.pot_q, "pot_level": args.pot_level}
    try:
        plotter = plotter_for(args.plot)  # before training, so a bad path fails fast
        cfg = BenchConfig(
            data=args.data,
            model=args.model,
            params=parse_params(args.param),
            seed=args.seed,
            latency_samples=args.latency_samples,
            pot_mode=args.pot_mode,
            dspot_depth=args.dspot_depth,
            **{key: value for key, value in pot.items() if value is not None},
        )
        result = run_bench(cfg)
        files = write_outputs(result, args.out, args.plot, plotter)
    except (DatasetError, ValueError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    summary = {key: result.report[key] for key in ("roc_auc", "pr_auc", "f1", "f1_pa", "f1_pa_k_auc")}
    print(json.dumps({**files, "model": args.model, **summary}))
    return 0


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """``["epochs=5", "aggregate=max"]`` -> ``{"epochs": 5, "aggregate": "max"}``; JSON values, else strings."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param expects KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params
