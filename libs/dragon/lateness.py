"""How late a source's messages arrive after their own stamps, and the sliding minimum that tells it.

A message's lag (when it arrived, on our clock, minus its stamp) is transit plus how far the
source's clock is behind ours. Its *usual* lag is the least of its last ``LIVE_LAGS`` that arrived
live: a backlog comes in a burst, and its messages would make their own lateness usual. The
simulator's view uses it to date its news (``simulator/view.py``); the detector to tell a host
whose clock is off (``detector/clocks.py``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

# The least of the last this many live lags is the usual one: a source whose clock steps back
# looks late by the step for as many of its intervals.
LIVE_LAGS = 20
FORGET_AFTER_S = 3600.0  # a source silent this long has left (a host, the federation or its LEI)
# Our wall clock moving this far against the monotonic clock between two looks is a step (NTP
# setting it), not drift: what was timed on it before is that far off.
STEP_TOLERANCE_S = 1.0


class SlidingMinimum:
    """The least of the last ``keep`` values pushed, in amortised constant time: a monotonic queue of
    (push number, value) with increasing values, whose front is the minimum.

    Every snapshot needs every host's background: taking the minimum over 360 stored vectors per
    host was 95 % of a 256-host snapshot (50 ms)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._queue: deque[tuple[int, float]] = deque()
        self._pushed = 0
        self._shift = 0.0  # added to every value kept (:meth:`shift`)

    def shift(self, by: float) -> None:
        """Add ``by`` to every value kept."""
        self._shift += by

    def push(self, value: float) -> None:
        value -= self._shift
        self._pushed += 1
        while self._queue and self._queue[-1][1] >= value:
            self._queue.pop()
        self._queue.append((self._pushed, value))
        if self._queue[0][0] <= self._pushed - self.keep:
            self._queue.popleft()

    @property
    def minimum(self) -> float | None:
        return self._queue[0][1] + self._shift if self._queue else None


@dataclass
class Lateness:
    received: float  # when the newest message arrived, on our clock
    lag: float = 0.0  # received - stamp of the newest message
    lags: SlidingMinimum = field(default_factory=lambda: SlidingMinimum(LIVE_LAGS))  # of the live messages
    arrivals: int = 0

    def arrived(self, received: float, ts: float, interval_s: float) -> None:
        """Note that a message stamped ``ts`` arrived at ``received`` (our clock); the source sends
        one every ``interval_s``.

        Only a message that arrived live, half an interval or more after the one before, tells the
        usual lag. The first one is not live either: after a restart it may be the head of the
        backlog the broker kept for this service."""
        live = self.arrivals > 0 and received - self.received >= interval_s / 2
        self.arrivals += 1
        self.received, self.lag = received, received - ts
        if live:
            self.lags.push(self.lag)

    def age(self, now: float, ts: float) -> float:
        """How old the newest message, stamped ``ts``, is by ``now`` (our clock): since it arrived,
        plus how much later than usual it arrived. A source whose clock runs behind has a large
        lag every time, and is as fresh as any while its messages come; one delivered late (a
        backlog kept through an outage) is as old as its lateness, not news. Until one came
        live, by its stamp."""
        if self.usual is None:
            return now - ts
        return now - self.received + max(0.0, self.lag - self.usual)

    def shift(self, by: float) -> None:
        """Our clock stepped by ``by``: what was timed on it moves with it."""
        self.received += by
        self.lag += by
        self.lags.shift(by)

    def gone(self, now: float) -> bool:
        """Whether nothing has arrived for FORGET_AFTER_S by ``now`` (our clock)."""
        return now - self.received > FORGET_AFTER_S

    @property
    def usual(self) -> float | None:
        """How long after its stamp a message of the source usually arrives; None until one came live."""
        return self.lags.minimum


def since_boot() -> float:
    """Seconds since boot, suspended time included (Linux's CLOCK_BOOTTIME; the monotonic clock
    elsewhere): the monotonic clock stops while a machine or VM is suspended, and the wall clock
    moving on meanwhile would look like a step."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


class OwnClockSteps:
    """Steps of this machine's wall clock (NTP setting a Pi's, which has no real-time clock), told
    by how far it moved against the clock since boot (:func:`since_boot`) since the last look.

    Arrivals are timed on the wall clock, since sources stamp theirs on theirs; after a step of
    ours, every source's lag moves by the step at once while its usual lag (the least of the
    last LIVE_LAGS) does not, and every source would look late by the step for that many intervals."""

    def __init__(self, wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = since_boot) -> None:
        self._wall, self._monotonic = wall, monotonic
        self._offset = wall() - monotonic()

    def since_last_look(self) -> float:
        """How far the wall clock stepped since the last look that saw a step (0.0 for none)."""
        offset = self._wall() - self._monotonic()
        step = offset - self._offset
        if abs(step) < STEP_TOLERANCE_S:
            return 0.0  # drift, or NTP slewing: what it adds up to is taken as a step once past the tolerance
        self._offset = offset
        return step
