"""Learning a model from the LEI's own normal operation, when no checkpoint is given.

The learner waits until every host has been recorded for ``DRAGON_DETECTOR_WARMUP``
seconds (and at least ``DRAGON_DETECTOR_WARMUP_MIN_SAMPLES`` samples), takes the
training lock in Redis so only one replica trains, trains on the recorded windows
of all hosts, and publishes the checkpoint; every replica then serves it.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import redis
import structlog

from dragon.detector.config import DetectorConfig
from dragon.detector.gon import GonConfig
from dragon.detector.modelstore import ModelStore
from dragon.detector.train import train_from_series
from dragon.messages.schemas import HOST_METRICS
from dragon.store import WindowStore

log = structlog.get_logger(__name__)

CHECK_INTERVAL_S = 2.0
# Smallest span of each metric for min-max scaling, in the sample's units: fractions for
# cpu/ram/swap, bytes/s for I/O. A metric that barely moved while learning would otherwise
# turn noise into huge scaled values.
MIN_SPAN = {
    "cpu": 0.05,
    "ram": 0.05,
    "swap": 0.05,
    "disk_read": 1e6,
    "disk_write": 1e6,
    "net_rx": 1e5,
    "net_tx": 1e5,
}


def min_span() -> list[float]:
    return [MIN_SPAN[name] for name in HOST_METRICS]


class OnlineLearner:
    def __init__(
        self,
        config: DetectorConfig,
        windows: WindowStore,
        models: ModelStore,
        stop: threading.Event,
        instance: str,
    ) -> None:
        self.config = config
        self.windows = windows
        self.models = models
        self.stop = stop
        self.instance = instance
        self._thread = threading.Thread(target=self._run, name="detector-learner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self.stop.wait(CHECK_INTERVAL_S):
            try:
                if self.models.current_id() is not None:
                    return  # a model exists (another replica trained it): nothing to learn
                series = self._ready_series()
                if series is not None and self.models.try_lock(self.instance):
                    try:
                        self._train(series)
                    finally:
                        self.models.unlock(self.instance)
                    return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("learner_waiting_for_redis", error=str(exc))

    def _ready_series(self) -> list[np.ndarray] | None:
        hosts = self.windows.hosts()
        if not hosts:
            return None
        now = time.time()
        series = []
        for host in hosts:
            samples = self.windows.all_samples(host)
            if len(samples) < self.config.warmup_min_samples or now - samples[0][0] < self.config.warmup_s:
                return None
            series.append(np.asarray([row for _, row in samples], dtype=np.float64))
        return series

    def _train(self, series: list[np.ndarray]) -> None:
        log.info("learning_normal_operation", hosts=len(series), samples=sum(len(s) for s in series))
        cfg = GonConfig(n_features=len(HOST_METRICS), window=self.config.window, epochs=self.config.train_epochs)
        checkpoint = train_from_series(
            series,
            HOST_METRICS,
            cfg,
            min_span=min_span(),
            pot_q=self.config.pot_q,
            pot_level=self.config.pot_level,
            source=f"redis:{self.windows.lei}",
        )
        self.models.publish(checkpoint)
