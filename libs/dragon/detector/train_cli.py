"""``dragon-detector train``: write a self-describing checkpoint from recorded or offline data."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

from dragon.config import ConfigError
from dragon.detector.config import DEFAULT_LEVEL, DEFAULT_Q, FAULT_SCORES
from dragon.detector.scaling import DATASET_MIN_SPAN


def add_train_parser(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="train a checkpoint from a data set folder or from the windows recorded in Redis",
        description="Train the GON detector on normal operation and write a checkpoint (config, weights, "
        "scaler bounds, POT state). Serve it with DRAGON_DETECTOR_CHECKPOINT.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data", metavar="DIR", help="folder with train.npy [T, D] (shaped like FTSAD-*; test/labels are ignored)"
    )
    source.add_argument(
        "--from-redis",
        action="store_true",
        help="the host samples recorded in Redis (DRAGON_REDIS_*, DRAGON_LEI from the environment)",
    )
    parser.add_argument(
        "--scope",
        choices=("host", "lei"),
        default="host",
        help="what the model judges at once: each host's window alone, or with --from-redis the whole LEI with "
        "its tasks and schedule (DRAGON_DETECTOR_BROKER_HOST and DRAGON_DETECTOR_TOPOLOGY apply) (default: host)",
    )
    parser.add_argument("--out", required=True, metavar="PATH", help="checkpoint file to write")
    parser.add_argument("--window", type=int, default=10, help="window length k (default: 10)")
    parser.add_argument("--epochs", type=int, default=60, help="maximum epochs; early stopping may end sooner")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and minibatch order (default: 0)")
    parser.add_argument(
        "--fault-score",
        choices=FAULT_SCORES,
        default=FAULT_SCORES[0],
        help="excess: eq. 13, how far a window rises above the generated one; excess+unreal: plus -log D of "
        "the window (MAD-GAN's DR-score, docs/detector-quality.md) (default: excess)",
    )
    parser.add_argument("--pot-q", type=float, default=DEFAULT_Q, help=f"POT risk q (default: {DEFAULT_Q:g})")
    parser.add_argument(
        "--pot-level", type=float, default=DEFAULT_LEVEL, help=f"POT initial quantile (default: {DEFAULT_LEVEL:g})"
    )
    parser.add_argument(
        "--min-span",
        type=float,
        default=DATASET_MIN_SPAN,
        help=f"with --data: smallest min-max span per feature (default {DATASET_MIN_SPAN}: each feature is "
        "rescaled to its own training range, a constant one keeps a tenth of FTSAD's [0, 1] unit)",
    )
    parser.add_argument("--plot", metavar="PATH.svg", help="also draw the training and validation loss per epoch")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_train)


def run_train(args) -> int:
    # Heavy imports only when training, so `dragon-detector --help` stays fast.
    from dragon.detector.gon import GonConfig
    from dragon.detector.train import DatasetError, load_dataset_dir, train_from_series

    if args.plot and not args.plot.lower().endswith(".svg"):
        print(
            f"dragon-detector train: --plot {args.plot}: the loss plot is an SVG, use a path ending in .svg",
            file=sys.stderr,
        )
        return 2
    if args.scope == "lei" and not args.from_redis:
        print(
            "dragon-detector train: --scope lei needs --from-redis (a data set folder has no hosts or tasks)",
            file=sys.stderr,
        )
        return 2
    try:
        if args.from_redis:
            checkpoint = _from_redis(args)
        else:
            train, _, _ = load_dataset_dir(args.data)
            names = [f"f{i}" for i in range(train.shape[1])]
            cfg = GonConfig(
                n_features=len(names),
                window=args.window,
                epochs=args.epochs,
                seed=args.seed,
                fault_score=args.fault_score,
            )
            checkpoint = train_from_series(
                train,
                names,
                cfg,
                min_span=args.min_span,
                pot_q=args.pot_q,
                pot_level=args.pot_level,
                progress=not args.quiet,
                source=args.data,
            )
    except (DatasetError, ConfigError, ValueError) as exc:
        print(f"dragon-detector train: {exc}", file=sys.stderr)
        return 2
    checkpoint.save(args.out)
    report = {
        "out": args.out,
        "model_id": checkpoint.model_id,
        "scope": checkpoint.config.scope,
        "threshold": checkpoint.pot_state().z_q,
    }
    if args.plot:
        from dragon.detector.svgplot import write_loss_svg

        write_loss_svg(
            args.plot, checkpoint.meta["history"], f"GON {checkpoint.model_id} on {checkpoint.meta['source']}"
        )
        report["plot"] = args.plot
    print(json.dumps(report))
    return 0


def _from_redis(args):
    """A checkpoint of what the LEI recorded in Redis (DRAGON_REDIS_*, DRAGON_LEI), of ``args.scope``."""
    from dragon.detector.config import DetectorConfig
    from dragon.detector.learning import gon_config, train_recorded
    from dragon.service.known import load_from_env
    from dragon.store import WindowStore, connect

    settings = load_from_env(DetectorConfig)
    settings = replace(
        settings, scope=args.scope, window=args.window, train_epochs=args.epochs, fault_score=args.fault_score
    )
    lei = settings.common.service.lei
    store = WindowStore(connect(settings.redis), lei, settings.history)
    history = {host: store.all_stored(host) for host in store.hosts()}
    history = {host: samples for host, samples in history.items() if len(samples) >= 2}
    if not history:
        raise ValueError(f"no host of LEI {lei!r} has recorded samples in Redis")
    return train_recorded(
        history,
        gon_config(settings, seed=args.seed),
        pot_q=args.pot_q,
        pot_level=args.pot_level,
        broker_host=settings.broker_host,
        lei=lei,
        progress=not args.quiet,
    )
