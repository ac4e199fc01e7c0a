"""``dragon-detector bench-federation``: injected host faults, joint and per-host models, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import structlog

from dragon.detector.cli import main
from dragon.detector.federation_bench import FederationBenchConfig, inject_host_faults
from dragon.detector.federation_data import load_federation_dir

pytestmark = pytest.mark.unit

HOSTS, SLOTS = 4, 5
TINY_GON = ["--param", "epochs=1", "--param", "window=3", "--param", "hidden=8", "--param", "gen_steps=2"]


@pytest.fixture(autouse=True)
def _restore_logging():
    yield
    structlog.reset_defaults()


def make_federation(root: Path, steps: int = 70) -> Path:
    """A 4-host federation whose cpu follows its tasks; the first interval has none placed."""
    rng = np.random.default_rng(1)
    schedule = np.zeros((steps, SLOTS, HOSTS))
    for t in range(1, steps):
        schedule[t, np.arange(SLOTS), rng.integers(HOSTS, size=SLOTS)] = 1.0
    hosts = 40.0 + rng.standard_normal((steps, HOSTS, 3))
    hosts[:, :, 0] = 20.0 * schedule.sum(axis=1) + rng.standard_normal((steps, HOSTS))
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "time_series.npy", hosts.reshape(steps, -1))
    np.save(root / "schedule_series.npy", schedule)
    return root


def bench(data: Path, out: Path, *extra: str) -> int:
    return main(
        ["bench-federation", "--data", str(data), "--out", str(out), "--leis", "2", "--latency-samples", "5", *extra]
    )


def test_faults_rise_single_hosts_where_labelled_and_are_seeded(tmp_path):
    trace = load_federation_dir(make_federation(tmp_path / "fed"), leis=2).started()
    train, test = trace.part(0, 48), trace.part(48)
    cfg = FederationBenchConfig(data="unused", faults=3, fault_seed=5)
    injected = inject_host_faults(test, train, cfg)
    raised = injected.trace.hosts - test.hosts
    assert ((raised > 0) == injected.labels.astype(bool)).all()
    starts = [np.diff(np.r_[0, injected.labels[:, h].any(axis=1), 0].astype(int)).clip(0).sum() for h in range(HOSTS)]
    assert sum(starts) == 3  # three separate segments, each on one host
    again = inject_host_faults(test, train, cfg)
    np.testing.assert_array_equal(again.trace.hosts, injected.trace.hosts)
    other = inject_host_faults(test, train, FederationBenchConfig(data="unused", faults=3, fault_seed=6))
    assert not np.array_equal(other.labels, injected.labels)
    with pytest.raises(ValueError, match="too short"):
        inject_host_faults(test.part(0, 8), train, cfg)
    crowded = FederationBenchConfig(data="unused", faults=10, fault_lengths=(5, 5))
    with pytest.raises(ValueError, match="could not place 10 separate faults"):
        inject_host_faults(test, train, crowded)  # each host fits at most 2 such faults


@pytest.mark.parametrize("model", ["zscore", "pca", "random", "gon-host", "gon"])
def test_every_model_writes_a_report_and_host_scores(tmp_path, capsys, model):
    out = tmp_path / f"{model}.json"
    extra = TINY_GON if model.startswith("gon") else []
    assert bench(make_federation(tmp_path / "fed"), out, "--model", model, *extra) == 0
    report = json.loads(out.read_text())
    for key in ("roc_auc", "pr_auc", "f1", "hit_rate_100", "false_alarm_rate_placement_changed", "step_latency_ms_p99"):
        assert report[key] is not None, key
    assert 0.0 <= report["roc_auc"] <= 1.0
    assert report["params"]["hosts"] == HOSTS and report["params"]["leis"] == 2
    assert report["params"]["train_steps"] == 48 and report["params"]["test_steps"] == 21  # 69 busy intervals
    assert report["params"]["torch_cpu_capability"]  # scores differ a little between CPUs: say which
    scores = np.load(tmp_path / f"{model}.scores.npy")
    assert scores.shape == (21, HOSTS) and np.isfinite(scores).all()
    assert json.loads(capsys.readouterr().out)["model"] == model


def test_zscore_finds_the_injected_faults(tmp_path):
    out = tmp_path / "z.json"
    assert bench(make_federation(tmp_path / "fed"), out, "--model", "zscore", "--faults", "3") == 0
    assert json.loads(out.read_text())["roc_auc"] > 0.8


def test_the_joint_model_trains_in_minibatches_of_as_many_host_windows_as_the_per_host_one(tmp_path):
    out = tmp_path / "g.json"
    assert bench(make_federation(tmp_path / "fed"), out, *TINY_GON, "--ablation", "notopo") == 0
    model_config = json.loads(out.read_text())["params"]["model_config"]
    assert model_config["batch_size"] == 16  # 64 host windows / 4 hosts
    assert model_config["topology"] is False


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "nope"], "unknown model 'nope'"),
        (["--model", "zscore", "--ablation", "notopo"], "applies to the GON models"),
        (["--leis", "3"], "cannot be split into 3 LEIs"),
        (["--train-fraction", "1.5"], "train_fraction"),
        (["--faults", "40"], "too short"),
    ],
)
def test_bad_options_exit_2_with_a_message(tmp_path, capsys, extra, message):
    args = ["--model", "zscore", *extra] if "--model" not in extra else extra
    assert bench(make_federation(tmp_path / "fed"), tmp_path / "r.json", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("dragon-detector bench-federation: ") and message in err


def test_a_malformed_folder_exits_2_naming_the_file(tmp_path, capsys):
    data = make_federation(tmp_path / "fed")
    np.save(data / "schedule_series.npy", np.full((70, SLOTS, HOSTS), 0.5))
    assert bench(data, tmp_path / "r.json", "--model", "zscore") == 2
    assert "one-hot" in capsys.readouterr().err


def test_the_heatmap_has_a_cell_per_host_and_interval_with_faults_outlined(tmp_path):
    import xml.etree.ElementTree as ET

    out, plot = tmp_path / "z.json", tmp_path / "plots" / "z.svg"
    assert bench(make_federation(tmp_path / "fed"), out, "--model", "zscore", "--plot", str(plot)) == 0
    cells = [r for r in ET.parse(plot).getroot() if r.tag.endswith("rect")][1:]  # the first is the background
    assert len(cells) == 21 * HOSTS
    report = json.loads(out.read_text())
    outlined = sum(1 for r in cells if r.get("stroke") == "black")
    alarms = sum(1 for r in cells if r.get("fill") == "#d6604d")
    assert outlined == round(report["anomaly_rate"] * 21 * HOSTS) and alarms == report["alarms"]


def test_the_heatmap_is_svg_only(tmp_path, capsys):
    assert bench(make_federation(tmp_path / "fed"), tmp_path / "r.json", "--model", "zscore", "--plot", "x.png") == 2
    assert "drawn as .svg" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["gon", "gon-host"])
def test_scoring_with_history_equals_scoring_the_whole_trace(tmp_path, model):
    """The first test windows hold the last training rows: scoring the test part after its history
    gives exactly what scoring the joined trace gives for those intervals."""
    from dragon.detector.federation_bench import FEDERATION_MODELS

    trace = load_federation_dir(make_federation(tmp_path / "fed"), leis=2).started()
    train, test = trace.part(0, 48), trace.part(48)
    gon = FEDERATION_MODELS[model]({"epochs": 1, "window": 3, "hidden": 8, "gen_steps": 2}, 0)
    gon.fit(train)
    after_history, _ = gon.score(test, history=train)
    whole, _ = gon.score(train.then(test), history=train.part(0, 0))
    np.testing.assert_allclose(after_history, whole[48:], rtol=1e-5, atol=1e-6)
