"""On-line fine-tuning of the served model (DRAGON eq. 19), only when its confidence drops (CAROL).

A GON's discriminator says how likely a window is to be real: on the true windows of normal
operation, D(W) is the model's own confidence that it still knows what normal looks like.
CAROL fine-tunes its GON only when that confidence falls, instead of at every interval, which
keeps the overhead small; DRAGON (Algorithm 2, lines 15-16, eq. 19) fine-tunes D with Adam on
L = log D(W_{t+1}) + log(1 - D(Ŵ_{t+1})).

- :class:`ConfidenceGate` watches D on each host's true windows judged normal (a window in a
  fault is never learnt from, so a fault cannot become normal) and says when to fine-tune.
- :func:`fine_tune` takes a few Adam steps of eq. 19 on a copy of the model, recalibrates POT
  on the new model's scores of the same windows and returns a new :class:`Checkpoint`.

Shapes: ``B`` windows, ``k`` window length, ``n`` features.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np
import structlog
import torch
from torch import Tensor, nn

from dragon.detector.checkpoint import Checkpoint
from dragon.detector.gon import GonConfig, SeriesWindows, WindowSet, evaluate_gon, fault_scores, gon_loss
from dragon.detector.lei import LeiBatch, LeiStep, by_shape
from dragon.detector.optim import Adam
from dragon.detector.pot import MIN_PEAKS
from dragon.detector.train import calibrated_checkpoint

if TYPE_CHECKING:  # the scorer imports nothing from here; only the annotation needs it
    from dragon.detector.scorer import Scorer

log = structlog.get_logger(__name__)
T = TypeVar("T")

# Adam step size of fine-tuning: CAROL fine-tunes its GON with 1e-4 (weight decay 1e-5, which
# GonConfig.weight_decay already is). GonConfig.lr (1e-3) is for training from scratch.
FINE_TUNE_LR = 1e-4
# Normal windows of a host whose confidence is the gate's reference (DRAGON_FINETUNE_REFERENCE);
# the mean over the newest third as many is compared with it.
REFERENCE_WINDOWS = 60


@torch.no_grad()
def confidence(model: nn.Module, windows: np.ndarray) -> np.ndarray:
    """D(W) of scaled windows (B, k, n) -> (B,) float64: the model's confidence they are real.

    One forward pass, no generation: cheap enough for the scoring thread. Call it only from
    the thread that owns ``model`` (the scorer's).
    """
    model.eval()
    return torch.sigmoid(model.logits(torch.as_tensor(windows, dtype=torch.float32))).double().numpy()


@torch.no_grad()
def lei_confidence(scorer: Scorer, steps: Sequence[LeiStep]) -> list[np.ndarray]:
    """D of every host's true window W_t at each LEI step, in its context: one (m,) array per step.

    One forward pass per shape of step; call it only from the thread that owns the scorer's model.
    """
    scorer.model.eval()
    values: dict[int, np.ndarray] = {}
    for index in by_shape(steps):
        batch = LeiBatch.of([steps[i] for i in index], scorer.scaler, scorer.checkpoint.feature_names)
        view, real = batch.real().batch(scorer.model, torch.arange(len(batch)))
        for i, row in zip(index, torch.sigmoid(view.logits(real)).double().numpy(), strict=True):
            values[i] = row
    return [values[i] for i in range(len(steps))]


@dataclass
class _HostConfidence:
    reference: list[float] = field(default_factory=list)
    recent: deque[float] = field(default_factory=deque)
    floor: float | None = None  # the reference quantile, once the reference is complete


class ConfidenceGate:
    """Says when the served model's confidence on normal windows has fallen: time to fine-tune.

    Each host's reference is D on its first ``reference`` normal windows under the current
    model; its floor is the ``quantile`` of those values. The gate fires for a host when the
    mean D of its newest ``recent`` (default: a third of ``reference``) normal windows falls
    below that floor, and never within ``min_interval_s`` of its start (:meth:`reset`, a new
    model) or of its last firing.
    Per host, because hosts run different workloads and their confidences differ. Not
    thread-safe: fed from the scoring thread only.
    """

    def __init__(
        self,
        min_interval_s: float,
        quantile: float,
        reference: int = REFERENCE_WINDOWS,
        recent: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0.0 < quantile <= 1.0 or reference < 1 or (recent is not None and recent < 1) or min_interval_s < 0:
            raise ValueError("ConfidenceGate: quantile in (0, 1], reference and recent >= 1, min_interval_s >= 0")
        self.min_interval_s = min_interval_s
        self.quantile = quantile
        self._reference = reference
        self._recent = recent if recent is not None else max(1, reference // 3)
        self._clock = clock
        self.reset()

    def reset(self, model_age_s: float = 0.0) -> None:
        """Forget every host and start the interval again: call it when a new model is served.

        ``model_age_s`` is how long ago that model was made (:func:`model_age_s`): a replica
        that restarts, or joins, while the LEI serves a model made earlier counts the interval
        from the model's making, so restarts do not put fine-tuning off again and again.
        """
        self._hosts: dict[str, _HostConfidence] = {}
        self._new_floors: dict[str, float] = {}
        self._since = self._clock() - max(0.0, model_age_s)

    def observe(self, host: str, value: float, normal: bool) -> None:
        """D(W) of one true window of ``host``; windows not judged ``normal`` are ignored."""
        if not normal:
            return
        state = self._host(host)
        if state.floor is None:
            state.reference.append(float(value))
            if len(state.reference) == self._reference:
                state.floor = float(np.quantile(state.reference, self.quantile))
                self._new_floors[host] = state.floor
            return
        state.recent.append(float(value))

    @property
    def how_measured(self) -> str:
        """What a floor depends on besides the model: only a gate measuring the same way may adopt it."""
        return f"quantile={self.quantile!r},reference={self._reference}"

    def adopt_floor(self, host: str, floor: float) -> None:
        """Take a floor measured earlier under the same model (before a restart) instead of a new reference."""
        self._host(host).floor = float(floor)

    def new_floors(self) -> dict[str, float]:
        """The floors completed and not stored yet (:meth:`floors_stored`), to be kept for a restart."""
        return dict(self._new_floors)

    def floors_stored(self, hosts: Iterable[str]) -> None:
        """The floors of ``hosts`` were stored: :meth:`new_floors` no longer hands them out."""
        for host in hosts:
            self._new_floors.pop(host, None)

    def forget(self, hosts: Iterable[str]) -> None:
        """Forget hosts that left the LEI; back, each measures its reference again."""
        for host in hosts:
            self._hosts.pop(host, None)
            self._new_floors.pop(host, None)

    def _host(self, host: str) -> _HostConfidence:
        return self._hosts.setdefault(host, _HostConfidence(recent=deque(maxlen=self._recent)))

    def mean_recent(self, host: str) -> float | None:
        state = self._hosts.get(host)
        if state is None or state.floor is None or len(state.recent) < self._recent:
            return None
        return float(np.mean(state.recent))

    def floor(self, host: str) -> float | None:
        state = self._hosts.get(host)
        return None if state is None else state.floor

    def check(self) -> list[str]:
        """The hosts whose confidence fell, if it is time; firing starts the interval again."""
        now = self._clock()
        if now - self._since < self.min_interval_s:
            return []
        drifted = [
            host
            for host, state in self._hosts.items()
            if (mean := self.mean_recent(host)) is not None and mean < state.floor
        ]
        if drifted:
            self._since = now
        return drifted


def model_age_s(checkpoint: Checkpoint, now: datetime | None = None) -> float:
    """Seconds since ``checkpoint`` was trained or fine-tuned (its ``created_at``); 0 when unknown.

    ``created_at`` is the wall clock of the replica that made the model: a clock ahead of ours
    gives a negative age, which counts as 0 (a new model).
    """
    try:
        created = datetime.fromisoformat(str(checkpoint.meta["created_at"]))
    except (KeyError, ValueError):
        return 0.0
    if created.tzinfo is None:
        return 0.0
    return max(0.0, ((now or datetime.now(UTC)) - created).total_seconds())


class CleanStreaks:
    """Which judged windows are clean enough to learn from: the last ``window`` of the host all normal.

    A window judged normal just after a fault still holds rows of it, so it is learnt from only
    once the host has had a whole window of normal verdicts in a row. Streaks belong to the
    data, not to a model: they carry on when a new model is served.
    """

    def __init__(self) -> None:
        self._normal_in_a_row: dict[str, int] = {}

    def update(self, host: str, normal: bool, window: int) -> bool:
        """Count one verdict of ``host``; True when its newest ``window`` verdicts were all normal."""
        streak = self._normal_in_a_row.get(host, 0) + 1 if normal else 0
        self._normal_in_a_row[host] = streak
        return streak >= window


class Unconfirmed(Generic[T]):
    """Clean windows held until ``lag`` later windows of their stream (a host, or the LEI's steps)
    were clean too: only then are they kept to learn from.

    The first windows of a fault often score just under the threshold (the reason POT learns a
    window late, ``DRAGON_POT_LAG``); kept at once, a fine-tune would learn them as normal
    operation, and the POT it recalibrates on their scores would take them for peaks and fatten
    its tail. A window that is not clean drops what its stream holds. Lag 0 keeps every clean
    window at once.
    """

    def __init__(self, lag: int) -> None:
        if lag < 0:
            raise ValueError(f"lag must be >= 0, got {lag}")
        self.lag = lag
        self._held: dict[str, deque[T]] = {}

    def forget(self, streams: Iterable[str]) -> None:
        """Drop what streams that ended (hosts that left) hold: nothing will confirm it."""
        for stream in streams:
            self._held.pop(stream, None)

    def offer(self, stream: str, item: T, clean: bool) -> list[T]:
        """The items of ``stream`` confirmed by ``item`` (held if ``clean``): at most one."""
        if not clean:
            self._held.pop(stream, None)
            return []
        if not self.lag:
            return [item]
        held = self._held.setdefault(stream, deque())
        held.append(item)
        return [held.popleft()] if len(held) > self.lag else []


def enough_to_recalibrate(checkpoint: Checkpoint, windows: int, full: bool) -> bool:
    """Whether ``windows`` kept clean windows are enough for a fine-tune of ``checkpoint`` to start.

    A fine-tune recalibrates POT on the new model's scores of the windows it learnt from. With
    ``n`` scores, about ``n (1 - level)`` lie above the level quantile; below ``MIN_PEAKS`` of
    them POT falls back to an exponential tail, and with a few it extrapolates a threshold from
    a handful of scores, which on FTSAD-1 moved the alarms more than the fine-tune moved the
    model (docs/detector-quality.md). So a fine-tune waits for ``MIN_PEAKS / (1 - level)``
    windows (500 at the default level 0.98), or until the store of clean windows is ``full``
    (DRAGON_FINETUNE_WINDOWS set lower than that).
    """
    # - 1e-9: 1 - level is inexact in floating point (10 / (1 - 0.9) is 100.00000000000003).
    needed = math.ceil(MIN_PEAKS / (1.0 - checkpoint.pot_state().level) - 1e-9)
    return full or windows >= needed


@dataclass(frozen=True)
class TuningGroup:
    """Normal windows of one shape: the true windows D learns from, and their eq. 13 scores."""

    real: WindowSet  # the true windows W_{t+1} in the context D judges them in
    scores: Callable[[nn.Module], Tensor]  # eq. 13 scores of the same windows under a model, flat
    windows: int  # host windows in the group


def host_groups(checkpoint: Checkpoint, prev: np.ndarray, nxt: np.ndarray) -> list[TuningGroup]:
    """Raw pairs (W_t, W_{t+1}) of single hosts, (B, k, n), for a model of scope ``host``."""
    if prev.shape != nxt.shape or prev.ndim != 3 or len(prev) < 2:
        raise ValueError(f"expected two arrays of at least 2 windows (B, k, n), got {prev.shape} and {nxt.shape}")
    cfg, scaler = checkpoint.config, checkpoint.scaler()
    prev_t = torch.as_tensor(scaler.transform(prev), dtype=torch.float32)  # (B, k, n)
    next_t = torch.as_tensor(scaler.transform(nxt), dtype=torch.float32)  # (B, k, n)
    return [TuningGroup(SeriesWindows(next_t), lambda model: fault_scores(model, prev_t, next_t, cfg)[0], len(nxt))]


def lei_groups(checkpoint: Checkpoint, steps: Sequence[LeiStep]) -> list[TuningGroup]:
    """Normal LEI steps, one group per shape, for a model of scope ``lei``: every host's window is learnt."""
    if len(steps) < 2:
        raise ValueError(f"expected at least 2 LEI steps, got {len(steps)}")
    cfg, scaler = checkpoint.config, checkpoint.scaler()
    groups = []
    for index in by_shape(steps):
        batch = LeiBatch.of([steps[i] for i in index], scaler, checkpoint.feature_names)

        def scores(model: nn.Module, batch: LeiBatch = batch) -> Tensor:
            return fault_scores(batch.judging(model), batch.prev, batch.next, cfg, batch.arrived(model))[0].flatten()

        groups.append(TuningGroup(batch.real(), scores, int(batch.next.shape[0] * batch.next.shape[1])))
    return groups


def fine_tune(
    checkpoint: Checkpoint,
    prev: np.ndarray,
    nxt: np.ndarray,
    *,
    steps: int,
    lr: float = FINE_TUNE_LR,
    source: str = "",
) -> Checkpoint:
    """A new checkpoint: ``checkpoint``'s model fine-tuned on recent normal windows of single hosts (eq. 19).

    ``prev`` and ``nxt`` are raw (unscaled) windows W_t and W_{t+1}, (B, k, n), of normal
    operation; see :func:`fine_tune_groups`.
    """
    return fine_tune_groups(checkpoint, host_groups(checkpoint, prev, nxt), steps=steps, lr=lr, source=source)


def fine_tune_groups(
    checkpoint: Checkpoint,
    groups: Sequence[TuningGroup],
    *,
    steps: int,
    lr: float = FINE_TUNE_LR,
    source: str = "",
) -> Checkpoint:
    """A new checkpoint: ``checkpoint``'s model fine-tuned on ``groups`` of normal windows (eq. 19).

    D is rebuilt from the checkpoint's weights, so the model a scorer serves is never touched.
    ``steps`` Adam steps (``lr``, ``GonConfig.weight_decay``) on all windows at once minimise
    BCE(D(W_{t+1}), 1) + BCE(D(Ŵ), 0), i.e. maximise eq. 19, with Ŵ generated from W_{t+1} as
    in training (``gon.gon_loss``). POT is then fitted on the new model's fault scores of the
    same windows, with the checkpoint's risk and level. Config, features and scaler bounds are
    kept; the metadata names the model fine-tuned from.
    """
    if steps < 1:
        raise ValueError(f"fine-tuning needs at least one step, got {steps}")
    started = time.perf_counter()
    cfg = checkpoint.config
    model = checkpoint.build_model()  # a fresh copy of the weights
    before = _evaluate(model, groups, cfg)
    _adam_steps(model, groups, cfg, steps, lr)
    after = _evaluate(model, groups, cfg)
    with torch.no_grad():
        scores = torch.cat([group.scores(model) for group in groups]).double().numpy()
    base = checkpoint.pot_state()
    seconds = time.perf_counter() - started
    meta = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source,
        "torch": str(torch.__version__),
        "fine_tuned_from": checkpoint.model_id,
        # The model the chain of fine-tunes started from, and its revision: a detector configured
        # with that checkpoint, not another calibration of it, keeps serving its descendant after a
        # restart (following.ModelFollower._descends).
        "base_model_id": checkpoint.meta.get("base_model_id", checkpoint.model_id),
        **_base_revision(checkpoint),
        "fine_tune": {
            "windows": sum(group.windows for group in groups),  # host windows
            "samples": sum(len(group.real) for group in groups),  # single windows or LEI steps
            "steps": int(steps),
            "lr": float(lr),
            "seconds": round(seconds, 3),
            "before": before,
            "after": after,
        },
    }
    return calibrated_checkpoint(
        model,
        cfg,
        checkpoint.feature_names,
        checkpoint.lo,
        checkpoint.hi,
        scores,
        pot_q=base.q,
        pot_level=base.level,
        meta=meta,
    )


def _base_revision(checkpoint: Checkpoint) -> dict[str, str]:
    """The ``base_revision`` a fine-tune of ``checkpoint`` names: that of the model its chain started
    from. None is known for a chain whose earlier fine-tunes did not name it."""
    if "base_model_id" not in checkpoint.meta:
        return {"base_revision": checkpoint.revision}
    known = checkpoint.meta.get("base_revision")
    return {"base_revision": known} if known is not None else {}


def _evaluate(model: nn.Module, groups: Sequence[TuningGroup], cfg: GonConfig) -> dict[str, float]:
    """``evaluate_gon`` over every group, weighted by its host windows."""
    total = sum(group.windows for group in groups)
    results = [(evaluate_gon(model, group.real, cfg), group.windows) for group in groups]
    return {key: sum(result[key] * weight for result, weight in results) / total for key in results[0][0]}


def _adam_steps(model: nn.Module, groups: Sequence[TuningGroup], cfg: GonConfig, steps: int, lr: float) -> None:
    """``steps`` Adam steps on the GON loss of every window at once; leaves ``model`` in eval."""
    opt = Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    total = sum(group.windows for group in groups)
    model.train()
    for _ in range(steps):
        loss = sum(
            gon_loss(*group.real.batch(model, torch.arange(len(group.real))), cfg)[0] * (group.windows / total)
            for group in groups
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def stacked(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(W_t, W_{t+1}) pairs -> prev (B, k, n), next (B, k, n)."""
    return np.stack([p for p, _ in pairs]), np.stack([n for _, n in pairs])
