"""The LEI's schedule S_t as Docker sees it: which task runs on which host, since when."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dragon.collector.injector import HOST_LABEL, LEI_LABEL, TASK_LABEL
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
        if not in_flight(container)  # while a move runs, the task is still where its source is
    ]
    return Schedule(lei=lei, ts=now, tasks=tuple(sorted(placements, key=lambda p: p.task)), migrator=migrator)


def started_at(text: str) -> float:
    """Docker's RFC 3339 time with nanoseconds (``2026-12-02T17:11:52.123456789Z``) as epoch seconds."""
    if not text or text.startswith("0001-"):
        return 0.0
    stamp, _, fraction = text.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(stamp + "+00:00").timestamp()
    return seconds + (float(f"0.{fraction}") if fraction else 0.0)
