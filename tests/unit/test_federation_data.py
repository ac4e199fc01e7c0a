"""Federation traces, their windows and joint scoring of every host with the schedule and graph."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from dragon.detector.federation_data import (
    FederationTrace,
    FederationWindows,
    equal_leis,
    federation_fault_scores,
    federation_of,
    load_federation_dir,
    schedule_changed,
)
from dragon.detector.federation_model import HostsInContext
from dragon.detector.gon import GonConfig, build_discriminator, train_gon
from dragon.detector.train import DatasetError

pytestmark = pytest.mark.unit

HOSTS, SLOTS, FEATURES = 4, 6, 3


def placements(steps: int, seed: int = 0) -> np.ndarray:
    """(T, p, m) schedule: every slot on a random host, the last slot empty half of the time."""
    rng = np.random.default_rng(seed)
    schedule = np.zeros((steps, SLOTS, HOSTS))
    hosts = rng.integers(HOSTS, size=(steps, SLOTS))
    for t in range(steps):
        schedule[t, np.arange(SLOTS), hosts[t]] = 1.0
    schedule[::2, -1] = 0.0
    return schedule


def load_following(schedule: np.ndarray, seed: int = 0) -> np.ndarray:
    """(T, m, n) metrics: cpu follows the host's number of tasks, the rest is noise around 0.5."""
    rng = np.random.default_rng(seed)
    steps = schedule.shape[0]
    hosts = 0.5 + 0.02 * rng.standard_normal((steps, HOSTS, FEATURES))
    hosts[:, :, 0] = 0.15 * schedule.sum(axis=1) + 0.02 * rng.standard_normal((steps, HOSTS))
    return hosts


def trace_of(steps: int = 60, seed: int = 0) -> FederationTrace:
    schedule = placements(steps, seed)
    lei_of_host, brokers = equal_leis(HOSTS, 2)
    return FederationTrace(load_following(schedule, seed), schedule, lei_of_host, brokers, ("cpu", "ram", "disk"))


def write_trace(folder, series: np.ndarray, schedule: np.ndarray) -> None:
    folder.mkdir(exist_ok=True)
    np.save(folder / "time_series.npy", series)
    np.save(folder / "schedule_series.npy", schedule)


SMALL = {"n_features": FEATURES, "window": 4, "hidden": 16, "gen_steps": 3, "epochs": 2, "batch_size": 8}


def windows_of(trace: FederationTrace, k: int) -> FederationWindows:
    return FederationWindows.from_scaled(trace.hosts.astype(np.float32), trace.schedule, trace.graph, k)


def test_equal_leis_are_consecutive_hosts_led_by_their_first():
    assert equal_leis(6, 3) == (("lei0", "lei0", "lei1", "lei1", "lei2", "lei2"), (0, 2, 4))
    with pytest.raises(ValueError, match="cannot be split"):
        equal_leis(16, 3)


def test_load_federation_dir_reads_hosts_schedule_and_leis(tmp_path):
    trace = trace_of(20)
    write_trace(tmp_path / "fed", trace.hosts.reshape(20, -1), trace.schedule)
    loaded = load_federation_dir(tmp_path / "fed", leis=2)
    assert loaded.hosts.shape == (20, HOSTS, FEATURES)
    np.testing.assert_allclose(loaded.hosts, trace.hosts)
    assert loaded.feature_names == ("cpu", "ram", "disk")
    assert loaded.lei_of_host == ("lei0", "lei0", "lei1", "lei1") and loaded.brokers == (0, 2)
    graph = loaded.graph
    assert graph.intra[1, 0] == 1 and graph.intra[3, 2] == 1 and graph.inter[0, 2] == 1 and graph.intra[1, 2] == 0


@pytest.mark.parametrize(
    ("series_shape", "schedule_mutation", "message"),
    [
        ((19, HOSTS * FEATURES), None, "19 steps"),
        ((20, HOSTS * FEATURES + 1), None, "not n metrics"),
        ((20, HOSTS * FEATURES), "two_hosts", "one-hot"),
        ((20, HOSTS * FEATURES), "nan", "NaN"),
    ],
)
def test_load_federation_dir_names_what_is_wrong(tmp_path, series_shape, schedule_mutation, message):
    schedule = placements(20)
    series = np.full(series_shape, 0.5)
    if schedule_mutation == "two_hosts":
        schedule[3, 0] = 1.0
    if schedule_mutation == "nan":
        schedule[3, 0, 0] = np.nan
    write_trace(tmp_path / "bad", series, schedule)
    with pytest.raises(DatasetError, match=message):
        load_federation_dir(tmp_path / "bad", leis=2)


def test_load_federation_dir_refuses_missing_files_and_uneven_leis(tmp_path):
    with pytest.raises(DatasetError, match="schedule_series.npy: missing|time_series.npy: missing"):
        load_federation_dir(tmp_path)
    trace = trace_of(10)
    write_trace(tmp_path / "fed", trace.hosts.reshape(10, -1), trace.schedule)
    with pytest.raises(DatasetError, match="cannot be split into 3 LEIs"):
        load_federation_dir(tmp_path / "fed", leis=3)


def test_started_skips_the_empty_federation_and_then_joins_parts():
    trace = trace_of(12)
    empty = replace(trace.part(0, 3), hosts=np.zeros((3, HOSTS, FEATURES)), schedule=np.zeros((3, SLOTS, HOSTS)))
    joined = empty.then(trace)
    assert joined.steps == 15
    np.testing.assert_array_equal(joined.started().hosts, trace.hosts)


def test_schedule_changed_marks_hosts_whose_tasks_moved():
    schedule = np.zeros((3, 2, 2))
    schedule[:, 0, 0] = 1  # slot 0 stays on host 0
    schedule[0, 1, 0] = schedule[1, 1, 0] = schedule[2, 1, 1] = 1  # slot 1 moves to host 1 at t = 2
    assert schedule_changed(schedule).tolist() == [[False, False], [False, False], [True, True]]
    before = np.zeros((1, 2, 2))
    assert schedule_changed(schedule, previous=before)[0].tolist() == [True, False]


def test_federation_windows_batch_binds_tasks_and_schedule():
    trace = trace_of(30)
    data = windows_of(trace, k=4)
    assert data.hosts.shape == (30, HOSTS, 4, FEATURES) and data.tasks.shape == (30, SLOTS, 4, FEATURES)
    model = build_discriminator(GonConfig(**SMALL))
    view, real = data.batch(model, torch.tensor([3, 7]))
    assert real.shape == (2, HOSTS, 4, FEATURES)
    torch.testing.assert_close(view.schedule, data.schedule[[3, 7]])
    assert view.logits(real).shape == (2, HOSTS)
    with pytest.raises(ValueError, match="architecture 'dragon'"):
        data.batch(build_discriminator(GonConfig(**SMALL, architecture="mlp")), torch.tensor([0]))


def test_joint_training_and_scores_are_finite_deterministic_and_shaped():
    trace = trace_of(40)
    cfg = GonConfig(**SMALL)
    first, history = train_gon(windows_of(trace, cfg.window), cfg)
    second, _ = train_gon(windows_of(trace, cfg.window), cfg)
    assert history["epochs_run"] == 2
    scores, contributions = federation_fault_scores(first, cfg, windows_of(trace, cfg.window), start=5)
    again, _ = federation_fault_scores(second, cfg, windows_of(trace, cfg.window), start=5)
    assert scores.shape == (35, HOSTS) and contributions.shape == (35, HOSTS, FEATURES)
    assert np.isfinite(scores).all() and (scores >= 0).all()
    np.testing.assert_array_equal(scores, again)
    sums = contributions.sum(axis=2)
    assert np.allclose(sums[scores > 0], 1.0) and np.allclose(sums[scores == 0], 0.0)


def test_excess_plus_unreal_adds_each_hosts_minus_log_d_in_its_federation():
    trace = trace_of(12)
    trace.hosts[6:, 0] = 0.0  # host 0 idles: nothing of it rises above a generated window, -log D alone scores
    cfg = GonConfig(**SMALL)
    both = replace(cfg, fault_score="excess+unreal")
    model = build_discriminator(cfg).eval()
    usage = np.random.default_rng(0).random((12, SLOTS, FEATURES)).astype(np.float32)  # tasks' windows differ
    data = FederationWindows.from_scaled(trace.hosts.astype(np.float32), trace.schedule, trace.graph, cfg.window, usage)
    excess, shares = federation_fault_scores(model, cfg, data, start=1)
    scores, contributions = federation_fault_scores(model, both, data, start=1)
    now = torch.arange(1, len(data))
    # -log D judges W_t in its own context (the tasks' windows over W_t), as D learnt real windows
    view = HostsInContext(federation_of(model), data.tasks[now], data.schedule[now], data.graph)
    with torch.no_grad():
        minus_log_d = -torch.nn.functional.logsigmoid(view.logits(data.hosts[now])).double().numpy()  # (T, m)
    assert minus_log_d.shape == (11, HOSTS)
    np.testing.assert_allclose(scores, excess + minus_log_d, rtol=1e-5, atol=1e-6)
    scored = excess > 0
    assert scored.any() and not scored.all()  # both kinds of alarm are checked
    np.testing.assert_array_equal(contributions[scored], shares[scored])  # the excess names its metrics
    np.testing.assert_allclose(contributions[~scored].sum(axis=-1), 1.0, rtol=1e-5)  # -log D's gradient names them


def test_joint_scores_follow_the_hosts_when_they_are_renumbered():
    """No weight depends on a host's position: renumbering hosts (and their LEIs) renumbers the scores."""
    trace = trace_of(20)
    cfg = GonConfig(**SMALL)
    model = build_discriminator(cfg)
    order = np.array([2, 3, 0, 1])  # the second LEI first; brokers move with their hosts
    renumbered = FederationTrace(
        trace.hosts[:, order], trace.schedule[:, :, order], trace.lei_of_host, trace.brokers, trace.feature_names
    )
    scores, _ = federation_fault_scores(model, cfg, windows_of(trace, cfg.window), start=4)
    moved, _ = federation_fault_scores(model, cfg, windows_of(renumbered, cfg.window), start=4)
    np.testing.assert_allclose(moved, scores[:, order], rtol=1e-4, atol=1e-5)


def test_a_score_judges_the_new_window_against_the_schedule_now_in_force():
    """Step t is generated under S_t: changing S_t changes the score of step t and of nothing before."""
    trace = trace_of(20)
    cfg = GonConfig(**SMALL)
    model = build_discriminator(cfg)
    scores, _ = federation_fault_scores(model, cfg, windows_of(trace, cfg.window))
    schedule = trace.schedule.copy()
    schedule[15] = np.roll(schedule[15], 1, axis=1)  # every task of interval 15 on the next host
    changed = FederationTrace(trace.hosts, schedule, trace.lei_of_host, trace.brokers, trace.feature_names)
    rescored, _ = federation_fault_scores(model, cfg, windows_of(changed, cfg.window))
    np.testing.assert_array_equal(rescored[:15], scores[:15])
    assert not np.allclose(rescored[15], scores[15])
