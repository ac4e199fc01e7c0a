"""The planner service: fictitious play across brokers (DRAGON Alg. 2 and 3).

Every broker runs one. It keeps W^M_t, the state of the whole federation, from the host samples
its broker carries (its own LEI's, and the other LEIs' through the Mosquitto bridges), the
detectors' verdicts from the retained health topics, and the other brokers' latest decisions.
While a host of its own LEI is faulty it decides, every ``DRAGON_PLANNER_INTERVAL``, the
preemptive migrations of the whole federation by simulated annealing on the co-simulator's
fitness, in process (thousands of evaluations per decision cannot each cross MQTT), and
publishes the decision on ``dragon/fed/<lei>/decision``.

Fictitious play: the decision is its best response to the other brokers' play. The moves of its
own LEI's tasks are searched; every other LEI's tasks move as their broker's latest decision
(at most ``DRAGON_PLANNER_HEALTH_MAX_AGE`` old) moves them, or stay. Each broker carries out only
its own LEI's moves, so the moves carried out are the ones its decision scored with the others'
(before, every broker annealed every LEI's tasks with its own random draws, and two brokers
could send their tasks to the same spare host, each having planned the other's elsewhere). With
the migration key, the planner sends its moves to its migrator as signed commands
(:mod:`dragon.planner.commanding`) and follows the migrator's events and the schedule it
republishes after every move.

A broker that has heard from no peer LEI for ``DRAGON_SIM_STALE_INTERVALS`` intervals is cut
off: it plans for its own LEI alone, moving tasks between its own hosts, and says so
(``isolated``, ``stale_leis``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import structlog

from dragon.lateness import FORGET_AFTER_S
from dragon.logs import EveryInterval
from dragon.messages import topics
from dragon.messages.codec import DecodeError
from dragon.messages.schemas import HostHealth, MigrationEvent, PlanDecision
from dragon.mqtt import Counters, Incoming, MqttClient
from dragon.planner.annealing import AnnealingConfig, anneal, groups_of
from dragon.planner.commanding import Arrivals, CommandIssuer
from dragon.planner.config import PlannerConfig
from dragon.planner.decisions import PlanContext, decision_message
from dragon.planner.lookahead import look_ahead
from dragon.service.lifecycle import Lifecycle
from dragon.sim.twin import UNPLACED
from dragon.simulator.view import Snapshot, co_simulator, follow_samples, follow_schedules, view_from

log = structlog.get_logger(__name__)

SERVICE = "planner"


class Planner:
    def __init__(self, config: PlannerConfig) -> None:
        self.config = config
        self.lei = config.common.service.lei
        self.instance = config.common.service.instance_id
        self.lifecycle = Lifecycle(config.common.service.health_file)
        self.counters = Counters()
        self.view = view_from(config.cosim)
        self.health: dict[tuple[str, str, str], HostHealth] = {}  # (lei, host, mode) -> newest verdict
        self._heard_at: dict[tuple[str, str, str], float] = {}  # when each came (see _age)
        self.peer_decisions: dict[str, PlanDecision] = {}  # other LEI -> its broker's newest decision
        # other LEI -> when (our clock) its decision kept arrived; None: retained, aged by its stamp
        self._decision_arrived: dict[str, float | None] = {}
        # other LEI -> its planner instances heard within FORGET_AFTER_S -> when last
        self._peer_planners: dict[str, dict[str, float]] = {}
        self.clock: Callable[[], float] = time.time  # what arrivals are timed on
        # Verdicts and decisions arrive on the MQTT worker, plans run on the main thread.
        self._health_lock = threading.Lock()
        self.annealing = AnnealingConfig(chains=config.chains, steps=config.steps)
        self.arrivals = Arrivals()
        # A stale schedule (the migrator publishes none while a machine is out of reach) holds the
        # same tasks back at every decision: said once a minute, not every interval.
        self._misplaced_lines = EveryInterval(60.0)
        self.issuer = (
            CommandIssuer(
                self.lei, self.instance, config.commands.key_bytes, config.command_timeout_s, config.move_cooldown_s
            )
            if config.commands.key
            else None
        )

    # --- lifecycle --------------------------------------------------------------
    def run(self) -> None:
        self.lifecycle.install_signal_handlers()
        self.init_mqtt()
        self.start_mqtt()
        try:
            self.plan_until_stopped()
        finally:
            self.shutdown()

    def init_mqtt(self) -> None:
        self.mqtt = MqttClient(self.config.common.mqtt, SERVICE, self.instance, self.counters)
        follow_samples(self.mqtt, self.view)
        follow_schedules(self.mqtt, self.view)
        self.mqtt.subscribe(topics.all_host_health(), self.on_health, qos=1)
        self.mqtt.subscribe(topics.fed_decision("+"), self.on_peer_decision, qos=1)
        self.mqtt.subscribe(topics.migration_events(self.lei), self.on_migration_event, qos=1)

    def start_mqtt(self) -> None:
        self.mqtt.start()
        log.info(
            "planner_started",
            lei=self.lei,
            mode=self.config.mode,
            look_ahead=self.config.look_ahead,
            commands=self.issuer is not None,
        )

    def plan_until_stopped(self) -> None:
        while not self.lifecycle.stop.wait(self.config.interval_s):
            self.lifecycle.healthy(self.mqtt.connected)
            try:
                self.plan_once(time.time())
            except Exception:
                # A bad state must not stop the planner: the next interval tries again.
                self.counters.add("plan_errors")
                log.exception("plan_failed")

    def shutdown(self) -> None:
        self.lifecycle.clear()
        self.mqtt.stop()
        log.info("planner_stopped", counters=self.counters.snapshot())

    # --- what the broker carries ---------------------------------------------------
    def on_health(self, incoming: Incoming) -> None:
        verdict = self.mqtt.decode_or_drop(HostHealth, incoming)
        if verdict is None:
            return
        if incoming.topic != topics.host_health(verdict.lei, verdict.host, verdict.mode):
            # Filed under the topic's host and mode or not at all: a verdict must not pose as another's.
            self.mqtt.drop(incoming, DecodeError("schema", "the verdict's lei, host or mode does not match its topic"))
            return
        # The detector takes samples up to 3 intervals ahead (a collector's clock), so their verdicts
        # too; further ahead, a normal verdict would hide the host's real ones, an alarm stay fresh.
        if self.mqtt.dropped_if_ahead(incoming, verdict.ts, self.view.interval_of(verdict.lei, verdict.host)):
            return
        key = (verdict.lei, verdict.host, verdict.mode)
        with self._health_lock:
            known = self.health.get(key)
            if known is None or verdict.ts >= known.ts:  # a redelivered older verdict must not win
                self.health[key] = verdict
                self._heard_at[key] = time.time()

    def on_peer_decision(self, incoming: Incoming) -> None:
        decision = self.mqtt.decode_or_drop(PlanDecision, incoming)
        if decision is None:
            return
        if incoming.topic != topics.fed_decision(decision.lei):
            # Before the check for our own: a decision claiming our LEI on a peer's topic went unnoticed.
            self.mqtt.drop(incoming, DecodeError("schema", "the decision's lei does not match its topic"))
            return
        if decision.lei == self.lei:
            return  # our own, come back from the broker
        if self.mqtt.dropped_if_ahead(incoming, decision.ts, self.config.interval_s):
            return
        arrived = None if incoming.retain else self.clock()
        with self._health_lock:
            if self._takes_peer_decision(decision, arrived):
                self.peer_decisions[decision.lei] = decision
                self._decision_arrived[decision.lei] = arrived

    def _takes_peer_decision(self, decision: PlanDecision, arrived: float | None) -> bool:
        """Whether a peer's decision replaces the one kept: newer by its stamp from the same planner
        instance, or from an instance not heard from that LEI before (a peer planner restarted on
        a machine whose clock may be behind its predecessor's, whatever the stamps say); not one
        from an instance heard before (within FORGET_AFTER_S: a late redelivery of the one
        replaced), nor a retained one over one that arrived live."""
        heard = self._peer_planners.setdefault(decision.lei, {})
        new_instance = decision.planner not in heard
        heard[decision.planner] = self.clock() if arrived is None else arrived
        known = self.peer_decisions.get(decision.lei)
        if known is None:
            return True
        if arrived is None and self._decision_arrived.get(decision.lei) is not None:
            return False
        if decision.planner == known.planner:
            return decision.ts >= known.ts
        return new_instance  # one heard before is a late redelivery: taken once the kept one ages out

    def on_migration_event(self, incoming: Incoming) -> None:
        event = self.mqtt.decode_or_drop(MigrationEvent, incoming)
        if event is None:
            return
        if self.issuer is not None and self.issuer.settle(event, time.time()):
            self.counters.add(f"commands_{event.outcome}")
            log.info(
                "command_answered", id=event.id, task=event.task, outcome=event.outcome, reason=event.reason or None
            )

    def forget(self, now: float) -> None:
        """Drop verdicts and peer decisions too old to act on, and the issuer's spent entries."""
        max_age = self.config.health_max_age_s
        with self._health_lock:
            self.health = {key: v for key, v in self.health.items() if self._age(key, v, now) <= max_age}
            self._heard_at = {key: at for key, at in self._heard_at.items() if key in self.health}
            self.peer_decisions = {
                lei: d for lei, d in self.peer_decisions.items() if self._decision_age(lei, d, now) <= max_age
            }
            self._decision_arrived = {
                lei: at for lei, at in self._decision_arrived.items() if lei in self.peer_decisions
            }
            self._peer_planners = {
                lei: recent
                for lei, planners in self._peer_planners.items()
                if (recent := {planner: at for planner, at in planners.items() if now - at <= FORGET_AFTER_S})
            }
        if self.issuer is not None:
            self.issuer.forget(now)

    # --- deciding -------------------------------------------------------------------
    def faulty(self, now: float) -> list[tuple[str, str]]:
        """Hosts whose newest verdict of either mode, recent enough to act on, is a fault.

        A fault the forecast predicts counts as one observed (Alg. 2 lines 4-9): moving tasks
        before the host is overloaded is what makes the migrations preemptive. An alarm counts once
        its fault has started (``faulty_since``): with DRAGON_FAULT_START_WINDOWS > 1 the alarms
        before are not a fault yet, and moving tasks for each would undo what the setting is for.
        """
        return self._hosts_whose_verdict(lambda verdict: verdict.in_a_fault, now)

    def alarming(self, now: float) -> list[tuple[str, str]]:
        """Hosts whose newest verdict of either mode, recent enough, is an alarm, in a fault or not yet:
        no task is moved onto them, though only those in a fault have tasks moved off."""
        return self._hosts_whose_verdict(lambda verdict: verdict.label == 1, now)

    def _hosts_whose_verdict(self, holds: Callable[[HostHealth], bool], now: float) -> list[tuple[str, str]]:
        max_age = self.config.health_max_age_s
        with self._health_lock:
            hosts = {key[:2] for key, v in self.health.items() if holds(v) and self._age(key, v, now) <= max_age}
        return sorted(hosts)

    def _age(self, key: tuple[str, str, str], verdict: HostHealth, now: float) -> float:
        """How old a verdict is: since it came, plus how much later after its stamp (the judged
        sample's time, on the host's clock) it came than the host's samples usually do. So a host
        whose clock runs behind (no real-time clock, no NTP yet) is acted on like any other, while
        a retained verdict from yesterday, or one in a backlog delivered after an outage, is not
        news. By its stamp alone for a host with no sample in view."""
        heard, usual = self._heard_at.get(key), self.view.usual_lag(*key[:2])
        if heard is None or usual is None:
            return now - verdict.ts
        return now - heard + max(0.0, heard - verdict.ts - usual)

    def _decision_age(self, lei: str, decision: PlanDecision, now: float) -> float:
        """How old a peer's decision is: since it arrived, on our clock, so a peer broker whose clock
        runs behind (a Pi without a real-time clock) is played against like any other (by its
        stamps it was left out, and the spare host its move took booked twice). The newest of a
        backlog (ours after a restart, a bridge's after an outage) counts as fresh for
        ``health_max_age_s`` too: its moves, if their tasks are still on their sources, are held
        as happening that long (their targets taken, their sources relieved). By its stamp when
        it came retained, or not through the broker."""
        arrived = self._decision_arrived.get(lei)
        return now - decision.ts if arrived is None else now - arrived

    def plan_once(self, now: float):
        """Decide and publish if a host of this LEI is faulty; the decision, or None."""
        # Every interval, faulty or not: a move must be seen when it happens (its task then
        # rests), and nothing kept may grow with every host, task or command ever seen.
        self.view.forget(now)
        self.arrivals.note(self.view.scheduled(), now, keep_s=self.config.move_cooldown_s)
        self.forget(now)
        faulty = self.faulty(now)
        if not any(lei == self.lei for lei, _ in faulty):
            return None
        try:
            snapshot = self.view.snapshot(now)
        except ValueError:
            snapshot = None
        if snapshot is None or self.lei not in snapshot.federation.leis:
            self.counters.add("plan_skipped_own_lei_silent")
            log.warning("plan_skipped", reason="no recent sample from this LEI's hosts")
            return None
        # A faulty host with no recent sample (the detector reports silent hosts) is out of the view:
        # no task of it can be seen, let alone moved.
        faulty = [key for key in faulty if key in snapshot.hosts]
        if not any(lei == self.lei for lei, _ in faulty):
            self.counters.add("plan_skipped_faulty_out_of_view")
            return None
        decision = self.decide(snapshot, faulty, now, self.alarming(now))
        self.mqtt.publish_message(topics.fed_decision(self.lei), decision, qos=1)
        self.counters.add("decisions")
        log.info(
            "decision_published",
            id=decision.id,
            moves=len(decision.moves),
            fitness=round(decision.fitness, 4),
            unmoved=round(decision.fitness_unmoved, 4),
            ms=round(decision.decision_ms, 1),
            isolated=decision.isolated,
        )
        self.command(decision, now)
        return decision

    def command(self, decision: PlanDecision, now: float) -> None:
        """Send this LEI's moves of ``decision`` to its migrator (with the key; else deciding is all)."""
        if self.issuer is None:
            return
        for command in self.issuer.commands_for(decision, now):
            self.mqtt.publish_message(topics.migration_commands(self.lei), command, qos=1)
            self.counters.add("commands")
            log.info(
                "command_sent", id=command.id, task=command.task, target=f"{command.target_lei}/{command.target_host}"
            )

    def staying(self, now: float) -> set[str]:
        """The tasks a decision leaves where they are: those that came to their host within the
        cooldown (whoever moved them), and this LEI's with a command pending or resting after one."""
        busy = self.issuer.busy_tasks(now) if self.issuer is not None else set()
        return self.arrivals.within(self.config.move_cooldown_s, now) | busy

    def not_where_scheduled(self, snapshot: Snapshot) -> set[str]:
        """This LEI's tasks the view places on another host than the LEI's migrator schedules them on,
        or that no schedule lists, when this planner commands (else none).

        The view places a task on the host whose newest sample lists it, and a host's collector
        speaks for that host alone: one that listed another host's task (compromised, or confused)
        would have that task moved with a signed command. The migrator's schedule, which only it
        may publish, says where each task runs.
        """
        if self.issuer is None:
            return set()
        scheduled = self.view.scheduled()
        placement = snapshot.state.placement
        return {
            task
            for j, task in enumerate(snapshot.tasks)
            if placement[j] != UNPLACED
            and snapshot.hosts[placement[j]][0] == self.lei
            and scheduled.get(task, (None, 0.0))[0] != snapshot.hosts[placement[j]]
        }

    def not_ours_to_move(self, snapshot: Snapshot, now: float) -> tuple[np.ndarray, np.ndarray]:
        """The tasks the search leaves alone (indices), and the decision (p,) that moves them.

        Other LEIs' tasks move as their brokers' latest decisions say (fresh ones: at most
        ``health_max_age_s`` old, from a broker that commands its moves), or stay; this LEI's
        tasks that came to their host within the cooldown or rest after a command stay
        (:meth:`staying`), those with a command under way move where it sends them, and, when this
        planner commands, those the view places elsewhere than the LEI's schedule stay
        (:meth:`not_where_scheduled`).
        """
        misplaced = self.not_where_scheduled(snapshot)
        self._say_held_back(misplaced)
        staying = self.staying(now) | misplaced
        with self._health_lock:
            max_age = self.config.health_max_age_s
            peers = [
                d
                for lei, d in self.peer_decisions.items()
                if d.commanded and self._decision_age(lei, d, now) <= max_age
            ]
        # (task, from, to): the peers' moves of their own tasks, and ours under way, which planned
        # as not happening left their target looking as free as before (the next decision sent
        # another task there). Each only while its task is still where the move started.
        happening = [
            (move.task, (move.source_lei, move.source_host), (move.target_lei, move.target_host))
            for decision in peers
            for move in decision.moves
            if move.source_lei == decision.lei
        ]
        if self.issuer is not None:
            happening += [(task, issued.source, issued.target) for task, issued in self.issuer.under_way(now).items()]
        fixed = np.full(len(snapshot.tasks), UNPLACED)
        index = {task: j for j, task in enumerate(snapshot.tasks)}
        hosts = {key: i for i, key in enumerate(snapshot.hosts)}
        placement = snapshot.state.placement
        for task, source, target in happening:
            j, to = index.get(task), hosts.get(target)
            if j is not None and to is not None and placement[j] == hosts.get(source):
                fixed[j] = to
        lei_of_task = [snapshot.hosts[h][0] if h != UNPLACED else "" for h in placement]
        frozen = [j for j, task in enumerate(snapshot.tasks) if lei_of_task[j] != self.lei or task in staying]
        return np.array(frozen, dtype=int), fixed

    def _say_held_back(self, misplaced: set[str]) -> None:
        """Count the tasks :meth:`not_where_scheduled` holds back, and say why at most once a minute:
        no schedule of this LEI at all (its migrator down, or not published yet) is not a mismatch."""
        if not misplaced:
            return
        self.counters.add("tasks_not_where_scheduled", len(misplaced))  # per decision
        held_back = self._misplaced_lines.due()
        if held_back is None:
            return
        if not any(lei == self.lei for (lei, _), _since in self.view.scheduled().values()):
            log.warning("no_schedule_from_the_migrator_yet", tasks_held=len(misplaced), held_back=held_back)
            return
        tasks = sorted(misplaced)[:20]
        log.warning("tasks_not_where_scheduled", tasks=tasks, count=len(misplaced), held_back=held_back)

    def decide(
        self, snapshot: Snapshot, faulty: list[tuple[str, str]], now: float, alarming: list[tuple[str, str]] = ()
    ):
        """Tasks moved off the ``faulty`` hosts, onto none of them nor of the ``alarming`` ones."""
        started = time.perf_counter()
        peers = [lei for lei in snapshot.federation.leis if lei != self.lei]
        isolated = not peers
        sim = co_simulator(self.config.cosim, snapshot)
        groups = groups_of(sim, within_lei=isolated)
        faulty_index, alarming_index = (
            np.array([snapshot.hosts.index(key) for key in hosts if key in snapshot.hosts], dtype=int)
            for hosts in (faulty, alarming)
        )
        rng = np.random.default_rng(None if self.config.seed < 0 else self.config.seed)
        frozen, fixed = self.not_ours_to_move(snapshot, now)
        search = {"frozen": frozen, "fixed": fixed, "avoid": np.union1d(faulty_index, alarming_index)}
        if self.config.look_ahead == 1:
            plan = anneal(sim, snapshot.state, faulty_index, self.annealing, rng, groups, **search)
        else:
            steps = self.config.look_ahead
            plan = look_ahead(sim, snapshot.state, faulty_index, steps, self.annealing, rng, groups, **search)
        unmoved = float(sim.evaluate(snapshot.state, snapshot.state.unmoved()).fitness[0])
        context = PlanContext(
            lei=self.lei,
            planner=self.instance,
            mode=self.config.mode,
            look_ahead=self.config.look_ahead,
            faulty_hosts=tuple(f"{lei}/{host}" for lei, host in faulty),
            isolated=isolated,
            stale_leis=tuple(sorted(self.view.known_leis() - set(snapshot.federation.leis))),
            commanded=self.issuer is not None,
        )
        return decision_message(plan, snapshot, context, unmoved, now, (time.perf_counter() - started) * 1e3)
