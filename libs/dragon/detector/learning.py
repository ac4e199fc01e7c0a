"""Learning a model from the LEI's own normal operation, when no checkpoint is given.

The learner waits until every host has been recorded for ``DRAGON_DETECTOR_WARMUP``
seconds (and at least ``DRAGON_DETECTOR_WARMUP_MIN_SAMPLES`` samples), takes the
training lock in Redis so only one replica trains, trains on the recorded windows
of all hosts, and publishes the checkpoint; every replica then serves it.

Once a model is served, :class:`FineTuner` keeps it adapted: the replica scoring a host feeds
the confidence gate with the host's normal windows, and when the gate fires it fine-tunes a
copy of the model in a background thread and publishes the result the same way.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import redis
import structlog

from dragon.detector.checkpoint import Checkpoint
from dragon.detector.config import DetectorConfig
from dragon.detector.finetune import (
    ConfidenceGate,
    TuningGroup,
    Unconfirmed,
    confidence,
    enough_to_recalibrate,
    fine_tune_groups,
    host_groups,
    lei_confidence,
    lei_groups,
    model_age_s,
    stacked,
)
from dragon.detector.gon import GonConfig
from dragon.detector.lei import LeiStep, lei_trace, train_from_lei
from dragon.detector.modelstore import ModelStore
from dragon.detector.scorer import Scorer
from dragon.detector.train import train_from_series
from dragon.detector.tunerstate import HostPair, TunerState
from dragon.logs import EveryInterval
from dragon.messages.schemas import HOST_METRICS
from dragon.mqtt import Counters
from dragon.store import StoredSample, WindowStore, redis_for_now, sampling_interval, unavailable_for_now

log = structlog.get_logger(__name__)
T = TypeVar("T")

CHECK_INTERVAL_S = 2.0
LEI_STEPS = "lei"  # the one stream of a model of the LEI's steps, as a host's own windows are one each
WRITE_WARNING_INTERVAL_S = 60.0  # at most one finetune_state_not_written line this often
RETRY_AFTER_FAILURE_S = 60.0  # after a record that could not make a model: gather more first
# A host silent this many of its intervals (as the silence watch's default) while others send is
# not part of the LEI now, and not waited for; nor one silent GONE_FLOOR_S, whatever its interval.
GONE_AFTER_INTERVALS = 10
GONE_FLOOR_S = 60.0
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


def _gone(samples: list[StoredSample], newest: float) -> bool:
    """Whether a host whose stored samples are ``samples`` has sent nothing for GONE_AFTER_INTERVALS
    of its intervals (GONE_FLOOR_S at least) before the LEI's ``newest`` sample."""
    interval = sampling_interval([s.ts for s in samples]) or 0.0
    return newest - samples[-1].ts > max(GONE_AFTER_INTERVALS * interval, GONE_FLOOR_S)


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
        replaces: str | None = None,
        may_replace: Callable[[str | None], bool] | None = None,
    ) -> None:
        self.config = config
        self.windows = windows
        self.models = models
        self.stop = stop
        self.instance = instance
        self.replaces = replaces  # the id of a model in Redis nobody can use, learnt over; None: no model yet
        # Asked before publishing over a model: whether that is still wanted (following.ModelFollower).
        self.may_replace = may_replace or (lambda model_id: True)
        self._thread = threading.Thread(target=self._run, name="detector-learner", daemon=True)
        self._said: tuple[list[str], list[str]] | None = None  # the hosts last logged as waited for, left out

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self.stop.wait(CHECK_INTERVAL_S):
            try:
                if self._learn_once():
                    return
            except redis.RedisError as exc:
                if unavailable_for_now(exc):  # away, or refusing writes (full): wait
                    log.warning("learner_waiting_for_redis", error=str(exc))
                    continue
                self._failed(exc)
            except Exception as exc:
                # Whatever it was (a record that cannot make a model yet, torch out of memory on a
                # Pi): a learner that died would leave the LEI without a model, every replica
                # healthy and judging nothing.
                self._failed(exc)

    def _learn_once(self) -> bool:
        """Learn and publish a model if the record is ready and nobody has, in place of the one it
        ``replaces`` or as the LEI's first; True when there is another model (ours or a replica's)."""
        if self._model_published():
            return True  # another replica trained it (or put a usable model back): nothing to learn
        history = self._ready_history()
        if history is None or not self.models.try_lock(self.instance):
            return False
        try:
            # Looked at again under the lock: a replica that published and unlocked while we read
            # the record would see its model overwritten, and every replica recalibrate.
            if not self._model_published():
                self._train(history)
        finally:
            self.models.unlock(self.instance)
        return True

    def _model_published(self) -> bool:
        return self.models.current_id() not in (None, self.replaces)

    def _failed(self, error: Exception) -> None:
        log.error(
            "learning_failed_will_retry", error=str(error), kind=type(error).__name__, retry_in_s=RETRY_AFTER_FAILURE_S
        )
        self.stop.wait(RETRY_AFTER_FAILURE_S)

    def _ready_history(self) -> dict[str, list[StoredSample]] | None:
        """Every current host's stored samples, once each has been recorded long enough.

        A host that stopped sending long before the others (renamed, removed, a collector that ran
        a moment under a wrong name) is left out: waiting for it would keep the LEI without a model
        for good. Which hosts are left out, or waited for, is logged when it changes.
        """
        stored = {host: samples for host in self.windows.hosts() if (samples := self.windows.all_stored(host))}
        if not stored:
            return None
        newest = max(samples[-1].ts for samples in stored.values())
        current = {host: samples for host, samples in stored.items() if not _gone(samples, newest)}
        now = time.time()
        waiting = sorted(
            host
            for host, samples in current.items()
            if len(samples) < self.config.warmup_min_samples or now - samples[0].ts < self.config.warmup_s
        )
        left_out = sorted(set(stored) - set(current))
        if (waiting, left_out) != self._said:
            self._said = (waiting, left_out)
            log.info("learner_waiting", waiting_for=waiting, left_out_no_recent_sample=left_out)
        return None if waiting else current

    def _train(self, history: dict[str, list[StoredSample]]) -> None:
        scope = self.config.scope
        log.info("learning_normal_operation", scope=scope, hosts=len(history), samples=sum(map(len, history.values())))
        checkpoint = train_recorded(
            history,
            gon_config(self.config),
            pot_q=self.config.pot_q,
            pot_level=self.config.pot_level,
            broker_host=self.config.broker_host,
            lei=self.windows.lei,
        )
        # Over what we learnt to replace (or no model): one another replica published meanwhile stays.
        expected = self.models.current_id()
        wanted = expected in (None, self.replaces) and self.may_replace(expected)
        if wanted and self.models.replace(checkpoint, expected):
            return
        log.info("learnt_model_discarded", model_id=checkpoint.model_id, current=expected)


def gon_config(config: DetectorConfig, **overrides: Any) -> GonConfig:
    """The model the detector learns from what its LEI recorded, as configured."""
    return GonConfig(
        n_features=len(HOST_METRICS),
        window=config.window,
        epochs=config.train_epochs,
        scope=config.scope,
        fault_score=config.fault_score,
        # The graph part means something only over many hosts; per host, keep the default.
        topology=config.topology if config.scope == "lei" else GonConfig.topology,
        **overrides,
    )


def train_recorded(
    history: Mapping[str, Sequence[StoredSample]],
    cfg: GonConfig,
    *,
    pot_q: float,
    pot_level: float,
    broker_host: str = "",
    lei: str = "lei",
    progress: bool = False,
) -> Checkpoint:
    """A model of what an LEI recorded (every host's samples, oldest first), of scope ``cfg.scope``.

    Scope ``host``: one model for every host's window on its own. Scope ``lei``: one model of
    all hosts at once, with their tasks, schedule and graph (``lei.py``).
    """
    source = f"redis:{lei}"
    if cfg.scope == "lei":
        recorded = lei_trace(history, HOST_METRICS, broker_host, lei)
        return train_from_lei(
            recorded, cfg, min_span=min_span(), pot_q=pot_q, pot_level=pot_level, progress=progress, source=source
        )
    series = [np.asarray([s.vector for s in samples], dtype=np.float64) for samples in history.values()]
    return train_from_series(
        series,
        HOST_METRICS,
        cfg,
        min_span=min_span(),
        pot_q=pot_q,
        pot_level=pot_level,
        progress=progress,
        source=source,
    )


class FineTuner:
    """Confidence-gated fine-tuning of the served model (``finetune.py``), for one replica.

    :meth:`observe` (a model of single hosts) or :meth:`observe_steps` (a model of the LEI)
    runs on the scoring thread and costs one forward pass of D; the fine-tune itself runs in a
    background thread on a model rebuilt from the checkpoint's weights (generation toggles
    ``requires_grad`` on the model it climbs, so the scorer's model must never be shared with
    another thread). The model-training lock in Redis lets one replica fine-tune at a time, and
    the result replaces the current model only if that is still the model it was tuned from.
    With ``state``, the clean windows kept and the gate's floors are also written to Redis: the
    windows come back when the replica starts (:meth:`restore`), the floors of the served model
    whenever a model starts being served (``_follow``), see ``tunerstate.py``.
    """

    def __init__(
        self,
        config: DetectorConfig,
        models: ModelStore,
        instance: str,
        lei: str,
        state: TunerState | None = None,
        counters: Counters | None = None,
    ) -> None:
        self.config = config
        self.models = models
        self.instance = instance
        self.lei = lei
        self.state = state
        # fine_tunes_served, finetune_state_not_written, finetune_state_contended
        self.counters = counters if counters is not None else Counters()
        # While Redis refuses writes, every scored batch would log one: one line a minute instead.
        self._write_warnings = EveryInterval(WRITE_WARNING_INTERVAL_S)
        self._failed_writes = 0
        self.gate = ConfidenceGate(
            config.finetune_min_interval_s, config.finetune_quantile, reference=config.finetune_reference
        )
        # Raw (W_t, W_{t+1}) pairs of normal windows of the hosts this replica scores.
        self._normal: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=config.finetune_windows)
        # LEI steps in which every host was clean, newest last, at most finetune_windows host windows.
        self._steps: deque[LeiStep] = deque()
        # Clean windows (steps) are kept only once DRAGON_POT_LAG later ones were clean too: a
        # fault's onset scores just under the threshold and must not be learnt as normal.
        self._unconfirmed: Unconfirmed[HostPair | LeiStep] = Unconfirmed(config.pot_lag)
        self._warned_small_store = False
        self._model_id: str | None = None
        self._thread: threading.Thread | None = None

    def restore(self) -> None:
        """Load the LEI's clean windows kept in Redis; those the served model cannot take go at :meth:`_follow`.

        A replica that starts learns on from where the LEI was instead of waiting for hundreds
        of clean windows again. Idempotent, so it can be retried while Redis is away (connection
        errors are the caller's to retry); any other Redis error starts with nothing kept.
        """
        if self.state is None:
            return
        try:
            pairs, steps = self.state.kept.pairs(), self.state.kept.steps()
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except redis.RedisError as exc:
            log.error("finetune_windows_not_restored", error=str(exc))
            return
        self._normal.clear()
        self._normal.extend(pairs)
        self._steps.clear()
        for step in steps:
            self._append_step(step)
        log.info("finetune_windows_restored", windows=len(self._normal), steps=len(self._steps))

    def forget(self, hosts: Iterable[str]) -> None:
        """Forget hosts that left the LEI: the gate's measures of them and the windows they hold
        unconfirmed. Those kept stay: they are normal operation all the same."""
        hosts = list(hosts)
        self.gate.forget(hosts)
        self._unconfirmed.forget(hosts)

    def drop_unconfirmed(self, hosts: Iterable[str] | None = None) -> None:
        """Drop the windows held unconfirmed of ``hosts`` (and the LEI steps they are in; None: all).
        Another replica judged their windows since: the next this one offers may come after a fault
        the held ones led into."""
        if hosts is None:
            self._unconfirmed = Unconfirmed(self.config.pot_lag)
        else:
            self._unconfirmed.forget([*hosts, LEI_STEPS])

    def observe(
        self, scorer: Scorer, hosts: list[str], prev: np.ndarray, nxt: np.ndarray, learnable: list[bool]
    ) -> None:
        """Windows (B, k, n) the scorer just judged, in raw units.

        ``learnable[i]``: judged normal, and its host clean for a whole window by then by every
        replica's verdicts (``Transition.clean_streak``): a host taken over may have had a fault
        this replica never saw, and the windows just after a fault hold its rows.
        """
        self._follow(scorer)
        values = confidence(scorer.model, scorer.scaler.transform(nxt))  # (B,)
        new_pairs: list[tuple[str, HostPair]] = []
        for i, (host, value, is_clean) in enumerate(zip(hosts, values.tolist(), learnable, strict=True)):
            self.gate.observe(host, value, is_clean)
            new_pairs += [(host, pair) for pair in self._unconfirmed.offer(host, (prev[i], nxt[i]), is_clean)]
        self._normal.extend(pair for _, pair in new_pairs)
        # _persist calls nothing when there is nothing new (zip of no pairs would give no arguments).
        self._persist(lambda state: state.kept.keep_pairs(*zip(*new_pairs, strict=True)), windows=len(new_pairs))
        self._persist_new_floors(scorer)
        full = len(self._normal) == self._normal.maxlen
        if enough_to_recalibrate(scorer.checkpoint, len(self._normal), full):
            kept = list(self._normal)  # stacked only if the gate fires: not on every scored batch
            self._fire_if_drifted(scorer, lambda checkpoint: host_groups(checkpoint, *stacked(kept)))

    def observe_steps(
        self, scorer: Scorer, steps: Sequence[LeiStep], normal: Sequence[bool], clean: Mapping[str, int]
    ) -> None:
        """LEI steps the scorer just judged; ``normal`` has one flag per judged sample, in step order.

        ``clean`` is each host's count of clean windows in a row after this batch, from Redis
        (``HostFaultState.clean_streaks``), so the hosts other replicas judge count too. A step
        is kept for fine-tuning only when every host in it had been clean for k windows by then,
        since every host window of a step is learnt as real; for a step with later steps in the
        batch, each later step is assumed to have brought every host one more window.
        """
        self._follow(scorer)
        flags = iter(normal)
        new_steps: list[LeiStep] = []
        for index, (step, values) in enumerate(zip(steps, lei_confidence(scorer, steps), strict=True)):
            step_normal = [next(flags) for _ in step.judged]  # a redelivered (stale) window is not normal
            later = len(steps) - 1 - index
            for (h, sample), is_normal in zip(step.judged, step_normal, strict=True):
                learnable = is_normal and clean_for(clean, sample.host, later, scorer.window)
                self.gate.observe(sample.host, float(values[h]), learnable)
            fresh_and_clean = all(clean_for(clean, host, later, scorer.window) for host in step.hosts)
            for confirmed in self._unconfirmed.offer(LEI_STEPS, step, all(step_normal) and fresh_and_clean):
                self._warn_if_store_too_small(confirmed)
                self._append_step(confirmed)
                new_steps.append(confirmed)
        self._persist(lambda state: state.kept.keep_steps(new_steps), windows=sum(len(s.hosts) for s in new_steps))
        self._persist_new_floors(scorer)
        windows = sum(len(s.hosts) for s in self._steps)
        # Full: another step as large as the newest would push the oldest out.
        full = bool(self._steps) and windows + len(self._steps[-1].hosts) > self.config.finetune_windows
        if len(self._steps) >= 2 and enough_to_recalibrate(scorer.checkpoint, windows, full):
            kept = list(self._steps)
            self._fire_if_drifted(scorer, lambda checkpoint: lei_groups(checkpoint, kept))

    def _append_step(self, step: LeiStep) -> None:
        self._steps.append(step)
        while sum(len(s.hosts) for s in self._steps) > self.config.finetune_windows:
            self._steps.popleft()

    def _persist(self, write: Callable[[TunerState], T], **what: int) -> T | None:
        """Write to Redis what a restart should find; None when it could not (it stays in memory only).

        Best effort, never raised into the scoring thread: a write Redis refuses (away, out of
        memory, read-only) is counted and logged at most once a minute; one that other replicas'
        writes kept from going through (``GateFloors.settle`` giving up) is counted apart.
        """
        if self.state is None or not any(what.values()):
            return None
        try:
            written = write(self.state)
        except redis.WatchError as exc:
            self.counters.add("finetune_state_contended")
            log.info("finetune_state_contended", error=str(exc), **what)
            return None
        except redis.RedisError as exc:
            self.counters.add("finetune_state_not_written")
            self._failed_writes += 1
            held_back = self._write_warnings.due()
            if held_back is not None:
                log.warning("finetune_state_not_written", error=str(exc), similar_held_back=held_back, **what)
            return None
        if self._failed_writes:
            log.info("finetune_state_written_again", failed_writes=self._failed_writes)
            self._failed_writes = 0
            self._write_warnings.reset()  # the next outage's first line comes at once
        return written

    def _persist_new_floors(self, scorer: Scorer) -> None:
        """Store the floors just measured; where another was stored first under this model, adopt it."""
        floors, how = self.gate.new_floors(), self.gate.how_measured
        in_force = self._persist(lambda state: state.floors.settle(scorer.model_id, how, floors), floors=len(floors))
        if in_force is None:
            return  # not stored: handed out again with the next batch
        for host, floor in in_force.items():
            self.gate.adopt_floor(host, floor)
        self.gate.floors_stored(in_force)

    def _stored_floors(self, model_id: str) -> dict[str, float]:
        if self.state is None:
            return {}
        try:
            return self.state.floors.load(model_id, self.gate.how_measured)
        except redis.RedisError as exc:
            log.warning("gate_floors_not_read", error=str(exc))
            return {}

    def _drop_other_shapes(self, scorer: Scorer) -> None:
        """Forget kept windows the served model cannot learn from: of the other scope (pairs for a
        model of the LEI, steps for one of single hosts), or of another window length or metric count."""
        shape = (scorer.window, len(scorer.checkpoint.feature_names))
        by_host, by_lei = scorer.scope == "host", scorer.scope == "lei"
        pairs = [pair for pair in self._normal if by_host and pair[1].shape == shape]
        steps = [step for step in self._steps if by_lei and step.next.shape[1:] == shape]
        dropped = len(self._normal) - len(pairs) + len(self._steps) - len(steps)
        if dropped:
            self._normal.clear()
            self._normal.extend(pairs)
            self._steps.clear()
            self._steps.extend(steps)
            log.info("kept_windows_of_another_shape_dropped", dropped=dropped, window=shape[0], metrics=shape[1])

    def _warn_if_store_too_small(self, step: LeiStep) -> None:
        """Once: a store that cannot hold two steps of this LEI never fine-tunes (one needs two)."""
        if 2 * len(step.hosts) > self.config.finetune_windows and not self._warned_small_store:
            self._warned_small_store = True
            log.warning(
                "finetune_windows_too_few_for_this_lei",
                finetune_windows=self.config.finetune_windows,
                hosts_per_step=len(step.hosts),
                needed=2 * len(step.hosts),
            )

    def _follow(self, scorer: Scorer) -> None:
        if scorer.model_id != self._model_id:
            self._model_id = scorer.model_id
            # A new model: a new reference, and the interval starts again, from when the model
            # was made. The kept windows stay: they are the LEI's normal operation, whichever
            # model judged them. Floors measured under this model by a gate like ours (before a
            # restart) count again.
            self.gate.reset(model_age_s(scorer.checkpoint))
            self._drop_other_shapes(scorer)
            # Held windows may be of the other scope's kind or shape: at most DRAGON_POT_LAG lost each.
            self.drop_unconfirmed()
            floors = self._stored_floors(scorer.model_id)
            for host, floor in floors.items():
                self.gate.adopt_floor(host, floor)
            if floors:
                log.info("gate_floors_restored", model_id=scorer.model_id, hosts=len(floors))

    def _fire_if_drifted(self, scorer: Scorer, groups: Callable[[Checkpoint], list[TuningGroup]]) -> None:
        drifted = self.gate.check()
        if not drifted or self.busy:
            return
        log.info(
            "model_confidence_dropped",
            model_id=scorer.model_id,
            hosts=drifted,
            confidence={h: round(self.gate.mean_recent(h), 4) for h in drifted},
            floor={h: round(self.gate.floor(h), 4) for h in drifted},
        )
        self._thread = threading.Thread(
            target=self._run, args=(scorer.checkpoint, groups), name="detector-finetune", daemon=True
        )
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self, checkpoint: Checkpoint, groups: Callable[[Checkpoint], list[TuningGroup]]) -> None:
        try:
            if not self.models.try_lock(self.instance):
                log.info("fine_tune_skipped_lock_held", model_id=checkpoint.model_id)
                return
        except redis.RedisError as exc:
            if not unavailable_for_now(exc):
                raise
            log.warning("fine_tune_skipped_redis", error=str(exc))
            return
        try:
            self._fine_tune(checkpoint, groups(checkpoint))
        except Exception:  # a background thread: log, never die silently; the gate fires again later
            log.exception("fine_tune_failed", model_id=checkpoint.model_id)
        finally:
            # Redis away or refusing writes: the lock expires on its own (LOCK_TTL_S).
            redis_for_now(lambda: self.models.unlock(self.instance))

    def _fine_tune(self, checkpoint: Checkpoint, groups: list[TuningGroup]) -> None:
        started = time.perf_counter()
        tuned = fine_tune_groups(checkpoint, groups, steps=self.config.finetune_steps, source=f"redis:{self.lei}")
        tune_s = time.perf_counter() - started
        if not self.models.replace(tuned, checkpoint.model_id, checkpoint.revision):
            log.info("fine_tuned_model_discarded_newer_model", fine_tuned_from=checkpoint.model_id)
            return
        self.counters.add("fine_tunes_served")
        report = tuned.meta["fine_tune"]
        log.info(
            "model_fine_tuned",
            model_id=tuned.model_id,
            fine_tuned_from=checkpoint.model_id,
            windows=report["windows"],
            steps=report["steps"],
            seconds=round(tune_s, 3),
            publish_seconds=round(time.perf_counter() - started - tune_s, 3),
            loss=(round(report["before"]["loss"], 4), round(report["after"]["loss"], 4)),
            d_real=(round(report["before"]["d_real"], 4), round(report["after"]["d_real"], 4)),
            d_gen=(round(report["before"]["d_gen"], 4), round(report["after"]["d_gen"], 4)),
            threshold=round(tuned.pot_state().z_q, 4),
        )


def clean_for(clean: Mapping[str, int], host: str, later: int, window: int) -> bool:
    """Whether ``host`` had been clean for a whole ``window`` at its window ``later`` windows before
    the end of the batch (``clean``: the streaks after it)."""
    return clean.get(host, 0) - later >= window
