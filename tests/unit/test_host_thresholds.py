"""The detector's per-host streaming thresholds: calibration from the checkpoint, model binding,
the threshold in force for each window, the stored record and the settings."""

from __future__ import annotations

import io

import msgpack
import numpy as np
import pytest
import torch

from dragon import config
from dragon.config import ConfigError
from dragon.detector.checkpoint import Checkpoint
from dragon.detector.config import DEFAULT_POT_LAG, DetectorConfig
from dragon.detector.gon import GonConfig, score_series
from dragon.detector.pot import StreamingPot
from dragon.detector.scorer import Scorer
from dragon.detector.thresholds import HostThreshold
from dragon.detector.train import CALIBRATION_TAIL, train_from_series
from dragon.messages.schemas import HOST_METRICS
from dragon.testing.models import recalibrated

pytestmark = pytest.mark.unit

DEPTH = 5


def host_series(t: int, seed: int) -> np.ndarray:
    """Raw host metrics: a busy CPU, steady RAM, idle rest. (T, n)"""
    rng = np.random.default_rng(seed)
    series = np.zeros((t, len(HOST_METRICS)))
    series[:, 0] = 0.4 + 0.1 * np.sin(np.arange(t) / 5) + rng.normal(0, 0.02, t)
    series[:, 1] = 0.6 + rng.normal(0, 0.01, t)
    return series


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    cfg = GonConfig(n_features=len(HOST_METRICS), window=4, hidden=16, gen_steps=3, epochs=2)
    return train_from_series([host_series(150, 0), host_series(100, 1)], HOST_METRICS, cfg, min_span=0.05)


@pytest.fixture(scope="module")
def old_checkpoint(checkpoint: Checkpoint) -> Checkpoint:
    """The same model as written before checkpoints carried calibration scores."""
    payload = torch.load(io.BytesIO(checkpoint.to_bytes()), weights_only=True)
    del payload["calibration_tail"]
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return Checkpoint.from_bytes(buffer.getvalue())


def windows(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` raw (W_t, W_{t+1}) pairs, (count, k, n) each."""
    series = host_series(count + 4, seed)
    prev = np.stack([series[i : i + 4] for i in range(count)]).astype(np.float32)
    nxt = np.stack([series[i + 1 : i + 5] for i in range(count)]).astype(np.float32)
    return prev, nxt


def test_training_keeps_the_newest_calibration_scores(checkpoint: Checkpoint) -> None:
    cfg = checkpoint.config
    scaled = [checkpoint.scaler().transform(s).astype(np.float32) for s in (host_series(150, 0), host_series(100, 1))]
    model = checkpoint.build_model()
    scores = np.concatenate([score_series(model, cfg, part)[0] for part in scaled])
    assert len(checkpoint.calibration_tail) == min(len(scores), CALIBRATION_TAIL) == 250
    np.testing.assert_allclose(checkpoint.calibration_tail, scores[-CALIBRATION_TAIL:], rtol=1e-6)
    restored = Checkpoint.from_bytes(checkpoint.to_bytes())
    assert restored.calibration_tail == checkpoint.calibration_tail


def test_a_checkpoint_without_calibration_scores_still_loads(old_checkpoint: Checkpoint, checkpoint) -> None:
    assert old_checkpoint.calibration_tail == []
    assert old_checkpoint.model_id == checkpoint.model_id


def test_spot_starts_from_the_checkpoint_fit(checkpoint: Checkpoint) -> None:
    scorer = Scorer(checkpoint, "spot", DEPTH)
    state = scorer.resume("h1", None)
    assert state.model_id == checkpoint.model_id and state.ts is None
    assert state.pot == StreamingPot(checkpoint.pot_state("h1"), lag=DEFAULT_POT_LAG)  # the service's rule


def test_dspot_calibrates_on_the_checkpoint_scores_with_its_own_depth(checkpoint: Checkpoint) -> None:
    pot = Scorer(checkpoint, "dspot", DEPTH).resume("h1", None).pot
    assert pot.depth == DEPTH and pot.recent == tuple(checkpoint.calibration_tail[-DEPTH:])
    assert pot.tail.n == len(checkpoint.calibration_tail) - DEPTH  # fitted on the drift-free scores


def test_dspot_falls_back_to_spot_without_calibration_scores(old_checkpoint: Checkpoint) -> None:
    scorer = Scorer(old_checkpoint, "dspot", DEPTH)
    assert scorer.drift_depth == 0
    assert scorer.resume("h1", None).pot == StreamingPot(old_checkpoint.pot_state("h1"), lag=DEFAULT_POT_LAG)


def test_a_state_restarts_when_the_model_or_the_mode_changes(checkpoint: Checkpoint) -> None:
    spot, dspot = Scorer(checkpoint, "spot", DEPTH), Scorer(checkpoint, "dspot", DEPTH)
    learnt = spot.resume("h1", None)
    learnt.judge(1.0, 0.0)
    assert spot.resume("h1", learnt) is learnt  # same model, same mode: continue
    other_model = HostThreshold("0123456789ab", learnt.pot, learnt.ts)
    assert spot.resume("h1", other_model).pot.tail.n == checkpoint.pot_state("h1").n
    assert dspot.resume("h1", learnt).pot.depth == DEPTH


def test_the_configured_lag_reaches_the_state_and_a_state_under_another_lag_restarts(checkpoint) -> None:
    lagged = Scorer(checkpoint, "spot", DEPTH, pot_lag=4)
    state = lagged.resume("h1", None)
    assert state.pot.lag == 4 and state.pot.tail == checkpoint.pot_state("h1")
    state.judge(1.0, 0.0)
    assert state.pot.held == (0.0,) and lagged.resume("h1", state) is state  # same rule: continue
    restarted = Scorer(checkpoint, "spot", DEPTH, pot_lag=0).resume("h1", state)
    assert restarted is not state and restarted.pot == StreamingPot(checkpoint.pot_state("h1"))
    assert "lag" not in restarted.pot.to_dict()  # a lag-0 state reads as before the lag, also to older code


@pytest.mark.parametrize("mode", ["spot", "dspot"])
def test_a_state_learnt_under_another_risk_restarts_though_the_model_id_is_the_same(checkpoint, mode) -> None:
    """Retrained with the same seed and data but another --pot-q, the model keeps its id; a stored
    threshold of the old risk must not go on as if nothing changed."""
    learnt = Scorer(checkpoint, mode, DEPTH).resume("h1", None)
    learnt.judge(1.0, 0.0)
    riskier = Scorer(recalibrated(checkpoint, q=checkpoint.pot_state().q * 10), mode, DEPTH)
    assert riskier.model_id == learnt.model_id
    restarted = riskier.resume("h1", learnt)
    assert restarted is not learnt and restarted.pot.tail.q == checkpoint.pot_state().q * 10
    assert riskier.resume("h1", restarted) is restarted  # and goes on under the new risk
    base = checkpoint.pot_state()
    lower_start = Scorer(recalibrated(checkpoint, q=base.q, level=base.level - 0.01), mode, DEPTH)
    assert lower_start.resume("h1", learnt).pot.tail.level == base.level - 0.01


@pytest.mark.parametrize("mode", ["spot", "dspot"])
def test_each_window_is_judged_by_the_threshold_in_force_and_learnt_in_order(checkpoint, mode) -> None:
    scorer = Scorer(checkpoint, mode, DEPTH, pot_lag=0)  # learnt at once, so n counts them
    prev, nxt = windows(6, seed=2)
    hosts, stamps = ["h1", "h2"] * 3, [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    states = {host: scorer.resume(host, None) for host in ("h1", "h2")}
    replay = {host: scorer.resume(host, None).pot for host in ("h1", "h2")}
    verdicts = scorer.score(hosts, stamps, prev, nxt, states)
    for host, verdict in zip(hosts, verdicts, strict=True):
        threshold, alarm = replay[host].update(verdict.score)
        assert (verdict.threshold, verdict.label) == (threshold, int(alarm))
    for host in ("h1", "h2"):
        assert states[host].pot == replay[host] and states[host].ts == 3.0
    normal = sum(1 for host, v in zip(hosts, verdicts, strict=True) if host == "h1" and not v.label)
    assert states["h1"].pot.tail.n == scorer.resume("h1", None).pot.tail.n + normal


def test_static_mode_keeps_the_checkpoint_threshold(checkpoint: Checkpoint) -> None:
    scorer = Scorer(checkpoint)
    assert not scorer.streaming
    prev, nxt = windows(3, seed=3)
    verdicts = scorer.score(["h1"] * 3, [1.0, 2.0, 3.0], prev, nxt)
    assert {v.threshold for v in verdicts} == {checkpoint.pot_state("h1").z_q}
    assert all(v.label == int(v.score >= v.threshold) for v in verdicts)


def test_a_window_already_learnt_from_is_judged_but_not_learnt_again(checkpoint: Checkpoint) -> None:
    state = Scorer(checkpoint, "spot", pot_lag=0).resume("h1", None)  # learnt at once, so n counts them
    state.judge(10.0, 0.0)
    before = state.to_dict()
    threshold, alarm = state.judge(10.0, 0.0)  # the same window, redelivered
    assert (threshold, alarm) == (state.pot.threshold, False)
    assert state.to_dict() == before
    state.judge(11.0, 0.0)
    assert state.pot.tail.n == before["pot"]["tail"]["n"] + 1


def test_the_stored_record_round_trips_through_msgpack_and_rejects_unknown_keys(checkpoint: Checkpoint) -> None:
    state = Scorer(checkpoint, "dspot", DEPTH).resume("h1", None)
    state.judge(5.0, 0.1)
    data = msgpack.unpackb(msgpack.packb(state.to_dict()))
    assert HostThreshold.from_dict(data) == state
    with pytest.raises(ValueError, match="unknown HostThreshold keys"):
        HostThreshold.from_dict(data | {"model": "x"})


def test_pot_mode_defaults_to_spot_and_bad_values_are_refused() -> None:
    cfg = config.load(DetectorConfig, {})
    assert (cfg.pot_mode, cfg.pot_depth) == ("spot", 20)
    assert config.load(DetectorConfig, {"DRAGON_POT_MODE": "dspot", "DRAGON_POT_DEPTH": "50"}).pot_depth == 50
    with pytest.raises(ConfigError, match="DRAGON_POT_MODE"):
        config.load(DetectorConfig, {"DRAGON_POT_MODE": "adaptive"})
    with pytest.raises(ConfigError, match="DRAGON_POT_DEPTH"):
        config.load(DetectorConfig, {"DRAGON_POT_DEPTH": "0"})
    assert cfg.pot_lag == 10 and config.load(DetectorConfig, {"DRAGON_POT_LAG": "0"}).pot_lag == 0
    with pytest.raises(ConfigError, match="DRAGON_POT_LAG"):
        config.load(DetectorConfig, {"DRAGON_POT_LAG": "-1"})
