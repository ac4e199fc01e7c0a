"""The co-simulation core: power, links and migrations, the twin (eq. 12/16) and QoS/fitness (eq. 15-18)."""

from __future__ import annotations

import numpy as np
import pytest

from dragon.sim.federation import EDGE_WAN, GIGABIT_LAN, RPI4B_4GB, Federation, Link, PowerProfile
from dragon.sim.qos import CoSimulator, FederationState, FitnessWeights, ServiceModel
from dragon.sim.twin import (
    UNPLACED,
    TwinParams,
    calibrate,
    forecast_error,
    next_usage,
    placements,
    scatter_tasks,
    task_demand,
)

pytestmark = pytest.mark.unit

GIB = 1024**3


def two_leis(hosts_per_lei: int = 2) -> Federation:
    """LEI a = hosts 0..k-1 (broker 0), LEI b = hosts k..2k-1 (broker k); cpu as a fraction, ram in bytes."""
    leis = ["a"] * hosts_per_lei + ["b"] * hosts_per_lei
    return Federation.uniform(leis, [0, hosts_per_lei], ("cpu", "ram"), (1.0, 4 * GIB))


def state(usage, placement, demand, ram_bytes=None, home_lei=None, fed: Federation | None = None) -> FederationState:
    placement = np.asarray(placement)
    fed = fed or two_leis()
    return FederationState(
        usage=np.asarray(usage, dtype=float),
        placement=placement,
        demand=np.asarray(demand, dtype=float),
        ram_bytes=np.full(len(placement), 100e6) if ram_bytes is None else np.asarray(ram_bytes, dtype=float),
        home_lei=fed.lei_index[placement] if home_lei is None else np.asarray(home_lei),
    )


def moving_only(move_gain: float = 1.0, hosts: int = 4) -> TwinParams:
    return TwinParams(np.zeros((hosts, 2)), np.full(2, move_gain), np.zeros(2))


# --- power and links -------------------------------------------------------------------------


def test_power_is_idle_at_rest_full_at_saturation_and_linear_between():
    fed = two_leis()
    watts = fed.power_w(np.array([0.0, 0.5, 1.0, 1.7]))
    assert watts == pytest.approx([2.7, (2.7 + 6.4) / 2, 6.4, 6.4])


def test_power_profile_refuses_idle_above_full_load():
    with pytest.raises(ValueError, match="idle"):
        PowerProfile("broken", idle_w=7.0, full_w=6.4)


def test_migration_time_follows_the_path_between_hosts():
    fed = two_leis()
    ram = np.full(3, 250e6)
    seconds = fed.migration_time(ram, np.array([1, 1, 1]), np.array([1, 0, 3]))
    assert seconds[0] == 0.0  # staying put is free
    assert seconds[1] == pytest.approx(2 * GIGABIT_LAN.latency_s + 250e6 / GIGABIT_LAN.bandwidth_bps)
    wan_latency = 2 * GIGABIT_LAN.latency_s + EDGE_WAN.latency_s
    assert seconds[2] == pytest.approx(2 * wan_latency + 250e6 / EDGE_WAN.bandwidth_bps)


def test_a_slower_wan_makes_cross_lei_moves_longer_but_not_local_ones():
    slow = Federation.uniform(["a", "a", "b", "b"], [0, 2], ("cpu", "ram"), (1.0, GIB), wan=Link(0.05, 1e6))
    fast = two_leis()
    args = (np.full(2, 50e6), np.array([1, 1]), np.array([0, 3]))
    assert slow.migration_time(*args)[0] == pytest.approx(fast.migration_time(*args)[0])
    assert slow.migration_time(*args)[1] > 10 * fast.migration_time(*args)[1]


@pytest.mark.parametrize(
    ("leis", "brokers", "message"),
    [(["a", "b"], [0], "exactly one broker"), (["a", "a"], [0, 1], "exactly one broker"), ([], [], "at least one")],
)
def test_federation_refuses_leis_without_exactly_one_broker(leis, brokers, message):
    with pytest.raises(ValueError, match=message):
        Federation.uniform(leis, brokers, ("cpu", "ram"), (1.0, GIB))


# --- the twin (eq. 12, 16) -------------------------------------------------------------------


def test_placements_turn_one_hot_schedules_into_host_indices():
    schedule = np.zeros((2, 3, 4))
    schedule[0, 0, 2] = schedule[0, 2, 1] = schedule[1, 1, 3] = 1
    assert placements(schedule).tolist() == [[2, UNPLACED, 1], [UNPLACED, 3, UNPLACED]]


def test_scatter_tasks_sums_each_decisions_tasks_per_host():
    values = np.array([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0]])
    out = scatter_tasks(values, np.array([[0, 0, 2], [UNPLACED, 1, 1]]), hosts=3)
    assert out[0].tolist() == [[3.0, 30.0], [0.0, 0.0], [4.0, 40.0]]
    assert out[1].tolist() == [[0.0, 0.0], [6.0, 60.0], [0.0, 0.0]]


def test_task_demand_shares_a_hosts_excess_and_prefers_measured_usage():
    usage = np.array([[0.7, 3.0], [0.1, 1.0]])
    background = np.array([[0.1, 1.0], [0.1, 1.0]])
    placement = np.array([0, 0, UNPLACED])
    measured = np.array([[0.5, np.nan], [np.nan, np.nan], [np.nan, np.nan]])
    demand = task_demand(usage, placement, background, measured)
    assert demand[0] == pytest.approx([0.5, 1.0])  # measured cpu, shared ram
    assert demand[1] == pytest.approx([0.3, 1.0])  # half of host 0's excess
    assert demand[2] == pytest.approx(demand[:2].mean(axis=0))  # a new task: the mean of the placed ones
    # One between two hosts (restored, not sampled there yet) keeps what its last sample measured.
    measured[2, 0] = 0.25
    assert task_demand(usage, placement, background, measured)[2] == pytest.approx([0.25, 1.0])


def test_persistence_predicts_the_same_usage_whatever_the_placement():
    usage = np.array([[0.5, 1.0], [0.2, 2.0], [0.3, 0.5], [0.9, 3.0]])
    demand = np.array([[0.2, 0.5], [0.1, 0.1]])
    predicted = next_usage(TwinParams.persistence(4, 2), usage, np.array([0, 3]), demand, np.array([[1, 2], [3, 0]]))
    assert np.array_equal(predicted, np.broadcast_to(usage, predicted.shape))


def test_a_moved_task_takes_its_demand_to_the_new_host_and_nothing_is_created():
    usage = np.array([[0.6, 2.0], [0.1, 0.5], [0.3, 1.0], [0.2, 1.0]])
    demand = np.array([[0.4, 1.5], [0.1, 0.2]])
    predicted = next_usage(moving_only(), usage, np.array([0, 2]), demand, np.array([[3, 2]]))[0]
    assert predicted[0] == pytest.approx([0.2, 0.5])
    assert predicted[3] == pytest.approx([0.6, 2.5])
    assert predicted.sum(axis=0) == pytest.approx(usage.sum(axis=0))


def test_prediction_is_clipped_to_capacity():
    usage = np.array([[0.9, 1.0], [0.8, 1.0]])
    demand = np.array([[0.5, 0.1]])
    predicted = next_usage(moving_only(hosts=2), usage, np.array([0]), demand, np.array([[1]]), np.ones((2, 2)) * 1.0)
    assert predicted[0, 1, 0] == 1.0


def synthetic_trace(move_gain: float, relax: float, steps: int = 300, seed: int = 0):
    """Hosts whose usage follows the twin's own law with noise, tasks hopping between hosts."""
    rng = np.random.default_rng(seed)
    m, p, n = 6, 5, 2
    background = rng.uniform(0.05, 0.2, (m, n))
    params = TwinParams(background, np.full(n, move_gain), np.full(n, relax))
    schedule = np.zeros((steps, p, m))
    place = rng.integers(0, m, p)
    hosts = np.zeros((steps, m, n))
    hosts[0] = background + scatter_tasks(rng.uniform(0.1, 0.3, (p, n)), place[None], m)[0]
    schedule[0, np.arange(p), place] = 1
    for t in range(1, steps):
        new_place = np.where(rng.random(p) < 0.3, rng.integers(0, m, p), place)
        demand = task_demand(hosts[t - 1], place, background)
        step = next_usage(params, hosts[t - 1], place, demand, new_place[None])[0]
        hosts[t] = np.maximum(step + rng.normal(0, 0.001, (m, n)), 0.0)
        schedule[t, np.arange(p), new_place] = 1
        place = new_place
    return hosts, schedule


def test_calibration_recovers_the_laws_gains_and_beats_persistence():
    hosts, schedule = synthetic_trace(move_gain=0.7, relax=0.2)
    params = calibrate(hosts[:200], schedule[:200])
    assert params.move_gain == pytest.approx([0.7, 0.7], abs=0.08)
    assert params.relax == pytest.approx([0.2, 0.2], abs=0.08)
    twin = forecast_error(params, hosts[200:], schedule[200:])
    persistence = forecast_error(TwinParams.persistence(6, 2), hosts[200:], schedule[200:])
    assert (twin < 0.9 * persistence).all()  # measured: 0.83-0.86


def test_calibration_of_a_persistent_trace_is_persistence():
    hosts, schedule = synthetic_trace(move_gain=0.0, relax=0.0, seed=1)
    params = calibrate(hosts, schedule)
    assert params.move_gain == pytest.approx([0, 0], abs=0.05)
    assert params.relax == pytest.approx([0, 0], abs=0.05)


def test_calibration_refuses_too_short_or_mismatched_traces():
    with pytest.raises(ValueError, match="T >= 3"):
        calibrate(np.zeros((2, 3, 2)), np.zeros((2, 1, 3)))
    with pytest.raises(ValueError, match="T >= 3"):
        calibrate(np.zeros((5, 3, 2)), np.zeros((4, 1, 3)))


# --- QoS and fitness (eq. 15-18) -------------------------------------------------------------


def busy_host_state() -> FederationState:
    """Host 1 (LEI a) runs two heavy tasks and is overloaded; LEI b is idle."""
    usage = [[0.1, 1 * GIB], [0.95, 3.8 * GIB], [0.1, 1 * GIB], [0.1, 1 * GIB]]
    demand = [[0.4, 1.4 * GIB], [0.4, 1.4 * GIB]]
    return state(usage, [1, 1], demand)


def test_moving_a_task_off_an_overloaded_host_clears_the_predicted_fault():
    sim = CoSimulator(two_leis(), moving_only())
    outcome = sim.evaluate(busy_host_state(), np.array([[UNPLACED, UNPLACED], [UNPLACED, 3]]))
    assert outcome.anomalous.tolist() == [1, 0]
    assert outcome.migration_s[0] == 0.0 and outcome.migration_s[1] > 0.0
    assert outcome.art[1] < outcome.art[0]  # the moved task no longer queues behind its neighbour


def test_normalised_qos_terms_lie_in_zero_one_for_any_decision():
    rng = np.random.default_rng(3)
    fed = two_leis(hosts_per_lei=4)
    usage = np.c_[rng.uniform(0, 1.2, 8), rng.uniform(0, 4 * GIB, 8)]
    placement = rng.integers(0, 8, 10)
    sim = CoSimulator(fed, TwinParams(np.zeros((8, 2)), np.ones(2), np.full(2, 0.1)))
    st = state(usage, placement, task_demand(usage, placement, np.zeros((8, 2))), fed=fed)
    decisions = np.where(rng.random((50, 10)) < 0.3, rng.integers(0, 8, (50, 10)), UNPLACED)
    outcome = sim.evaluate(st, decisions)
    for name in ("art", "aec", "slo_violations", "overhead"):
        values = getattr(outcome, name)
        assert ((values >= 0) & (values <= 1)).all(), name
    assert ((outcome.anomalous >= 0) & (outcome.anomalous <= 8)).all()


def test_fitness_is_the_weighted_sum_of_eq_18():
    weights = FitnessWeights(alpha=0.3, beta=0.2, delta1=0.7, delta2=0.4)
    sim = CoSimulator(two_leis(), moving_only(), weights=weights)
    outcome = sim.evaluate(busy_host_state(), np.array([[UNPLACED, 3], [2, 3]]))
    expected = 0.3 * outcome.art + 0.2 * outcome.aec + 0.7 * outcome.anomalous / 4 + 0.4 * outcome.overhead
    assert outcome.qos == pytest.approx(0.3 * outcome.art + 0.2 * outcome.aec)
    assert outcome.fitness == pytest.approx(expected)


def test_energy_rises_with_load_and_response_time_with_distance():
    fed = two_leis()
    sim = CoSimulator(fed, moving_only())
    light = state([[0.1, GIB]] * 4, [0], [[0.05, 0.1 * GIB]])
    heavy = state([[0.9, GIB]] * 4, [0], [[0.05, 0.1 * GIB]])
    stay = np.array([[UNPLACED]])
    assert sim.evaluate(heavy, stay).aec[0] > sim.evaluate(light, stay).aec[0]
    far = sim.evaluate(light, np.array([[UNPLACED], [1], [3]]))  # home LEI a: host 1 is local, host 3 remote
    assert far.art[2] > far.art[1]


def test_overhead_is_normalised_by_the_longest_migration_seen():
    sim = CoSimulator(two_leis(), moving_only())
    st = busy_host_state()
    before = sim.evaluate(st, np.array([[2, 3]]))
    sim.record_migration(10 * before.migration_s[0])
    after = sim.evaluate(st, np.array([[2, 3]]))
    assert after.migration_s[0] == before.migration_s[0]
    assert after.overhead[0] == pytest.approx(0.1)


def test_slo_violations_count_tasks_slower_than_their_slo():
    sim = CoSimulator(two_leis(), moving_only(), service=ServiceModel(service_time_s=1.0, slo_factor=2.0))
    st = state([[0.1, GIB], [0.9, GIB], [0.1, GIB], [0.1, GIB]], [0, 1], [[0.05, GIB], [0.05, GIB]])
    outcome = sim.evaluate(st, np.array([[UNPLACED, UNPLACED]]))
    assert outcome.slo_violations[0] == pytest.approx(0.5)  # host 1 at 90 % CPU: 10x slowdown


@pytest.mark.parametrize(
    ("decisions", "message"),
    [
        (np.array([[0, 1, 2]]), r"\(B, 2\)"),
        (np.array([[7, UNPLACED]]), "hosts must be in"),
        (np.array([[-3, 0]]), "hosts"),
    ],
)
def test_malformed_decisions_are_refused_with_the_reason(decisions, message):
    sim = CoSimulator(two_leis(), moving_only())
    with pytest.raises(ValueError, match=message):
        sim.evaluate(busy_host_state(), decisions)


def test_power_profile_of_the_default_host_is_the_pi_4b():
    assert (RPI4B_4GB.idle_w, RPI4B_4GB.full_w) == (2.7, 6.4)


def test_placing_a_task_that_runs_nowhere_yet_is_not_a_migration():
    sim = CoSimulator(two_leis(), moving_only())
    st = state([[0.1, GIB]] * 4, [UNPLACED, 1], [[0.1, 0.1 * GIB], [0.1, 0.1 * GIB]], home_lei=[0, 0])
    outcome = sim.evaluate(st, np.array([[3, UNPLACED]]))
    assert outcome.migration_s[0] == 0.0 and outcome.overhead[0] == 0.0


def test_a_state_cannot_change_under_the_co_simulators_cache():
    st = busy_host_state()
    with pytest.raises(ValueError, match="read-only"):
        st.placement[0] = 3


def test_calibration_follows_a_steady_drift_only_where_there_is_one():
    hosts, schedule = synthetic_trace(move_gain=0.7, relax=0.0, seed=2)
    hosts = hosts.copy()
    hosts[..., 1] += 0.002 * np.arange(len(hosts))[:, None]  # metric 1 creeps up: storage filling
    params = calibrate(hosts[:200], schedule[:200])
    assert params.drift[:, 1] == pytest.approx(0.002, abs=0.001)
    assert params.drift[:, 0] == pytest.approx(0.0, abs=1e-3)
    flat = TwinParams(params.background, params.move_gain, params.relax)
    with_drift = forecast_error(params, hosts[200:], schedule[200:])
    without = forecast_error(flat, hosts[200:], schedule[200:])
    assert with_drift[1] < 0.99 * without[1]
    assert with_drift[0] == pytest.approx(without[0], rel=0.01)
