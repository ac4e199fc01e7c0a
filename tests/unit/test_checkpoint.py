"""Self-describing checkpoints, and train_from_series that produces them."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch

from dragon.detector.checkpoint import GENERATION, VERSION, Checkpoint, CheckpointError
from dragon.detector.gon import GonConfig, score_series
from dragon.detector.pot import PotState
from dragon.detector.train import train_from_series
from dragon.messages.schemas import HOST_METRICS
from dragon.testing.models import recalibrated

pytestmark = pytest.mark.unit

NAMES = ("cpu", "ram", "disk")


def raw_series(t: int, seed: int = 0) -> np.ndarray:
    """Raw-unit metrics (percent-like), one of them idle. (T, 3)"""
    rng = np.random.default_rng(seed)
    steps = np.arange(t)
    cpu = 40 + 20 * np.sin(2 * np.pi * steps / 30) + rng.normal(0, 2, t)
    ram = 60 + 5 * np.cos(2 * np.pi * steps / 50) + rng.normal(0, 1, t)
    return np.stack([cpu, ram, np.zeros(t)], axis=1)


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    cfg = GonConfig(n_features=3, window=5, hidden=16, gen_steps=5, epochs=3)
    return train_from_series(raw_series(200), NAMES, cfg, min_span=[1.0, 1.0, 1.0], source="unit-test")


def scores_of(checkpoint: Checkpoint, series: np.ndarray) -> np.ndarray:
    scaled = checkpoint.scaler().transform(series).astype(np.float32)
    return score_series(checkpoint.build_model(), checkpoint.config, scaled)[0]


def test_train_from_series_describes_everything_needed_to_score(checkpoint: Checkpoint) -> None:
    assert checkpoint.feature_names == NAMES
    assert checkpoint.config.n_features == 3 and len(checkpoint.lo) == len(checkpoint.hi) == 3
    pot = checkpoint.pot_state()
    assert pot.n == 200  # fitted on the training scores, one per time step
    assert np.isfinite(pot.z_q) and pot.z_q > pot.t
    assert checkpoint.meta["source"] == "unit-test" and checkpoint.meta["history"]["epochs_run"] >= 1
    assert not checkpoint.build_model().training


def test_train_from_series_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="feature names"):
        train_from_series(raw_series(50), NAMES[:2], min_span=1.0)
    with pytest.raises(ValueError, match="n_features"):
        train_from_series(raw_series(50), NAMES, GonConfig(n_features=2), min_span=1.0)
    with pytest.raises(ValueError, match="NaN"):
        train_from_series([raw_series(50), np.full((5, 3), np.nan)], NAMES, min_span=1.0)


def test_train_from_series_accepts_one_series_per_host() -> None:
    cfg = GonConfig(n_features=3, window=5, hidden=16, gen_steps=5, epochs=2)
    hosts = [raw_series(60, seed=1), raw_series(40, seed=2) + 5.0]
    checkpoint = train_from_series(hosts, NAMES, cfg, min_span=1.0)
    assert checkpoint.pot_state().n == 100  # every host's steps are calibration scores
    assert checkpoint.lo[0] == pytest.approx(min(h[:, 0].min() for h in hosts))


def test_save_and_load_give_identical_scores(checkpoint: Checkpoint, tmp_path) -> None:
    path = tmp_path / "detector.pt"
    checkpoint.save(path)
    loaded = Checkpoint.load(path)
    assert loaded.model_id == checkpoint.model_id
    assert (loaded.gon, loaded.feature_names, loaded.lo, loaded.hi) == (
        checkpoint.gon,
        checkpoint.feature_names,
        checkpoint.lo,
        checkpoint.hi,
    )
    assert loaded.pot == checkpoint.pot and loaded.meta == checkpoint.meta
    test = raw_series(80, seed=1)
    np.testing.assert_array_equal(scores_of(loaded, test), scores_of(checkpoint, test))
    assert [p.name for p in tmp_path.iterdir()] == ["detector.pt"]  # no temporary file left


def test_bytes_round_trip_and_plain_contents(checkpoint: Checkpoint) -> None:
    blob = checkpoint.to_bytes()
    restored = Checkpoint.from_bytes(blob)
    test = raw_series(80, seed=2)
    np.testing.assert_array_equal(scores_of(restored, test), scores_of(checkpoint, test))
    payload = torch.load(io.BytesIO(blob), weights_only=True)  # nothing but tensors and plain types
    assert payload["format"] == "dragon-detector-checkpoint" and payload["version"] == 1


def test_model_id_is_stable_and_follows_weights_and_config(checkpoint: Checkpoint) -> None:
    assert checkpoint.model_id == Checkpoint.from_bytes(checkpoint.to_bytes()).model_id
    assert len(checkpoint.model_id) == 12
    weights = {key: value.clone() for key, value in checkpoint.state_dict.items()}
    last = sorted(weights)[-1]
    weights[last] += 1e-3
    changed = dataclasses.replace(checkpoint, **{"state_dict": weights})
    assert changed.model_id != checkpoint.model_id
    reconfigured = dataclasses.replace(checkpoint, **{"gon": checkpoint.gon | {"gen_lr": 0.1}})
    assert reconfigured.model_id != checkpoint.model_id


def test_per_host_pot_state_overrides_the_default(checkpoint: Checkpoint) -> None:
    special = PotState.from_dict(checkpoint.pot["*"] | {"z_q": 123.0})
    per_host = dataclasses.replace(checkpoint, **{"pot": checkpoint.pot | {"edge-3": special.to_dict()}})
    assert per_host.pot_state("edge-3").z_q == 123.0
    assert per_host.pot_state("edge-4").z_q == checkpoint.pot_state().z_q


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lo": [0.0, 0.0]}, "features"),
        ({"pot": {}}, "default"),
        ({"meta": {"value": np.float64(1.0)}}, "plain"),
        ({"gon": {"n_features": 3, "colour": "red"}}, "gon config"),
    ],
)
def test_inconsistent_checkpoints_are_rejected(checkpoint: Checkpoint, change: dict, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        dataclasses.replace(checkpoint, **change)


def test_foreign_or_corrupt_data_is_rejected(checkpoint: Checkpoint) -> None:
    with pytest.raises(CheckpointError, match="cannot read"):
        Checkpoint.from_bytes(b"not a checkpoint")
    buffer = io.BytesIO()
    torch.save({"format": "something-else"}, buffer)
    with pytest.raises(CheckpointError, match="not a"):
        Checkpoint.from_bytes(buffer.getvalue())
    wrong_weights = {key: value[..., :1] for key, value in checkpoint.state_dict.items()}
    with pytest.raises(CheckpointError, match="weights"):
        dataclasses.replace(checkpoint, **{"state_dict": wrong_weights}).build_model()


# What each GENERATION's checkpoints may hold. A change here that code of the generation before
# could not read (a new GonConfig key, other host metrics, a new VERSION) needs a new GENERATION:
# replicas tell by it a newer DRAGON's model (left alone in a rolling upgrade) from one nobody can
# use (learnt anew). Add the new generation's line; keep the old ones.
GENERATIONS = {
    1: (
        1,
        ("cpu", "ram", "swap", "disk_read", "disk_write", "net_rx", "net_tx"),
        (
            "architecture", "epochs", "fault_score", "gen_box", "gen_hessian_every", "gen_init", "gen_lr",
            "gen_optimizer", "gen_restart_every", "gen_steps", "generate_from", "hidden", "layers", "lr",
            "n_features", "patience", "scope", "score_rows", "seed", "topology", "val_fraction", "weight_decay",
            "window", "batch_size",
        ),
        ("censored", "gamma", "level", "method", "n", "n_peaks", "peaks", "q", "sigma", "t", "z_q"),
    ),
}  # fmt: skip


def test_the_generation_names_what_its_checkpoints_may_hold() -> None:
    version, metrics, keys, pot_keys = GENERATIONS[GENERATION]
    now = (VERSION, HOST_METRICS, *(sorted(f.name for f in dataclasses.fields(cls)) for cls in (GonConfig, PotState)))
    assert now == (version, metrics, sorted(keys), sorted(pot_keys)), "raise checkpoint.GENERATION, add its line here"


def payload_bytes(checkpoint: Checkpoint, **changes) -> bytes:
    buffer = io.BytesIO()
    torch.save(checkpoint._payload() | changes, buffer)
    return buffer.getvalue()


def test_a_checkpoint_keeps_the_generation_that_wrote_it(checkpoint: Checkpoint) -> None:
    assert Checkpoint.from_bytes(checkpoint.to_bytes()).generation == GENERATION
    payload = checkpoint._payload()
    del payload["generation"]
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    assert Checkpoint.from_bytes(buffer.getvalue()).generation == 0  # written before the field


def test_a_pot_state_this_code_cannot_read_is_refused_on_load_not_at_the_first_score(checkpoint: Checkpoint) -> None:
    """A newer DRAGON's POT field: the model loaded, was served, and every batch failed."""
    later = checkpoint.pot | {"edge-4": checkpoint.pot["*"] | {"a_later_field": 1.0}}
    with pytest.raises(CheckpointError, match="edge-4"):
        Checkpoint.from_bytes(payload_bytes(checkpoint, pot=later))


def test_a_recalibration_keeps_the_model_id_but_not_the_revision(checkpoint: Checkpoint) -> None:
    """Events, floors and stored thresholds name a model by its weights; replicas must still see
    that the same weights now judge with another threshold."""
    other_risk = recalibrated(checkpoint, q=checkpoint.pot_state().q * 10)
    assert other_risk.pot_state().z_q != checkpoint.pot_state().z_q
    assert other_risk.model_id == checkpoint.model_id
    assert other_risk.revision != checkpoint.revision
    assert Checkpoint.from_bytes(checkpoint.to_bytes()).revision == checkpoint.revision
    assert recalibrated(checkpoint, q=checkpoint.pot_state().q).revision == checkpoint.revision
    assert other_risk.pot_risk() == (other_risk.pot_state().q, other_risk.pot_state().level)
