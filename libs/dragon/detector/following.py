"""Which model a detector replica serves: its LEI's current model in Redis, whenever it can.

Every replica serves the model whose id Redis holds (``modelstore.py``), so that they all judge
alike; one that cannot is *benched*: it leaves its hosts to the others. What happens to a model a
replica cannot use depends on who can, which the generation of the DRAGON that wrote it tells
(``checkpoint.GENERATION``, kept in Redis beside the model):

- *A newer DRAGON wrote it:* a rolling upgrade, whose newer replicas serve it, and put it back if
  Redis loses it. This replica waits. Only if no other replica has been a member (beating, so
  serving the LEI's model or learning one) for ``WAIT_FOR_OTHERS_S`` are there none (DRAGON
  was rolled back): then it is replaced as below.
- *Any other* (bytes that do not load, an older DRAGON's model this one cannot read, other host
  metrics): nobody will ever use it. A replica that serves a model of its own puts that back; one
  that serves none learns a new model from the LEI's record in its place.

A replica too short of memory to load the LEI's model waits as for a newer DRAGON's: the model
may be fine, and replacing it would undo it for everyone.

A model gone from Redis (restarted without its data) is put back by the replicas that served it,
or learnt anew where none did. Every write is a compare-and-set on the model's id
(:meth:`ModelStore.replace`), so the replicas that try at once publish once, and a model published
meanwhile is never overwritten.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import structlog

from dragon.detector.checkpoint import GENERATION, Checkpoint, CheckpointError, short_of_memory
from dragon.detector.membership import Membership
from dragon.detector.modelstore import ModelStore, StoredModel
from dragon.store import retry_until

log = structlog.get_logger(__name__)
T = TypeVar("T")

# Longer than a replica's restart and its heartbeat's lifetime (10 s), so that a rolling upgrade's
# newer replicas, all restarting at once, are not taken for absent.
WAIT_FOR_OTHERS_S = 120.0
CONFIGURED_PUBLISH_ATTEMPTS = 5  # compare-and-set tries against replicas publishing at the same time


class ModelFollower:
    """Keeps one replica on its LEI's model.

    ``serve(checkpoint)`` makes the replica serve a model, raising CheckpointError for one it
    cannot use; ``learn(replaces)`` starts learning a model in place of ``replaces`` (None: of no
    model), unless a learner runs already. Not thread-safe: one thread calls :meth:`start` and then
    :meth:`check`; the learner thread may call :meth:`may_replace`.
    """

    def __init__(
        self,
        models: ModelStore,
        membership: Membership,
        serve: Callable[[Checkpoint], None],
        learn: Callable[[str | None], None],
        stop: threading.Event,
    ) -> None:
        self.models = models
        self.membership = membership
        self.serve = serve
        self.learn = learn
        self.stop = stop
        self.unusable: str | None = None  # the id of the LEI's model while this replica cannot use it
        # ... and leaves it to replicas that may (a newer DRAGON's, or this one is short of memory)
        self.waiting = False
        self._alone_since: float | None = None  # time.monotonic() since when no other replica is a member
        # The LEI's model as Redis named it when this replica last turned to it, and the revision
        # the bytes it loaded then had: an older DRAGON republishing the same id leaves the revision
        # key of another calibration behind, and the replica must not load it again at every check.
        self._turned_to: tuple[StoredModel, str] | None = None

    @property
    def benched(self) -> bool:
        """Whether this replica must leave its hosts to others: it cannot serve the LEI's model."""
        return self.unusable is not None

    # --- at start ---------------------------------------------------------------------------
    def start(self, configured: Checkpoint | None = None) -> None:
        """Serve ``configured`` (or the LEI's fine-tuned descendant of it), else the LEI's model,
        else the model volume's copy. Serving none, the caller learns one unless :attr:`waiting`."""
        stored = retry_until(self.models.current, self.stop, "load_model_redis")
        if configured is not None:
            self._start_configured(configured, stored)
            return
        if stored is not None and self._serve_stored(stored):
            return
        if not self.waiting:  # the volume's copy is this version's: it must not replace a newer DRAGON's
            self._serve_volume_copy()

    def _start_configured(self, configured: Checkpoint, stored: StoredModel | None) -> None:
        for _ in range(CONFIGURED_PUBLISH_ATTEMPTS):
            if stored is not None and stored.model_id != configured.model_id:
                if self._descends(stored, configured):
                    # The LEI fine-tuned the configured model: restarting one replica must not undo that.
                    log.info("serving_fine_tuned_descendant", configured=configured.model_id, model_id=stored.model_id)
                    return
                if self.waiting:
                    return  # a newer DRAGON's: the configured model waits, as any model of ours would
            expected = stored.model_id if stored is not None else None
            if retry_until(lambda e=expected: self.models.replace(configured, e), self.stop, "publish_model"):
                break
            stored = retry_until(self.models.current, self.stop, "load_model_redis")  # another published
        self.serve(configured)
        self.unusable, self.waiting = None, False

    def _descends(self, stored: StoredModel, configured: Checkpoint) -> bool:
        """Whether ``stored`` was fine-tuned from ``configured``; serves it if so, notes it if unusable.

        From ``configured`` itself, not from another calibration of its weights: the base's
        revision too, where the descendant names it (fine-tunes before ``base_revision`` did not)."""
        checkpoint = self._load(stored)
        if checkpoint is None or checkpoint.meta.get("base_model_id") != configured.model_id:
            return False
        if checkpoint.meta.get("base_revision", configured.revision) != configured.revision:
            return False
        return self._serve_loaded(stored, checkpoint)

    def _serve_volume_copy(self) -> None:
        try:
            checkpoint = retry_until(self.models.load_file, self.stop, "load_model_volume")
            if checkpoint is None:
                return
            self.serve(checkpoint)
        except CheckpointError as exc:
            log.error("stored_model_unusable", source="volume", error=str(exc))
            return
        replaced = self.unusable
        if retry_until(lambda: self.models.replace(checkpoint, replaced), self.stop, "publish_model"):
            self.unusable = None
        # else another replica published one meanwhile: check() turns to it

    # --- while running ----------------------------------------------------------------------
    def check(self, serving: Checkpoint | None) -> None:
        """Turn to the LEI's current model if it changed; mend it if it is gone or nobody can use it."""
        stored = self.models.current()
        if stored is None:
            if not self.benched:
                self.waiting = False
            self._mend(None, serving)  # benched on a newer model: its replicas put it back
            return
        if serving is not None and (stored.names(serving) or self._turned_to == (stored, serving.revision)):
            self.unusable, self.waiting = None, False
            return
        if stored.model_id != self.unusable:
            if self._serve_stored(stored):
                return
            if stored.model_id != self.unusable:
                return  # another model is current by now: the next check turns to it
        self._mend(stored.model_id, serving)

    def may_replace(self, model_id: str | None) -> bool:
        """Whether a model learnt in place of ``model_id`` may still be published (the learner asks
        before it does): not if a newer DRAGON's replicas came back meanwhile."""
        return not (self.waiting and model_id == self.unusable and not self._nobody_judges())

    def _serve_stored(self, stored: StoredModel) -> bool:
        """Serve ``stored``; False if it is unusable here (noted) or no longer current."""
        checkpoint = self._load(stored)
        return checkpoint is not None and self._serve_loaded(stored, checkpoint)

    def _load(self, stored: StoredModel) -> Checkpoint | None:
        """The checkpoint of ``stored``; None if it is unusable here (noted) or no longer current."""
        return self._unless_unusable(
            stored, lambda: retry_until(lambda: self.models.checkpoint_of(stored), self.stop, "load_model_redis")
        )

    def _serve_loaded(self, stored: StoredModel, checkpoint: Checkpoint) -> bool:
        def serve() -> bool:
            self.serve(checkpoint)
            return True

        if not self._unless_unusable(stored, serve):
            return False
        self.unusable, self.waiting = None, False
        self._turned_to = (stored, checkpoint.revision)
        return True

    def _unless_unusable(self, stored: StoredModel, attempt: Callable[[], T]) -> T | None:
        """``attempt()``, or None if it found the model unusable here (noted)."""
        try:
            return attempt()
        except CheckpointError as exc:
            self._cannot_use(stored, exc)
        except (MemoryError, RuntimeError) as exc:
            if not short_of_memory(exc):
                raise
            self._cannot_use(stored, exc, short_of_memory=True)
        return None

    def _cannot_use(self, stored: StoredModel, error: Exception, short_of_memory: bool = False) -> None:
        """Remember the model as unusable here; logged once per model, not on every batch.

        Short of memory, the model may well be fine: it is left to the replicas that can load it
        (replaced only if none is left), not replaced for everyone."""
        if stored.model_id == self.unusable:
            return
        newer = stored.generation > GENERATION
        self.unusable, self.waiting = stored.model_id, newer or short_of_memory
        self._alone_since = None
        if short_of_memory:
            log.error(
                "model_not_loaded_short_of_memory",
                model_id=stored.model_id,
                error=str(error),
                then="left to replicas that can load it; replaced if none is left",
                patience_s=WAIT_FOR_OTHERS_S,
            )
        elif newer:
            log.error(
                "stored_model_of_a_newer_dragon",
                model_id=stored.model_id,
                generation=stored.generation,
                this_generation=GENERATION,
                error=str(error),
                then="left to the replicas of that version; replaced if none is left",
                patience_s=WAIT_FOR_OTHERS_S,
            )
        else:
            log.error(
                "stored_model_unusable",
                source="redis",
                model_id=stored.model_id,
                generation=stored.generation,
                error=str(error),
                then="replaced by the model this replica serves, or by one learnt anew",
            )

    def _mend(self, expected: str | None, serving: Checkpoint | None) -> None:
        """Put ``serving`` in place of the LEI's model ``expected`` (None: none), or learn one."""
        if self.waiting and not self._nobody_judges():
            return
        if serving is None:
            self.learn(expected)
        elif self.models.replace(serving, expected):
            reason = "nobody can use it" if expected is not None else "the LEI's model was gone from Redis"
            log.warning("model_put_back", model_id=serving.model_id, replaced=expected, reason=reason)
            self.unusable, self.waiting = None, False

    def _nobody_judges(self) -> bool:
        """Whether no other replica has been a member for WAIT_FOR_OTHERS_S."""
        now = time.monotonic()
        if any(member != self.membership.instance for member in self.membership.members()):
            self._alone_since = None
            return False
        if self._alone_since is None:
            self._alone_since = now
        return now - self._alone_since >= WAIT_FOR_OTHERS_S
