"""Moves between an emulated host of the broker's engine and a machine with its own Docker engine
(a second dockerd on this machine, its image store empty, reached over tcp with mutual TLS):
the image and the named volume's data travel with the task; a bind mount cannot; a move
stopped midway is rolled back.

Needs the Docker daemon, root (a second dockerd; the emulated hosts are cgroups) and the images.
"""

from __future__ import annotations

import os
import secrets as tokens

import docker
import pytest

from dragon.collector.docker_api import HOST_LABEL, LEI_LABEL
from dragon.collector.emulation import EmulatedHostSpec, EmulatedLei
from dragon.migrator import transfer
from dragon.migrator.engines import Engines
from dragon.migrator.journal import Journal, Step
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
