"""The restart move: a task container recreated on its target host, started, and only then removed
from its source; and the recovery that completes or rolls back every move a killed migrator left.

A move recreates the container on the target host with the same image, command, environment,
labels (host and LEI updated), limits, networks and volumes. Between emulated hosts of one
engine (:mod:`dragon.migrator.engines`) the target goes under the target host's parent cgroup
and volume data stays where it is. To a machine with its own engine, the image and the named
volumes' data are copied first (:mod:`dragon.migrator.transfer`); a task with named volumes is
stopped before its data is copied, so the copy is consistent, and started again if the move
rolls back. Bind mounts cannot follow a task to another machine: such a move fails, untouched.

Each step is written to the :class:`~dragon.migrator.journal.Journal` before it is taken.
Recovery trusts Docker's state over the journal's: a move whose target runs is completed (the
source removed, the target renamed); one whose target never ran is rolled back (the target
removed, the source started if it had been stopped). Either way the task runs exactly once.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import docker.errors
import docker.types
import structlog

from dragon.collector import docker_api
from dragon.collector.docker_api import HOST_LABEL, LEI_LABEL, TASK_ID_LABEL, TASK_LABEL
from dragon.migrator import criu, engines, transfer
from dragon.migrator.criu import CriuSupport
from dragon.migrator.engines import Engine, Engines, EngineUnreachable, container_named, found
from dragon.migrator.journal import FINAL, Journal, Move, Step

log = structlog.get_logger(__name__)

MOVE_LABEL = "dragon.move"  # on a target container: the move that created it
MOVE_LEI_LABEL = "dragon.move.lei"  # ... and the LEI whose migrator made it
START_TIMEOUT_S = 60.0
# A target must keep running this long, not restarted, before its source is removed: a task that
# fails at once (a file the restart move did not carry, say) has exited by then.
RUNNING_HOLD_S = 1.5
# Steps before the target is created: recovery rolls such a move back without asking its engine.
BEFORE_TARGET = frozenset({Step.PLANNED, Step.TRANSFERRING, Step.CHECKPOINTING})


class MoveError(RuntimeError):
    """A move that cannot be carried out; the journal says why."""


class TaskBusy(MoveError):
    """The task is in a move not settled yet (another replica's, or one cut short): not journalled."""


class TaskMovedSince(MoveError):
    """The task's last move was done after the command was issued: not journalled."""


# What reaching an engine can raise: the SDK's errors, requests' (it does not wrap connection
# errors and timeouts), and a machine whose client cannot be made.
ENGINE_ERRORS = (*engines.ENGINE_ERRORS, EngineUnreachable)
COMMIT_REPOSITORY = "dragon-move"  # CRIU moves commit the source's files to images named so


def task_id_of(container: Any) -> str:
    """The task a container runs: its ``dragon.task.id`` label, else its name (as the collector reports it)."""
    return docker_api.task_id(container.labels, container.name)


def creation_kwargs(
    source: Any, target_lei: str, target_host: str, cgroup_parent: str | None, move_id: str
) -> dict[str, Any]:
    """``containers.create`` arguments reproducing ``source`` on ``target_host`` of ``target_lei``.

    The target keeps the task's id (``dragon.task.id``), so that while both copies exist, and
    after, every service sees one task that changed hosts, not a new one.
    """
    config, host = source.attrs["Config"], source.attrs["HostConfig"]
    labels = {
        **(config.get("Labels") or {}),
        TASK_ID_LABEL: task_id_of(source),
        LEI_LABEL: target_lei,
        HOST_LABEL: target_host,
        MOVE_LABEL: move_id,
        MOVE_LEI_LABEL: (config.get("Labels") or {}).get(LEI_LABEL, ""),
    }
    kwargs: dict[str, Any] = {
        "image": config["Image"],
        "command": config.get("Cmd"),
        "entrypoint": config.get("Entrypoint"),
        "environment": config.get("Env"),
        "working_dir": config.get("WorkingDir") or None,
        "user": config.get("User") or None,
        "labels": labels,
        "healthcheck": config.get("Healthcheck"),
        "cgroup_parent": cgroup_parent,
        "mem_limit": host.get("Memory") or None,
        "memswap_limit": host.get("MemorySwap") or None,
        "nano_cpus": host.get("NanoCpus") or None,
        "cpu_quota": host.get("CpuQuota") or None,
        "cpu_period": host.get("CpuPeriod") or None,
        "restart_policy": host.get("RestartPolicy") or None,
        "volumes": binds_of(source) or None,
        "mounts": mounts_of(source) or None,
        "network": user_networks(source)[0] if user_networks(source) else None,
        "name": temporary_name(source.name, move_id),
    }
    return {key: value for key, value in kwargs.items() if value is not None}


def binds_of(container: Any) -> list[str]:
    """``-v source:destination[:mode]`` binds; a bare ``-v /path`` (an anonymous volume) is a mount."""
    return [bind for bind in container.attrs["HostConfig"].get("Binds") or [] if ":" in bind]


def mounts_of(container: Any) -> list[docker.types.Mount]:
    """``--mount`` mounts, and the volumes Docker made for it (an image's VOLUME, ``-v /path``).

    The latter are in neither ``Binds`` nor ``HostConfig.Mounts``: left out, the target would get
    fresh empty ones. Named here, the target mounts the same volume (or, on another engine, the
    copy of it)."""
    made = {posixpath.normpath(m["Destination"]): m.get("Name") for m in container.attrs.get("Mounts") or []}
    mounts = [
        docker.types.Mount(
            m["Target"],
            m.get("Source") or made.get(posixpath.normpath(m["Target"])),  # an anonymous --mount volume
            type=m.get("Type", "volume"),
            read_only=m.get("ReadOnly"),
        )
        for m in container.attrs["HostConfig"].get("Mounts") or []
    ]
    covered = {posixpath.normpath(m["Target"]) for m in mounts}
    covered |= {posixpath.normpath(bind.split(":")[1]) for bind in binds_of(container)}
    for mount in container.attrs.get("Mounts") or []:
        if mount.get("Type") == "volume" and posixpath.normpath(mount["Destination"]) not in covered:
            mounts.append(
                docker.types.Mount(
                    mount["Destination"], mount["Name"], type="volume", read_only=not mount.get("RW", True)
                )
            )
    return mounts


def temporary_name(name: str, move_id: str) -> str:
    """A target's name until the move is done (then it takes the task's name)."""
    return f"{name}-mv-{move_id[:12]}"


def checkpoint_name(move_id: str) -> str:
    """The move's checkpoint, and the tag of its commit image: one per move (the moves of one
    planner decision share all but the id's last characters), within Docker's rules for both
    (``[A-Za-z0-9_.-]``, at most 128 characters). The id's hash tells apart ids that differ only
    in characters replaced or cut."""
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", move_id)[:64]
    return f"dragon-{readable}-{hashlib.sha256(move_id.encode()).hexdigest()[:12]}"


def commit_image(move_id: str) -> str:
    """The image a CRIU move commits its source's files to."""
    return f"{COMMIT_REPOSITORY}:{checkpoint_name(move_id)}"


def in_flight(container: Any) -> bool:
    """A move's target that has not taken its task's name yet."""
    move_id = container.labels.get(MOVE_LABEL)
    return bool(move_id) and container.name.endswith(temporary_name("", move_id))


def user_networks(container: Any) -> list[str]:
    """The user-defined networks the container is on (not Docker's default bridge, host or none)."""
    networks = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
    return [name for name in networks if name not in {"bridge", "host", "none"}]


class Mover:
    """Carries out restart moves and recovers the ones left in flight.

    Only containers labelled as DRAGON tasks of the journal's LEI are moved. ``engines`` says
    which Docker engine reaches each host and which parent cgroup an emulated host has.
    ``criu`` is what the start-up probe found: with it, moves on one engine checkpoint the
    task's processes and restore them on the target (:meth:`_run_criu`). ``after_step`` (tests)
    is called after each step's action, before the next step is journalled: raising there is a
    kill at that point.
    """

    def __init__(
        self,
        engines: Engines,
        journal: Journal,
        after_step: Callable[[Step], None] | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        criu: CriuSupport | None = None,
        docker_root: str = "",
        running_hold_s: float = RUNNING_HOLD_S,
    ) -> None:
        self.engines = engines
        self.journal = journal
        self.after_step = after_step or (lambda step: None)
        self.start_timeout_s = start_timeout_s
        self.running_hold_s = running_hold_s
        self.criu = criu or CriuSupport(False, "not probed")
        self.docker_root = docker_root
        self.engines_unseen: list[str] = []  # of the last sweep

    # --- one move -------------------------------------------------------------------
    def move(
        self, move_id: str, task: str, target_host: str, target_lei: str = "", issued_at: float | None = None
    ) -> Move:
        """Move ``task`` (its task id, container name or id) to ``target_host`` of ``target_lei``
        (default: this LEI); a known ``move_id`` is a no-op that returns the move as recorded.

        ``issued_at``: when the command was issued. One issued before the task's last move was done
        was planned from where the task ran before (a command sent again while a slow move ran, or
        by a restarted planner): carried out, it would move the task a second time (TaskMovedSince).
        """
        known = self.journal.get(move_id)
        if known is not None:
            log.info("move_duplicate", id=move_id, step=known.step.value)
            return known
        target_lei = target_lei or self.journal.lei
        containers = self.locate(task)
        if len(containers) != 1:
            names = ", ".join(c.name for c in containers)
            error = f"no task container {task!r} of LEI {self.journal.lei}"
            if containers:
                error = f"task {task!r} matches {len(containers)} containers: {names}"
            return self._fail(Move(move_id, task, task, "", target_host, target_lei=target_lei), error)
        (source,) = containers
        # Its target too: renamed, the target of a move not journalled done is the task's container.
        busy = [m.id for m in self.journal.open_moves() if source.id in (m.task, m.target_id)]
        if busy:
            raise TaskBusy(f"task {task} is being moved by command {busy[0]}")
        moved_at = self.journal.moved_at(task_id_of(source))
        if issued_at is not None and moved_at is not None and moved_at > issued_at:
            raise TaskMovedSince(f"task {task} was moved at {moved_at:.0f}, after this command was issued")
        source_host = source.labels.get(HOST_LABEL, "")
        move = Move(move_id, source.id, source.name, source_host, target_host, target_lei, task_id=task_id_of(source))
        mode, mode_reason = self._mode(move, source)
        move = replace(move, mode=mode, mode_reason=mode_reason)
        if (move.target_lei, move.target_host) == (self.journal.lei, move.source_host):
            return self._fail(move, f"task {task!r} runs on {target_host} already")
        if self._crosses_engines(move):
            target_client = self._target_engine(move).client
            if container_named(target_client, source.name):
                return self._fail(move, f"the target machine has a container named {source.name} already")
            try:
                transfer.check_portable(source, target_client)
            except transfer.TransferError as exc:
                return self._fail(move, str(exc))
        move = self.journal.begin(move) or self.journal.get(move_id)
        self.after_step(Step.PLANNED)
        return self._run(move, source)

    def locate(self, task: str, strict: bool = False) -> list[Any]:
        """This LEI's containers of ``task``, on any of its engines: by task id, else by name or id.

        A container that is not labelled as a DRAGON task of this LEI is never touched. An engine
        out of reach is skipped (logged); ``strict``, it raises: "none found" must then mean none.
        """
        reachable = self.engines.of_lei(self.journal.lei, strict)
        # A move's target still under its temporary name is not (yet) the task: its source is.
        candidates = [c for engine in reachable for c in self._tasks_on(engine, strict) if not in_flight(c)]
        by_task = [c for c in candidates if task_id_of(c) == task]
        by_id = [c for c in candidates if len(task) >= 12 and c.id.startswith(task)]  # a short id is ambiguous
        return by_task or [c for c in candidates if c.name == task] or by_id

    def _tasks_on(self, engine: Engine, strict: bool = False) -> list[Any]:
        """This LEI's task containers on ``engine``; none if it is out of reach (logged), unless ``strict``."""
        labels = [f"{TASK_LABEL}=true", f"{LEI_LABEL}={self.journal.lei}"]
        try:
            return engine.client.containers.list(all=True, filters={"label": labels})
        except ENGINE_ERRORS as exc:
            if strict:
                raise
            log.error("engine_unreachable", engine=engine.name, error=str(exc)[:300])
            return []

    def _mode(self, move: Move, source: Any) -> tuple[str, str]:
        """CRIU where it can work, else the restart move; and why."""
        if not self.criu.available:
            return "restart", f"restart move: no CRIU on this engine ({self.criu.reason})"
        if self._crosses_engines(move) or self._source_engine(move).name != self.engines.local.name:
            return "restart", "restart move: checkpoints are copied on the broker's own engine only"
        if source.status != "running":
            return "restart", "restart move: the task is not running (crash-like: restarted on the target)"
        return "criu", "CRIU move: the engine checkpointed a probe container at start-up"

    def _run(self, move: Move, source: Any) -> Move:
        if move.mode == "criu":
            return self._run_criu(move, source)
        target_engine = self._target_engine(move)
        if self._crosses_engines(move):
            move, _ = self._step(move, Step.TRANSFERRING, lambda: self._transfer(source, target_engine, move.id))
        kwargs = creation_kwargs(source, move.target_lei, move.target_host, self._cgroup_parent(move), move.id)
        move, target = self._step(move, Step.CREATING, lambda: self._create(target_engine, source, kwargs))
        try:
            move, _ = self._step(move, Step.STARTING, lambda: self._start(target), target_id=target.id)
        except MoveError as exc:
            return self._roll_back(self.journal.get(move.id) or move, str(exc))
        return self._finish(move)

    def _run_criu(self, move: Move, source: Any) -> Move:
        """Checkpoint the source (it stops) and commit its files; create the target from them and
        restore the checkpoint there. A failed checkpoint falls back to the restart move (the
        source still runs); a failed restore starts the target afresh from the source's files."""
        engine, checkpoint = self._source_engine(move), checkpoint_name(move.id)
        try:
            move, image = self._step(move, Step.CHECKPOINTING, lambda: self._checkpoint(engine, source, checkpoint))
        except docker.errors.APIError as exc:
            reason = f"restart move: the CRIU checkpoint failed ({criu.first_line(exc)})"
            move = self.journal.record(move, Step.PLANNED, mode="restart", mode_reason=reason)
            source.reload()
            return self._run(move, source)
        kwargs = creation_kwargs(source, move.target_lei, move.target_host, self._cgroup_parent(move), move.id)
        kwargs["image"] = commit_image(move.id)  # by tag: removed with the last container using it
        move, target = self._step(move, Step.CREATING, lambda: self._create(engine, source, kwargs))
        try:
            move, fallback = self._step(
                move, Step.STARTING, lambda: self._restore(engine, move, target, checkpoint), target_id=target.id
            )
        except MoveError as exc:
            return self._roll_back(self.journal.get(move.id) or move, str(exc))
        return self._finish(replace(move, mode_reason=fallback or move.mode_reason))

    def _checkpoint(self, engine: Engine, source: Any, name: str) -> Any:
        """The source's processes to a checkpoint (it stops), then its files to an image."""
        criu.create_checkpoint(engine.client, source.id, name, leave_running=False)
        return source.commit(repository=COMMIT_REPOSITORY, tag=name, conf={"Labels": {MOVE_LABEL: name}})

    def _restore(self, engine: Engine, move: Move, target: Any, name: str) -> str:
        """Start the target from the checkpoint, or else afresh; the reason for the latter, or ""."""
        root = self.docker_root or engine.client.info()["DockerRootDir"]
        fallback = ""
        try:
            criu.copy_checkpoint(root, move.task, target.id, name)
            criu.start_from_checkpoint(engine.client, target.id, name)
        except (OSError, docker.errors.APIError) as exc:
            fallback = f"CRIU restore failed ({criu.first_line(exc)}): the task restarted from its files"
            log.warning("criu_restore_failed", id=move.id, task=move.name, error=str(exc)[:300])
        self._start(target)
        return fallback

    def _cgroup_parent(self, move: Move) -> str | None:
        return self.engines.cgroup_parent(move.target_lei, move.target_host)

    def _transfer(self, source: Any, target_engine: Engine, move_id: str) -> None:
        """The image and the named volumes' data, to the target's engine; the task stops first if it has volumes."""
        source_engine = self._source_engine_of(source)
        transfer.ensure_image(source_engine.client, target_engine.client, source)
        if transfer.named_volumes(source):
            source.stop()  # a consistent copy; the roll-back starts it again
            transfer.copy_volumes(source_engine.client, target_engine.client, source, source.attrs["Image"], move_id)

    def _create(self, engine: Engine, source: Any, kwargs: dict[str, Any]) -> Any:
        """Create the target; connect it to the source's other networks that exist on its engine."""
        networks = [n for n in user_networks(source) if found(engine.client.networks, n)]
        kwargs.pop("network", None)
        if networks:  # else (another machine without them) Docker's default bridge
            kwargs["network"] = networks[0]
        target = engine.client.containers.create(**kwargs)
        for network in networks[1:]:
            engine.client.networks.get(network).connect(target)
        return target

    def _step(self, move: Move, step: Step, action: Callable[[], Any], **changes: str) -> tuple[Move, Any]:
        """Journal ``step``, take it, and keep how long it took (written with the next step)."""
        move = self.journal.record(move, step, **changes)
        started = time.perf_counter()
        result = action()
        move = replace(move, timings=(*move.timings, (step.value, round(time.perf_counter() - started, 4))))
        self.after_step(step)
        return move, result

    def _start(self, target: Any) -> None:
        """Start ``target`` unless it runs, and wait until it runs (and is healthy, if it has a healthcheck)."""
        target.reload()
        if target.status != "running":
            try:
                target.start()
            except docker.errors.APIError as exc:  # refused (say, the runtime failed): not an outage
                raise MoveError(f"the engine would not start the target: {criu.first_line(exc)}") from exc
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            target.reload()
            state = target.attrs["State"]
            if state["Status"] in {"exited", "dead"}:
                raise MoveError(f"the target container exited with code {state.get('ExitCode')}")
            health = (state.get("Health") or {}).get("Status")
            if state["Status"] == "running" and health in (None, "healthy"):
                return self._hold(target, state["StartedAt"])
            time.sleep(0.1)
        raise MoveError(f"the target container was not running and healthy within {self.start_timeout_s:.0f} s")

    def _hold(self, target: Any, started_at: str) -> None:
        """Raise MoveError unless ``target`` keeps running, not restarted, for ``running_hold_s``."""
        until = time.monotonic() + self.running_hold_s
        while time.monotonic() < until:
            time.sleep(0.1)
            target.reload()
            state = target.attrs["State"]
            if state["Status"] != "running" or state["StartedAt"] != started_at:
                code = state.get("ExitCode")
                raise MoveError(f"the target container stopped right after it started (exit code {code})")

    def _finish(self, move: Move) -> Move:
        """The target runs: remove the source, give the target the task's name."""
        source, target = self._source_engine(move), self._target_engine(move)
        move, _ = self._step(move, Step.REMOVING_SOURCE, lambda: self._remove_source(source, move))
        move, _ = self._step(move, Step.RENAMING, lambda: _rename(target, move.target_id, move.name, move.id))
        log.info(
            "move_done",
            id=move.id,
            task=move.name,
            source=move.source_host,
            target=f"{move.target_lei}/{move.target_host}",
            steps=move.timings,
        )
        return self.journal.record(move, Step.DONE)

    def _fail(self, move: Move, error: str) -> Move:
        """A move that cannot start: journalled as failed (in one write, never open), nothing touched."""
        return self.journal.fail(move, error) or self.journal.get(move.id)

    def _roll_back(self, move: Move, error: str) -> Move:
        """The target never ran: remove it; the task runs on its source as before.

        Only a container that carries this move's label is removed, and only a DRAGON task of
        this LEI is started: the journal is data in Redis, not proof of what a container is.
        """
        # Before the target was created its machine need not answer: the source starts regardless.
        target = None if move.step in BEFORE_TARGET else self._target_of(move)
        if target is not None:
            target.remove(force=True)
        source_engine = self._source_engine(move)
        source = self._own_task(source_engine, move.task) if move.has_source else None
        if source is None:
            error += "; and the source container is gone"
        elif source.status != "running":
            source.start()
        # What the move made, once the task runs again: removing a large commit image can take
        # longer than the SDK's timeout on an SD card, and must not keep the task down.
        if move.mode == "criu":  # its target, the only container made from it, is gone
            self._remove_commit_image(move, source_engine)
        if self._crosses_engines(move):
            self._undo_transfer(move, source_engine, source)
        log.warning("move_rolled_back", id=move.id, task=move.name, error=error)
        return self.journal.record(move, Step.ROLLED_BACK, error=error)

    def _remove_commit_image(self, move: Move, engine: Engine) -> None:
        """A rolled-back CRIU move's commit image; left there, logged, if Docker will not remove it now."""
        try:
            if not _remove_if_unused(engine.client.images, commit_image(move.id)):
                log.warning("commit_image_left", id=move.id, image=commit_image(move.id), in_use=True)
        except ENGINE_ERRORS as exc:
            log.warning("commit_image_left", id=move.id, image=commit_image(move.id), error=str(exc)[:300])

    def _undo_transfer(self, move: Move, source_engine: Engine, source: Any | None) -> None:
        """What the transferring step made: the volume copy's throw-away containers a migrator
        killed mid-copy left on either machine (they hold the volumes), then the volumes made on
        the target's machine for the copy (free once the target is gone). Left there, logged,
        while that machine is out of reach or something there still uses them."""
        transfer.remove_copy_containers(source_engine.client, move.id)
        if source is None:  # which volumes the copy made, only the source's mounts told
            log.warning("copied_volumes_left", id=move.id, target=move.target_host, reason="the source is gone")
        volumes = [volume for volume, _ in transfer.named_volumes(source)] if source is not None else []
        try:
            target = self._target_engine(move).client
            transfer.remove_copy_containers(target, move.id)
            in_use = [volume for volume in volumes if not _remove_if_unused(target.volumes, volume)]
        except ENGINE_ERRORS as exc:
            log.warning("copied_volumes_left", id=move.id, target=move.target_host, error=str(exc)[:300])
            return
        if in_use:
            log.warning("copied_volumes_left", id=move.id, target=move.target_host, in_use=in_use)

    def _remove_source(self, engine: Engine, move: Move) -> None:
        """Remove the source container; after a move between engines, also its named volumes
        (their data went with the task) and a CRIU move's commit image, unless still in use."""
        container = self._own_task(engine, move.task) if move.has_source else None
        if container is None:
            return
        leftovers = transfer.named_volumes(container) if self._crosses_engines(move) else []
        image = container.attrs["Config"]["Image"]
        container.remove(force=True)
        for volume, _ in leftovers:
            _remove_if_unused(engine.client.volumes, volume)
        if image.startswith(f"{COMMIT_REPOSITORY}:"):
            _remove_if_unused(engine.client.images, image)

    def _own_task(self, engine: Engine, container_id: str) -> Any | None:
        """The container, if it is a DRAGON task of this LEI; None if it is gone or is not one."""
        try:
            container = engine.client.containers.get(container_id)
        except docker.errors.NotFound:
            return None
        labels = container.labels
        if labels.get(TASK_LABEL) != "true" or labels.get(LEI_LABEL) != self.journal.lei:
            log.error("not_a_task_of_this_lei", container=container.name, id=container_id)
            return None
        return container

    # --- engines ----------------------------------------------------------------------
    def _source_engine(self, move: Move) -> Engine:
        return self.engines.of(self.journal.lei, move.source_host)

    def _source_engine_of(self, container: Any) -> Engine:
        return self.engines.of(self.journal.lei, container.labels.get(HOST_LABEL, ""))

    def _target_engine(self, move: Move) -> Engine:
        return self.engines.of(move.target_lei or self.journal.lei, move.target_host)

    def _crosses_engines(self, move: Move) -> bool:
        source = self.engines.name_of(self.journal.lei, move.source_host)
        return source != self.engines.name_of(move.target_lei or self.journal.lei, move.target_host)

    # --- after a crash --------------------------------------------------------------------
    def recover(self) -> list[Move]:
        """Complete or roll back every move in flight; returns them as they ended.

        A move that cannot be settled now (an engine out of reach) stays open, for the next try.
        """
        settled = []
        for move in self.journal.open_moves():
            try:
                settled.append(self._recover(move))
            except ENGINE_ERRORS as exc:
                log.error("move_not_recovered", id=move.id, task=move.name, error=str(exc)[:300])
        return settled

    def settle(self, move_id: str) -> Move:
        """Complete or roll back move ``move_id`` now (after an error midway); as it ended."""
        move = self.journal.get(move_id)
        if move is None:
            raise MoveError(f"move {move_id} is not in the journal")
        return move if move.step in FINAL else self._recover(move)

    def _recover(self, move: Move) -> Move:
        """A move left in flight: completed if its target was made whole and runs or can be
        started, else rolled back.

        One cut short while its target was being created is rolled back whatever Docker shows:
        the target may lack a network it was still to join, and its source never stopped for it.
        """
        if move.step in BEFORE_TARGET or move.step == Step.CREATING:
            return self._roll_back(move, f"interrupted at {move.step.value}, before the target was made")
        target = self._target_of(move)
        if target is None:
            return self._roll_back(move, f"interrupted at {move.step.value}, before the target existed")
        move = self.journal.record(move, move.step, target_id=target.id)
        try:
            self._start(target)
        except MoveError as exc:
            if move.has_source and found(self._source_engine(move).client.containers, move.task):
                return self._roll_back(move, str(exc))
            # The source went (the target had run) and the target has stopped since: it is the
            # task's only container, so it takes the task's name, as a task that stopped would.
            move = replace(move, error=f"the target stopped after the source was removed: {exc}")
        return self._finish(move)

    def sweep(self) -> list[Move]:
        """Settle the moves Docker shows in flight but the journal does not (its last writes were
        lost: Redis restarted without them), by Docker's state: a target still under its
        temporary name is removed if its task still has another container (started again if it
        had been stopped), else started and given the task's name. Each is journalled first, so
        a crash midway is recovered like any move. One that cannot be settled now (an engine out
        of reach) is left for the next sweep (the service's heartbeat sweeps again while
        :attr:`engines_unseen` is not empty). Call after :meth:`recover`. The engines that did not
        answer, or hold a move that could not be settled, are left in :attr:`engines_unseen`."""
        open_ids = {move.id for move in self.journal.open_moves()}
        settled = []
        engines, self.engines_unseen = self.engines.all_and_unreachable()
        for engine in engines:
            labels = [MOVE_LABEL, f"{MOVE_LEI_LABEL}={self.journal.lei}"]
            try:
                targets = engine.client.containers.list(all=True, filters={"label": labels})
            except ENGINE_ERRORS as exc:
                log.error("engine_unreachable", engine=engine.name, error=str(exc)[:300])
                self.engines_unseen.append(engine.name)
                continue
            for target in targets:
                move_id = target.labels[MOVE_LABEL]
                if move_id in open_ids or not in_flight(target):
                    continue
                try:
                    settled.append(self._settle_orphan(target, move_id))
                except (*ENGINE_ERRORS, MoveError) as exc:
                    log.error("orphan_not_settled", id=move_id, container=target.name, error=str(exc)[:300])
                    self.engines_unseen.append(engine.name)
        return settled

    def _settle_orphan(self, target: Any, move_id: str) -> Move:
        sources = [c for c in self.locate(task_id_of(target), strict=True) if c.id != target.id]
        labels = target.labels
        move = Move(
            move_id,
            sources[0].id if sources else target.id,
            target.name.removesuffix(temporary_name("", move_id)),
            sources[0].labels.get(HOST_LABEL, "") if sources else labels.get(HOST_LABEL, ""),
            labels.get(HOST_LABEL, ""),
            target_lei=labels.get(LEI_LABEL, ""),
            step=Step.STARTING,
            target_id=target.id,
            error="the journal had lost this move: settled by Docker's state",
            task_id=task_id_of(target),
        )
        move = self.journal.record(move, Step.STARTING)
        if sources:
            return self._roll_back(move, move.error)
        try:
            self._start(target)
        except MoveError as exc:  # the task's only container: it keeps it, stopped, as a stopped task would
            move = replace(move, error=f"{move.error}; the target does not run: {exc}")
        engine = self._target_engine(move)
        move, _ = self._step(move, Step.RENAMING, lambda: _rename(engine, target.id, move.name, move.id))
        return self.journal.record(move, Step.DONE)

    def _target_of(self, move: Move) -> Any | None:
        engine = self._target_engine(move)
        targets = engine.client.containers.list(all=True, filters={"label": f"{MOVE_LABEL}={move.id}"})
        return targets[0] if targets else None


def _remove_if_unused(collection: Any, name: str) -> bool:
    """Remove a volume or image unless something still uses it (Docker refuses: 409); False if it does."""
    try:
        collection.get(name).remove()
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 409:
            raise
        return False
    return True


def _rename(engine: Engine, container_id: str, name: str, move_id: str) -> None:
    """Give the target the task's name; if another container took it meanwhile, a name of its own
    that is not the temporary one, or the task would count as in flight, and be missed, for good."""
    target = engine.client.containers.get(container_id)
    if name in (target.name, moved_name(name, move_id)):
        return
    try:
        target.rename(name)
    except docker.errors.APIError as exc:
        if exc.status_code != 409:
            raise
        log.warning("task_name_taken", container=target.name, name=name, instead=moved_name(name, move_id))
        target.rename(moved_name(name, move_id))


def moved_name(name: str, move_id: str) -> str:
    """A moved task's name when its own was taken on the target's engine."""
    return f"{name}-moved-{move_id[:12]}"
