"""Per-host fault state in Redis: turns window labels into start/end events.

The state lives in Redis, and one Lua script reads and updates it atomically,
so with several detector replicas exactly one of them sees each transition and
publishes its event. A window older than (or as old as) the last one seen for a
host — a redelivered duplicate — changes nothing and yields no event.
A fault ends only after ``clear_windows`` normal windows in a row, so a score
hovering around the threshold does not flap; it starts after ``start_windows`` alarms in a row (1
by default: the first), dated at the first of them, so an operator can trade a window of delay
for the lone alarms a threshold set at risk q lets through. A silent host's verdict opens a fault
at once: no window follows to confirm it. The script also counts each host's clean windows
in a row (normal, no fault in force), which tells any replica whether a host's recent windows
may be learnt from (:meth:`HostFaultState.clean_streaks`).

The event a transition publishes is written by the same script into the LEI's outbox (one hash
per verdict mode, event id -> payload) and taken out once the broker has acknowledged it, so an
event whose transition is recorded is never lost: a replica that dies before the broker has it,
or a Redis reply lost after the script ran, leaves it there for the host's owner to publish again
(:meth:`HostFaultState.outbox`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import redis

# KEYS: the host's state, the outbox; ARGV: label, window ts, clear windows, the event a
# transition would publish (its id and payload; empty: none to keep), since when the replica
# believes a fault of the host is in force (empty: none), for a state Redis lost, the alarms in a
# row that open a fault, and the longest gap between two windows of a run of alarms (0: any).
# A run (alarm_streak, dated alarm_since, its newest alarm_last) goes on only from the host's
# previous verdict: a verdict in between that did not count (an older replica's, which knows no
# runs) or a spell without windows starts it anew, so a fault is never dated back across either.
_TRANSITION = """
local function changed(kind, since)
  if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], ARGV[4], ARGV[5]) end
  return {kind, since, 0}
end
local faulty = redis.call('HGET', KEYS[1], 'faulty')
local last = redis.call('HGET', KEYS[1], 'ts')
local ts = tonumber(ARGV[2])
if not last and ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'faulty', '1', 'since', ARGV[6])
  faulty = '1'
end
if last and tonumber(last) >= ts then
  return {'stale', redis.call('HGET', KEYS[1], 'since') or '', 0}
end
redis.call('HSET', KEYS[1], 'ts', ARGV[2])
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'normal_streak', 0, 'clean_streak', 0)
  if faulty ~= '1' then
    local gap = tonumber(ARGV[8])
    local run_last = redis.call('HGET', KEYS[1], 'alarm_last')
    if run_last ~= last or (last and gap > 0 and ts - tonumber(last) > gap) then
      redis.call('HDEL', KEYS[1], 'alarm_streak', 'alarm_since')
    end
    local alarms = redis.call('HINCRBY', KEYS[1], 'alarm_streak', 1)
    if alarms == 1 then redis.call('HSET', KEYS[1], 'alarm_since', ARGV[2]) end
    redis.call('HSET', KEYS[1], 'alarm_last', ARGV[2])
    if alarms < tonumber(ARGV[7]) then return {'', '', 0} end
    local since = redis.call('HGET', KEYS[1], 'alarm_since') or ARGV[2]
    redis.call('HSET', KEYS[1], 'faulty', '1', 'since', since)
    redis.call('HDEL', KEYS[1], 'alarm_streak', 'alarm_since', 'alarm_last')
    return changed('start', since)
  end
  return {'', redis.call('HGET', KEYS[1], 'since') or '', 0}
end
redis.call('HDEL', KEYS[1], 'alarm_streak', 'alarm_since', 'alarm_last')
if faulty == '1' then
  redis.call('HSET', KEYS[1], 'clean_streak', 0)
  local streak = redis.call('HINCRBY', KEYS[1], 'normal_streak', 1)
  local since = redis.call('HGET', KEYS[1], 'since') or ''
  if streak >= tonumber(ARGV[3]) then
    redis.call('HSET', KEYS[1], 'faulty', '0')
    redis.call('HDEL', KEYS[1], 'since')
    return changed('end', since)
  end
  return {'', since, 0}
end
return {'', '', redis.call('HINCRBY', KEYS[1], 'clean_streak', 1)}
"""


@dataclass(frozen=True)
class Transition:
    """``kind`` is ``start``, ``end``, ``""`` (no change) or ``stale`` (an old window).

    ``clean_streak``: the host's clean windows in a row with this one (normal, no fault in force),
    by every replica's verdicts; 0 for a stale window.
    """

    kind: str
    faulty_since: float | None
    clean_streak: int = 0


def verdict_keys(lei: str, mode: str) -> str:
    """The prefix of one verdict mode's Redis keys: a forecast's verdicts never touch the observed ones."""
    return f"dragon:{lei}" if mode == "observed" else f"dragon:{lei}:{mode}"


class HostFaultState:
    def __init__(
        self, client: redis.Redis, lei: str, clear_windows: int, mode: str = "observed", start_windows: int = 1
    ) -> None:
        self._client = client
        self._prefix = f"{verdict_keys(lei, mode)}:fault:"
        self._outbox_key = f"{verdict_keys(lei, mode)}:outbox"
        self._clear = clear_windows
        self._start = start_windows
        self._script = client.register_script(_TRANSITION)

    def update(self, host: str, window_ts: float, label: int) -> Transition:
        return self.update_many([(host, window_ts, label)])[0]

    def update_many(
        self,
        verdicts: list[tuple[str, float, int]],
        events: Sequence[tuple[str, bytes]] = (),
        believed_since: Mapping[str, float] | None = None,
        at_once: Sequence[bool] = (),
        run_gaps_s: Sequence[float] = (),
    ) -> list[Transition]:
        """Apply ``(host, window_ts, label)`` verdicts in order, in one round trip.

        ``events`` (one per verdict, if given): the ``(event id, payload)`` its transition would
        publish; a start or an end keeps it in the outbox until :meth:`sent` takes it out.
        MULTI/EXEC makes the batch all-or-nothing, so retrying it after a lost connection
        never finds half of it applied (which would turn those windows ``stale`` and drop
        their events).

        ``believed_since``: since when the caller last saw a fault of a host in force. Used only
        where Redis holds no state of the host at all (it lost its data): the fault is restored,
        so that it ends with an event like any other instead of staying open for good for those
        who saw it start.

        ``at_once`` (one per verdict, if given): whether its alarm opens a fault by itself, whatever
        ``start_windows`` says (a silence: no window will follow to confirm it). ``run_gaps_s`` (one
        per verdict, if given): the longest time since the host's previous window across which a run
        of alarms goes on (0: any), so that a fault is not dated back across a spell without windows.
        """
        events = events or [("", b"")] * len(verdicts)
        believed_since = believed_since or {}
        at_once = at_once or [False] * len(verdicts)
        run_gaps_s = run_gaps_s or [0.0] * len(verdicts)
        pipe = self._client.pipeline(transaction=True)
        for (host, window_ts, label), (event_id, payload), alone, gap in zip(
            verdicts, events, at_once, run_gaps_s, strict=True
        ):
            keys = [f"{self._prefix}{host}", self._outbox_key]
            since = repr(believed_since[host]) if host in believed_since else ""
            alarms = 1 if alone else self._start
            args = [label, repr(window_ts), self._clear, event_id, payload, since, alarms, repr(float(gap))]
            self._script(keys=keys, args=args, client=pipe)
        return [_transition(kind, since, clean) for kind, since, clean in pipe.execute()]

    def outbox(self) -> dict[str, bytes]:
        """The events of recorded transitions the broker has not acknowledged yet: id -> payload."""
        return {key.decode(): value for key, value in self._client.hgetall(self._outbox_key).items()}

    def sent(self, event_ids: Sequence[str]) -> None:
        """Take events the broker acknowledged (or refused for good) out of the outbox."""
        if event_ids:
            self._client.hdel(self._outbox_key, *event_ids)

    def last_judged(self, hosts: list[str]) -> dict[str, float | None]:
        """The newest window time applied per host (None: never judged); any window no newer is stale."""
        pipe = self._client.pipeline(transaction=False)
        for host in hosts:
            pipe.hget(f"{self._prefix}{host}", "ts")
        return {
            host: None if value is None else float(value) for host, value in zip(hosts, pipe.execute(), strict=True)
        }

    def clean_streaks(self, hosts: list[str]) -> dict[str, int]:
        """Windows in a row each host was judged normal with no fault in force, by any replica.

        Counted by the transition script: an alarm, or a normal window while a fault has not
        ended (the one that ends it included), starts it again from 0. A host never judged has 0.
        """
        pipe = self._client.pipeline(transaction=False)
        for host in hosts:
            pipe.hget(f"{self._prefix}{host}", "clean_streak")
        return {host: int(value or 0) for host, value in zip(hosts, pipe.execute(), strict=True)}


class FaultHysteresis:
    """The transition script's rule for one host, in memory, for a replay that has no Redis.

    ``start_windows`` alarms in a row open a fault (a replay's windows are consecutive: no gap
    breaks a run), or one ``at_once``; it ends after ``clear_windows`` normal
    windows in a row, the one that ends it still part of it. :meth:`update` says whether a window
    was normal with no fault in force: what the script counts in ``clean_streak`` and the service
    learns from.
    """

    def __init__(self, clear_windows: int, start_windows: int = 1) -> None:
        if clear_windows < 1 or start_windows < 1:
            raise ValueError(
                f"clear_windows and start_windows must be at least 1, not {clear_windows}, {start_windows}"
            )
        self._clear = clear_windows
        self._start = start_windows
        self._faulty = False
        self._normal_streak = 0
        self._alarm_streak = 0

    @property
    def in_force(self) -> bool:
        """Whether a fault is open after the windows so far."""
        return self._faulty

    def update(self, label: int, at_once: bool = False) -> bool:
        if label:
            self._alarm_streak += 1
            self._faulty = self._faulty or at_once or self._alarm_streak >= self._start
            self._normal_streak = 0
            return False
        self._alarm_streak = 0
        if self._faulty:
            self._normal_streak += 1
            self._faulty = self._normal_streak < self._clear
            return False
        return True


def faults_in_force(
    labels: Sequence[int], clear_windows: int, start_windows: int = 1, at_once: Sequence[bool] | None = None
) -> list[bool]:
    """Whether a fault of the host is in force after each of its verdicts ``labels``, in order, by the
    script's rule (``at_once``: those whose alarm opens a fault alone, silences); a fault starts
    where one turns True."""
    faults = FaultHysteresis(clear_windows, start_windows)
    in_force = []
    for label, alone in zip(labels, at_once if at_once is not None else [False] * len(labels), strict=True):
        faults.update(int(label), alone)
        in_force.append(faults.in_force)
    return in_force


def fault_starts(
    labels: Sequence[int], clear_windows: int, start_windows: int = 1, at_once: Sequence[bool] | None = None
) -> list[int]:
    """The indices of the verdicts ``labels`` that start a fault, by the script's rule."""
    in_force = faults_in_force(labels, clear_windows, start_windows, at_once)
    return [i for i, now in enumerate(in_force) if now and not (i and in_force[i - 1])]


def _transition(kind: bytes | str, since: bytes | str, clean_streak: int) -> Transition:
    kind = kind.decode() if isinstance(kind, bytes) else kind
    since = since.decode() if isinstance(since, bytes) else since
    return Transition(kind, float(since) if since else None, int(clean_streak))


class HostWindow(Protocol):
    """Anything judged as one host's window at one time (a sample, a forecast)."""

    host: str
    ts: float


HostWindowT = TypeVar("HostWindowT", bound=HostWindow)


def unjudged(windows: Sequence[HostWindowT], last_judged: Mapping[str, float | None]) -> list[HostWindowT]:
    """The windows newer than their host's last judged one, each (host, ts) once, in order.

    The fault state would find the others stale after they were judged; dropping them first
    saves their generation, the costly part of judging.
    """
    seen: set[tuple[str, float]] = set()
    fresh = []
    for window in windows:
        last = last_judged.get(window.host)
        key = (window.host, window.ts)
        if (last is None or window.ts > last) and key not in seen:
            seen.add(key)
            fresh.append(window)
    return fresh


@dataclass(frozen=True)
class MissedWindow:
    """A stored sample no replica judged, found before its host's newer samples and judged late.

    Every replica stores every sample but only a host's owner judges it. A replica killed without
    leaving still owns its hosts until its heartbeat expires, and while ownership moves a sample
    can reach the old owner after and the new one before they see the change: such samples are in
    Redis, and nobody judged them.
    """

    host: str
    ts: float
    interval_s: float


class SampleWindow(Protocol):
    """A host's window closed by one of its samples (a sample received, or a stored one)."""

    host: str
    ts: float
    interval_s: float


# A host's next sample due after its last judged one comes later than this many intervals only
# when one in between went unjudged (or was never taken): only then is Redis asked.
GAP_INTERVALS = 1.5


def gaps_before(
    samples: Sequence[SampleWindow], last_judged: Mapping[str, float | None]
) -> dict[str, tuple[float, float, float]]:
    """Per host, the span (after, before, interval) between its last judged window and its oldest
    sample in ``samples``, where stored samples may wait unjudged. A host never judged has none."""
    oldest: dict[str, SampleWindow] = {}
    for sample in samples:
        if sample.host not in oldest or sample.ts < oldest[sample.host].ts:
            oldest[sample.host] = sample
    gaps = {}
    for host, sample in oldest.items():
        last = last_judged.get(host)
        if last is not None and sample.ts - last > GAP_INTERVALS * sample.interval_s:
            gaps[host] = (last, sample.ts, sample.interval_s)
    return gaps
