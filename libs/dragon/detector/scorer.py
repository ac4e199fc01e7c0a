"""Scores host windows with a loaded checkpoint: GON fault scores, POT labels, diagnosis.

The threshold is the checkpoint's fitted ``z_q`` (``static``) or each host's streaming SPOT/DSPOT
threshold (``spot``/``dspot``), which the caller keeps between batches (``thresholds.py``) and
which starts from this model's calibration (:meth:`Scorer.resume`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import structlog
import torch

from dragon.detector.checkpoint import Checkpoint, CheckpointError
from dragon.detector.config import DEFAULT_POT_LAG
from dragon.detector.gon import fault_scores
from dragon.detector.lei import LeiBatch, LeiStep, by_shape
from dragon.detector.pot import StreamingPot
from dragon.detector.thresholds import HostThreshold
from dragon.messages.schemas import HOST_METRICS, ForecastSample, HostSample

log = structlog.get_logger(__name__)

TOP_METRICS = 3


class IncompatibleModel(CheckpointError):
    """The checkpoint was trained on other features than the hosts publish."""


@dataclass(frozen=True)
class Verdict:
    score: float
    threshold: float
    label: int
    top_metrics: tuple[tuple[str, float], ...]
    cause: str = "score"  # or silent: no window came (dragon.detector.silence), score and threshold 0

    @classmethod
    def silent(cls) -> Verdict:
        return cls(0.0, 0.0, 1, (), "silent")


class Scorer:
    """Holds one model; ``score`` takes raw (unscaled) windows of many hosts at once."""

    def __init__(
        self, checkpoint: Checkpoint, pot_mode: str = "static", pot_depth: int = 0, pot_lag: int = DEFAULT_POT_LAG
    ) -> None:
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
        self.streaming = pot_mode != "static"
        self.drift_depth = checkpoint.usable_drift_depth(pot_depth if pot_mode == "dspot" else 0)  # 0: SPOT
        self.pot_lag = pot_lag  # streaming: normal scores learnt this many scores late

    @property
    def window(self) -> int:
        return self.config.window

    @property
    def scope(self) -> str:
        """What the model judges at once: ``host`` (:meth:`score`) or ``lei`` (:meth:`score_steps`)."""
        return self.config.scope

    def forget(self, hosts: Iterable[str]) -> None:
        """Drop the static thresholds of hosts that left (read again from the checkpoint if they come back)."""
        for host in hosts:
            self._thresholds.pop(host, None)

    def threshold(self, host: str) -> float:
        """The static threshold: the checkpoint's z_q for ``host``."""
        if host not in self._thresholds:
            self._thresholds[host] = float(self.checkpoint.pot_state(host).z_q)
        return self._thresholds[host]

    def calibration(self, host: str) -> StreamingPot:
        """Where ``host``'s streaming threshold starts under this model (a new object each call)."""
        return self.checkpoint.streaming_pot(host, self.drift_depth, self.pot_lag)

    def resume(self, host: str, stored: HostThreshold | None) -> HostThreshold:
        """``stored`` if it was calibrated for this model and mode, else a restart from calibration."""
        if stored is not None and stored.model_id == self.model_id and self._same_rule(host, stored.pot):
            return stored
        log.info(
            "pot_state_calibrated",
            host=host,
            model_id=self.model_id,
            depth=self.drift_depth,
            lag=self.pot_lag,
            previous_model_id=stored.model_id if stored else None,
        )
        return HostThreshold(self.model_id, self.calibration(host))

    def _same_rule(self, host: str, pot: StreamingPot) -> bool:
        """Whether ``pot`` follows this scorer's streaming rule (DSPOT depth and learning lag) with the
        risk and initial quantile the model calibrates ``host`` with: the same weights may have been
        calibrated again with others (``Checkpoint.revision``)."""
        same_risk = (pot.tail.q, pot.tail.level) == self.checkpoint.pot_risk(host)
        return same_risk and pot.depth == self.drift_depth and pot.lag == self.pot_lag

    def score(
        self,
        hosts: list[str],
        stamps: list[float],
        prev: np.ndarray,
        nxt: np.ndarray,
        states: Mapping[str, HostThreshold] | None = None,
    ) -> list[Verdict]:
        """``prev``/``nxt``: (B, k, n) raw windows W_t and W_{t+1} of ``hosts``, closed at ``stamps``.

        With ``states`` (streaming mode, one per host) each window is judged by its host's
        threshold in force and learnt from, in the order given; without, by the static one.
        """
        scores, contributions = fault_scores(self.model, self._scaled(prev), self._scaled(nxt), self.config)
        judged = zip(hosts, stamps, scores.tolist(), contributions.numpy(), strict=True)
        return [self._verdict(host, ts, score, share, states) for host, ts, score, share in judged]

    def score_steps(
        self, steps: Sequence[LeiStep], states: Mapping[str, HostThreshold] | None = None
    ) -> list[list[tuple[HostSample | ForecastSample, Verdict]]]:
        """Judge the samples (or forecasts) of each LEI step with D(G, W, S) over all hosts of the step (scope ``lei``).

        Steps of one shape (hosts, tasks, broker) are generated in one batch; verdicts are then
        given step by step in the order of ``steps``, so each host's streaming threshold sees
        its windows in time order. Returns one list of (sample or forecast, verdict) per step.
        """
        scored: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # step -> scores (m,), shares (m, n)
        for batch in by_shape(steps):
            for i, step_scores, shares in zip(batch, *self._score_batch([steps[i] for i in batch]), strict=True):
                scored[i] = (step_scores, shares)
        verdicts = []
        for i, step in enumerate(steps):
            step_scores, shares = scored[i]
            verdicts.append(
                [
                    (sample, self._verdict(sample.host, sample.ts, float(step_scores[h]), shares[h], states))
                    for h, sample in step.judged
                ]
            )
        return verdicts

    def _score_batch(self, steps: Sequence[LeiStep]) -> tuple[np.ndarray, np.ndarray]:
        """Eq. 13 for every host of steps of one shape: scores (B, m) and shares (B, m, n)."""
        batch = LeiBatch.of(steps, self.scaler, self.checkpoint.feature_names)
        scores, shares = fault_scores(
            batch.judging(self.model), batch.prev, batch.next, self.config, batch.arrived(self.model)
        )
        return scores.double().numpy(), shares.double().numpy()

    def _scaled(self, windows: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(self.scaler.transform(windows), dtype=torch.float32)

    def _verdict(
        self, host: str, ts: float, score: float, share: np.ndarray, states: Mapping[str, HostThreshold] | None
    ) -> Verdict:
        """The label of one score: the static threshold, or the host's streaming one (learnt from)."""
        if states is None:
            threshold = self.threshold(host)
            alarm = score >= threshold
        else:
            threshold, alarm = states[host].judge(ts, score)
        order = np.argsort(-share)[:TOP_METRICS]
        top = tuple((HOST_METRICS[i], round(float(share[i]), 4)) for i in order if share[i] > 0)
        return Verdict(score, threshold, int(alarm), top)
