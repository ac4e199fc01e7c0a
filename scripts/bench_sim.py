"""Benchmark the co-simulator: next-window error against persistence, and fitness evaluations per second.

1. Calibration check (issue 4): for each rpi16 trace, fit the twin (``dragon.sim.twin.calibrate``)
   on the first 70 % of the intervals from the first busy one, forecast each next interval of
   the last 30 % from the one before and the next schedule, and print the MAE per metric of the
   twin and of persistence (W_{t+1} = W_t).
2. Throughput: batches of candidate decisions (3 tasks moved each) scored by
   ``CoSimulator.evaluate`` for federations of 16, 64 and 256 hosts; the median of several
   one-second runs, in fitness evaluations per second.

    .venv/bin/python scripts/bench_sim.py --data ../shared/data --out sim-bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from dragon.detector.federation_data import equal_leis, load_federation_dir
from dragon.sim.federation import Federation
from dragon.sim.qos import CoSimulator, FederationState
from dragon.sim.twin import UNPLACED, TwinParams, calibrate, forecast_error, task_demand

TRACES = ("rpi16-testbed", "rpi16-simulated")
TRAIN_SHARE = 0.7
# The rpi16 traces give cpu in percent of the host (0-100); ram and disk have no stated ceiling.
RPI16_CAPACITY = {"cpu": 100.0}


def capacity_of(metrics: tuple[str, ...]) -> np.ndarray:
    return np.array([RPI16_CAPACITY.get(name, np.inf) for name in metrics])


def calibration_check(data: Path) -> dict:
    results = {}
    for name in TRACES:
        trace = load_federation_dir(data / name).started()
        split = int(TRAIN_SHARE * trace.steps)
        params = calibrate(trace.hosts[:split], trace.schedule[:split], capacity_of(trace.feature_names))
        # The first test forecast starts from the last training interval.
        test_hosts, test_schedule = trace.hosts[split - 1 :], trace.schedule[split - 1 :]
        capacity = capacity_of(trace.feature_names)
        twin = forecast_error(params, test_hosts, test_schedule, capacity)
        persistence = forecast_error(
            TwinParams.persistence(*trace.hosts.shape[1:]), test_hosts, test_schedule, capacity
        )
        results[name] = {
            "train_intervals": split,
            "test_forecasts": len(test_hosts) - 1,
            "metrics": {
                metric: {
                    "twin_mae": float(twin[f]),
                    "persistence_mae": float(persistence[f]),
                    "ratio": float(twin[f] / persistence[f]),
                    "move_gain": float(params.move_gain[f]),
                    "relax": float(params.relax[f]),
                    "drift_median": float(np.median(params.drift[:, f])),
                }
                for f, metric in enumerate(trace.feature_names)
            },
        }
    return results


def random_case(hosts: int, tasks: int, batch: int, seed: int) -> tuple[CoSimulator, FederationState, np.ndarray]:
    """A federation of ``hosts`` Pis in LEIs of 4, ``tasks`` placed at random, ``batch`` decisions moving 3 tasks."""
    rng = np.random.default_rng(seed)
    lei_of_host, brokers = equal_leis(hosts, hosts // 4)
    fed = Federation.uniform(lei_of_host, brokers, ("cpu", "ram"), (1.0, 4e9))
    usage = np.c_[rng.uniform(0.1, 0.9, hosts), rng.uniform(1e9, 3e9, hosts)]
    placement = rng.integers(0, hosts, tasks)
    params = TwinParams(np.c_[np.full(hosts, 0.05), np.full(hosts, 5e8)], np.ones(2), np.full(2, 0.05))
    demand = task_demand(usage, placement, params.background)
    state = FederationState(usage, placement, demand, rng.uniform(50e6, 500e6, tasks), fed.lei_index[placement])
    decisions = np.full((batch, tasks), UNPLACED)
    for row in decisions:
        row[rng.choice(tasks, 3, replace=False)] = rng.integers(0, hosts, 3)
    return CoSimulator(fed, params), state, decisions


def throughput(hosts: int, batch: int, repeats: int, seconds: float) -> dict:
    sim, state, decisions = random_case(hosts, tasks=hosts, batch=batch, seed=hosts)
    sim.evaluate(state, decisions)  # warm-up
    rates = []
    for _ in range(repeats):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            sim.evaluate(state, decisions)
            done += batch
        rates.append(done / (time.perf_counter() - start))
    single = []
    for _ in range(200):
        start = time.perf_counter()
        sim.evaluate(state, decisions[:1])
        single.append((time.perf_counter() - start) * 1e3)
    return {
        "hosts": hosts,
        "tasks": hosts,
        "batch": batch,
        "evaluations_per_s_median": statistics.median(rates),
        "evaluations_per_s_runs": rates,
        "single_decision_ms_p50": float(np.percentile(single, 50)),
        "single_decision_ms_p99": float(np.percentile(single, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder holding rpi16-testbed and rpi16-simulated")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here too")
    parser.add_argument("--batch", type=int, default=64, help="decisions per evaluate() call (default 64)")
    parser.add_argument("--repeats", type=int, default=5, help="one-second throughput runs per size (default 5)")
    args = parser.parse_args()

    report = {"calibration": calibration_check(args.data), "throughput": []}
    for name, result in report["calibration"].items():
        print(f"{name}: trained on {result['train_intervals']} intervals, {result['test_forecasts']} forecasts")
        for metric, row in result["metrics"].items():
            print(
                f"  {metric:5s} twin MAE {row['twin_mae']:10.4f}  persistence {row['persistence_mae']:10.4f}"
                f"  ratio {row['ratio']:.3f}  (lambda {row['move_gain']:.3f}, rho {row['relax']:.3f},"
                f" drift {row['drift_median']:.4g})"
            )
    for hosts in (16, 64, 256):
        row = throughput(hosts, args.batch, args.repeats, seconds=1.0)
        report["throughput"].append(row)
        print(
            f"{hosts:4d} hosts: {row['evaluations_per_s_median']:,.0f} evaluations/s (batch {args.batch}),"
            f" one decision p50 {row['single_decision_ms_p50']:.3f} ms, p99 {row['single_decision_ms_p99']:.3f} ms"
        )
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
