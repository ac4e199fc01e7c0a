"""Which hosts are silent: since their last sample arrived, the detector's clock and another host's
samples moved on by more than as many of their intervals."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dragon.detector.silence import INTERVAL_GAPS, REMEMBER_WITHIN_S, SilenceWatch
from dragon.lateness import FORGET_AFTER_S
from dragon.mqtt import MAX_RECONNECT_DELAY_S
from dragon.store import sampling_interval

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


def running(intervals: float, hosts: dict[str, float], until: float = 108.0) -> SilenceWatch:
    """A watch that has heard ``hosts`` every 2 s since long enough before ``until`` (their last
    round) for the first samples' grace to be over."""
    watch = SilenceWatch(intervals)
    start = until - 2.0 * 40
    assert rounds(watch, start, 41, hosts) == until
    return watch


def test_a_host_is_silent_once_as_many_of_its_intervals_passed_since_its_last_sample():
    watch = running(10, {"h1": 0.0, "h2": 0.0})  # both last at 108
    now = rounds(watch, 110.0, 10, {"h2": 0.0})  # h2 at 128: 20 s on, exactly the bound
    assert watch.silent(now) == {}
    watch.heard([Sample("h2", 128.5)], 128.5)
    assert watch.silent(128.5) == {"h1": 108.0}  # dated by its last sample


def test_the_bound_is_in_the_silent_hosts_own_interval():
    watch = running(10, {"slow": 0.0, "fast": 0.0}, until=100.0)
    watch.heard([Sample("slow", 130.0, 30.0)], 130.0)  # slow's interval is 30 s from now on
    now = rounds(watch, 132.0, 150, {"fast": 0.0})  # to 430
    assert watch.silent(now) == {}  # 300 s: not more than 10 of slow's 30 s
    watch.heard([Sample("fast", 432.0)], 432.0)
    assert watch.silent(432.0) == {"slow": 130.0}


def test_a_host_whose_clock_runs_behind_is_not_silent_while_its_samples_come():
    watch = running(3, {"h1": 0.0, "late": -600.0})
    assert watch.silent(108.0) == {}
    # Nor when the detector then hears nobody for a while: its samples are compared with their own
    # clock's, not with h1's, 600 s ahead.
    assert watch.silent(168.0) == {}


def test_a_detector_that_heard_nobody_for_a_while_finds_nobody_silent():
    """Behind on its backlog, or cut off from the broker or Redis: no host's samples moved on."""
    watch = running(3, {"h1": 0.0, "h2": 0.0})
    assert watch.silent(708.0) == {}
    # Then the backlog, in order: each host is heard as its samples come.
    rounds(watch, 708.0, 20, {"h1": -598.0, "h2": -598.0})
    assert watch.silent(748.0) == {}


def test_a_host_moving_on_by_minutes_in_a_moment_makes_nobody_silent():
    """A host back after a silence of its own, or one whose collector delivers what it kept while cut off."""
    watch = running(3, {"h1": 0.0, "h2": 0.0})  # h2 last at 108
    now = rounds(watch, 110.0, 20, {"h1": 0.0})  # h1 alone until 148
    assert watch.silent(now) == {"h2": 108.0}
    watch.heard([Sample("h2", 148.5)], 148.5)
    watch.heard([Sample("h1", ts) for ts in range(150, 200)], 149.0)  # a backlog, at once
    assert watch.silent(149.0) == {}


def test_no_other_host_no_silence():
    alone = running(3, {"h1": 0.0})
    assert alone.silent(208.0) == {}


def test_half_an_lei_gone_does_not_hide_the_other_half():
    watch = running(3, {"h1": 0.0, "h2": 0.0, "h3": 0.0, "h4": 0.0})
    now = rounds(watch, 110.0, 10, {"h1": 0.0})
    assert sorted(watch.silent(now)) == ["h2", "h3", "h4"]


def test_an_older_copy_of_a_sample_changes_nothing():
    watch = running(3, {"h1": 0.0, "h2": 0.0})
    now = rounds(watch, 110.0, 10, {"h1": 0.0})
    watch.heard([Sample("h2", 101.0)], now)  # redelivered
    assert watch.silent(now) == {"h2": 108.0}


@pytest.mark.parametrize("detector_reconnected", [True, False])
def test_an_lei_back_from_a_quiet_spell_has_its_hosts_come_back_one_by_one(detector_reconnected):
    """A broker restart (the detector reconnects too), or an access point rebooting under the
    collectors alone: h1's collector comes back first, h2's up to the longest reconnect delay later."""
    watch = running(3, {"h1": 0.0, "h2": 0.0})  # both last at 108, then nothing
    if detector_reconnected:
        watch.reconnected(160.0)
    back = 160.0  # h1's first sample since
    done = back + MAX_RECONNECT_DELAY_S  # the time h2's collector may take to reconnect
    now = rounds(watch, back, int((done - back) / 2) + 1, {"h1": 0.0})
    assert now == done and watch.silent(now) == {}
    watch.heard([Sample("h1", done + 2.0)], done + 2.0)
    assert watch.silent(done + 2.0) == {"h2": 108.0}


def test_a_replica_starts_from_the_hosts_stored_and_their_intervals():
    watch = SilenceWatch(intervals=3)
    stored = {
        "h1": [90.0, 92.0, 94.0, 96.0],
        "h2": [90.0, 91.0, 93.0, 94.0],  # one sample lost: its interval is still 1 s
        "new": [95.0],  # one sample: its interval unknown
        "retired": [94.0 - REMEMBER_WITHIN_S, 95.0 - REMEMBER_WITHIN_S],  # an hour and 1 s before h1
    }
    watch.remember(stored, 500.0)
    # The collectors come back at 520: the first sample after the start opens a grace.
    now = rounds(watch, 520.0, 15, {"h1": -422.0})  # h1 from 98, every 2 s
    assert now < 520.0 + MAX_RECONNECT_DELAY_S and watch.silent(now) == {}
    now = rounds(watch, now + 2.0, 3, {"h1": -422.0})  # to 554: past the grace
    assert watch.silent(now) == {"h2": 94.0}  # "new" and "retired" are not known


def test_what_a_replica_heard_itself_is_not_replaced_by_what_is_stored():
    watch = SilenceWatch(intervals=3)
    watch.heard([Sample("h2", 200.0)], 500.0)
    watch.remember({"h2": [91.0, 92.0], "h1": [290.0, 292.0]}, 500.0)
    now = rounds(watch, 502.0, 30, {"h1": -200.0})  # h1 from 302 to 360
    assert watch.silent(now) == {"h2": 200.0}


def test_a_short_quiet_spell_delays_a_silence_by_no_more_than_it_lasted():
    """The detector stalled 5 s (or an access point blinked): collectors come back within about as
    long, so h2, which died meanwhile, is reported 5 s after the first sample back, not 30."""
    watch = running(3, {"h1": 0.0, "h2": 0.0})  # both last at 108
    now = rounds(watch, 113.0, 3, {"h1": 0.0})  # to 117: h2 quiet 9 s, but h2's collector may be late
    assert watch.silent(now) == {}
    watch.heard([Sample("h1", 119.0)], 119.0)
    assert watch.silent(119.0) == {"h2": 108.0}  # past 113 + 5


def test_one_lost_sample_does_not_double_the_interval():
    assert sampling_interval([90.0, 91.0, 93.0, 94.0], recent=INTERVAL_GAPS) == 1.0  # gaps 1, 2, 1
    assert sampling_interval([90.0, 92.0]) == 2.0
    assert sampling_interval([90.0, 90.0]) is None
    # Only the newest gaps: a host whose collector changed its interval is read at the new one.
    assert sampling_interval([0.0, 10.0, 20.0, 30.0, 31.0, 32.0, 33.0], recent=INTERVAL_GAPS) == 1.0


def test_a_detector_behind_its_backlog_still_reports_a_silence():
    """Its batches come 2.1 s apart, each with the second's samples it is behind on: no gap is a
    quiet spell of the LEI, so none puts the dead host's report off."""
    watch = SilenceWatch(intervals=10)
    for second in range(60):
        watch.heard([Sample("h1", float(second), 1.0), Sample("h2", float(second), 1.0)], float(second))
    taken, now, reported = 60, 60.0, {}
    while now < 100.0 and not reported:
        now += 2.1
        batch = [Sample("h1", float(ts), 1.0) for ts in range(taken, int(now) + 1)]  # h2 died at 59
        taken = int(now) + 1
        watch.heard(batch, now)
        reported = watch.silent(now)
    assert reported == {"h2": 59.0} and now < 72.0, (reported, now)


def test_a_collector_stamping_a_tiny_interval_holds_back_only_its_own_hosts():
    """Its samples say 0.01 s apart: every gap between the detector's batches (0.5 s) is a quiet
    spell for its host, which must not put off the report of another host gone silent."""
    watch = SilenceWatch(intervals=10)
    now = 0.0
    while now < 60.0:
        watch.heard([Sample("tiny", now, 0.01), Sample("h1", now, 1.0), Sample("h2", now, 1.0)], now)
        now += 0.5
    reported = {}
    while now < 100.0 and not reported:
        watch.heard([Sample("tiny", now, 0.01), Sample("h1", now, 1.0)], now)  # h2 died at 59.5
        reported = watch.silent(now)
        now += 0.5
    assert reported == {"h2": 59.5} and now < 71.0, (reported, now)


def test_a_host_heard_of_for_an_hour_has_departed_and_once_forgotten_is_heard_as_new():
    watch = running(10, {"h1": 0.0, "gone": 0.0})  # both last at 108
    now = rounds(watch, 110.0, 11, {"h1": 0.0})
    assert watch.silent(now) == {"gone": 108.0} and watch.departed(now) == {}
    later = rounds(watch, now + 2.0, int(FORGET_AFTER_S / 2.0), {"h1": 0.0})  # h1 sends on for an hour
    assert watch.departed(later) == {"gone": 108.0}
    watch.forget(["gone"])
    assert watch.silent(later) == {} and watch.departed(later) == {}
    assert all("gone" not in last.others_then for last in watch._heard.values())
    back = rounds(watch, later + 2.0, 3, {"h1": 0.0, "gone": 0.0})
    assert watch.silent(back) == {} and watch.interval("gone") == 2.0  # a host like any new one


def test_a_host_that_died_while_the_detector_was_cut_off_for_an_hour_is_silent_before_it_has_left():
    """Nothing arrived for over an hour (the broker was down) and h2 died meanwhile. Back, every
    host is held back a while, h2 too: taken for one that left at once, it was never reported."""
    watch = running(10, {"h1": 0.0, "h2": 0.0})  # both last at 108
    back = 108.0 + FORGET_AFTER_S + 100.0
    watch.heard([Sample("h1", back)], back)
    assert watch.departed(back) == {} and watch.silent(back) == {}
    later = rounds(watch, back + 2.0, 20, {"h1": 0.0})  # the hold-back (MAX_RECONNECT_DELAY_S) is over
    assert watch.silent(later) == {"h2": 108.0} and watch.departed(later) == {"h2": 108.0}
