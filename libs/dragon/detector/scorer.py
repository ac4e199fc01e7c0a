"""Scores host windows with a loaded checkpoint: GON fault scores, POT labels, diagnosis."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dragon.detector.checkpoint import Checkpoint
from dragon.detector.gon import fault_scores
from dragon.messages.schemas import HOST_METRICS

TOP_METRICS = 3


class IncompatibleModel(ValueError):
    """The checkpoint was trained on other features than the hosts publish."""


@dataclass(frozen=True)
class Verdict:
    score: float
    threshold: float
    label: int
    top_metrics: tuple[tuple[str, float], ...]


class Scorer:
    """Holds one model; ``score`` takes raw (unscaled) windows of many hosts at once."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        if tuple(checkpoint.feature_names) != HOST_METRICS:
            raise IncompatibleModel(
                f"checkpoint features {list(checkpoint.feature_names)} differ from host metrics {list(HOST_METRICS)}"
            )
        self.checkpoint = checkpoint
        self.model_id = checkpoint.model_id
        self.config = checkpoint.config
        self.model = checkpoint.build_model()
        self.scaler = checkpoint.scaler()
        self._thresholds: dict[str, float] = {}

    @property
    def window(self) -> int:
        return self.config.window

    def threshold(self, host: str) -> float:
        if host not in self._thresholds:
            self._thresholds[host] = float(self.checkpoint.pot_state(host).z_q)
        return self._thresholds[host]

    def score(self, hosts: list[str], prev: np.ndarray, nxt: np.ndarray) -> list[Verdict]:
        """``prev``/``nxt``: (B, k, n) raw windows W_t and W_{t+1} of ``hosts``."""
        prev_t = torch.as_tensor(self.scaler.transform(prev), dtype=torch.float32)
        next_t = torch.as_tensor(self.scaler.transform(nxt), dtype=torch.float32)
        scores, contributions = fault_scores(self.model, prev_t, next_t, self.config)
        scores = scores.detach().numpy().astype(float)  # (B,)
        contributions = contributions.detach().numpy().astype(float)  # (B, n)
        return [
            self._verdict(host, score, share) for host, score, share in zip(hosts, scores, contributions, strict=True)
        ]

    def _verdict(self, host: str, score: float, share: np.ndarray) -> Verdict:
        threshold = self.threshold(host)
        order = np.argsort(-share)[:TOP_METRICS]
        top = tuple((HOST_METRICS[i], round(float(share[i]), 4)) for i in order if share[i] > 0)
        return Verdict(float(score), threshold, int(score >= threshold), top)
