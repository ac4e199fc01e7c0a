"""Hosts whose clocks run behind the LEI's, said in the log.

Every sample carries its host's own time. A Raspberry Pi has no real-time clock: until NTP
reaches it after a boot, it stamps its samples with the time it last saved, minutes or days
behind. Judged on its own (scope ``host``) such a host is judged as well as any; scope ``lei``
lines hosts up by their samples' times, so it judges that host against the LEI as it was when
its clock says, and the operator should know (``host_clock_behind``, then ``host_clock_agrees``).

A host's samples' usual lag (``dragon.lateness``: the least of its last ones that arrived live, so
a backlog delivered in a burst is not taken for a clock behind) from when the broker's client
received them (``Incoming.received``) is transit plus how far its clock is behind the detector's.
It counts only beyond the LEI's median usual lag: a detector behind on a broker's backlog (its
client receives no faster than it judges, the queue being bounded) or with its own clock off
sees every host lag alike. A clock ahead shows otherwise: its samples are dropped as ``future``
(``schemas.stamped_ahead``) before they reach this watch.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

import structlog

from dragon.detector.silence import TimedSample
from dragon.lateness import Lateness

log = structlog.get_logger(__name__)

TOLERANCE_INTERVALS = 10.0  # a host's samples usually this many of its intervals behind, at least
TOLERANCE_FLOOR_S = 30.0  # ... and this many seconds, beyond the LEI's and beyond the detector's clock


class ClockWatch:
    def __init__(self) -> None:
        self._lateness: dict[str, Lateness] = {}
        self.behind: dict[str, float] = {}  # host -> how far its clock was behind when said

    def heard(self, received: Iterable[tuple[TimedSample, float]]) -> None:
        """Note a batch of samples and when each was received (the wall clock; 0: not known), in order."""
        batch: dict[str, TimedSample] = {}
        for sample, at in received:
            if at:
                self._lateness.setdefault(sample.host, Lateness(at)).arrived(at, sample.ts, sample.interval_s)
                batch[sample.host] = sample
        if not batch:
            return
        # The LEI's median costs every host: only for a batch with a host that may be behind, or was.
        suspects = {
            host: sample
            for host, sample in batch.items()
            if host in self.behind or (self._lateness[host].usual or 0.0) > _tolerance(sample)
        }
        if not suspects:
            return
        typical = statistics.median(lag for lateness in self._lateness.values() if (lag := lateness.usual) is not None)
        for host, sample in suspects.items():
            self._judge(sample, self._lateness[host].usual or 0.0, typical)

    def _judge(self, sample: TimedSample, usual: float, typical: float) -> None:
        tolerance = _tolerance(sample)
        behind = usual > tolerance and usual - typical > tolerance
        if behind and sample.host not in self.behind:
            self.behind[sample.host] = usual
            log.warning(
                "host_clock_behind",
                host=sample.host,
                behind_s=round(usual, 1),
                then="scope lei judges it against the LEI as it was when its clock says; set its time (NTP)",
            )
        elif not behind and sample.host in self.behind:
            log.info("host_clock_agrees", host=sample.host, was_behind_s=round(self.behind.pop(sample.host), 1))

    def forget(self, hosts: Iterable[str]) -> None:
        """Forget hosts that left the LEI (the detector says which): the LEI's median is of its hosts."""
        for host in hosts:
            self._lateness.pop(host, None)
            self.behind.pop(host, None)


def _tolerance(sample: TimedSample) -> float:
    return max(TOLERANCE_INTERVALS * sample.interval_s, TOLERANCE_FLOOR_S)
