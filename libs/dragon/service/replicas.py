"""A stable name for each replica of a scaled service: the lowest numbered slot free in Redis.

A replica's MQTT session, the queue the broker keeps for it while it is away, is named after its
instance. Named after the container's host name, a container that compose recreates (a new
image, a changed setting) comes back under a new name and a new session: what was published
while neither ran went to the old session, which nobody resumes (and which the broker keeps for
an hour). A slot is named after the LEI and a number (``lei1-0``, ``lei1-1``, ...) and held in
Redis while its replica runs: the replica that replaces one that stopped takes its number, and
so its session and what the broker kept in it.

A holder is a container's host name, so a container restarted after a crash takes its own slot
again, though the slot has not expired yet.
"""

from __future__ import annotations

import time

import redis
import structlog

from dragon.store import Holding

log = structlog.get_logger(__name__)

SLOT_TTL_S = 30.0  # a replica that died without letting go frees its slot this long after its last renewal
MAX_SLOTS = 64


class NoFreeSlot(RuntimeError):
    pass


class SlotTaken(RuntimeError):
    pass


class ReplicaSlot:
    def __init__(self, client: redis.Redis, lei: str, service: str, holder: str) -> None:
        self.client = client
        self.lei = lei
        self.holder = holder
        self._prefix = f"dragon:{lei}:{service}:slots:"
        self._holding = Holding(client)
        self.number: int | None = None
        self.held_at = 0.0  # monotonic time of the last claim or renewal Redis answered

    @property
    def name(self) -> str:
        if self.number is None:
            raise RuntimeError("no slot claimed yet")
        return f"{self.lei}-{self.number}"

    def claim(self) -> str:
        """Our slot if we hold one already (a restarted container), else the lowest free one; its name."""
        keys = [self._key(n) for n in range(MAX_SLOTS)]
        holders = [h.decode() if h is not None else None for h in self.client.mget(keys)]
        ours = [n for n, holder in enumerate(holders) if holder == self.holder]
        free = [n for n, holder in enumerate(holders) if holder is None]
        for number in ours + free:
            if self._holding.hold(self._key(number), self.holder, SLOT_TTL_S):
                self.number, self.held_at = number, time.monotonic()
                log.info("replica_slot_claimed", slot=self.name, holder=self.holder, again=bool(ours) or None)
                return self.name
        raise NoFreeSlot(f"all {MAX_SLOTS} slots of {self._prefix}* are held")

    def renew(self) -> None:
        """Hold our slot another SLOT_TTL_S; SlotTaken if another replica holds it now (it expired
        while we could not renew it, and a replica that started meanwhile claimed it)."""
        if not self._holding.hold(self._key(self.number), self.holder, SLOT_TTL_S):
            raise SlotTaken(f"replica slot {self.name} was taken by another replica")
        self.held_at = time.monotonic()

    def lapsed(self) -> bool:
        """Whether our slot may have expired: Redis has not answered a renewal for SLOT_TTL_S, and a
        replica that started meanwhile may hold it (and our MQTT session) without our knowing."""
        return time.monotonic() - self.held_at > SLOT_TTL_S

    def release(self) -> None:
        """Free our slot for the replica that replaces us (only if it is still ours)."""
        if self.number is not None:
            self._holding.let_go(self._key(self.number), self.holder)

    def _key(self, number: int) -> str:
        return f"{self._prefix}{number}"
