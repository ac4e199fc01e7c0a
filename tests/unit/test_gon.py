"""The GON discriminator, window generation, fault scores, training and windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dragon.detector.config import FAULT_SCORES
from dragon.detector.generation import generate
from dragon.detector.gon import (
    SCORE_TERMS,
    Discriminator,
    GonConfig,
    build_discriminator,
    evaluate_gon,
    fault_scores,
    generate_from,
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


# The training-loop tests run on the first GON (MLP, Adam, whole-window score): it separates
# real from generated windows in a second. The DRAGON model has tests of its own below.
FIRST_GON = {"architecture": "mlp", "gen_optimizer": "adam", "gen_restart_every": 0, "gen_box": False}


def small_config(**overrides) -> GonConfig:
    fields = {"n_features": 4, "window": 5, "hidden": 32, "gen_steps": 5, "epochs": 3, "patience": 3}
    return GonConfig(**(fields | FIRST_GON | {"score_rows": "window"} | overrides))


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
    # Depth is a setting of the mlp D only: refused, not silently ignored, for the paper's D.
    assert small_config(architecture="mlp", layers=3).layers == 3
    with pytest.raises(ValueError, match="'mlp' only"):
        small_config(architecture="dragon", layers=3)
    with pytest.raises(ValueError, match="has none"):
        small_config(architecture="mlp", topology=False)


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
    predicted = generate_from(model, prev, cfg)
    scores, contributions = fault_scores(model, prev, predicted, cfg)
    assert scores.shape == (8,) and contributions.shape == (8, cfg.n_features)
    assert torch.equal(scores, torch.zeros(8)) and torch.equal(contributions, torch.zeros(8, cfg.n_features))


def test_fault_score_grows_with_an_upward_spike_and_names_its_feature() -> None:
    cfg = small_config()
    model = Discriminator(cfg).eval()
    prev = torch.rand(1, cfg.window, cfg.n_features)
    predicted = generate_from(model, prev, cfg)
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


@pytest.mark.parametrize("architecture", ["mlp", "dragon", "dragon_dimensions"])
def test_excess_plus_unreal_adds_minus_log_d_of_the_arrived_window_and_keeps_the_excess_shares(architecture) -> None:
    excess_only = small_config(architecture=architecture)
    both = small_config(architecture=architecture, fault_score="excess+unreal")
    model = build_discriminator(both).eval()
    prev, arrived = torch.rand(2, 6, both.window, both.n_features)
    excess, shares = fault_scores(model, prev, arrived, excess_only)
    scores, contributions = fault_scores(model, prev, arrived, both)
    with torch.no_grad():
        minus_log_d = -torch.log(torch.sigmoid(model.logits(arrived)))
    minus_log_d = minus_log_d.reshape(6, -1).sum(dim=-1)  # dragon_dimensions: one D per dimension
    assert scores.shape == (6,) and (minus_log_d > 0).all()
    torch.testing.assert_close(scores, excess + minus_log_d)
    assert torch.equal(contributions[excess > 0], shares[excess > 0])  # the excess names its metrics


@pytest.mark.parametrize("architecture", ["mlp", "dragon", "dragon_dimensions"])
def test_an_alarm_of_minus_log_d_alone_names_the_metrics_its_gradient_on_the_new_row_points_at(architecture) -> None:
    cfg = small_config(architecture=architecture, fault_score="excess+unreal", gen_box=True, score_rows="last")
    model = build_discriminator(cfg).eval()
    prev, arrived = torch.rand(2, 4, cfg.window, cfg.n_features, generator=torch.Generator().manual_seed(0))
    arrived[:2] = 0.0  # nothing rises above a generated window kept inside [0, 1]: no excess
    arrived[2:, -1] = 1.5  # above it on every metric
    excess, _ = fault_scores(
        model, prev, arrived, small_config(architecture=architecture, gen_box=True, score_rows="last")
    )
    _, contributions = fault_scores(model, prev, arrived, cfg)
    assert (excess[:2] == 0).all() and (excess[2:] > 0).all()
    silent = arrived[:2].clone().requires_grad_(True)
    (-torch.nn.functional.logsigmoid(model.logits(silent))).sum().backward()
    expected = silent.grad[:, -1, :].square()
    torch.testing.assert_close(contributions[:2], expected / expected.sum(dim=-1, keepdim=True))
    torch.testing.assert_close(contributions.sum(dim=-1), torch.ones(4))


def test_fault_scores_are_the_ones_the_settings_name() -> None:
    assert tuple(SCORE_TERMS) == FAULT_SCORES
    with pytest.raises(ValueError, match="fault_score"):
        small_config(fault_score="unreal")


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
    generated = generate_from(model, held_out, cfg)
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


# --- architectures and scoring options -------------------------------------------------------
@pytest.mark.parametrize(("architecture", "per_window"), [("mlp", ()), ("dragon", ()), ("dragon_dimensions", (4,))])
def test_every_architecture_maps_windows_to_logits(architecture: str, per_window: tuple) -> None:
    cfg = small_config(architecture=architecture)
    model = build_discriminator(cfg)
    logits = model.logits(torch.rand(6, cfg.window, cfg.n_features))
    assert logits.shape == (6, *per_window) and torch.isfinite(logits).all()


def test_dimensions_as_hosts_lets_one_dimension_see_another_only_with_topology() -> None:
    # Each dimension is a host; with topology the attention carries information between them.
    for topology, coupled in ((True, True), (False, False)):
        model = build_discriminator(small_config(architecture="dragon_dimensions", topology=topology)).eval()
        w = torch.rand(2, 5, 4)
        moved = w.clone()
        moved[:, :, 3] += 1.0  # change dimension 3 only
        with torch.no_grad():
            before, after = model.logits(w), model.logits(moved)
        assert not torch.allclose(before[:, 3], after[:, 3])
        assert (not torch.allclose(before[:, 0], after[:, 0])) is coupled


def test_the_per_dimension_model_trains_and_scores() -> None:
    cfg = small_config(architecture="dragon_dimensions", gen_optimizer="adahessian", gen_box=True, epochs=2)
    model, history = train_gon(make_windows(periodic_series(120), cfg.window), cfg)
    assert np.isfinite(history["train_loss"]).all() and 0.0 <= history["val_d_real"][-1] <= 1.0
    scores, contributions = score_series(model, cfg, periodic_series(40, seed=2))
    assert scores.shape == (40,) and contributions.shape == (40, cfg.n_features)


def test_a_saved_config_without_the_newer_keys_means_the_first_gon() -> None:
    saved = {"n_features": 3, "window": 4}
    cfg = GonConfig.from_saved(saved)
    assert (cfg.architecture, cfg.gen_optimizer, cfg.gen_restart_every) == ("mlp", "adam", 0)
    assert (cfg.generate_from, cfg.score_rows, cfg.gen_box, cfg.gen_init) == ("previous", "window", False, "window")
    assert GonConfig.from_saved(GonConfig(n_features=3).to_dict()) == GonConfig(n_features=3)


def test_the_box_keeps_generated_windows_in_the_training_range() -> None:
    cfg = small_config(gen_box=True, gen_lr=0.5)
    model = Discriminator(cfg).eval()
    start = torch.rand(8, cfg.window, cfg.n_features) * 3 - 1  # (8, k, n) in [-1, 2)
    generated = generate_from(model, start, cfg)
    assert generated.min() >= 0.0 and generated.max() <= 1.0


def test_scoring_the_last_row_ignores_an_old_spike_and_sees_a_new_one() -> None:
    cfg = small_config(score_rows="last", gen_steps=0)  # no ascent: Ŵ is W_t itself
    model = Discriminator(cfg).eval()
    prev = torch.full((2, cfg.window, cfg.n_features), 0.5)
    nxt = prev.clone()
    nxt[0, 0, 1] = 0.9  # a spike in the oldest row
    nxt[1, -1, 2] = 0.9  # a spike in the newest row
    scores, contributions = fault_scores(model, prev, nxt, cfg)
    assert scores[0] == 0.0
    assert scores[1] == pytest.approx(0.4) and contributions[1, 2] == pytest.approx(1.0)


def test_noise_initialisation_forgets_the_window_and_is_seeded() -> None:
    cfg = small_config(gen_init="noise")
    model = Discriminator(cfg).eval()
    a = generate_from(model, torch.zeros(3, cfg.window, cfg.n_features), cfg)
    b = generate_from(model, torch.ones(3, cfg.window, cfg.n_features), cfg)
    assert torch.equal(a, b)
    other = generate_from(model, torch.zeros(3, cfg.window, cfg.n_features), small_config(gen_init="noise", seed=1))
    assert not torch.equal(a, other)


@pytest.mark.parametrize(
    "bad",
    [
        {"architecture": "transformer"},
        {"generate_from": "next"},
        {"score_rows": "first"},
        {"gen_init": "zeros"},
        {"gen_restart_every": -1},
    ],
)
def test_bad_generation_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        small_config(**bad)


def test_the_dragon_model_trains_with_algorithm_1_and_scores_a_spike() -> None:
    cfg = GonConfig(n_features=4, window=5, hidden=16, epochs=4, patience=4, seed=3)  # the defaults otherwise
    series = periodic_series(200)
    model, history = train_gon(make_windows(series, cfg.window), cfg)
    assert history["epochs_run"] >= 1 and np.isfinite(history["train_loss"]).all()
    spiked = series.copy()
    spiked[150, 0] += 3.0  # far above the training range
    scores, contributions = score_series(model, cfg, spiked)
    assert int(np.argmax(scores)) == 150 and int(np.argmax(contributions[150])) == 0


def test_a_window_scores_the_same_alone_and_anywhere_in_a_batch() -> None:
    """The service batches whatever arrived; a window's score must not depend on its neighbours."""
    cfg = GonConfig(n_features=4, window=5, hidden=16)  # the DRAGON model with AdaHessian
    model = build_discriminator(cfg).eval()
    windows = torch.from_numpy(make_windows(periodic_series(40), cfg.window))  # (40, 5, 4)
    previous = torch.cat([windows[:1], windows[:-1]])
    batched, shares = fault_scores(model, previous, windows, cfg)
    for t in (0, 17, 39):
        alone, alone_shares = fault_scores(model, previous[t : t + 1], windows[t : t + 1], cfg)
        torch.testing.assert_close(alone[0], batched[t])
        torch.testing.assert_close(alone_shares[0], shares[t])


def test_early_stopping_ends_after_patience_epochs_without_progress_and_keeps_the_best_weights(capsys) -> None:
    # lr 0.05 makes the validation loss bounce: it stops improving long before 40 epochs.
    cfg = small_config(epochs=40, patience=2, lr=5e-2, batch_size=16, seed=2)
    windows = make_windows(periodic_series(200), cfg.window)
    model, history = train_gon(windows, cfg, progress=True)
    assert history["epochs_run"] == history["best_epoch"] + cfg.patience + 1 < cfg.epochs
    assert min(history["val_loss"]) == history["best_val_loss"] == history["val_loss"][history["best_epoch"]]
    # The model returned is the best epoch's, not the last one's: its held-out loss is the best.
    held_out = torch.from_numpy(windows[-round(len(windows) * cfg.val_fraction) :])  # the newest: validation
    assert evaluate_gon(model, held_out, cfg)["loss"] == pytest.approx(history["best_val_loss"], rel=1e-6)
    assert history["val_loss"][-1] > history["best_val_loss"]
    # progress=True shows a tqdm bar on stderr with the losses of the epoch.
    bar = capsys.readouterr().err
    assert "gon:" in bar and f"/{cfg.epochs}" in bar and "train=" in bar and "val=" in bar
