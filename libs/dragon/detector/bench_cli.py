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

from dragon.detector.config import DEFAULT_LEVEL, DEFAULT_POT_LAG, DEFAULT_Q, ONLINE_MIN_INTERVAL_STEPS

PROG = "dragon-detector bench"
# The keys of dragon.detector.gon.ABLATIONS, named here so --help does not import torch (a test
# keeps the two equal).
ABLATION_NAMES = ("noinit", "adam", "notopo")


def add_bench_parser(commands) -> None:
    parser = commands.add_parser(
        "bench",
        help="benchmark a model on a folder with train.npy, test.npy and labels.npy",
        description="Train on train.npy only, score test.npy, threshold with POT fitted on the training "
        "scores, and write quality, cost and parameters as JSON (RESULT.json), the per-step test scores "
        "beside it (RESULT.scores.npy) and optionally a plot. Test labels are used for measuring only.",
    )
    add_model_arguments(
        parser,
        data="folder with train.npy, test.npy, labels.npy",
        models="a model registered in dragon.detector.baselines: gon (default), zscore, pca, random; "
        "an unknown name lists the registered ones",
    )
    parser.add_argument("--pot-q", type=float, help=f"POT risk q (default: {DEFAULT_Q:g})")
    parser.add_argument("--pot-level", type=float, help=f"POT initial quantile (default: {DEFAULT_LEVEL:g})")
    parser.add_argument(
        "--pot-mode",
        default="static",
        choices=("static", "spot", "dspot"),
        help="static POT threshold (default), or streaming SPOT / drift-aware DSPOT updated as test scores arrive "
        "(the service runs spot)",
    )
    parser.add_argument("--dspot-depth", type=int, default=20, help="DSPOT moving-average depth (default: 20)")
    parser.add_argument(
        "--pot-lag",
        type=int,
        default=DEFAULT_POT_LAG,
        metavar="STEPS",
        help=f"SPOT/DSPOT learn each normal score this many scores late, and the first alarm after at least that "
        f"many normal scores, or the first since the calibration, drops those not yet learnt, the fault's likely "
        f"onset; --online keeps a clean window to fine-tune on only once as many later ones were clean (the "
        f"service's DRAGON_POT_LAG; default: {DEFAULT_POT_LAG}; 0 learns at once)",
    )
    parser.add_argument(
        "--online",
        action="store_true",
        help="score test.npy one step at a time as the detector service does: fine-tune the model (eq. 19) "
        "when its confidence on windows judged normal drops, and recalibrate POT (gon only)",
    )
    parser.add_argument(
        "--online-interval",
        type=int,
        default=ONLINE_MIN_INTERVAL_STEPS,
        metavar="STEPS",
        help=f"--online: at least this many steps between fine-tunes (default: {ONLINE_MIN_INTERVAL_STEPS}, the "
        "service's 600 s at FTSAD's 10 s per sample)",
    )
    parser.add_argument(
        "--plot",
        metavar="PATH",
        help="draw scores, the threshold in force at each step and labelled segments (.svg, or .png)",
    )
    parser.add_argument(
        "--latency-samples", type=int, default=200, help="single-step scoring calls timed (default: 200)"
    )
    add_run_arguments(parser)
    parser.set_defaults(handler=run_bench_command)


def add_model_arguments(parser, data: str, models: str) -> None:
    """--data, --out, --model, --param, --ablation and --seed, shared by both benchmarks."""
    parser.add_argument("--data", required=True, metavar="DIR", help=data)
    parser.add_argument("--out", required=True, metavar="RESULT.json", help="report to write; scores go beside it")
    parser.add_argument("--model", default="gon", help=models)
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model setting, repeatable; VALUE is read as JSON, else as a string (e.g. --param epochs=5)",
    )
    parser.add_argument(
        "--ablation",
        choices=ABLATION_NAMES,
        help="a GON ablation of the DRAGON paper's Fig. 10: noinit (generation starts from noise, not the "
        "window), adam (Adam instead of AdaHessian), notopo (no graph transformer, convolution or attention)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the model (default: 0)")


def add_run_arguments(parser) -> None:
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument(
        "--log-level", default="warning", choices=("debug", "info", "warning", "error"), help="(default: warning)"
    )


def model_params(args) -> dict[str, Any]:
    """The model settings of --param, with those of --ablation on top (only the GON models have them)."""
    from dragon.detector.gon import ABLATIONS

    params = parse_params(args.param)
    if args.ablation is None:
        return params
    if not args.model.startswith("gon"):
        raise ValueError(f"--ablation {args.ablation} applies to the GON models, not to {args.model!r}")
    clash = sorted(set(params) & set(ABLATIONS[args.ablation]))
    if clash:
        raise ValueError(f"--ablation {args.ablation} sets {', '.join(clash)}; do not also pass it with --param")
    return params | ABLATIONS[args.ablation]


def run_bench_command(args) -> int:
    # Heavy imports only when benchmarking, so `dragon-detector --help` stays fast.
    from dragon.detector.bench import BenchConfig, plotter_for, run_bench, write_outputs
    from dragon.detector.train import DatasetError

    prepare_run(args)
    pot = {"pot_q": args.pot_q, "pot_level": args.pot_level}
    try:
        plotter = plotter_for(args.plot)  # before training, so a bad path fails fast
        cfg = BenchConfig(
            data=args.data,
            model=args.model,
            params=model_params(args),
            seed=args.seed,
            latency_samples=args.latency_samples,
            pot_mode=args.pot_mode,
            dspot_depth=args.dspot_depth,
            pot_lag=args.pot_lag,
            online=args.online,
            online_interval=args.online_interval,
            **{key: value for key, value in pot.items() if value is not None},
        )
        result = run_bench(cfg)
        files = write_outputs(result, args.out, args.plot, plotter)
    except (DatasetError, ValueError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    print_summary(files, args, result.report)
    return 0


def print_summary(files: dict[str, str], args, report: dict[str, Any]) -> None:
    summary = {key: report[key] for key in ("roc_auc", "pr_auc", "f1", "f1_pa", "f1_pa_k_auc")}
    print(json.dumps({**files, "model": args.model, "ablation": args.ablation, **summary}))


def prepare_run(args) -> None:
    import torch

    from dragon.logs import configure

    configure(level=args.log_level, json=True)
    if args.threads:
        torch.set_num_threads(args.threads)


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


def add_federation_bench_parser(commands) -> None:
    parser = commands.add_parser(
        "bench-federation",
        help="benchmark a model on a federation trace with schedules (rpi16), with injected faults",
        description="Split a federation trace (time_series.npy [T, n*m], schedule_series.npy [T, p, m]) in "
        "time, train on the first part, inject sudden-rise faults on single hosts into the rest, and score "
        "every host of every interval. Writes quality per (interval, host) cell, false alarms where a host's "
        "placement changed or not, cost and parameters as JSON, and the scores [T', m] beside it.",
    )
    add_model_arguments(
        parser,
        data="folder with time_series.npy, schedule_series.npy",
        models="gon (the DRAGON discriminator over all hosts, tasks, schedule and graph; default), gon-host "
        "(the same network one host at a time, as the service scores by default), zscore, pca, random",
    )
    parser.add_argument("--fault-seed", type=int, help="seed of the injected faults (default: --seed)")
    parser.add_argument("--faults", type=int, default=6, help="fault segments injected into the test part (default: 6)")
    parser.add_argument(
        "--leis", type=int, default=4, help="LEIs of consecutive hosts, each led by its first (default: 4)"
    )
    parser.add_argument(
        "--train-fraction", type=float, default=0.7, help="leading share of the trace that trains (default: 0.7)"
    )
    parser.add_argument(
        "--latency-samples", type=int, default=50, help="single-interval scoring calls timed (default: 50)"
    )
    parser.add_argument(
        "--plot", metavar="PATH.svg", help="draw each host's test scores against the threshold, faults outlined"
    )
    add_run_arguments(parser)
    parser.set_defaults(handler=run_federation_bench_command)


def run_federation_bench_command(args) -> int:
    from dragon.detector.bench import write_outputs
    from dragon.detector.federation_bench import FederationBenchConfig, run_federation_bench, write_heatmap
    from dragon.detector.train import DatasetError

    prepare_run(args)
    try:
        if args.plot is not None and not args.plot.lower().endswith(".svg"):
            raise ValueError(f"--plot {args.plot}: the host heatmap is drawn as .svg")
        cfg = FederationBenchConfig(
            data=args.data,
            model=args.model,
            params=model_params(args),
            seed=args.seed,
            fault_seed=args.seed if args.fault_seed is None else args.fault_seed,
            leis=args.leis,
            train_fraction=args.train_fraction,
            faults=args.faults,
            latency_samples=args.latency_samples,
        )
        result = run_federation_bench(cfg)
        files = write_outputs(result, args.out, None, None)
        if args.plot is not None:
            label = args.model + (f" --ablation {args.ablation}" if args.ablation else "")
            files["plot"] = write_heatmap(result, args.plot, label)
    except (DatasetError, ValueError, OSError) as exc:
        print(f"dragon-detector bench-federation: {exc}", file=sys.stderr)
        return 2
    print_summary(files, args, result.report)
    return 0
