"""From decisions to migration commands: the moves of this LEI's tasks, signed, one per task at a time.

The planner decides every interval while a host is faulty, and until the move has happened
its decisions name the same moves again. A task is therefore commanded again only once its
last command was answered (an event from the migrator) or went unanswered for
``pending_timeout_s``, and not within ``cooldown_s`` of the last answer about it: a task must not
shuttle between hosts faster than its samples can show where it landed, and a move that failed
(rolled back: the task ran on, perhaps restarted) is not retried at once.

The answers only tell about this planner's own commands. A task another LEI's planner moved here,
or one this planner moved before it restarted, rests too: :class:`Arrivals` knows when each task
came to the host it runs on from the LEIs' schedules. The planner's search leaves resting and
pending tasks where they are (it would otherwise keep choosing a move that is never commanded,
and give the faulty host no relief for the whole cooldown).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from dragon.messages.schemas import MigrationCommand, MigrationEvent, PlanDecision
from dragon.migrator.commands import sign


@dataclass(frozen=True)
class Issued:
    command_id: str
    ts: float
    source: tuple[str, str]  # (lei, host) the decision moved the task from
    target: tuple[str, str]  # (lei, host) the command sends the task to


class CommandIssuer:
    """Signed commands for the moves of ``lei``'s tasks, and what is still pending."""

    def __init__(self, lei: str, issuer: str, key: bytes, pending_timeout_s: float, cooldown_s: float) -> None:
        self.lei = lei
        self.issuer = issuer
        self.key = key
        self.pending_timeout_s = pending_timeout_s
        self.cooldown_s = cooldown_s
        self._pending: dict[str, Issued] = {}  # task -> its unanswered command
        self._rests_since: dict[str, float] = {}  # task -> when the migrator last answered about it
        self._lock = threading.Lock()  # events arrive on the MQTT worker, decisions on the main thread

    def commands_for(self, decision: PlanDecision, now: float) -> list[MigrationCommand]:
        """Commands for the moves of ``decision`` that start in this LEI and whose task is free."""
        commands = []
        with self._lock:
            for index, move in enumerate(decision.moves):
                if move.source_lei != self.lei or self._busy(move.task, now):
                    continue
                command = MigrationCommand(
                    id=f"{decision.id[:48]}-{index}",
                    lei=self.lei,
                    task=move.task,
                    target_lei=move.target_lei,
                    target_host=move.target_host,
                    ts=now,
                    issuer=self.issuer,
                )
                commands.append(sign(command, self.key))
                source, target = (move.source_lei, move.source_host), (move.target_lei, move.target_host)
                self._pending[move.task] = Issued(command.id, now, source, target)
        return commands

    def settle(self, event: MigrationEvent, now: float | None = None) -> bool:
        """Take the migrator's answer in; True if it answered our pending command.

        Any answer about a task starts its rest, even one to a command we had given up on (a
        late ``done``: the task has moved, whatever we sent since); at its time, or ``now`` if
        that is earlier: an answer stamped ahead (a migrator's clock) must not rest the task for
        longer than the cooldown.
        """
        now = time.time() if now is None else now
        with self._lock:
            rest_from = min(event.ts, now)
            self._rests_since[event.task] = max(rest_from, self._rests_since.get(event.task, 0.0))
            pending = self._pending.get(event.task)
            if pending is None or pending.command_id != event.id:
                return False
            del self._pending[event.task]
            return True

    def pending(self) -> dict[str, str]:
        """Task -> id of its unanswered command."""
        with self._lock:
            return {task: issued.command_id for task, issued in self._pending.items()}

    def under_way(self, now: float) -> dict[str, Issued]:
        """Task -> its command, unanswered and not given up on."""
        with self._lock:
            return {task: issued for task, issued in self._pending.items() if now - issued.ts < self.pending_timeout_s}

    def forget(self, now: float) -> None:
        """Drop what no longer holds a task back: rests over, commands given up on."""
        with self._lock:
            self._pending = {t: c for t, c in self._pending.items() if now - c.ts < self.pending_timeout_s}
            self._rests_since = {t: at for t, at in self._rests_since.items() if now - at < self.cooldown_s}

    def busy_tasks(self, now: float) -> set[str]:
        """The tasks not to be commanded now: a command pending, or resting after an answer."""
        with self._lock:
            return {task for task in self._pending.keys() | self._rests_since.keys() if self._busy(task, now)}

    def _busy(self, task: str, now: float) -> bool:
        pending = self._pending.get(task)
        if pending is not None and now - pending.ts < self.pending_timeout_s:
            return True
        return now - self._rests_since.get(task, -float("inf")) < self.cooldown_s


class Arrivals:
    """When each task came to the host it runs on now, as far as this planner can tell.

    From the LEIs' schedules (every move republishes one at once): a task seen to change hosts
    arrived when this planner saw it, on its own clock; one seen for the first time (at start-up,
    or from a peer LEI newly heard) arrived when its schedule says its container started there,
    but not later than now, so a migrator's clock ahead of ours cannot make it rest for longer
    than the cooldown.
    """

    def __init__(self) -> None:
        self._arrived: dict[str, tuple[tuple[str, str], float]] = {}  # task -> (its host, when it came)
        self._listed_at: dict[str, float] = {}  # task -> when a schedule last listed it

    def note(self, scheduled: Mapping[str, tuple[tuple[str, str], float]], now: float, keep_s: float = 0.0) -> None:
        """Take the schedules' placements in (task -> ((lei, host), since)). A task no schedule lists
        is remembered for ``keep_s`` (the cooldown), then forgotten: one moved to another LEI is
        in no schedule until that LEI's migrator lists it (seconds later), and seen there "for the
        first time" it rested from its container's start, on that machine's clock, which can be
        long before now (a container slow to become healthy, a clock behind)."""
        arrived = {}
        for task, (host, since) in scheduled.items():
            known = self._arrived.get(task)
            if known is None:
                arrived[task] = (host, min(since, now))
            else:
                arrived[task] = known if known[0] == host else (host, now)
            self._listed_at[task] = now
        for task, known in self._arrived.items():
            if task not in arrived and now - self._listed_at.get(task, now) < keep_s:
                arrived[task] = known
        self._arrived = arrived
        self._listed_at = {task: at for task, at in self._listed_at.items() if task in arrived}

    def within(self, seconds: float, now: float) -> set[str]:
        """The tasks that came to their host less than ``seconds`` before ``now``."""
        return {task for task, (_, at) in self._arrived.items() if now - at < seconds}
