"""The GON discriminator, window generation, fault scores, training and windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dragon.detector.gon import (
    Discriminator,
    GonConfig,
    fault_scores,
    generate,
    make_windows,
    score_series,
    train_gon,
)

pytestmark = pytest.mark.unit


def periodic_series(t: int, n: int = 4, active: int = 2, seed: int = 0) -> np.ndarray:
    """Scaled-looking data: ``active`` noisy sinusoids, the other features idle at 0. (T, n)"""
    rng = np.random.default_rng(seed)
    steps = np.arange(t)[:, None]
    series = np.zeros((t, n), dtype=np.float32)
    series[:, :active] = 0.5 + 0.3 * np.sin(2 * np.pi * steps / 25 + np.arange(active))
    series[:, :active] += 0.02 * rng.standard_normal((t, active))
    return series


def small_config(**overrides) -> GonConfig:
    fields = {"n_features": 4, "window": 5, "hidden": 32, "gen_steps": 5, "epochs": 3, "patience": 3}
    return GonConfig(**(fields | overrides))


# Enough optimiser updates for D to leave its initial flat phase: with window initialisation
# the fakes start on the data, and D only separates them after a few hundred updates (a larger
# lr and small batches get there in about a second on 300 steps of data).
SEPARATING = {"hidden": 64, "gen_steps": 10, "epochs": 30, "lr": 1e-2, "batch_size": 16, "patience": 30}


@pytest.fixture(scope="module")
def trained() -> tuple[Discriminator, GonConfig]:
    cfg = small_config(**SEPARATING)
    model, _ = train_gon(make_windows(periodic_series(300), cfg.window), cfg)
    return model, cfg


def test_discriminator_outputs_one_probability_per_window() -> None:
    cfg = small_config()
    model = Discriminator(cfg).eval()
    with torch.no_grad():
        out = model(torch.rand(7, cfg.window, cfg.n_features))
    assert out.shape == (7,)
    assert torch.isfinite(out).all() and ((out > 0) & (out < 1)).all()
    with pytest.raises(ValueError, match="expected windows"):
        model(torch.rand(7, cfg.window + 1, cfg.n_features))


def test_config_round_trip_and_validation() -> None:
    cfg = small_config(gen_lr=0.1)
    assert GonConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        GonConfig.from_dict(cfg.to_dict() | {"hiden": 3})
    with pytest.raises(ValueError):
        small_config(window=0)
    with pytest.raises(ValueError):
        small_config(val_fraction=1.0)


def test_make_windows_pads_by_repeating_the_first_row() -> None:
    series = np.arange(8, dtype=np.float32).reshape(4, 2)  # x_t = (2t, 2t+1)
    windows = make_windows(series, 3)
    assert windows.shape == (4, 3, 2) and windows.dtype == np.float32
    np.testing.assert_array_equal(windows[0], series[[0, 0, 0]])
    np.testing.assert_array_equal(windows[1], series[[0, 0, 1]])
    np.testing.assert_array_equal(windows[3], series[[1, 2, 3]])  # x_{t-k+1..t}
    np.testing.assert_array_equal(make_windows(series, 1)[:, 0], series)
    with pytest.raises(ValueError):
        make_windows(series[0], 3)


def test_generate_climbs_d_without_touching_the_weights() -> None:
    cfg = small_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = Discriminator(cfg).eval()
    z0 = torch.rand(16, cfg.window, cfg.n_features)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    z = generate(model, z0, steps=10, lr=0.05)
    with torch.no_grad():
        assert model(z).mean() > model(z0).mean()
    assert z.shape == z0.shape and not z.requires_grad and torch.isfinite(z).all()
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_generate_restores_frozen_flags_and_works_under_no_grad() -> None:
    cfg = small_config()
    model = Discriminator(cfg).eval()
    model.head.requires_grad_(False)
    z0 = torch.rand(4, cfg.window, cfg.n_features)
    with torch.no_grad():
        z = generate(model, z0, steps=3, lr=0.05)
    assert not torch.equal(z, z0)
    assert [p.requires_grad for p in model.head.parameters()] == [False, False]
    assert all(p.requires_grad for p in model.body.parameters())


def test_fault_score_is_zero_when_next_window_is_the_generated_one() -> None:
    cfg = small_config()
    model = Discriminator(cfg).eval()
    prev = torch.rand(8, cfg.window, cfg.n_features)
    predicted = generate(model, prev, cfg.gen_steps, cfg.gen_lr)
    scores, contributions = fault_scores(model, prev, predicted, cfg)
    assert scores.shape == (8,) and contributions.shape == (8, cfg.n_features)
    assert torch.equal(scores, torch.zeros(8)) and torch.equal(contributions, torch.zeros(8, cfg.n_features))


def test_fault_score_grows_with_an_upward_spike_and_names_its_feature() -> None:
    cfg = small_config()
    model = Discriminator(cfg).eval()
    prev = torch.rand(1, cfg.window, cfg.n_features)
    predicted = generate(model, prev, cfg.gen_steps, cfg.gen_lr)
    scores = []
    for height in (0.5, 1.0, 2.0):
        spiked = predicted.clone()
        spiked[:, -1, 2] += height
        score, contributions = fault_scores(model, prev, spiked, cfg)
        scores.append(score.item())
        assert contributions[0].argmax().item() == 2
        assert contributions[0].sum().item() == pytest.approx(1.0)
    assert scores[0] == pytest.approx(0.5, rel=1e-5) and scores[0] < scores[1] < scores[2]
    dipped = predicted.clone()
    dipped[:, -1, 2] -= 1.0  # a fall in utilisation is not a fault (ReLU in eq. 13)
    assert fault_scores(model, prev, dipped, cfg)[0].item() == 0.0


def test_training_is_deterministic_for_a_seed_and_leaves_global_rng_alone() -> None:
    cfg = small_config()
    windows = make_windows(periodic_series(120), cfg.window)
    rng_state = torch.get_rng_state()
    first, history_a = train_gon(windows, cfg)
    second, history_b = train_gon(windows, cfg)
    other, _ = train_gon(windows, small_config(seed=1))
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert history_a == history_b
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key])
    assert not torch.equal(first.head.weight, other.head.weight)
    assert not first.training
    assert history_a["epochs_run"] == len(history_a["val_loss"]) and np.isfinite(history_a["val_loss"]).all()


def test_training_separates_held_out_real_windows_from_generated_ones(trained) -> None:
    model, cfg = trained
    held_out = torch.from_numpy(make_windows(periodic_series(150, seed=1), cfg.window))
    generated = generate(model, held_out, cfg.gen_steps, cfg.gen_lr)
    with torch.no_grad():
        assert model(held_out).mean() > model(generated).mean() + 0.2


def test_score_series_peaks_at_an_injected_spike_on_the_spiked_feature(trained) -> None:
    model, cfg = trained
    series = periodic_series(150, seed=1)
    series[100:103, 3] += 1.0  # an idle feature suddenly busy
    scores, contributions = score_series(model, cfg, series)
    assert scores.shape == (150,) and contributions.shape == (150, cfg.n_features)
    assert np.isfinite(scores).all() and np.isfinite(contributions).all()
    peak = int(scores.argmax())
    assert 100 <= peak < 103 + cfg.window
    assert contributions[peak].argmax() == 3
    assert scores[100] > 2 * np.median(scores)
