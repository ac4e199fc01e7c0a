"""Detection metrics against hand-computed cases (and sklearn, where it happens to be installed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dragon.detector import metrics

pytestmark = pytest.mark.unit

# Two labelled segments, [1, 4) and [6, 8). Alarms at 0 (false), 2 (inside the first segment)
# and 9 (false); the second segment is never flagged.
TRUTH = np.array([0, 1, 1, 1, 0, 0, 1, 1, 0, 0], dtype=bool)
ALARMS = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 1], dtype=bool)


def test_segments_are_maximal_half_open_runs() -> None:
    assert metrics.segments(TRUTH).tolist() == [[1, 4], [6, 8]]
    assert metrics.segments(np.ones(3, dtype=bool)).tolist() == [[0, 3]]
    assert metrics.segments(np.zeros(3, dtype=bool)).shape == (0, 2)


def test_point_wise_precision_recall_f1() -> None:
    # tp = 1 (step 2) of 3 alarms and 5 labelled steps: P = 1/3, R = 1/5, F1 = 2PR/(P+R) = 1/4.
    prf = metrics.precision_recall_f1(ALARMS, TRUTH)
    assert prf == pytest.approx(metrics.Prf(precision=1 / 3, recall=1 / 5, f1=0.25))


def test_no_alarm_and_no_label_give_zero_not_nan() -> None:
    assert metrics.precision_recall_f1(np.zeros(4, bool), TRUTH[:4]) == metrics.Prf(0.0, 0.0, 0.0)
    assert metrics.precision_recall_f1(np.ones(4, bool), np.zeros(4, bool)) == metrics.Prf(0.0, 0.0, 0.0)


def test_point_adjustment_fills_a_touched_segment_only() -> None:
    adjusted = metrics.point_adjust(ALARMS, TRUTH)
    assert adjusted.astype(int).tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 1]
    # tp = 3 of 5 alarms and 5 labelled steps: P = R = F1 = 0.6, against 0.25 unadjusted.
    assert metrics.point_adjusted_prf(ALARMS, TRUTH) == pytest.approx(metrics.Prf(0.6, 0.6, 0.6))


def test_pa_k_adjusts_a_segment_only_when_enough_of_it_is_flagged() -> None:
    # The first segment is 1/3 flagged: adjusted for K <= 33.3 %, left alone above.
    assert metrics.point_adjusted_prf(ALARMS, TRUTH, 33).f1 == pytest.approx(0.6)
    assert metrics.point_adjusted_prf(ALARMS, TRUTH, 34).f1 == pytest.approx(0.25)


def test_pa_k_at_0_is_pa_and_at_100_is_unadjusted() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        truth, alarms = rng.random(200) < 0.3, rng.random(200) < 0.1
        assert (metrics.point_adjust(alarms, truth, 0) == metrics.point_adjust(alarms, truth)).all()
        assert (metrics.point_adjust(alarms, truth, 100) == alarms).all()


def test_f1_pa_k_auc_is_the_normalised_trapezoid_area() -> None:
    # F1(K) = 0.6 for K = 0..33 and 0.25 for K = 34..100:
    # (33 * 0.6 + (0.6 + 0.25) / 2 + 66 * 0.25) / 100.
    assert metrics.f1_pa_k_auc(ALARMS, TRUTH) == pytest.approx((33 * 0.6 + 0.425 + 66 * 0.25) / 100)
    assert metrics.f1_pa_k_auc(TRUTH, TRUTH) == pytest.approx(1.0)
    assert metrics.f1_pa_k_auc(np.zeros(10, bool), TRUTH) == 0.0


def test_roc_auc_of_perfect_inverted_tied_and_random_scores() -> None:
    truth = np.array([0, 0, 0, 1, 1], dtype=bool)
    ramp = np.arange(5.0)
    assert metrics.roc_auc(ramp, truth) == 1.0
    assert metrics.roc_auc(-ramp, truth) == 0.0
    assert metrics.roc_auc(np.zeros(5), truth) == 0.5
    rng = np.random.default_rng(0)
    assert metrics.roc_auc(rng.random(20_000), rng.random(20_000) < 0.2) == pytest.approx(0.5, abs=0.02)


def test_roc_auc_and_average_precision_of_a_hand_computed_case() -> None:
    # sklearn's documented example: ROC-AUC 0.75; AP = 0.5 * 1 + 0.5 * 2/3.
    truth, scores = np.array([0, 0, 1, 1], bool), np.array([0.1, 0.4, 0.35, 0.8])
    assert metrics.roc_auc(scores, truth) == pytest.approx(0.75)
    assert metrics.average_precision(scores, truth) == pytest.approx(0.5 + 1 / 3)


def test_ties_are_never_split_by_the_order_of_steps() -> None:
    # One positive and one negative at each of two score values.
    truth, scores = np.array([1, 0, 1, 0], bool), np.array([1.0, 1.0, 0.0, 0.0])
    assert metrics.roc_auc(scores, truth) == 0.5
    assert metrics.roc_auc(scores[::-1], truth[::-1]) == 0.5
    assert metrics.average_precision(scores, truth) == pytest.approx(0.5)
    assert metrics.average_precision(scores[[1, 0, 3, 2]], truth[[1, 0, 3, 2]]) == pytest.approx(0.5)


def test_average_precision_of_perfect_and_random_rankings() -> None:
    truth = np.array([0, 1, 0, 1, 1, 0], dtype=bool)
    assert metrics.average_precision(truth.astype(float), truth) == 1.0
    rng = np.random.default_rng(1)
    truth = rng.random(20_000) < 0.2
    assert metrics.average_precision(rng.random(20_000), truth) == pytest.approx(truth.mean(), abs=0.02)


def test_threshold_free_metrics_are_nan_when_undefined() -> None:
    assert math.isnan(metrics.roc_auc(np.arange(3.0), np.zeros(3, bool)))
    assert math.isnan(metrics.roc_auc(np.arange(3.0), np.ones(3, bool)))
    assert math.isnan(metrics.average_precision(np.arange(3.0), np.zeros(3, bool)))
    with pytest.raises(ValueError, match="finite"):
        metrics.roc_auc(np.array([0.0, np.nan]), np.array([0, 1], bool))


def test_best_f1_is_the_best_threshold_in_hindsight() -> None:
    truth, scores = np.array([0, 0, 1, 1], bool), np.array([0.1, 0.4, 0.35, 0.8])
    # Thresholds 0.8 (P 1, R 1/2, F1 2/3), 0.4 (1/2, 1/2), 0.35 (2/3, 1, F1 0.8), 0.1 (1/2, 1).
    assert metrics.best_f1(scores, truth) == pytest.approx(0.8)


def test_detection_delay_counts_steps_from_segment_start_to_first_flag() -> None:
    delay = metrics.detection_delay(ALARMS, TRUTH)
    assert delay == metrics.Delay(median_steps=1.0, detected=1, missed=1)
    truth = np.array([1, 1, 1, 0, 1, 1, 1, 1, 0, 1], dtype=bool)  # segments [0,3) [4,8) [9,10)
    alarms = np.array([1, 0, 0, 0, 0, 0, 0, 1, 0, 1], dtype=bool)  # delays 0, 3, 0
    assert metrics.detection_delay(alarms, truth) == metrics.Delay(median_steps=0.0, detected=3, missed=0)
    assert math.isnan(metrics.detection_delay(np.zeros(10, bool), truth).median_steps)


def test_false_alarms_count_runs_outside_every_segment() -> None:
    # Runs at 0, 2 and 9; the run at 2 lies in a segment: two false runs in 10 steps.
    assert metrics.false_alarms_per_1000_steps(ALARMS, TRUTH) == pytest.approx(200.0)
    # One long run that spills out of a segment is a true alarm, and a long false run counts once.
    truth = np.array([0, 0, 0, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    assert metrics.false_alarms_per_1000_steps(np.array([0, 0, 1, 1, 1, 1, 0, 0, 0, 0], bool), truth) == 0.0
    assert metrics.false_alarms_per_1000_steps(np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 0], bool), truth) == 100.0


# Row 0: faulty dims {0, 2}, ranked 1st and 2nd. Row 1: faulty {1, 2}, ranked 3rd and 2nd.
# Row 2 has no label and is skipped.
CONTRIB = np.array([[0.9, 0.1, 0.5, 0.0], [0.9, 0.1, 0.5, 0.0], [0.0, 0.0, 0.0, 1.0]])
DIM_LABELS = np.array([[1, 0, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])


def test_hit_rate_at_100_and_150_percent() -> None:
    # @100 %: top-2 is {0, 2}: row 0 finds 2/2, row 1 finds 1/2. @150 %: top-3 finds all.
    assert metrics.hit_rate_at(CONTRIB, DIM_LABELS, 100) == pytest.approx(0.75)
    assert metrics.hit_rate_at(CONTRIB, DIM_LABELS, 150) == pytest.approx(1.0)


def test_ndcg_at_100_percent() -> None:
    # Row 1: relevances by rank (0, 1, 1, 0): DCG@2 = 1/log2(3), ideal = 1 + 1/log2(3).
    row1 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert metrics.ndcg_at(CONTRIB, DIM_LABELS) == pytest.approx((1.0 + row1) / 2)


def test_tied_contributions_score_like_chance_not_like_index_order() -> None:
    zeros, labels = np.zeros((1, 4)), np.array([[1, 0, 0, 0]])
    assert metrics.hit_rate_at(zeros, labels) == pytest.approx(0.25)
    assert metrics.ndcg_at(zeros, labels) == pytest.approx(0.25)
    assert math.isnan(metrics.hit_rate_at(zeros, np.zeros((1, 4))))


def test_roc_auc_average_precision_and_ndcg_equal_scikit_learns() -> None:
    from sklearn import metrics as sk  # the reference, a test dependency

    rng = np.random.default_rng(2)
    truth = rng.random(500) < 0.3
    scores = np.round(rng.random(500) + truth * 0.3, 1)  # rounding makes ties
    assert metrics.roc_auc(scores, truth) == pytest.approx(sk.roc_auc_score(truth, scores))
    assert metrics.average_precision(scores, truth) == pytest.approx(sk.average_precision_score(truth, scores))
    contributions, labels = np.round(rng.random((50, 6)), 1), (rng.random((50, 6)) < 0.3).astype(int)
    rows = labels.any(axis=1)
    expected = np.mean(
        [sk.ndcg_score(labels[[t]], contributions[[t]], k=int(labels[t].sum())) for t in np.flatnonzero(rows)]
    )
    assert metrics.ndcg_at(contributions, labels) == pytest.approx(expected)


def test_inputs_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="1-D of one length"):
        metrics.precision_recall_f1(np.zeros(3, bool), np.zeros(4, bool))
    with pytest.raises(ValueError, match=r"\(T, D\)"):
        metrics.hit_rate_at(np.zeros((3, 2)), np.zeros((3, 3)))
