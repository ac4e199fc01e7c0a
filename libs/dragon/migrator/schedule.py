"""The LEI's schedule S_t as Docker sees it: which task runs on which host, since when."""

from __future__ import annotations

from typing import Any

from dragon.collector.docker_api import HOST_LABEL, LEI_LABEL, TASK_LABEL, reportable
from dragon.collector.probes import started_at
from dragon.messages.schemas import Schedule, TaskPlacement
from dragon.migrator.moves import in_flight, task_id_of


def current_schedule(clients: list[Any], lei: str, now: float, migrator: str = "") -> Schedule:
    """Every running DRAGON task container of ``lei`` on the engines of ``clients``, with its host, by task."""
    labels = [f"{TASK_LABEL}=true", f"{LEI_LABEL}={lei}"]
    placements = [
        TaskPlacement(
            task=task_id_of(container),
            container=container.id[:12],
            host=container.labels.get(HOST_LABEL, ""),
            since=started_at(container.attrs["State"].get("StartedAt", "")),
        )
        for client in clients
        # A container removed between the list and its inspection (a move, a user) is simply gone,
        # not an engine failure that would hold the schedule back until the next interval.
        for container in client.containers.list(filters={"label": labels, "status": "running"}, ignore_removed=True)
        # While a move runs, the task is still where its source is; a task whose id no message may
        # carry is left out, as the collector leaves it out of its host's samples.
        if not in_flight(container) and reportable(task_id_of(container))
    ]
    return Schedule(lei=lei, ts=now, tasks=tuple(sorted(placements, key=lambda p: p.task)), migrator=migrator)
