"""Can a test set's labels tell a score from chance, or two scores apart? A circular-shift test.

A test set with two labelled segments (FTSAD-25/55) gives a ROC-AUC that depends as much on
where those segments happen to lie as on the scores. The circular-shift test (as used for
time series, where steps are not independent) asks how the same scores fare against the same
segments moved elsewhere in time: rolling the labels by a shift keeps every segment's length
and the spacing between segments, and breaks any link between scores and labels. The scores'
own autocorrelation is kept too, which a permutation of single steps would destroy.

- ``against_chance``: the metric on the true labels against its values on every shifted copy;
  p is the share of shifts that score at least as high (one-sided, with the observed one counted).
- ``against_each_other``: the difference of two scores' metric on the true labels against the
  differences the shifted labels give the same two scores: the spread chance alignment alone
  produces between them (two-sided p, twice the smaller tail).

Only shifts at least as long as the longest segment are used, so no segment overlaps itself;
at most ``max_shifts`` of them, evenly spaced, so the result needs no seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dragon.detector import metrics

Metric = Callable[[np.ndarray, np.ndarray], float]
METRICS: dict[str, Metric] = {"roc_auc": metrics.roc_auc, "pr_auc": metrics.average_precision}


@dataclass(frozen=True)
class ShiftTest:
    observed: float  # on the true labels (a difference, for two scores)
    null_low: float  # 2.5th percentile over the shifts
    null_median: float
    null_high: float  # 97.5th percentile
    p_value: float
    shifts: int


def admissible_shifts(truth: np.ndarray, max_shifts: int = 1000) -> np.ndarray:
    """Shifts in [L, T' - L] with L the longest segment, at most ``max_shifts`` evenly spaced."""
    truth = np.asarray(truth, dtype=bool)
    spans = metrics.segments(truth)
    if len(spans) == 0:
        raise ValueError("the labels mark no anomalous step: nothing to test")
    longest = int((spans[:, 1] - spans[:, 0]).max())
    candidates = np.arange(longest, len(truth) - longest + 1)
    if len(candidates) == 0:
        raise ValueError(f"a segment of {longest} steps leaves no shift in a series of {len(truth)}")
    picks = np.unique(np.linspace(0, len(candidates) - 1, min(max_shifts, len(candidates))).round().astype(int))
    return candidates[picks]


def against_chance(scores: np.ndarray, truth: np.ndarray, metric: Metric, max_shifts: int = 1000) -> ShiftTest:
    shifts = admissible_shifts(truth, max_shifts)
    observed = metric(scores, truth)
    null = np.array([metric(scores, np.roll(truth, s)) for s in shifts])
    return _summary(observed, null, p_value=(1 + np.sum(null >= observed)) / (1 + len(null)))


def against_each_other(
    scores_a: np.ndarray, scores_b: np.ndarray, truth: np.ndarray, metric: Metric, max_shifts: int = 1000
) -> ShiftTest:
    """A's metric minus B's, on the true labels and on every shifted copy of them."""
    shifts = admissible_shifts(truth, max_shifts)
    observed = metric(scores_a, truth) - metric(scores_b, truth)
    rolled = [np.roll(truth, s) for s in shifts]
    null = np.array([metric(scores_a, t) - metric(scores_b, t) for t in rolled])
    above, below = (1 + np.sum(null >= observed)) / (1 + len(null)), (1 + np.sum(null <= observed)) / (1 + len(null))
    # Two-sided by the tails, as the null need not be centred on 0 (two scores differ in how
    # they rank any labels: a constant stretch, ties).
    return _summary(observed, null, p_value=min(1.0, 2 * min(above, below)))


def _summary(observed: float, null: np.ndarray, p_value: float) -> ShiftTest:
    low, median, high = np.percentile(null, [2.5, 50, 97.5])
    return ShiftTest(float(observed), float(low), float(median), float(high), float(p_value), len(null))
