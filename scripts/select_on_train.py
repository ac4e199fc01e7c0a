"""Choose detector settings on training data only: synthetic faults in a held-out training tail.

The FTSAD test labels must never choose a setting. This script reads only ``train.npy``:
the first part of it fits each candidate, and the chronological tail is held out. Sudden
upward faults are injected into a copy of that tail (the fault model of the DRAGON paper,
sec. V-B: a CPU, memory, disk or network hog raises a host's utilisation): segments of
``--min-length``..``--max-length`` steps in which a random subset of the dimensions rises by
a random fraction of the scaled range. Each candidate scores the tail (with the fit part as
history) and is rated by ROC-AUC and PR-AUC against the injected segments, over several seeds.
With ``--pot-q``, POT is also fitted on the candidate's scores of the fit part (as the bench
fits it on the training scores) at each risk q, and the tail's alarms at that threshold are
rated by point-wise F1 and the PA%K area: this chooses q on training data too.

Candidates are ``NAME=MODEL[:key=value,...]``, with the parameters of ``dragon-detector
bench --param``. Example:

    python scripts/select_on_train.py --data ../shared/data/FTSAD-25 --seeds 0 1 2 \\
        --candidate zscore=zscore --candidate mlp=gon:architecture=mlp \\
        --candidate dragon=gon:architecture=dragon,gen_optimizer=adahessian,gen_restart_every=5

It prints one JSON line per (candidate, seed), then a table of means and spreads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from dragon.detector import metrics
from dragon.detector.baselines import create_model
from dragon.detector.bench_cli import parse_params
from dragon.detector.pot import DEFAULT_LEVEL, fit_pot
from dragon.detector.train import load_dataset_dir
from dragon.logs import configure


def inject_faults(
    tail: np.ndarray, rng: np.random.Generator, count: int, lengths: tuple[int, int], rise: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """A copy of ``tail`` (T, D) with ``count`` upward fault segments, and its (T,) labels."""
    faulty, truth = tail.copy(), np.zeros(len(tail), dtype=bool)
    starts = np.sort(rng.choice(np.arange(lengths[1], len(tail) - lengths[1]), size=count, replace=False))
    for start in starts:
        length = int(rng.integers(lengths[0], lengths[1] + 1))
        most = max(1, tail.shape[1] // 3)  # a fault hits up to a third of the dimensions
        dims = rng.choice(tail.shape[1], size=int(rng.integers(1, most + 1)), replace=False)
        faulty[start : start + length, dims] += rng.uniform(*rise, size=len(dims))
        truth[start : start + length] = True
    return faulty, truth


def parse_candidate(text: str) -> tuple[str, str, dict]:
    name, _, spec = text.partition("=")
    model, _, params = spec.partition(":")
    if not name or not model:
        raise argparse.ArgumentTypeError(f"expected NAME=MODEL[:key=value,...], got {text!r}")
    try:
        return name, model, parse_params([item for item in params.split(",") if item])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> list[dict]:
    train, _, _ = load_dataset_dir(args.data)
    cut = int(len(train) * (1 - args.tail))
    fit_part, tail = train[:cut], train[cut:]
    rows = []
    for seed in args.seeds:
        faulty, truth = inject_faults(
            tail, np.random.default_rng(seed), args.faults, (args.min_length, args.max_length), (0.2, 0.8)
        )
        for name, model_name, params in args.candidate:
            torch.manual_seed(seed)
            model = create_model(model_name, seed=seed, **params)
            started = time.perf_counter()
            model.fit(fit_part)
            fit_s = time.perf_counter() - started
            scores, _ = model.score(faulty, history=fit_part)
            row = {
                "data": str(args.data),
                "candidate": name,
                "seed": seed,
                "roc_auc": round(metrics.roc_auc(scores, truth), 4),
                "pr_auc": round(metrics.average_precision(scores, truth), 4),
                "fit_s": round(fit_s, 2),
            }
            if args.pot_q:
                row |= at_pot_thresholds(model.score(fit_part)[0], scores, truth, args.pot_q)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def at_pot_thresholds(fit_scores: np.ndarray, scores: np.ndarray, truth: np.ndarray, risks: list[float]) -> dict:
    """F1 and PA%K area of the alarms at the POT threshold fitted on ``fit_scores``, for each risk q."""
    rated = {}
    for q in risks:
        alarms = scores >= fit_pot(fit_scores, q=q, level=DEFAULT_LEVEL).z_q
        rated[f"f1_q{q:g}"] = round(metrics.precision_recall_f1(alarms, truth).f1, 4)
        rated[f"f1_pa_k_auc_q{q:g}"] = round(metrics.f1_pa_k_auc(alarms, truth), 4)
    return rated


def table(rows: list[dict]) -> str:
    rated = [key for key in rows[0] if key in ("roc_auc", "pr_auc") or key.startswith(("f1_q", "f1_pa_k_auc_q"))]
    lines = [
        "| candidate | " + " | ".join(f"{key} mean (min-max)" for key in rated) + " | fit s (median) |",
        "| --- |" + " --- |" * (len(rated) + 1),
    ]
    for name in dict.fromkeys(row["candidate"] for row in rows):
        mine = [row for row in rows if row["candidate"] == name]
        cells = []
        for key in rated:
            values = [row[key] for row in mine]
            cells.append(f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})")
        fit = statistics.median(row["fit_s"] for row in mine)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {fit:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a folder with train.npy (test files are not read)")
    parser.add_argument(
        "--candidate", type=parse_candidate, action="append", required=True, help="NAME=MODEL[:key=value,...]"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fault layouts and model seeds")
    parser.add_argument("--tail", type=float, default=0.3, help="fraction of train.npy held out (default: 0.3)")
    parser.add_argument("--faults", type=int, default=8, help="fault segments injected per seed (default: 8)")
    parser.add_argument("--min-length", type=int, default=1, help="shortest fault, steps (default: 1)")
    parser.add_argument("--max-length", type=int, default=10, help="longest fault, steps (default: 10)")
    parser.add_argument(
        "--pot-q",
        type=float,
        nargs="+",
        default=[],
        help="also rate the alarms at the POT threshold for each of these risks q (e.g. 1e-2 1e-3 1e-4)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    configure(level="warning", json=True)
    torch.set_num_threads(args.threads)
    rows = run(args)
    print()
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
