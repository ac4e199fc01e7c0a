"""Detection-quality metrics for per-step anomaly scores: pure numpy, no sklearn or scipy.

Conventions shared by every function here:

- ``truth`` and ``predicted`` are 1-D boolean arrays over time steps; a *segment* is a maximal
  run of consecutive ``True`` in ``truth`` (one labelled fault event).
- Ratios with an empty denominator are 0 (precision with no alarm, recall with no labelled
  step), as sklearn's ``zero_division=0``; threshold-free metrics that are undefined (ROC-AUC
  with one class only, AP without positives) are ``nan`` so a report can say "undefined".
- Ties in scores never depend on the order of the steps: ranks are averaged (ROC-AUC), a
  threshold never splits a tie (AP), and dimension rankings count tied dimensions by their
  expected value under random tie-breaking (HitRate, NDCG).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# K grid of the PA%K curve, in percent (Kim et al., AAAI 2022, sweep K = 0..100).
PA_K_GRID = np.arange(0, 101)


@dataclass(frozen=True)
class Prf:
    """Precision, recall and F1 of a set of alarms against labelled steps."""

    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class Delay:
    """Detection delay over labelled segments: median of the detected ones, and the counts."""

    median_steps: float  # nan when no segment was detected
    detected: int  # segments with at least one flagged step
    missed: int  # segments never flagged; excluded from the median


def step_truth(labels: np.ndarray) -> np.ndarray:
    """Per-step truth (T',) bool from labels of shape (T',) or (T', D): a step is anomalous when any dimension is."""
    return np.asarray(labels).reshape(len(labels), -1).any(axis=1)


def segments(truth: np.ndarray) -> np.ndarray:
    """Labelled segments as ``[start, stop)`` rows, (S, 2) int: maximal runs of True."""
    edges = np.diff(np.r_[0, np.asarray(truth, dtype=np.int8), 0])
    return np.column_stack([np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)])


def precision_recall_f1(predicted: np.ndarray, truth: np.ndarray) -> Prf:
    """Point-wise precision, recall and F1: every time step counts once."""
    predicted, truth = _as_bool(predicted, truth)
    tp = int((predicted & truth).sum())
    precision = tp / max(int(predicted.sum()), 1)
    recall = tp / max(int(truth.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return Prf(precision=precision, recall=recall, f1=f1)


def point_adjust(predicted: np.ndarray, truth: np.ndarray, k_percent: float = 0.0) -> np.ndarray:
    """Alarms after point adjustment (Xu et al. 2018) or PA%K (Kim et al. 2022).

    A segment becomes wholly predicted positive when at least one of its steps is flagged and
    the flagged fraction is at least ``k_percent`` %. ``k_percent = 0`` is the classic PA; at
    ``k_percent = 100`` only fully flagged segments are "adjusted", which changes nothing, so
    the result equals the unadjusted alarms. Kim et al. write "exceeds K"; "at least K" differs
    only when a flagged fraction equals K exactly, and keeps both ends of the sweep meaningful.
    Alarms outside segments are left as they are.
    """
    predicted, truth = _as_bool(predicted, truth)
    adjusted = predicted.copy()
    for start, stop in segments(truth):
        flagged = int(predicted[start:stop].sum())
        if flagged and flagged * 100.0 >= k_percent * (stop - start):
            adjusted[start:stop] = True
    return adjusted


def point_adjusted_prf(predicted: np.ndarray, truth: np.ndarray, k_percent: float = 0.0) -> Prf:
    """Precision, recall and F1 after :func:`point_adjust`; PA inflates all three by design."""
    return precision_recall_f1(point_adjust(predicted, truth, k_percent), truth)


def f1_pa_k_auc(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Area under F1(K) of PA%K for K = 0, 1, ..., 100 %, trapezoids, normalised to [0, 1].

    It sits between the unadjusted F1 (K = 100) and the PA F1 (K = 0), and rewards alarms
    that cover a large part of each segment rather than a single lucky step.
    """
    f1s = [point_adjusted_prf(predicted, truth, k).f1 for k in PA_K_GRID]
    return float(np.trapezoid(f1s, PA_K_GRID) / (PA_K_GRID[-1] - PA_K_GRID[0]))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks in ascending order, tied values sharing their average rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    counts = np.diff(np.r_[starts, len(values)])
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(starts + (counts + 1) / 2.0, counts)
    return ranks


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve = P(an anomalous step scores above a normal one), ties count 1/2.

    Computed from the Mann-Whitney U statistic of the ranks; ``nan`` when one class is empty.
    """
    scores, truth = _scores_and_truth(scores, truth)
    positives = int(truth.sum())
    negatives = truth.size - positives
    if positives == 0 or negatives == 0:
        return math.nan
    rank_sum = average_ranks(scores)[truth].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """PR-AUC as average precision: sum over thresholds of (R_n - R_{n-1}) P_n (as sklearn).

    Thresholds are the distinct scores, from the highest down, so tied steps enter together.
    Unlike the trapezoidal PR area it never interpolates optimistically. ``nan`` without any
    labelled step; a random score's AP is close to the anomaly rate.
    """
    scores, truth = _scores_and_truth(scores, truth)
    positives = int(truth.sum())
    if positives == 0:
        return math.nan
    order = np.argsort(-scores, kind="mergesort")
    ordered = scores[order]
    tp = np.cumsum(truth[order])
    last_of_tie = np.r_[ordered[1:] != ordered[:-1], True]
    tp = tp[last_of_tie]
    flagged = np.flatnonzero(last_of_tie) + 1
    precision = tp / flagged
    recall_gain = np.diff(np.r_[0, tp]) / positives
    return float((recall_gain * precision).sum())


def best_f1(scores: np.ndarray, truth: np.ndarray) -> float:
    """Highest point-wise F1 over every threshold: a diagnostic of ranking quality only.

    It picks its threshold with the labels, so it must never choose anything; it tells how
    much of a low F1 at the POT threshold is the threshold's fault rather than the scores'.
    """
    scores, truth = _scores_and_truth(scores, truth)
    if not truth.any():
        return 0.0
    order = np.argsort(-scores, kind="mergesort")
    ordered = scores[order]
    last_of_tie = np.r_[ordered[1:] != ordered[:-1], True]  # a threshold cannot split ties
    tp = np.cumsum(truth[order])[last_of_tie]
    flagged = np.flatnonzero(last_of_tie) + 1
    return float((2 * tp / (flagged + truth.sum())).max())


def detection_delay(predicted: np.ndarray, truth: np.ndarray) -> Delay:
    """Steps from each segment's start to its first flagged step; the median over detected ones.

    Alarms before a segment starts do not count for it: only flags inside the segment detect it.
    """
    predicted, truth = _as_bool(predicted, truth)
    delays = []
    for start, stop in segments(truth):
        hits = np.flatnonzero(predicted[start:stop])
        if hits.size:
            delays.append(int(hits[0]))
    missed = len(segments(truth)) - len(delays)
    median = float(np.median(delays)) if delays else math.nan
    return Delay(median_steps=median, detected=len(delays), missed=missed)


def false_alarms_per_1000_steps(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Alarm events outside every labelled segment, per 1000 time steps.

    An alarm event is a run of consecutive flagged steps; it is false when it overlaps no
    labelled segment. Counting runs rather than steps matches what an operator sees (one
    page per event), and a long false run is not 30 false alarms. A run that touches a
    segment at any step is a true alarm, even if it also spills outside.
    """
    predicted, truth = _as_bool(predicted, truth)
    if predicted.size == 0:
        return 0.0
    false_runs = sum(1 for start, stop in segments(predicted) if not truth[start:stop].any())
    return 1000.0 * false_runs / predicted.size


def hit_rate_at(contributions: np.ndarray, labels: np.ndarray, p_percent: float = 100.0) -> float:
    """HitRate@P% (OmniAnomaly, TranAD): how many truly faulty dimensions the ranking finds.

    For every step with at least one labelled dimension (G of them), take the top
    round(P% * |G|) dimensions by contribution; the hit rate is |top ∩ G| / |G|. Averaged over
    those steps; ``nan`` if there are none. ``contributions`` and ``labels`` are (T, D).
    """
    return _mean_over_labelled_steps(contributions, labels, p_percent, _hits)


def ndcg_at(contributions: np.ndarray, labels: np.ndarray, p_percent: float = 100.0) -> float:
    """NDCG@P%: like :func:`hit_rate_at`, but a faulty dimension ranked higher counts more.

    Binary relevance, DCG = sum over the top round(P% * |G|) ranks r of rel_r / log2(r + 1),
    divided by the DCG of a perfect ranking; averaged over the steps with a labelled dimension.
    """
    return _mean_over_labelled_steps(contributions, labels, p_percent, _ndcg)


def _hits(expected_relevance: np.ndarray, n_relevant: int, top: int) -> float:
    return float(expected_relevance[:top].sum() / n_relevant)


def _ndcg(expected_relevance: np.ndarray, n_relevant: int, top: int) -> float:
    discounts = 1.0 / np.log2(np.arange(2, top + 2))
    ideal = discounts[: min(top, n_relevant)].sum()
    return float((expected_relevance[:top] * discounts).sum() / ideal)


def _mean_over_labelled_steps(contributions: np.ndarray, labels: np.ndarray, p_percent: float, measure) -> float:
    contributions = np.asarray(contributions, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if contributions.ndim != 2 or contributions.shape != labels.shape:
        raise ValueError(f"contributions {contributions.shape} and labels {labels.shape} must both be (T, D)")
    values = []
    for t in np.flatnonzero(labels.any(axis=1)):
        n_relevant = int(labels[t].sum())
        top = min(max(int(math.floor(p_percent * n_relevant / 100.0 + 0.5)), 1), labels.shape[1])
        values.append(measure(_expected_relevance(contributions[t], labels[t]), n_relevant, top))
    return float(np.mean(values)) if values else math.nan


def _expected_relevance(contribution: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Relevance at each rank (highest contribution first), tied dimensions sharing their mean.

    That is the expected relevance under a random order of the ties, so a constant ranking
    (say all contributions 0) scores like chance instead of like the dimensions' index order.
    """
    order = np.argsort(-contribution, kind="mergesort")
    ordered, rel = contribution[order], relevant[order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    counts = np.diff(np.r_[starts, len(ordered)])
    group_means = np.add.reduceat(rel, starts) / counts
    return np.repeat(group_means, counts)


def _as_bool(predicted: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predicted, truth = np.asarray(predicted).astype(bool), np.asarray(truth).astype(bool)
    if predicted.ndim != 1 or predicted.shape != truth.shape:
        raise ValueError(f"predicted {predicted.shape} and truth {truth.shape} must be 1-D of one length")
    return predicted, truth


def _scores_and_truth(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, truth = np.asarray(scores, dtype=np.float64), np.asarray(truth).astype(bool)
    if scores.ndim != 1 or scores.shape != truth.shape:
        raise ValueError(f"scores {scores.shape} and truth {truth.shape} must be 1-D of one length")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return scores, truth
