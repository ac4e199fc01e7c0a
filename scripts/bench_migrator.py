"""Benchmark the restart move: from the command to the task running on its target, and to done.

Two emulated hosts (cgroups of this machine), a small task container (a Python sleeper, 64 MiB
limit) moved back and forth ``--moves`` times. Two ways:

- ``--path mover`` (default): the mover called in process, journalled in a throwaway Redis
  container. "Running on target" is when the target container started (Docker's
  ``State.StartedAt``; one machine, one clock); "done" includes the hold that checks it keeps
  running (``moves.RUNNING_HOLD_S``), removing the source and renaming the target.
- ``--path mqtt``: the whole service path. A real LEI's Mosquitto (with its ACL) and Redis, the
  ``dragon-migrator:local`` container; each command is signed and published as the planner
  would, and timed until its event arrives ("done"); "running on target" as above.
- ``--path engine``: between emulated host h1 and a machine with its own engine (a second
  dockerd on this machine, reached over tcp with mutual TLS, its image store empty): the first
  move copies the task's image there; the later ones find it.

    TESTCONTAINERS_RYUK_DISABLED=true .venv/bin/python scripts/bench_migrator.py --moves 10
    TESTCONTAINERS_RYUK_DISABLED=true .venv/bin/python scripts/bench_migrator.py --moves 10 --path mqtt
    TESTCONTAINERS_RYUK_DISABLED=true .venv/bin/python scripts/bench_migrator.py --moves 10 --path engine
"""

from __future__ import annotations

import argparse
import json
import secrets as tokens
import statistics
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import docker

from dragon.collector.docker_api import HOST_LABEL, LEI_LABEL, TASK_LABEL
from dragon.collector.emulation import EmulatedHostSpec, EmulatedLei
from dragon.messages import codec, topics
from dragon.messages.schemas import MigrationCommand, MigrationEvent
from dragon.migrator.commands import sign
from dragon.migrator.engines import Engines
from dragon.migrator.journal import Journal, Step
from dragon.migrator.moves import Mover
from dragon.testing.engine import second_engine
from dragon.testing.lei import COLLECTOR_IMAGE, LeiStack, redis_client_of, standalone_redis
from dragon.testing.listener import Listener, publish

REPO = Path(__file__).resolve().parents[1]
HOSTS = ("h1", "h2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moves", type=int, default=10, help="moves to time (default 10)")
    parser.add_argument("--path", choices=("mover", "mqtt", "engine"), default="mover", help="what to time (see above)")
    parser.add_argument("--out", help="write the figures as JSON here too")
    args = parser.parse_args()

    report = {"mover": bench_mover, "mqtt": bench_mqtt, "engine": bench_engine}[args.path](args.moves)
    print(
        f"restart move of a small task ({args.path}), {args.moves} moves: running on target p50"
        f" {report['to_running_s_median']:.2f} s (max {report['to_running_s_max']:.2f}, first"
        f" {report['to_running_s'][0]:.2f}), done p50 {report['to_done_s_median']:.2f} s"
        f" (max {report['to_done_s_max']:.2f})"
    )
    if args.out:
        with open(args.out, "w") as out:
            json.dump(report, out, indent=2)


def bench_mover(moves: int) -> dict:
    client = docker.from_env()
    lei = EmulatedLei(client, f"bm{tokens.token_hex(3)}", image=COLLECTOR_IMAGE)
    password = tokens.token_urlsafe(12)
    server = standalone_redis(password)
    try:
        ensure_hosts(lei)
        lei.ensure_network()
        with server:
            store = redis_client_of(server, password)
            return time_moves(client, lei, Journal(store, lei.lei), moves)
    finally:
        remove_tasks_and_hosts(lei)


def bench_engine(moves: int) -> dict:
    client = docker.from_env()
    lei = EmulatedLei(client, f"be{tokens.token_hex(3)}", image=COLLECTOR_IMAGE)
    password = tokens.token_urlsafe(12)
    try:
        with tempfile.TemporaryDirectory() as workdir, second_engine(Path(workdir)) as far:
            ensure_hosts(lei)
            lei.ensure_network()
            far_client = docker.DockerClient(base_url=far.unix_url)
            far_client.networks.create(lei.network, driver="bridge")
            engines = Engines(client, str(lei.cgroup_root), {(lei.lei, "far"): far.tls_url}, far.tls_dir)
            try:
                with standalone_redis(password) as server:
                    journal = Journal(redis_client_of(server, password), lei.lei)
                    return time_moves(client, lei, journal, moves, engines, ("h1", "far"))
            finally:
                for container in far_client.containers.list(all=True):
                    container.remove(force=True)
                far_client.close()
    finally:
        remove_tasks_and_hosts(lei)


def bench_mqtt(moves: int) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        stack = LeiStack(f"bq{tokens.token_hex(3)}", list(HOSTS), Path(workdir), REPO / "compose/mosquitto/broker.conf")
        lei = EmulatedLei(stack.docker, stack.lei, image=COLLECTOR_IMAGE, network=stack.network.name)
        try:
            stack.start_brokers()
            ensure_hosts(lei)
            stack.start_migrator("migrator")
            return time_commands(stack, lei, moves)
        finally:
            remove_tasks_and_hosts(lei, before=stack.stop)


def ensure_hosts(lei: EmulatedLei) -> None:
    for host in HOSTS:
        lei.ensure_host(EmulatedHostSpec(host, cpus=0.5, memory_mb=256))


def remove_tasks_and_hosts(lei: EmulatedLei, before=lambda: None) -> None:
    # Tasks first: their cgroups and network endpoints keep the hosts and networks from being removed.
    for container in lei._client.containers.list(all=True, filters={"label": f"{LEI_LABEL}={lei.lei}"}):
        container.remove(force=True)
    before()
    lei.remove_all()


def start_task(client, lei: EmulatedLei):
    return client.containers.run(
        COLLECTOR_IMAGE,
        ["python3", "-c", "import time\nwhile True: time.sleep(1)"],
        name=f"dragon-{lei.lei}-task",
        detach=True,
        labels={TASK_LABEL: "true", LEI_LABEL: lei.lei, HOST_LABEL: "h1"},
        cgroup_parent=lei.cgroup("h1").cgroup_parent,
        network=lei.network,
        mem_limit="64m",
    )


def summary(moves: int, to_running: list[float], to_done: list[float]) -> dict:
    return {
        "moves": moves,
        "to_running_s": to_running,
        "to_done_s": to_done,
        "to_running_s_median": statistics.median(to_running),
        "to_running_s_max": max(to_running),
        "to_done_s_median": statistics.median(to_done),
        "to_done_s_max": max(to_done),
    }


def time_commands(stack: LeiStack, lei: EmulatedLei, moves: int) -> dict:
    task = start_task(stack.docker, lei)
    to_running, to_done, host = [], [], "h1"
    planner = stack.mqtt_settings("planner")
    with Listener(stack.mqtt_settings("viewer"), [topics.migration_events(stack.lei)]) as events:
        for _ in range(moves):
            host = "h2" if host == "h1" else "h1"
            command = MigrationCommand(uuid.uuid4().hex, stack.lei, task.name, stack.lei, host, time.time(), "bench")
            command = sign(command, stack.migration_key())
            sent = time.time()
            publish(planner, topics.migration_commands(stack.lei), codec.encode(command), codec.MSGPACK)
            (message,) = events.wait_for(lambda m, c=command.id: c.encode() in m.payload, 60)[:1]
            event = codec.decode(MigrationEvent, message.payload, 65536, message.content_type)
            if event.outcome != "done":
                raise RuntimeError(f"command {command.id} ended {event.outcome}: {event.reason} {event.error}")
            to_running.append(started_at(stack.docker, task.name) - sent)
            to_done.append(message.at - sent)
    return summary(moves, to_running, to_done)


def time_moves(
    client, lei: EmulatedLei, journal: Journal, moves: int, engines: Engines | None = None, hosts=HOSTS
) -> dict:
    """Move the task back and forth between ``hosts``, starting on the first."""
    task = start_task(client, lei)
    engines = engines or Engines(client, str(lei.cgroup_root))
    mover = Mover(engines, journal)
    to_running, to_done = [], []
    for index in range(moves):
        host = hosts[(index + 1) % 2]
        sent = time.time()
        move = mover.move(f"bench-{index}", task.name, host)
        done = time.time()
        if move.step != Step.DONE:
            raise RuntimeError(f"move {index} ended {move.step.value}: {move.error}")
        to_running.append(started_at(engines.of(lei.lei, host).client, task.name) - sent)
        to_done.append(done - sent)
    return summary(moves, to_running, to_done)


def started_at(client, name: str) -> float:
    """When the container now named ``name`` (the move's target) started, in epoch seconds."""
    stamp = client.containers.get(name).attrs["State"]["StartedAt"]  # RFC 3339, nanoseconds, UTC
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{seconds}.{(fraction + '000000')[:6]}+00:00").timestamp()


if __name__ == "__main__":
    main()
