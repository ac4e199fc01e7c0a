"""The restart move: a task container recreated on its target host, started, and only then removed
from its source; and the recovery that completes or rolls back every move a killed migrator left.

Hosts here are emulated hosts of one Docker engine (a parent cgroup per host, as the collector
makes them): a move recreates the container under the target host's cgroup parent with the same
image, command, environment, labels (the host label updated), limits, network and volumes, so
volume data stays where it is. Reaching hosts through their own engines (tcp with TLS, ssh) and
CRIU moves are the next parts of issue 5.

Each step is written to the :class:`~dragon.migrator.journal.Journal` before it is taken.
Recovery trusts Docker's state over the journal's: a move whose target runs is completed (the
source removed, the target renamed); one whose target never ran is rolled back (the target
removed, the source started if it had been stopped). Either way the task runs exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import docker.errors
import structlog

from dragon.collector.injector import HOST_LABEL, LEI_LABEL, TASK_LABEL
from dragon.collector.probes import TASK_ID_LABEL
from dragon.migrator.journal import FINAL, Journal, Move, Step

log = structlog.get_logger(__name__)

MOVE_LABEL = "dragon.move"  # on a target container: the move that created it
START_TIMEOUT_S = 60.0


class MoveError(RuntimeError):
    """A move that cannot be carried out; the journal says why."""


def task_id_of(container: Any) -> str:
    """The task a container runs: its ``dragon.task.id`` label, else its name (as the collector reports it)."""
    return container.labels.get(TASK_ID_LABEL) or container.name


def creation_kwargs(source: Any, target_lei: str, target_host: str, cgroup_parent: str, move_id: str) -> dict[str, Any]:
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
    }
    networks = list((source.attrs.get("NetworkSettings", {}).get("Networks") or {}).keys())
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
        "volumes": host.get("Binds") or None,
        "network": networks[0] if networks and networks[0] not in {"bridge", "host", "none"} else None,
        "name": f"{source.name}-mv-{move_id[:12]}",
    }
    return {key: value for key, value in kwargs.items() if value is not None}


class RestartMover:
    """Carries out restart moves on one Docker engine and recovers the ones left in flight.

    Only containers labelled as DRAGON tasks of the journal's LEI are moved.
    ``cgroup_parent_of(lei, host)`` names a host's parent cgroup. ``after_step`` (tests) is called
    after each step's action, before the next step is journalled: raising there is a kill at
    that point.
    """

    def __init__(
        self,
        client: Any,
        journal: Journal,
        cgroup_parent_of: Callable[[str, str], str],
        after_step: Callable[[Step], None] | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.docker = client
        self.journal = journal
        self.cgroup_parent_of = cgroup_parent_of
        self.after_step = after_step or (lambda step: None)
        self.start_timeout_s = start_timeout_s

    # --- one move -------------------------------------------------------------------
    def move(self, move_id: str, task: str, target_host: str, target_lei: str = "") -> Move:
        """Move ``task`` (its task id, container name or id) to ``target_host`` of ``target_lei``
        (default: this LEI); a known ``move_id`` is a no-op that returns the move as recorded."""
        known = self.journal.get(move_id)
        if known is not None:
            log.info("move_duplicate", id=move_id, step=known.step.value)
            return known
        target_lei = target_lei or self.journal.lei
        found = self.locate(task)
        if len(found) != 1:
            error = (
                f"no task container {task!r} of LEI {self.journal.lei}"
                if not found
                else (f"task {task!r} matches {len(found)} containers: {', '.join(c.name for c in found)}")
            )
            failed = Move(move_id, task, task, "", target_host, target_lei=target_lei, step=Step.FAILED, error=error)
            self.journal.begin(failed)
            return self.journal.record(failed, Step.FAILED, error=error)
        (source,) = found
        source_host = source.labels.get(HOST_LABEL, "")
        move = Move(move_id, source.id, source.name, source_host, target_host, target_lei=target_lei)
        move = self.journal.begin(move) or self.journal.get(move_id)
        self.after_step(Step.PLANNED)
        return self._run(move, source)

    def locate(self, task: str) -> list[Any]:
        """This LEI's containers of ``task``: by task id, else by container name or id.

        A container that is not labelled as a DRAGON task of this LEI is never touched.
        """
        labels = [f"{TASK_LABEL}=true", f"{LEI_LABEL}={self.journal.lei}"]
        candidates = self.docker.containers.list(all=True, filters={"label": labels})
        by_task = [c for c in candidates if task_id_of(c) == task]
        return by_task or [c for c in candidates if c.name == task or c.id.startswith(task)]

    def _run(self, move: Move, source: Any) -> Move:
        cgroup_parent = self.cgroup_parent_of(move.target_lei, move.target_host)
        kwargs = creation_kwargs(source, move.target_lei, move.target_host, cgroup_parent, move.id)
        move, target = self._step(move, Step.CREATING, lambda: self.docker.containers.create(**kwargs))
        try:
            move, _ = self._step(move, Step.STARTING, lambda: self._start(target), target_id=target.id)
        except MoveError as exc:
            return self._roll_back(self.journal.get(move.id) or move, str(exc))
        return self._finish(move)

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
            target.start()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            target.reload()
            state = target.attrs["State"]
            if state["Status"] in {"exited", "dead"}:
                raise MoveError(f"the target container exited with code {state.get('ExitCode')}")
            health = (state.get("Health") or {}).get("Status")
            if state["Status"] == "running" and health in (None, "healthy"):
                return
            time.sleep(0.1)
        raise MoveError(f"the target container was not running and healthy within {self.start_timeout_s:.0f} s")

    def _finish(self, move: Move) -> Move:
        """The target runs: remove the source, give the target the task's name."""
        move, _ = self._step(move, Step.REMOVING_SOURCE, lambda: self._remove(move.task))
        move, _ = self._step(move, Step.RENAMING, lambda: self._rename(move.target_id, move.name))
        log.info(
            "move_done",
            id=move.id,
            task=move.name,
            source=move.source_host,
            target=move.target_host,
            steps=move.timings,
        )
        return self.journal.record(move, Step.DONE)

    def _rename(self, container_id: str, name: str) -> None:
        target = self.docker.containers.get(container_id)
        if target.name != name:
            target.rename(name)

    def _roll_back(self, move: Move, error: str) -> Move:
        """The target never ran: remove it; the task runs on its source as before."""
        if move.target_id:
            self._remove(move.target_id)
        try:
            source = self.docker.containers.get(move.task)
            if source.status != "running":
                source.start()
        except docker.errors.NotFound:
            error += "; and the source container is gone"
        log.warning("move_rolled_back", id=move.id, task=move.name, error=error)
        return self.journal.record(move, Step.ROLLED_BACK, error=error)

    def _remove(self, container_id: str) -> None:
        try:
            container = self.docker.containers.get(container_id)
        except docker.errors.NotFound:
            return
        container.remove(force=True)

    # --- after a crash --------------------------------------------------------------------
    def recover(self) -> list[Move]:
        """Complete or roll back every move in flight; returns them as they ended."""
        return [self._recover(move) for move in self.journal.open_moves() if move.step not in FINAL]

    def settle(self, move_id: str) -> Move:
        """Complete or roll back move ``move_id`` now (after an error midway); as it ended."""
        move = self.journal.get(move_id)
        if move is None:
            raise MoveError(f"move {move_id} is not in the journal")
        return move if move.step in FINAL else self._recover(move)

    def _recover(self, move: Move) -> Move:
        """A move left in flight: completed if its target runs or can be started, else rolled back."""
        target = self._target_of(move)
        if target is None:
            return self._roll_back(move, f"interrupted at {move.step.value}, before the target existed")
        move = self.journal.record(move, move.step, target_id=target.id)
        try:
            self._start(target)
        except MoveError as exc:
            if self._exists(move.task):
                return self._roll_back(move, str(exc))
            # Never reached by a move of ours (the source goes only once the target runs): left open.
            raise MoveError(f"move {move.id}: the source is gone and the target will not run: {exc}") from exc
        return self._finish(move)

    def _target_of(self, move: Move) -> Any | None:
        found = self.docker.containers.list(all=True, filters={"label": f"{MOVE_LABEL}={move.id}"})
        return found[0] if found else None

    def _exists(self, container_id: str) -> bool:
        try:
            self.docker.containers.get(container_id)
        except docker.errors.NotFound:
            return False
        return True
