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
look silent once, if none of theirs arrives for as many intervals afterwards.

After the detector reconnects to the broker, the detector's clock counts from
``MAX_RECONNECT_DELAY_S`` later: a broker restart cut every collector off too, and one that
reconnects later than another (their retries back off up to that long) is not silent meanwhile.

A silence is dated just after the host's last sample, which every replica knows alike, so its
event has the same id whichever replica publishes it. A replica starts from the samples in Redis
(:meth:`SilenceWatch.remember`), so a host that fell silent while no replica ran is reported too.
A whole LEI gone quiet (its collector down, its broker cut off) is no host's fault here: the
collector's retained availability topic says that.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from dragon.mqtt import MAX_RECONNECT_DELAY_S

# A remembered host's interval is read from the gaps between its newest stored samples (the
# store keeps their times, not their interval_s): the median of up to this many gaps, so one
# sample lost does not make the interval look twice as long.
INTERVAL_GAPS = 3
STAMPS_TO_REMEMBER = INTERVAL_GAPS + 1


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
        self._counting_from = float("-inf")  # the detector's clock counts silence from here on

    def heard(self, samples: Iterable[TimedSample], now: float) -> None:
        """Note samples arrived at ``now`` (a monotonic clock), in order; an older copy of a host's
        sample changes nothing."""
        for sample in samples:
            if sample.ts <= self._newest.get(sample.host, float("-inf")):
                continue
            self._first.setdefault(sample.host, sample.ts)
            self._newest[sample.host] = sample.ts
            self._heard[sample.host] = LastHeard(sample.ts, sample.interval_s, now, dict(self._newest))

    def remember(self, stamps: Mapping[str, Sequence[float]], now: float) -> None:
        """Start from what the replicas before stored: each host's newest sample times, oldest first
        (``STAMPS_TO_REMEMBER`` of them), as if heard ``now``. A host whose interval they cannot
        tell (fewer than two) is left out, and so is one heard already."""
        fresh = {host: times for host, times in stamps.items() if times and host not in self._newest}
        then = {**{host: times[-1] for host, times in fresh.items()}, **self._newest}
        for host, times in fresh.items():
            interval = interval_of(times)
            if interval is not None:
                self._first[host] = self._newest[host] = times[-1]
                self._heard[host] = LastHeard(times[-1], interval, now, then)

    def reconnected(self, now: float) -> None:
        """The detector is back on the broker: every collector may be coming back too."""
        self._counting_from = now + MAX_RECONNECT_DELAY_S

    def silent(self, now: float) -> dict[str, float]:
        """The hosts gone silent by ``now`` (the clock of :meth:`heard`), with their last sample's
        time: the same for every replica."""
        found = {}
        for host, last in self._heard.items():
            bound = self.intervals * last.interval_s
            quiet_for = now - max(last.arrived, self._counting_from)
            if quiet_for > bound and self._moved_on(host, last) > bound:
                found[host] = last.ts
        return found

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


def interval_of(stamps: Sequence[float]) -> float | None:
    """A host's sampling interval from its newest sample times (oldest first); None if they cannot
    tell (fewer than two distinct times)."""
    gaps = [b - a for a, b in itertools.pairwise(stamps) if b > a]
    return statistics.median(gaps[-INTERVAL_GAPS:]) if gaps else None
