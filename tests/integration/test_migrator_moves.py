"""Restart moves of real task containers between two emulated hosts, journalled in a real Redis,
with the migrator "killed" after every step and recovered: the task always runs exactly once.

Needs the Docker daemon, root (the emulated hosts are cgroups) and the local images.
"""

from __future__ import annotations

import os
import secrets as tokens
import time
import uuid

import docker
import docker.types
import pytest

from dragon.collector.docker_api import HOST_LABEL, LEI_LABEL
from dragon.collector.emulation import EmulatedHostSpec, EmulatedLei
from dragon.migrator import criu
from dragon.migrator.engines import Engines, EngineUnreachable, found
from dragon.migrator.journal import FINISHED_KEPT_S, Journal, Move, Step
from dragon.migrator.moves import Mover, TaskBusy, commit_image
from dragon.testing.lei import COLLECTOR_IMAGE, redis_client_of, standalone_redis

from .conftest import SLEEPER, Killed, dying_after, running_copies, start_task

pytestmark = pytest.mark.integration

HOSTS = (EmulatedHostSpec("h1", cpus=0.5, memory_mb=256), EmulatedHostSpec("h2", cpus=0.5, memory_mb=256))


@pytest.fixture(scope="module")
def emulated():
    if os.geteuid() != 0:
        pytest.skip("emulated hosts are cgroups: root only")
    client = docker.from_env()
    lei = EmulatedLei(client, f"mv{tokens.token_hex(3)}", image=COLLECTOR_IMAGE)
    try:
        for spec in HOSTS:
            lei.ensure_host(spec)
        lei.ensure_network()
        yield lei
    finally:
        # Tasks first: their cgroups and network endpoints keep the hosts from being removed.
        for container in client.containers.list(all=True, filters={"label": f"{LEI_LABEL}={lei.lei}"}):
            container.remove(force=True)
        lei.remove_all()
        client.close()


@pytest.fixture(scope="module")
def journal(emulated):
    password = tokens.token_urlsafe(12)
    server = standalone_redis(password)
    with server:
        client = redis_client_of(server, password)
        yield Journal(client, emulated.lei)
        client.close()


def mover(emulated, journal, **kwargs) -> Mover:
    return Mover(Engines(emulated._client, str(emulated.cgroup_root)), journal, **kwargs)


def test_a_running_task_moves_to_its_target_host_with_its_configuration(emulated, journal):
    task = start_task(emulated)
    move = mover(emulated, journal).move("move-1", task.id, "h2")
    assert move.step == Step.DONE and move.source_host == "h1"
    steps = [step for step, _ in journal.get("move-1").timings]  # each step's duration, journalled
    assert steps == ["creating", "starting", "removing_source", "renaming"]
    (moved,) = running_copies(emulated, task.name)
    assert moved.id != task.id and moved.name == task.name
    assert moved.attrs["HostConfig"]["CgroupParent"] == emulated.cgroup("h2").cgroup_parent
    assert moved.labels[HOST_LABEL] == "h2" and moved.labels["app"] == "demo"
    assert "APP_MODE=edge" in moved.attrs["Config"]["Env"]
    assert moved.attrs["Config"]["Cmd"] == SLEEPER
    assert moved.attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert emulated.network in moved.attrs["NetworkSettings"]["Networks"]
    with pytest.raises(docker.errors.NotFound):
        emulated._client.containers.get(task.id)


def test_a_duplicate_command_is_a_no_op(emulated, journal):
    task = start_task(emulated)
    first = mover(emulated, journal).move("move-dup", task.id, "h2")
    again = mover(emulated, journal).move("move-dup", first.target_id, "h1")
    assert again.step == Step.DONE and again.target_host == "h2"
    (running,) = running_copies(emulated, task.name)
    assert running.labels[HOST_LABEL] == "h2"


def test_a_command_for_a_missing_container_fails_with_the_reason(emulated, journal):
    move = mover(emulated, journal).move("move-missing", "no-such-task", "h2")
    assert move.step == Step.FAILED and "no task container" in move.error
    assert all(m.id != "move-missing" for m in journal.open_moves())


@pytest.mark.parametrize(
    "killed_after", [Step.PLANNED, Step.CREATING, Step.STARTING, Step.REMOVING_SOURCE, Step.RENAMING]
)
def test_a_migrator_killed_after_any_step_leaves_the_task_running_exactly_once(emulated, journal, killed_after):
    task = start_task(emulated)

    move_id = f"move-kill-{killed_after.value}"
    with pytest.raises(Killed):
        mover(emulated, journal, after_step=dying_after(killed_after)).move(move_id, task.id, "h2")
    (recovered,) = [m for m in mover(emulated, journal).recover() if m.id == move_id]
    # Cut short while its target was being made (it may lack a network yet): rolled back.
    expected = Step.ROLLED_BACK if killed_after in {Step.PLANNED, Step.CREATING} else Step.DONE
    assert recovered.step == expected, recovered
    (running,) = running_copies(emulated, task.name)
    assert running.name == task.name
    assert running.labels[HOST_LABEL] == ("h1" if expected == Step.ROLLED_BACK else "h2")
    assert all(m.id != move_id for m in journal.open_moves())


def test_a_target_that_never_becomes_healthy_is_rolled_back(emulated, journal):
    never = {"test": ["CMD", "false"], "interval": 500_000_000, "retries": 1}
    task = start_task(emulated, healthcheck=never)
    move = mover(emulated, journal, start_timeout_s=4).move("move-unhealthy", task.id, "h2")
    assert move.step == Step.ROLLED_BACK and "healthy" in move.error
    (running,) = running_copies(emulated, task.name)
    assert running.id == task.id and running.labels[HOST_LABEL] == "h1"


# Runs once: a second start (the move's target, which shares the volume) exits at once.
ONLY_ONCE = ["sh", "-c", "if [ -e /data/started ]; then sleep 0.3; exit 3; fi; touch /data/started; exec sleep 3600"]


def test_a_target_that_exits_right_after_it_starts_is_rolled_back(emulated, journal):
    volume = f"{emulated.lei}-once"
    task = start_task(emulated, ONLY_ONCE, volumes={volume: {"bind": "/data", "mode": "rw"}})
    try:
        while task.exec_run(["test", "-e", "/data/started"]).exit_code != 0:
            time.sleep(0.1)
        move = mover(emulated, journal).move("move-exits-at-once", task.id, "h2")
        assert move.step == Step.ROLLED_BACK and "right after it started" in move.error, move
        (running,) = running_copies(emulated, task.name)
        assert running.id == task.id and running.labels[HOST_LABEL] == "h1"
    finally:
        task.remove(force=True)
        emulated._client.volumes.get(volume).remove(force=True)


def test_a_move_cut_short_before_its_target_existed_is_rolled_back_while_that_machine_is_away(emulated, journal):
    engines = Engines(emulated._client, str(emulated.cgroup_root), {(emulated.lei, "gone"): "unix:///nonexistent.sock"})
    task = start_task(emulated)
    task.stop(timeout=1)  # as a move to another machine stops a task with volumes to copy them
    move = Move("move-to-gone", task.id, task.name, "h1", "gone", target_lei=emulated.lei)
    journal.begin(move)
    journal.record(move, Step.TRANSFERRING)
    (settled,) = [m for m in Mover(engines, journal).recover() if m.id == move.id]
    assert settled.step == Step.ROLLED_BACK, settled
    task.reload()
    assert task.status == "running"


def test_a_crashed_task_is_restarted_on_its_target(emulated, journal):
    task = start_task(emulated)
    task.kill()  # crash-like: the container died (DRAGON sec. V-B: such tasks are restarted)
    task.reload()
    assert task.status == "exited"
    move = mover(emulated, journal).move("move-crashed", task.id, "h2")
    assert move.step == Step.DONE
    (running,) = running_copies(emulated, task.name)
    assert running.labels[HOST_LABEL] == "h2"


def test_a_move_keeps_every_network_and_mounted_volume(emulated, journal):
    client = emulated._client
    second = client.networks.create(f"{emulated.network}-b", labels={LEI_LABEL: emulated.lei, "dragon.test": "true"})
    volume = f"{emulated.lei}-state"
    task = start_task(emulated, mounts=[docker.types.Mount("/state", volume, type="volume")])
    try:
        second.connect(task)
        assert mover(emulated, journal).move("move-wired", task.name, "h2").step == Step.DONE
        (moved,) = running_copies(emulated, task.name)
        assert set(moved.attrs["NetworkSettings"]["Networks"]) == {emulated.network, second.name}
        assert [(m["Type"], m["Name"], m["Destination"]) for m in moved.attrs["Mounts"]] == [
            ("volume", volume, "/state")
        ]
    finally:
        for container in running_copies(emulated, task.name):
            container.remove(force=True)
        second.remove()
        client.volumes.get(volume).remove(force=True)


# Counts in memory, printing each number: restored from a checkpoint it goes on counting; restarted it
# would begin at 1 again.
COUNTER = ["python3", "-u", "-c", "import time\ni = 0\nwhile True:\n    i += 1\n    print(i)\n    time.sleep(0.2)"]


@pytest.fixture(scope="module")
def criu_support(emulated):
    return criu.probe(emulated._client, COLLECTOR_IMAGE)


def test_a_criu_move_carries_the_tasks_memory(emulated, journal, criu_support):
    if not criu_support.available:
        pytest.skip(f"CRIU does not work on this engine: {criu_support.reason}")
    task = start_task(emulated, COUNTER)
    time.sleep(2)  # about ten numbers counted
    move = mover(emulated, journal, criu=criu_support).move("move-criu", task.name, "h2")
    assert (move.step, move.mode) == (Step.DONE, "criu"), move
    (moved,) = running_copies(emulated, task.name)
    time.sleep(1)
    first = int(moved.logs().decode().split()[0])
    assert first > 5, "the restored task began counting again: its memory was not carried"


def test_where_the_checkpoint_fails_the_move_falls_back_to_a_restart(emulated, journal, criu_support):
    if criu_support.available:
        pytest.skip("CRIU works on this engine: its checkpoints do not fail")
    task = start_task(emulated)
    believed = criu.CriuSupport(True, "the probe said yes, then the kernel said no")
    move = mover(emulated, journal, criu=believed).move("move-criu-fallback", task.name, "h2")
    assert (move.step, move.mode) == (Step.DONE, "restart"), move
    assert move.mode_reason.startswith("restart move: the CRIU checkpoint failed")
    (running,) = running_copies(emulated, task.name)
    assert running.labels[HOST_LABEL] == "h2"


def checkpoint_that_stops(client, container_id: str, name: str, leave_running: bool) -> None:
    """What a checkpoint with ``Exit`` does to the source, where CRIU cannot: its processes stop.
    No checkpoint is kept, so the restore fails and the target starts afresh from the commit image."""
    client.containers.get(container_id).kill()


@pytest.fixture
def criu_believed(monkeypatch, tmp_path):
    """Mover arguments for CRIU moves here: the probe's yes, the checkpoint above, an empty data root."""
    monkeypatch.setattr(criu, "create_checkpoint", checkpoint_that_stops)
    return {"criu": criu.CriuSupport(True, "as if the probe had checkpointed"), "docker_root": str(tmp_path)}


def wait_for_file(container, path: str) -> None:
    while container.exec_run(["test", "-e", path]).exit_code != 0:
        time.sleep(0.1)


def marking(mark: str) -> list[str]:
    """Marks its own filesystem (not a volume) once: a CRIU move carries the mark only in its commit image."""
    return ["sh", "-c", f"[ -f /mark ] || echo {mark} > /mark; exec sleep 3600"]


def test_the_moves_of_one_decision_commit_each_task_to_an_image_of_its_own(emulated, journal, criu_believed):
    """The planner's move ids are "<decision>-<index>": a tag cut from the id's start, shared by
    every move of a decision, was moved by the second commit, and task one, recreated from its
    Config.Image by a later restart move, came back with task two's files."""
    decision = uuid.uuid4().hex
    tasks = [start_task(emulated, marking(mark)) for mark in ("one", "two")]
    try:
        for index, task in enumerate(tasks):
            wait_for_file(task, "/mark")
            move = mover(emulated, journal, **criu_believed).move(f"{decision}-{index}", task.name, "h2")
            assert (move.step, move.mode) == (Step.DONE, "criu"), move
        assert mover(emulated, journal).move(f"{decision}-back", tasks[0].name, "h1").step == Step.DONE
        (back,) = running_copies(emulated, tasks[0].name)
        assert back.exec_run(["cat", "/mark"]).output.decode().strip() == "one"
    finally:
        for task in tasks:
            for container in running_copies(emulated, task.name):
                container.remove(force=True)
        for index in range(len(tasks)):
            if found(emulated._client.images, commit_image(f"{decision}-{index}")):
                emulated._client.images.remove(commit_image(f"{decision}-{index}"))


# Runs in its own container only: a copy of its files in another (another hostname) exits at once.
ONLY_IN_ITS_OWN_CONTAINER = [
    "sh",
    "-c",
    '[ -f /first ] || hostname > /first; [ "$(cat /first)" = "$(hostname)" ] || exit 3; exec sleep 3600',
]


def test_a_criu_move_rolled_back_removes_its_commit_image(emulated, journal, criu_believed):
    task = start_task(emulated, ONLY_IN_ITS_OWN_CONTAINER)
    wait_for_file(task, "/first")
    move = mover(emulated, journal, **criu_believed).move("move-criu-rolled-back", task.name, "h2")
    assert (move.step, move.mode) == (Step.ROLLED_BACK, "criu"), move
    assert not found(emulated._client.images, commit_image(move.id))
    (running,) = running_copies(emulated, task.name)
    assert running.id == task.id  # started again: the checkpoint had stopped it


def test_a_criu_roll_back_starts_the_task_again_though_its_commit_image_will_not_go(
    emulated, journal, criu_believed, monkeypatch
):
    """Removing the commit image came before starting the source the checkpoint had stopped: an
    error there (a storage driver's 500, a timeout on an SD card) kept the task down."""
    task = start_task(emulated, ONLY_IN_ITS_OWN_CONTAINER)
    wait_for_file(task, "/first")

    def refuses(image, *args, **kwargs):
        raise docker.errors.APIError("the storage driver failed", response=None)

    monkeypatch.setattr(docker.models.images.Image, "remove", refuses)
    move = mover(emulated, journal, **criu_believed).move("move-criu-image-stays", task.name, "h2")
    assert (move.step, move.mode) == (Step.ROLLED_BACK, "criu"), move
    (running,) = running_copies(emulated, task.name)
    assert running.id == task.id and running.status == "running"
    monkeypatch.undo()
    emulated._client.images.remove(commit_image(move.id))


def forget(journal: Journal, move_id: str) -> None:
    """Redis came back without the move's records (a restart that lost its last writes)."""
    journal.redis.delete(journal.prefix + move_id)
    journal.redis.srem(journal.open_key, move_id)


@pytest.mark.parametrize(("killed_after", "expected"), [(Step.STARTING, "h1"), (Step.REMOVING_SOURCE, "h2")])
def test_a_move_the_journal_lost_is_settled_by_dockers_state(emulated, journal, killed_after, expected):
    task = start_task(emulated)

    move_id = f"move-lost-{killed_after.value}"
    with pytest.raises(Killed):
        mover(emulated, journal, after_step=dying_after(killed_after)).move(move_id, task.name, "h2")
    forget(journal, move_id)
    assert mover(emulated, journal).recover() == []  # the journal knows of nothing in flight
    (settled,) = [m for m in mover(emulated, journal).sweep() if m.id == move_id]
    assert settled.step == (Step.ROLLED_BACK if expected == "h1" else Step.DONE)
    (running,) = running_copies(emulated, task.name)
    assert running.name == task.name and running.labels[HOST_LABEL] == expected


def test_a_lost_move_cut_short_again_while_settled_by_dockers_state_keeps_its_task(emulated, journal):
    """The sweep journals a target left alone (its source removed, the journal lost) with no
    other container: cut short before that is done, recovery must not remove the task's only
    container as the move's source."""
    task = start_task(emulated)

    move_id = "move-lost-twice"
    with pytest.raises(Killed):
        mover(emulated, journal, after_step=dying_after(Step.REMOVING_SOURCE)).move(move_id, task.name, "h2")
    forget(journal, move_id)
    with pytest.raises(Killed):
        mover(emulated, journal, after_step=dying_after(Step.RENAMING)).sweep()
    (recovered,) = [m for m in mover(emulated, journal).recover() if m.id == move_id]
    assert recovered.step == Step.DONE, recovered
    (running,) = running_copies(emulated, task.name)
    assert running.name == task.name and running.labels[HOST_LABEL] == "h2"


def test_an_anonymous_volume_keeps_its_data_through_a_move(emulated, journal):
    writer = ["sh", "-c", "[ -f /state/mark ] || echo kept > /state/mark; exec sleep 3600"]
    task = start_task(emulated, writer, volumes=["/state"])  # like an image's VOLUME: Docker names it
    (volume,) = [m["Name"] for m in task.attrs["Mounts"] if m["Type"] == "volume"]
    try:
        assert mover(emulated, journal).move("move-anonymous", task.name, "h2").step == Step.DONE
        (moved,) = running_copies(emulated, task.name)
        assert [m["Name"] for m in moved.attrs["Mounts"] if m["Type"] == "volume"] == [volume]
        assert moved.exec_run(["cat", "/state/mark"]).output.decode().strip() == "kept"
    finally:  # the target mounts it by name: no removal of a container takes it along
        for container in running_copies(emulated, task.name):
            container.remove(force=True)
        emulated._client.volumes.get(volume).remove(force=True)


def test_a_record_half_written_by_an_older_migrator_does_not_block_its_move(emulated, journal):
    journal.redis.hset(journal.prefix + "move-half", "step", "planned")  # Redis failed after the first write
    assert journal.get("move-half") is None
    task = start_task(emulated)
    assert mover(emulated, journal).move("move-half", task.name, "h2").step == Step.DONE


def test_a_machine_out_of_reach_stops_nothing_but_its_own_moves(emulated, journal):
    engines = Engines(emulated._client, str(emulated.cgroup_root), {(emulated.lei, "gone"): "unix:///nonexistent.sock"})
    task = start_task(emulated)
    mover_ = Mover(engines, journal)
    assert mover_.sweep() == [] and not engines.exists(emulated.lei, "gone")
    assert mover_.move("move-despite-gone", task.name, "h2").step == Step.DONE  # its tasks are just not seen
    with pytest.raises(EngineUnreachable):
        mover_.locate(task.name, strict=True)  # "none there" cannot be told from "out of reach"


def test_a_finished_moves_record_expires_an_open_ones_does_not(emulated, journal):
    task = start_task(emulated)
    mover(emulated, journal).move("move-expiring", task.name, "h2")
    assert 0 < journal.redis.ttl(journal.prefix + "move-expiring") <= FINISHED_KEPT_S
    with pytest.raises(Killed):
        mover(emulated, journal, after_step=dying_after(Step.STARTING)).move("move-open", task.name, "h1")
    assert journal.redis.ttl(journal.prefix + "move-open") == -1  # kept until it is settled
    mover(emulated, journal).recover()


@pytest.mark.parametrize("killed_after", [Step.CREATING, Step.RENAMING])
def test_a_task_in_a_move_not_settled_yet_is_busy(emulated, journal, killed_after):
    """Also once the move's target has the task's name (cut short before it was journalled done):
    that target is the task's container a new command finds."""
    task = start_task(emulated)
    first = f"move-first-{killed_after.value}"
    with pytest.raises(Killed):
        mover(emulated, journal, after_step=dying_after(killed_after)).move(first, task.name, "h2")
    with pytest.raises(TaskBusy, match=first):
        mover(emulated, journal).move(f"move-second-{killed_after.value}", task.name, "h1")
    assert journal.get(f"move-second-{killed_after.value}") is None  # refused before it began
    (settled,) = [m for m in mover(emulated, journal).recover() if m.id == first]
    assert settled.step == (Step.DONE if killed_after == Step.RENAMING else Step.ROLLED_BACK), settled
