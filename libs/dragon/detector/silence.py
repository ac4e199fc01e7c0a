"""Hosts gone silent: a host whose samples stopped while its LEI's other hosts' samples came on.

A host that crashes, loses power or drops off the network sends no window to score, so no
score can flag it; yet it is the edge's most common fault. A host is silent once, since its
last sample arrived, more than ``intervals`` of its sampling intervals have passed both on the
detector's clock and on another host's: that host's samples have moved on that far, by their own
times.

Both clocks, because each alone can mislead. The detector's: a detector behind on its backlog,
or cut off from the broker or from Redis, hears no host for a while, but nobody's samples moved
on. The other host's: a host back after a silence of its own, or delivering a backlog its
collector kept while cut off, moves on by minutes in a moment. And on each host's own clock, so a
host whose clock runs minutes behind the others (a Pi without a real-time clock) is never
silent while its samples come. Progress is read from the most advanced other host, so half an
LEI dying does not hide the other half; a host whose clock steps forward can make the others
look silent once, if none of theirs arrives for as many intervals afterwards. A host whose clock
steps back (a Pi restoring an old time at boot) is silent until its clock passes its last
sample: its samples are older than its last judged window, and not judged either.

When the LEI comes back after a quiet spell (no host heard for half the silence bound, at least
two intervals: an access point rebooting, the detector stalled), no host is silent until as long
after the first sample back as the spell lasted, at most ``MAX_RECONNECT_DELAY_S``: collectors cut
off together reconnect about that far apart (each waits between attempts about as long as it has
been trying, up to that long). The spell is measured in each host's own interval and holds back
only the hosts it is long for: a collector stamping a tiny interval (misconfigured) makes every gap
between the detector's batches a spell for its own hosts, not a reason to hold back every host.
After the detector's own start or reconnection (a broker restart), whose spell it cannot tell, the
whole ``MAX_RECONNECT_DELAY_S``; Pis booting together come up about as far apart.

A silence is dated just after the host's last sample, which every replica knows alike, so its
event has the same id whichever replica publishes it. A replica starts from the samples in Redis
(:meth:`SilenceWatch.remember`), so a host that fell silent while no replica ran is reported too.
A whole LEI gone quiet (its collector down, its broker cut off) is no host's fault here: the
collector's retained availability topic says that.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from dragon.lateness import FORGET_AFTER_S
from dragon.mqtt import MAX_RECONNECT_DELAY_S
from dragon.store import sampling_interval

# A remembered host's interval is read from the gaps between its newest stored samples (the
# store keeps their times, not their interval_s): the median of up to this many gaps, so one
# sample lost does not make the interval look twice as long.
INTERVAL_GAPS = 3
STAMPS_TO_REMEMBER = INTERVAL_GAPS + 1
# A host whose last stored sample is this much older than the LEI's newest had left the LEI before
# this replica started (the simulator forgets hosts as quiet as that): not remembered, so a new
# version's first start reports no retired or renamed host.
REMEMBER_WITHIN_S = 3600.0
# No sample of any host for this many of a host's intervals, or for half the silence bound if that
# is longer, and the LEI was quiet for that host. A shorter spell cannot make a host
# silent (its collector is back within about as long again), and a detector whose batches come
# further apart than that (it is behind) must not take every gap for one: each would put off
# every silence.
QUIET_LEI_INTERVALS = 2


class TimedSample(Protocol):
    host: str
    ts: float
    interval_s: float


@dataclass(frozen=True)
class LastHeard:
    """A host's newest sample, when it arrived (the detector's clock), and every host's newest
    sample time then."""

    ts: float
    interval_s: float
    arrived: float
    others_then: dict[str, float]


class SilenceWatch:
    def __init__(self, intervals: float) -> None:
        self.intervals = intervals
        self._first: dict[str, float] = {}  # host -> its first sample time heard
        self._newest: dict[str, float] = {}  # host -> its newest sample time
        self._heard: dict[str, LastHeard] = {}
        self._none_before = float("-inf")  # no host is silent before this (the detector's clock)
        self._not_before: dict[str, float] = {}  # host -> it is not silent before this, after a spell
        self._last_any: float | None = None  # when a sample of any host last arrived

    def heard(self, samples: Iterable[TimedSample], now: float) -> None:
        """Note samples arrived at ``now`` (a monotonic clock), in order; an older copy of a host's
        sample changes nothing."""
        for sample in samples:
            if self._last_any is None:
                self.reconnected(now)
            elif now - self._last_any > 0:
                self._after_quiet_spell(now, now - self._last_any)
            self._last_any = now
            if sample.ts <= self._newest.get(sample.host, float("-inf")):
                continue
            self._first.setdefault(sample.host, sample.ts)
            self._newest[sample.host] = sample.ts
            self._heard[sample.host] = LastHeard(sample.ts, sample.interval_s, now, dict(self._newest))

    def remember(self, stamps: Mapping[str, Sequence[float]], now: float) -> None:
        """Start from what the replicas before stored: each host's newest sample times, oldest first
        (``STAMPS_TO_REMEMBER`` of them), as if heard ``now``. Left out: a host heard already, one
        whose interval they cannot tell (fewer than two), and one that left long before the
        others' newest sample (``REMEMBER_WITHIN_S``)."""
        newest = max((times[-1] for times in stamps.values() if times), default=0.0)
        fresh = {
            host: times
            for host, times in stamps.items()
            if times and host not in self._newest and times[-1] >= newest - REMEMBER_WITHIN_S
        }
        then = {**{host: times[-1] for host, times in fresh.items()}, **self._newest}
        for host, times in fresh.items():
            interval = sampling_interval(times, recent=INTERVAL_GAPS)
            if interval is not None:
                self._first[host] = self._newest[host] = times[-1]
                self._heard[host] = LastHeard(times[-1], interval, now, then)

    def reconnected(self, now: float) -> None:
        """The detector is back on the broker: every collector may be coming back, one by one."""
        self._none_before = max(self._none_before, now + MAX_RECONNECT_DELAY_S)

    def _after_quiet_spell(self, now: float, quiet_for: float) -> None:
        """No sample arrived for ``quiet_for`` before ``now``: hold back each host for which that was
        a quiet spell of the LEI until its collector may be back."""
        until = now + min(quiet_for, MAX_RECONNECT_DELAY_S)
        spell = max(QUIET_LEI_INTERVALS, self.intervals / 2)
        for host, last in self._heard.items():
            if quiet_for > spell * last.interval_s:
                self._not_before[host] = max(self._not_before.get(host, until), until)

    def silent(self, now: float) -> dict[str, float]:
        """The hosts gone silent by ``now`` (the clock of :meth:`heard`), with their last sample's
        time: the same for every replica."""
        found = {}
        for host, last in self._heard.items():
            bound = self.intervals * last.interval_s
            not_before = max(self._none_before, self._not_before.get(host, self._none_before))
            if now - last.arrived > bound and now > not_before and self._moved_on(host, last) > bound:
                found[host] = last.ts
        return found

    def departed(self, now: float) -> dict[str, float]:
        """The hosts that have left, with their last sample's time: silent (:meth:`silent`), and
        for ``FORGET_AFTER_S`` on both clocks (the simulator and the planner forget hosts as quiet as
        that). After a detector was cut off for an hour, a host that died meanwhile is held back as
        every host is, so it is reported silent before it can be taken for one that left."""
        return {
            host: last_ts
            for host, last_ts in self.silent(now).items()
            if now - self._heard[host].arrived > FORGET_AFTER_S
            and self._moved_on(host, self._heard[host]) > FORGET_AFTER_S
        }

    def forget(self, hosts: Iterable[str]) -> None:
        """Forget ``hosts``: back, each is heard as a new host."""
        gone = set(hosts)
        for per_host in (self._first, self._newest, self._heard, self._not_before):
            for host in gone & per_host.keys():
                del per_host[host]
        # Each host's note of the others then would keep the departed ones' times, host by host.
        self._heard = {
            host: dataclasses.replace(last, others_then={h: t for h, t in last.others_then.items() if h not in gone})
            for host, last in self._heard.items()
        }

    def interval(self, host: str) -> float:
        """The sampling interval of ``host``'s newest sample heard (0: never heard)."""
        last = self._heard.get(host)
        return last.interval_s if last is not None else 0.0

    def _moved_on(self, host: str, last: LastHeard) -> float:
        """How far the most advanced other host's samples moved on since ``host``'s last arrived;
        one heard first since then counts from its first sample."""
        return max(
            (
                newest - last.others_then.get(other, self._first[other])
                for other, newest in self._newest.items()
                if other != host
            ),
            default=0.0,
        )
