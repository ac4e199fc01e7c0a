"""Measure SPOT's learning lag: F1 and PA%K area at the threshold, for several lags at once.

SPOT (``dragon.detector.pot.StreamingPot``) with ``lag`` > 0 learns each normal score ``lag``
scores late, and the first alarm after at least ``lag`` normal scores drops those not yet
learnt: the first steps of a fault often score just under the threshold before its first
alarm, and learnt as peaks they would raise the threshold the rest of the fault is judged by.
``dragon-detector bench --pot-mode spot --pot-lag N`` measures one lag; this script fits each model once (the bench's
protocol: fit on train.npy, POT on the training scores, q 1e-3, level 0.98) and rates the
test scores at SPOT's threshold for every lag given, for each model and seed: point-wise F1
and the PA%K area. It reads the test labels to measure only; nothing is chosen on them.

    .venv/bin/python scripts/spot_learning_lag.py --data ../shared/data/FTSAD-1 --seeds 0 1 2 3 4
    .venv/bin/python scripts/spot_learning_lag.py --data ../shared/data/FTSAD-1 --model zscore
"""

from __future__ import annotations

import argparse
import json

import torch

from dragon.detector import metrics
from dragon.detector.baselines import create_model
from dragon.detector.bench import BenchConfig, fit_and_calibrate, load_benchmark
from dragon.detector.pot import spot_thresholds


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
            alarms = scores >= spot_thresholds(state, scores, lag=lag)
            row[f"f1_lag{lag}"] = round(metrics.precision_recall_f1(alarms, truth).f1, 4)
            row[f"pa_k_auc_lag{lag}"] = round(metrics.f1_pa_k_auc(alarms, truth), 4)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
