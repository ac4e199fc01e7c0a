"""How much of what is labelled anomalous in a FTSAD-shaped folder looks like training data?

A detector trained on normal operation can only flag what differs from it. When labelled test
rows lie inside the per-dimension range seen in training, a value-based detector cannot tell
them from normal rows, and its ROC-AUC is capped by the labels rather than by the model. This
script measures that, using train.npy and the test labels only (nothing is tuned on it):

- ``cells_inside``: labelled (step, dimension) cells whose value is within [min, max] of
  that dimension in train.npy;
- ``labelled_rows_inside`` / ``normal_rows_inside``: test rows whose every dimension is within
  the training range, among labelled and among unlabelled rows;
- ``dim_inside_min`` / ``dim_inside_median``: per labelled dimension, the fraction of its
  labelled rows inside its training range; the worst dimension and the median one;
- ``rows_all_dims_labelled``: labelled rows on which every dimension is labelled; where it is
  1.0, HitRate@100% and NDCG@100% are 1 for any ranking of the dimensions, even a random one.

    .venv/bin/python scripts/label_evidence.py /work/shared/data/FTSAD-25 /work/shared/data/FTSAD-55
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dragon.detector.bench import load_benchmark
from dragon.detector.metrics import segments
from dragon.records import markdown_table

COLUMNS = (
    "data",
    "segments",
    "labelled_rows",
    "cells_inside",
    "labelled_rows_inside",
    "normal_rows_inside",
    "dim_inside_min",
    "dim_inside_median",
    "rows_all_dims_labelled",
)


def evidence(data: Path) -> dict[str, object]:
    """The measures of the module docstring for one folder; fractions rounded to 4 digits."""
    train, test, labels = load_benchmark(data)
    # Labels of shape [T'] mark whole rows: every dimension of a labelled row counts as labelled.
    cells = np.broadcast_to(labels.astype(bool).reshape(len(labels), -1), test.shape)  # (T', D)
    inside = (test >= train.min(axis=0)) & (test <= train.max(axis=0))  # (T', D)
    rows = cells.any(axis=1)
    dims = np.flatnonzero(cells.any(axis=0))
    per_dim = np.array([inside[cells[:, j], j].mean() for j in dims])
    values = {
        "data": data.name,
        "segments": len(segments(rows)),
        "labelled_rows": int(rows.sum()),
        "cells_inside": inside[cells].mean(),
        "labelled_rows_inside": inside[rows].all(axis=1).mean(),
        "normal_rows_inside": inside[~rows].all(axis=1).mean(),
        "dim_inside_min": per_dim.min(),
        "dim_inside_median": float(np.median(per_dim)),
        "rows_all_dims_labelled": cells[rows].all(axis=1).mean(),
    }
    return {key: round(float(v), 4) if isinstance(v, float | np.floating) else v for key, v in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="+", type=Path, help="folders with train.npy, test.npy, labels.npy")
    parser.add_argument("--json", action="store_true", help="one JSON object a line instead of a Markdown table")
    args = parser.parse_args()
    results = [evidence(folder) for folder in args.data]
    print("\n".join(json.dumps(result) for result in results) if args.json else markdown_table(COLUMNS, results))


if __name__ == "__main__":
    main()
