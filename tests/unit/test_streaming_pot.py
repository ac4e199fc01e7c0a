"""StreamingPot: the one streaming SPOT/DSPOT rule, one score at a time, and its plain-dict state."""

from __future__ import annotations

import dataclasses
import json
import math

import msgpack
import numpy as np
import pytest

from dragon.detector.pot import (
    MAX_ALLOWANCE,
    MAX_STREAM_PEAKS,
    PotState,
    StreamingPot,
    censored_mle,
    drift_removed,
    dspot_thresholds,
    fit_pot,
    fit_tail,
    gpd_quantile,
    grimshaw,
    spot_thresholds,
)

pytestmark = pytest.mark.unit


def reference_thresholds(state: PotState, scores: np.ndarray, recent: list[float], max_peaks: int) -> np.ndarray:
    """The batch loop spot_thresholds and dspot_thresholds ran before StreamingPot, kept as the oracle.

    ``recent`` empty is SPOT; otherwise DSPOT with depth ``len(recent)``. Deliberate changes
    since: the old DSPOT loop did not move z_q with n on a normal score below t, the SPOT loop
    did, and both now follow the SPOT rule; when the oldest peak is dropped, n loses its share
    too (``max_peaks`` of it, see the aging test below); alarms up to an allowance of q per
    score are learnt as excesses censored at the threshold they reached, which age with the
    peaks (see the tests of censoring below).
    """
    thresholds = np.empty(len(scores))
    peaks, current, n, depth = list(state.peaks), state, state.n, len(recent)
    censored, allowance, ageing = [], 0.0, 0.0

    def refit() -> PotState:
        start = (current.gamma, current.sigma) if current.method == "gpd" else None
        return fit_tail(state.t, np.asarray(peaks), n, state.q, state.level, censored=censored, start=start)

    for i, score in enumerate(scores):
        mean = sum(recent) / depth if depth else 0.0
        thresholds[i] = mean + current.z_q
        excess = score - mean
        allowance = min(MAX_ALLOWANCE, allowance + state.q)
        if excess >= current.z_q:
            if allowance >= 1.0 and current.method != "no_peaks":
                allowance, n = allowance - 1.0, n + 1
                censored = [*censored, current.z_q - state.t]
                current = refit()
            continue
        if depth:
            recent = [*recent[1:], score]
        n += 1
        if excess > state.t:
            peaks = [*peaks, excess - state.t]
            if len(peaks) > max_peaks:
                peaks, n = peaks[1:], max(max_peaks, round(n * (1 - 1 / max_peaks)))
                ageing += len(censored) / max_peaks
                drop = min(int(ageing), len(censored))
                censored, ageing = censored[drop:], ageing - drop
            current = refit()
        elif current.method != "no_peaks":
            z_q = gpd_quantile(state.t, current.gamma, current.sigma, state.q, n, len(peaks) + len(censored))
            current = dataclasses.replace(current, n=n, z_q=z_q)
    return thresholds


def random_stream(seed: int, size: int, outliers: int = 0) -> np.ndarray:
    """Exponential, normal or heavy-tailed scores, with ``outliers`` huge ones (alarms)."""
    rng = np.random.default_rng(seed)
    draw = (rng.exponential, rng.standard_normal, lambda size: rng.pareto(3.0, size))[seed % 3]
    scores = draw(size=size)
    scores[rng.integers(0, size, outliers)] += 50.0
    return scores


@pytest.mark.parametrize("seed", range(3))  # one stream per distribution
def test_spot_thresholds_reproduce_the_reference_loop_exactly(seed: int) -> None:
    calibration, stream = random_stream(seed, 800), random_stream(seed + 3, 2_000, outliers=20)
    state = fit_pot(calibration, q=1e-3, level=0.98)
    max_peaks = 30  # small, so the oldest peaks age out during the stream
    expected = reference_thresholds(state, stream, [], max_peaks)
    assert np.array_equal(spot_thresholds(state, stream, max_peaks), expected)
    incremental = StreamingPot(state, max_peaks=max_peaks)
    assert [incremental.update(float(score))[0] for score in stream] == expected.tolist()


@pytest.mark.parametrize("seed", range(3))  # one stream per distribution
def test_dspot_thresholds_reproduce_the_reference_loop_exactly(seed: int) -> None:
    calibration = random_stream(seed, 800)
    stream = random_stream(seed + 3, 2_000, outliers=20) + np.linspace(0, 3, 2_000)  # a slow drift
    depth = 15
    state = fit_pot(drift_removed(calibration, depth), q=1e-3, level=0.98)
    expected = reference_thresholds(state, stream, list(calibration[-depth:]), MAX_STREAM_PEAKS)
    assert np.array_equal(dspot_thresholds(calibration, stream, depth, q=1e-3, level=0.98), expected)
    incremental = StreamingPot.calibrate(calibration, q=1e-3, level=0.98, depth=depth)
    assert incremental.tail == state and incremental.recent == tuple(calibration[-depth:])
    assert [incremental.update(float(score))[0] for score in stream] == expected.tolist()


def test_threshold_converges_near_the_true_quantile_of_a_stationary_exponential_stream() -> None:
    rng = np.random.default_rng(0)
    stream = StreamingPot.calibrate(rng.exponential(size=2_000), q=1e-3, level=0.98)
    alarms = sum(stream.update(float(score))[1] for score in rng.exponential(size=20_000))
    assert stream.threshold == pytest.approx(-math.log(1e-3), rel=0.15)  # Exp(1): P(X > -ln q) = q
    # Every normal score counts, and so does every alarm learnt as a censored excess.
    assert stream.tail.n == 2_000 + 20_000 - alarms + len(stream.tail.censored)
    assert 0 < len(stream.tail.censored) <= 20_000 * 1e-3
    assert alarms / 20_000 < 5e-3


def streaming(depth: int, rng: np.random.Generator) -> StreamingPot:
    """Calibrated on 2,000 Exp(1) scores, then 300 more streamed."""
    stream = StreamingPot.calibrate(rng.exponential(size=2_000), q=1e-3, level=0.98, depth=depth)
    stream.run(rng.exponential(size=300))
    return stream


@pytest.mark.parametrize("depth", [0, 10])
def test_an_alarm_beyond_the_allowance_is_not_learnt_from(depth: int) -> None:
    stream = streaming(depth, np.random.default_rng(1))
    assert stream.allowance < 1.0  # 300 scores at q = 1e-3
    before = stream.to_dict()
    threshold, alarm = stream.update(before["tail"]["z_q"] + stream.drift + 1e6)
    assert alarm and threshold == stream.threshold
    after = stream.to_dict()
    assert after.pop("allowance") == pytest.approx(before.pop("allowance") + 1e-3)
    assert after == before  # not in n, not a peak, not censored, not in the moving average
    threshold, alarm = stream.update(stream.drift)  # a normal score is learnt from
    assert not alarm and stream.tail.n == before["tail"]["n"] + 1


@pytest.mark.parametrize("depth", [0, 10])
def test_an_alarm_within_the_allowance_is_learnt_as_reaching_the_threshold_only(depth: int) -> None:
    stream = streaming(depth, np.random.default_rng(1))
    stream.allowance = 1.0
    tail, recent = stream.tail, stream.recent
    stream.update(tail.z_q + stream.drift + 1e6)
    # Censored where the threshold was, whatever the score: a fault's level never enters the fit.
    assert stream.tail.censored == (tail.z_q - tail.t,) and stream.tail.peaks == tail.peaks
    assert stream.tail.n == tail.n + 1 and stream.recent == recent
    assert stream.allowance == pytest.approx(1e-3)
    assert stream.threshold > tail.z_q + (stream.drift if depth else 0.0) - 1e-9  # the tail got no lighter


def test_a_long_stationary_stream_keeps_its_alarm_rate_instead_of_drifting_up() -> None:
    # Leaving every alarm out lost the largest normal scores from the tail: on this stream the
    # alarm rate rose from 1.7e-3 to 3.6e-3 by the third 30,000 scores (q = 1e-3).
    rng = np.random.default_rng(0)
    stream = StreamingPot.calibrate(rng.exponential(size=5_000), q=1e-3, level=0.98)
    alarms = np.array([stream.update(float(score))[1] for score in rng.exponential(size=90_000)])
    rates = alarms.reshape(3, -1).mean(axis=1)
    assert rates[-1] < 2.5e-3, rates
    assert stream.threshold == pytest.approx(-math.log(1e-3), rel=0.1)


def test_a_long_fault_barely_raises_the_threshold() -> None:
    rng = np.random.default_rng(0)
    stream = StreamingPot.calibrate(rng.exponential(size=5_000), q=1e-3, level=0.98)
    stream.run(rng.exponential(size=2_000))
    before = stream.threshold
    alarms = [stream.update(20.0)[1] for _ in range(500)]
    assert all(alarms)
    # Counting the fault's alarms as peaks capped at the threshold raised it from 6.7 to 17.7.
    assert len(stream.tail.censored) <= MAX_ALLOWANCE and stream.threshold < 1.1 * before


def test_the_censored_fit_recovers_a_tail_whose_largest_values_are_only_known_to_exceed_a_level() -> None:
    rng = np.random.default_rng(5)
    gamma, sigma, level = 0.2, 1.0, 4.0
    excesses = sigma / gamma * (rng.uniform(size=4_000) ** -gamma - 1.0)  # GPD(0.2, 1)
    peaks, censored = excesses[excesses < level], np.full((excesses >= level).sum(), level)
    fitted = censored_mle(peaks, censored)
    assert fitted == pytest.approx((gamma, sigma), abs=0.08)
    dropped = grimshaw(peaks)  # leaving them out instead: a much lighter tail
    assert dropped[0] < gamma - 0.2


def test_alarm_is_the_score_reaching_the_threshold_in_force() -> None:
    stream = StreamingPot.calibrate(np.random.default_rng(2).exponential(size=1_000), q=1e-3, level=0.98)
    z_q = stream.threshold
    assert stream.update(np.nextafter(z_q, -np.inf)) == (z_q, False)
    assert stream.update(stream.threshold) == (stream.threshold, True)


@pytest.mark.parametrize("depth", [0, 10])
def test_state_round_trips_through_msgpack_and_json_and_continues_identically(depth: int) -> None:
    rng = np.random.default_rng(3)
    stream = streaming(depth, rng)
    data = stream.to_dict()
    assert StreamingPot.from_dict(msgpack.unpackb(msgpack.packb(data))) == stream
    restored = StreamingPot.from_dict(json.loads(json.dumps(data)))
    assert restored == stream
    rest = rng.exponential(size=500)
    assert np.array_equal(restored.run(rest), stream.run(rest))  # what a service does between batches


def test_unknown_or_inconsistent_state_is_rejected() -> None:
    data = StreamingPot.calibrate(np.random.default_rng(4).exponential(size=500), q=1e-3, depth=5).to_dict()
    with pytest.raises(ValueError, match="unknown StreamingPot keys"):
        StreamingPot.from_dict(data | {"dpeth": 5})
    with pytest.raises(ValueError, match="unknown PotState keys"):
        StreamingPot.from_dict(data | {"tail": data["tail"] | {"zq": 1.0}})
    with pytest.raises(ValueError, match="depth"):
        StreamingPot.from_dict(data | {"recent": data["recent"][:-1]})


def test_a_refit_without_a_finite_tail_keeps_its_peaks() -> None:
    # So many scores per peak that the extrapolated quantile falls below t: no usable tail.
    state = fit_tail(1.0, np.array([0.5, 0.7]), n=10**7, q=1e-3, level=0.98)
    assert state.method == "no_peaks" and state.z_q > state.t
    assert state.peaks == (0.5, 0.7) and state.n_peaks == 2


def test_a_host_quiet_for_hours_is_never_judged_below_t_and_censors_no_negative_excess() -> None:
    """Each normal score moves z_q with n; once fewer than q n scores lie above t (a host whose
    scores fell for good: 20,000 below t after 10 peaks), the quantile it extrapolates would lie
    below t, where the tail says nothing: scores the calibration called ordinary would alarm."""
    rng = np.random.default_rng(0)
    stream = StreamingPot.calibrate(rng.exponential(size=500), q=1e-3, level=0.98)
    t = stream.tail.t
    thresholds = [stream.update(float(score))[0] for score in 0.5 * rng.random(20_000)]
    assert min(thresholds) > t
    assert stream.tail.method == "no_peaks" and stream.threshold > t
    assert stream.update(t)[1] is False  # a score at t is no alarm
    # A state stored by older code, its z_q sunk below t, learns no alarm as a negative excess.
    sunk = StreamingPot(dataclasses.replace(fit_pot(rng.exponential(size=500)), censored=()))
    sunk.tail = dataclasses.replace(sunk.tail, z_q=sunk.tail.t - 1.0)
    sunk.allowance = MAX_ALLOWANCE  # an alarm now would be learnt as censored
    assert sunk.update(sunk.tail.t)[1] is True and sunk.tail.censored == ()


def test_n_ages_with_the_peaks_it_was_counted_with() -> None:
    # 200 peaks kept out of some 800 over a 40,000-score stream: without aging n would count
    # all 42,000 scores against 200 peaks and the estimated tail rate would be 4x too small.
    rng = np.random.default_rng(1)
    stream = StreamingPot.calibrate(rng.exponential(size=2_000), q=1e-3, level=0.98)
    stream.max_peaks = 200
    alarms = sum(stream.update(float(score))[1] for score in rng.exponential(size=40_000))
    assert len(stream.tail.peaks) == 200
    assert stream.tail.n < (2_000 + 40_000 - alarms) / 2
    assert stream.threshold > stream.tail.t


@pytest.mark.parametrize("seed", range(3))  # one stream per distribution
def test_until_an_alarm_a_lagged_stream_is_the_plain_stream_lag_scores_late(seed: int) -> None:
    calibration, stream = random_stream(seed, 800), random_stream(seed + 3, 2_000, outliers=3)
    state = fit_pot(calibration, q=1e-3, level=0.98)
    plain = spot_thresholds(state, stream)
    assert np.array_equal(spot_thresholds(state, stream, lag=0), plain)
    for lag in (1, 10):
        lagged = spot_thresholds(state, stream, lag=lag)
        first_alarm = int(np.argmax((stream >= plain) | (stream >= lagged)))
        assert first_alarm > 100  # the comparison below covers a stretch with peaks in it
        assert np.array_equal(lagged[lag:first_alarm], plain[: first_alarm - lag])
        assert np.all(lagged[:lag] == state.z_q)  # nothing learnt while the first scores are held


def test_the_onset_of_a_fault_held_back_does_not_raise_the_threshold_the_fault_is_judged_by() -> None:
    rng = np.random.default_rng(6)
    calibration, normal = rng.exponential(size=600), rng.exponential(size=300)
    onset_and_fault = np.concatenate([np.linspace(0.8, 0.99, 8), np.full(20, 1.01)])  # times the threshold
    judged = {}
    for lag in (0, 10):
        stream = StreamingPot.calibrate(calibration, q=1e-3, level=0.98, lag=lag)
        stream.run(normal)
        before, n, censored = stream.threshold, stream.tail.n, len(stream.tail.censored)
        alarms = [stream.update(float(score))[1] for score in onset_and_fault * before]
        stream.run(np.full(lag + 1, 0.01))  # after the fault
        learnt = stream.tail.n - n - (len(stream.tail.censored) - censored)
        onset_peaks = set(np.round(onset_and_fault[:8] * before - stream.tail.t, 9)) & set(
            np.round(stream.tail.peaks, 9)
        )
        judged[lag] = (sum(alarms), stream.threshold / before, learnt, len(onset_peaks))
    # Learnt at once, eight onset peaks lift the bar above the fault (no alarm at all).
    assert judged[0][0] == 0 and judged[0][1] > 1.01 and judged[0][3] == 8
    # Held back, they are dropped by the first alarm with the two normal scores before them: the
    # whole fault is flagged, and what was learnt is the eight normal scores the onset pushed out
    # of the held ones and the first score after the fault.
    assert judged[10][0] == 20 and 0.99 < judged[10][1] <= 1.0
    assert judged[10][2] == 8 + 1 and judged[10][3] == 0


def test_normal_scores_between_two_close_alarms_are_learnt_at_the_second() -> None:
    stream = StreamingPot.calibrate(np.random.default_rng(8).exponential(size=600), q=1e-3, level=0.98, lag=10)
    stream.run(np.full(10, 0.01))
    n, alarm = stream.tail.n, 10 * stream.threshold
    stream.run(np.array([alarm, 0.01, 0.02, 0.03]))  # the first alarm comes after 10 normal scores
    assert stream.held == (0.01, 0.02, 0.03) and stream.tail.n == n  # the first ten were dropped
    stream.update(alarm)
    assert stream.held == () and stream.tail.n == n + 3


def test_a_fault_right_after_the_calibration_has_its_onset_dropped_too() -> None:
    # A new model (or a fine-tuned one) starts from a calibration on normal scores: a quiet spell,
    # though fewer than ``lag`` scores have been judged since.
    stream = StreamingPot.calibrate(np.random.default_rng(9).exponential(size=600), q=1e-3, level=0.98, lag=10)
    n, alarm = stream.tail.n, 10 * stream.threshold
    onset = 0.95 * stream.threshold
    stream.run(np.array([0.01, onset, onset]))  # three scores, the fault's first two just under the bar
    assert stream.quiet and len(stream.held) == 3
    stream.update(alarm)
    assert stream.held == () and stream.tail.n == n and not stream.quiet  # the onset was not learnt
    # From then on as before: an alarm after fewer than ``lag`` normal scores learns them.
    stream.run(np.array([0.01, 0.02]))
    stream.update(alarm)
    assert stream.tail.n == n + 2


def test_a_level_that_moved_for_good_is_learnt_by_dspot_as_without_the_lag() -> None:
    # Dropping the held scores at every alarm, the alarms of the new level kept DSPOT from
    # learning it: 172 alarms here instead of 2.
    alarms = {}
    for lag in (0, 10):
        rng = np.random.default_rng(0)
        stream = StreamingPot.calibrate(rng.exponential(size=2_000), q=1e-3, level=0.98, depth=20, lag=lag)
        stream.run(rng.exponential(size=1_000))
        alarms[lag] = sum(stream.update(float(score))[1] for score in rng.exponential(size=3_000) + 6.0)
    assert alarms[10] <= 1.1 * alarms[0] + 5, alarms


def test_a_lagged_stationary_stream_keeps_its_alarm_rate() -> None:
    # Each alarm drops up to ``lag`` normal scores; on a stationary stream that must not thin the tail.
    rng = np.random.default_rng(0)
    stream = StreamingPot.calibrate(rng.exponential(size=5_000), q=1e-3, level=0.98, lag=10)
    alarms = np.array([stream.update(float(score))[1] for score in rng.exponential(size=90_000)])
    assert alarms.reshape(3, -1).mean(axis=1)[-1] < 2.5e-3
    assert stream.threshold == pytest.approx(-math.log(1e-3), rel=0.1)


def test_held_scores_round_trip_and_a_state_written_before_the_lag_loads_as_lag_zero() -> None:
    rng = np.random.default_rng(7)
    stream = StreamingPot.calibrate(rng.exponential(size=800), q=1e-3, level=0.98, depth=5, lag=4)
    stream.run(rng.exponential(size=50))
    assert len(stream.held) == 4
    restored = StreamingPot.from_dict(msgpack.unpackb(msgpack.packb(stream.to_dict())))
    assert restored == stream
    rest = rng.exponential(size=300)
    assert np.array_equal(restored.run(rest), stream.run(rest))
    old = {key: value for key, value in stream.to_dict().items() if key not in ("lag", "held")}
    assert StreamingPot.from_dict(old).lag == 0
    with pytest.raises(ValueError, match="lag"):
        StreamingPot.from_dict(stream.to_dict() | {"lag": 2})  # more held than the lag allows
    for value in ("yes", 1, None, 1.0):
        with pytest.raises(ValueError, match="true or false"):
            StreamingPot.from_dict(stream.to_dict() | {"quiet": value})


def test_quiet_is_stored_only_while_the_held_scores_do_not_say_it() -> None:
    stream = StreamingPot.calibrate(np.random.default_rng(10).exponential(size=600), q=1e-3, level=0.98, lag=4)
    stream.run(np.full(2, 0.01))
    # Just calibrated: quiet with two held scores, which alone would not say so.
    assert stream.to_dict()["quiet"] is True
    assert StreamingPot.from_dict(msgpack.unpackb(msgpack.packb(stream.to_dict()))) == stream
    stream.run(np.full(2, 0.01))  # four held: they say it, and the state reads as before
    assert "quiet" not in stream.to_dict()
    stream.update(10 * stream.threshold)
    stream.run(np.full(2, 0.01))  # after an alarm, two held: not quiet, as the held scores say
    assert "quiet" not in stream.to_dict() and not StreamingPot.from_dict(stream.to_dict()).quiet


def test_a_state_written_before_quiet_existed_learns_its_held_scores_at_the_next_alarm() -> None:
    # The lag's first version wrote no ``quiet``: fewer than ``lag`` held scores meant "learn them".
    stream = StreamingPot.calibrate(np.random.default_rng(11).exponential(size=600), q=1e-3, level=0.98, lag=10)
    stream.run(np.full(3, 0.01))
    old = {key: value for key, value in stream.to_dict().items() if key != "quiet"}
    restored = StreamingPot.from_dict(old)
    n = restored.tail.n
    restored.update(10 * restored.threshold)
    assert restored.tail.n == n + 3


def test_a_lag_zero_state_round_trips_equal_after_an_alarm() -> None:
    stream = StreamingPot.calibrate(np.random.default_rng(12).exponential(size=600), q=1e-3, level=0.98)
    stream.update(10 * stream.threshold)
    assert StreamingPot.from_dict(msgpack.unpackb(msgpack.packb(stream.to_dict()))) == stream
