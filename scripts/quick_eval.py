"""Quick evaluation of the GON detector on a FTSAD-shaped folder; prints one JSON line.

Trains on train.npy only (hyper-parameters are GonConfig's defaults, chosen on training data;
POT is fitted on the training scores), then scores test.npy and compares with labels.npy.
The last ``window`` training rows are prepended to the test series so the first test windows
are real history rather than padding (FTSAD's test set continues its training set); their
scores are dropped. A time step is anomalous when any of its label dimensions is 1.

    python scripts/quick_eval.py --data /work/shared/data/FTSAD-55
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from dragon.detector.gon import GonConfig, score_series
from dragon.detector.train import load_dataset_dir, train_from_series
from dragon.logs import configure


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (as in the Mann-Whitney U statistic)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    counts = np.diff(np.r_[starts, len(values)])
    group = np.repeat(np.arange(len(starts)), counts)
    ranks = np.empty(len(values))
    ranks[order] = (starts + (counts + 1) / 2.0)[group]
    return ranks


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve = P(score of an anomaly > score of a normal point), ties 1/2."""
    positives = int(truth.sum())
    negatives = len(truth) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    rank_sum = average_ranks(scores)[truth].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def point_adjust(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """A labelled segment counts as fully detected when any of its points is flagged."""
    adjusted = predicted.copy()
    edges = np.diff(np.r_[0, truth.astype(np.int8), 0])
    for start, stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        if predicted[start:stop].any():
            adjusted[start:stop] = True
    return adjusted


def f1(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    tp = int((predicted & truth).sum())
    precision = tp / max(int(predicted.sum()), 1)
    recall = tp / max(int(truth.sum()), 1)
    score = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {"f1": round(score, 4), "precision": round(precision, 4), "recall": round(recall, 4)}


def best_f1(scores: np.ndarray, truth: np.ndarray) -> float:
    """Best point-wise F1 over every threshold. Uses the test labels: a diagnostic of ranking
    quality that separates it from POT's choice of threshold, never used to choose anything."""
    order = np.argsort(-scores, kind="mergesort")
    ordered = scores[order]
    tp = np.cumsum(truth[order])
    fp = np.cumsum(~truth[order])
    last_of_tie = np.r_[ordered[1:] != ordered[:-1], True]  # a threshold cannot split ties
    tp, fp = tp[last_of_tie], fp[last_of_tie]
    return float((2 * tp / (tp + fp + truth.sum())).max())


def evaluate(data: Path, cfg_overrides: dict, progress: bool = False) -> dict:
    train, test, labels = load_dataset_dir(data)
    if test is None or labels is None:
        raise SystemExit(f"{data}: quick_eval needs test.npy and labels.npy")
    cfg = GonConfig(n_features=train.shape[1], **cfg_overrides)
    names = [f"dim{j}" for j in range(train.shape[1])]
    started, cpu_started = time.perf_counter(), time.process_time()
    # FTSAD is already min-max scaled to [0, 1] (data/README.md): a span of 1 keeps that unit
    # for features that were constant in training instead of magnifying their first change.
    checkpoint = train_from_series(train, names, cfg, min_span=1.0, progress=progress, source=str(data))
    train_seconds, train_cpu = time.perf_counter() - started, time.process_time() - cpu_started

    model, scaler, pot = checkpoint.build_model(), checkpoint.scaler(), checkpoint.pot_state()
    started = time.perf_counter()
    series = scaler.transform(np.concatenate([train[-cfg.window :], test])).astype(np.float32)
    scores, _ = score_series(model, cfg, series)
    scores = scores[cfg.window :]
    score_seconds = time.perf_counter() - started

    truth = (labels.reshape(len(labels), -1) > 0).any(axis=1)
    predicted = scores >= pot.z_q
    return {
        "data": data.name,
        "model_id": checkpoint.model_id,
        "train": list(train.shape),
        "test": list(test.shape),
        "anomaly_rate": round(float(truth.mean()), 4),
        "roc_auc": round(roc_auc(scores, truth), 4),
        **f1(predicted, truth),
        **{f"{key}_pa": value for key, value in f1(point_adjust(predicted, truth), truth).items()},
        "f1_best_diagnostic": round(best_f1(scores, truth), 4),
        "threshold": round(pot.z_q, 5),
        "pot_method": pot.method,
        "alarms": int(predicted.sum()),
        "epochs_run": checkpoint.meta["history"]["epochs_run"],
        "train_seconds": round(train_seconds, 2),
        "train_cpu_seconds": round(train_cpu, 2),
        "score_seconds": round(score_seconds, 2),
        "load_average": round(os.getloadavg()[0], 2),  # the machine is shared: timings depend on it
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with train.npy, test.npy, labels.npy")
    parser.add_argument("--seed", type=int, default=0, help="GonConfig.seed (default 0)")
    parser.add_argument("--epochs", type=int, default=None, help="override GonConfig.epochs")
    parser.add_argument("--progress", action="store_true", help="show a progress bar while training")
    args = parser.parse_args()
    configure(level="warning", json=True)
    overrides = {"seed": args.seed} | ({"epochs": args.epochs} if args.epochs else {})
    print(json.dumps(evaluate(args.data, overrides, args.progress)), flush=True)


if __name__ == "__main__":
    main()
