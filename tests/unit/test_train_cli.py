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
    assert checkpoint.config.window == 5


def test_train_refuses_a_malformed_data_set_with_a_clear_message(tmp_path, capsys):
    np.save(tmp_path / "train.npy", np.full((10, 2), np.nan))
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m.pt"), "--quiet"])
    assert code == 2
    assert "train.npy" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()
