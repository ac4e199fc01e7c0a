import math

import numpy as np
import pytest

from dragon.detector.pot import drift_removed, dspot_thresholds, fit_pot, spot_thresholds

pytestmark = pytest.mark.unit


def test_spot_threshold_stays_near_the_true_quantile_of_a_stationary_stream():
    rng = np.random.default_rng(0)
    calibration, stream = rng.exponential(size=2000), rng.exponential(size=20000)
    state = fit_pot(calibration, q=1e-3, level=0.98)
    thresholds = spot_thresholds(state, stream)
    assert thresholds.shape == stream.shape and np.isfinite(thresholds).all()
    assert thresholds[-1] == pytest.approx(math.log(1000), rel=0.15)  # Exp(1): P(X > ln 1000) = 1e-3
    assert (stream >= thresholds).mean() < 5e-3


def test_spot_does_not_learn_from_alarms():
    rng = np.random.default_rng(1)
    state = fit_pot(rng.exponential(size=2000), q=1e-3, level=0.98)
    stream = np.concatenate([rng.exponential(size=500), np.full(200, 1e6)])
    thresholds = spot_thresholds(state, stream)
    assert (stream[500:] >= thresholds[500:]).all()  # a long fault never raises its own bar
    assert thresholds[-1] == thresholds[500]


def test_drift_removed_subtracts_the_mean_of_the_previous_scores():
    assert drift_removed(np.array([1.0, 2.0, 3.0, 10.0]), depth=2).tolist() == [1.5, 7.5]
    with pytest.raises(ValueError):
        drift_removed(np.array([1.0, 2.0]), depth=2)


def test_dspot_follows_slow_drift_but_flags_a_sudden_rise():
    rng = np.random.default_rng(2)
    calibration = rng.normal(1.0, 0.1, size=2000)
    drift = np.linspace(1.0, 3.0, 3000) + rng.normal(0, 0.1, size=3000)  # the baseline triples slowly
    stream = drift.copy()
    stream[2500] += 2.0  # one sudden spike
    thresholds = dspot_thresholds(calibration, stream, depth=20, q=1e-3, level=0.98)
    alarms = stream >= thresholds
    assert alarms[2500]
    assert alarms.sum() <= 10
    static = fit_pot(calibration, q=1e-3, level=0.98).z_q
    assert (stream >= static).mean() > 0.5  # a static threshold drowns in the drift
