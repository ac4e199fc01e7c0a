"""Summarise `dragon-detector bench` results over seeds: mean, spread and runs, as Markdown.

Each result file must be named ``<DATA>-<NAME>-s<SEED>.json`` (for example
``FTSAD-25-gon-s3.json``), as written by

    for seed in 0 1 2 3 4; do
      dragon-detector bench --data ../shared/data/FTSAD-25 --out out/FTSAD-25-gon-s$seed.json \\
        --model gon --seed $seed --threads 1
    done

Rows are grouped by ``<DATA>-<NAME>``; each cell is ``mean ± population standard deviation``
over the group's seeds (``mean`` alone when there is one run).

    python scripts/summarise_bench.py out/*.json
    python scripts/summarise_bench.py --columns federation out/rpi16/*.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

NAME = re.compile(r"^(?P<group>.+)-s(?P<seed>\d+)\.json$")
COSTS = (  # heading, key, digits
    ("train s", "train_s", 1),
    ("step ms p50", "step_latency_ms_p50", 2),
    ("step ms p99", "step_latency_ms_p99", 2),
    ("peak RSS MiB", "peak_rss_mb", 0),
)
AUCS = (("ROC-AUC", "roc_auc", 3), ("PR-AUC", "pr_auc", 3))
AT_THRESHOLD = (("F1", "f1", 3), ("F1-PA", "f1_pa", 3), ("PA%K AUC", "f1_pa_k_auc", 3))
COLUMNS = {
    "bench": (*AUCS, *AT_THRESHOLD, *COSTS),
    # dragon-detector bench --online: also the AUCs of score / threshold and the fine-tunes per run
    "online": (
        *AUCS,
        ("ROC-AUC rel.", "roc_auc_relative", 3),
        ("PR-AUC rel.", "pr_auc_relative", 3),
        *AT_THRESHOLD,
        ("fine-tunes", lambda report: None if report.get("fine_tunes") is None else len(report["fine_tunes"]), 1),
    ),
    # dragon-detector bench-federation: quality per (interval, host) cell, false alarms by placement
    "federation": (
        *AUCS,
        ("F1", "f1", 3),
        ("HitRate@100%", "hit_rate_100", 3),
        ("false alarms, placement changed", "false_alarm_rate_placement_changed", 4),
        ("false alarms, unchanged", "false_alarm_rate_placement_unchanged", 4),
        *COSTS,
    ),
}


def load(paths: list[Path]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for path in sorted(paths):
        match = NAME.match(path.name)
        if match is None:
            raise SystemExit(f"{path}: expected a name like FTSAD-25-gon-s3.json")
        groups[match["group"]].append(json.loads(path.read_text()))
    return groups


def cell(values: list[float], digits: int) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.pstdev(values):.{digits}f}"


def _values(results: list[dict], key) -> list[float]:
    """The defined values of ``key`` (a report key, or a function of the report) over ``results``."""
    values = (key(r) if callable(key) else r.get(key) for r in results)
    return [value for value in values if value is not None]


def table(groups: dict[str, list[dict]], columns=COLUMNS["bench"]) -> str:
    lines = [
        "| data-model | runs | " + " | ".join(heading for heading, _, _ in columns) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in columns) + " |",
    ]
    for group, results in groups.items():
        cells = [cell(_values(results, key), digits) for _, key, digits in columns]
        lines.append(f"| {group} | {len(results)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+", help="bench result files <DATA>-<NAME>-s<SEED>.json")
    parser.add_argument(
        "--columns",
        choices=sorted(COLUMNS),
        default="bench",
        help="bench (default), bench --online (online) or bench-federation (federation) results",
    )
    args = parser.parse_args()
    print(table(load(args.results), COLUMNS[args.columns]))


if __name__ == "__main__":
    main()
