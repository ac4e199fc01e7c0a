"""Real faults inside emulated hosts, and the Poisson schedule that triggers them.

A fault is a hog container running ``python3 -m dragon.collector.workloads <kind>`` with
the emulated host's ``cgroup_parent``: the host's own limits cap it and the host's
counters see it, exactly as if a process on that host misbehaved. The hog ends by itself
after the fault's duration; :meth:`FaultInjector.reap` turns finished hogs into
``finished`` / ``failed`` events and removes them.

Everything the injector needs is in the hogs' labels, so a restarted collector finds
and reaps the hogs its previous run started; it only remembers, in memory, when (on the
monotonic clock) each hog it saw running has overrun.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import docker.errors
import structlog

from dragon.collector.cgroups import DEFAULT_ROOT, CgroupError, CgroupHost, emulated_host_path
from dragon.collector.docker_api import (
    DOCKER_ERRORS,
    ENDS_LABEL,
    FAULT_ID_LABEL,
    FAULT_KIND_LABEL,
    FAULT_LABEL,
    HOST_LABEL,
    LEI_LABEL,
    MANAGED_LABEL,
    PORT_LABEL,
    STARTED_LABEL,
    TASK_LABEL,
    WORKLOAD_LABEL,
    unanswered,
)
from dragon.messages.schema import SchemaError, clip
from dragon.messages.schemas import FAULT_KINDS, FaultInjection, InjectionEvent

log = structlog.get_logger(__name__)

MIB = 1024 * 1024
# An injection command older than this is refused (InjectionEvent "rejected"): a fault starts
# when it is asked for, or not at all.
MAX_COMMAND_AGE_S = 60.0
STOP_WAIT_S = 5.0  # at the stop, how long to wait for a fault start or reap under way
# A hog still "created" this long after it was started never ran (its start failed after Docker
# had created it, and the collector could not remove it then): reaped as failed.
NEVER_STARTED_AFTER_S = 30.0


def container_name(*parts: str) -> str:
    """A Docker container name from ids (Docker allows ``[a-zA-Z0-9][a-zA-Z0-9_.-]*``)."""
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", "-".join(parts))


class FaultInjector:
    """Start, reap and stop fault hogs in the emulated hosts of one LEI.

    ``hosts`` maps host names to their :class:`CgroupHost` (or just the cgroup path, such
    as ``dragon/lei1/h1``; then the memory hog cannot size itself to the host's free
    memory and holds its default). A plain list of host names means the emulated hosts
    ``dragon/<lei>/<host>`` under ``cgroup_root``. ``max_per_host`` bounds concurrent
    faults per host. A hog still running ``overrun_s`` after its planned end is killed.

    ``clock`` (wall time) stamps events and labels; how long a hog has run is told by
    ``monotonic``, so a clock stepped forward (NTP) kills no hog early.
    """

    def __init__(
        self,
        docker_client: Any,
        lei: str,
        image: str,
        hosts: Mapping[str, CgroupHost | str] | Iterable[str],
        *,
        cgroup_root: str | os.PathLike[str] = DEFAULT_ROOT,
        max_per_host: int = 2,
        overrun_s: float = 30.0,
        max_age_s: float = MAX_COMMAND_AGE_S,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = docker_client
        self.lei = lei
        self.image = image
        if isinstance(hosts, Mapping):
            self._hosts = dict(hosts)
        else:
            self._hosts = {name: CgroupHost(emulated_host_path(lei, name), cgroup_root) for name in hosts}
        self.max_per_host = max_per_host
        self.overrun_s = overrun_s
        self.max_age_s = max_age_s
        self._clock = clock
        self._monotonic = monotonic
        # hog container id -> when (``monotonic``) it has overrun, still running, and is killed
        self._overrun_at: dict[str, float] = {}
        # hog container ids whose end was reported but whose removal failed: removed again, not reported again
        self._reported: set[str] = set()
        # Commands (the MQTT worker), random faults and the reaper (the collector's Docker
        # thread) and the stop run one at a time: a host's count of faults is checked and a hog
        # started in one step, and nothing starts once the stop has begun.
        self._lock = threading.Lock()
        self._closed = False

    # --- inject -------------------------------------------------------------------------

    def inject(self, host: str, fault: FaultInjection, now: float | None = None, queued: bool = True) -> InjectionEvent:
        """Start ``fault`` in ``host``; ``started``, or ``rejected``/``failed`` with a reason.

        ``queued``: the command came through the broker, which may have kept it while the
        collector was away, so its age is checked; a fault drawn here (random mode) was not.
        After :meth:`stop_all` every fault is rejected.
        """
        now = self._clock() if now is None else now
        with self._lock:
            if self._closed:
                return self._event(fault, host, "rejected", now, reason="the collector is stopping")
            return self._inject(host, fault, now, queued)

    def _inject(self, host: str, fault: FaultInjection, now: float, queued: bool) -> InjectionEvent:
        try:
            fault.check()
            if queued:
                self._check_age(fault, now)
            options = self._check(host, fault)
            self._start(host, fault, now, options)
        except (_Rejected, SchemaError) as exc:
            log.warning("fault_rejected", lei=self.lei, host=host, fault_id=fault.id, reason=str(exc))
            return self._event(fault, host, "rejected", now, reason=str(exc))
        except DOCKER_ERRORS as exc:
            log.error("fault_start_failed", lei=self.lei, host=host, fault_id=fault.id, error=str(exc))
            return self._event(fault, host, "failed", now, reason=f"docker: {exc}")
        log.info(
            "fault_injected",
            lei=self.lei,
            host=host,
            fault_id=fault.id,
            kind=fault.kind,
            duration_s=fault.duration_s,
            intensity=fault.intensity,
        )
        return self._event(fault, host, "started", now, started_at=now, ends_at=now + fault.duration_s)

    def _start(self, host: str, fault: FaultInjection, now: float, options: dict[str, Any]) -> None:
        workload = [fault.kind, "--duration", f"{fault.duration_s:g}", "--intensity", f"{fault.intensity:g}"]
        labels = {
            FAULT_LABEL: "true",
            FAULT_ID_LABEL: fault.id,
            FAULT_KIND_LABEL: fault.kind,
            STARTED_LABEL: repr(now),
            ENDS_LABEL: repr(now + fault.duration_s),
            LEI_LABEL: self.lei,
            HOST_LABEL: host,
            MANAGED_LABEL: "collector",
        }
        name = container_name("dragon", self.lei, "fault", fault.id)
        try:
            hog = self._client.containers.run(
                self.image,
                ["python3", "-m", "dragon.collector.workloads", *workload, *options.pop("args")],
                name=name,
                detach=True,
                labels=labels,
                cgroup_parent=self._cgroup_parent(host),
                environment={"PYTHONUNBUFFERED": "1"},
                **options,
            )
        except DOCKER_ERRORS:
            # Docker creates, then starts: a start that fails leaves a "created" container, which
            # would count against the host's faults for good.
            self._remove_created(name, labels)
            raise
        self._overrun_at[hog.id] = self._monotonic() + fault.duration_s + self.overrun_s

    def _check_age(self, fault: FaultInjection, now: float) -> None:
        """Refuse a command that waited too long: the broker keeps the collector's session, so one
        sent while it was away would otherwise start a fault whenever it comes back."""
        age = now - fault.ts
        if fault.ts > 0 and abs(age) > self.max_age_s:  # ts 0: the sender did not stamp it
            raise _Rejected(
                f"the command is {age:.0f} s old (at most {self.max_age_s:g} s): it waited while the collector "
                "was away, or the sender's clock is off"
            )

    def _check(self, host: str, fault: FaultInjection) -> dict[str, Any]:
        """Refuse what must not start; return the run options the fault's kind needs."""
        if host not in self._hosts:
            raise _Rejected(f"unknown host {host!r}; this LEI emulates {', '.join(sorted(self._hosts)) or 'no hosts'}")
        cgroup = self._hosts[host]
        if isinstance(cgroup, CgroupHost) and not cgroup.exists():
            raise _Rejected(f"the cgroup of host {host!r} does not exist (is the host set up?)")
        hogs = self._hogs()
        if any(_labels(c).get(FAULT_ID_LABEL) == fault.id for c in hogs):
            raise _Rejected(f"fault {fault.id!r} is still running")
        running = [c for c in hogs if _labels(c).get(HOST_LABEL) == host and c.status in {"created", "running"}]
        if len(running) >= self.max_per_host:
            raise _Rejected(f"host {host!r} already runs {len(running)} faults (at most {self.max_per_host})")
        return _KIND_OPTIONS[fault.kind](self, host)

    def _no_network(self, host: str) -> dict[str, Any]:
        return {"network_mode": "none", "args": []}

    def _memory_options(self, host: str) -> dict[str, Any]:
        cgroup = self._hosts[host]
        if not isinstance(cgroup, CgroupHost):
            return self._no_network(host)
        try:
            free = cgroup.memory_limit_bytes() - cgroup.memory_usage_bytes()
        except CgroupError as exc:
            raise _Rejected(f"cannot read the memory of host {host!r}: {exc}") from exc
        # Most of what the host has left, so RAM rises clearly without OOM-killing its tasks.
        megabytes = max(16, int(free * 0.9) // MIB)
        return {"network_mode": "none", "args": ["--megabytes", str(megabytes)]}

    def _flood_options(self, host: str) -> dict[str, Any]:
        network, url = self._flood_target(host)
        return {"network": network, "args": ["--target", url]}

    def _flood_target(self, host: str) -> tuple[str, str]:
        """(network, URL) of a running demo task on ``host``."""
        labels = [f"{TASK_LABEL}=true", f"{LEI_LABEL}={self.lei}", f"{HOST_LABEL}={host}"]
        tasks = self._client.containers.list(filters={"label": labels, "status": "running"})
        # Prefer demo tasks: they are known to answer HTTP.
        tasks.sort(key=lambda c: (_labels(c).get(WORKLOAD_LABEL) != "demo", c.name))
        for task in tasks:
            networks = task.attrs.get("NetworkSettings", {}).get("Networks") or {}
            for network, settings in sorted(networks.items()):
                if settings.get("IPAddress"):
                    port = _labels(task).get(PORT_LABEL, "8080")
                    return network, f"http://{settings['IPAddress']}:{port}/"
        raise _Rejected(f"no running task with an IP address on host {host!r} to flood")

    # --- reap / stop --------------------------------------------------------------------

    def reap(self, now: float | None = None) -> list[InjectionEvent]:
        """Remove hogs that ended (``finished``, or ``failed`` when they exited non-zero or
        were OOM-killed) and kill those running far past their end (``failed``)."""
        now = self._clock() if now is None else now
        with self._lock:
            return self._reap(now)

    def _reap(self, now: float) -> list[InjectionEvent]:
        return self._end_hogs(now, self._how_it_ended)[0]

    def _how_it_ended(self, hog: Any, now: float) -> InjectionEvent | None:
        """The event of a hog to remove now; None for one to leave running (or being started)."""
        state = hog.attrs.get("State", {})
        if hog.status in {"exited", "dead"}:
            code, oom = state.get("ExitCode", 0), state.get("OOMKilled", False)
            if code == 0 and not oom:
                return self._hog_event(hog, "finished", now)
            return self._hog_event(hog, "failed", now, reason="OOM-killed" if oom else f"exit code {code}")
        if hog.status == "running" and self._overran(hog, now):
            return self._hog_event(hog, "failed", now, reason="still running long after its end")
        if hog.status == "created" and now > _float(_labels(hog).get(STARTED_LABEL)) + NEVER_STARTED_AFTER_S:
            return self._hog_event(hog, "failed", now, reason="never started")
        return None

    def _end_hogs(
        self, now: float, ending: Callable[[Any, float], InjectionEvent | None]
    ) -> tuple[list[InjectionEvent], bool]:
        """Remove the hogs ``ending`` gives an event for, each reported once however many tries
        its removal takes; (the events, whether Docker answered every call). Stops calling a
        daemon that left a call unanswered: each call after would wait as long."""
        events = []
        try:
            hogs = self._hogs()
        except DOCKER_ERRORS as exc:
            log.warning("fault_reap_failed", lei=self.lei, error=str(exc))
            return [], not unanswered(exc)
        present = {hog.id for hog in hogs}
        self._forget_overruns_of_gone_hogs(present)
        self._reported &= present
        answered = True
        for hog in hogs:
            event = ending(hog, now)
            if event is None:
                continue
            if hog.id not in self._reported:
                events.append(event)
                self._reported.add(hog.id)
            removal = self._remove(hog)
            if removal:
                self._reported.discard(hog.id)
            elif removal is None:
                answered = False
                break
        for event in events:
            log.info(
                "fault_ended",
                lei=self.lei,
                host=event.host,
                fault_id=event.id,
                status=event.status,
                reason=event.reason,
            )
        return events, answered

    def _overran(self, hog: Any, now: float) -> bool:
        """Whether a running hog ran past its end and the overrun, on the monotonic clock: from its
        start, or for a hog an earlier run started from its labels the first time it is seen (on
        the wall clock ``now`` then, at most its whole duration and overrun ahead)."""
        if hog.id not in self._overrun_at:
            labels = _labels(hog)
            started, ends = _float(labels.get(STARTED_LABEL)), _float(labels.get(ENDS_LABEL))
            left = min(ends - now, max(ends - started, 0.0)) + self.overrun_s
            self._overrun_at[hog.id] = self._monotonic() + max(left, 0.0)
        return self._monotonic() >= self._overrun_at[hog.id]

    def _forget_overruns_of_gone_hogs(self, present: set[str]) -> None:
        for hog_id in self._overrun_at.keys() - present:
            del self._overrun_at[hog_id]

    def stop_all(self, now: float | None = None, wait_s: float = STOP_WAIT_S) -> list[InjectionEvent]:
        """End every hog of this LEI now (at shutdown): reap the ended ones, kill the rest; from
        then on every fault is rejected. Waits at most ``wait_s`` for a start or reap under way
        (a daemon that does not answer holds it); then the hogs are left to the next start's reaper."""
        now = self._clock() if now is None else now
        taken = self._lock.acquire(timeout=wait_s)
        self._closed = True
        if not taken:
            log.warning("fault_stop_skipped", lei=self.lei, reason="a fault start or reap still waits on Docker")
            return []
        try:
            return self._stop_all(now)
        finally:
            self._lock.release()

    def _stop_all(self, now: float) -> list[InjectionEvent]:
        """One pass (one list call: each may take the stop's 5 s): hogs that ended as they ended,
        the rest stopped before their end; with Docker silent, the rest left to the next start's reaper."""

        def ended_or_stopped(hog: Any, now: float) -> InjectionEvent:
            return self._how_it_ended(hog, now) or self._hog_event(
                hog, "finished", now, reason="stopped before its end"
            )

        return self._end_hogs(now, ended_or_stopped)[0]

    def running(self, host: str | None = None) -> list[str]:
        """Ids of the faults whose hogs are running (on ``host``, or anywhere in the LEI)."""
        return [
            _labels(hog)[FAULT_ID_LABEL]
            for hog in self._hogs()
            if hog.status == "running" and (host is None or _labels(hog).get(HOST_LABEL) == host)
        ]

    # --- helpers ------------------------------------------------------------------------

    def _hogs(self) -> list[Any]:
        labels = [f"{FAULT_LABEL}=true", f"{LEI_LABEL}={self.lei}"]
        return self._client.containers.list(all=True, filters={"label": labels})

    def _cgroup_parent(self, host: str) -> str:
        cgroup = self._hosts[host]
        return cgroup.cgroup_parent if isinstance(cgroup, CgroupHost) else "/" + cgroup.strip("/")

    def _remove_created(self, name: str, labels: dict[str, str]) -> None:
        """Remove the container this start created, if it did: the one named ``name`` with its
        ``labels`` (another fault's hog may hold the name: ids that differ only in characters a
        name cannot hold, and then the create was refused)."""
        try:
            container = self._client.containers.get(name)
        except docker.errors.NotFound:
            return  # the create itself failed
        except DOCKER_ERRORS as exc:
            log.warning("fault_remove_failed", lei=self.lei, container=name, error=str(exc))
            return
        if all(_labels(container).get(key) == value for key, value in labels.items()):
            self._remove(container)

    def _remove(self, hog: Any) -> bool | None:
        """True once removed; False if Docker refused; None if it did not answer."""
        try:
            hog.remove(force=True)
        except docker.errors.NotFound:
            pass  # removed meanwhile (another reaper, or docker rm by hand)
        except DOCKER_ERRORS as exc:
            log.warning("fault_remove_failed", lei=self.lei, container=hog.name, error=str(exc))
            return None if unanswered(exc) else False
        return True

    def _event(
        self, fault: FaultInjection, host: str, status: str, now: float, reason: str = "", **fields: Any
    ) -> InjectionEvent:
        return InjectionEvent(
            id=fault.id, lei=self.lei, host=host, kind=fault.kind, status=status, ts=now, reason=clip(reason), **fields
        )

    def _hog_event(self, hog: Any, status: str, now: float, reason: str = "") -> InjectionEvent:
        labels = _labels(hog)
        return InjectionEvent(
            id=labels.get(FAULT_ID_LABEL, hog.name),
            lei=self.lei,
            host=labels.get(HOST_LABEL, ""),
            kind=labels.get(FAULT_KIND_LABEL, ""),
            status=status,
            ts=now,
            started_at=_float(labels.get(STARTED_LABEL)) or None,
            ends_at=_float(labels.get(ENDS_LABEL)) or None,
            reason=clip(reason),  # Docker's errors run longer than a reader takes
        )


class _Rejected(Exception):
    """A fault that must not start; the message is the reason sent back."""


_KIND_OPTIONS: dict[str, Callable[[FaultInjector, str], dict[str, Any]]] = {
    "cpu": FaultInjector._no_network,
    "memory": FaultInjector._memory_options,
    "disk": FaultInjector._no_network,
    "flood": FaultInjector._flood_options,
}


def _labels(container: Any) -> dict[str, str]:
    return container.labels or {}


def _float(raw: str | None) -> float:
    try:
        return float(raw) if raw else 0.0
    except ValueError:
        return 0.0


# ---------------------------------------------------------------------------------------


class PoissonFaults:
    """Faults arriving as a Poisson process, as in the papers' fault model.

    ``rate_per_hour`` is the mean number of faults per hour across all ``hosts`` (each host
    gets ``rate_per_hour / len(hosts)``: the same as independent Poisson processes per
    host). Gaps between arrivals are exponential; each arrival picks its host uniformly,
    its kind, duration (uniform in ``duration_range``, seconds) and intensity (uniform in
    ``intensity_range``) from ``rng``. With a seeded
    ``random.Random`` and the same sequence of ``now`` values the schedule is identical.
    An arrival whose whole fault would already be over (the caller was paused) is skipped.
    """

    def __init__(
        self,
        rate_per_hour: float,
        kinds: Sequence[str],
        hosts: Sequence[str],
        duration_range: tuple[float, float],
        rng: random.Random,
        *,
        intensity_range: tuple[float, float] = (0.5, 1.0),
        id_prefix: str = "poisson",
    ) -> None:
        if rate_per_hour <= 0:
            raise ValueError("rate_per_hour must be positive")
        unknown = [kind for kind in kinds if kind not in FAULT_KINDS]
        if not kinds or unknown:
            raise ValueError(f"kinds must be a non-empty subset of {FAULT_KINDS}, got {tuple(kinds)}")
        if not hosts:
            raise ValueError("hosts must not be empty")
        low, high = duration_range
        if not 0 < low <= high <= 3600:
            raise ValueError("duration_range must satisfy 0 < low <= high <= 3600")
        if not 0 < intensity_range[0] <= intensity_range[1] <= 1:
            raise ValueError("intensity_range must satisfy 0 < low <= high <= 1")
        self.rate_per_s = rate_per_hour / 3600.0
        self.kinds = tuple(kinds)
        self.hosts = tuple(hosts)
        self.duration_range = (low, high)
        self.intensity_range = intensity_range
        self._rng = rng
        self._prefix = id_prefix
        self._next: float | None = None
        self._seq = 0

    def due(self, now: float, wall: float | None = None) -> list[tuple[str, FaultInjection]]:
        """Faults whose arrival time is at or before ``now`` (the first call only starts the clock).

        ``now`` on a monotonic clock: an NTP step of the wall clock (a Pi without a real-time
        clock) forward would have drawn every arrival in the skipped span, one by one, and a step
        back stopped the faults for as long. ``wall``: the wall clock at ``now``, which the faults'
        ``ts`` are on (default ``now``)."""
        to_wall = (now if wall is None else wall) - now
        if self._next is None:
            self._next = now + self._rng.expovariate(self.rate_per_s)
            return []
        out = []
        while self._next <= now:
            arrival = self._next
            self._next += self._rng.expovariate(self.rate_per_s)
            self._seq += 1
            host = self._rng.choice(self.hosts)
            fault = FaultInjection(
                id=f"{self._prefix}-{int(arrival + to_wall)}-{self._seq}",
                kind=self._rng.choice(self.kinds),
                duration_s=max(self.duration_range[0], round(self._rng.uniform(*self.duration_range), 1)),
                intensity=max(self.intensity_range[0], round(self._rng.uniform(*self.intensity_range), 2)),
                ts=arrival + to_wall,
            )
            if arrival + fault.duration_s < now:
                log.info("poisson_fault_skipped", fault_id=fault.id, host=host, late_s=now - arrival)
                continue
            out.append((host, fault))
        return out
