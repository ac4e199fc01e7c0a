"""Which detector replica scores which host: live members in Redis, rendezvous hashing.

Every replica receives and stores every sample (a plain persistent subscription;
storing is idempotent), but only the replica that owns a host scores it, so the
model work is spread across replicas. A replica is a member while its heartbeat in
Redis is fresh; ownership follows rendezvous (highest-random-weight) hashing, so
when a replica joins or leaves only the hosts it gains or loses move.

While membership changes, two replicas may briefly score the same window: the
atomic fault-state update makes the second one ``stale``, so no event is doubled.

Why not MQTT v5 shared subscriptions: Mosquitto 2.0.11 keeps a persistent session
across a broker restart but *not* its shared subscriptions, so samples published
between the restart and the detector's re-subscription are lost (measured here:
a plain subscription received them, the shared one did not).

Heartbeats are stamped and read on Redis's clock (``TIME`` inside the scripts), not each
replica's: replicas whose clocks differ by more than the heartbeat's lifetime would each see the
other dead, or never gone, and both judge the same hosts or none.

A Redis that lost its data (restarted without its volume) lost the heartbeats too: until every
replica has beaten again, the first to beat would take itself for the only member and judge every
host, with no memory of the faults in force on the others' hosts; its normal verdicts, first on
a host with no state, would keep the host's owner from restoring its fault (``health.py``), which
then never ends with an event. So the members' set records when it began (on Redis's clock, by the
first beat or read that finds it gone); for a heartbeat's lifetime after that, a replica counts the
members it knew before as well, but for those that left on purpose since (a replica stopping, or
benched, leaves at once as ever). A replica that died with the data is then noticed as late as any
other. Not covered: a replica that itself started after the loss knows nobody from before, and
may still take its first second for every host (it takes running replicas on another machine than
Redis's for it to matter: on one node, a restart that lost Redis's data restarted them all).
"""

from __future__ import annotations

import hashlib
import time

import redis
import structlog

from dragon.store import unavailable_for_now

log = structlog.get_logger(__name__)

HEARTBEAT_TTL_S = 10.0
REFRESH_S = 1.0

# Every script: KEYS = the live members (sorted set, by last beat), when that set began, the
# members that left (sorted set, by when), the first and last swapped for a leave (_ENLIST);
# ARGV[1] = the heartbeat's lifetime. Times are Redis's.
# Each first dates a set that has no beginning yet (it began anew: Redis lost its data), so that
# settling always ends, even if nobody beats (every replica benched). The dating is tried, not
# required (pcall): a Redis refusing writes (maxmemory, read-only) still lets the members be read.
_DATED_NOW = """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1e6
local ttl = tonumber(ARGV[1])
redis.pcall('SET', KEYS[2], string.format('%.6f', now), 'NX')
"""
# Puts ARGV[2], this replica, in KEYS[1] and takes it out of KEYS[3], forgetting the entries of KEYS[1]
# older than a lifetime. A beat passes the live members first (a replica back after leaving is no
# longer among those that left), a leave those that left first: one move, either way.
_ENLIST = (
    _DATED_NOW
    + """
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
"""
)
# The live members, whether the set is settling, and those that left within a lifetime. A set not
# dated yet counts as settling; a Redis clock set back by more than a second ends settling rather
# than stretching it until the clock catches up.
_LIVE = (
    _DATED_NOW
    + """
local began = tonumber(redis.call('GET', KEYS[2]) or '')
local age = began and now - began or 0
local settling = age > -1 and age < ttl
return {
  redis.call('ZRANGEBYSCORE', KEYS[1], now - ttl, '+inf'),
  settling and 1 or 0,
  redis.call('ZRANGEBYSCORE', KEYS[3], now - ttl, '+inf'),
}
"""
)


def owner(host: str, members: list[str]) -> str:
    """The member with the highest hash weight for ``host``."""
    return max(members, key=lambda member: hashlib.sha1(f"{member}/{host}".encode()).digest())


class Membership:
    def __init__(self, client: redis.Redis, lei: str, instance: str) -> None:
        self.client = client
        self.instance = instance
        key = f"dragon:{lei}:detectors"
        self._keys = [key, f"{key}:began", f"{key}:left"]
        self._members: list[str] = [instance]
        self._refreshed = 0.0
        self._enlist = client.register_script(_ENLIST)
        self._live = client.register_script(_LIVE)

    def beat(self) -> None:
        """Say we are alive (call every second or so) and forget members that are not."""
        self._enlist(keys=self._keys, args=[HEARTBEAT_TTL_S, self.instance])

    def leave(self) -> None:
        """Hand our hosts over at once, settling or not."""
        live, began, left = self._keys
        self._enlist(keys=[left, began, live], args=[HEARTBEAT_TTL_S, self.instance])

    def members(self) -> list[str]:
        """Live members, refreshed at most every second; the last known list if Redis is down."""
        now = time.monotonic()
        if now - self._refreshed >= REFRESH_S:
            try:
                live, settling, left = self._live(keys=self._keys, args=[HEARTBEAT_TTL_S])
            except redis.RedisError as exc:
                if not unavailable_for_now(exc):
                    raise
                # Asked again in a second, not at once: a batch asks once per sample, and a Redis
                # that times out would cost each of them the client's timeout.
                self._refreshed = now
                return self._members
            # The set began anew (Redis lost its data): the members we knew may not have beaten yet.
            known = {*self._members} - {m.decode() for m in left} if settling else set()
            members = sorted({*(m.decode() for m in live), *known, self.instance})
            if members != self._members:
                log.info("detector_members", members=members, me=self.instance)
            self._members = members
            self._refreshed = now
        return self._members

    def owns(self, host: str) -> bool:
        return owner(host, self.members()) == self.instance
