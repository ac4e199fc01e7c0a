"""Min-max scaling fitted on normal operation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dragon.detector.scaling import MinMaxScaler

pytestmark = pytest.mark.unit

SERIES = np.array([[0.0, 10.0, 5.0], [2.0, 30.0, 5.0], [4.0, 20.0, 5.0]])


def test_fit_maps_the_training_range_to_zero_one() -> None:
    scaler = MinMaxScaler.fit(SERIES, min_span=1.0)
    scaled = scaler.transform(SERIES)
    np.testing.assert_allclose(scaled.min(axis=0), [0.0, 0.0, 0.0])
    np.testing.assert_allclose(scaled.max(axis=0), [1.0, 1.0, 0.0])  # constant feature maps to 0


def test_values_beyond_training_are_not_clipped() -> None:
    scaler = MinMaxScaler.fit(SERIES, min_span=1.0)
    scaled = scaler.transform(np.array([[8.0, 0.0, 7.0]]))
    np.testing.assert_allclose(scaled, [[2.0, -0.5, 2.0]])


def test_min_span_keeps_a_constant_feature_from_exploding() -> None:
    tiny = MinMaxScaler.fit(SERIES, min_span=1e-6).transform(np.array([[0.0, 10.0, 6.0]]))
    sane = MinMaxScaler.fit(SERIES, min_span=[1.0, 1.0, 10.0]).transform(np.array([[0.0, 10.0, 6.0]]))
    assert tiny[0, 2] == pytest.approx(1e6)
    assert sane[0, 2] == pytest.approx(0.1)
    # min_span never narrows a feature's real span
    assert MinMaxScaler.fit(SERIES, min_span=[1.0, 1.0, 10.0]).hi[1] == 30.0


def test_round_trips_through_dict_and_inverse() -> None:
    scaler = MinMaxScaler.fit(SERIES, min_span=1.0)
    restored = MinMaxScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert restored.to_dict() == scaler.to_dict()
    np.testing.assert_allclose(restored.inverse_transform(restored.transform(SERIES)), SERIES)


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError):
        MinMaxScaler.fit(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError):
        MinMaxScaler.fit(SERIES[0])
    with pytest.raises(ValueError):
        MinMaxScaler.fit(SERIES, min_span=0.0)
    with pytest.raises(ValueError, match="features"):
        MinMaxScaler.fit(SERIES, min_span=1.0).transform(np.zeros((2, 2)))
    with pytest.raises(ValueError):
        MinMaxScaler(lo=[0.0, 1.0], hi=[1.0, 1.0])
    with pytest.raises(ValueError, match="unknown"):
        MinMaxScaler.from_dict({"lo": [0.0], "hi": [1.0], "mid": [0.5]})
