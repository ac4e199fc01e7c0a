"""Redis state shared by every replica of a service: sliding windows and scaler bounds.

Samples of a host live in one sorted set scored by their timestamp, so
appending is idempotent (a redelivered QoS 1 duplicate is the same member) and
replicas that append out of order still read windows in time order. Each set is
capped at ``history`` samples, which also serves as the record that
``dragon-detector train --from-redis`` learns from.

Windows follow eq. (1) of the DRAGON paper: the window at t is the last k
samples ``x_{t-k+1..t}``, with replication padding (the first sample repeated)
while fewer than k exist.

A member is ``msgpack([ts, seq, *vector, tasks])``: ``tasks`` lists ``[task id, cpu share]`` of
the tasks the host ran in that interval, which is where the detector takes the schedule S_t and
the task windows from. A sample without tasks (and every member written before tasks were
stored) ends with the vector.
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import msgpack
import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from dragon.settings import RedisSettings

log = structlog.get_logger(__name__)

T = TypeVar("T")


def connect(settings: RedisSettings) -> redis.Redis:
    """A client that fails fast: our callers retry on their own terms.

    redis-py 8 retries ten times with backoff by default, which turned a 1 s
    timeout into 15 s against a paused server (see shared notes); we disable it.
    """
    return redis.Redis.from_url(
        settings.url,
        password=settings.password or None,
        socket_timeout=settings.timeout_s,
        socket_connect_timeout=settings.timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=10,
    )


# KEYS: the key; ARGV: holder, lifetime in ms. 1: held by the holder now; 0: another holds it.
_HOLD = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# KEYS: the key; ARGV: holder. Deleted only if the holder still holds it.
_LET_GO = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Holding:
    """Keys held by one holder at a time for a while (a lock, a replica's slot): taken if free or
    already the holder's, renewed, and let go only by their holder, each in one script, so a key
    that expires between a read and a write is never taken from the replica that took it since."""

    def __init__(self, client: redis.Redis) -> None:
        self._hold = client.register_script(_HOLD)
        self._let_go = client.register_script(_LET_GO)

    def hold(self, key: str, holder: str, seconds: float) -> bool:
        """Take or renew ``key`` for ``seconds``; False if another holds it."""
        return bool(self._hold(keys=[key], args=[holder, int(seconds * 1000)]))

    def let_go(self, key: str, holder: str) -> None:
        """Free ``key`` if ``holder`` still holds it."""
        self._let_go(keys=[key], args=[holder])


def retry_until(action: Callable[[], T], stop: threading.Event, what: str, max_delay: float = 5.0) -> T:
    """Run ``action`` until it succeeds or ``stop`` is set (then raise ``StopRequested``).

    Used for writes that must not be lost while Redis restarts.
    """
    delay = 0.1
    failures = 0
    while True:
        try:
            return action()
        except redis.RedisError as exc:
            if not unavailable_for_now(exc):
                raise
            error = exc
        failures += 1
        if failures == 1 or failures % 20 == 0:
            event = (
                "redis_refusing_writes_retrying"
                if isinstance(error, redis.ResponseError)
                else "redis_unavailable_retrying"
            )
            log.warning(event, what=what, error=str(error), failures=failures)
        if stop.wait(delay):
            raise StopRequested(what)
        delay = min(max_delay, delay * 2)


def redis_for_now(action: Callable[[], object]) -> bool:
    """Run ``action``; False if Redis was away or refused writes for now (the next beat tries again)."""
    try:
        action()
    except redis.RedisError as exc:
        if not unavailable_for_now(exc):
            raise
        return False
    return True


def unavailable_for_now(exc: redis.RedisError) -> bool:
    """Redis is away (restarting, loading, out of reach) or refuses writes for now: what a caller
    retries, or skips until the next beat, rather than fail on."""
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)):
        return True
    return isinstance(exc, redis.ResponseError) and refuses_writes_for_now(exc)


def refuses_writes_for_now(exc: redis.ResponseError) -> bool:
    """Redis answers but will not write until an operator or its own recovery frees it: out of
    memory (``maxmemory``), read-only, or unable to persist (``MISCONF``: a full disk). Dropping
    the write would lose what it carries, so it is retried like an outage."""
    refused = (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)
    # Anywhere in the text: redis-py prefixes a pipeline's errors with the command that failed.
    return isinstance(exc, refused) or "MISCONF" in str(exc)


class StopRequested(Exception):
    """The service is stopping while waiting for Redis."""


Tasks = Mapping[str, float]  # task id -> cpu share of the host
# A sample to store: (host, ts, seq, vector) or (host, ts, seq, vector, tasks).
Row = tuple[str, float, int, Sequence[float]] | tuple[str, float, int, Sequence[float], Tasks]


@dataclass(frozen=True)
class StoredSample:
    """One host sample as stored: its time, metric vector and the tasks it ran (id -> cpu share)."""

    ts: float
    vector: list[float]
    tasks: Tasks = field(default_factory=dict)


class WindowStore:
    def __init__(self, client: redis.Redis, lei: str, history: int) -> None:
        if history < 2:
            raise ValueError("history must keep at least two samples")
        self.client = client
        self.lei = lei
        self.history = history

    def _key(self, host: str) -> str:
        return f"dragon:{self.lei}:samples:{host}"

    @property
    def _hosts_key(self) -> str:
        return f"dragon:{self.lei}:hosts"

    @property
    def _bounds_key(self) -> str:
        return f"dragon:{self.lei}:scaler"

    # --- samples ----------------------------------------------------------------
    def append_many(self, samples: Sequence[Row]) -> None:
        """Store ``(host, ts, seq, vector)`` or ``(host, ts, seq, vector, tasks)`` samples in one round trip.

        ``seq`` is the collector's tick number: kept with the sample so that a gap
        (a lost sample) can be seen, see :meth:`sequence_numbers`. ``tasks`` maps the id of
        each task the host ran to its cpu share; the same sample always packs to the same
        member (tasks sorted by id), so a redelivery stays idempotent.
        """
        pipe = self.client.pipeline(transaction=True)
        for host, ts, seq, vector, *rest in samples:
            tasks = sorted([str(task), float(cpu)] for task, cpu in (rest[0] if rest else {}).items())
            # A sample without tasks packs as before tasks were stored, so old members stay equal.
            member = msgpack.packb([float(ts), int(seq), *map(float, vector), *([tasks] if tasks else [])])
            pipe.zadd(self._key(host), {member: float(ts)})
            # Keep the newest ``history`` members: remove ranks 0 .. -(history+1).
            pipe.zremrangebyrank(self._key(host), 0, -(self.history + 1))
            pipe.sadd(self._hosts_key, host)
        pipe.execute()

    def append(self, host: str, ts: float, seq: int, vector: Sequence[float]) -> None:
        self.append_many([(host, ts, seq, vector)])

    def recent(self, host: str, count: int) -> list[tuple[float, list[float]]]:
        """The newest ``count`` samples of ``host`` as (ts, vector), oldest first."""
        members = self.client.zrange(self._key(host), -count, -1)
        return [_unpack(member) for member in members]

    def rows_until(self, until: Mapping[str, float], count: int) -> dict[str, list[tuple[float, list[float]]]]:
        """Per host, its newest ``count`` samples taken at or before its time in ``until``, as
        (ts, vector), oldest first. Up to a time, not the newest: another replica may have stored
        newer samples than the ones being judged."""
        return {host: [(s.ts, s.vector) for s in samples] for host, samples in self._until(until, count).items()}

    def samples_until(self, until_ts: float, count: int) -> dict[str, list[StoredSample]]:
        """Every host's newest ``count`` samples taken at or before ``until_ts``, with their tasks, oldest first.

        Two round trips whatever the number of hosts. Bounded by count, not by time, so a
        backlog of samples (a flood, a replay) costs what the batch needs, not all it spans.
        """
        return self._until(dict.fromkeys(self.hosts(), until_ts), count)

    def _until(self, until: Mapping[str, float], count: int) -> dict[str, list[StoredSample]]:
        count = min(count, self.history)  # no host keeps more
        pipe = self.client.pipeline(transaction=False)
        for host, until_ts in until.items():
            pipe.zrevrangebyscore(self._key(host), until_ts, "-inf", start=0, num=count)
        return {
            host: [_stored(m) for m in reversed(members)] for host, members in zip(until, pipe.execute(), strict=True)
        }

    def stamps_between(
        self, spans: Mapping[str, tuple[float, float]], count: int
    ) -> dict[str, tuple[list[float], int]]:
        """Per host, the times of its newest ``count`` samples strictly inside (after, before), oldest
        first, each once, and how many older ones it has there that were left out. One round trip."""
        pipe = self.client.pipeline(transaction=False)
        for host, (after, before) in spans.items():
            pipe.zrevrangebyscore(self._key(host), f"({before!r}", f"({after!r}", start=0, num=count, withscores=True)
            pipe.zcount(self._key(host), f"({after!r}", f"({before!r}")
        replies = iter(pipe.execute())
        found = {}
        for host in spans:
            newest, total = next(replies), int(next(replies))
            found[host] = (sorted({ts for _, ts in newest}), total - len(newest))
        return found

    def newest_stamps(self, hosts: Sequence[str], count: int) -> dict[str, list[float]]:
        """Per host, the times of its newest ``count`` samples, oldest first. One round trip."""
        pipe = self.client.pipeline(transaction=False)
        for host in hosts:
            pipe.zrange(self._key(host), -count, -1, withscores=True)
        return {host: [ts for _, ts in found] for host, found in zip(hosts, pipe.execute(), strict=True)}

    def count(self, host: str) -> int:
        return int(self.client.zcard(self._key(host)))

    def hosts(self) -> list[str]:
        return sorted(h.decode() for h in self.client.smembers(self._hosts_key))

    def all_samples(self, host: str) -> list[tuple[float, list[float]]]:
        return [_unpack(m) for m in self.client.zrange(self._key(host), 0, -1)]

    def all_stored(self, host: str) -> list[StoredSample]:
        """Every stored sample of ``host`` with its tasks, oldest first."""
        return [_stored(m) for m in self.client.zrange(self._key(host), 0, -1)]

    def sequence_numbers(self, host: str, since_ts: float = 0.0) -> list[int]:
        """Collector tick numbers of the stored samples since ``since_ts``, in time order."""
        members = self.client.zrangebyscore(self._key(host), since_ts, "+inf")
        return [int(msgpack.unpackb(m)[1]) for m in members]

    # --- scaler bounds -------------------------------------------------------------
    def save_bounds(self, features: Sequence[str], lo: Sequence[float], hi: Sequence[float], version: str) -> None:
        """Publish the min-max bounds every replica must scale with."""
        self.client.hset(
            self._bounds_key,
            mapping={
                "features": msgpack.packb(list(features)),
                "lo": msgpack.packb([float(v) for v in lo]),
                "hi": msgpack.packb([float(v) for v in hi]),
                "version": version,
                "updated_at": time.time(),
            },
        )

    def load_bounds(self) -> dict | None:
        raw = self.client.hgetall(self._bounds_key)
        if not raw:
            return None
        return {
            "features": tuple(msgpack.unpackb(raw[b"features"])),
            "lo": msgpack.unpackb(raw[b"lo"]),
            "hi": msgpack.unpackb(raw[b"hi"]),
            "version": raw[b"version"].decode(),
        }


def _stored(member: bytes) -> StoredSample:
    ts, _seq, *vector = msgpack.unpackb(member)
    tasks = vector.pop() if vector and isinstance(vector[-1], list) else []
    return StoredSample(ts, vector, {task: cpu for task, cpu in tasks})


def _unpack(member: bytes) -> tuple[float, list[float]]:
    sample = _stored(member)
    return sample.ts, sample.vector


def rows_until(history: Sequence[tuple[float, list[float]]], ts: float) -> list[list[float]] | None:
    """The rows of ``history`` ((ts, row), oldest first) up to the one taken at ``ts``; None if absent."""
    for index in range(len(history) - 1, -1, -1):
        if history[index][0] == ts:
            return [row for _, row in history[: index + 1]]
    return None


def sampling_interval(stamps: Sequence[float], recent: int | None = None) -> float | None:
    """A host's sampling interval read from its sample times (oldest first): the median gap between
    them, so a lost sample does not double it, of the ``recent`` newest gaps if given. None when
    fewer than two distinct times."""
    gaps = [b - a for a, b in itertools.pairwise(stamps) if b > a]
    if recent is not None:
        gaps = gaps[-recent:]
    return statistics.median(gaps) if gaps else None


def padded_window(samples: Sequence[Sequence[float]], k: int) -> list[list[float]]:
    """The last ``k`` rows of ``samples``, replication-padded at the front (eq. 1)."""
    if not samples:
        raise ValueError("a window needs at least one sample")
    rows = [list(row) for row in samples[-k:]]
    return [rows[0]] * (k - len(rows)) + rows
