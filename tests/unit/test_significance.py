"""The circular-shift test: what it finds in scores that follow the labels, and in scores that do not."""

from __future__ import annotations

from xml.etree import ElementTree

import numpy as np
import pytest

from dragon.detector import metrics, significance
from dragon.detector.svgplot import Interval, write_intervals_svg
from dragon.records import markdown_table

pytestmark = pytest.mark.unit


def labelled(length: int, spans: list[tuple[int, int]]) -> np.ndarray:
    truth = np.zeros(length, dtype=bool)
    for start, stop in spans:
        truth[start:stop] = True
    return truth


def test_shifts_keep_every_segment_off_itself_and_need_no_seed():
    truth = labelled(100, [(10, 20), (50, 53)])
    shifts = significance.admissible_shifts(truth, max_shifts=1000)
    assert shifts.min() == 10 and shifts.max() == 90 and len(shifts) == 81
    longest = labelled(100, [(10, 20)])
    assert not any((np.roll(longest, shift) & longest).any() for shift in shifts)
    assert (np.roll(longest, 9) & longest).any()  # one step shorter would overlap
    thinned = significance.admissible_shifts(truth, max_shifts=5)
    assert len(thinned) == 5 and thinned[0] == 10 and thinned[-1] == 90
    assert np.array_equal(thinned, significance.admissible_shifts(truth, max_shifts=5))


def test_labels_without_a_segment_or_without_room_for_a_shift_are_refused():
    with pytest.raises(ValueError, match="no anomalous step"):
        significance.admissible_shifts(np.zeros(10, dtype=bool))
    with pytest.raises(ValueError, match="leaves no shift"):
        significance.admissible_shifts(labelled(10, [(2, 8)]))


def test_scores_that_follow_the_labels_beat_every_shift():
    truth = labelled(400, [(50, 60), (200, 215), (330, 340)])
    scores = truth + np.random.default_rng(0).normal(0, 0.3, truth.size)
    result = significance.against_chance(scores, truth, metrics.roc_auc)
    assert result.observed > 0.95 and result.null_high < 0.75
    assert result.p_value == pytest.approx(1 / (1 + result.shifts))


def test_noise_is_not_told_from_chance():
    truth = labelled(400, [(50, 60), (200, 215), (330, 340)])
    p_values = [
        significance.against_chance(rng.normal(size=400), truth, metrics.roc_auc).p_value
        for rng in (np.random.default_rng(seed) for seed in range(20))
    ]
    # Under the null p is uniform: most are far from 0, and few fall below 0.05.
    assert np.median(p_values) > 0.2 and sum(p < 0.05 for p in p_values) <= 3


def test_a_score_against_itself_differs_by_nothing_and_a_better_one_stands_out():
    truth = labelled(400, [(50, 60), (200, 215), (330, 340)])
    rng = np.random.default_rng(1)
    noise = rng.normal(size=400)
    same = significance.against_each_other(noise, noise, truth, metrics.average_precision)
    assert same.observed == 0 and same.null_low == same.null_high == 0 and same.p_value == 1
    better = significance.against_each_other(truth + rng.normal(0, 0.3, 400), noise, truth, metrics.roc_auc)
    assert better.observed > 0.3 and better.observed > better.null_high
    assert better.p_value < 0.01


def test_result_rows_print_as_a_markdown_table_of_the_chosen_columns():
    rows = [{"score": "zscore", "p": 0.25, "extra": 1}, {"score": "gon", "p": 0.5, "extra": 2}]
    assert markdown_table(("score", "p"), rows).splitlines() == [
        "| score | p |",
        "| --- | --- |",
        "| zscore | 0.25 |",
        "| gon | 0.5 |",
    ]


def test_the_plot_has_one_bar_and_one_dot_per_score_and_metric_filled_where_it_stands_out(tmp_path):
    panels = {
        "roc_auc": [Interval("zscore", 0.84, 0.34, 0.66, True), Interval("gon", 0.47, 0.45, 0.53, False)],
        "pr_auc": [Interval("zscore", 0.75, 0.09, 0.30, True), Interval("gon", 0.33, 0.30, 0.36, False)],
    }
    path = tmp_path / "significance.svg"
    write_intervals_svg(path, panels, "FTSAD-25 & co")
    svg = ElementTree.parse(path).getroot()  # well-formed, the title's "&" escaped
    dots = svg.findall("{http://www.w3.org/2000/svg}circle")
    assert len(dots) == 4 and [d.get("fill") for d in dots].count("#d6604d") == 2
    bars = [line for line in svg.findall("{http://www.w3.org/2000/svg}line") if line.get("stroke-width") == "8"]
    assert len(bars) == 4
    # A dot lies inside its bar when the observed value is inside the chance range.
    gon_roc_bar, gon_roc_dot = bars[1], dots[1]
    assert float(gon_roc_bar.get("x1")) < float(gon_roc_dot.get("cx")) < float(gon_roc_bar.get("x2"))
    with pytest.raises(ValueError, match="nothing to plot"):
        write_intervals_svg(tmp_path / "empty.svg", {}, "empty")
