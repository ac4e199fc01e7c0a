"""Checkpoints for tests: the same weights calibrated again."""

from __future__ import annotations

import dataclasses

import numpy as np

from dragon.detector.checkpoint import DEFAULT_HOST, Checkpoint
from dragon.detector.pot import fit_pot


def recalibrated(checkpoint: Checkpoint, q: float, level: float | None = None) -> Checkpoint:
    """``checkpoint`` with POT fitted again on its calibration scores under risk ``q`` (and initial
    quantile ``level``, if given): what retraining with the same seed and data but another
    ``--pot-q`` (``--pot-level``) gives, without the training."""
    level = checkpoint.pot_state().level if level is None else level
    pot = fit_pot(np.asarray(checkpoint.calibration_tail), q=q, level=level)
    return dataclasses.replace(checkpoint, pot={DEFAULT_HOST: pot.to_dict()})
