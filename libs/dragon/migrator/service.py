"""The migrator service: carries out this LEI's signed migration commands on real containers.

Commands arrive on ``dragon/<lei>/migrations/commands`` (the broker lets only the planner
publish there); each is checked (signature, LEI, age, id not seen before, task not moving
already, target host known) and carried out as a journalled restart move (CRIU where the
engine can; the probe at start-up says whether it can). Every command gets an event on
``dragon/<lei>/migrations/events`` (one that comes again, the same answer again), and after
every move the schedule ``dragon/<lei>/tasks`` (retained) is republished, so the planner and
the simulator see the new S_t at once.

Moves run one at a time on the MQTT worker thread, and a command is acknowledged only once its
move has ended: a migrator killed mid-move gets the command again after restart, by which time
the recovery of the moves in flight (before it takes any command) has finished that move, so
the command is answered again with how its move ended, and the task runs exactly once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

import docker
import redis
import structlog

from dragon.messages import topics
from dragon.messages.schema import clip
from dragon.messages.schemas import MigrationCommand, MigrationEvent, StepDuration, TaskPlacement
from dragon.migrator import criu
from dragon.migrator.commands import CommandRefused, verify_authentic, verify_fresh
from dragon.migrator.config import MigratorConfig, parse_endpoints
from dragon.migrator.engines import Engines
from dragon.migrator.journal import FINAL, Journal, Move, Step
from dragon.migrator.moves import ENGINE_ERRORS, MoveError, Mover, TaskBusy, TaskMovedSince
from dragon.migrator.schedule import current_schedule
from dragon.migrator.transfer import TransferError
from dragon.mqtt import Counters, Incoming, MqttClient
from dragon.service.lifecycle import Lifecycle
from dragon.store import StopRequested, connect, retry_until, unavailable_for_now

log = structlog.get_logger(__name__)

SERVICE = "migrator"
HEARTBEAT_S = 5.0
# Refusals of commands nobody authorised are logged and counted, not answered.
UNAUTHENTICATED = frozenset({"unsigned", "bad_signature"})
OUTCOME_OF_STEP = {Step.DONE: "done", Step.ROLLED_BACK: "rolled_back", Step.FAILED: "failed"}


MAX_SWEEP_WAIT_S = 600.0  # the longest an owed sweep waits between two tries


class Migrator:
    def __init__(self, config: MigratorConfig) -> None:
        self.config = config
        self.lei = config.common.service.lei
        self.instance = config.common.service.instance_id
        self.lifecycle = Lifecycle(config.common.service.health_file)
        self.counters = Counters()
        # Moves (MQTT worker) and schedule refreshes and settling (main thread) share the Docker client.
        self._docker_lock = threading.Lock()
        # Moves cut short (Redis or an engine away): id -> their command (None: found at start-up).
        self._interrupted: dict[str, MigrationCommand | None] = {}
        self._published_tasks: tuple[TaskPlacement, ...] | None = None  # the schedule last published, to spot changes
        self._engines_answered = True  # did the last look at the engines work? If not, look only when due
        self._settle_again_at = 0.0  # monotonic: an engine out of reach is asked again only after an interval
        self._sweep_owed = False  # the last sweep could not look everywhere: the heartbeat sweeps again
        self._sweep_wait_s = 0.0  # how long the owed sweep waits now: doubled at each try, to MAX_SWEEP_WAIT_S
        self._sweep_again_at = 0.0  # monotonic: when the owed sweep is tried again

    # --- lifecycle --------------------------------------------------------------
    def run(self) -> None:
        self.lifecycle.install_signal_handlers()
        self.init_redis()
        self.init_docker()
        try:
            recovered = self.recover_moves()
        except StopRequested:  # stopped while Redis was away: nothing was started yet
            return
        self.init_mqtt()
        self.start_mqtt(recovered)
        try:
            self.beat_until_stopped()
        finally:
            self.shutdown()

    def init_redis(self) -> None:
        self.redis = connect(self.config.redis)
        self.journal = Journal(self.redis, self.lei)

    def init_docker(self) -> None:
        self.docker = docker.from_env()
        endpoints = parse_endpoints(self.config.endpoints, self.lei)
        self.engines = Engines(self.docker, self.config.cgroup_root, endpoints, self.config.tls_dir)
        self.criu = criu.probe(self.docker, self.config.probe_image, enabled=self.config.criu == "auto")
        log.info("criu_probed", available=self.criu.available, reason=self.criu.reason)
        self.mover = Mover(
            self.engines,
            self.journal,
            start_timeout_s=self.config.start_timeout_s,
            criu=self.criu,
            docker_root=self.config.docker_root,
        )

    def recover_moves(self) -> list[Move]:
        """Finish every move a previous migrator left in flight, before any new command is taken:
        those in the journal, then those only Docker still shows (the journal lost them)."""
        moves = retry_until(lambda: self.mover.recover() + self._sweep(), self.lifecycle.stop, "recover_moves")
        for move in moves:
            log.info("move_recovered", id=move.id, task=move.name, step=move.step.value, error=move.error or None)
        # Those an engine out of reach left open, and what the sweep could not see or settle there:
        # the heartbeat settles them once it answers.
        unsettled = retry_until(self.journal.open_moves, self.lifecycle.stop, "recover_moves")
        self._interrupted.update({move.id: None for move in unsettled})  # their events name the task by its id
        return moves

    def init_mqtt(self) -> None:
        self.mqtt = MqttClient(self.config.common.mqtt, SERVICE, self.instance, self.counters)
        self.mqtt.advertise(self.criu.capabilities())
        self.mqtt.subscribe(topics.migration_commands(self.lei), self.on_command, qos=1)
        self.mqtt.on_connected(self.publish_schedule)

    def start_mqtt(self, recovered: list[Move]) -> None:
        self.mqtt.start()
        for move in recovered:  # queued by paho until the connection is up
            self.publish_event(self.event_of(move, recovered=True))
        log.info(
            "migrator_started", lei=self.lei, commands=topics.migration_commands(self.lei), criu=self.criu.available
        )

    def beat_until_stopped(self) -> None:
        next_schedule = time.monotonic() + self.config.schedule_interval_s
        while not self.lifecycle.stop.wait(HEARTBEAT_S):
            redis_ok = self.redis_reachable()
            self.lifecycle.healthy(self.mqtt.connected and redis_ok)
            if redis_ok:
                self.settle_if_due()
            # Every beat looks at Docker, so tasks others start or stop show within seconds; the
            # interval republishes an unchanged schedule too, for tools that missed the retained one.
            # After a failed look (an engine out of reach can take the SDK's timeout to say so, all
            # under the Docker lock) only the interval looks again, so commands do not wait behind it.
            due = time.monotonic() >= next_schedule
            if due:
                next_schedule = time.monotonic() + self.config.schedule_interval_s
            if due or self._engines_answered:
                self.publish_schedule(wait=False, changed_only=not due)

    def redis_reachable(self) -> bool:
        try:
            return bool(self.redis.ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False

    def shutdown(self) -> None:
        self.lifecycle.clear()
        self.mqtt.stop()
        self.engines.close()
        self.docker.close()
        self.redis.close()
        log.info("migrator_stopped", counters=self.counters.snapshot())

    # --- commands ---------------------------------------------------------------------
    def on_command(self, incoming: Incoming) -> None:
        self.counters.add("commands")
        command = self.mqtt.decode_or_drop(MigrationCommand, incoming)
        if command is None:
            return
        # No journal (Redis away, or refusing writes), no move. The command is acknowledged all the
        # same: left unacknowledged, it would come again only after a reconnect, stale by then, and
        # hold one of the broker's in-flight slots until then; enough of them over a long outage
        # and the broker sends us nothing more.
        try:
            ended = self.check(command, time.time())
        except CommandRefused as exc:
            self.refuse(command, exc)
            return
        except redis.RedisError as exc:
            self._note_journal_unavailable(command, exc)
            self.refuse(command, CommandRefused("journal_unavailable", f"no journal to record a move in: {exc}"))
            return
        if ended is not None:
            self.answer_again(command, ended)
            return
        try:
            move = self.carry_out(command)
        except CommandRefused as exc:
            self.refuse(command, exc)
            return
        except redis.RedisError as exc:
            # It may have begun: settled, and its event published, as soon as Redis answers again.
            self._note_journal_unavailable(command, exc)
            with self._docker_lock:
                self._interrupted[command.id] = command
            return
        if move is not None:
            self.publish_event(self.event_of(move, task=command.task))
        self.publish_schedule()

    def _note_journal_unavailable(self, command: MigrationCommand, exc: redis.RedisError) -> None:
        if not unavailable_for_now(exc):
            raise exc
        self.counters.add("journal_unavailable")
        log.error("journal_unavailable", id=command.id, error=str(exc))

    def settle_if_due(self) -> None:
        """From the heartbeat: settle what is left (:meth:`settle_interrupted`), unless an engine
        out of reach was asked less than an interval ago."""
        now = time.monotonic()
        sweep_due = self._sweep_owed and now >= self._sweep_again_at
        if (self._interrupted or sweep_due) and now >= self._settle_again_at:
            self.settle_interrupted()

    def settle_interrupted(self) -> None:
        """Moves cut short by Redis going away or an engine out of reach, and the sweep owed since
        one was (:meth:`_sweep`): completed or rolled back now that they answer.

        From the heartbeat: while a move runs (it may take minutes: an image copied to another
        machine) this beat skips, rather than wait and leave the health marker untouched.
        """
        if not self._docker_lock.acquire(blocking=False):
            return
        try:
            self._settle_interrupted()
        finally:
            self._docker_lock.release()

    def _settle_interrupted(self) -> None:
        try:
            self._settle_commands()
            # Only once no command is left: a sweep settling a command's move before the command
            # is looked at would leave that command to be answered as never begun.
            if self._sweep_owed and not self._interrupted and time.monotonic() >= self._sweep_again_at:
                self._publish_recovered([(move, "") for move in self._sweep()])
        except redis.RedisError as exc:
            if not unavailable_for_now(exc):
                raise
            # Redis away again, or refusing writes: the next beat tries again

    def _settle_commands(self) -> None:
        # One sweep for the whole pass: a Redis outage can leave many commands the journal does not
        # know, and each sweep may wait the SDK's timeout on an engine out of reach, under the lock.
        # Not held back like the owed sweep (an engine off for good): commands wait for it, and the
        # planner gives up on one after DRAGON_PLANNER_COMMAND_TIMEOUT; passes come an interval apart.
        sweep = _OneSweep(self._sweep)
        for move_id, command in sorted(self._interrupted.items()):
            if sweep.found(move_id):  # settled by this pass's sweep, and its event sent: not again
                del self._interrupted[move_id]
                continue
            try:
                moves = self._settle_one(move_id, command, sweep)
            except ENGINE_ERRORS as exc:
                log.warning("move_not_settled_yet", id=move_id, error=str(exc)[:300])
                # Out of reach can take the SDK's timeout to say, under the Docker lock: not every beat.
                self._settle_again_at = time.monotonic() + self.config.schedule_interval_s
                continue  # the others go on
            self._publish_recovered(moves)
            if command is not None and move_id not in {move.id for move, _ in moves}:
                if self.mover.engines_unseen:  # its target may be on one of them: the owed sweep looks again
                    log.warning("move_not_settled_yet", id=move_id, engines_unseen=self.mover.engines_unseen)
                    continue
                # Redis went away before the move's first step was journalled, and Docker shows
                # nothing of it: it never began. Said, so the planner need not wait out its timeout.
                never_began = "Redis went away as the move began; neither the journal nor Docker shows any of it"
                self.refuse(command, CommandRefused("journal_unavailable", never_began))
            del self._interrupted[move_id]

    def _settle_one(self, move_id: str, command: MigrationCommand | None, sweep: _OneSweep) -> list[tuple[Move, str]]:
        """The move settled, with the task as commanded; or, when the journal does not know it
        (never begun, or Redis came back without it), whatever Docker shows in flight: the pass's
        sweep, whose moves come with the first command that asks for it."""
        try:
            return [(self.mover.settle(move_id), command.task if command is not None else "")]
        except MoveError:
            pass
        return [(move, "") for move in sweep.moves()]

    def _sweep(self) -> list[Move]:
        """The mover's sweep. One that could not look at every engine, or settle every move it
        found there (an engine out of reach), is owed: the heartbeat sweeps again until one
        completes, an interval later, then twice as long after each try, up to MAX_SWEEP_WAIT_S:
        a machine that is off (a peer's, configured for moves across LEIs) would have held the
        Docker lock for the SDK's timeout at every interval. Said once, not at every try."""
        moves = self.mover.sweep()
        # A move the sweep journalled (open) and could not finish (an engine error midway): the
        # next sweep skips open moves, so the heartbeat settles it as it does any interrupted one.
        # Every caller holds the Docker lock or runs before commands are taken: none is under way.
        left_open = [move.id for move in self.journal.open_moves() if move.id not in self._interrupted]
        self._interrupted.update(dict.fromkeys(left_open))
        owed = bool(self.mover.engines_unseen) or bool(left_open)
        if owed:
            # Out of reach can take the SDK's timeout to say, under the Docker lock: not every beat.
            self._settle_again_at = time.monotonic() + self.config.schedule_interval_s
            self._sweep_wait_s = min(max(2 * self._sweep_wait_s, self.config.schedule_interval_s), MAX_SWEEP_WAIT_S)
            self._sweep_again_at = time.monotonic() + self._sweep_wait_s
            if not self._sweep_owed:
                log.warning("sweep_owed", engines_unseen=self.mover.engines_unseen)
        else:
            self._sweep_wait_s = 0.0
            if self._sweep_owed:
                log.info("sweep_completed", settled=len(moves))
        self._sweep_owed = owed
        return moves

    def _publish_recovered(self, moves: list[tuple[Move, str]]) -> None:
        """The events of moves settled after they were cut short, each with its task as commanded (or "")."""
        for move, named in moves:
            self.publish_event(self.event_of(move, task=named, recovered=True))

    def check(self, command: MigrationCommand, now: float) -> Move | None:
        """Raise CommandRefused unless ``command`` may be carried out now; its move if it ended
        already (the command came again: it is answered again, not carried out)."""
        verify_authentic(command, self.config.commands.key_bytes, self.lei)
        try:
            known = self.journal.get(command.id)
        except redis.RedisError:
            verify_fresh(command, now, self.config.commands.max_age_s)  # stale is stale, journal or not
            raise
        # Before its age is checked: the broker redelivers a command its killed migrator never
        # acknowledged, often older than the age allowed after a long move and a restart.
        if known is not None and known.step in FINAL:
            return known
        if known is not None:
            under_way = f"command {command.id} was taken already (its move is {known.step.value})"
            raise CommandRefused("duplicate", under_way)
        verify_fresh(command, now, self.config.commands.max_age_s)
        if not self.engines.exists(command.target_lei, command.target_host):
            raise CommandRefused("unknown_host", f"no host {command.target_lei}/{command.target_host} is reachable")

    def carry_out(self, command: MigrationCommand) -> Move | None:
        """The journalled move; one an engine error cut short is settled at once (completed or
        rolled back), or, with the engine out of reach, as soon as it answers (None for now)."""
        with self._docker_lock:
            try:
                move = self.mover.move(
                    command.id, command.task, command.target_host, command.target_lei, issued_at=command.ts
                )
            except TaskBusy as exc:
                raise CommandRefused("busy", str(exc)) from exc
            except TaskMovedSince as exc:
                raise CommandRefused("superseded", str(exc)) from exc
            except (*ENGINE_ERRORS, MoveError, TransferError) as exc:
                self.counters.add("move_errors")
                log.error("move_interrupted", id=command.id, task=command.task, error=str(exc)[:300])
                cause = str(exc)
            else:
                if move.step not in FINAL:
                    # Journalled since it was checked (the heartbeat's sweep found its target, and an
                    # engine error left it open): settled, and answered, as any interrupted move.
                    self._interrupted[command.id] = command
                    return None
                return move
            try:
                return self.mover.settle(command.id)
            except MoveError:  # not journalled: it failed before it began (say, checking the target's volumes)
                failed = Move(command.id, command.task, command.task, "", command.target_host, command.target_lei)
                return replace(failed, step=Step.FAILED, error=f"the move could not begin: {cause}")
            except ENGINE_ERRORS as exc:
                log.error("move_not_settled", id=command.id, error=str(exc)[:300])
                self._interrupted[command.id] = command
                return None

    def answer_again(self, command: MigrationCommand, move: Move) -> None:
        """A command whose move ended comes again (the broker redelivers one a migrator killed
        before its answer never acknowledged): the move's own event again, not a refusal, so the
        planner hears how it ended even when the first answer was never sent."""
        self.counters.add("answered_again")
        log.info("command_answered_again", id=command.id, task=command.task, step=move.step.value)
        # Stamped when the move ended, not now: the planner rests a task from an answer's stamp,
        # and a command redelivered an hour on must not rest its task again from now.
        self.publish_event(replace(self.event_of(move, task=command.task), ts=move.updated or time.time()), again=True)

    def refuse(self, command: MigrationCommand, refusal: CommandRefused) -> None:
        self.counters.add(f"refused_{refusal.reason}")
        log.warning("command_refused", id=command.id, task=command.task, reason=refusal.reason, error=str(refusal))
        if refusal.reason in UNAUTHENTICATED:
            # No event: its id and task are whatever the sender chose, and the planner takes an
            # event about a task as the answer to its own command, resting that task.
            return
        self.publish_event(
            MigrationEvent(
                id=command.id,
                lei=self.lei,
                task=command.task,
                outcome="refused",
                ts=time.time(),
                target_lei=command.target_lei,
                target_host=command.target_host,
                reason=refusal.reason,
                error=clip(str(refusal)),
                migrator=self.instance,
            )
        )

    # --- what we say ----------------------------------------------------------------
    def event_of(self, move: Move, task: str = "", recovered: bool = False) -> MigrationEvent:
        """The event of a move that ended; ``task`` as the command named it (default: the task's
        id, which the planner's commands use, else the container's name)."""
        steps = tuple(StepDuration(step, seconds) for step, seconds in move.timings)
        return MigrationEvent(
            id=move.id,
            lei=self.lei,
            task=task or move.task_id or move.name,
            outcome=OUTCOME_OF_STEP.get(move.step, "failed"),
            ts=time.time(),
            source_host=move.source_host,
            target_lei=move.target_lei,
            target_host=move.target_host,
            mode=move.mode,
            mode_reason=clip(move.mode_reason),
            reason="" if move.step == Step.DONE else move.step.value,
            error=clip(move.error),
            steps=steps,
            total_s=round(sum(s.seconds for s in steps), 4),
            recovered=recovered,
            migrator=self.instance,
        )

    def publish_event(self, event: MigrationEvent, again: bool = False) -> None:
        """Publish ``event``; counted as a move's outcome unless it is an answer given ``again``."""
        if not again:
            self.counters.add(f"moves_{event.outcome}")
        self.mqtt.publish_message(topics.migration_events(self.lei), event, qos=1)

    def publish_schedule(self, wait: bool = True, changed_only: bool = False) -> None:
        """Republish the schedule (with ``changed_only``, only if its tasks differ from the last one
        published); without ``wait`` (the heartbeat), not while a move runs: the move republishes
        it when it ends."""
        if not self._docker_lock.acquire(blocking=wait):
            return
        try:
            # Strict: with one of the LEI's engines out of reach a schedule would show its tasks gone.
            clients = [engine.client for engine in self.engines.of_lei(self.lei, strict=True)]
            schedule = current_schedule(clients, self.lei, time.time(), self.instance)
            self._engines_answered = True
            if changed_only and schedule.tasks == self._published_tasks:
                return
            # Under the lock, so two threads cannot publish their schedules in the wrong order.
            self.mqtt.publish_message(topics.schedule(self.lei), schedule, qos=1, retain=True)
            self._published_tasks = schedule.tasks
        except ENGINE_ERRORS as exc:
            self._engines_answered = False
            self.counters.add("schedule_errors")
            log.warning("schedule_unavailable", error=str(exc))
        finally:
            self._docker_lock.release()


class _OneSweep:
    """At most one sweep in a settling pass, however many commands ask for it: the first ask is
    given the moves it settled (to publish), the later ones none (already published);
    :meth:`found` says whether it settled a move. (The mover's sweep takes an engine's errors in
    itself: one out of reach is left in ``engines_unseen``.)"""

    def __init__(self, sweep: Callable[[], list[Move]]) -> None:
        self._sweep = sweep
        self._found: set[str] | None = None

    def moves(self) -> list[Move]:
        if self._found is not None:
            return []
        moves = self._sweep()
        self._found = {move.id for move in moves}
        return moves

    def found(self, move_id: str) -> bool:
        return self._found is not None and move_id in self._found
