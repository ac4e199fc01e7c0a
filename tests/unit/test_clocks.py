"""Hosts whose clocks run off the detector's: said once while off, and once back in line."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import structlog.testing

from dragon.detector.clocks import ClockWatch

pytestmark = pytest.mark.unit

T0 = 1_000_000.0


def arrivals(host: str, offset_s: float, seconds: range) -> list[tuple[SimpleNamespace, float]]:
    """One sample a second received at T0 + s, stamped ``offset_s`` off."""
    return [(SimpleNamespace(host=host, ts=T0 + s + offset_s, interval_s=1.0), T0 + s) for s in seconds]


def said(watch: ClockWatch, *batches: list) -> list[tuple[str, str]]:
    with structlog.testing.capture_logs() as logs:
        for batch in batches:
            watch.heard(batch)
    return [(entry["event"], entry["host"]) for entry in logs]


def test_a_host_whose_clock_runs_an_hour_behind_is_said_once_and_again_when_it_agrees():
    watch = ClockWatch()
    assert said(watch, arrivals("pi", -3600.0, range(0, 200)), arrivals("h1", 0.3, range(0, 200))) == [
        ("host_clock_off", "pi")
    ]
    assert watch.off["pi"] == pytest.approx(-3600.0)
    assert said(watch, arrivals("pi", 0.2, range(200, 400))) == [("host_clock_agrees", "pi")]
    assert watch.off == {}


def test_a_backlog_delivered_late_is_no_clock_off():
    """A collector cut off for ten minutes delivers what it kept, then samples in time."""
    watch = ClockWatch()
    backlog = [(SimpleNamespace(host="pi", ts=T0 - 600 + i, interval_s=1.0), T0 + i / 100) for i in range(600)]
    # A burst: no sample of it arrived half an interval after the one before (not live).
    assert said(watch, backlog, arrivals("pi", 0.1, range(7, 300))) == []


def test_a_host_ahead_is_said_and_unknown_receipt_times_are_left_out():
    watch = ClockWatch()
    unknown = [(sample, 0.0) for sample, _ in arrivals("h2", -3600.0, range(0, 200))]
    assert said(watch, arrivals("h1", 120.0, range(0, 200)), unknown) == [("host_clock_off", "h1")]
