"""Per-host streaming POT thresholds in Redis, shared by every detector replica.

Each host's :class:`~dragon.detector.pot.StreamingPot` is kept in one hash per LEI,
``dragon:<lei>:pot`` (``dragon:<lei>:predicted:pot`` for forecasts), field host -> msgpack of
:class:`HostThreshold`. A batch of windows
reads the states of its hosts in one round trip, learns from its scores in memory and writes
them back in one. A restarted detector, or another replica taking a host over, continues
from there rather than from the checkpoint. Which model a state was calibrated for is kept
with it (:meth:`dragon.detector.scorer.Scorer.resume` restarts the state when it changes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import redis
import structlog

from dragon.detector.health import verdict_keys
from dragon.detector.pot import StreamingPot
from dragon.records import UnknownKeys, check_known_keys

log = structlog.get_logger(__name__)


@dataclass
class HostThreshold:
    """One host's streaming threshold and the model it was calibrated for."""

    model_id: str
    pot: StreamingPot
    ts: float | None = None  # timestamp of the newest window learnt from

    def judge(self, ts: float, score: float) -> tuple[float, bool]:
        """(threshold in force, alarm) for the window at ``ts``, learning from it if it is new.

        A window no newer than the last one learnt from (a redelivered sample) is judged but
        not counted twice; the fault state ignores it as stale anyway.
        """
        if self.ts is not None and ts <= self.ts:
            threshold = self.pot.threshold
            return threshold, score >= threshold
        self.ts = ts
        return self.pot.update(score)

    def to_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "pot": self.pot.to_dict(), "ts": self.ts}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HostThreshold:
        check_known_keys(cls, data)
        return cls(**(dict(data) | {"pot": StreamingPot.from_dict(data["pot"])}))


class ThresholdStore:
    def __init__(self, client: redis.Redis, lei: str, mode: str = "observed") -> None:
        self._client = client
        self._key = f"{verdict_keys(lei, mode)}:pot"
        # Hosts whose stored state a newer version wrote (keys this one does not know): judged
        # from calibration here and never overwritten, so that a replica of the older version in
        # a rolling upgrade does not throw away what the newer ones learnt.
        self._newer: set[str] = set()

    def load(self, hosts: Sequence[str]) -> dict[str, HostThreshold | None]:
        """The stored state of each host (None: none yet, or unreadable), in one round trip."""
        raw = self._client.hmget(self._key, list(hosts))
        return {host: self._decode(host, data) for host, data in zip(hosts, raw, strict=True)}

    def _decode(self, host: str, data: bytes | None) -> HostThreshold | None:
        newer_before = host in self._newer
        self._newer.discard(host)
        if data is None:
            return None
        try:
            return HostThreshold.from_dict(msgpack.unpackb(data))
        except UnknownKeys as exc:
            self._newer.add(host)
            if not newer_before:
                log.warning("pot_state_of_a_newer_version_left_alone", host=host, error=str(exc))
        except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
            log.warning("pot_state_unreadable_restarting", host=host, error=str(exc))
        return None

    def save(self, states: Mapping[str, HostThreshold]) -> None:
        """Write the states back in one round trip (one HSET, atomic on its own).

        Read-modify-write without a lock is enough: each host is scored by one replica at a
        time (``membership.py``). While ownership moves, two replicas may briefly both score
        a host; the last write wins and at worst a few windows are not learnt from.
        """
        mapping = {h: msgpack.packb(s.to_dict()) for h, s in states.items() if h not in self._newer}
        if mapping:
            self._client.hset(self._key, mapping=mapping)
