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

The moment a host fell silent, ``last sample + intervals x interval``, is on its own clock and the
same for every replica, so its event has the same id whichever replica publishes it. What a
replica has not heard it cannot judge: a host silent since before the replica started is not
reported by it, and a whole LEI gone quiet (its collector down, its broker cut off) is no host's
fault here; the collector's retained availability topic says that.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


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

    def heard(self, samples: Iterable[TimedSample], now: float) -> None:
        """Note samples arrived at ``now`` (a monotonic clock), in order; an older copy of a host's
        sample changes nothing."""
        for sample in samples:
            if sample.ts <= self._newest.get(sample.host, float("-inf")):
                continue
            self._first.setdefault(sample.host, sample.ts)
            self._newest[sample.host] = sample.ts
            self._heard[sample.host] = LastHeard(sample.ts, sample.interval_s, now, dict(self._newest))

    def silent(self, now: float) -> dict[str, float]:
        """The hosts gone silent by ``now`` (the clock of :meth:`heard`), with the moment each fell
        silent on its own clock."""
        found = {}
        for host, last in self._heard.items():
            bound = self.intervals * last.interval_s
            if now - last.arrived > bound and self._moved_on(host, last) > bound:
                found[host] = last.ts + bound
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
