"""Hosts whose clocks disagree with the detector's, said in the log.

Every sample carries its host's own time. A Raspberry Pi has no real-time clock: until NTP
reaches it after a boot, it stamps its samples with the time it last saved, minutes or days
behind. Judged on its own (scope ``host``) such a host is judged as well as any; scope ``lei``
lines hosts up by their samples' times, so it judges that host against the LEI as it was when
its clock says, and the operator should know (``host_clock_off``, then ``host_clock_agrees``).

A host's clock is off by its samples' usual lag (``dragon.lateness``: the least of its last
samples that arrived live, so a backlog delivered in a burst is not taken for a clock behind),
measured from when the broker's client received them (``Incoming.received``: the detector's wall
clock, which also decides what is stamped in the future, however long the detector's own queue).
Every host off by about as much points at the detector's clock instead.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog

from dragon.detector.silence import TimedSample
from dragon.lateness import Lateness

log = structlog.get_logger(__name__)

TOLERANCE_INTERVALS = 10.0  # a host's samples usually this many of its intervals off, at least
TOLERANCE_FLOOR_S = 30.0  # ... and this many seconds


class ClockWatch:
    def __init__(self) -> None:
        self._lateness: dict[str, Lateness] = {}
        self.off: dict[str, float] = {}  # host -> its clock's offset when said off (negative: behind)

    def heard(self, received: Iterable[tuple[TimedSample, float]]) -> None:
        """Note samples and when each was received (the wall clock; 0: not known), in order."""
        for sample, at in received:
            if not at:
                continue
            lateness = self._lateness.setdefault(sample.host, Lateness(at))
            lateness.arrived(at, sample.ts, sample.interval_s)
            if lateness.usual is not None:
                self._judge(sample, -lateness.usual)

    def _judge(self, sample: TimedSample, offset: float) -> None:
        off = abs(offset) > max(TOLERANCE_INTERVALS * sample.interval_s, TOLERANCE_FLOOR_S)
        if off and sample.host not in self.off:
            self.off[sample.host] = offset
            log.warning(
                "host_clock_off",
                host=sample.host,
                offset_s=round(offset, 1),
                then="scope lei judges it against the LEI as it was when its clock says; set its time (NTP)",
            )
        elif not off and sample.host in self.off:
            log.info("host_clock_agrees", host=sample.host, was_off_s=round(self.off.pop(sample.host), 1))
