"""Which hosts are silent: since their last sample arrived, the detector's clock and another host's
samples moved on by more than as many of their intervals."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dragon.detector.silence import SilenceWatch

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Sample:
    host: str
    ts: float
    interval_s: float = 2.0


def rounds(watch: SilenceWatch, start: float, count: int, hosts: dict[str, float]) -> float:
    """``count`` rounds of samples 2 s apart, arriving as taken; each host stamps them on its own
    clock (``hosts``: its offset). The detector's time after the last round."""
    for i in range(count):
        now = start + 2.0 * i
        watch.heard([Sample(host, now + offset) for host, offset in hosts.items()], now)
    return start + 2.0 * (count - 1)


def test_a_host_is_silent_once_as_many_of_its_intervals_passed_since_its_last_sample():
    watch = SilenceWatch(intervals=10)
    rounds(watch, 100.0, 5, {"h1": 0.0, "h2": 0.0})  # both last at 108
    now = rounds(watch, 110.0, 10, {"h2": 0.0})  # h2 at 128: 20 s on, exactly the bound
    assert watch.silent(now) == {}
    watch.heard([Sample("h2", 128.5)], 128.5)
    assert watch.silent(128.5) == {"h1": 108.0}  # dated by its last sample


def test_the_bound_is_in_the_silent_hosts_own_interval():
    watch = SilenceWatch(intervals=10)
    watch.heard([Sample("slow", 100.0, 30.0), Sample("fast", 100.0, 0.5)], 100.0)
    watch.heard([Sample("fast", 250.0, 0.5)], 250.0)
    assert watch.silent(250.0) == {}  # 150 s is under 10 of slow's 30 s
    watch.heard([Sample("fast", 401.0, 0.5)], 401.0)
    assert watch.silent(401.0) == {"slow": 100.0}


def test_a_host_whose_clock_runs_behind_is_not_silent_while_its_samples_come():
    watch = SilenceWatch(intervals=3)
    now = rounds(watch, 1000.0, 30, {"h1": 0.0, "late": -600.0})
    assert watch.silent(now) == {}
    # Nor when the detector then hears nobody for a while: its samples are compared with their own
    # clock's, not with h1's, 600 s ahead.
    assert watch.silent(now + 60.0) == {}


def test_a_detector_that_heard_nobody_for_a_while_finds_nobody_silent():
    """Behind on its backlog, or cut off from the broker or Redis: no host's samples moved on."""
    watch = SilenceWatch(intervals=3)
    now = rounds(watch, 100.0, 5, {"h1": 0.0, "h2": 0.0})
    assert watch.silent(now + 600.0) == {}
    # Then the backlog, in order: each host is heard as its samples come.
    rounds(watch, now + 600.0, 20, {"h1": -598.0, "h2": -598.0})
    assert watch.silent(now + 640.0) == {}


def test_a_host_moving_on_by_minutes_in_a_moment_makes_nobody_silent():
    """A host back after a silence of its own, or one whose collector delivers what it kept while cut off."""
    watch = SilenceWatch(intervals=3)
    rounds(watch, 100.0, 5, {"h1": 0.0, "h2": 0.0})  # h2 last at 108
    now = rounds(watch, 110.0, 20, {"h1": 0.0})  # h1 alone until 148
    assert watch.silent(now) == {"h2": 108.0}
    watch.heard([Sample("h2", 148.5)], 148.5)
    watch.heard([Sample("h1", ts) for ts in range(150, 200)], 149.0)  # a backlog, at once
    assert watch.silent(149.0) == {}


def test_no_other_host_no_silence():
    alone = SilenceWatch(intervals=3)
    now = rounds(alone, 100.0, 50, {"h1": 0.0})
    assert alone.silent(now + 100.0) == {}


def test_half_an_lei_gone_does_not_hide_the_other_half():
    watch = SilenceWatch(intervals=3)
    rounds(watch, 100.0, 2, {"h1": 0.0, "h2": 0.0, "h3": 0.0, "h4": 0.0})
    now = rounds(watch, 104.0, 10, {"h1": 0.0})
    assert sorted(watch.silent(now)) == ["h2", "h3", "h4"]


def test_an_older_copy_of_a_sample_changes_nothing():
    watch = SilenceWatch(intervals=3)
    rounds(watch, 100.0, 2, {"h1": 0.0, "h2": 0.0})
    now = rounds(watch, 104.0, 10, {"h1": 0.0})
    watch.heard([Sample("h2", 101.0)], now)  # redelivered
    assert watch.silent(now) == {"h2": 102.0}


def test_after_a_reconnect_a_collector_has_as_long_to_come_back_as_clients_wait_between_tries():
    """A broker restart cut every collector off: h1's came back first, h2's takes longer."""
    watch = SilenceWatch(intervals=3)
    rounds(watch, 100.0, 5, {"h1": 0.0, "h2": 0.0})  # both last at 108, then the broker is away
    watch.reconnected(160.0)
    now = rounds(watch, 160.0, 10, {"h1": 0.0})  # h1's backlog and new samples
    assert watch.silent(now) == {}  # 178: within the 30 s h2's collector may wait to reconnect
    watch.heard([Sample("h1", 197.0)], 197.0)
    assert watch.silent(197.0) == {"h2": 108.0}  # 190 + 6 s passed


def test_a_replica_starts_from_the_hosts_stored_and_their_intervals():
    watch = SilenceWatch(intervals=3)
    watch.remember({"h1": [90.0, 92.0, 94.0, 96.0], "h2": [91.0, 92.0, 93.0, 94.0], "new": [95.0]}, 500.0)
    assert watch.silent(500.0) == {}
    watch.heard([Sample("h1", 98.0 + 2.0 * i) for i in range(5)], 505.0)  # h1 to 106: 10 s on
    assert watch.silent(505.0) == {"h2": 94.0}  # its 1 s interval, read from the gaps: 3 s
    watch.heard([Sample("h1", 130.0)], 550.0)
    assert sorted(watch.silent(550.0)) == ["h2"]  # "new": one sample, its interval unknown
    heard = SilenceWatch(intervals=3)
    heard.heard([Sample("h2", 200.0)], 500.0)
    heard.remember({"h2": [91.0, 92.0]}, 500.0)  # what the replica heard itself is newer
    heard.heard([Sample("h1", ts) for ts in (300.0, 320.0)], 530.0)
    assert heard.silent(530.0) == {"h2": 200.0}
