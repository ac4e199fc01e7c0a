"""Benchmark the restart move: from the command to the task running on its target, and to done.

Two emulated hosts (cgroups of this machine), a small task container (a Python sleeper, 64 MiB
limit) moved back and forth ``--moves`` times, journalled in a throwaway Redis container. The
time to "running on target" is when the target container runs (after the STARTING step), the
time to done includes removing the source and renaming the target.

    TESTCONTAINERS_RYUK_DISABLED=true .venv/bin/python scripts/bench_migrator.py --moves 10
"""

from __future__ import annotations

import argparse
import json
import secrets as tokens
import statistics
import time

import docker

from dragon.collector.emulation import EmulatedHostSpec, EmulatedLei
from dragon.collector.injector import HOST_LABEL, LEI_LABEL, TASK_LABEL
from dragon.migrator.journal import Journal, Step
from dragon.migrator.moves import RestartMover
from dragon.testing.lei import COLLECTOR_IMAGE, redis_client_of, standalone_redis


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moves", type=int, default=10, help="moves to time (default 10)")
    parser.add_argument("--out", help="write the figures as JSON here too")
    args = parser.parse_args()

    client = docker.from_env()
    lei = EmulatedLei(client, f"bm{tokens.token_hex(3)}", image=COLLECTOR_IMAGE)
    password = tokens.token_urlsafe(12)
    server = standalone_redis(password)
    try:
        for host in ("h1", "h2"):
            lei.ensure_host(EmulatedHostSpec(host, cpus=0.5, memory_mb=256))
        lei.ensure_network()
        with server:
            store = redis_client_of(server, password)
            report = time_moves(client, lei, Journal(store, lei.lei), args.moves)
    finally:
        # Tasks first: their cgroups and network endpoints keep the hosts from being removed.
        for container in client.containers.list(all=True, filters={"label": f"{LEI_LABEL}={lei.lei}"}):
            container.remove(force=True)
        lei.remove_all()
    print(
        f"restart move of a small task, {args.moves} moves: running on target p50"
        f" {report['to_running_s_median']:.2f} s (max {report['to_running_s_max']:.2f}), done p50"
        f" {report['to_done_s_median']:.2f} s (max {report['to_done_s_max']:.2f})"
    )
    if args.out:
        with open(args.out, "w") as out:
            json.dump(report, out, indent=2)


def time_moves(client, lei: EmulatedLei, journal: Journal, moves: int) -> dict:
    task = client.containers.run(
        COLLECTOR_IMAGE,
        ["python3", "-c", "import time\nwhile True: time.sleep(1)"],
        name=f"dragon-{lei.lei}-task",
        detach=True,
        labels={TASK_LABEL: "true", LEI_LABEL: lei.lei, HOST_LABEL: "h1"},
        cgroup_parent=lei.cgroup("h1").cgroup_parent,
        network=lei.network,
        mem_limit="64m",
    )
    marks: dict[Step, float] = {}

    def mark(step: Step) -> None:
        marks[step] = time.perf_counter()

    mover = RestartMover(client, journal, lambda host: lei.cgroup(host).cgroup_parent, after_step=mark)
    to_running, to_done, current, host = [], [], task.id, "h1"
    for index in range(moves):
        host = "h2" if host == "h1" else "h1"
        marks.clear()
        started = time.perf_counter()
        move = mover.move(f"bench-{index}", current, host)
        done = time.perf_counter()
        if move.step != Step.DONE:
            raise RuntimeError(f"move {index} ended {move.step.value}: {move.error}")
        to_running.append(marks[Step.STARTING] - started)
        to_done.append(done - started)
        current = move.target_id
    return {
        "moves": moves,
        "to_running_s": to_running,
        "to_done_s": to_done,
        "to_running_s_median": statistics.median(to_running),
        "to_running_s_max": max(to_running),
        "to_done_s_median": statistics.median(to_done),
        "to_done_s_max": max(to_done),
    }


if __name__ == "__main__":
    main()
