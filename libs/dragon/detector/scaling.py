"""Per-feature min-max scaling fitted on normal operation (DRAGON sec. IV-A normalises windows).

Values are deliberately not clipped: a metric above anything seen in training maps above 1,
and that excess is what makes a fault stand out in the score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Smallest span per feature for a data set folder (``dragon-detector train --data`` and bench's
# gon): each feature is rescaled to its own training range, while a feature constant in
# training keeps a tenth of the unit instead of turning its first change into a huge value.
# FTSAD ships scaled to [0, 1] as a whole. Chosen on training data (docs/detector-quality.md).
DATASET_MIN_SPAN = 0.1


@dataclass(eq=False)  # numpy fields: == would be ambiguous, compare with to_dict()
class MinMaxScaler:
    """x -> (x - lo) / (hi - lo) per feature; ``hi - lo`` is never below the fit's ``min_span``."""

    lo: np.ndarray  # (n,) float64, training minimum
    hi: np.ndarray  # (n,) float64, lo + span

    def __post_init__(self) -> None:
        self.lo = np.asarray(self.lo, dtype=np.float64)
        self.hi = np.asarray(self.hi, dtype=np.float64)
        if self.lo.shape != self.hi.shape or self.lo.ndim != 1:
            raise ValueError(f"lo and hi must be 1-D of the same length, got {self.lo.shape} and {self.hi.shape}")
        if not (np.isfinite(self.lo).all() and np.isfinite(self.hi).all() and (self.hi > self.lo).all()):
            raise ValueError("scaler bounds must be finite with hi > lo for every feature")

    @property
    def n_features(self) -> int:
        return int(self.lo.shape[0])

    @classmethod
    def fit(cls, series: np.ndarray, min_span: float | Sequence[float] | np.ndarray = 1e-6) -> MinMaxScaler:
        """Bounds from a (T, n) series; span = max(max - min, min_span[f]).

        ``min_span`` (a scalar or one value per feature, in the series' units) keeps a feature
        that was constant in training from turning tiny changes into huge scaled values; the
        extra span is added above the minimum, so a constant feature maps to 0.
        """
        series = np.asarray(series, dtype=np.float64)
        if series.ndim != 2 or series.shape[0] == 0:
            raise ValueError(f"expected a non-empty (T, n) series, got shape {series.shape}")
        if not np.isfinite(series).all():
            raise ValueError("cannot fit a scaler on NaN or infinite values")
        span_floor = np.broadcast_to(np.asarray(min_span, dtype=np.float64), (series.shape[1],))
        if not (span_floor > 0).all():
            raise ValueError("min_span must be > 0 for every feature")
        lo = series.min(axis=0)
        span = np.maximum(series.max(axis=0) - lo, span_floor)
        return cls(lo=lo, hi=lo + span)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Scale (..., n) values; not clipped, so values beyond the training range exceed [0, 1]."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape[-1:] != (self.n_features,):
            raise ValueError(f"expected {self.n_features} features in the last axis, got shape {x.shape}")
        return (x - self.lo) / (self.hi - self.lo)

    def inverse_transform(self, x: np.ndarray) -> np.ndarray:
        """Back to the original units, e.g. to report a generated window."""
        return np.asarray(x, dtype=np.float64) * (self.hi - self.lo) + self.lo

    def to_dict(self) -> dict[str, list[float]]:
        return {"lo": [float(v) for v in self.lo], "hi": [float(v) for v in self.hi]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MinMaxScaler:
        unknown = set(data) - {"lo", "hi"}
        if unknown:
            raise ValueError(f"unknown MinMaxScaler keys: {sorted(unknown)}")
        return cls(lo=np.asarray(data["lo"], dtype=np.float64), hi=np.asarray(data["hi"], dtype=np.float64))
