"""Resident memory of a detector process through its life: imports, learning, scoring, fine-tuning.

It does in one process what the detector service does with its model, without MQTT or Redis:
imports the service's modules, learns a model on-line from synthetic normal operation of a few
hosts (as after its warm-up), scores steps of an LEI's hosts, and fine-tunes once (eq. 19).
After each phase it prints the process's resident set (``VmRSS``), its peak so far (``VmHWM``)
and the part it allocated itself (``RssAnon``; the rest is shared libraries mapped from disk),
in MiB, and which optional heavy modules are loaded (they cost memory whether used or not).

    python scripts/bench_detector_memory.py --hosts 16 --epochs 5
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

WATCHED_MODULES = ("torch._dynamo", "sympy", "scipy", "sklearn")


def memory_mib() -> dict[str, int]:
    """VmRSS, VmHWM and RssAnon of this process, in MiB (Linux)."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon"):
                fields[key] = int(value.split()[0]) // 1024
    return fields


def report(phase: str) -> dict:
    loaded = [name for name in WATCHED_MODULES if name in sys.modules]
    line = {"phase": phase, **memory_mib(), "heavy_modules": loaded}
    print(json.dumps(line), flush=True)
    return line


def synthetic_hosts(hosts: int, steps: int, seed: int) -> list[np.ndarray]:
    """(steps, n) host metrics around a level with lognormal noise, in the metrics' own units."""
    rng = np.random.default_rng(seed)
    levels = np.array([0.1, 0.3, 0.0, 1e4, 1e5, 1e4, 1e4])
    return [levels * rng.lognormal(0.0, 0.1, (steps, len(levels))) for _ in range(hosts)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=16, help="hosts scored per step (default: 16)")
    parser.add_argument("--history", type=int, default=300, help="samples per host learnt from (default: 300)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs of the on-line model (default: 5)")
    parser.add_argument("--steps", type=int, default=20, help="LEI steps scored (default: 20)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic hosts and the model (default: 0)")
    args = parser.parse_args()
    if min(args.hosts, args.history, args.epochs, args.steps, args.threads) < 1:
        parser.error("all counts must be positive")

    import torch

    import dragon.detector.service  # noqa: F401 - what the service imports, measured as such
    from dragon.detector.finetune import fine_tune
    from dragon.detector.gon import GonConfig
    from dragon.detector.learning import min_span
    from dragon.detector.scorer import Scorer
    from dragon.detector.train import train_from_series
    from dragon.logs import configure
    from dragon.messages.schemas import HOST_METRICS

    configure(level="warning", json=True)
    torch.set_num_threads(args.threads)
    report("imports")
    series = synthetic_hosts(args.hosts, args.history, args.seed)
    cfg = GonConfig(n_features=len(HOST_METRICS), epochs=args.epochs, seed=args.seed)
    checkpoint = train_from_series(series[:3], HOST_METRICS, cfg, min_span=min_span())
    report("learnt")
    scorer = Scorer(checkpoint)
    k = cfg.window
    names = [f"h{i:03d}" for i in range(args.hosts)]
    for t in range(args.steps):
        prev = np.stack([host[t : t + k] for host in series])  # (m, k, n)
        nxt = np.stack([host[t + 1 : t + 1 + k] for host in series])
        scorer.score(names, [float(t)] * args.hosts, prev, nxt)
    report("scored")
    fine_tune(checkpoint, prev, nxt, steps=3)
    report("fine-tuned")


if __name__ == "__main__":
    main()
