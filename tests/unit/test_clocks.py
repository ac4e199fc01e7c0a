"""Hosts whose clocks run behind the LEI's: said once while behind, and once back in line."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import structlog.testing

from dragon.detector.clocks import ClockWatch

pytestmark = pytest.mark.unit

T0 = 1_000_000.0


def ticks(seconds: range, behind: dict[str, float], late: float = 0.2) -> list[list[tuple[SimpleNamespace, float]]]:
    """One batch a second: each host's sample stamped ``behind[host]`` before it was taken,
    received ``late`` seconds after it was taken."""
    return [
        [(SimpleNamespace(host=host, ts=T0 + s - lag, interval_s=1.0), T0 + s + late) for host, lag in behind.items()]
        for s in seconds
    ]


def said(watch: ClockWatch, batches: list) -> list[tuple[str, str]]:
    with structlog.testing.capture_logs() as logs:
        for batch in batches:
            watch.heard(batch)
    return [(entry["event"], entry["host"]) for entry in logs]


def test_a_host_whose_clock_runs_an_hour_behind_is_said_once_and_again_when_it_agrees():
    watch = ClockWatch()
    assert said(watch, ticks(range(0, 100), {"pi": 3600.0, "h1": 0.0, "h2": 0.0})) == [("host_clock_behind", "pi")]
    assert watch.behind["pi"] == pytest.approx(3600.2)
    assert said(watch, ticks(range(100, 200), {"pi": 0.0, "h1": 0.0, "h2": 0.0})) == [("host_clock_agrees", "pi")]
    assert watch.behind == {}


def test_in_an_lei_of_two_the_host_behind_is_the_one_said():
    assert said(ClockWatch(), ticks(range(100), {"pi": 3600.0, "h1": 0.0})) == [("host_clock_behind", "pi")]


def test_a_detector_behind_on_a_backlog_takes_no_host_for_one_whose_clock_is_behind():
    """Its client receives no faster than it judges: every host's samples arrive ten minutes late."""
    assert said(ClockWatch(), ticks(range(100), {f"h{i}": 0.0 for i in range(16)}, late=600.0)) == []


def test_a_backlog_delivered_in_a_burst_is_no_clock_behind():
    """A collector cut off for ten minutes delivers what it kept, then samples in time."""
    burst = [[(SimpleNamespace(host="pi", ts=T0 - 600 + i, interval_s=1.0), T0 + i / 100)] for i in range(600)]
    in_time = ticks(range(7, 100), {"pi": 0.0, "h1": 0.0, "h2": 0.0})
    assert said(ClockWatch(), burst + in_time) == []


def test_a_host_that_left_is_forgotten_and_unknown_receipt_times_are_left_out():
    """The detector says which hosts left (silence.SilenceWatch.departed): they no longer count in
    the LEI's median, and one back is judged afresh."""
    watch = ClockWatch()
    said(watch, ticks(range(100), {"pi": 3600.0, "h1": 0.0, "h2": 0.0}))
    watch.forget(["pi"])
    assert watch.behind == {} and "pi" not in watch._lateness
    assert said(watch, ticks(range(100, 200), {"pi": 3600.0, "h1": 0.0, "h2": 0.0})) == [("host_clock_behind", "pi")]
    unknown = [[(sample, 0.0) for sample, _ in batch] for batch in ticks(range(100), {"pi": 3600.0, "h1": 0.0})]
    assert said(ClockWatch(), unknown) == []
