"""Diagnostic: SPOT that learns a score only once ``lag`` later windows passed without an alarm.

SPOT (``dragon.detector.pot.StreamingPot``) learns every score below its threshold as it
arrives. The first steps of a fault often score just under the threshold before its first
alarm; learnt as peaks, they raise the threshold the rest of the fault is judged by. Holding
each score back for ``lag`` windows, and dropping the held ones when an alarm comes, keeps
that onset out of the tail. This script measures what that would change, with the bench's
protocol (fit on train.npy, POT on the training scores, q 1e-3, level 0.98), for each model
and seed: the point-wise F1 and PA%K area at SPOT's threshold for each lag. It reads the test
labels to measure only; nothing is chosen on them. Not what the service does (yet).

    .venv/bin/python scripts/spot_learning_lag.py --data ../shared/data/FTSAD-1 --seeds 0 1 2 3 4
    .venv/bin/python scripts/spot_learning_lag.py --data ../shared/data/FTSAD-1 --model zscore
"""

from __future__ import annotations

import argparse
import json
from collections import deque

import numpy as np
import torch

from dragon.detector import metrics
from dragon.detector.baselines import create_model
from dragon.detector.bench import BenchConfig, fit_and_calibrate, load_benchmark
from dragon.detector.pot import PotState, StreamingPot


def lagged_spot_thresholds(state: PotState, scores: np.ndarray, lag: int) -> np.ndarray:
    """The threshold in force at each step when SPOT learns each normal score ``lag`` windows late.

    An alarm goes to SPOT at once (it learns an alarm as a censored excess, never as a value)
    and drops the scores still held: they may be the fault's onset. ``lag`` 0 is plain SPOT.
    """
    pot = StreamingPot(state)
    held: deque[float] = deque()
    thresholds = np.empty(len(scores))
    for i, score in enumerate(np.asarray(scores, dtype=np.float64)):
        thresholds[i] = pot.threshold
        if lag == 0 or score >= thresholds[i]:
            held.clear()
            pot.update(float(score))
            continue
        held.append(float(score))
        if len(held) > lag:
            pot.update(held.popleft())
    return thresholds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder with train.npy, test.npy and labels.npy")
    parser.add_argument("--model", default="gon", help="bench model (gon, zscore, pca, random)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="model seeds (default: 0)")
    parser.add_argument("--lags", type=int, nargs="+", default=[0, 3, 10], help="lags in windows (default: 0 3 10)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    if min(args.lags) < 0:
        parser.error("--lags must be 0 or more")
    torch.set_num_threads(args.threads)
    train, test, labels = load_benchmark(args.data)
    truth = metrics.step_truth(labels)
    for seed in args.seeds:
        cfg = BenchConfig(data=args.data, model=args.model, seed=seed)  # the bench's POT risk and level
        model = create_model(cfg.model, seed=cfg.seed)
        state, _, _ = fit_and_calibrate(model, train, cfg)
        scores, _ = model.score(test, history=train)
        row = {"data": args.data, "model": args.model, "seed": seed}
        row["roc_auc"] = round(metrics.roc_auc(scores, truth), 4)
        for lag in args.lags:
            alarms = scores >= lagged_spot_thresholds(state, scores, lag)
            row[f"f1_lag{lag}"] = round(metrics.precision_recall_f1(alarms, truth).f1, 4)
            row[f"pa_k_auc_lag{lag}"] = round(metrics.f1_pa_k_auc(alarms, truth), 4)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
