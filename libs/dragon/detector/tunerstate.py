"""What the fine-tuner learns from and judges by, written through to Redis to outlive a restart.

A fine-tune waits for hundreds of clean windows (``finetune.enough_to_recalibrate``: 500 at the
default POT level), which at one sample every few seconds is most of an hour of normal
operation, and the confidence gate judges each host against a floor measured on its first
clean windows under the model. Kept only in memory, a restarted detector would start both
again, and measure the floor on a model that may already be stale. So the replica writes them
to Redis as it goes and loads them back when it starts
(:meth:`FineTuner.restore <dragon.detector.learning.FineTuner.restore>`):

- ``dragon:<lei>:finetune:windows``: a sorted set, one member per host window pair
  (W_t, W_{t+1}) in raw units, oldest first (score: when it was kept);
- ``dragon:<lei>:finetune:steps``: the same for LEI steps, the model's inputs only;
- ``dragon:<lei>:finetune:floors``: a hash, host -> msgpack ``[model_id, how_measured, floor]``.

A member of the sorted sets is the msgpack of the arrays themselves, so a window kept twice (a
redelivery, or two replicas keeping the same LEI step) stays one member. Each set is trimmed to
the newest ``DRAGON_FINETUNE_WINDOWS`` host windows (for steps: that many divided by the hosts
of the step just kept). Every replica of the LEI writes to the same sets, so a replica that
restarts loads the clean windows of every host of the LEI, not only of those it scored before.
A floor counts only under the model it was measured with, by a gate of the same quantile and
reference length (``ConfidenceGate.how_measured``).
"""

from __future__ import annotations

import time
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


class KeptWindows:
    def __init__(self, client: redis.Redis, lei: str, capacity: int) -> None:
        self._client = client
        self._windows_key = f"dragon:{lei}:finetune:windows"
        self._steps_key = f"dragon:{lei}:finetune:steps"
        self.capacity = capacity

    def keep_pairs(self, pairs: Sequence[HostPair]) -> None:
        """Add host window pairs, newest last, and drop the oldest beyond the capacity."""
        if pairs:
            self._keep(self._windows_key, [_pack_pair(pair) for pair in pairs], self.capacity)

    def keep_steps(self, steps: Sequence[LeiStep]) -> None:
        """Add LEI steps, newest last; the set keeps as many steps as fit the capacity in host windows."""
        if steps:
            most = max(1, self.capacity // len(steps[-1].hosts))
            self._keep(self._steps_key, [_pack_step(step) for step in steps], most)

    def pairs(self) -> list[HostPair]:
        """Every kept pair, oldest first; unreadable members are skipped with a log line."""
        return _readable(self._client.zrange(self._windows_key, 0, -1), _unpack_pair, "pair")

    def steps(self) -> list[LeiStep]:
        """Every kept LEI step, oldest first, with nothing to judge (``judged`` is empty)."""
        return _readable(self._client.zrange(self._steps_key, 0, -1), _unpack_step, "step")

    def _keep(self, key: str, members: list[bytes], most: int) -> None:
        # One score per call, a little apart per member, so the order within a batch survives.
        now = time.time()
        scores = {member: now + i * 1e-6 for i, member in enumerate(members)}
        pipe = self._client.pipeline(transaction=True)
        pipe.zadd(key, scores)
        pipe.zremrangebyrank(key, 0, -(most + 1))
        pipe.execute()


def _array(a: np.ndarray) -> list:
    a = np.ascontiguousarray(a, dtype=np.float64)
    return [list(a.shape), a.tobytes()]


def _from(packed: list) -> np.ndarray:
    shape, data = packed
    return np.frombuffer(data, dtype=np.float64).reshape(shape).copy()


def _pack_pair(pair: HostPair) -> bytes:
    prev, nxt = pair
    return msgpack.packb([_array(prev), _array(nxt)])


def _unpack_pair(member: bytes) -> HostPair:
    prev, nxt = msgpack.unpackb(member)
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
    if step.prev.shape != step.next.shape or step.prev.shape[0] != m or step.schedule.shape != (p, m):
        raise ValueError(f"a kept step of {m} hosts and {p} tasks has windows {step.prev.shape}")
    return step


def _readable(members: list[bytes], unpack: Callable[[bytes], T], what: str) -> list[T]:
    kept: list[T] = []
    for member in members:
        try:
            kept.append(unpack(member))
        except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
            log.warning("kept_window_unreadable_skipped", kind=what, error=str(exc))
    return kept


class GateFloors:
    """Each host's confidence floor, with the model and gate settings it was measured under (``ConfidenceGate``)."""

    def __init__(self, client: redis.Redis, lei: str) -> None:
        self._client = client
        self._key = f"dragon:{lei}:finetune:floors"

    def save(self, model_id: str, how_measured: str, floors: dict[str, float]) -> None:
        if floors:
            mapping = {host: msgpack.packb([model_id, how_measured, floor]) for host, floor in floors.items()}
            self._client.hset(self._key, mapping=mapping)

    def load(self, model_id: str, how_measured: str) -> dict[str, float]:
        """The floors measured under ``model_id`` by a gate measuring ``how_measured``; others are left out."""
        floors = {}
        for host, data in self._client.hgetall(self._key).items():
            try:
                measured_model, measured_how, floor = msgpack.unpackb(data)
                if (measured_model, measured_how) == (model_id, how_measured):
                    floors[host.decode()] = float(floor)
            except (ValueError, TypeError, msgpack.UnpackException) as exc:
                log.warning("gate_floor_unreadable_skipped", host=host.decode(errors="replace"), error=str(exc))
        return floors


@dataclass(frozen=True)
class TunerState:
    """A replica's fine-tuning state in Redis: the clean windows kept and the gate's floors."""

    kept: KeptWindows
    floors: GateFloors

    @classmethod
    def in_redis(cls, client: redis.Redis, lei: str, capacity: int) -> TunerState:
        return cls(KeptWindows(client, lei, capacity), GateFloors(client, lei))
