"""Which model a detector replica serves: its LEI's current model in Redis, whenever it can.

Every replica serves the model whose id Redis holds (``modelstore.py``), so that they all judge
alike. When a replica cannot use that model, what it does depends on who can:

- *A newer DRAGON wrote it* (``CheckpointError.written_by_newer``): a rolling upgrade, whose newer
  replicas serve it. This replica leaves its hosts to them. If no replica has judged for
  ``NEWER_MODEL_PATIENCE_S``, there are none (DRAGON was rolled back): nobody will use the model,
  and it is replaced as below.
- *Anything else* (bytes that do not load, a model an older DRAGON left that this one cannot read,
  other host metrics): nobody will ever use it. A replica that serves a model of its own puts it
  back; one that serves none learns a new model from the LEI's record in its place.

And a model gone from Redis (restarted without its data) is put back by the replicas serving one.
Every write goes through :meth:`ModelStore.replace`, so a model published meanwhile is never
overwritten, and the replicas that try at once publish once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from dragon.detector.checkpoint import GENERATION, Checkpoint, CheckpointError
from dragon.detector.membership import Membership
from dragon.detector.modelstore import ModelStore
from dragon.store import retry_until

log = structlog.get_logger(__name__)

# Longer than a replica's restart and its heartbeat's lifetime (10 s), so that a rolling upgrade's
# newer replicas, all restarting at once, are not taken for absent.
NEWER_MODEL_PATIENCE_S = 120.0


class ModelFollower:
    """Keeps one replica on its LEI's model; ``serve`` raises CheckpointError for a model it cannot
    use, ``learn(replaces)`` starts learning a model over ``replaces`` (None: over no model)."""

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
        self.newer = False  # ... because a newer DRAGON wrote it
        self._alone_since: float | None = None  # time.monotonic() since when no other replica judged

    @property
    def benched(self) -> bool:
        """Whether this replica must leave its hosts to others: it cannot serve the LEI's model."""
        return self.unusable is not None

    def start(self) -> None:
        """Serve the LEI's model from Redis, else the model volume's copy over none or one nobody
        can use. Serving none, the caller learns one unless :attr:`newer`."""
        try:
            checkpoint = retry_until(self.models.fetch, self.stop, "load_model_redis")
            if checkpoint is not None:
                self.serve(checkpoint)
                return
        except CheckpointError as exc:
            self._cannot_use(retry_until(self.models.current_id, self.stop, "load_model_redis"), exc, "redis")
            if self.newer:
                return  # the volume's copy is this version's, older: it must not replace the newer one
        self._serve_volume_copy()

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

    def check(self, serving: Checkpoint | None) -> None:
        """Turn to the LEI's current model if it changed; mend it if it is gone or nobody can use it."""
        current = self.models.current_id()
        if current is None:
            if serving is not None and self.models.replace(serving, None):
                log.warning("model_put_back", model_id=serving.model_id, reason="the LEI's model was gone from Redis")
            return
        if serving is not None and serving.model_id == current:
            self.unusable = None
            return
        if current != self.unusable:
            try:
                checkpoint = self.models.fetch()
                if checkpoint is not None:
                    self.serve(checkpoint)
                    self.unusable = None
                    return
            except CheckpointError as exc:
                self._cannot_use(current, exc, "redis")
        if current == self.unusable:
            self._mend(current, serving)

    def _cannot_use(self, model_id: str | None, error: CheckpointError, source: str) -> None:
        """Remember the model as unusable here; logged once per model, not on every batch."""
        self.unusable, self.newer = model_id, error.written_by_newer
        self._alone_since = None
        if self.newer:
            log.error(
                "stored_model_of_a_newer_dragon",
                source=source,
                model_id=model_id,
                generation=error.generation,
                this_generation=GENERATION,
                error=str(error),
                then="left to the replicas of that version; replaced if none judges for a while",
                patience_s=NEWER_MODEL_PATIENCE_S,
            )
        else:
            log.error(
                "stored_model_unusable",
                source=source,
                model_id=model_id,
                error=str(error),
                then="replaced by the model this replica serves, or by one learnt anew",
            )

    def _mend(self, unusable: str, serving: Checkpoint | None) -> None:
        if self.newer and not self._nobody_judges():
            return
        if serving is None:
            self.learn(unusable)
        elif self.models.replace(serving, unusable):
            log.warning("model_put_back", model_id=serving.model_id, replaced=unusable, reason="nobody can use it")
            self.unusable = None

    def _nobody_judges(self) -> bool:
        """Whether no other replica has been judging for NEWER_MODEL_PATIENCE_S (none serves the model)."""
        now = time.monotonic()
        if any(member != self.membership.instance for member in self.membership.members()):
            self._alone_since = None
            return False
        if self._alone_since is None:
            self._alone_since = now
        return now - self._alone_since >= NEWER_MODEL_PATIENCE_S
