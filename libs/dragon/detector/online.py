"""Scoring a series as the served detector does: one window at a time, fine-tuning as it goes.

The benchmark's static protocol scores a whole test series with the model trained on
``train.npy``. The service does more while it runs (``learning.FineTuner``): each window is
judged against a threshold that may stream (SPOT / DSPOT), the windows judged clean feed the
confidence gate, and when the model's confidence on them drops it is fine-tuned on the newest of
them (eq. 19), POT is recalibrated on them, and the new model judges from the next window on.
:func:`score_online` replays that on a series, synchronously and with a clock that counts steps,
so the benchmark can say what on-line fine-tuning does to detection quality
(``dragon-detector bench --online``). It uses the service's pieces (``ConfidenceGate``,
``CleanStreaks``, the clean-window rule the service counts in Redis, ``fine_tune``,
``Checkpoint.streaming_pot``) and never reads labels.

Shapes: ``T`` steps, ``k`` window length, ``n`` features.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dragon.config import default_of
from dragon.detector.checkpoint import DEFAULT_HOST, Checkpoint
from dragon.detector.config import ONLINE_MIN_INTERVAL_STEPS, POT_MODES, DetectorConfig
from dragon.detector.finetune import (
    CleanStreaks,
    ConfidenceGate,
    Unconfirmed,
    confidence,
    enough_to_recalibrate,
    fine_tune,
)
from dragon.detector.gon import fault_scores
from dragon.detector.health import FaultHysteresis
from dragon.detector.pot import PotState, StreamingPot


def _service_default(name: str) -> Any:
    return default_of(DetectorConfig, name)


@dataclass(frozen=True)
class OnlineSettings:
    """The service's fine-tuning and threshold settings, with time counted in steps."""

    reference: int = _service_default("finetune_reference")  # clean windows whose confidence is the reference
    quantile: float = _service_default("finetune_quantile")  # the gate's floor: this quantile of the reference
    windows: int = _service_default("finetune_windows")  # newest clean windows a fine-tune learns from
    steps: int = _service_default("finetune_steps")  # Adam steps of one fine-tune
    min_interval_steps: int = ONLINE_MIN_INTERVAL_STEPS  # at least this many steps between fine-tunes
    pot_mode: str = "static"  # static POT, streaming SPOT or drift-aware DSPOT, restarted by each new model
    dspot_depth: int = 20
    # spot/dspot: normal scores learnt this many scores late; clean windows kept for fine-tuning as late
    pot_lag: int = _service_default("pot_lag")
    start_windows: int = _service_default("start_windows")  # alarms in a row before a fault starts
    clear_windows: int = _service_default("clear_windows")  # normal windows in a row before a fault ends

    def __post_init__(self) -> None:
        if self.pot_mode not in POT_MODES:
            raise ValueError(f"pot_mode must be one of {list(POT_MODES)}, got {self.pot_mode!r}")
        if (
            self.reference < 3
            or self.windows < 2
            or self.steps < 1
            or self.min_interval_steps < 0
            or self.clear_windows < 1
            or self.start_windows < 1
            or self.pot_lag < 0
        ):
            raise ValueError(
                "online fine-tuning needs reference >= 3, windows >= 2, steps >= 1, min_interval_steps >= 0, "
                "clear_windows >= 1, start_windows >= 1, pot_lag >= 0"
            )


@dataclass
class OnlineRun:
    """What :func:`score_online` saw: per-step scores and thresholds, and each fine-tune."""

    scores: np.ndarray  # (T,) eq. 13 (or the configured fault score) under the model serving at each step
    contributions: np.ndarray  # (T, n) each feature's share of the score
    thresholds: np.ndarray  # (T,) the threshold each step was judged against
    starting_fit: PotState | None = None  # the POT fit the first step's threshold came from
    # step, windows, seconds, and the threshold the new model first judged against (None after the last step)
    fine_tunes: list[dict[str, Any]] = field(default_factory=list)


class _StaticThreshold:
    """The checkpoint's fitted z_q, with :class:`StreamingPot`'s ``update`` (nothing is learnt)."""

    def __init__(self, tail: PotState) -> None:
        self.tail, self.z_q = tail, tail.z_q

    def update(self, score: float) -> tuple[float, bool]:
        return self.z_q, score >= self.z_q


def _threshold_of(checkpoint: Checkpoint, settings: OnlineSettings) -> _StaticThreshold | StreamingPot:
    if settings.pot_mode == "static":
        return _StaticThreshold(checkpoint.pot_state())
    depth = settings.dspot_depth if settings.pot_mode == "dspot" else 0
    depth = checkpoint.usable_drift_depth(depth)  # SPOT if too few scores
    return checkpoint.streaming_pot(DEFAULT_HOST, depth, settings.pot_lag)


def score_online(
    checkpoint: Checkpoint, prev: np.ndarray, nxt: np.ndarray, settings: OnlineSettings | None = None
) -> OnlineRun:
    """Judge raw window pairs (W_{t-1}, W_t), (T, k, n) each, in order, fine-tuning as the service does.

    After each step: the verdict (score >= threshold in force), the ``settings.start_windows``-th
    alarm in a row, opens a fault, or after ``settings.clear_windows`` normal ones ends it, as the
    service's fault state does; a normal verdict with no fault in force extends the series' clean
    streak, anything else breaks it; a clean window's confidence D(W_t) feeds the gate and, once
    ``settings.pot_lag`` later windows were clean too, the window joins the newest
    ``settings.windows``; when the gate fires, once enough are kept to recalibrate POT on, the
    model is fine-tuned on those and judges from the next step on, with a threshold restarted
    from its recalibration.
    """
    settings = settings or OnlineSettings()
    if prev.shape != nxt.shape or prev.ndim != 3:
        raise ValueError(f"expected two arrays of windows (T, k, n), got {prev.shape} and {nxt.shape}")
    step = 0
    gate = ConfidenceGate(
        settings.min_interval_steps, settings.quantile, reference=settings.reference, clock=lambda: step
    )
    faults, streaks = FaultHysteresis(settings.clear_windows, settings.start_windows), CleanStreaks()
    unconfirmed: Unconfirmed[int] = Unconfirmed(settings.pot_lag)
    clean: deque[int] = deque(maxlen=settings.windows)  # step indices
    run = OnlineRun(np.zeros(len(nxt)), np.zeros((len(nxt), nxt.shape[2])), np.zeros(len(nxt)))
    model, scaler, threshold = checkpoint.build_model(), checkpoint.scaler(), _threshold_of(checkpoint, settings)
    run.starting_fit = threshold.tail
    for step in range(len(nxt)):
        window = torch.as_tensor(scaler.transform(nxt[step : step + 1]), dtype=torch.float32)  # (1, k, n)
        before = torch.as_tensor(scaler.transform(prev[step : step + 1]), dtype=torch.float32)
        score, share = fault_scores(model, before, window, checkpoint.config)
        run.scores[step], run.contributions[step] = float(score[0]), share[0].double().numpy()
        run.thresholds[step], alarm = threshold.update(run.scores[step])
        no_fault = faults.update(int(alarm))  # normal, and no fault in force (it ends after clear_windows)
        is_clean = streaks.update(DEFAULT_HOST, no_fault, checkpoint.config.window)
        gate.observe(DEFAULT_HOST, float(confidence(model, window.numpy())[0]), is_clean)
        clean.extend(unconfirmed.offer(DEFAULT_HOST, step, is_clean))
        if enough_to_recalibrate(checkpoint, len(clean), len(clean) == clean.maxlen) and gate.check():
            started = time.perf_counter()
            learnt = np.asarray(clean)
            checkpoint = fine_tune(checkpoint, prev[learnt], nxt[learnt], steps=settings.steps, source="bench")
            model, threshold = checkpoint.build_model(), _threshold_of(checkpoint, settings)
            gate.reset()
            run.fine_tunes.append(
                {
                    "step": step,
                    "windows": len(learnt),
                    "seconds": round(time.perf_counter() - started, 3),
                }
            )
    for tune in run.fine_tunes:  # the threshold the new model first judged against: DSPOT adds its drift
        tune["threshold"] = float(run.thresholds[tune["step"] + 1]) if tune["step"] + 1 < len(nxt) else None
    return run
