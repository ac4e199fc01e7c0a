"""The detector service: host samples in, windows in Redis, fault events out.

Every replica receives every sample on a persistent subscription and stores it
(idempotently) in Redis; each host is scored by one replica (see
``membership.py``). Windows, the fault state and streaming threshold of each host
and the model live in Redis, so any replica can take over any host. The replica
scoring a host also watches the model's confidence on its normal windows and
fine-tunes the model when it drops (``learning.FineTuner``).

Predicted mode (DRAGON Alg. 2 line 4): the simulator forecasts each host's next sample; the
replica scoring the host judges W_t followed by that forecast the same way, with a fault state
and threshold of their own, and publishes ``mode: predicted`` verdicts and events. Forecasts
never enter the windows, the training record or fine-tuning.
"""

from __future__ import annotations

import math
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import structlog

from dragon.detector.checkpoint import Checkpoint, CheckpointError
from dragon.detector.clocks import ClockWatch
from dragon.detector.config import DetectorConfig
from dragon.detector.following import ModelFollower
from dragon.detector.health import (
    HostFaultState,
    HostWindowT,
    MissedWindow,
    SampleWindow,
    Transition,
    gaps_before,
    unjudged,
)
from dragon.detector.learning import FineTuner, OnlineLearner
from dragon.detector.lei import LeiStep, forecast_steps, history_needed, read_together, steps_to_judge
from dragon.detector.membership import Membership
from dragon.detector.modelstore import ModelStore
from dragon.detector.scorer import Scorer, Verdict
from dragon.detector.silence import STAMPS_TO_REMEMBER, SilenceWatch
from dragon.detector.thresholds import HostThreshold, ThresholdStore
from dragon.detector.tunerstate import TunerState
from dragon.lateness import FORGET_AFTER_S
from dragon.logs import EveryInterval
from dragon.messages import codec, topics
from dragon.messages.codec import DecodeError
from dragon.messages.schemas import (
    VERDICT_MODES,
    FaultEvent,
    ForecastSample,
    HostHealth,
    HostSample,
    MetricContribution,
)
from dragon.mqtt import QUEUED, Counters, Incoming, MqttClient, Unprocessed
from dragon.service.lifecycle import Lifecycle
from dragon.service.replicas import SLOT_TTL_S, NoFreeSlot, ReplicaSlot, SlotTaken
from dragon.store import (
    StopRequested,
    WindowStore,
    connect,
    padded_window,
    redis_for_now,
    retry_until,
    rows_until,
)

log = structlog.get_logger(__name__)

SERVICE = "detector"
EVENT_NAMESPACE = uuid.UUID("6c1f7a52-3f0e-4d8e-9a52-0b5a4d1d2a10")
MODEL_CHECK_INTERVAL_S = 5.0
NOT_JUDGING_CHECK_S = 1.0  # serving no model, or not the LEI's: looked at more often, not every batch
T = TypeVar("T")
ThresholdStates = dict[str, HostThreshold] | None  # per host; None: the model's static threshold
# A forecast follows its sample within milliseconds: its W_t ends among the host's newest samples.
FORECAST_HISTORY_SLACK = 8
# The outbox of fault events (health.py): looked through this often for events the broker never
# got; one is sent again once it is this old (its own sender had time to get its acknowledgement),
# and given up, logged, after a day.
OUTBOX_SWEEP_S = 10.0
OUTBOX_RESEND_AFTER_S = 30.0
OUTBOX_KEEP_S = 86_400.0
# An event sent and not answered this long is sent again by the sweep (a lost answer, a long outage).
ACKNOWLEDGEMENT_PATIENCE_S = 600.0
MAX_EVENT_BYTES = 65_536
# Stored samples of a host nobody judged (health.MissedWindow) judged late, at most this many per
# host and batch, the newest: a replica killed without leaving leaves HEARTBEAT_TTL_S worth of them
# (10 at one sample a second).
MAX_MISSED_PER_HOST = 120
# A fault in force by a replica's last verdict of a host is restored where Redis lost the host's
# state (health.py) only for a window at most this many intervals later: the host's next, as good
# as, not one after a spell in which another replica may have judged (and ended) it.
BELIEF_INTERVALS = 2.0
# How often the worker looks for hosts gone silent (dragon.detector.silence), after a batch.
SILENCE_CHECK_S = 1.0
FORGET_EVERY_S = 60.0  # hosts that left (FORGET_AFTER_S) are looked for this often, not per batch
# With DRAGON_FAULT_START_WINDOWS > 1, a run of alarms goes on across at most this many of the
# host's intervals between two of its windows: one sample lost does not break it, a spell does
# (a fault must not be dated back to an alarm before the host went away).
RUN_GAP_INTERVALS = 2.5


@dataclass(frozen=True)
class Judged:
    """What a verdict is about: ``ts`` orders a host's verdicts, ``window_ts`` is the window's end.

    Observed, both are the sample's time; predicted, ``ts`` is the forecast's and ``window_ts`` the
    time it forecasts.
    """

    host: str
    ts: float
    window_ts: float
    interval_s: float = 0.0  # the host's sampling interval (0: not known)

    @classmethod
    def sample(cls, sample: SampleWindow) -> Judged:
        return cls(sample.host, sample.ts, sample.ts, sample.interval_s)

    @classmethod
    def forecast(cls, forecast: ForecastSample) -> Judged:
        return cls(forecast.host, forecast.ts, forecast.for_ts, forecast.for_ts - forecast.based_on_ts)


@dataclass(frozen=True)
class Scored:
    """Verdicts of one batch and the raw windows they judged, row i for verdict i."""

    verdicts: list[tuple[SampleWindow, Verdict]]  # samples, and stored samples judged late
    prev: np.ndarray  # (B, k, n) W_t
    next: np.ndarray  # (B, k, n) W_{t+1}
    steps: list[LeiStep] = field(default_factory=list)  # scope lei: the LEI steps the verdicts come from


def mode_counter(mode: str, name: str) -> str:
    """A counter's name in ``mode``: observed keeps ``name``, other modes prefix it (``predicted_windows_scored``),
    so the counters an operator reads (``dragon/detector/<instance>/counters``) follow one rule."""
    return name if mode == "observed" else f"{mode}_{name}"


class Detector:
    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.lei = config.common.service.lei
        self.instance = config.common.service.instance_id
        self.lifecycle = Lifecycle(config.common.service.health_file)
        self.counters = Counters()
        self.scorer: Scorer | None = None
        self._scorer_lock = threading.Lock()
        self._last_model_check = 0.0
        self.learner: OnlineLearner | None = None
        self._health: dict[tuple[str, str], HostHealth] = {}  # last verdict per (host, mode), republished on reconnect
        # (host, mode) -> since when a fault was in force by our last verdict, and that verdict's ts
        self._in_force: dict[tuple[str, str], tuple[float, float]] = {}
        # Events on their way, which the outbox sweep must not send again: those whose transition
        # is being recorded (id -> mode), and those paho has, not acknowledged yet (id -> mode).
        self._recording: dict[str, str] = {}
        self._unacknowledged: dict[str, tuple[str, float]] = {}  # id -> (mode, monotonic time sent)
        self._unreadable_outbox = EveryInterval(60.0)
        self._acknowledged: dict[str, str] = {}  # acknowledged, still to be taken out of the outbox
        self._outbox_lock = threading.Lock()  # the worker sends events, the main thread settles them
        self._outbox_swept_at = 0.0
        self._last_judged: dict[str, dict[str, float | None]] = {}  # mode -> host -> newest window in Redis
        self.tuner: FineTuner | None = None
        self.silence = SilenceWatch(config.silent_intervals)
        self.clocks = ClockWatch()
        self._silence_checked_at = 0.0  # time.monotonic()
        self._reported_silent: dict[str, float] = {}  # host -> the last sample of its silence reported
        self._forgot_at = 0.0  # time.monotonic() of the last look for hosts that left
        self._republish_owed = False  # a reconnect's republish_state could not read Redis
        self.slot: ReplicaSlot | None = None  # without DRAGON_INSTANCE: the replica's name (replicas.py)
        self._slot_lost = False
        self._benched = False  # out of the membership: no model we can serve

    # --- lifecycle --------------------------------------------------------------
    def run(self) -> None:
        self.lifecycle.install_signal_handlers()
        self.init_redis()
        self.init_silence()
        self.init_fine_tuner()
        self.init_model()
        self._keep_slot()  # loading the model may have outlasted our slot: never connect under another's name
        self.init_mqtt()
        self.start_learner()  # before MQTT: from then on only its worker starts learners
        self.start_mqtt()
        try:
            self.wait()
        finally:
            self.shutdown()

    def init_redis(self) -> None:
        self.redis = connect(self.config.redis)
        if not self.config.common.service.instance:
            self._claim_slot()
        self.windows = WindowStore(self.redis, self.lei, self.config.history)
        clear, start = self.config.clear_windows, self.config.start_windows
        self.faults = {mode: HostFaultState(self.redis, self.lei, clear, mode, start) for mode in VERDICT_MODES}
        self.thresholds = {mode: ThresholdStore(self.redis, self.lei, mode) for mode in VERDICT_MODES}
        self.models = ModelStore(self.redis, self.lei, self.config.model_dir)
        self.membership = Membership(self.redis, self.lei, self.instance)
        self.follower = ModelFollower(self.models, self.membership, self._serve, self._learn, self.lifecycle.stop)

    def init_silence(self) -> None:
        """Know the hosts the replicas before us heard, so that one silent since is reported."""
        hosts = retry_until(self.windows.hosts, self.lifecycle.stop, "known_hosts")
        stamps = retry_until(
            lambda: self.windows.newest_stamps(hosts, STAMPS_TO_REMEMBER), self.lifecycle.stop, "known_hosts"
        )
        self.silence.remember(stamps, time.monotonic())

    def _claim_slot(self) -> None:
        """Name this replica after the lowest free slot, so one that replaces it resumes its MQTT session."""
        self.slot = ReplicaSlot(self.redis, self.lei, SERVICE, socket.gethostname())
        try:
            self.instance = retry_until(self.slot.claim, self.lifecycle.stop, "claim_replica_slot")
        except NoFreeSlot as exc:
            raise SystemExit(f"{exc}: set DRAGON_INSTANCE, or run fewer detector replicas") from None

    def init_model(self) -> None:
        """Serve the configured checkpoint, else the LEI's current model (``following.py``)."""
        self.follower.start(self._configured_checkpoint() if self.config.checkpoint else None)

    def _configured_checkpoint(self) -> Checkpoint:
        try:
            checkpoint = Checkpoint.load(self.config.checkpoint)
            Scorer(checkpoint)  # refuse a model trained on other features now, with the reason
            return checkpoint
        except (OSError, CheckpointError) as exc:
            log.error("checkpoint_unusable", path=self.config.checkpoint, error=str(exc))
            raise SystemExit(f"DRAGON_DETECTOR_CHECKPOINT={self.config.checkpoint}: {exc}") from None

    def init_fine_tuner(self) -> None:
        if self.config.finetune:
            state = TunerState.in_redis(
                self.redis, self.lei, self.config.finetune_windows, self.config.finetune_keep_for_s
            )
            self.tuner = FineTuner(self.config, self.models, self.instance, self.lei, state, self.counters)
            retry_until(self.tuner.restore, self.lifecycle.stop, "restore_kept_windows")

    def init_mqtt(self) -> None:
        self.mqtt = MqttClient(self.config.common.mqtt, SERVICE, self.instance, self.counters)
        self.mqtt.subscribe_batch(topics.host_samples(self.lei), self.on_samples, qos=1)
        if self.config.predicted:
            self.mqtt.subscribe_batch(topics.host_forecasts(self.lei), self.on_forecasts, qos=1)
        self.mqtt.on_connected(self.republish_state)
        # A broker restart cut the collectors off too: each may take a while to come back.
        self.mqtt.on_connected(lambda: self.silence.reconnected(time.monotonic()))

    def start_mqtt(self) -> None:
        self.mqtt.start()

    def start_learner(self) -> None:
        """Learn a model if none is served, over one nobody can use (a newer DRAGON's waits)."""
        if self.scorer is None and not self.follower.waiting:
            self._learn(self.follower.unusable)

    def _learn(self, replaces: str | None) -> None:
        if self.learner is not None and self.learner.alive:
            return
        if replaces is None:
            log.info("no_model_yet_learning_from_normal_operation", warmup_s=self.config.warmup_s)
        else:
            log.info("learning_in_place_of_a_model_nobody_can_use", replaces=replaces, warmup_s=self.config.warmup_s)
        self.learner = OnlineLearner(
            self.config,
            self.windows,
            self.models,
            self.lifecycle.stop,
            self.instance,
            replaces=replaces,
            may_replace=self.follower.may_replace,
        )
        self.learner.start()

    def wait(self) -> None:
        while not self.lifecycle.stop.wait(1.0):
            self._keep_slot()
            # Cut off from the broker, a replica stops beating, so the others take its hosts over.
            alive = self.mqtt.connected and self._heartbeat()
            self.lifecycle.healthy(alive)
            if alive:
                redis_for_now(lambda: self.settle_outbox(time.time()))  # else the next beat tries again

    def _keep_slot(self) -> None:
        """Renew our slot; if another replica took it, or may have (Redis out of reach for as long
        as a slot is held without renewal), leave: two clients under one MQTT id would take the
        session from each other for ever. The restart policy starts us again, under a free slot."""
        if self.slot is None:
            return
        try:
            if redis_for_now(self.slot.renew) or not self.slot.lapsed():
                return  # renewed, or Redis away for a moment: the next beat tries again
            reason = f"replica slot {self.instance} lapsed: Redis out of reach for {SLOT_TTL_S:.0f} s"
        except SlotTaken as exc:
            reason = str(exc)
        log.error("replica_slot_lost", slot=self.instance, reason=reason)
        self._slot_lost = True  # the name may be another replica's now: leave its membership alone
        raise SystemExit(reason)

    def shutdown(self) -> None:
        log.info("detector_stopping", counters=self.counters.snapshot())
        self.lifecycle.clear()
        if not self._slot_lost:  # hand our hosts over at once, not after the heartbeat expires
            redis_for_now(self.membership.leave)
        self.mqtt.stop()  # the last batch's events are acknowledged by now
        # Those still unacknowledged stay in the outbox: the hosts' next owner sends them again.
        redis_for_now(self._take_acknowledged)
        if self.slot is not None:
            redis_for_now(self.slot.release)  # disconnected by now: the next holder may take our session

    def _heartbeat(self) -> bool:
        """Beat while we can judge. A replica that cannot use the LEI's model (a newer version's,
        in a rolling upgrade) leaves: it would own hosts and never judge them, or judge them with
        another model than the others'. It comes back once it serves the LEI's model."""
        if self.follower.benched:
            if redis_for_now(self.membership.leave) and not self._benched:
                log.error("leaving_hosts_to_other_replicas", reason="the LEI's model is unusable here")
                self._benched = True
            return False
        self._benched = False
        return redis_for_now(self.membership.beat)

    # --- model ----------------------------------------------------------------------
    def _serve(self, checkpoint: Checkpoint) -> None:
        scorer = Scorer(checkpoint, self.config.pot_mode, self.config.pot_depth, self.config.pot_lag)
        self.windows.save_bounds(checkpoint.feature_names, checkpoint.lo, checkpoint.hi, scorer.model_id)
        with self._scorer_lock:
            self.scorer = scorer
        log.info(
            "model_serving",
            model_id=scorer.model_id,
            window=scorer.window,
            scope=scorer.scope,
            pot_mode=self.config.pot_mode,
        )

    def _refresh_model(self) -> None:
        """Pick up a model another replica (or the learner) published; mend one gone or unusable."""
        now = time.monotonic()
        if now - self._last_model_check < (MODEL_CHECK_INTERVAL_S if self.judging else NOT_JUDGING_CHECK_S):
            return
        self._last_model_check = now
        self.follower.check(self.scorer.checkpoint if self.scorer is not None else None)

    @property
    def judging(self) -> bool:
        """Whether this replica judges: it serves the LEI's model."""
        return self.scorer is not None and not self.follower.benched

    # --- samples --------------------------------------------------------------------
    def on_samples(self, batch: list[Incoming]) -> None:
        received = [(sample, m.received) for m in batch if (sample := self._decode(m)) is not None]
        samples = [sample for sample, _ in received]
        if not samples:
            return
        try:
            self._store(samples)
            self.silence.heard(samples, time.monotonic())
            self.clocks.heard(received)
            retry_until(self._refresh_model, self.lifecycle.stop, "refresh_model")
            # Not judging (no model yet, or not the LEI's): no hosts of ours, nothing to read for them.
            ours = self._owned(samples)
            owned = self._unjudged(ours, "observed")
            self._drop_held_judged_elsewhere({sample.host for sample in ours})
            if owned:
                owned = self._with_missed(owned)
                judge = {"host": self._score, "lei": self._score_lei}[self.scorer.scope]
                scored = retry_until(lambda: judge(owned), self.lifecycle.stop, "score")
                judged = [(Judged.sample(sample), verdict) for sample, verdict in scored.verdicts]
                transitions = self._publish(judged, "observed")
                self.counters.add("windows_scored", len(judged))
                self._count_late(scored, transitions)
                self._observe_confidence(scored, transitions)
            self._report_silent()
            self._forget_departed()
            if self._republish_owed:
                self.republish_state()
        except StopRequested as exc:
            raise Unprocessed(str(exc)) from None

    def _forget_departed(self) -> None:
        """Forget, in memory, the hosts no sample of which arrived for FORGET_AFTER_S: they left the
        LEI, and a replica running for months with hosts coming and going would otherwise keep
        every one (the silence watch's checks grow with the square of the hosts it knows). What
        Redis holds of them stays, as their retained health does: one that comes back is judged
        on from there, as a host this replica never saw."""
        now = time.monotonic()
        if now - self._forgot_at < FORGET_EVERY_S:
            return
        self._forgot_at = now
        # A host of ours whose silence is not reported yet (the next check will) is kept till it is.
        gone = [
            host
            for host, last_ts in self.silence.departed(now).items()
            if self._reported_silent.get(host) == last_ts or not self._reports_silence_of(host)
        ]
        if not gone:
            return
        self.silence.forget(gone)
        self.clocks.forget(gone)
        for host in gone:
            self._reported_silent.pop(host, None)
            for mode in VERDICT_MODES:
                self._health.pop((host, mode), None)
                self._in_force.pop((host, mode), None)
        if self.tuner is not None:
            self.tuner.forget(gone)
        if self.scorer is not None:
            self.scorer.forget(gone)
        log.info("hosts_forgotten", hosts=gone, silent_for_s=FORGET_AFTER_S)

    # --- forecasts (predicted mode) -------------------------------------------------
    def on_forecasts(self, batch: list[Incoming]) -> None:
        forecasts = [f for f in (self._decode(m, ForecastSample) for m in batch) if f is not None]
        if not forecasts:
            return
        try:
            retry_until(self._refresh_model, self.lifecycle.stop, "refresh_model")
            owned = self._unjudged(self._owned(forecasts), "predicted")
            if not owned:
                return
            judge = {"host": self._score_forecasts, "lei": self._score_lei_forecasts}[self.scorer.scope]
            judged = retry_until(lambda: judge(owned), self.lifecycle.stop, "score_forecasts")
            self._publish(judged, "predicted")
            self.counters.add(mode_counter("predicted", "windows_scored"), len(judged))
        except StopRequested as exc:
            raise Unprocessed(str(exc)) from None

    def _drop_held_judged_elsewhere(self, hosts: set[str]) -> None:
        """The fine-tuner drops the windows it holds unconfirmed of each of ``hosts`` another
        replica judged since our last verdict (it owned the host a while): the fault they may
        have led into is among the windows we did not see."""
        if self.tuner is None:
            return
        elsewhere = [host for host in hosts if (host, "observed") in self._health and not self._still_ours(host)]
        if elsewhere:
            self.tuner.drop_unconfirmed(elsewhere)

    def _owned(self, items: list[HostWindowT]) -> list[HostWindowT]:
        """The items of the hosts this replica judges: none while it judges none."""
        return [item for item in items if self.membership.owns(item.host)] if self.judging else []

    def _unjudged(self, items: list[HostWindowT], mode: str) -> list[HostWindowT]:
        """The samples or forecasts not judged yet in ``mode``, each once: the rest would only be
        found stale after their generation. Every simulator replica forecasts every host and
        stamps its forecasts alike; a broker redelivers samples not acknowledged before a restart.
        """
        if not items:
            return items
        hosts = sorted({item.host for item in items})
        last = retry_until(lambda: self.faults[mode].last_judged(hosts), self.lifecycle.stop, "last_judged")
        self._last_judged[mode] = last  # tells whether our last verdict of a host is still its state
        fresh = unjudged(items, last)
        if len(fresh) < len(items):
            self.counters.add(mode_counter(mode, "windows_already_judged"), len(items) - len(fresh))
        return fresh

    def _with_missed(self, samples: list[HostSample]) -> list[SampleWindow]:
        """``samples`` after the stored samples of their hosts that nobody judged (MissedWindow),
        which are older: judged after them, the fault state would find them stale."""
        gaps = gaps_before(samples, self._last_judged["observed"])
        if not gaps:
            return samples  # the usual batch: no round trip
        spans = {host: (after, before) for host, (after, before, _) in gaps.items()}
        found = retry_until(
            lambda: self.windows.stamps_between(spans, MAX_MISSED_PER_HOST), self.lifecycle.stop, "missed_windows"
        )
        missed = [MissedWindow(host, ts, gaps[host][2]) for host, (stamps, _) in found.items() for ts in stamps]
        skipped = sum(left_out for _, left_out in found.values())
        if missed:
            log.info("judging_missed_windows", windows=len(missed), hosts=sorted({m.host for m in missed}))
        if skipped:
            self.counters.add("windows_never_judged", skipped)
            log.warning("missed_windows_not_judged", windows=skipped, kept_per_host=MAX_MISSED_PER_HOST)
        return [*missed, *samples]

    def _reports_silence_of(self, host: str) -> bool:
        """Whether this replica reports ``host``'s silences: it judges, owns the host, and silences are on."""
        return bool(self.config.silent_intervals) and self.judging and self.membership.owns(host)

    def _report_silent(self) -> None:
        """Report the hosts we own whose samples stopped while their LEI's others came on
        (silence.py), each silence once. Its verdict opens a fault as an alarm does, and the host's
        normal windows once it is back end it; a host in a fault already gets no second start."""
        now = time.monotonic()
        if not self.config.silent_intervals or not self.judging or now - self._silence_checked_at < SILENCE_CHECK_S:
            return
        self._silence_checked_at = now
        silent = {
            host: last_ts
            for host, last_ts in self.silence.silent(now).items()
            if self._reported_silent.get(host) != last_ts and self._reports_silence_of(host)
        }
        if not silent:
            return
        # Dated just after the host's last sample, when its silence began: the same for every
        # replica (one event id), and a sample of it that comes late (its collector was cut off)
        # is still newer, and judged.
        verdicts = []
        for host, last_ts in sorted(silent.items()):
            began = math.nextafter(last_ts, math.inf)
            # With its interval, so a run of alarms goes on to the silence only if its last
            # windows were judged (RUN_GAP_INTERVALS), not across windows no replica judged.
            verdicts.append((Judged(host, began, began, self.silence.interval(host)), Verdict.silent()))
        transitions = self._publish(verdicts, "observed")
        self._reported_silent.update(silent)
        for (judged, _), transition in zip(verdicts, transitions, strict=True):
            if transition.kind != "stale":  # else another replica reported it, or the host is back
                self.counters.add("silences_reported")
                log.warning(
                    "host_silent", host=judged.host, since=judged.window_ts, already_faulty=transition.kind != "start"
                )
        self._show_recorded_silences(verdicts, transitions)

    def _show_recorded_silences(self, verdicts: list[tuple[Judged, Verdict]], transitions: list[Transition]) -> None:
        """Publish the health of each silence found stale because Redis holds this very verdict: the
        reply to our own recording was lost and the retry found it done, or another replica's report
        came first. No window follows a silence to publish the host's health, so without this the
        broker would keep its last normal verdict while the fault is in force."""
        stale = [(j, v, t) for (j, v), t in zip(verdicts, transitions, strict=True) if t.kind == "stale"]
        if not stale:
            return
        faults = self.faults["observed"]
        hosts = [judged.host for judged, _, _ in stale]
        newest = retry_until(lambda: faults.last_judged(hosts), self.lifecycle.stop, "last_judged")
        for judged, verdict, transition in stale:
            if newest[judged.host] == judged.ts:
                self._publish_health(judged, verdict, transition, "observed")

    def _count_late(self, scored: Scored, transitions: list[Transition]) -> None:
        """Count the missed windows judged (not those another replica judged meanwhile)."""
        late = [
            transition.kind != "stale"
            for (window, _), transition in zip(scored.verdicts, transitions, strict=True)
            if isinstance(window, MissedWindow)
        ]
        if any(late):
            self.counters.add("windows_judged_late", sum(late))

    def _score_forecasts(self, forecasts: list[ForecastSample]) -> list[tuple[Judged, Verdict]]:
        """Eq. 13 with W_{t+1} the forecast: W_t is the host's window up to the sample it starts from."""
        scorer = self.scorer
        k = scorer.window
        until: dict[str, float] = {}
        for forecast in forecasts:
            until[forecast.host] = max(forecast.based_on_ts, until.get(forecast.host, forecast.based_on_ts))
        history = self.windows.rows_until(until, k + FORECAST_HISTORY_SLACK)
        judged, prev, nxt = [], [], []
        for forecast in forecasts:
            rows = rows_until(history[forecast.host], forecast.based_on_ts)
            if rows is None:
                # Its sample is not stored (yet, or any more): nothing to judge it against.
                self.counters.add("forecasts_without_window")
                continue
            judged.append(Judged.forecast(forecast))
            prev.append(padded_window(rows, k))
            nxt.append(padded_window([*rows, forecast.metrics.vector()], k))
        if not judged:
            return []
        prev_w, next_w = np.asarray(prev, dtype=np.float32), np.asarray(nxt, dtype=np.float32)
        return list(zip(judged, self._judge(scorer, judged, prev_w, next_w, "predicted"), strict=True))

    def _decode(self, message: Incoming, schema: type[HostSample | ForecastSample] = HostSample):
        decoded = self.mqtt.decode_or_drop(schema, message)
        if decoded is None:
            return None
        if decoded.lei != self.lei or topics.host_of(message.topic) != decoded.host:
            self.mqtt.drop(message, DecodeError("schema", "lei/host in the payload do not match the topic"))
            return None
        # Judged, one stamped ahead would make every real window of its host look judged already.
        if self.mqtt.dropped_if_ahead(message, decoded.ts, decoded.interval_s):
            return None
        return decoded

    def _store(self, samples: list[HostSample]) -> None:
        rows = [(s.host, s.ts, s.seq, s.metrics.vector(), {t.id: t.cpu for t in s.tasks}) for s in samples]
        retry_until(lambda: self.windows.append_many(rows), self.lifecycle.stop, "store_samples")
        self.counters.add("samples_stored", len(rows))

    def _score(self, samples: list[SampleWindow]) -> Scored:
        scorer = self.scorer
        k = scorer.window
        by_host: dict[str, list[SampleWindow]] = defaultdict(list)
        for sample in samples:
            by_host[sample.host].append(sample)
        # Up to each host's newest sample judged here: another replica may have stored newer ones.
        until = {host: max(sample.ts for sample in host_samples) for host, host_samples in by_host.items()}
        history = self.windows.rows_until(until, k + 1 + max(len(v) for v in by_host.values()))
        prev, nxt, order = [], [], []
        for host, host_samples in by_host.items():
            for sample in host_samples:
                rows = rows_until(history[host], sample.ts)
                if rows is None:
                    continue  # already trimmed away, or far older than the rest of its host's batch
                nxt.append(padded_window(rows, k))
                prev.append(padded_window(rows[:-1] or rows, k))
                order.append(sample)
        if len(order) < len(samples):
            self.counters.add("samples_not_judged", len(samples) - len(order))
            log.warning("samples_not_judged", count=len(samples) - len(order), scope="host")
        if not order:
            return Scored([], np.empty(0), np.empty(0))
        prev_w, next_w = np.asarray(prev, dtype=np.float32), np.asarray(nxt, dtype=np.float32)
        verdicts = self._judge(scorer, [Judged.sample(sample) for sample in order], prev_w, next_w, "observed")
        return Scored(list(zip(order, verdicts, strict=True)), prev_w, next_w)

    def _judge(self, scorer: Scorer, judged: list[Judged], prev: np.ndarray, nxt: np.ndarray, mode: str):
        """Scores and labels of windows, each by its host's threshold of ``mode``."""
        hosts, stamps = [j.host for j in judged], [j.ts for j in judged]
        return self._thresholded(scorer, hosts, mode, lambda states: scorer.score(hosts, stamps, prev, nxt, states))

    def _thresholded(self, scorer: Scorer, hosts: list[str], mode: str, judge: Callable[[ThresholdStates], T]) -> T:
        """``judge(states)`` with the hosts' streaming thresholds of ``mode`` (None: static), read
        once before and written once after (they learn from the scores)."""
        states = self._threshold_states(scorer, hosts, mode)
        verdicts = judge(states)
        if states is not None:
            self.thresholds[mode].save(states)
        return verdicts

    def _score_lei(self, samples: list[SampleWindow]) -> Scored:
        """Judge each sample with every host of the LEI at its step, their tasks, schedule and graph."""
        steps, per_step = self._judge_steps(samples, steps_to_judge, "observed")
        judged = [(step, h) for step in steps for h, _ in step.judged]
        if len(judged) < len(samples):
            # Only a sample already trimmed from Redis (far older than the history kept) is not
            # found; the per-host path skips those too, but say so.
            self.counters.add("samples_not_judged", len(samples) - len(judged))
            log.warning("samples_not_judged", count=len(samples) - len(judged), scope="lei")
        if not judged:
            return Scored([], np.empty(0), np.empty(0))
        verdicts = [pair for step in per_step for pair in step]
        prev_w = np.asarray([step.prev[h] for step, h in judged], dtype=np.float32)
        next_w = np.asarray([step.next[h] for step, h in judged], dtype=np.float32)
        return Scored(verdicts, prev_w, next_w, steps)

    def _score_lei_forecasts(self, forecasts: list[ForecastSample]) -> list[tuple[Judged, Verdict]]:
        """Eq. 13 over the whole LEI with each forecast in its host's W_{t+1} (lei.forecast_steps)."""
        _, per_step = self._judge_steps(forecasts, forecast_steps, "predicted")
        judged = [(Judged.forecast(forecast), verdict) for step in per_step for forecast, verdict in step]
        if len(judged) < len(forecasts):
            # Its sample is not stored (yet, or any more): nothing to judge it against.
            self.counters.add("forecasts_without_window", len(forecasts) - len(judged))
        return judged

    def _judge_steps(self, items: list, build_steps: Callable, mode: str) -> tuple[list[LeiStep], list[list]]:
        """The LEI steps ``build_steps`` makes of ``items`` from the stored history, and their verdicts."""
        scorer, k = self.scorer, self.scorer.window
        steps: list[LeiStep] = []
        for run in read_together(items, k):  # one history read per run of time, none across a gap
            history = self.windows.samples_until(*history_needed(run, k))
            steps += build_steps(run, history, k, self.config.broker_host)
        hosts = [step.hosts[h] for step in steps for h, _ in step.judged]
        if not hosts:
            return steps, []
        return steps, self._thresholded(scorer, hosts, mode, lambda states: scorer.score_steps(steps, states))

    def _threshold_states(self, scorer: Scorer, hosts: list[str], mode: str) -> ThresholdStates:
        """The hosts' streaming thresholds (None: static), read once per batch and written once after.

        No lock: each host is scored by one replica at a time (membership.py), so nobody else
        writes them between our read and our write.
        """
        if not scorer.streaming:
            return None
        unique = list(dict.fromkeys(hosts))
        stored = self.thresholds[mode].load(unique)
        if mode != "observed":
            # A host's first forecasts start from what its observed threshold has learnt (the
            # same model and score), not from the model's calibration: that one has not seen
            # this LEI's normal variation yet and alarms more until it has.
            fresh = [host for host in unique if stored[host] is None]
            if fresh:
                stored |= self.thresholds["observed"].load(fresh)
        return {host: scorer.resume(host, state) for host, state in stored.items()}

    def _publish(self, verdicts: list[tuple[Judged, Verdict]], mode: str) -> list[Transition]:
        updates = [(judged.host, judged.ts, verdict.label) for judged, verdict in verdicts]
        # The event a verdict would publish goes with it, so its transition keeps it in the outbox.
        events = self._possible_events(verdicts, mode)
        outbox = [("", b"") if event is None else (event.event_id, codec.encode(event)) for event in events]
        faults = self.faults[mode]
        recording = {event_id: mode for event_id, _ in outbox if event_id}
        believed = self._faults_in_force(verdicts, mode)
        at_once = [_opens_at_once(verdict) for _, verdict in verdicts]
        run_gaps = [RUN_GAP_INTERVALS * judged.interval_s for judged, _ in verdicts]
        with self._outbox_lock:
            self._recording |= recording
        try:
            transitions = retry_until(
                lambda: faults.update_many(updates, outbox, believed, at_once, run_gaps),
                self.lifecycle.stop,
                "fault_state",
            )
            self._send_transitions(verdicts, events, [payload for _, payload in outbox], transitions, mode)
        finally:
            with self._outbox_lock:
                for event_id in recording:
                    self._recording.pop(event_id, None)
        return transitions

    def _faults_in_force(self, verdicts: list[tuple[Judged, Verdict]], mode: str) -> dict[str, float]:
        """Since when a fault of each host was in force by our last verdict of it, where that verdict
        came just before the host's first of ``verdicts`` (BELIEF_INTERVALS): a replica that has not
        judged the host since (another took it over) may have missed the fault's end."""
        believed: dict[str, float] = {}
        for judged, _ in verdicts:
            if judged.host in believed or (judged.host, mode) not in self._in_force:
                continue
            since, last_ts = self._in_force[(judged.host, mode)]
            if 0 < judged.ts - last_ts <= BELIEF_INTERVALS * judged.interval_s:
                believed[judged.host] = since
        return believed

    def _send_transitions(
        self,
        verdicts: list[tuple[Judged, Verdict]],
        events: list[FaultEvent | None],
        payloads: list[bytes],
        transitions: list[Transition],
        mode: str,
    ) -> None:
        """Publish each verdict's health, and the event of each one that started or ended a fault."""
        for (judged, verdict), event, payload, transition in zip(verdicts, events, payloads, transitions, strict=True):
            if transition.kind == "stale":
                if verdict.cause == "score":  # a silence found stale was reported already
                    self.counters.add(mode_counter(mode, "stale_windows"))
                continue
            self._publish_health(judged, verdict, transition, mode)
            if transition.faulty_since is not None and transition.kind != "end":
                self._in_force[(judged.host, mode)] = (transition.faulty_since, judged.ts)
            else:
                self._in_force.pop((judged.host, mode), None)
            if transition.kind in {"start", "end"}:
                # None: our view of the host was out of date (another replica changed its state):
                # sent, but not kept in the outbox.
                if event is None:
                    self._send_event(self._event_of(judged, verdict, mode))
                else:
                    self._send_event(event, payload)

    def _observe_confidence(self, scored: Scored, transitions: list[Transition]) -> None:
        """Feed the fine-tuner the windows just judged; only normal windows of hosts not in a fault count.

        A window below the threshold while its host's fault has not ended yet (hysteresis), or a
        redelivered one, is not learnt from: a fault must never become normal.
        """
        if self.tuner is None or not scored.verdicts:
            return
        normal = [
            verdict.label == 0 and transition.kind == "" and transition.faulty_since is None
            for (_, verdict), transition in zip(scored.verdicts, transitions, strict=True)
        ]
        if scored.steps:
            # A step is learnt whole: every host in it must be clean, those others judge too.
            hosts = sorted({host for step in scored.steps for host in step.hosts})
            faults = self.faults["observed"]
            clean = retry_until(lambda: faults.clean_streaks(hosts), self.lifecycle.stop, "clean_streaks")
            self.tuner.observe_steps(self.scorer, scored.steps, normal, clean)
            return
        # Clean for a whole window by every replica's verdicts, as the transition counted them: a
        # host taken over may have had a fault this replica never saw.
        k = self.scorer.window
        learnable = [ok and t.clean_streak >= k for ok, t in zip(normal, transitions, strict=True)]
        hosts = [sample.host for sample, _ in scored.verdicts]
        self.tuner.observe(self.scorer, hosts, scored.prev, scored.next, learnable)

    def _publish_health(self, judged: Judged, verdict: Verdict, transition: Transition, mode: str) -> None:
        health = HostHealth(
            lei=self.lei,
            host=judged.host,
            ts=judged.ts,
            score=verdict.score,
            threshold=verdict.threshold,
            label=verdict.label,
            mode=mode,
            faulty_since=transition.faulty_since,
            cause=verdict.cause,
        )
        self._health[(judged.host, mode)] = health
        self.mqtt.publish_message(topics.host_health(self.lei, judged.host, mode), health, qos=0, retain=True)

    def republish_state(self) -> None:
        """After a reconnect, restore the retained verdicts of the hosts we own, those that are
        still their hosts' newest.

        A broker that lost its retained messages (no persistence, a new node) shows the
        current state again at once instead of after the next sample of every host.
        """
        if not self.judging:
            self._republish_owed = False
            return  # benched: our verdicts are not the LEI's model's, and our hosts are others'
        ours = {key: health for key, health in self._health.items() if self.membership.owns(key[0])}

        def read_newest() -> None:
            for mode in {mode for _, mode in ours}:
                self._last_judged[mode] = self.faults[mode].last_judged(sorted({h for h, m in ours if m == mode}))

        self._republish_owed = not redis_for_now(read_newest)
        if self._republish_owed:  # tried again after the next batch
            log.warning("health_not_republished_yet", reason="redis away: which verdicts are still current is unknown")
            return
        for (host, mode), health in ours.items():
            if self._still_ours(host, mode):
                self.mqtt.publish_message(topics.host_health(self.lei, host, mode), health, retain=True)
            else:
                # Another replica judged the host since (it owned it for a while): ours is out of
                # date, and restored it would contradict the fault state, for good if the host is silent.
                del self._health[(host, mode)]
                if mode == "observed" and self.tuner is not None:
                    # Nor may the windows held unconfirmed be confirmed across what it judged:
                    # without our verdict, _drop_held_judged_elsewhere no longer sees the host.
                    self.tuner.drop_unconfirmed([host])

    def _possible_events(self, verdicts: list[tuple[Judged, Verdict]], mode: str) -> list[FaultEvent | None]:
        """The event each verdict would publish, for the verdicts that may change their host's state.

        An alarm on a host in a fault, or a normal window on a host with none, changes nothing, and
        most windows are such: they are not encoded (tens of microseconds each). A host's state is
        its last verdict here, unknown for a host this replica has not judged yet.
        """
        faulty = {host: self._faulty(host, mode) for host in {judged.host for judged, _ in verdicts}}
        events: list[FaultEvent | None] = []
        for judged, verdict in verdicts:
            state = faulty[judged.host]
            changes = state is None or bool(verdict.label) != state
            events.append(self._event_of(judged, verdict, mode) if changes else None)
            if verdict.label:
                # An alarm that need not open a fault alone (DRAGON_FAULT_START_WINDOWS > 1) may
                # or may not have: the host's next alarm may be the one that opens it.
                opened = state or self.config.start_windows == 1 or _opens_at_once(verdict)
                faulty[judged.host] = True if opened else None
            elif state:
                faulty[judged.host] = None  # a normal window in a fault may end it
        return events

    def _faulty(self, host: str, mode: str) -> bool | None:
        """Whether ``host`` has a fault in force by our last verdict of it; None if we have none,
        or if another replica has judged it since (the newest window in Redis is not ours)."""
        if not self._still_ours(host, mode):
            return None
        health = self._health[(host, mode)]
        if health.label == 0 and health.faulty_since is not None:
            return None  # a normal window in a fault: it may have ended it
        return health.faulty_since is not None

    def _still_ours(self, host: str, mode: str = "observed") -> bool:
        """Whether our last verdict of ``host`` was its newest in Redis when we last read it
        (``_last_judged``): no other replica has judged the host since."""
        health = self._health.get((host, mode))
        return health is not None and self._last_judged.get(mode, {}).get(host) == health.ts

    def _event_of(self, judged: Judged, verdict: Verdict, mode: str) -> FaultEvent:
        """The event this verdict publishes if it changes its host's state: a start if it is an
        alarm, else an end."""
        kind = "start" if verdict.label else "end"
        # Observed ids are unchanged from before predicted mode, so a consumer's deduplication holds.
        name = f"{self.lei}/{judged.host}/{judged.ts!r}/{kind}" + ("" if mode == "observed" else f"/{mode}")
        return FaultEvent(
            event_id=str(uuid.uuid5(EVENT_NAMESPACE, name)),
            type=kind,
            lei=self.lei,
            host=judged.host,
            ts=time.time(),
            window_ts=judged.window_ts,
            score=verdict.score,
            threshold=verdict.threshold,
            label=1 if kind == "start" else 0,
            mode=mode,
            top_metrics=tuple(MetricContribution(m, c) for m, c in verdict.top_metrics),
            model_id=self.scorer.model_id,
            detector=self.instance,
            cause=verdict.cause,
        )

    def _send_event(self, event: FaultEvent, payload: bytes = b"", again: bool = False) -> None:
        """Publish a fault event (``payload``: its bytes as the outbox keeps them, else encoded
        now) and its JSON mirror; it leaves the outbox once the broker has it."""
        with self._outbox_lock:  # before its acknowledgement can come
            self._unacknowledged[event.event_id] = (event.mode, time.monotonic())
        token = (event.mode, event.event_id)
        topic, payload = topics.fault_event(self.lei, event.host), payload or codec.encode(event)
        info = self.mqtt.publish(topic, payload, qos=1, content_type=codec.MSGPACK, token=token)
        if info.rc not in QUEUED:  # paho's queue is full: the sweep sends it again
            with self._outbox_lock:
                self._unacknowledged.pop(event.event_id, None)
        if self.config.json_mirror:
            self.mqtt.publish_message(topics.fault_event_json(self.lei, event.host), event, json=True)
        self.counters.add(mode_counter(event.mode, "events_sent_again" if again else f"events_{event.type}"))
        log.info(
            "fault_event",
            type=event.type,
            mode=event.mode,
            host=event.host,
            score=round(event.score, 4),
            threshold=round(event.threshold, 4),
            cause=event.cause,
            again=again or None,
        )

    def settle_outbox(self, now: float) -> None:
        """Take the events the broker has acknowledged out of the outbox; and, every
        ``OUTBOX_SWEEP_S``, send again those of our hosts it never got (their sender died, or a
        Redis reply was lost after the transition was recorded)."""
        waiting = self._take_acknowledged()
        if now - self._outbox_swept_at < OUTBOX_SWEEP_S:
            return
        self._outbox_swept_at = now
        for faults in self.faults.values():
            for event_id, payload in faults.outbox().items():
                if event_id not in waiting:
                    self._send_again(faults, event_id, payload, now)

    def _take_acknowledged(self) -> set[str]:
        """Take acknowledged events out of the outbox; returns the ids of the events on their way."""
        now = time.monotonic()
        with self._outbox_lock:
            for (mode, event_id), final in self.mqtt.acknowledged():
                self._unacknowledged.pop(event_id, None)  # refused for now: the sweep sends it again
                if final:
                    self._acknowledged[event_id] = mode  # until Redis has taken it out of the outbox
            # One unanswered this long is no longer waited for (its answer may have been missed).
            self._unacknowledged = {
                event_id: (mode, sent)
                for event_id, (mode, sent) in self._unacknowledged.items()
                if now - sent < ACKNOWLEDGEMENT_PATIENCE_S
            }
            on_their_way = set(self._unacknowledged) | set(self._recording)
            acknowledged = dict(self._acknowledged)
        for mode, faults in self.faults.items():
            faults.sent([event_id for event_id, m in acknowledged.items() if m == mode])
        with self._outbox_lock:
            for event_id in acknowledged:
                self._acknowledged.pop(event_id, None)
        return on_their_way

    def _send_again(self, faults: HostFaultState, event_id: str, payload: bytes, now: float) -> None:
        try:
            event = codec.decode(FaultEvent, payload, MAX_EVENT_BYTES, codec.MSGPACK)
        except DecodeError as exc:
            # Left for a replica that can read it (a newer version's, during an upgrade).
            if self._unreadable_outbox.due() is not None:
                log.error("outbox_event_unreadable", event_id=event_id, error=str(exc))
            return
        if now - event.ts > OUTBOX_KEEP_S:
            log.error("outbox_event_expired", event_id=event_id, host=event.host, type=event.type, ts=event.ts)
            faults.sent([event_id])
        elif now - event.ts >= OUTBOX_RESEND_AFTER_S and self.membership.owns(event.host):
            self._send_event(event, payload, again=True)  # its bytes unchanged


def _opens_at_once(verdict: Verdict) -> bool:
    """Whether a verdict's alarm opens a fault alone, whatever DRAGON_FAULT_START_WINDOWS says: a
    silence does, since no window follows it to make a run."""
    return verdict.cause == "silent"
