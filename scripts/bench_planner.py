"""Benchmark the planner: decision time of DRAGON and DRAGON+, and annealing against exhaustive search.

1. Decision time: synthetic federations (``dragon.sim.scenarios``) of 16, 64 and 256 Pi 4Bs in
   LEIs of 4, as many tasks as hosts, an eighth of the hosts overloaded; for each size and seed,
   the wall time of ``anneal`` (DRAGON) and ``look_ahead`` with N = 5 (DRAGON+), and the fitness
   of doing nothing, of DRAGON's plan and of DRAGON+'s.
2. Optimality: on small federations (3 LEIs of 2 hosts, 5 tasks, (1 + 4)^5 = 3,125 decisions)
   the annealed fitness over the exhaustive optimum's.

    .venv/bin/python scripts/bench_planner.py --seeds 5 --out planner-bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from dragon.planner.annealing import anneal, exhaustive
from dragon.planner.lookahead import look_ahead
from dragon.sim.scenarios import random_scenario
from dragon.sim.twin import UNPLACED

SIZES = (16, 64, 256)


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, (time.perf_counter() - start) * 1e3


def decision_times(hosts: int, seeds: int) -> dict:
    rows = []
    for seed in range(seeds):
        sim, state = random_scenario(hosts, hosts, seed)
        faulty = np.flatnonzero(sim.judge(state.usage[None])[0])
        nothing = float(sim.evaluate(state, np.full((1, hosts), UNPLACED)).fitness[0])
        dragon, dragon_ms = timed(anneal, sim, state, faulty, rng=np.random.default_rng(seed))
        plus, plus_ms = timed(look_ahead, sim, state, faulty, rng=np.random.default_rng(seed))
        rows.append(
            {
                "seed": seed,
                "faulty_hosts": len(faulty),
                "fitness_nothing": nothing,
                "fitness_dragon": dragon.fitness,
                "fitness_dragon_plus": plus.fitness,
                "moves_dragon": len(dragon.moves),
                "moves_dragon_plus": len(plus.moves),
                "dragon_ms": dragon_ms,
                "dragon_plus_ms": plus_ms,
                "evaluations_dragon": dragon.evaluations,
            }
        )
    median = {key: statistics.median(row[key] for row in rows) for key in rows[0] if key != "seed"}
    return {"hosts": hosts, "runs": rows, "median": median}


def optimality(cases: int) -> dict:
    ratios, nontrivial = [], 0
    for seed in range(cases):
        sim, state = random_scenario(6, 5, seed, hosts_per_lei=2, hot_share=0.0, cpu_demand=(0.25, 0.6))
        faulty = np.flatnonzero(sim.judge(state.usage[None])[0])
        optimum = exhaustive(sim, state, avoid=faulty)  # the same space: nothing moves onto a faulty host
        plan = anneal(sim, state, faulty, rng=np.random.default_rng(seed))
        ratios.append(plan.fitness / optimum.fitness)
        nontrivial += bool(optimum.moves)
    ratios = np.array(ratios)
    return {
        "cases": cases,
        "cases_where_moving_is_optimal": nontrivial,
        "exact_share": float((ratios <= 1 + 1e-9).mean()),
        "worst_ratio": float(ratios.max()),
        "within_2_percent_share": float((ratios <= 1.02).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="scenarios per size (default 5)")
    parser.add_argument("--cases", type=int, default=100, help="small cases checked against exhaustive search")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here too")
    args = parser.parse_args()

    report = {"decision_time": [], "optimality": None}
    for hosts in SIZES:
        result = decision_times(hosts, args.seeds)
        report["decision_time"].append(result)
        m = result["median"]
        print(
            f"{hosts:4d} hosts ({m['faulty_hosts']:.0f} faulty): DRAGON {m['dragon_ms']:.0f} ms,"
            f" DRAGON+ (N=5) {m['dragon_plus_ms']:.0f} ms; fitness nothing {m['fitness_nothing']:.4f},"
            f" DRAGON {m['fitness_dragon']:.4f} ({m['moves_dragon']:.0f} moves),"
            f" DRAGON+ {m['fitness_dragon_plus']:.4f} ({m['moves_dragon_plus']:.0f} moves)  [medians of {args.seeds}]"
        )
    report["optimality"] = optimality(args.cases)
    o = report["optimality"]
    print(
        f"annealing vs exhaustive on {o['cases']} small cases ({o['cases_where_moving_is_optimal']} where moving"
        f" is optimal): exact {o['exact_share']:.0%}, within 2 % {o['within_2_percent_share']:.0%},"
        f" worst ratio {o['worst_ratio']:.4f}"
    )
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
