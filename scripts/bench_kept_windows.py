"""What writing the fine-tuner's clean windows through to Redis costs (``dragon.detector.tunerstate``).

Against a running Redis (``--redis-url``; it writes under an LEI id of its own and deletes it
afterwards), it times over ``--calls`` calls:

- ``keep_pairs``: one scored batch of ``--hosts`` clean host window pairs (k x n raw floats),
  into a set already full at ``--capacity`` (so every call also trims), as the scoring thread
  does after each batch;
- ``restore``: reading the whole set back and decoding it, as a replica does once when it starts;

and prints the medians and 99th percentiles in ms and the set's memory in Redis (MEMORY USAGE).

    python scripts/bench_kept_windows.py --redis-url redis://localhost:6379/0
"""

from __future__ import annotations

import argparse
import time
import uuid

import numpy as np
import redis

from dragon.detector.tunerstate import KeptWindows


def percentiles(times_s: list[float]) -> str:
    ms = np.asarray(times_s) * 1e3
    return f"p50 {np.median(ms):.2f} ms, p99 {np.percentile(ms, 99):.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://localhost:6379/0", help="Redis to write to (a test one)")
    parser.add_argument("--hosts", type=int, default=16, help="clean windows per scored batch")
    parser.add_argument("--capacity", type=int, default=1024, help="DRAGON_FINETUNE_WINDOWS")
    parser.add_argument("--window", type=int, default=10, help="window length k")
    parser.add_argument("--features", type=int, default=7, help="metrics per sample n")
    parser.add_argument("--calls", type=int, default=200, help="timed calls of each operation")
    args = parser.parse_args()

    client = redis.Redis.from_url(args.redis_url)
    lei = f"bench-kept-{uuid.uuid4().hex[:8]}"
    kept = KeptWindows(client, lei, args.capacity)
    rng = np.random.default_rng(0)

    hosts = [f"h{i}" for i in range(args.hosts)]

    def batch() -> list[tuple[np.ndarray, np.ndarray]]:
        # float32, as the service keeps a host's raw windows
        shape = (args.window, args.features)
        return [(rng.random(shape, dtype=np.float32) * 1e6, rng.random(shape, dtype=np.float32) * 1e6) for _ in hosts]

    try:
        while len(kept.pairs()) < args.capacity:  # fill it first: the service's steady state
            kept.keep_pairs(hosts, batch())
        writes, reads = [], []
        for _ in range(args.calls):
            pairs = batch()
            started = time.perf_counter()
            kept.keep_pairs(hosts, pairs)
            writes.append(time.perf_counter() - started)
        for _ in range(max(1, args.calls // 10)):
            started = time.perf_counter()
            restored = kept.pairs()
            reads.append(time.perf_counter() - started)
        memory = client.memory_usage(f"dragon:{lei}:finetune:windows")
        print(f"keep_pairs ({args.hosts} pairs of {args.window}x{args.features}): {percentiles(writes)}")
        print(f"restore ({len(restored)} pairs): {percentiles(reads)}")
        print(f"memory in Redis: {memory / 2**20:.2f} MiB for {len(restored)} pairs")
    finally:
        client.delete(*(f"dragon:{lei}:finetune:{key}" for key in ("windows", "steps")))


if __name__ == "__main__":
    main()
