"""Moves between an emulated host of the broker's engine and a machine with its own Docker engine
(a second dockerd on this machine, its image store empty, reached over tcp with mutual TLS):
the image and the named volume's data travel with the task; a bind mount cannot; a move
stopped midway is rolled back.

Needs the Docker daemon, root (a second dockerd; the emulated hosts are cgroups) and the images.
"""

from __future__ import annotations

import os
import secrets as tokens
import signal
import subprocess
import sys

import docker
import pytest
import redis

from dragon.collector.docker_api import HOST_LABEL, LEI_LABEL
from dragon.collector.emulation import EmulatedHostSpec, EmulatedLei
from dragon.migrator import transfer
from dragon.migrator.engines import Engines, found
from dragon.migrator.journal import Journal, Move, Step
from dragon.migrator.moves import Mover, moved_name
from dragon.testing.engine import EngineUnavailable, second_engine
from dragon.testing.lei import COLLECTOR_IMAGE, redis_client_of, standalone_redis

from .conftest import Killed, dying_after, start_task

pytestmark = pytest.mark.integration

# Writes its greeting into the volume once, then keeps running: the data must survive the move.
GREETER = ["sh", "-c", "[ -f /data/greeting ] || echo hello from h1 > /data/greeting; exec sleep 3600"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An emulated host h1 on the local engine, and the machine "far" with its own engine."""
    if os.geteuid() != 0:
        pytest.skip("a second dockerd and emulated hosts need root")
    local = docker.from_env()
    lei = EmulatedLei(local, f"eng{tokens.token_hex(3)}", image=COLLECTOR_IMAGE)
    password = tokens.token_urlsafe(12)
    try:
        with second_engine(tmp_path_factory.mktemp("far")) as engine, standalone_redis(password) as server:
            far = docker.DockerClient(base_url=engine.unix_url)
            lei.ensure_host(EmulatedHostSpec("h1", cpus=0.5, memory_mb=256))
            lei.ensure_network()
            far.networks.create(lei.network, driver="bridge")  # the task's network exists there too
            engines = Engines(local, str(lei.cgroup_root), {(lei.lei, "far"): engine.tls_url}, engine.tls_dir)
            store = redis_client_of(server, password)
            yield lei, far, engines, Journal(store, lei.lei)
            for container in far.containers.list(all=True):
                container.remove(force=True)
            for client in (far, engines, store):
                client.close()
    except EngineUnavailable as exc:
        pytest.skip(f"no second Docker engine here: {exc}")
    finally:
        for container in local.containers.list(all=True, filters={"label": f"{LEI_LABEL}={lei.lei}"}):
            container.remove(force=True)
        lei.remove_all()
        for volume in local.volumes.list(filters={"name": lei.lei}):
            volume.remove(force=True)
        local.close()


def greeting(container) -> str:
    return container.exec_run(["cat", "/data/greeting"]).output.decode().strip()


def test_a_task_moves_to_another_machine_with_its_image_and_volume_data_and_back(world):
    lei, far, engines, journal = world
    task = start_task(lei, GREETER, volumes={f"{lei.lei}-data": {"bind": "/data", "mode": "rw"}})
    mover = Mover(engines, journal)
    move = mover.move("to-far", task.name, "far")
    assert move.step == Step.DONE, move.error
    assert [step for step, _ in move.timings][0] == "transferring"
    moved = far.containers.get(task.name)
    assert moved.status == "running" and moved.labels[HOST_LABEL] == "far"
    assert far.images.get(COLLECTOR_IMAGE)  # the image came along: the far engine had none
    assert greeting(moved) == "hello from h1"  # the volume's data came along
    with pytest.raises(docker.errors.NotFound):
        lei._client.containers.get(task.id)

    back = mover.move("back", task.name, "h1")
    assert back.step == Step.DONE, back.error
    home = lei._client.containers.get(task.name)
    assert home.attrs["HostConfig"]["CgroupParent"] == lei.cgroup("h1").cgroup_parent
    assert greeting(home) == "hello from h1"
    assert far.containers.list(filters={"name": task.name}) == []


def test_a_bind_mount_cannot_leave_its_machine_and_nothing_is_touched(world, tmp_path):
    lei, far, engines, journal = world
    task = start_task(lei, GREETER, volumes={str(tmp_path): {"bind": "/data", "mode": "rw"}})
    move = Mover(engines, journal).move("bound", task.name, "far")
    assert move.step == Step.FAILED and "bind mounts" in move.error
    task.reload()
    assert task.status == "running" and far.containers.list(all=True, filters={"name": task.name}) == []


def test_a_move_killed_while_transferring_is_rolled_back_and_the_stopped_task_restarted(world):
    lei, far, engines, journal = world
    task = start_task(lei, GREETER, volumes={f"{lei.lei}-data2": {"bind": "/data", "mode": "rw"}})

    with pytest.raises(Killed):
        Mover(engines, journal, after_step=dying_after(Step.TRANSFERRING)).move("killed", task.name, "far")
    task.reload()
    assert task.status == "exited"  # stopped for a consistent copy of its volume
    (recovered,) = [m for m in Mover(engines, journal).recover() if m.id == "killed"]
    assert recovered.step == Step.ROLLED_BACK
    task.reload()
    assert task.status == "running" and far.containers.list(all=True, filters={"name": task.name}) == []


def test_a_volume_name_taken_on_the_other_machine_is_never_overwritten(world):
    lei, far, engines, journal = world
    volume = f"{lei.lei}-shared"
    far.volumes.create(volume)  # another task's data there
    task = start_task(lei, GREETER, volumes={volume: {"bind": "/data", "mode": "rw"}})
    move = Mover(engines, journal).move("taken", task.name, "far")
    assert move.step == Step.FAILED and "same name" in move.error
    task.reload()
    assert task.status == "running"
    far.volumes.get(volume).remove()


def test_a_name_taken_on_the_target_machine_fails_the_move_before_and_is_sidestepped_after(world):
    lei, far, engines, journal = world
    task = start_task(lei)
    transfer.ensure_image(engines.local.client, far, task)
    squatter = far.containers.create(COLLECTOR_IMAGE, ["true"], name=task.name)
    move = Mover(engines, journal).move("name-taken", task.name, "far")
    assert move.step == Step.FAILED and "named" in move.error, move
    squatter.remove()

    def squat(step: Step) -> None:  # another container takes the name while the move runs
        if step == Step.REMOVING_SOURCE:
            far.containers.create(COLLECTOR_IMAGE, ["true"], name=task.name)

    move = Mover(engines, journal, after_step=squat).move("name-taken-later", task.name, "far")
    assert move.step == Step.DONE, move
    # Under a name of its own, not the temporary one: the task is found, not taken for a move in flight.
    (found,) = Mover(engines, journal).locate(task.name)
    assert found.name == moved_name(task.name, "name-taken-later") and found.status == "running"


def test_a_volume_copy_the_target_machine_refuses_leaves_no_container_holding_the_volume(world):
    """The target's throw-away container cannot be made (its engine refuses; here: it lacks the
    image): the source's one is removed all the same, or it would hold the task's volume for good."""
    lei, far, engines, journal = world
    volume = f"{lei.lei}-refused"
    task = start_task(lei, GREETER, volumes={volume: {"bind": "/data", "mode": "rw"}})
    local = engines.local.client
    only_here = task.commit()  # an image the far engine does not have
    try:
        with pytest.raises(docker.errors.NotFound):
            transfer.copy_volumes(local, far, task, only_here.id, "refused-copy")
        assert [c.id for c in local.containers.list(all=True, filters={"volume": volume})] == [task.id]
    finally:
        for container in local.containers.list(all=True, filters={"ancestor": only_here.id}):
            container.remove(force=True)  # the leak itself, where the test fails
        local.images.remove(only_here.id)
        far.volumes.get(volume).remove()


def test_a_volume_copy_leaves_no_other_volume_on_the_target_machine(world):
    """The copy's containers run the task's image; one that declares a VOLUME gives each of them an
    anonymous volume, which must go with them: a volume left per copy would pile up."""
    lei, far, engines, journal = world
    volume = f"{lei.lei}-declared"
    task = start_task(lei, GREETER, volumes={volume: {"bind": "/data", "mode": "rw"}})
    local = engines.local.client
    declaring = task.commit(conf={"Volumes": {"/cache": {}}})
    holder = local.containers.create(declaring.id, ["true"])
    before = {v.name for v in far.volumes.list()}
    try:
        transfer.ensure_image(local, far, holder)
        transfer.copy_volumes(local, far, task, declaring.id, "declared-copy")
        assert {v.name for v in far.volumes.list()} - before == {volume}
    finally:
        holder.remove(v=True)
        local.images.remove(declaring.id)
        for leftover in far.volumes.list():
            if leftover.name not in before:
                leftover.remove()


# A migrator killed (SIGKILL: no finally, no clean-up) as the volume's files reach the target machine.
KILLED_MID_COPY = """
import os, signal, sys
import docker, docker.models.containers, redis
from dragon.migrator.engines import Engines
from dragon.migrator.journal import Journal
from dragon.migrator.moves import Mover

docker.models.containers.Container.put_archive = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
lei, cgroup_root, url, tls_dir, move_id, task = sys.argv[1:]
engines = Engines(docker.from_env(), cgroup_root, {(lei, "far"): url}, tls_dir)
Mover(engines, Journal(redis.Redis.from_url(os.environ["JOURNAL_URL"]), lei)).move(move_id, task, "far")
"""


def move_killed_mid_copy(world, move_id: str, task) -> None:
    """Move ``task`` to "far" in a migrator process of its own (the world's engines and journal),
    killed as the copy writes the volume's files there."""
    lei, _, engines, journal = world
    store = journal.redis.connection_pool.connection_kwargs
    url = f"redis://:{store['password']}@{store['host']}:{store['port']}/{store.get('db', 0)}"
    arguments = [
        lei.lei,
        str(lei.cgroup_root),
        engines.endpoints[(lei.lei, "far")],
        engines.tls_dir,
        move_id,
        task.name,
    ]
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MID_COPY, *arguments],
        env={**os.environ, "JOURNAL_URL": url},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr


def test_a_move_killed_mid_copy_is_rolled_back_and_leaves_nothing_holding_the_volumes(world):
    """The copy's throw-away containers outlive a killed migrator. Left there, the one on the target
    machine would keep the copied volume from being removed, and every later move of the task there
    would fail on "volumes of the same name"; the one on the source would keep its volume."""
    lei, far, engines, journal = world
    volume = f"{lei.lei}-data3"
    task = start_task(lei, GREETER, volumes={volume: {"bind": "/data", "mode": "rw"}})
    move_killed_mid_copy(world, "killed-mid-copy", task)
    assert far.containers.list(all=True, filters={"volume": volume})  # the copy's container, left behind
    (recovered,) = [m for m in Mover(engines, journal).recover() if m.id == "killed-mid-copy"]
    assert recovered.step == Step.ROLLED_BACK, recovered
    assert far.containers.list(all=True, filters={"volume": volume}) == []
    assert not found(far.volumes, volume)
    assert [c.id for c in lei._client.containers.list(all=True, filters={"volume": volume})] == [task.id]
    again = Mover(engines, journal).move("after-killed-copy", task.name, "far")
    assert again.step == Step.DONE, again
    assert greeting(far.containers.get(task.name)) == "hello from h1"


class LosesFailedWrites(Journal):
    """Redis goes away as a refused move is journalled failed: that write never lands."""

    def record(self, move: Move, step: Step, **changes: str) -> Move:
        if step == Step.FAILED:
            raise redis.ConnectionError("Redis went away")
        return super().record(move, step, **changes)

    def fail(self, move: Move, error: str) -> Move:
        raise redis.ConnectionError("Redis went away")


def test_a_refused_move_redis_failed_to_journal_is_not_rolled_back_over_another_tasks_volume(world):
    """Refused because its volume's name is taken on the target machine, the move never began:
    taken for one in flight, recovery would "roll it back", removing that other task's volume."""
    lei, far, engines, journal = world
    volume = f"{lei.lei}-theirs"
    far.volumes.create(volume)  # another task's data there, in no container at the moment
    task = start_task(lei, GREETER, volumes={volume: {"bind": "/data", "mode": "rw"}})
    try:
        with pytest.raises(redis.ConnectionError):
            Mover(engines, LosesFailedWrites(journal.redis, journal.lei)).move("refused-unjournalled", task.name, "far")
        Mover(engines, journal).recover()
        assert found(far.volumes, volume)
        assert all(m.id != "refused-unjournalled" for m in journal.open_moves())
        task.reload()
        assert task.status == "running"
    finally:
        if found(far.volumes, volume):
            far.volumes.get(volume).remove()
