"""The migrator service on a real LEI: Mosquitto with its ACL, Redis, two emulated hosts and real task
containers. Commands are published as the planner would (signed with the LEI's migration key);
the migrator's events and schedule are read as any tool would. It is also killed (SIGKILL) in
the middle of a move and restarted.

Needs the Docker daemon, root (the emulated hosts are cgroups) and the local images.
"""

from __future__ import annotations

import json
import os
import secrets as tokens
import subprocess
import sys
import time
import uuid

import docker
import pytest

from dragon import config
from dragon.collector.docker_api import HOST_LABEL, LEI_LABEL, TASK_ID_LABEL
from dragon.collector.emulation import EmulatedHostSpec, EmulatedLei
from dragon.messages import codec, topics
from dragon.messages.schemas import MigrationCommand, MigrationEvent, Schedule
from dragon.migrator.commands import sign
from dragon.migrator.config import MigratorConfig
from dragon.migrator.journal import Journal, Move, Step
from dragon.migrator.moves import MOVE_LABEL, Mover
from dragon.migrator.service import Migrator
from dragon.testing.lei import COLLECTOR_IMAGE, LeiStack
from dragon.testing.listener import Listener, Received, publish

from .conftest import SLEEPER, Killed, dying_after, running_copies, start_task

pytestmark = pytest.mark.integration

HOSTS = (EmulatedHostSpec("h1", cpus=0.5, memory_mb=256), EmulatedHostSpec("h2", cpus=0.5, memory_mb=256))
# Healthy only 4 s after it starts: the move waits in its "starting" step, where the test kills the migrator.
SLOW_TO_START = ["sh", "-c", "sleep 4; touch /tmp/ready; exec sleep 3600"]
READY = {"test": ["CMD", "test", "-f", "/tmp/ready"], "interval": 500_000_000, "retries": 60}
EVENT_TIMEOUT_S = 30
# The unchanged schedule's republish, out of the tests' reach: a schedule within seconds comes from a change.
QUIET_SCHEDULE = {"DRAGON_MIGRATOR_SCHEDULE_INTERVAL": "3600"}


@pytest.fixture(scope="module")
def lei(tmp_path_factory, repo):
    if os.geteuid() != 0:
        pytest.skip("emulated hosts are cgroups: root only")
    stack = LeiStack(
        lei=f"mig{tokens.token_hex(3)}",
        hosts=[spec.name for spec in HOSTS],
        workdir=tmp_path_factory.mktemp("migrator"),
        mosquitto_conf=repo / "compose" / "mosquitto" / "broker.conf",
    )
    emulated = EmulatedLei(stack.docker, stack.lei, image=COLLECTOR_IMAGE, network=stack.network.name)
    try:
        stack.start_brokers()
        for spec in HOSTS:
            emulated.ensure_host(spec)
        stack.start_migrator("migrator", QUIET_SCHEDULE)
        yield stack, emulated
    finally:
        # Tasks first: they hold the hosts' cgroups and the stack's network.
        for container in stack.docker.containers.list(all=True, filters={"label": f"{LEI_LABEL}={stack.lei}"}):
            container.remove(force=True)
        stack.stop()
        emulated.remove_all()


@pytest.fixture
def watch(lei):
    stack, emulated = lei
    filters = [topics.migration_events(stack.lei), topics.schedule(stack.lei), "dragon/migrator/+/available"]
    with Listener(stack.mqtt_settings("viewer"), filters) as listener:
        yield listener


def command(stack: LeiStack, task: str, target_host: str = "h2", key: bytes | None = None, **changes):
    fields = dict(
        id=uuid.uuid4().hex,
        lei=stack.lei,
        task=task,
        target_lei=stack.lei,
        target_host=target_host,
        ts=time.time(),
        issuer="test-planner",
    )
    return sign(MigrationCommand(**{**fields, **changes}), key if key is not None else stack.migration_key())


def send(stack: LeiStack, cmd: MigrationCommand, user: str = "planner") -> None:
    publish(stack.mqtt_settings(user), topics.migration_commands(stack.lei), codec.encode(cmd), codec.MSGPACK)


def event_for(listener: Listener, command_id: str, predicate=lambda e: True) -> MigrationEvent:
    def matches(message: Received) -> bool:
        if not message.topic.endswith("/migrations/events"):
            return False
        event = codec.decode(MigrationEvent, message.payload, 65536, message.content_type)
        return event.id == command_id and predicate(event)

    (message, *_) = listener.wait_for(matches, EVENT_TIMEOUT_S)
    return codec.decode(MigrationEvent, message.payload, 65536, message.content_type)


def test_a_signed_command_moves_the_task_and_the_event_and_schedule_say_so(lei, watch):
    stack, emulated = lei
    task = start_task(emulated)
    sent = command(stack, task.name)
    send(stack, sent)
    event = event_for(watch, sent.id)
    assert event.outcome == "done", event
    assert (event.source_host, event.target_host, event.mode) == ("h1", "h2", "restart")
    assert [s.step for s in event.steps] == ["creating", "starting", "removing_source", "renaming"]
    assert event.total_s > 0 and "restart move" in event.mode_reason
    (moved,) = running_copies(emulated, task.name)
    assert moved.labels[HOST_LABEL] == "h2" and moved.labels["app"] == "demo"
    assert moved.attrs["HostConfig"]["CgroupParent"] == emulated.cgroup("h2").cgroup_parent
    assert "APP_MODE=edge" in moved.attrs["Config"]["Env"]

    def lists_the_move(message: Received) -> bool:
        if not message.topic.endswith("/tasks"):
            return False
        schedule = codec.decode(Schedule, message.payload, 65536, message.content_type)
        return any(p.task == task.name and p.host == "h2" and p.since >= sent.ts for p in schedule.tasks)

    watch.wait_for(lists_the_move, EVENT_TIMEOUT_S)


def test_tasks_others_start_or_stop_show_in_the_schedule_within_seconds(lei, watch):
    """Not only moves change the schedule: a task a user starts or removes by hand counts at once."""
    stack, emulated = lei

    def schedule_after(since: float, container_id: str, listed: bool):
        def matches(message: Received) -> bool:
            if not message.topic.endswith("/tasks") or message.at < since:
                return False
            schedule = codec.decode(Schedule, message.payload, 65536, message.content_type)
            return any(p.container == container_id[:12] and p.host == "h1" for p in schedule.tasks) == listed

        return matches

    started = time.time()
    task = start_task(emulated)
    watch.wait_for(schedule_after(started, task.id, listed=True), 12)
    removed = time.time()
    task.remove(force=True)
    watch.wait_for(schedule_after(removed, task.id, listed=False), 12)


def test_the_migrator_advertises_whether_criu_works_here(lei, watch):
    (online,) = watch.wait_for(lambda m: m.topic.endswith("/available") and m.payload == b"online", EVENT_TIMEOUT_S)
    capabilities = dict(online.user_properties)
    assert capabilities["criu"] in {"available", "unavailable"} and capabilities["criu_reason"]


def test_a_command_that_comes_again_is_answered_again_and_moves_nothing(lei, watch):
    stack, emulated = lei
    task = start_task(emulated)
    sent = command(stack, task.name)
    send(stack, sent)
    first = event_for(watch, sent.id)
    assert first.outcome == "done"
    send(stack, sent)
    answers = watch.wait_for(
        lambda m: m.topic.endswith("/migrations/events") and sent.id.encode() in m.payload, EVENT_TIMEOUT_S, count=2
    )
    again = codec.decode(MigrationEvent, answers[1].payload, 65536, answers[1].content_type)
    assert again.ts <= first.ts  # stamped when the move ended: the planner rests the task from it
    assert (again.outcome, again.source_host, again.target_host, again.steps) == (
        "done",
        first.source_host,
        first.target_host,
        first.steps,
    )
    (running,) = running_copies(emulated, task.name)
    assert running.labels[HOST_LABEL] == "h2"


def test_a_command_whose_move_failed_before_its_answer_was_sent_hears_why_when_it_comes_again(lei, watch):
    """A migrator killed between journalling a move that could not begin and publishing its event
    gets the command again after its restart: the answer must be the move's failure, with its
    reason, not a refusal of the command as one taken already, nor as stale: redelivered after a
    long move and a restart, it is often older than the age a new command may have."""
    stack, emulated = lei
    sent = command(stack, "no-such-task", ts=time.time() - 3600)
    journal = Journal(stack.redis_client(), stack.lei)
    never_began = Move(sent.id, sent.task, sent.task, "", sent.target_host, sent.target_lei)
    assert journal.fail(never_began, "no task container named no-such-task (recorded before the kill)")
    send(stack, sent)  # as the broker redelivers it, never acknowledged
    answer = event_for(watch, sent.id)
    assert (answer.outcome, answer.reason) == ("failed", "failed"), answer
    assert answer.error == "no task container named no-such-task (recorded before the kill)"


def test_a_command_issued_before_the_tasks_last_move_was_done_is_refused_and_moves_nothing(lei, watch):
    """A planner that sent a command again after its timeout while the first move was slow (or one
    restarted mid-move) planned from where the task ran before: carried out after the first move,
    that command would move the task a second time."""
    stack, emulated = lei
    task = start_task(emulated, task_id=f"web-{uuid.uuid4().hex[:6]}")
    # Issued while the move below runs, naming the task by its container's name (commands may):
    # the move it missed is known by the task's id.
    first = command(stack, task.labels[TASK_ID_LABEL])
    again = command(stack, task.name, target_host="h1", ts=first.ts + 1)
    send(stack, first)
    assert event_for(watch, first.id).outcome == "done"
    send(stack, again)
    refused = event_for(watch, again.id)
    assert (refused.outcome, refused.reason) == ("refused", "superseded"), refused
    (running,) = running_copies(emulated, task.name)
    assert running.labels[HOST_LABEL] == "h2"
    later = command(stack, task.name, target_host="h1")  # planned once the move was done: carried out
    send(stack, later)
    assert event_for(watch, later.id).outcome == "done"


def test_unauthorised_commands_are_refused_by_the_broker_or_the_migrator(lei, watch):
    stack, emulated = lei
    task = start_task(emulated)
    by_operator = command(stack, task.name)
    send(stack, by_operator, user="operator")  # the ACL lets only the planner publish commands
    forged = command(stack, task.name, key=b"not the migration key")
    send(stack, forged)  # the planner's login, but not the key
    stale = command(stack, task.name, ts=time.time() - 3600)
    send(stack, stale)
    assert event_for(watch, stale.id).reason == "stale"
    # Commands are taken in order: the operator's, sent first, never reached the migrator; the
    # forged one did, and is logged and counted but not answered (its id and task are the
    # sender's choice, and the planner rests a task an event names).
    assert not watch.matching(lambda m: by_operator.id.encode() in m.payload)
    assert not watch.matching(lambda m: forged.id.encode() in m.payload)
    assert f'"id": "{forged.id}"' in stack.logs("migrator") and '"reason": "bad_signature"' in stack.logs("migrator")
    (running,) = running_copies(emulated, task.name)
    assert running.id == task.id and running.labels[HOST_LABEL] == "h1"


def test_commands_for_a_missing_task_or_host_get_an_error_event(lei, watch):
    stack, emulated = lei
    missing = command(stack, "no-such-task")
    send(stack, missing)
    failed = event_for(watch, missing.id)
    assert failed.outcome == "failed" and "no task container" in failed.error
    task = start_task(emulated)
    nowhere = command(stack, task.name, target_host="h9")
    send(stack, nowhere)
    assert event_for(watch, nowhere.id).reason == "unknown_host"


def test_a_migrator_killed_mid_move_finishes_it_after_restart_and_the_task_runs_once(lei, watch):
    stack, emulated = lei
    task_id = f"web-{tokens.token_hex(3)}"
    task = start_task(emulated, SLOW_TO_START, READY, task_id=task_id)
    sent = command(stack, task_id)  # as the planner names it, from the samples
    send(stack, sent)
    wait_for_target(stack, sent.id)  # created and starting: the target waits to become healthy
    migrator = stack.containers["migrator"].get_wrapped_container()
    migrator.kill()
    assert len(running_copies(emulated, task.name)) == 2  # caught mid-move: source and target both run
    migrator.start()
    recovered = event_for(watch, sent.id, lambda e: e.recovered)
    assert recovered.outcome == "done", recovered
    assert recovered.task == task_id  # the planner's name for the task, whose command this answers
    # The command, never acknowledged, comes again: by then its move has ended, and is told again.
    again = event_for(watch, sent.id, lambda e: not e.recovered)
    assert (again.outcome, again.task) == ("done", task_id), again
    (running,) = running_copies(emulated, task.name)
    assert running.name == task.name and running.labels[HOST_LABEL] == "h2"


def wait_for_target(stack: LeiStack, move_id: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.docker.containers.list(filters={"label": f"{MOVE_LABEL}={move_id}"}):
            return
        time.sleep(0.1)
    raise TimeoutError(f"move {move_id} created no target within {timeout} s")


def test_only_dragon_tasks_of_this_lei_are_ever_touched(lei, watch):
    stack, emulated = lei
    bystander = stack.docker.containers.run(
        COLLECTOR_IMAGE,
        SLEEPER,
        name=f"bystander-{tokens.token_hex(3)}",
        detach=True,
        labels={LEI_LABEL: stack.lei, HOST_LABEL: "h1"},  # on the host, but not a DRAGON task
        cgroup_parent=emulated.cgroup("h1").cgroup_parent,
    )
    sent = command(stack, bystander.name)
    send(stack, sent)
    assert event_for(watch, sent.id).outcome == "failed"
    bystander.reload()
    assert bystander.status == "running"
    with pytest.raises(docker.errors.NotFound):
        stack.docker.containers.get(f"{bystander.name}-mv-{sent.id[:12]}")


def viewer_env(stack) -> dict[str, str]:
    """The environment ``dragon watch`` reads its broker and read-only user from."""
    viewer = stack.mqtt_settings("viewer")
    return {
        **os.environ,
        "DRAGON_MQTT_HOST": viewer.host,
        "DRAGON_MQTT_PORT": str(viewer.port),
        "DRAGON_MQTT_USERNAME": "viewer",
        "DRAGON_MQTT_PASSWORD": viewer.password,
    }


def test_dragon_watch_shows_the_moves_decoded(lei, watch):
    stack, emulated = lei
    task = start_task(emulated)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "dragon.cli", "watch", "--lei", stack.lei, "--moves", "--count", "3", "--timeout", "60"],
        env=viewer_env(stack),
        stdout=subprocess.PIPE,
        text=True,
    )
    first = watcher.stdout.readline()  # the retained schedule: it has subscribed
    sent = command(stack, task.name)
    send(stack, sent)
    out, _ = watcher.communicate(timeout=90)
    lines = [json.loads(line) for line in [first, *out.splitlines()]]
    assert watcher.returncode == 0, out
    assert any(line["topic"].endswith("/migrations/events") and line["id"] == sent.id for line in lines)
    assert any(line["topic"].endswith("/tasks") and line["tasks"] for line in lines)


def test_dragon_watch_shows_the_services_counters(lei):
    stack, _ = lei
    # An LEI id no one uses: only the counters, which are per broker, can arrive.
    command = [sys.executable, "-m", "dragon.cli", "watch", "--lei", "nobody", "--counters", "--count", "1"]
    done = subprocess.run([*command, "--timeout", "30"], env=viewer_env(stack), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (line,) = [json.loads(text) for text in done.stdout.splitlines()]
    assert line["topic"].endswith("/counters") and line["service"] in line["topic"]
    assert isinstance(line["counters"], dict)


@pytest.mark.parametrize(
    "payload",
    [b"\xc1", b'{"v": 1, "id": "x"}', b"\x00" * 70_000],
    ids=["not-msgpack", "missing-fields", "oversized"],
)
def test_a_malformed_command_is_dropped_and_the_migrator_keeps_serving(lei, watch, payload):
    stack, emulated = lei
    publish(stack.mqtt_settings("planner"), topics.migration_commands(stack.lei), payload, codec.MSGPACK)
    task = start_task(emulated)
    sent = command(stack, task.name)
    send(stack, sent)
    assert event_for(watch, sent.id).outcome == "done"
    assert "message_dropped" in stack.logs("migrator")


def test_a_command_while_redis_is_away_is_refused_and_the_migrator_serves_once_it_is_back(lei, watch):
    """No move without its journal. Left unacknowledged, the command would hold one of the
    broker's in-flight slots until a reconnect: enough of them and the broker sends nothing more."""
    stack, emulated = lei
    task = start_task(emulated)
    redis_server = stack.containers["redis"].get_wrapped_container()
    redis_server.stop(timeout=5)
    try:
        away = command(stack, task.name)
        send(stack, away)
        refused = event_for(watch, away.id)
        assert (refused.outcome, refused.reason) == ("refused", "journal_unavailable"), refused
        old = command(stack, task.name, ts=time.time() - 3600)  # stale whatever the journal would say
        send(stack, old)
        assert event_for(watch, old.id).reason == "stale"
    finally:
        redis_server.start()
    deadline = time.monotonic() + 30  # Redis takes a moment to load its data again
    while True:
        back = command(stack, task.name)
        send(stack, back)
        answer = event_for(watch, back.id)
        if answer.reason != "journal_unavailable" or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert answer.outcome == "done", answer
    (running,) = running_copies(emulated, task.name)
    assert running.labels[HOST_LABEL] == "h2"


def test_a_migrator_restarted_while_redis_is_down_waits_for_it_then_serves(lei, watch):
    """Last in this module: it stops Redis. The journal must be there before any move is taken."""
    stack, emulated = lei
    redis_server = stack.containers["redis"].get_wrapped_container()
    redis_server.stop(timeout=5)
    try:
        stack.restart("migrator", wait_for="redis_unavailable_retrying")
    finally:
        redis_server.start()
    stack.restart_wait("migrator", "migrator_started")
    task = start_task(emulated)
    sent = command(stack, task.name)
    send(stack, sent)
    assert event_for(watch, sent.id).outcome == "done"


def in_process_migrator(stack: LeiStack, workdir, **env: str):
    """A migrator in this process on the stack's broker and Redis, for what the container hides."""
    redis_server, broker = stack.containers["redis"], stack.mqtt_settings("migrator")
    environ = {
        "DRAGON_LEI": stack.lei,
        "DRAGON_INSTANCE": "in-process",
        "DRAGON_MQTT_HOST": broker.host,
        "DRAGON_MQTT_PORT": str(broker.port),
        "DRAGON_MQTT_USERNAME": "migrator",
        "DRAGON_MQTT_PASSWORD": broker.password,
        "DRAGON_REDIS_URL": f"redis://{redis_server.get_container_host_ip()}:{redis_server.get_exposed_port(6379)}/0",
        "DRAGON_REDIS_PASSWORD": stack.password("redis"),
        "DRAGON_MIGRATION_KEY": stack.migration_key().decode(),
        "DRAGON_MIGRATOR_CRIU": "off",
        "DRAGON_HEALTH_FILE": str(workdir / "healthy"),
        **env,
    }
    return Migrator(config.load(MigratorConfig, environ))


def serving_while_pi_is_away(stack: LeiStack, workdir, socket) -> Migrator:
    """An in-process migrator, started and taking commands, whose second machine "pi" is away
    until a socket appears at ``socket``; the sweep it owes meanwhile is tried again every half
    second at first (``DRAGON_MIGRATOR_SCHEDULE_INTERVAL``), doubling."""
    migrator = in_process_migrator(
        stack, workdir, DRAGON_MIGRATOR_ENDPOINTS=f"pi=unix://{socket}", DRAGON_MIGRATOR_SCHEDULE_INTERVAL="0.5"
    )
    migrator.init_redis()
    migrator.init_docker()
    migrator.recover_moves()
    migrator.init_mqtt()
    migrator.start_mqtt([])
    return migrator


def test_a_command_whose_move_never_began_because_redis_went_away_is_answered_once_it_is_back(lei, watch, tmp_path):
    """Redis failing at the move's first journal write leaves nothing in the journal or in Docker;
    the planner, which rests the task until the command is answered, must hear that it never began
    rather than wait out its timeout. The failure itself is not timed here: the command is left
    as on_command leaves it when carry_out raises a Redis error (stopping Redis between the check
    and the first write cannot be timed from outside)."""
    stack, emulated = lei
    task = start_task(emulated)
    socket = tmp_path / "pi.sock"  # the machine "pi": away until its engine's socket appears
    migrator = serving_while_pi_is_away(stack, tmp_path, socket)
    try:
        sent = command(stack, task.name)
        migrator._interrupted[sent.id] = sent  # what on_command keeps of a move Redis cut short
        migrator.settle_interrupted()  # "pi" may hold its target: not looked at, so not answered yet
        assert migrator._interrupted == {sent.id: sent}
        os.symlink("/var/run/docker.sock", socket)  # "pi" answers: nothing of the move anywhere
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while sent.id in migrator._interrupted and time.monotonic() < deadline:
            migrator.settle_interrupted()  # as the heartbeat does; it skips a beat while Docker is busy
            time.sleep(0.2)
        answer = event_for(watch, sent.id)
        assert (answer.outcome, answer.reason, answer.task) == ("refused", "journal_unavailable", task.name), answer
        assert migrator._interrupted == {}
    finally:
        migrator.shutdown()
    (running,) = running_copies(emulated, task.name)
    assert running.id == task.id


def settling_pass(migrator: Migrator) -> None:
    """One pass of the heartbeat's settling, which waits for the Docker lock here rather than skip
    the beat (the schedule's publisher may hold it a moment)."""
    with migrator._docker_lock:
        migrator._settle_interrupted()


def test_commands_redis_cut_short_are_settled_with_one_sweep_per_pass(lei, watch, tmp_path, monkeypatch):
    """Each command the journal does not know asks Docker what is in flight, and each such sweep
    may wait the SDK's timeout on a machine that is off, under the Docker lock: an outage that
    cut short several commands must cost one sweep per pass, not one per command."""
    stack, emulated = lei
    tasks = [start_task(emulated) for _ in range(3)]
    socket = tmp_path / "pi.sock"  # the machine "pi": away until its engine's socket appears
    migrator = serving_while_pi_is_away(stack, tmp_path, socket)
    sweeps, sweep = [], migrator.mover.sweep
    monkeypatch.setattr(migrator.mover, "sweep", lambda: sweeps.append("sweep") or sweep())
    try:
        cut_short = [command(stack, task.name) for task in tasks]
        migrator._interrupted.update({sent.id: sent for sent in cut_short})  # as on_command leaves them
        settling_pass(migrator)  # "pi" may hold their targets: none answered yet
        assert len(sweeps) == 1
        assert set(migrator._interrupted) == {sent.id for sent in cut_short}
        os.symlink("/var/run/docker.sock", socket)  # "pi" answers: nothing of the moves anywhere
        settling_pass(migrator)
        assert len(sweeps) == 2
        for sent, task in zip(cut_short, tasks, strict=True):
            answer = event_for(watch, sent.id)
            assert (answer.outcome, answer.reason, answer.task) == ("refused", "journal_unavailable", task.name)
        assert migrator._interrupted == {}
    finally:
        migrator.shutdown()
    for task in tasks:
        (running,) = running_copies(emulated, task.name)
        assert running.id == task.id


def test_a_move_an_engine_out_of_reach_left_open_at_start_up_is_settled_once_it_answers(lei, watch, tmp_path):
    """Recovery at start-up cannot settle a move whose target machine is away; the heartbeat must,
    once it answers, or the task stays busy (and its source stopped, if it had been) for good."""
    stack, emulated = lei
    task_id = f"web-{tokens.token_hex(3)}"
    task = start_task(emulated, task_id=task_id)
    socket = tmp_path / "pi.sock"  # the machine "pi": away until its engine's socket appears
    migrator = in_process_migrator(stack, tmp_path, DRAGON_MIGRATOR_ENDPOINTS=f"pi=unix://{socket}")
    migrator.init_redis()
    left = Move(uuid.uuid4().hex, task.id, task.name, "h1", "pi", target_lei=stack.lei, task_id=task_id)
    migrator.journal.begin(left)
    migrator.journal.record(left, Step.CREATING)  # killed while creating the target on "pi"
    migrator.init_docker()
    try:
        assert migrator.recover_moves() == []  # "pi" is out of reach: nothing settled yet
        migrator.init_mqtt()
        migrator.start_mqtt([])
        os.symlink("/var/run/docker.sock", socket)  # "pi" answers again
        migrator.settle_interrupted()
        event = event_for(watch, left.id)
        assert (event.outcome, event.recovered, event.task) == ("rolled_back", True, task_id)
        assert migrator.journal.get(left.id).step == Step.ROLLED_BACK
    finally:
        migrator.shutdown()
    (running,) = running_copies(emulated, task.name)
    assert running.id == task.id


def a_lost_move_while_pi_is_away(lei, tmp_path):
    """A move killed after its target started, whose journal records Redis lost, by an in-process
    migrator whose second machine "pi" is away until a socket appears at the path it returns."""
    stack, emulated = lei
    task = start_task(emulated)
    socket = tmp_path / "pi.sock"
    migrator = in_process_migrator(
        stack, tmp_path, DRAGON_MIGRATOR_ENDPOINTS=f"pi=unix://{socket}", DRAGON_MIGRATOR_SCHEDULE_INTERVAL="0.5"
    )
    migrator.init_redis()
    migrator.init_docker()
    lost = uuid.uuid4().hex
    with pytest.raises(Killed):  # the target started, the source still runs
        Mover(migrator.engines, migrator.journal, after_step=dying_after(Step.STARTING)).move(lost, task.name, "h2")
    migrator.journal.redis.delete(migrator.journal.prefix + lost)  # Redis came back without the move
    migrator.journal.redis.srem(migrator.journal.open_key, lost)
    return emulated, task, migrator, lost, socket


def test_a_lost_move_the_start_up_sweep_could_not_settle_is_settled_by_the_heartbeat(lei, watch, tmp_path):
    """The sweep settles a move the journal lost only when every engine of the LEI answers ("no
    other container" must not mean "on a machine that is down"). One it could not settle at
    start-up must be tried again once they do, or two copies of the task run for good."""
    emulated, task, migrator, lost, socket = a_lost_move_while_pi_is_away(lei, tmp_path)
    try:
        assert migrator.recover_moves() == []  # "pi" is out of reach: the task may have a copy there
        assert len(running_copies(emulated, task.name)) == 2
        migrator.init_mqtt()
        migrator.start_mqtt([])
        os.symlink("/var/run/docker.sock", socket)  # "pi" answers again
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while len(running_copies(emulated, task.name)) > 1 and time.monotonic() < deadline:
            migrator.settle_if_due()  # as the heartbeat does
            time.sleep(0.2)
        event = event_for(watch, lost)
        assert (event.outcome, event.recovered) == ("rolled_back", True), event
    finally:
        migrator.shutdown()
    (running,) = running_copies(emulated, task.name)
    assert running.id == task.id


def test_a_lost_move_the_sweep_settles_for_another_command_is_answered_once(lei, watch, tmp_path):
    """A pass's sweep, asked for by one command, settles (and answers) another command's lost
    move; that command, looked at next, must not answer it a second time."""
    stack, _ = lei
    emulated, task, migrator, lost, socket = a_lost_move_while_pi_is_away(lei, tmp_path)
    try:
        assert migrator.recover_moves() == []  # "pi" is out of reach: the sweep is owed
        migrator.init_mqtt()
        migrator.start_mqtt([])
        asks_first = command(stack, task.name, id="0" * 32)  # never began; looked at before the lost move
        migrator._interrupted.update({asks_first.id: asks_first, lost: command(stack, task.name, id=lost)})
        os.symlink("/var/run/docker.sock", socket)  # "pi" answers again
        settling_pass(migrator)
        assert migrator._interrupted == {}
        event = event_for(watch, lost)
        assert (event.outcome, event.recovered) == ("rolled_back", True), event
        time.sleep(1)  # room for a second answer to arrive
        answers = watch.matching(lambda m: m.topic.endswith("/migrations/events") and lost.encode() in m.payload)
        assert len(answers) == 1, answers
    finally:
        migrator.shutdown()
    (running,) = running_copies(emulated, task.name)
    assert running.id == task.id


def test_a_lost_move_whose_settling_fails_midway_is_settled_by_the_heartbeat(lei, watch, tmp_path, monkeypatch):
    """The owed sweep journals a lost move (open) before it settles it: one whose roll back an
    engine error cut short stayed open, the next sweep skips open moves and saw every engine, and
    nothing settled the move until the migrator restarted, with two copies of the task running."""
    emulated, task, migrator, lost, socket = a_lost_move_while_pi_is_away(lei, tmp_path)
    # Twice: "pi" is this machine's engine under another name, so one sweep finds the target twice.
    roll_back, failures = Mover._roll_back, [docker.errors.APIError("the engine stalled")] * 2

    def stalls(mover, move, error):
        if failures:
            raise failures.pop()
        return roll_back(mover, move, error)

    monkeypatch.setattr(Mover, "_roll_back", stalls)
    try:
        assert migrator.recover_moves() == []  # "pi" is out of reach: the sweep is owed
        migrator.init_mqtt()
        migrator.start_mqtt([])
        os.symlink("/var/run/docker.sock", socket)  # "pi" answers again
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while (failures or migrator.journal.open_moves()) and time.monotonic() < deadline:
            migrator.settle_if_due()  # as the heartbeat does: the first owed sweep is cut short
            time.sleep(0.2)
        event = event_for(watch, lost)
        # Settled from the journal then, as any move cut short at STARTING: either end will do.
        assert event.recovered and event.outcome in {"done", "rolled_back"}, event
    finally:
        migrator.shutdown()
    assert migrator.journal.open_moves() == []
    assert len(running_copies(emulated, task.name)) == 1


def test_an_owed_sweep_waits_longer_after_each_try_while_a_machine_stays_away(lei, tmp_path, monkeypatch):
    """A machine that is off for a day (a peer's, configured for moves across LEIs) kept the owed
    sweep going every interval, each try under the Docker lock for as long as the engine took to
    say it does not answer."""
    stack, _ = lei
    socket = tmp_path / "pi.sock"  # never appears
    migrator = in_process_migrator(
        stack, tmp_path, DRAGON_MIGRATOR_ENDPOINTS=f"pi=unix://{socket}", DRAGON_MIGRATOR_SCHEDULE_INTERVAL="0.5"
    )
    migrator.init_redis()
    migrator.init_docker()
    sweeps = []
    sweep = Mover.sweep
    monkeypatch.setattr(Mover, "sweep", lambda mover: sweeps.append(time.monotonic()) or sweep(mover))
    migrator.recover_moves()  # the first sweep: "pi" is away, so one is owed
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        migrator.settle_if_due()  # as the heartbeat does, more often than it would
        time.sleep(0.05)
    gaps = [later - earlier for earlier, later in zip(sweeps, sweeps[1:], strict=False)]
    assert len(sweeps) <= 4, gaps  # 0.5 s, then 1 s, then 2 s: at most 3 more tries in 4 s, not 8
    assert all(later > earlier * 1.5 for earlier, later in zip(gaps, gaps[1:], strict=False)), gaps
