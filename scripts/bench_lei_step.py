"""Time one LEI step as the detector judges it in scope ``lei``: assembly and scoring, per host count.

For each host count m (and with the graph transformer off and on) it trains a small joint model
on a synthetic LEI of m hosts, one task each (two epochs: the time of a step does not depend on
the weights), then times, over ``--calls`` calls after 3 warm-up calls:

- ``assemble``: :func:`dragon.detector.lei.steps_to_judge` for the m samples of one step, from
  the hosts' stored history (what the service does after reading Redis);
- ``score``: :meth:`dragon.detector.scorer.Scorer.score_steps` on that step, every host judged
  (generation with AdaHessian, eq. 13, the verdicts).

It prints one JSON line per case, then a table of medians and 99th percentiles in ms.

    python scripts/bench_lei_step.py --hosts 16 64 256 --threads 1
    python scripts/bench_lei_step.py --hosts 16 --hessian-every 5   # AdaHessian's delayed Hessian update
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from dragon.detector.gon import GonConfig
from dragon.detector.learning import min_span
from dragon.detector.lei import lei_trace, steps_to_judge, train_from_lei
from dragon.detector.scorer import Scorer
from dragon.logs import configure
from dragon.messages.schemas import HOST_METRICS, HostMetrics, HostSample, TaskUsage
from dragon.store import StoredSample

WARMUP_CALLS = 3
HISTORY = 40  # stored samples per host: more than a window and the training needs


def synthetic_history(hosts: int, steps: int, seed: int) -> dict[str, list[StoredSample]]:
    """Hosts whose cpu is their one task's plus noise; the other metrics noise around a level."""
    rng = np.random.default_rng(seed)
    levels = np.array([0.1, 0.3, 0.0, 1e4, 1e5, 1e4, 1e4])
    history = {}
    for i in range(hosts):
        task = 0.05 + 0.05 * rng.random(steps)
        rows = levels * rng.lognormal(0.0, 0.1, (steps, len(levels)))
        rows[:, 0] = task + 0.02 + 0.005 * rng.standard_normal(steps)
        history[f"h{i:03d}"] = [
            StoredSample(1.0 + t, rows[t].clip(0).tolist(), {f"t{i:03d}": float(task[t])}) for t in range(steps)
        ]
    return history


def as_samples(history: dict[str, list[StoredSample]], index: int) -> list[HostSample]:
    samples = []
    for host, stored in history.items():
        s = stored[index]
        usage = tuple(TaskUsage(task, task, cpu, 5e7) for task, cpu in s.tasks.items())
        samples.append(HostSample("bench", host, s.ts, index, 1.0, HostMetrics(*s.vector), usage))
    return samples


def timed(action, calls: int) -> list[float]:
    for _ in range(WARMUP_CALLS):
        action()
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - started)
    return seconds


def run_case(hosts: int, topology: bool, args) -> dict:
    history = synthetic_history(hosts, HISTORY, args.seed)
    cfg = GonConfig(
        n_features=len(HOST_METRICS),
        epochs=2,
        scope="lei",
        topology=topology,
        seed=args.seed,
        gen_hessian_every=args.hessian_every,
    )
    checkpoint = train_from_lei(lei_trace(history, HOST_METRICS), cfg, min_span=min_span(), pot_q=1e-3, pot_level=0.9)
    scorer = Scorer(checkpoint)
    samples = as_samples(history, HISTORY - 1)
    steps = steps_to_judge(samples, history, cfg.window)
    assemble = timed(lambda: steps_to_judge(samples, history, cfg.window), args.calls)
    score = timed(lambda: scorer.score_steps(steps), args.calls)

    def ms(values: list[float], q: float) -> float:
        return round(float(np.quantile(values, q)) * 1000.0, 2)

    return {
        "hosts": hosts,
        "tasks": len(steps[0].tasks),
        "topology": topology,
        "hessian_every": args.hessian_every,
        "assemble_ms_p50": ms(assemble, 0.5),
        "assemble_ms_p99": ms(assemble, 0.99),
        "score_ms_p50": ms(score, 0.5),
        "score_ms_p99": ms(score, 0.99),
        "score_ms_per_host_p50": round(ms(score, 0.5) / hosts, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Time the detector's joint judging of one LEI step (scope lei): assembling the step from "
        "the stored history and scoring every host of it, per host count, with and without the graph transformer."
    )
    parser.add_argument("--hosts", type=int, nargs="+", default=[16, 64, 256], help="host counts (default: 16 64 256)")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per case (default: 200)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1, as a Pi core)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic LEI and the model (default: 0)")
    parser.add_argument(
        "--hessian-every",
        type=int,
        default=1,
        help="AdaHessian estimates the Hessian diagonal every this many generation steps (default: 1)",
    )
    parser.add_argument("--out", help="also write the results to this JSON file")
    args = parser.parse_args()
    if min(args.hosts) < 1 or min(args.calls, args.threads, args.hessian_every) < 1:
        parser.error("--hosts, --calls, --threads and --hessian-every must be positive")
    configure(level="warning", json=True)
    torch.set_num_threads(args.threads)
    results = []
    for hosts in args.hosts:
        for topology in (False, True):
            result = run_case(hosts, topology, args)
            print(json.dumps(result), flush=True)
            results.append(result)
    print()
    print("hosts  topology  assemble p50/p99 ms  score p50/p99 ms  score per host p50 ms")
    for r in results:
        print(
            f"{r['hosts']:>5}  {str(r['topology']):>8}  {r['assemble_ms_p50']:>8} / {r['assemble_ms_p99']:<8}"
            f"  {r['score_ms_p50']:>7} / {r['score_ms_p99']:<7}  {r['score_ms_per_host_p50']:>8}"
        )
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
