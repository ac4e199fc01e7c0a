"""Where the LEI's current model lives, so every replica serves the same one.

The checkpoint bytes and their id are kept in Redis (replicas that join load the
current model) and in the model volume (a Redis that lost its data does not
lose the model). Learning or fine-tuning a model on-line is guarded by a Redis
lock so that only one replica trains at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis
import structlog

from dragon.detector.checkpoint import Checkpoint, CheckpointError
from dragon.store import Holding

log = structlog.get_logger(__name__)

LOCK_TTL_S = 900


@dataclass(frozen=True)
class StoredModel:
    """Which model is the LEI's current one: its id, and the generation of the DRAGON that wrote it."""

    model_id: str
    # checkpoint.GENERATION, kept beside the bytes so that a replica that cannot load them (a
    # newer torch's, say) still knows; 0 if published without it (before the key, or by code that
    # does not write it, whose id the key then does not name).
    generation: int
    # Checkpoint.revision, kept beside the id the same way; None where Redis does not know it
    # (published by an older DRAGON, whose id the key then does not name).
    revision: str | None = None
    # How many times this DRAGON's code has published a model of the LEI (any model): a model
    # published again, with a revision key that already read the same, is told from the last one.
    publications: int = 0

    def names(self, checkpoint: Checkpoint) -> bool:
        """Whether this is ``checkpoint``: its id, and its revision where Redis knows one. A model
        recalibrated with the same weights keeps its id but is another model to serve."""
        return self.model_id == checkpoint.model_id and self.revision in (None, checkpoint.revision)


class ModelStore:
    def __init__(self, client: redis.Redis, lei: str, model_dir: str) -> None:
        self.client = client
        self._key = f"dragon:{lei}:model"
        self._id_key = f"dragon:{lei}:model:id"
        self._generation_key = f"dragon:{lei}:model:generation"
        self._revision_key = f"dragon:{lei}:model:revision"
        self._publications_key = f"dragon:{lei}:model:publications"
        self._lock_key = f"dragon:{lei}:model:training"
        self._holding = Holding(client)
        self._file = Path(model_dir) / f"{lei}-current.pt" if model_dir else None

    def publish(self, checkpoint: Checkpoint) -> None:
        data = checkpoint.to_bytes()
        pipe = self.client.pipeline(transaction=True)
        self._set(pipe, checkpoint, data)
        pipe.execute()
        self._published(checkpoint, data)

    def replace(self, checkpoint: Checkpoint, expected_id: str | None, expected_revision: str | None = None) -> bool:
        """Publish ``checkpoint`` only if the current model is still ``expected_id`` (None: none),
        and, if ``expected_revision`` is given, still of that revision where Redis knows it.

        A fine-tuned model must not overwrite a model published while it was being tuned (another
        calibration of the same weights too), nor a model put back or learnt anew one published
        meanwhile (WATCH makes the check and the write one transaction). Returns whether it was
        published.
        """
        data = checkpoint.to_bytes()
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self._id_key, self._revision_key)
                current, revision = pipe.mget(self._id_key, self._revision_key)
                if (current.decode() if current is not None else None) != expected_id:
                    return False
                if expected_revision is not None and _revision_of(current, revision) not in (None, expected_revision):
                    return False
                pipe.multi()
                self._set(pipe, checkpoint, data)
                pipe.execute()
            except redis.WatchError:
                return False
        self._published(checkpoint, data)
        return True

    def _set(self, pipe: redis.client.Pipeline, checkpoint: Checkpoint, data: bytes) -> None:
        pipe.set(self._key, data)
        pipe.set(self._id_key, checkpoint.model_id)
        pipe.set(self._generation_key, f"{checkpoint.model_id}:{checkpoint.generation}")
        pipe.set(self._revision_key, f"{checkpoint.model_id}:{checkpoint.revision}")
        pipe.incr(self._publications_key)

    def _published(self, checkpoint: Checkpoint, data: bytes) -> None:
        self._save_file(data)
        log.info("model_published", model_id=checkpoint.model_id, bytes=len(data))

    def _save_file(self, data: bytes) -> None:
        if self._file is None:
            return
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._file.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(self._file)  # atomic: a crash never leaves half a checkpoint
        except OSError as exc:
            log.warning("model_file_not_saved", path=str(self._file), error=str(exc))

    def current_id(self) -> str | None:
        value = self.client.get(self._id_key)
        return value.decode() if value else None

    def current(self) -> StoredModel | None:
        """The LEI's current model (its id, generation and revision: a few bytes, read on every
        check), or None when there is none (first start, Redis lost its data)."""
        keys = (self._id_key, self._generation_key, self._revision_key, self._publications_key)
        model_id, generation, revision, publications = self.client.mget(keys)
        if model_id is None:
            return None
        return StoredModel(
            model_id.decode(),
            _generation_of(model_id, generation),
            _revision_of(model_id, revision),
            _count_of(publications),
        )

    def checkpoint_of(self, stored: StoredModel) -> Checkpoint | None:
        """The bytes of ``stored`` as a checkpoint; None if another model is current by now."""
        model_id, data = self.client.mget(self._id_key, self._key)
        if model_id is None or model_id.decode() != stored.model_id:
            return None
        if data is None:
            raise CheckpointError(f"model {stored.model_id}: its id is in Redis, its bytes are not")
        return Checkpoint.from_bytes(data)

    def fetch(self) -> Checkpoint | None:
        data = self.client.get(self._key)
        return Checkpoint.from_bytes(data) if data else None

    def load_file(self) -> Checkpoint | None:
        if self._file is None or not self._file.is_file():
            return None
        return Checkpoint.from_bytes(self._file.read_bytes())

    def try_lock(self, owner: str) -> bool:
        """Take the model-training lock for LOCK_TTL_S. Ours already counts: a replica killed while
        learning (OOM on a Pi) comes back under its slot's name, and must not wait out the lock it left."""
        return self._holding.hold(self._lock_key, owner, LOCK_TTL_S)

    def unlock(self, owner: str) -> None:
        self._holding.let_go(self._lock_key, owner)


def _generation_of(model_id: bytes, value: bytes | None) -> int:
    """The generation ``value`` gives for ``model_id``; 0 if it names another model, or none it can."""
    named, _, number = (value or b"").rpartition(b":")
    try:
        return int(number) if named == model_id else 0
    except ValueError:
        return 0


def _revision_of(model_id: bytes, value: bytes | None) -> str | None:
    """The revision ``value`` gives for ``model_id``; None if it names another model, or none."""
    named, _, revision = (value or b"").rpartition(b":")
    return revision.decode(errors="replace") if named == model_id and revision else None


def _count_of(value: bytes | None) -> int:
    """The publications ``value`` counts; 0 for none, or for bytes that are no count."""
    try:
        return int(value or 0)
    except ValueError:
        return 0
