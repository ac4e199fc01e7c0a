import json

import numpy as np
import pytest

from dragon.detector.checkpoint import Checkpoint
from dragon.detector.cli import main

pytestmark = pytest.mark.unit


def test_train_writes_a_checkpoint_that_loads(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "train.npy", rng.uniform(0, 1, size=(120, 3)))
    out = tmp_path / "model.pt"
    code = main(["train", "--data", str(tmp_path), "--out", str(out), "--epochs", "2", "--window", "5", "--quiet"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    checkpoint = Checkpoint.load(out)
    assert printed["model_id"] == checkpoint.model_id
    assert checkpoint.feature_names == ("f0", "f1", "f2")
    assert checkpoint.config.window == 5 and checkpoint.config.fault_score == "excess"


def test_train_saves_the_fault_score_asked_for_and_its_threshold_includes_it(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "train.npy", rng.uniform(0, 1, size=(120, 3)))
    thresholds = {}
    for score in ("excess", "excess+unreal"):
        out = tmp_path / f"{score}.pt"
        args = ["train", "--data", str(tmp_path), "--out", str(out), "--epochs", "2", "--window", "5", "--quiet"]
        assert main([*args, "--fault-score", score]) == 0
        thresholds[score] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["threshold"]
        assert Checkpoint.load(out).config.fault_score == score
    # The same seed trains the same D; -log D > 0 raises every training score, so the threshold.
    assert thresholds["excess+unreal"] > thresholds["excess"]


def test_train_refuses_a_malformed_data_set_with_a_clear_message(tmp_path, capsys):
    np.save(tmp_path / "train.npy", np.full((10, 2), np.nan))
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m.pt"), "--quiet"])
    assert code == 2
    assert "train.npy" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_train_draws_the_loss_curve_it_trained_along(tmp_path, capsys):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "train.npy", rng.uniform(0, 1, size=(120, 2)))
    plot = tmp_path / "loss.svg"
    args = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "m.pt"), "--epochs", "3", "--window", "4"]
    assert main([*args, "--quiet", "--plot", str(plot)]) == 0
    history = Checkpoint.load(tmp_path / "m.pt").meta["history"]
    svg = plot.read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == 2
    assert f"epoch {history['epochs_run'] - 1}" in svg
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["plot"] == str(plot)


def test_train_refuses_a_plot_it_cannot_draw_before_training(tmp_path, capsys):
    np.save(tmp_path / "train.npy", np.zeros((50, 2)))
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m.pt"), "--plot", str(tmp_path / "l.png")])
    assert code == 2 and ".svg" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_train_refuses_an_lei_model_of_a_data_set_folder(tmp_path, capsys):
    np.save(tmp_path / "train.npy", np.zeros((50, 2)))
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m.pt"), "--scope", "lei"])
    assert code == 2 and "--from-redis" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()
