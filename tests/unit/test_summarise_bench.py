"""scripts/summarise_bench.py: seed groups, mean ± spread, and the --online report's fine-tunes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


def summarise(repo, *args) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(repo / "scripts" / "summarise_bench.py"), *map(str, args)],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().splitlines()


def test_online_columns_count_the_fine_tunes_of_each_run(repo, tmp_path) -> None:
    base = {"roc_auc": 0.8, "pr_auc": 0.6, "roc_auc_relative": 0.9, "pr_auc_relative": 0.7}
    base |= {"f1": 0.5, "f1_pa": 0.7, "f1_pa_k_auc": 0.6}
    for seed, tunes in enumerate([[{"step": 3}], [{"step": 3}, {"step": 90}, {"step": 200}]]):
        (tmp_path / f"FTSAD-1-gon-on-s{seed}.json").write_text(json.dumps(base | {"fine_tunes": tunes}))
    (tmp_path / "FTSAD-1-gon-off-s0.json").write_text(json.dumps(base | {"fine_tunes": None}))
    header, _, off, on = summarise(repo, "--columns", "online", *sorted(tmp_path.glob("*.json")))
    assert header.split(" | ")[-1] == "fine-tunes |"
    assert on.startswith("| FTSAD-1-gon-on | 2 |") and on.endswith("| 2.0 ± 1.0 |")
    assert off.endswith("| – |")  # not run on-line: no count
