"""An LEI judged as one federation: steps from stored samples, learning from them, joint scoring."""

from __future__ import annotations

from dataclasses import replace

import msgpack
import numpy as np
import pytest
import structlog
import structlog.testing

from dragon.detector.config import DetectorConfig
from dragon.detector.finetune import ConfidenceGate
from dragon.detector.gon import GonConfig
from dragon.detector.health import MissedWindow
from dragon.detector.learning import FineTuner, min_span
from dragon.detector.lei import (
    LeiTrace,
    forecast_steps,
    history_needed,
    lei_trace,
    read_together,
    steps_to_judge,
    task_rows,
    train_from_lei,
)
from dragon.detector.scaling import MinMaxScaler
from dragon.detector.scorer import Scorer
from dragon.detector.service import Detector
from dragon.messages.schemas import HOST_METRICS, ForecastSample, HostMetrics, HostSample, TaskUsage
from dragon.store import StoredSample, _stored

from .test_finetune import FakeModels

pytestmark = pytest.mark.unit

K = 4
T0 = 1_000.0
# Tasks and the host each runs on; h2 runs none.
PLACEMENT = {"t0": "h0", "t1": "h0", "t2": "h1"}
HOSTS = ("h0", "h1", "h2")


def task_cpu(t: int, task: str) -> float:
    return 0.15 + 0.1 * np.sin(2 * np.pi * t / 25 + int(task[1]))


def host_vector(host: str, t: int, rng: np.random.Generator, extra_cpu: float = 0.0) -> list[float]:
    """Raw metrics: cpu is the host's tasks' cpu plus overhead, the rest noise around a level."""
    cpu = 0.05 + sum(task_cpu(t, task) for task, on in PLACEMENT.items() if on == host) + extra_cpu
    levels = np.array([cpu, 0.3, 0.01, 1e6, 2e6, 1e5, 1e5])
    noise = 0.02 * levels * rng.standard_normal(len(levels))
    noise[0] = 0.005 * rng.standard_normal()
    return np.maximum(levels + noise, 0.0).tolist()


def recorded(steps: int, seed: int = 0) -> dict[str, list[StoredSample]]:
    """Every host's stored samples over ``steps`` one-second intervals, one collector tick each."""
    rng = np.random.default_rng(seed)
    history: dict[str, list[StoredSample]] = {host: [] for host in HOSTS}
    for t in range(steps):
        for host in HOSTS:
            tasks = {task: task_cpu(t, task) for task, on in PLACEMENT.items() if on == host}
            history[host].append(StoredSample(T0 + t, host_vector(host, t, rng), tasks))
    return history


def sample(
    host: str, ts: float, vector: list[float] | None = None, tasks: dict[str, float] | None = None
) -> HostSample:
    vector = vector or [0.1] * len(HOST_METRICS)
    usage = tuple(TaskUsage(task, task, cpu, 1e6) for task, cpu in (tasks or {}).items())
    return HostSample("lei", host, ts, 1, 1.0, HostMetrics(*vector), usage)


def as_sample(host: str, stored: StoredSample) -> HostSample:
    return sample(host, stored.ts, stored.vector, dict(stored.tasks))


# --- steps -----------------------------------------------------------------------------------------
def test_a_step_holds_every_fresh_host_its_tasks_and_schedule():
    history = recorded(20)
    judged = [as_sample("h1", history["h1"][-1])]
    (step,) = steps_to_judge(judged, history, K, broker_host="h2")
    assert step.hosts == HOSTS and step.broker == 2
    assert [(i, s.host) for i, s in step.judged] == [(1, "h1")]
    assert step.prev.shape == step.next.shape == (3, K, len(HOST_METRICS))
    np.testing.assert_allclose(step.next[0, -1], history["h0"][-1].vector)
    np.testing.assert_allclose(step.prev[0, -1], history["h0"][-2].vector)
    assert step.tasks == ("t0", "t1", "t2")
    np.testing.assert_array_equal(step.schedule, [[1, 0, 0], [1, 0, 0], [0, 1, 0]])
    # A task's window is its cpu share over its host's previous window.
    np.testing.assert_allclose(step.task_prev[2], [history["h1"][i].tasks["t2"] for i in range(-K - 1, -1)])
    np.testing.assert_allclose(step.task_next[2], [history["h1"][i].tasks["t2"] for i in range(-K, 0)])


def test_samples_are_grouped_into_steps_and_a_late_host_is_context():
    history = recorded(20)
    late = {host: samples[:-1] for host, samples in history.items()}
    late["h0"] = history["h0"]  # only h0's newest sample has arrived
    steps = steps_to_judge([as_sample("h0", history["h0"][-1]), as_sample("h1", history["h1"][-2])], late, K)
    assert [[s.host for _, s in step.judged] for step in steps] == [["h1"], ["h0"]]
    newest = steps[1]
    # h1 and h2 are context at the newest step with their windows as of their newest sample.
    np.testing.assert_allclose(newest.next[1, -1], history["h1"][-2].vector)


def test_a_stale_host_is_left_out_and_a_trimmed_sample_is_not_judged():
    history = recorded(20)
    history["h2"] = history["h2"][:10]  # h2 stopped reporting ten intervals ago
    (step,) = steps_to_judge([as_sample("h0", history["h0"][-1])], history, K)
    assert step.hosts == ("h0", "h1") and step.broker == 0
    assert steps_to_judge([sample("h0", T0 - 50.0)], history, K) == []


def test_task_rows_fill_the_cpu_column_in_scaled_units():
    scaler = MinMaxScaler.fit(np.array([[0.1] * 7, [0.5] * 7]))
    rows = task_rows(np.array([[0.3]]), scaler, HOST_METRICS)
    np.testing.assert_allclose(rows, [[[0.5, 0, 0, 0, 0, 0, 0]]])


# --- learning --------------------------------------------------------------------------------------
def test_lei_trace_aligns_steps_and_keeps_a_slot_per_task():
    history = recorded(12)
    history["h1"] = history["h1"][:5] + history["h1"][6:]  # h1 missed step 5: the step is dropped
    history["h0"][7] = replace(history["h0"][7], tasks={"t0": 0.2})  # t1 did not run at step 7
    recorded_lei = lei_trace(history, HOST_METRICS, broker_host="h1", lei="lei")
    trace = recorded_lei.trace
    assert trace.hosts.shape == (11, 3, len(HOST_METRICS)) and recorded_lei.tasks == ("t0", "t1", "t2")
    assert trace.brokers == (1,) and trace.lei_of_host == ("lei",) * 3
    np.testing.assert_array_equal(trace.schedule[6, 1], [0, 0, 0])  # step 7 is row 6 after the drop
    assert recorded_lei.task_cpu[6, 1] == 0.0 and recorded_lei.task_cpu[6, 0] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="need at least 2"):
        lei_trace({host: samples[:1] for host, samples in history.items()}, HOST_METRICS)


def test_lei_trace_aligns_unsynchronised_collectors_as_judging_does():
    history = recorded(12)
    offsets = {"h0": 0.0, "h1": 0.3, "h2": 0.7}  # each host's collector ticks at its own moment
    shifted = {h: [replace(s, ts=s.ts + offsets[h]) for s in samples] for h, samples in history.items()}
    trace = lei_trace(shifted, HOST_METRICS, broker_host="h0").trace
    # Step t of h0: h1's sample of the same tick, h2's of the tick before (it comes 0.7 later);
    # at the first tick h2 has none yet.
    assert trace.steps == 11
    np.testing.assert_allclose(trace.hosts[0, 1], history["h1"][1].vector)
    np.testing.assert_allclose(trace.hosts[0, 2], history["h2"][0].vector)
    shifted["h2"] = shifted["h2"][:5]  # h2 stopped: the LEI is h0 and h1 now
    left = lei_trace(shifted, HOST_METRICS, broker_host="h0").trace
    assert left.hosts.shape[1:] == (2, len(HOST_METRICS)) and left.steps == 12


@pytest.fixture(scope="module")
def lei_model() -> tuple[Scorer, dict[str, list[StoredSample]]]:
    history = recorded(160)
    cfg = GonConfig(n_features=len(HOST_METRICS), window=K, epochs=12, scope="lei", topology=False)
    checkpoint = train_from_lei(lei_trace(history, HOST_METRICS), cfg, min_span=min_span(), pot_q=1e-3, pot_level=0.95)
    return Scorer(checkpoint), history


def test_training_refuses_a_host_scope_config():
    with pytest.raises(ValueError, match="scope 'lei'"):
        train_from_lei(
            LeiTrace(None, np.zeros(0), ()), GonConfig(n_features=7), min_span=min_span(), pot_q=1e-3, pot_level=0.9
        )


def test_a_host_rising_without_a_task_is_judged_faulty_and_the_others_not(lei_model):
    scorer, history = lei_model
    assert scorer.scope == "lei" and scorer.checkpoint.meta["hosts"] == 3
    rng = np.random.default_rng(7)
    t = len(history["h0"])
    faulty = {host: list(samples) for host, samples in history.items()}
    for host in HOSTS:
        extra = 0.6 if host == "h2" else 0.0
        tasks = {task: task_cpu(t, task) for task, on in PLACEMENT.items() if on == host}
        faulty[host].append(StoredSample(T0 + t, host_vector(host, t, rng, extra), tasks))
    to_judge = [as_sample(host, faulty[host][-1]) for host in HOSTS]
    (verdicts,) = scorer.score_steps(steps_to_judge(to_judge, faulty, K))
    labels = {s.host: v.label for s, v in verdicts}
    assert labels == {"h0": 0, "h1": 0, "h2": 1}, verdicts
    assert verdicts[2][1].top_metrics[0][0] == "cpu"


def test_a_step_scores_the_same_alone_or_batched_with_others(lei_model):
    scorer, history = lei_model
    judged = [as_sample(host, history[host][i]) for i in (-3, -2, -1) for host in HOSTS]
    steps = steps_to_judge(judged, history, K)
    assert len(steps) == 3
    together = [v.score for step in scorer.score_steps(steps) for _, v in step]
    alone = [v.score for step in steps for _, v in scorer.score_steps([step])[0]]
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-7)


def test_a_stored_sample_nobody_judged_scores_as_the_sample_itself(lei_model):
    """What a replica takes over (health.MissedWindow): only a host, a time and an interval, the
    rest read from the stored history like any sample's."""
    scorer, history = lei_model
    stored = history["h1"][-2]
    late = steps_to_judge([MissedWindow("h1", stored.ts, 1.0), as_sample("h1", history["h1"][-1])], history, K)
    received = steps_to_judge([as_sample("h1", stored), as_sample("h1", history["h1"][-1])], history, K)
    verdicts = scorer.score_steps(late)
    assert [[item.ts for item, _ in step] for step in verdicts] == [[stored.ts], [history["h1"][-1].ts]]
    expected = [[v.score for _, v in step] for step in scorer.score_steps(received)]
    assert [[v.score for _, v in step] for step in verdicts] == expected


# --- predicted mode --------------------------------------------------------------------------------
def forecast(host: str, based_on: StoredSample, vector: list[float], tasks: tuple[str, ...] = ()) -> ForecastSample:
    """The simulator's forecast of ``host``'s next sample, one interval after ``based_on``."""
    return ForecastSample(
        "lei", host, based_on.ts, based_on.ts, based_on.ts + 1.0, HostMetrics(*vector), tasks, "sim-a"
    )


def until(history: dict[str, list[StoredSample]], end: int) -> dict[str, list[StoredSample]]:
    return {host: samples[:end] for host, samples in history.items()}


def test_a_forecast_that_comes_true_scores_as_the_sample_it_forecast(lei_model):
    """The forecast of h1's last sample, made from the step before, is judged exactly as that sample."""
    scorer, history = lei_model
    came = history["h1"][-1]
    tasks = tuple(came.tasks)
    (ahead,) = forecast_steps([forecast("h1", history["h1"][-2], came.vector, tasks)], until(history, -1), K)
    (step,) = steps_to_judge([as_sample("h1", came)], history, K)
    np.testing.assert_allclose(ahead.prev, step.prev)
    np.testing.assert_allclose(ahead.next[1], step.next[1])
    np.testing.assert_allclose(ahead.task_prev, step.task_prev)
    np.testing.assert_array_equal(ahead.schedule, step.schedule)
    ((judged, predicted),) = scorer.score_steps([ahead])[0]
    ((_, observed),) = scorer.score_steps([step])[0]
    assert isinstance(judged, ForecastSample) and judged.host == "h1"
    assert predicted.score == pytest.approx(observed.score, rel=1e-5, abs=1e-7)


def test_the_forecasts_of_one_step_share_it_and_score_as_they_would_alone(lei_model):
    scorer, history = lei_model
    base = until(history, -1)
    forecasts = [forecast(h, base[h][-1], history[h][-1].vector, tuple(history[h][-1].tasks)) for h in HOSTS]
    (together,) = forecast_steps(forecasts, base, K)
    assert [(h, f.host) for h, f in together.judged] == [(0, "h0"), (1, "h1"), (2, "h2")]
    scores = [v.score for _, v in scorer.score_steps([together])[0]]
    alone = [scorer.score_steps(forecast_steps([f], base, K))[0][0][1].score for f in forecasts]
    np.testing.assert_allclose(scores, alone, rtol=1e-5, atol=1e-7)


def test_a_forecast_places_the_tasks_it_names_on_its_host():
    history = recorded(20)
    # The migrator moved t2 from h1 to h2; t9 started and no sample has measured it yet.
    (step,) = forecast_steps([forecast("h2", history["h2"][-1], [0.3] * 7, ("t2", "t9"))], history, K)
    assert step.tasks == ("t0", "t1", "t2")
    np.testing.assert_array_equal(step.schedule, [[1, 0, 0], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(step.next[2, -1], [0.3] * 7)
    np.testing.assert_allclose(step.next[2, :-1], step.prev[2, 1:])  # W_t shifted by the forecast
    np.testing.assert_allclose(step.next[:2], step.prev[:2])  # hosts without a forecast are context
    # t2's window is its measured share on h1 up to the step, where the samples saw it.
    np.testing.assert_allclose(step.task_prev[2], [history["h1"][i].tasks["t2"] for i in range(-K, 0)])


def test_a_task_a_forecast_leaves_out_comes_off_its_host_alone_or_with_the_forecast_that_names_it():
    """t2 moved from h1 to h2: h1's forecast, judged without h2's, already shows h1 without t2."""
    history = recorded(20)
    h1_without_t2 = forecast("h1", history["h1"][-1], [0.3] * 7, ())
    (alone,) = forecast_steps([h1_without_t2], history, K)
    np.testing.assert_array_equal(alone.schedule, [[1, 0, 0], [1, 0, 0], [0, 0, 0]])
    h2_with_t2 = forecast("h2", history["h2"][-1], [0.3] * 7, ("t2",))
    for order in ([h1_without_t2, h2_with_t2], [h2_with_t2, h1_without_t2]):
        (together,) = forecast_steps(order, history, K)
        np.testing.assert_array_equal(together.schedule, [[1, 0, 0], [1, 0, 0], [0, 0, 1]])


def test_a_forecast_rise_is_flagged_on_its_host_and_a_forecast_without_its_sample_is_not_judged(lei_model):
    scorer, history = lei_model
    base = until(history, -1)
    rising = list(history["h2"][-1].vector)
    rising[0] += 0.6  # h2's cpu, with no task placed there to explain it
    forecasts = [forecast(h, base[h][-1], history[h][-1].vector, tuple(history[h][-1].tasks)) for h in ("h0", "h1")]
    (step,) = forecast_steps([*forecasts, forecast("h2", base["h2"][-1], rising)], base, K)
    labels = {f.host: v.label for f, v in scorer.score_steps([step])[0]}
    assert labels == {"h0": 0, "h1": 0, "h2": 1}
    unknown = forecast("h0", StoredSample(T0 - 50.0, [0.1] * 7, {}), [0.1] * 7)
    assert forecast_steps([unknown], base, K) == []
    assert history_needed([unknown], K) == (T0 - 50.0 + 0.5, K + 3)


# --- storage ---------------------------------------------------------------------------------------
def test_a_member_without_tasks_reads_as_before_tasks_were_stored():
    old = msgpack.packb([T0, 3, *[0.5] * 7])
    assert _stored(old) == StoredSample(T0, [0.5] * 7, {})
    new = msgpack.packb([T0, 3, *[0.5] * 7, [["t0", 0.25]]])
    assert _stored(new) == StoredSample(T0, [0.5] * 7, {"t0": 0.25})


# --- fine-tuning -----------------------------------------------------------------------------------
class OpenGate(ConfidenceGate):
    """Fires as soon as a host has a clean window: the wiring is under test here, not the gate."""

    def check(self) -> list[str]:
        return sorted(self._hosts)

    def mean_recent(self, host: str) -> float:
        return 0.0

    def floor(self, host: str) -> float:
        return 1.0


def test_a_lei_model_is_fine_tuned_on_steps_where_every_host_was_clean(lei_model):
    scorer, history = lei_model
    models = FakeModels(scorer.model_id)
    # Room for two steps of three hosts: once two are kept, a fine-tune need not wait for more.
    config = DetectorConfig(pot_lag=0, finetune_min_interval_s=0.0, finetune_windows=6, finetune_steps=2)
    tuner = FineTuner(config, models, "replica-a", "lei-test")
    tuner.gate = OpenGate(0.0, 1.0, reference=1, recent=1)
    times = range(-8, 0)
    steps = steps_to_judge([as_sample(host, history[host][i]) for i in times for host in HOSTS], history, K)
    # h1 is judged faulty at the third step: its windows are clean again only k steps later.
    normal = [not (t == -6 and host == "h1") for t in times for host in HOSTS]
    clean = dict.fromkeys(HOSTS, 0)  # what Redis counts (HostFaultState.clean_streaks)
    for i, step in enumerate(steps):
        clean = {host: clean[host] + 1 if normal[3 * i + j] else 0 for j, host in enumerate(HOSTS)}
        tuner.observe_steps(scorer, [step], normal[3 * i : 3 * i + 3], clean)
    assert [step.next[0, -1, 0] for step in tuner._steps] == [history["h0"][t].vector[0] for t in (-2, -1)]
    tuner._thread.join(timeout=60)
    tuned = models.published[-1]
    assert tuned.config.scope == "lei" and tuned.meta["fine_tuned_from"] == scorer.model_id
    assert tuned.meta["fine_tune"]["windows"] == 2 * len(HOSTS)  # two steps of three hosts
    assert tuned.meta["fine_tune"]["samples"] == 2
    assert tuned.pot_state().z_q != scorer.checkpoint.pot_state().z_q  # recalibrated on the tuned scores


def test_a_step_is_kept_only_when_every_host_in_it_is_clean_whoever_judged_it(lei_model):
    scorer, history = lei_model
    # Room for two steps of three hosts: the store is full, so only the gate can hold the fine-tune back.
    config = DetectorConfig(pot_lag=0, finetune_min_interval_s=0.0, finetune_windows=6, finetune_steps=2)
    tuner = FineTuner(config, FakeModels(scorer.model_id), "replica-a", "lei-test")
    tuner.gate = OpenGate(0.0, 1.0, reference=1, recent=1)
    # This replica judges h0 only; h2 belongs to another replica, which saw it faulty lately.
    steps = steps_to_judge([as_sample("h0", history["h0"][i]) for i in (-3, -2, -1)], history, K)
    tuner.observe_steps(scorer, steps, [True] * 3, {"h0": 20, "h1": 20, "h2": K + 1})
    # Two later steps in the batch: at the first step h2 may have had only K - 1 clean windows.
    assert [step.judged[0][1].ts for step in tuner._steps] == [history["h0"][i].ts for i in (-2, -1)]
    # h0 has been clean for 20 windows, by whichever replica's verdicts: the gate counts its windows.
    assert tuner._thread is not None
    tuner._thread.join(timeout=60)


def test_a_store_too_small_for_two_steps_of_this_lei_says_so_once(lei_model):
    scorer, history = lei_model
    config = DetectorConfig(
        pot_lag=0, finetune_min_interval_s=0.0, finetune_windows=5, finetune_steps=2
    )  # < 2 x 3 hosts
    tuner = FineTuner(config, FakeModels(scorer.model_id), "replica-a", "lei-test")
    tuner.gate = OpenGate(0.0, 1.0, reference=1, recent=1)
    steps = steps_to_judge([as_sample(host, history[host][i]) for i in (-2, -1) for host in HOSTS], history, K)
    with structlog.testing.capture_logs() as logs:
        for step in steps:
            tuner.observe_steps(scorer, [step], [True] * 3, dict.fromkeys(HOSTS, 20))
    warnings = [entry for entry in logs if entry["event"] == "finetune_windows_too_few_for_this_lei"]
    assert len(warnings) == 1 and warnings[0]["needed"] == 6
    assert len(tuner._steps) <= 1 and tuner._thread is None


def test_history_needed_grows_with_the_steps_a_batch_spans_not_with_its_hosts():
    tick = [sample(f"h{i}", T0) for i in range(256)]  # one collector tick of 256 hosts
    assert history_needed(tick, K) == (T0 + 0.5, K + 3)
    flood = [sample("h0", T0 + 0.01 * i) for i in range(16)]  # samples faster than the interval
    assert history_needed(flood, K)[1] == K + 2 + 16 + 1
    backlog = [sample(h, T0 + t) for t in range(5) for h in HOSTS]  # five ticks of three hosts
    assert history_needed(backlog, K) == (T0 + 4.5, K + 2 + 5 + 4)


def test_a_batch_is_read_in_runs_of_time_so_a_host_whose_clock_is_behind_costs_no_more_than_one_in_time():
    """An hour of every host's samples, each batch, because one Pi's clock ran an hour behind."""
    behind = [sample("pi", T0 - 3600 + t) for t in range(2)]
    now = [sample(h, T0 + t) for t in range(3) for h in HOSTS]
    runs = read_together([*now, *behind], K)
    assert runs == [behind, now]
    assert [history_needed(run, K)[1] for run in runs] == [K + 2 + 2 + 1, K + 2 + 3 + 2]
    assert history_needed([*now, *behind], K)[1] > 3600  # read together
    gap_of_k_plus_2 = [sample("h0", T0), sample("h0", T0 + K + 2)]
    assert read_together(gap_of_k_plus_2, K) == [gap_of_k_plus_2]


class RecordingStore:
    """A WindowStore's reads from ``history``, each (until, count) asked noted."""

    def __init__(self, history: dict[str, list[StoredSample]]) -> None:
        self.history, self.reads = history, []

    def samples_until(self, until: float, count: int) -> dict[str, list[StoredSample]]:
        self.reads.append((until, count))
        return {host: [s for s in samples if s.ts <= until][-count:] for host, samples in self.history.items()}


def test_the_service_reads_a_batch_run_by_run_and_judges_every_item(lei_model):
    scorer, history = lei_model
    detector = Detector(DetectorConfig())
    detector.scorer, detector.windows = scorer, RecordingStore(history)
    now = [as_sample(host, history[host][-1]) for host in ("h0", "h1")]
    behind = [as_sample("h2", history["h2"][20])]  # a clock two minutes behind
    steps, verdicts = detector._judge_steps([*now, *behind], steps_to_judge, "observed")
    assert [(s.host, s.ts) for step in steps for _, s in step.judged] == [
        ("h2", T0 + 20),
        ("h0", T0 + 159),
        ("h1", T0 + 159),
    ]
    assert sum(map(len, verdicts)) == 3
    assert [count for _, count in detector.windows.reads] == [K + 3, K + 3]  # not K + 2 + 1 + 140 once


def test_a_step_with_a_window_not_judged_normal_is_not_learnt_from(lei_model):
    scorer, history = lei_model
    config = DetectorConfig(pot_lag=0, finetune_min_interval_s=0.0, finetune_windows=64, finetune_steps=2)
    tuner = FineTuner(config, FakeModels(scorer.model_id), "replica-a", "lei-test")
    (step,) = steps_to_judge([as_sample(host, history[host][-1]) for host in HOSTS], history, K)
    # Redis says every host is clean, but this batch's h1 window was a redelivery (stale).
    tuner.observe_steps(scorer, [step], [True, False, True], dict.fromkeys(HOSTS, 20))
    assert list(tuner._steps) == []
    tuner.observe_steps(scorer, [step], [True, True, True], dict.fromkeys(HOSTS, 20))
    assert list(tuner._steps) == [step]


def test_a_step_is_kept_once_pot_lag_later_steps_were_clean_and_a_fault_s_onset_never(lei_model):
    scorer, history = lei_model
    config = DetectorConfig(pot_lag=2, finetune_min_interval_s=0.0, finetune_windows=64, finetune_steps=2)
    tuner = FineTuner(config, FakeModels(scorer.model_id), "replica-a", "lei-test")
    steps = steps_to_judge([as_sample(host, history[host][i]) for i in range(-6, 0) for host in HOSTS], history, K)
    for step in steps[:4]:
        tuner.observe_steps(scorer, [step], [True] * 3, dict.fromkeys(HOSTS, 20))
    assert list(tuner._steps) == steps[:2]  # the 3rd and 4th wait for two more
    tuner.observe_steps(scorer, [steps[4]], [True, False, True], dict.fromkeys(HOSTS, 20))  # h1 alarms
    tuner.observe_steps(scorer, [steps[5]], [True] * 3, dict.fromkeys(HOSTS, 20))
    assert list(tuner._steps) == steps[:2]  # the two before the alarm are its onset: dropped


def test_kept_steps_stay_when_a_new_model_is_served(lei_model):
    scorer, history = lei_model
    config = DetectorConfig(pot_lag=0, finetune_min_interval_s=0.0, finetune_windows=64, finetune_steps=2)
    tuner = FineTuner(config, FakeModels(scorer.model_id), "replica-a", "lei-test")
    first, second = steps_to_judge([as_sample(host, history[host][i]) for i in (-2, -1) for host in HOSTS], history, K)
    tuner.observe_steps(scorer, [first], [True] * 3, dict.fromkeys(HOSTS, 20))
    weights = {name: tensor.clone() for name, tensor in scorer.checkpoint.state_dict.items()}
    next(iter(weights.values())).add_(1e-3)  # other weights: another model, as a fine-tuned one is
    newer = Scorer(replace(scorer.checkpoint, state_dict=weights))
    assert newer.model_id != scorer.model_id
    tuner.observe_steps(newer, [second], [True] * 3, dict.fromkeys(HOSTS, 20))
    assert [step.judged[0][1].ts for step in tuner._steps] == [history["h0"][i].ts for i in (-2, -1)]


def test_a_lei_model_forgets_kept_host_pairs_and_steps_of_another_window_length(lei_model):
    scorer, history = lei_model
    config = DetectorConfig(pot_lag=0, finetune_min_interval_s=0.0, finetune_windows=64, finetune_steps=2)
    tuner = FineTuner(config, FakeModels(scorer.model_id), "replica-a", "lei-test")
    first, second = steps_to_judge([as_sample(host, history[host][i]) for i in (-2, -1) for host in HOSTS], history, K)
    shorter = replace(first, prev=first.prev[:, 1:], next=first.next[:, 1:])  # kept under a model of k - 1
    tuner._steps.extend([shorter, first])  # as restored from Redis
    tuner._normal.append((first.prev[0], first.next[0]))  # a host pair: for a model of single hosts
    tuner.observe_steps(scorer, [second], [True] * 3, dict.fromkeys(HOSTS, 20))
    assert list(tuner._steps) == [first, second] and len(tuner._normal) == 0
