"""What asking for N alarms in a row before a fault starts (DRAGON_FAULT_START_WINDOWS) does to the
fault events a bench score would raise on a FTSAD-shaped folder's labels.

Reads ``labels.npy`` of DATA and, per bench result given (``RESULT.json`` beside its
``RESULT.scores.npy``), the alarms at its static POT threshold, and replays them through the
fault state's rule (``dragon.detector.health.faults_in_force``: N alarms in a row open a fault,
``--clear`` normal windows end it). Per N it prints, as a Markdown table:

- ``segments_in_force``: labelled segments during which a fault was in force at some step (one
  opened before the segment and still open counts: that is what a subscriber sees);
- ``delay_median``: steps from a segment's start to its first step with a fault in force;
- ``false_starts``: starts on a step outside every segment, and per 1000 steps.

Nothing is tuned on it: it shows the trade the setting makes, one window of delay per N for the
lone alarms it drops.

    .venv/bin/python scripts/start_windows.py ../shared/data/FTSAD-55 out/FTSAD-55-gon.json --windows 1 2 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dragon.detector import metrics
from dragon.detector.bench import scores_path
from dragon.detector.health import faults_in_force
from dragon.detector.online import OnlineSettings
from dragon.records import markdown_table

COLUMNS = ("data", "score", "N", "segments_in_force", "delay_median", "false_starts", "per_1000_steps")


def replayed(truth: np.ndarray, alarms: np.ndarray, clear: int, start_windows: int) -> dict:
    in_force = np.asarray(faults_in_force(alarms.astype(int), clear, start_windows))
    starts = np.flatnonzero(in_force & ~np.r_[False, in_force[:-1]])
    delays = [
        int(np.argmax(in_force[begin:end])) for begin, end in metrics.segments(truth) if in_force[begin:end].any()
    ]
    false_starts = int((~truth[starts]).sum())
    return {
        "N": start_windows,
        "segments_in_force": f"{len(delays)}/{len(metrics.segments(truth))}",
        "delay_median": float(np.median(delays)) if delays else "-",
        "false_starts": false_starts,
        "per_1000_steps": round(1000 * false_starts / len(truth), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Fault starts, segments covered and delay for N alarms in a row, replayed from bench results"
    )
    parser.add_argument("data", type=Path, help="a folder with labels.npy (as ../shared/data/FTSAD-*)")
    parser.add_argument("results", type=Path, nargs="+", help="RESULT.json files of `dragon-detector bench`")
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 2, 3], help="values of N (default: 1 2 3)")
    parser.add_argument(
        "--clear",
        type=int,
        default=OnlineSettings().clear_windows,
        help="normal windows in a row that end a fault (default: the service's)",
    )
    args = parser.parse_args()
    if min(args.windows) < 1 or args.clear < 1:
        parser.error("--windows and --clear must be at least 1")
    truth = metrics.step_truth(np.load(args.data / "labels.npy"))
    rows = []
    for result in args.results:
        report = json.loads(result.read_text())
        if report["threshold"] != report["threshold_initial"]:
            parser.error(f"{result}: its threshold moved during the test (SPOT/DSPOT); give a static POT result")
        scores = np.load(scores_path(result))
        if len(scores) != len(truth):
            parser.error(f"{result}: {len(scores)} scores for {len(truth)} labelled steps")
        name = result.name.removesuffix(".json").removeprefix(f"{args.data.name}-")
        for n in args.windows:
            rows.append(
                {"data": args.data.name, "score": name} | replayed(truth, scores >= report["threshold"], args.clear, n)
            )
    print(markdown_table(COLUMNS, rows))


if __name__ == "__main__":
    main()
