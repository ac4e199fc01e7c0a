"""Peaks-Over-Threshold: GPD fit, extreme quantiles, fallbacks and serialisation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dragon.detector.pot import (
    PotState,
    fit_pot,
    gpd_log_likelihood,
    gpd_quantile,
    grimshaw,
    label,
)

pytestmark = pytest.mark.unit


def gpd_sample(gamma: float, sigma: float, size: int, seed: int) -> np.ndarray:
    """Inverse-CDF draws: Y = sigma / gamma * (U^-gamma - 1)."""
    uniform = np.random.default_rng(seed).uniform(size=size)
    return sigma / gamma * (uniform ** (-gamma) - 1.0)


def test_threshold_on_exponential_data_is_close_to_the_true_quantile() -> None:
    scores = np.random.default_rng(0).exponential(size=20_000)
    state = fit_pot(scores, q=1e-3, level=0.98)
    assert state.method == "gpd"
    assert state.z_q == pytest.approx(math.log(1000), rel=0.15)
    assert state.n == 20_000 and state.n_peaks == 400 and len(state.peaks) == 400


# (draws, distribution, true quantile at q = 1e-3, allowed median relative error): level 0.98
# leaves 2 % of the draws as peaks, 6 to 20 here; Lomax(4) is a heavy tail (GPD shape 0.25).
FEW_PEAKS = {
    "6 peaks, light tail": (300, lambda rng, n: rng.exponential(size=n), math.log(1000), 0.10),
    "10 peaks, light tail": (500, lambda rng, n: rng.exponential(size=n), math.log(1000), 0.10),
    "20 peaks, light tail": (1000, lambda rng, n: rng.exponential(size=n), math.log(1000), 0.10),
    "10 peaks, heavy tail": (500, lambda rng, n: rng.pareto(4.0, size=n), 1000**0.25 - 1, 0.20),
    "20 peaks, heavy tail": (1000, lambda rng, n: rng.pareto(4.0, size=n), 1000**0.25 - 1, 0.20),
}


@pytest.mark.parametrize("case", sorted(FEW_PEAKS))
def test_a_tail_of_few_peaks_still_lands_near_the_true_quantile(case: str) -> None:
    """A short training series leaves few peaks: over 100 draws the threshold must stay near the
    quantile it estimates (median) and never fall to t or below (the bench's FTSAD-1 has 12)."""
    draws, sample, truth, tolerance = FEW_PEAKS[case]
    states = [fit_pot(sample(np.random.default_rng(seed), draws), q=1e-3, level=0.98) for seed in range(100)]
    thresholds = np.array([state.z_q for state in states])
    assert np.isfinite(thresholds).all() and all(state.z_q > state.t for state in states)
    assert np.median(thresholds) == pytest.approx(truth, rel=tolerance)


@pytest.mark.parametrize("gamma", [0.2, -0.2])
def test_grimshaw_recovers_known_gpd_parameters(gamma: float) -> None:
    fitted_gamma, fitted_sigma = grimshaw(gpd_sample(gamma, 1.0, 5_000, seed=1))
    assert fitted_gamma == pytest.approx(gamma, abs=0.06)
    assert fitted_sigma == pytest.approx(1.0, rel=0.08)


def test_grimshaw_finds_the_likelihood_maximum_that_scipy_computes() -> None:
    from scipy import stats  # the reference, a test dependency

    peaks = gpd_sample(0.2, 1.0, 2_000, seed=2)
    gamma, sigma = grimshaw(peaks)
    best = stats.genpareto.logpdf(peaks, gamma, scale=sigma).sum()
    assert gpd_log_likelihood(peaks, gamma, sigma) == pytest.approx(best, rel=1e-9)
    for d_gamma, d_sigma in [(0.01, 0), (-0.01, 0), (0, 0.01), (0, -0.01), (0.02, 0.02), (-0.02, -0.02)]:
        assert stats.genpareto.logpdf(peaks, gamma + d_gamma, scale=sigma * (1 + d_sigma)).sum() <= best


def test_quantile_is_continuous_at_gamma_zero() -> None:
    exponential = gpd_quantile(1.0, 0.0, 2.0, 1e-4, 1000, 20)
    assert gpd_quantile(1.0, 1e-6, 2.0, 1e-4, 1000, 20) == pytest.approx(exponential, rel=1e-4)
    assert gpd_quantile(1.0, -1e-6, 2.0, 1e-4, 1000, 20) == pytest.approx(exponential, rel=1e-4)


@pytest.mark.parametrize(
    ("scores", "method"),
    [
        (np.zeros(500), "no_peaks"),
        (np.full(500, 3.0), "no_peaks"),
        (np.r_[np.zeros(480), np.ones(20)], "no_peaks"),  # ties at the top: nothing above t
        (np.r_[np.zeros(490), np.ones(10)], "gpd"),  # ten identical peaks: the exponential candidate
        (np.arange(100.0), "exponential"),  # two peaks above the 0.98 quantile
        (np.array([0.5]), "no_peaks"),
        (np.r_[np.zeros(990), np.full(10, 7.0)], "gpd"),
        (np.random.default_rng(3).normal(size=300), "exponential"),
    ],
)
def test_degenerate_scores_give_a_finite_threshold_above_t(scores: np.ndarray, method: str) -> None:
    state = fit_pot(scores, q=1e-4)
    assert state.method == method
    assert math.isfinite(state.z_q) and state.z_q > state.t
    assert math.isfinite(state.gamma) and math.isfinite(state.sigma)
    assert label(float(scores.max()), state) == 0  # q = 1e-4 < 1/n is beyond every calibration point


def test_label_is_one_at_and_above_the_threshold() -> None:
    state = fit_pot(np.random.default_rng(4).exponential(size=2_000))
    assert label(state.z_q, state) == 1
    assert label(state.z_q + 1.0, state) == 1
    assert label(np.nextafter(state.z_q, -np.inf), state) == 0


def test_invalid_inputs_are_rejected() -> None:
    with pytest.raises(ValueError):
        fit_pot(np.array([]))
    with pytest.raises(ValueError):
        fit_pot(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="q must be"):
        fit_pot(np.ones(10), q=0.05, level=0.98)


def test_state_round_trips_through_json() -> None:
    state = fit_pot(np.random.default_rng(5).exponential(size=3_000))
    data = json.loads(json.dumps(state.to_dict()))
    assert PotState.from_dict(data) == state
    assert all(type(value) in (str, int, float, list) for value in state.to_dict().values())
    with pytest.raises(ValueError, match="unknown"):
        PotState.from_dict(data | {"zq": 1.0})
