"""``dragon-detector bench`` end to end on tiny synthetic folders, and its refusals."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import structlog

from dragon.detector.cli import main
from dragon.detector.config import DEFAULT_POT_LAG
from dragon.detector.pot import DEFAULT_LEVEL, DEFAULT_Q

pytestmark = pytest.mark.unit

REQUIRED = (
    "f1_pa precision_pa recall_pa f1 precision recall f1_pa_k_auc roc_auc pr_auc detection_delay_steps "
    "false_alarms_per_1000_steps hit_rate_100 ndcg_100 train_s test_s peak_rss_mb anon_rss_mb step_latency_ms_p50 "
    "step_latency_ms_p99 threshold params"
).split()
# Undefined only in cases these tests avoid (no detected segment, 1-D labels).
FINITE = [key for key in REQUIRED if key != "params"]
PARAMS = "model model_config seed pot data train_shape test_shape labels_shape torch torch_cpu_capability".split()
TINY_GON = ["--param", "epochs=2", "--param", "window=4", "--param", "hidden=8", "--param", "gen_steps=2"]


@pytest.fixture(autouse=True)
def _restore_logging():
    """The command configures structlog for its process; give the next test the defaults back."""
    yield
    structlog.reset_defaults()


def make_dataset(root: Path, d: int = 3, per_dimension: bool = True) -> Path:
    """train (150, d) of noisy sinusoids; test (80, d) with a fault on dimension 1 at steps 40..49."""
    rng = np.random.default_rng(0)
    steps = np.arange(230)[:, None]
    data = 0.5 + 0.3 * np.sin(2 * np.pi * steps / 20 + np.arange(d)) + 0.02 * rng.standard_normal((230, d))
    train, test = data[:150], data[150:].copy()
    labels = np.zeros(test.shape, dtype=np.int8)
    test[40:50, 1 % d] += 2.0
    labels[40:50, 1 % d] = 1
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "train.npy", train)
    np.save(root / "test.npy", test)
    np.save(root / "labels.npy", labels if per_dimension else labels.any(axis=1).astype(np.int8))
    return root


def bench(data: Path, out: Path, *extra: str) -> int:
    return main(["bench", "--data", str(data), "--out", str(out), "--latency-samples", "20", *extra])


@pytest.mark.parametrize("model", ["zscore", "gon"])
def test_bench_writes_every_metric_the_scores_and_a_plot(tmp_path, capsys, model) -> None:
    data, out, plot = make_dataset(tmp_path / "data"), tmp_path / "out" / "result.json", tmp_path / "plot.svg"
    extra = TINY_GON if model == "gon" else []
    assert bench(data, out, "--model", model, "--plot", str(plot), *extra) == 0
    report = json.loads(out.read_text())
    assert set(REQUIRED) <= set(report)
    for key in FINITE:
        assert isinstance(report[key], int | float) and math.isfinite(report[key]), key
    assert set(PARAMS) <= set(report["params"]) and report["params"]["model"] == model
    assert report["params"]["pot"]["q"] == DEFAULT_Q and report["params"]["pot"]["level"] == DEFAULT_LEVEL
    assert report["params"]["test_shape"] == [80, 3]
    scores = np.load(tmp_path / "out" / "result.scores.npy")
    assert scores.shape == (80,) and np.isfinite(scores).all()
    assert plot.read_text().startswith("<svg") and "polyline" in plot.read_text()
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["out"] == str(out) and printed["roc_auc"] == report["roc_auc"]


def test_zscore_finds_the_planted_fault(tmp_path) -> None:
    out = tmp_path / "r.json"
    assert bench(make_dataset(tmp_path / "data"), out, "--model", "zscore") == 0
    report = json.loads(out.read_text())
    assert report["roc_auc"] > 0.95 and report["hit_rate_100"] == 1.0 and report["ndcg_100"] == 1.0


def test_online_reports_its_settings_and_a_list_of_fine_tunes(tmp_path) -> None:
    # 80 steps are too few for a fine-tune here (60 reference windows, then 500 to refit POT on):
    # test_online.py makes fine-tunes happen; this checks the command's wiring and report.
    out, data = tmp_path / "r.json", make_dataset(tmp_path / "data")
    assert bench(data, out, "--model", "gon", *TINY_GON, "--online", "--online-interval", "7") == 0
    report = json.loads(out.read_text())
    assert report["fine_tunes"] == []  # a list of fine-tunes, empty here (above); null without --online
    assert report["params"]["online"]["min_interval_steps"] == 7 and report["params"]["online"]["reference"] == 60
    assert report["roc_auc_relative"] is not None and np.load(tmp_path / "r.scores.npy").shape == (80,)


def test_online_judges_against_the_threshold_the_bench_fitted_with_its_risk(tmp_path) -> None:
    data = make_dataset(tmp_path / "data")
    reports = {}
    for name, extra in {"off": [], "on": ["--online"], "on-1e-4": ["--online", "--pot-q", "1e-4"]}.items():
        risk = ["--pot-q", "1e-2"] if name != "on-1e-4" else []
        gon = ["--model", "gon", *TINY_GON, "--param", "fault_score=excess+unreal"]  # no ties at 0: a real tail
        assert bench(data, tmp_path / f"{name}.json", *gon, *risk, *extra) == 0
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert reports["on"]["fine_tunes"] == []  # so the threshold in force is the one fitted on training scores
    assert reports["on"]["threshold"] == reports["off"]["threshold"]
    assert reports["on-1e-4"]["threshold"] > reports["on"]["threshold"]  # a smaller risk, a higher threshold


def test_online_refuses_a_model_that_cannot_fine_tune(tmp_path, capsys) -> None:
    assert bench(make_dataset(tmp_path / "data"), tmp_path / "r.json", "--model", "zscore", "--online") == 2
    assert "--online" in capsys.readouterr().err and not (tmp_path / "r.json").exists()


def test_with_one_static_threshold_the_relative_aucs_are_the_raw_ones(tmp_path) -> None:
    out = tmp_path / "r.json"
    assert bench(make_dataset(tmp_path / "data"), out, "--model", "zscore") == 0
    report = json.loads(out.read_text())
    assert (report["roc_auc_relative"], report["pr_auc_relative"]) == (report["roc_auc"], report["pr_auc"])


def test_one_dimensional_labels_leave_the_diagnosis_metrics_null(tmp_path) -> None:
    out = tmp_path / "r.json"
    data = make_dataset(tmp_path / "data", per_dimension=False)
    assert bench(data, out, "--model", "random", "--pot-q", "1e-3", "--pot-level", "0.9") == 0
    report = json.loads(out.read_text())
    assert report["hit_rate_100"] is None and report["ndcg_100"] is None
    assert report["params"]["pot"]["q"] == 1e-3 and report["params"]["pot"]["level"] == 0.9


def test_the_same_seed_gives_the_same_scores(tmp_path) -> None:
    data = make_dataset(tmp_path / "data")
    for name in ("a", "b"):
        assert bench(data, tmp_path / f"{name}.json", "--model", "gon", "--seed", "4", *TINY_GON) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "a.scores.npy"), np.load(tmp_path / "b.scores.npy"))


def corrupt(file: str, value: np.ndarray):
    def apply(root: Path) -> None:
        np.save(root / file, value)

    return apply


@pytest.mark.parametrize("model", ["gon", "zscore"])
@pytest.mark.parametrize(("train_steps", "test_steps"), [(3, 4), (6, 1)])
def test_series_shorter_than_a_window_are_benchmarked(tmp_path, model, train_steps, test_steps) -> None:
    """Any T: a window (4 steps here) longer than the training or test series is padded, not refused."""
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(5)
    np.save(data / "train.npy", rng.random((train_steps, 2)))
    np.save(data / "test.npy", rng.random((test_steps, 2)))
    np.save(data / "labels.npy", np.arange(test_steps) >= test_steps // 2)
    out = tmp_path / "r.json"
    assert bench(data, out, "--model", model, "--latency-samples", "3", *(TINY_GON if model == "gon" else [])) == 0
    report = json.loads(out.read_text())
    assert np.load(tmp_path / "r.scores.npy").shape == (test_steps,) and report["step_latency_ms_p50"] > 0


@pytest.mark.parametrize("online", [["--online"], []])
def test_dspot_on_a_short_training_series_reports_the_fit_it_used(tmp_path, online) -> None:
    """Too few training scores for DSPOT's moving average: the threshold starts as SPOT (as the
    service's does), and the report describes that fit, not one it never used."""
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(6)
    np.save(data / "train.npy", rng.random((15, 2)))
    np.save(data / "test.npy", rng.random((30, 2)))
    np.save(data / "labels.npy", np.arange(30) >= 20)
    out = tmp_path / "r.json"
    args = ["--model", "gon", *TINY_GON, *online, "--pot-mode", "dspot", "--latency-samples", "3"]
    assert bench(data, out, *args) == 0
    report = json.loads(out.read_text())
    assert report["params"]["pot"]["calibration_scores"] == 15  # every training score, no drift removed


def truncate(file: Path) -> None:
    """Keep the .npy header and half the data, as a copy cut short would."""
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


MALFORMED = {
    "nan_in_test": ("test.npy", corrupt("test.npy", np.full((80, 3), np.nan))),
    "empty_train": ("train.npy", corrupt("train.npy", np.empty((0, 3)))),
    "train_not_2d": ("train.npy", corrupt("train.npy", np.zeros((10, 3, 2)))),
    "test_wrong_width": ("test.npy", corrupt("test.npy", np.zeros((80, 4)))),
    "labels_too_short": ("labels.npy", corrupt("labels.npy", np.zeros((79, 3)))),
    "labels_not_binary": ("labels.npy", corrupt("labels.npy", np.full((80, 3), 2))),
    "no_labels": ("labels.npy", lambda root: (root / "labels.npy").unlink()),
    "no_test": ("test.npy", lambda root: (root / "test.npy").unlink()),
    "not_npy": ("train.npy", lambda root: (root / "train.npy").write_text("1,2,3\n")),
    "zero_bytes": ("labels.npy", lambda root: (root / "labels.npy").write_bytes(b"")),
    "truncated": ("test.npy", lambda root: truncate(root / "test.npy")),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_input_exits_2_naming_the_file(tmp_path, capsys, case) -> None:
    file, damage = MALFORMED[case]
    data = make_dataset(tmp_path / "data")
    damage(data)
    out = tmp_path / "r.json"
    assert bench(data, out, "--model", "zscore") == 2
    err = capsys.readouterr().err
    assert err.startswith("dragon-detector bench: ") and file in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "nope"], "unknown model 'nope'"),
        (["--model", "zscore", "--param", "aggregate"], "KEY=VALUE"),
        (["--model", "zscore", "--param", "typo=1"], "unknown ZScoreConfig keys"),
        (["--model", "zscore", "--plot", "plot.pdf"], "use .svg or .png"),
        (["--model", "gon", "--pot-q", "0.5"], "POT needs 0 < level < 1 and 0 < q < 1 - level"),
        (["--model", "zscore", "--ablation", "adam"], "applies to the GON models"),
        (["--ablation", "adam", "--param", "gen_optimizer=adam"], "do not also pass it with --param"),
    ],
)
def test_bad_options_exit_2_with_a_message(tmp_path, capsys, extra, message) -> None:
    assert bench(make_dataset(tmp_path / "data"), tmp_path / "r.json", *extra) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is not None, reason="matplotlib is installed")
def test_a_png_without_matplotlib_asks_for_svg(tmp_path, capsys) -> None:
    plot = tmp_path / "plot.png"
    assert bench(make_dataset(tmp_path / "data"), tmp_path / "r.json", "--model", "zscore", "--plot", str(plot)) == 2
    assert ".svg" in capsys.readouterr().err and not plot.exists()


@pytest.mark.parametrize("mode", ["static", "spot", "dspot"])
def test_streaming_pot_modes_run_and_are_recorded(tmp_path, mode):
    from dragon.detector.bench import BenchConfig, run_bench, write_outputs, write_svg

    rng = np.random.default_rng(3)
    train, test = rng.normal(size=(300, 2)), rng.normal(size=(200, 2))
    test[150:160] += 8.0
    labels = np.zeros(200, dtype=int)
    labels[150:160] = 1
    for name, array in (("train", train), ("test", test), ("labels", labels)):
        np.save(tmp_path / f"{name}.npy", array)
    result = run_bench(BenchConfig(data=str(tmp_path), model="zscore", pot_mode=mode, latency_samples=5))
    assert result.report["params"]["pot"]["mode"] == mode
    assert result.report["params"]["pot"]["lag"] == (None if mode == "static" else DEFAULT_POT_LAG)
    assert result.report["recall"] > 0.5 and np.isfinite(result.report["threshold"])
    # A streaming threshold moves as the test scores arrive; the static one never does.
    assert result.thresholds.shape == (200,) and result.report["threshold"] == result.thresholds[-1]
    assert (len(np.unique(result.thresholds)) > 1) == (mode != "static")
    # The report describes the fit the threshold starts from: DSPOT's is on drift-free scores.
    pot = result.report["params"]["pot"]
    assert result.report["threshold_initial"] == result.thresholds[0]
    assert pot["calibration_scores"] == (300 - 20 if mode == "dspot" else 300)
    # The plot draws the threshold in force at each step: two points for a static one.
    write_outputs(result, tmp_path / "r.json", str(tmp_path / "plot.svg"), write_svg)
    (drawn,) = re.findall(r'class="threshold" points="([^"]*)"', (tmp_path / "plot.svg").read_text())
    assert (len(drawn.split()) == 2) == (mode == "static")


def test_dspot_starts_from_the_newest_training_scores_the_service_keeps(tmp_path, monkeypatch):
    """The service calibrates DSPOT on its checkpoint's calibration tail (the newest 4,096 training
    scores): the bench does the same, so a long training series is judged as it will be served."""
    from dragon.detector import bench as bench_module
    from dragon.detector.bench import BenchConfig, run_bench

    monkeypatch.setattr(bench_module, "CALIBRATION_TAIL", 100)
    rng = np.random.default_rng(3)
    for name, array in (("train", rng.normal(size=(300, 2))), ("test", rng.normal(size=(50, 2)))):
        np.save(tmp_path / f"{name}.npy", array)
    np.save(tmp_path / "labels.npy", np.zeros(50, dtype=int))
    result = run_bench(BenchConfig(data=str(tmp_path), model="zscore", pot_mode="dspot", latency_samples=5))
    assert result.report["params"]["pot"]["calibration_scores"] == 100 - 20  # the tail, less DSPOT's depth


def test_a_long_runs_plot_shows_where_the_threshold_dipped(tmp_path):
    """Drawn by bucket maxima alone, a threshold that fell for a few steps of 10,000 looked flat."""
    from dragon.detector.bench import SVG_MAX_POINTS, write_svg

    steps = 5 * SVG_MAX_POINTS
    thresholds = np.full(steps, 100.0)
    thresholds[7001:7003] = 1.0  # two steps where alarms came
    write_svg(tmp_path / "plot.svg", np.ones(steps), thresholds, np.zeros(steps, dtype=int), "dip")
    (drawn,) = re.findall(r'class="threshold" points="([^"]*)"', (tmp_path / "plot.svg").read_text())
    heights = {float(point.split(",")[1]) for point in drawn.split()}
    assert len(drawn.split()) <= SVG_MAX_POINTS and len(heights) == 2  # 100 everywhere, and the dip to 1


def test_the_pot_lag_is_passed_on_recorded_and_checked(tmp_path, capsys) -> None:
    data, out = make_dataset(tmp_path / "data"), tmp_path / "r.json"
    assert bench(data, out, "--model", "zscore", "--pot-mode", "spot", "--pot-lag", "3") == 0
    assert json.loads(out.read_text())["params"]["pot"]["lag"] == 3
    assert bench(data, out, "--model", "zscore") == 0
    assert json.loads(out.read_text())["params"]["pot"]["lag"] is None  # the static threshold learns nothing
    assert bench(data, out, "--model", "zscore", "--pot-mode", "spot", "--pot-lag", "-1") == 2
    assert "pot_lag" in capsys.readouterr().err


def test_an_ablation_is_the_gon_with_the_paper_s_setting_changed(tmp_path) -> None:
    out = tmp_path / "r.json"
    assert bench(make_dataset(tmp_path / "data"), out, *TINY_GON, "--ablation", "noinit") == 0
    model_config = json.loads(out.read_text())["params"]["model_config"]
    assert model_config["gen_init"] == "noise" and model_config["gen_optimizer"] == "adahessian"


def test_the_ablation_choices_are_the_gon_s_ablations() -> None:
    from dragon.detector.bench_cli import ABLATION_NAMES
    from dragon.detector.gon import ABLATIONS

    assert ABLATION_NAMES == tuple(ABLATIONS)
