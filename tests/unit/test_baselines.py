"""The model registry and the benchmark's models: interface, shapes, determinism, sanity."""

from __future__ import annotations

import numpy as np
import pytest

from dragon.detector.baselines import MODELS, create_model, register_model
from dragon.detector.gon import score_series

pytestmark = pytest.mark.unit

# Small enough to train in well under a second.
TINY_GON = {"epochs": 2, "window": 4, "hidden": 8, "gen_steps": 2, "batch_size": 32}
PARAMS = {"random": {}, "zscore": {}, "pca": {}, "gon": TINY_GON}


def series(t: int, d: int, seed: int = 0) -> np.ndarray:
    """Scaled-looking data: noisy sinusoids of different phases, (T, D)."""
    rng = np.random.default_rng(seed)
    steps = np.arange(t)[:, None]
    return 0.5 + 0.3 * np.sin(2 * np.pi * steps / 20 + np.arange(d)) + 0.02 * rng.standard_normal((t, d))


def test_the_registry_holds_every_benchmark_model() -> None:
    assert {"random", "zscore", "pca", "gon"} <= set(MODELS)
    assert set(PARAMS) == set(MODELS), "a new model needs a case in these tests"


def test_unknown_names_and_settings_are_errors() -> None:
    with pytest.raises(ValueError, match="unknown model 'nope'; known: .*zscore"):
        create_model("nope")
    with pytest.raises(ValueError, match="unknown ZScoreConfig keys"):
        create_model("zscore", std_flor=1.0)
    with pytest.raises(ValueError, match="unknown GonConfig keys"):
        create_model("gon", epoch=3)
    with pytest.raises(ValueError, match="aggregate"):
        create_model("zscore", aggregate="median")
    with pytest.raises(ValueError, match="already registered"):
        register_model("zscore")(MODELS["zscore"])


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("d", [1, 3, 7])
def test_scores_and_contributions_have_one_row_per_step(name: str, d: int) -> None:
    model = create_model(name, seed=0, **PARAMS[name])
    train, test = series(60, d), series(25, d, seed=1)
    model.fit(train)
    scores, contributions = model.score(test, history=train)
    assert scores.shape == (25,) and contributions.shape == (25, d)
    assert np.isfinite(scores).all() and np.isfinite(contributions).all()
    with pytest.raises(ValueError, match="dimensions"):
        model.score(series(5, d + 1))


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_same_seed_same_scores(name: str) -> None:
    train, test = series(60, 3), series(20, 3, seed=1)
    runs = []
    for _ in range(2):
        model = create_model(name, seed=3, **PARAMS[name])
        model.fit(train)
        runs.append(model.score(test, history=train))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_random_scores_change_with_the_seed() -> None:
    scores = []
    for seed in (0, 1):
        model = create_model("random", seed=seed)
        model.fit(series(10, 2))
        scores.append(model.score(series(10, 2))[0])
    assert not np.array_equal(scores[0], scores[1])


def test_zscore_flags_a_planted_spike_and_names_its_dimension() -> None:
    train, test = series(200, 5), series(100, 5, seed=1)
    test[50, 2] += 1.0
    model = create_model("zscore")
    model.fit(train)
    scores, contributions = model.score(test)
    assert int(scores.argmax()) == 50
    assert int(contributions[50].argmax()) == 2


def test_zscore_floors_the_std_of_constant_dimensions() -> None:
    train = np.zeros((10, 2))
    model = create_model("zscore", std_floor=0.5)
    model.fit(train)
    scores, contributions = model.score(np.array([[1.0, 0.0]]))
    assert scores.tolist() == [2.0] and contributions.tolist() == [[2.0, 0.0]]


def test_pca_scores_what_the_principal_subspace_cannot_explain() -> None:
    rng = np.random.default_rng(0)
    line = rng.standard_normal((200, 1)) @ np.array([[1.0, 1.0]])  # all variance along (1, 1)
    model = create_model("pca")
    model.fit(line)
    scores, _ = model.score(np.array([[2.0, 2.0], [1.0, -1.0]]))
    assert scores[0] == pytest.approx(0.0, abs=1e-9)
    assert scores[1] == pytest.approx(2.0)  # squared distance of (1, -1) from the line


def test_pca_of_one_dimension_is_the_squared_distance_from_the_mean() -> None:
    model = create_model("pca")
    model.fit(np.array([[0.0], [2.0]]))
    assert model.score(np.array([[4.0]]))[0].tolist() == [9.0]


def test_gon_scores_match_the_service_scoring_path() -> None:
    train, test = series(80, 3), series(30, 3, seed=1)
    model = create_model("gon", **TINY_GON)
    model.fit(train)
    window = TINY_GON["window"]
    assert model.context == window
    joined = model.scaler.transform(np.concatenate([train[-window:], test])).astype(np.float32)
    expected, expected_contributions = score_series(model.model, model.cfg, joined)
    scores, contributions = model.score(test, history=train)
    np.testing.assert_allclose(scores, expected[window:], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(contributions, expected_contributions[window:], rtol=1e-5, atol=1e-7)


def test_gon_single_step_with_history_equals_the_batch_score() -> None:
    """The latency measurement scores one step at a time; it must compute the same thing."""
    train, test = series(80, 3), series(30, 3, seed=1)
    model = create_model("gon", **TINY_GON)
    model.fit(train)
    batch, _ = model.score(test, history=train)
    full = np.concatenate([train, test])
    for t in (0, 1, 17, 29):
        one, _ = model.score(test[t : t + 1], history=full[: len(train) + t])
        assert one[0] == pytest.approx(batch[t], rel=1e-5, abs=1e-7)


def test_gon_records_its_config_and_training() -> None:
    model = create_model("gon", seed=5, min_span=0.5, **TINY_GON)
    model.fit(series(60, 2))
    described = model.describe()
    assert described["seed"] == 5 and described["min_span"] == 0.5 and described["window"] == 4
    assert "n_features" not in described and described["epochs_run"] >= 1
