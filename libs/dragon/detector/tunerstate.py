"""What the fine-tuner learns from and judges by, written through to Redis to outlive a restart.

A fine-tune waits for hundreds of clean windows (``finetune.enough_to_recalibrate``: 500 at the
default POT level), which at one sample every few seconds is most of an hour of normal
operation, and the confidence gate judges each host against a floor measured on its first
clean windows under the model. Kept only in memory, a restarted detector would start both
again, and measure the floor on a model that may already be stale. So the replica writes them
to Redis as it goes and loads them back when it starts
(:meth:`FineTuner.restore <dragon.detector.learning.FineTuner.restore>`):

- ``dragon:<lei>:finetune:windows``: a sorted set, one member per host window pair
  (W_t, W_{t+1}) in raw units and the window's own dtype, with its host, oldest first (scores
  count on from the set's newest, not from a replica's clock, so replicas whose clocks
  disagree still trim the oldest);
- ``dragon:<lei>:finetune:steps``: the same for LEI steps, the model's inputs only (both sets
  expire ``DRAGON_FINETUNE_KEEP_FOR`` after their last write);
- ``dragon:<lei>:finetune:floors``: a hash, host -> msgpack ``[model_id, how_measured, floor]``.

A member of the sorted sets is the msgpack of the host and arrays themselves, so a window kept
twice (a redelivery, or two replicas keeping the same LEI step) stays one member in its first
place, while equal windows of two hosts are two. (Equal windows of one idle host are one too:
a host whose metrics do not move adds nothing to learn.) Each write trims its set to the newest
``DRAGON_FINETUNE_WINDOWS`` host windows of the replica writing (for steps: that many divided
by the hosts of the step just kept), so replicas of an LEI should share that setting. Every
replica of the LEI writes to the same sets, so a replica that restarts loads the clean windows
of every host of the LEI, not only of those it scored before. A floor counts only under the
model it was measured with, by a gate of the same quantile and reference length
(``ConfidenceGate.how_measured``), and the first one stored for a host under a model stays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import msgpack
import numpy as np
import redis
import structlog

from dragon.detector.lei import LeiStep

log = structlog.get_logger(__name__)

HostPair = tuple[np.ndarray, np.ndarray]  # (W_t, W_{t+1}) of one host, (k, n) each
T = TypeVar("T")


# Add members (ARGV[3..]) newest last, scored on from the set's own newest score rather than
# any replica's clock; a member already there keeps its place (NX). Then keep the newest ARGV[1],
# and let the whole set expire ARGV[2] ms after this write (0: never).
_KEEP = """
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2]
local base = newest and tonumber(newest) or 0
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], 'NX', base + i - 2, ARGV[i])
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[1]) + 1))
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('ZCARD', KEYS[1])
"""


class KeptWindows:
    """The clean windows of an LEI, newest ``capacity`` host windows, gone ``keep_for_s`` after the last write.

    While clean windows keep coming, the sets hold the newest ``capacity``; only when none has
    come for ``keep_for_s`` (every detector of the LEI down, or no clean window: for LEI steps,
    one host in a fault is enough) is a set forgotten, so a detector back after a long outage does
    not learn from the operation of days ago.
    """

    def __init__(self, client: redis.Redis, lei: str, capacity: int, keep_for_s: float = 0.0) -> None:
        self._client = client
        self._windows_key = f"dragon:{lei}:finetune:windows"
        self._steps_key = f"dragon:{lei}:finetune:steps"
        self._script = client.register_script(_KEEP)
        self.capacity = capacity
        self._keep_for_ms = round(keep_for_s * 1000)  # 0: kept until trimmed

    def keep_pairs(self, hosts: Sequence[str], pairs: Sequence[HostPair]) -> None:
        """Add the pairs of ``hosts`` (one each), newest last, and drop the oldest beyond the capacity."""
        if pairs:
            members = [_pack_pair(host, pair) for host, pair in zip(hosts, pairs, strict=True)]
            self._keep(self._windows_key, members, self.capacity)

    def keep_steps(self, steps: Sequence[LeiStep]) -> None:
        """Add LEI steps, newest last; the set keeps as many steps as fit the capacity in host windows."""
        if steps:
            most = max(1, self.capacity // len(steps[-1].hosts))
            self._keep(self._steps_key, [_pack_step(step) for step in steps], most)

    def pairs(self) -> list[HostPair]:
        """Every kept pair, oldest first; unreadable members are removed, with one log line."""
        return self._readable(self._windows_key, _unpack_pair)

    def steps(self) -> list[LeiStep]:
        """Every kept LEI step, oldest first, with nothing to judge (``judged`` is empty)."""
        return self._readable(self._steps_key, _unpack_step)

    def _readable(self, key: str, unpack: Callable[[bytes], T]) -> list[T]:
        """Decode every member of ``key``; drop those that cannot be (another format, corrupt).

        They could never be learnt from, and left in place they would be reported again at
        every restart until newer windows pushed them out.
        """
        kept: list[T] = []
        unreadable: list[bytes] = []
        error = ""
        for member in self._client.zrange(key, 0, -1):
            try:
                kept.append(unpack(member))
            except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
                unreadable.append(member)
                error = error or str(exc)
        if unreadable:
            self._client.zrem(key, *unreadable)
            log.warning("kept_windows_unreadable_removed", key=key, count=len(unreadable), first_error=error)
        return kept

    def _keep(self, key: str, members: list[bytes], most: int) -> None:
        self._script(keys=[key], args=[most, self._keep_for_ms, *members])


# Raw windows are stored in their own dtype, so a restored window equals the kept one bit for bit.
_DTYPES = {np.dtype(np.float32).str, np.dtype(np.float64).str}


def _array(a: np.ndarray) -> list:
    a = np.ascontiguousarray(a)
    if a.dtype.str not in _DTYPES:
        a = a.astype(np.float64)
    return [list(a.shape), a.dtype.str, a.tobytes()]


def _from(packed: list) -> np.ndarray:
    shape, dtype, data = packed
    if dtype not in _DTYPES:
        raise ValueError(f"a kept window of dtype {dtype!r}")
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy()


def _pack_pair(host: str, pair: HostPair) -> bytes:
    # The host is part of the member: two hosts with equal windows are two windows.
    prev, nxt = pair
    return msgpack.packb([host, _array(prev), _array(nxt)])


def _unpack_pair(member: bytes) -> HostPair:
    _host, prev, nxt = msgpack.unpackb(member)
    pair = _from(prev), _from(nxt)
    if pair[0].shape != pair[1].shape or pair[0].ndim != 2:
        raise ValueError(f"a kept pair must be two (k, n) windows, got {pair[0].shape} and {pair[1].shape}")
    return pair


def _pack_step(step: LeiStep) -> bytes:
    return msgpack.packb(
        {
            "hosts": list(step.hosts),
            "broker": step.broker,
            "prev": _array(step.prev),
            "next": _array(step.next),
            "tasks": list(step.tasks),
            "task_prev": _array(step.task_prev),
            "task_next": _array(step.task_next),
            "schedule": _array(step.schedule),
        }
    )


def _unpack_step(member: bytes) -> LeiStep:
    d = msgpack.unpackb(member)
    step = LeiStep(
        hosts=tuple(d["hosts"]),
        broker=int(d["broker"]),
        prev=_from(d["prev"]),
        next=_from(d["next"]),
        tasks=tuple(d["tasks"]),
        task_prev=_from(d["task_prev"]),
        task_next=_from(d["task_next"]),
        schedule=_from(d["schedule"]),
        judged=(),
    )
    m, p = len(step.hosts), len(step.tasks)
    k = step.next.shape[1] if step.next.ndim == 3 else -1
    if (
        not 0 <= step.broker < m
        or step.prev.shape != step.next.shape
        or step.next.ndim != 3
        or step.next.shape[0] != m
        or step.task_prev.shape != (p, k)
        or step.task_next.shape != (p, k)
        or step.schedule.shape != (p, m)
    ):
        raise ValueError(f"a kept step of {m} hosts and {p} tasks has windows {step.prev.shape}")
    return step


# Tries of GateFloors.settle when the floors hash changes between its read and its write. Each
# conflict means another replica's write went through, so N replicas settling at once need at
# most N - 1 retries; more than that is a replica writing in a loop, not to be chased.
SETTLE_ATTEMPTS = 5


class GateFloors:
    """Each host's confidence floor, with the model and gate settings it was measured under (``ConfidenceGate``)."""

    def __init__(self, client: redis.Redis, lei: str) -> None:
        self._client = client
        self._key = f"dragon:{lei}:finetune:floors"

    def settle(self, model_id: str, how_measured: str, floors: dict[str, float]) -> dict[str, float]:
        """Store each floor unless one measured the same way under the same model is stored; the floors in force.

        The first floor of a host under a model wins: a replica that takes the host over later
        measures its reference on a model that may have gone stale since, and adopts the stored one.
        Read and write are one transaction (WATCH, tried again if another replica wrote in
        between), so two replicas settling one host at once end up with the same floor. After
        ``SETTLE_ATTEMPTS`` conflicts in a row it gives up with ``redis.WatchError``: the caller
        keeps the floors and offers them again with its next batch, instead of spinning here.
        """
        if not floors:
            return {}
        for _ in range(SETTLE_ATTEMPTS):
            with self._client.pipeline() as pipe:
                try:
                    pipe.watch(self._key)
                    in_force = self._first_floors_win(pipe, model_id, how_measured, floors)
                    pipe.execute()
                    return in_force
                except redis.WatchError:
                    continue
        # redis-py also reports a connection lost while watching as a WatchError.
        raise redis.WatchError(
            f"{self._key}: the floors changed, or the connection dropped, during each of {SETTLE_ATTEMPTS} attempts"
        )

    def _first_floors_win(
        self, pipe: redis.client.Pipeline, model_id: str, how_measured: str, floors: dict[str, float]
    ) -> dict[str, float]:
        """Read the stored floors (watched), queue the new ones; the floors in force if the write goes through."""
        hosts = list(floors)
        stored = dict(zip(hosts, pipe.hmget(self._key, hosts), strict=True))
        in_force, new = {}, {}
        for host, floor in floors.items():
            earlier = _floor_of(host, stored[host], model_id, how_measured)
            in_force[host] = floor if earlier is None else earlier
            if earlier is None:
                new[host] = msgpack.packb([model_id, how_measured, floor])
        pipe.multi()
        if new:
            pipe.hset(self._key, mapping=new)
        return in_force

    def load(self, model_id: str, how_measured: str) -> dict[str, float]:
        """The floors measured under ``model_id`` by a gate measuring ``how_measured``; others are left out."""
        floors = {}
        for field, data in self._client.hgetall(self._key).items():
            host = field.decode(errors="replace")
            floor = _floor_of(host, data, model_id, how_measured)
            if floor is not None:
                floors[host] = floor
        return floors


def _floor_of(host: str, data: bytes | None, model_id: str, how_measured: str) -> float | None:
    """A stored floor if it was measured under ``model_id`` by a gate measuring ``how_measured``."""
    if data is None:
        return None
    try:
        measured_model, measured_how, floor = msgpack.unpackb(data)
        return float(floor) if (measured_model, measured_how) == (model_id, how_measured) else None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        log.warning("gate_floor_unreadable_skipped", host=host, error=str(exc))
        return None


@dataclass(frozen=True)
class TunerState:
    """A replica's fine-tuning state in Redis: the clean windows kept and the gate's floors."""

    kept: KeptWindows
    floors: GateFloors

    @classmethod
    def in_redis(cls, client: redis.Redis, lei: str, capacity: int, keep_for_s: float = 0.0) -> TunerState:
        return cls(KeptWindows(client, lei, capacity, keep_for_s), GateFloors(client, lei))
