"""Scoring a series as the service does (dragon.detector.online): fine-tunes swap the model mid-series."""

from __future__ import annotations

import numpy as np
import pytest

from dragon.detector.baselines import GonModel, create_model
from dragon.detector.health import FaultHysteresis, fault_starts
from dragon.detector.online import OnlineSettings
from dragon.detector.pot import fit_pot

pytestmark = pytest.mark.unit

TINY = {"epochs": 2, "window": 4, "hidden": 8, "gen_steps": 2}
NEVER = 10**9  # steps between fine-tunes: none happens


def sinusoids(t: int, seed: int, level: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    steps = np.arange(t)[:, None]
    return level + 0.3 * np.sin(2 * np.pi * steps / 20 + np.arange(2)) + 0.02 * rng.standard_normal((t, 2))


@pytest.fixture(scope="module")
def trained() -> tuple[GonModel, np.ndarray, np.ndarray]:
    train = sinusoids(150, seed=0)
    test = np.concatenate([sinusoids(60, seed=1), sinusoids(60, seed=2, level=0.6)])  # then a heavier load
    model = create_model("gon", seed=0, **TINY)
    model.fit(train)
    return model, train, test


def test_without_a_fine_tune_the_online_scores_are_the_static_ones(trained) -> None:
    model, train, test = trained
    run = model.score_online(test, train, OnlineSettings(min_interval_steps=NEVER))
    static, _ = model.score(test, history=train)
    assert run.fine_tunes == []
    # Windows scaled after windowing here, before it in score(): equal up to float32 rounding.
    np.testing.assert_allclose(run.scores, static, rtol=1e-4, atol=1e-5)
    assert (run.thresholds == model.checkpoint.pot_state().z_q).all()
    assert run.contributions.shape == test.shape


def test_a_fine_tune_swaps_the_model_and_restarts_its_threshold(trained) -> None:
    model, train, test = trained
    served = model.checkpoint.model_id
    # Floor = the highest reference confidence: the gate fires as soon as it may.
    settings = OnlineSettings(reference=3, quantile=1.0, min_interval_steps=20, windows=10, pot_lag=0)
    run = model.score_online(test, train, settings)
    static, _ = model.score(test, history=train)
    assert len(run.fine_tunes) >= 2
    first, second = run.fine_tunes[0]["step"], run.fine_tunes[1]["step"]
    assert second - first >= 20
    assert (run.thresholds[: first + 1] == model.checkpoint.pot_state().z_q).all()
    assert (run.thresholds[first + 1 : second + 1] == run.fine_tunes[0]["threshold"]).all()
    assert np.allclose(run.scores[: first + 1], static[: first + 1], rtol=1e-4, atol=1e-5)
    assert not np.allclose(run.scores[first + 1 :], static[first + 1 :], rtol=1e-4, atol=1e-5)
    assert run.fine_tunes[0]["windows"] == 10  # the store full: fewer than POT's 500 at level 0.98, all there are
    assert model.checkpoint.model_id == served  # fine-tunes worked on copies


def test_a_fine_tune_waits_for_windows_enough_to_fit_pot_on(trained) -> None:
    model, train, test = trained
    open_gate = {"reference": 3, "quantile": 1.0, "min_interval_steps": 20}
    # POT at level 0.98 needs 500 windows for 10 peaks: the 120 steps of the test never give them.
    assert model.score_online(test, train, OnlineSettings(**open_gate)).fine_tunes == []
    level_80 = fit_pot(model.score(train)[0], level=0.8)  # 50 windows give it 10 peaks: it may start sooner
    run = model.score_online(test, train, OnlineSettings(**open_gate), pot=level_80)
    assert run.fine_tunes and run.fine_tunes[0]["windows"] >= 50


def test_the_same_seed_gives_the_same_online_run(trained) -> None:
    model, train, test = trained
    settings = OnlineSettings(reference=3, quantile=1.0, min_interval_steps=20, windows=10)
    first, again = (model.score_online(test, train, settings) for _ in range(2))
    np.testing.assert_array_equal(first.scores, again.scores)
    assert [t["step"] for t in first.fine_tunes] == [t["step"] for t in again.fine_tunes]


def test_spot_moves_the_threshold_between_fine_tunes(trained) -> None:
    model, train, test = trained
    run = model.score_online(test, train, OnlineSettings(min_interval_steps=NEVER, pot_mode="spot"))
    assert run.fine_tunes == [] and len(np.unique(run.thresholds)) > 1


@pytest.mark.parametrize(
    "bad",
    [
        {"pot_mode": "median"},
        {"reference": 2},
        {"windows": 1},
        {"steps": 0},
        {"min_interval_steps": -1},
        {"clear_windows": 0},
    ],
)
def test_settings_refuse_what_the_service_would(bad) -> None:
    with pytest.raises(ValueError):
        OnlineSettings(**bad)


def test_online_scoring_needs_a_trained_model() -> None:
    with pytest.raises(RuntimeError, match="before fit"):
        create_model("gon", seed=0, **TINY).score_online(sinusoids(10, seed=0), None)


def test_dspot_falls_back_to_spot_after_a_fine_tune_on_few_windows(trained) -> None:
    """A fine-tune learnt from ~10 windows has ~10 calibration scores: too few for DSPOT of depth 30."""
    model, train, test = trained
    settings = OnlineSettings(
        reference=3, quantile=1.0, min_interval_steps=20, windows=10, pot_mode="dspot", dspot_depth=30
    )
    run = model.score_online(test, train, settings)
    assert run.fine_tunes and run.fine_tunes[0]["windows"] <= 30
    assert np.isfinite(run.thresholds).all()


def test_a_fine_tune_reports_the_threshold_the_new_model_first_judged_against(trained) -> None:
    model, train, test = trained
    settings = OnlineSettings(
        reference=3, quantile=1.0, min_interval_steps=20, windows=10, pot_mode="dspot", dspot_depth=3
    )
    run = model.score_online(test, train, settings)
    assert run.fine_tunes
    for tune in run.fine_tunes:  # DSPOT's drift included, not the recalibration's z_q alone
        assert tune["threshold"] == run.thresholds[tune["step"] + 1]


def test_a_fault_ends_only_after_clear_windows_normal_verdicts_before_windows_count_again() -> None:
    faults = FaultHysteresis(clear_windows=2)
    labels = [0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0]
    assert [faults.update(label) for label in labels] == [1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1]


def test_a_fault_starts_only_after_start_windows_alarms_in_a_row() -> None:
    faults = FaultHysteresis(clear_windows=2, start_windows=2)
    labels = [1, 0, 0, 1, 1, 0, 0, 0, 1]
    # The lone alarm opens nothing: the next window is clean again. The pair opens a fault that
    # two normal windows end, the second still part of it.
    assert [faults.update(label) for label in labels] == [0, 1, 1, 0, 0, 0, 0, 1, 0]
    with pytest.raises(ValueError, match="start_windows"):
        FaultHysteresis(clear_windows=1, start_windows=0)
    # The replay the benchmarks score starts by: the pair's second alarm (index 4) starts the fault,
    # the alarm after it ended (index 8) does not, alone.
    assert fault_starts(labels, clear_windows=2, start_windows=2) == [4]
    assert fault_starts(labels, clear_windows=2) == [0, 3, 8]
    assert fault_starts(labels, 2, 2, at_once=[False] * 8 + [True]) == [4, 8]  # a silence opens alone


def test_the_replay_learns_only_once_a_fault_has_ended(trained) -> None:
    model, train, test = trained
    settings = {"reference": 3, "quantile": 1.0, "min_interval_steps": 20, "windows": 10}
    quick, slow = (
        model.score_online(test, train, OnlineSettings(**settings, clear_windows=clear)) for clear in (1, 40)
    )
    first_alarm = int(np.argmax(slow.scores >= slow.thresholds))  # the heavier load, at step 60
    assert 0 < first_alarm
    assert any(tune["step"] > first_alarm for tune in quick.fine_tunes)
    # A fault that needs 40 normal windows to end, then k clean ones: nothing is learnt before that.
    hold = first_alarm + 40 + TINY["window"]
    assert not any(first_alarm < tune["step"] <= hold for tune in slow.fine_tunes)
