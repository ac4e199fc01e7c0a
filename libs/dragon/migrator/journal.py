"""The migration journal in Redis: one record per move, written before each step is taken.

A move is a hash ``dragon:<lei>:migration:<id>``; the ids of moves not finished yet are in the
set ``dragon:<lei>:migrations:open``. ``step`` names the step the mover was about to take (or
the end it reached), so a migrator killed at any point finds, on restart, every move in flight
and how far it got; :mod:`dragon.migrator.moves` then completes or rolls it back.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from enum import Enum

import redis


class Step(str, Enum):
    PLANNED = "planned"
    TRANSFERRING = "transferring"  # to another machine: its image and volume data are copied there
    CHECKPOINTING = "checkpointing"  # CRIU: the source's memory checkpointed (it stops), its files committed
    CREATING = "creating"  # the target container is being created
    STARTING = "starting"  # ... started, and awaited until running (healthy, if it has a healthcheck)
    REMOVING_SOURCE = "removing_source"  # the target runs: the source is being stopped and removed
    RENAMING = "renaming"  # the target takes the task's name
    DONE = "done"
    ROLLED_BACK = "rolled_back"  # the target was removed; the task runs on its source as before
    FAILED = "failed"  # the move could not start (e.g. the container does not exist)


FINAL = {Step.DONE, Step.ROLLED_BACK, Step.FAILED}
# A finished move's record is kept this long (to answer its command again, and to look at), then
# Redis drops it: one record per move would otherwise grow for ever. A command older than
# DRAGON_MIGRATION_MAX_AGE is refused as stale anyway, and that age must stay well below this.
FINISHED_KEPT_S = 86_400

# A new move's record. KEYS: the move's hash, the set of open moves; ARGV: the move's id, how
# long a finished one is kept (0: it is open, kept until it ends), then field, value, ...
CREATE = """
if redis.call('HEXISTS', KEYS[1], 'id') == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
if ARGV[2] == '0' then
  redis.call('SADD', KEYS[2], ARGV[1])
else
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 1
"""


@dataclass(frozen=True)
class Move:
    """One task's move: the container ``task`` (id) named ``name``, from ``source_host`` to ``target_host``."""

    id: str
    task: str
    name: str
    source_host: str
    target_host: str
    target_lei: str = ""
    mode: str = "restart"
    mode_reason: str = ""
    step: Step = Step.PLANNED
    target_id: str = ""
    error: str = ""
    updated: float = 0.0
    timings: tuple[tuple[str, float], ...] = ()  # (step, seconds) of each step taken so far
    task_id: str = ""  # the task as samples and the planner name it (``dragon.task.id``, else ``name``)

    @property
    def has_source(self) -> bool:
        """False for a target the sweep found alone (the journal had lost its move, its source was
        gone): journalled as its own source, it is the task's only container, never removed as one."""
        return self.task != self.target_id


class Journal:
    """Moves of one LEI in Redis."""

    def __init__(self, client: redis.Redis, lei: str) -> None:
        self.redis = client
        self.lei = lei
        self.prefix = f"dragon:{lei}:migration:"
        self.open_key = f"dragon:{lei}:migrations:open"
        self._create = client.register_script(CREATE)

    def begin(self, move: Move) -> Move | None:
        """Record a new move; None if its id is known already (a duplicate command is a no-op).

        One script, so a record is never half written: Redis failing between a first and a
        second write would leave a record without its fields, refused as known but unreadable.
        """
        return self._new(replace(move, step=Step.PLANNED, updated=time.time()), kept_s=0)

    def fail(self, move: Move, error: str) -> Move | None:
        """Record a move refused before it began as failed; None if its id is known already.

        One write, and never among the open moves: begun first and then failed, a Redis failing
        in between would leave it open, and recovery would roll back a move that never began,
        starting a stopped duplicate, or removing the target machine's volumes of the same name.
        """
        return self._new(replace(move, step=Step.FAILED, error=error, updated=time.time()), kept_s=FINISHED_KEPT_S)

    def _new(self, move: Move, kept_s: int) -> Move | None:
        fields = [item for pair in self._fields(move).items() for item in pair]
        if not self._create(keys=[self.prefix + move.id, self.open_key], args=[move.id, kept_s, *fields]):
            return None
        return move

    def record(self, move: Move, step: Step, **changes: str) -> Move:
        """Write the move's next step (and any changed fields) before it is taken."""
        recorded = replace(move, step=step, updated=time.time(), **changes)
        self._write(recorded)
        return recorded

    def get(self, move_id: str) -> Move | None:
        fields = self.redis.hgetall(self.prefix + move_id)
        if not fields:
            return None
        data = {key.decode(): value.decode() for key, value in fields.items()}
        if "id" not in data:
            return None  # a record half written by an older migrator: never begun
        return Move(
            id=data["id"],
            task=data["task"],
            name=data["name"],
            source_host=data["source_host"],
            target_host=data["target_host"],
            target_lei=data.get("target_lei", ""),
            mode=data.get("mode", "restart"),
            mode_reason=data.get("mode_reason", ""),
            step=Step(data["step"]),
            target_id=data.get("target_id", ""),
            error=data.get("error", ""),
            updated=float(data.get("updated", 0.0)),
            timings=tuple((step, float(seconds)) for step, seconds in json.loads(data.get("timings", "[]"))),
            task_id=data.get("task_id", ""),
        )

    def moved_at(self, task_id: str) -> float | None:
        """When the task's last move was done (kept FINISHED_KEPT_S), None if none is known."""
        value = self.redis.get(self._moved_key(task_id))
        return float(value) if value is not None else None

    def _moved_key(self, task_id: str) -> str:
        return f"dragon:{self.lei}:migrations:moved:{task_id}"

    def open_moves(self) -> list[Move]:
        """Every move not finished, oldest first."""
        moves = [self.get(member.decode()) for member in self.redis.smembers(self.open_key)]
        return sorted((m for m in moves if m is not None), key=lambda m: m.updated)

    def _fields(self, move: Move) -> dict[str, str]:
        fields = {key: (value.value if isinstance(value, Step) else str(value)) for key, value in asdict(move).items()}
        fields["timings"] = json.dumps(move.timings)
        return fields

    def _write(self, move: Move) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.prefix + move.id, mapping=self._fields(move))
        if move.step in FINAL:
            pipe.srem(self.open_key, move.id)
            pipe.expire(self.prefix + move.id, FINISHED_KEPT_S)
            if move.step == Step.DONE and move.task_id:
                pipe.set(self._moved_key(move.task_id), repr(move.updated), ex=FINISHED_KEPT_S)
        else:
            pipe.sadd(self.open_key, move.id)
        pipe.execute()
