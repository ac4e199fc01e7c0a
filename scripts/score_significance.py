"""Can a FTSAD-shaped folder's labels tell each bench score from chance, and from a reference score?

Reads ``labels.npy`` of DATA and the per-step scores the bench wrote (``RESULT.scores.npy``),
and runs the circular-shift test of ``dragon.detector.significance`` on ROC-AUC and PR-AUC:
each score against chance, and each against the first one given (the reference, e.g. the
z-score baseline). Nothing is tuned on it; it says how much a difference on these labels means.

    .venv/bin/python scripts/score_significance.py ../shared/data/FTSAD-25 \\
        out/FTSAD-25-zscore.scores.npy out/FTSAD-25-gon.scores.npy
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dragon.detector import metrics, significance
from dragon.detector.svgplot import Interval, write_intervals_svg
from dragon.records import markdown_table

COLUMNS = (
    "data",
    "score",
    "metric",
    "observed",
    "chance_95",
    "p_chance",
    "minus_reference",
    "difference_95",
    "p_difference",
)


def score_name(path: Path) -> str:
    return path.name.removesuffix(".npy").removesuffix(".scores")


def rows(data: Path, score_files: list[Path], max_shifts: int) -> list[dict[str, object]]:
    truth = metrics.step_truth(np.load(data / "labels.npy"))
    scores = {score_name(path): np.load(path) for path in score_files}
    for name, values in scores.items():
        if values.shape != truth.shape:
            raise SystemExit(f"{name}: {values.shape} scores for {truth.shape} labelled steps of {data}")
    reference = next(iter(scores))
    found = []
    for name, values in scores.items():
        for metric_name, metric in significance.METRICS.items():
            chance = significance.against_chance(values, truth, metric, max_shifts)
            row = {
                "data": data.name,
                "score": name,
                "metric": metric_name,
                "observed": round(chance.observed, 3),
                "chance_95": f"{chance.null_low:.3f}–{chance.null_high:.3f}",
                "chance_low": round(chance.null_low, 3),
                "chance_high": round(chance.null_high, 3),
                "p_chance": round(chance.p_value, 3),
                "minus_reference": "",
                "difference_95": "",
                "p_difference": "",
                "shifts": chance.shifts,
            }
            if name != reference:
                diff = significance.against_each_other(values, scores[reference], truth, metric, max_shifts)
                row |= {
                    "minus_reference": f"{diff.observed:+.3f}",
                    "difference_95": f"{diff.null_low:+.3f}–{diff.null_high:+.3f}",
                    "p_difference": round(diff.p_value, 3),
                }
            found.append(row)
    return found


def panels(results: list[dict[str, object]], alpha: float) -> dict[str, list[Interval]]:
    """The rows as the plot's panels: one per metric, one interval per score."""
    found: dict[str, list[Interval]] = {}
    for row in results:
        significant = float(row["p_chance"]) < alpha
        interval = Interval(
            str(row["score"]), float(row["observed"]), float(row["chance_low"]), float(row["chance_high"]), significant
        )
        found.setdefault(str(row["metric"]), []).append(interval)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder with labels.npy (FTSAD layout)")
    parser.add_argument(
        "scores", nargs="+", type=Path, help="RESULT.scores.npy files of the bench; the first is the reference"
    )
    parser.add_argument("--max-shifts", type=int, default=1000, help="evenly spaced label shifts to try (default 1000)")
    parser.add_argument("--json", action="store_true", help="one JSON object a line instead of a Markdown table")
    parser.add_argument("--plot", type=Path, help="also draw each score against chance, per metric, as SVG")
    parser.add_argument("--alpha", type=float, default=0.05, help="p below which a dot is filled (default 0.05)")
    args = parser.parse_args()
    results = rows(args.data, args.scores, args.max_shifts)
    if args.plot:
        write_intervals_svg(args.plot, panels(results, args.alpha), f"{args.data.name}: each score against chance")
    print("\n".join(json.dumps(result) for result in results) if args.json else markdown_table(COLUMNS, results))


if __name__ == "__main__":
    main()
