"""Detection quality on an emulated LEI with real faults: each host judged alone vs the LEI jointly.

For each scope it starts a fresh LEI from the local images (Mosquitto, Redis, a collector with
emulated hosts running demo tasks, a detector that learns from the first minutes of normal
operation), then injects the same seeded sequence of real faults (CPU, memory and disk hogs,
request floods) into random hosts, one at a time with quiet gaps between them, and compares the
detector's fault events with the collector's injection reports:

- found: an injection is found when a ``start`` event names its host with a window taken while
  it ran (up to ``--grace`` seconds after it ended); delay is from its start to that window;
- missed: a fault without such a start; those whose host was already flagged when they began
  (by a start no ``end`` had closed) are counted as ``missed_already_flagged``;
- false starts: every other ``start`` event (another host, or outside every injection). Those
  whose window falls while a fault runs on another host are counted apart ("beside a fault"):
  the emulated hosts share the machine's cores and disk, so a neighbour's hog can really slow
  them, and these are interference as much as false alarms; the rest came in quiet. Each is
  listed with its two top metrics, the seconds since the last fault (on any host) ended, its
  score and threshold, the host's median threshold over the 30 s before, its model, and which
  of the host's metrics lay outside the range the model was trained on (the served
  checkpoint's scaler bounds, from Redis) in the sample that closed the window, by how many
  spans: a host drifting out of what the warm-up saw looks like that.
  ``--faults 0`` is a quiet run of ``--gap`` seconds: every start is a false start.

With ``--replay-start-windows N ...`` it also replays each host's observed verdicts (labels
from its ``health`` topic, heard from before the first fault) through the fault state's rule with
N alarms in a row to open a fault (``DRAGON_FAULT_START_WINDOWS``) and scores the starts each N
would have published the same way, on the same run: the detector's labels do not depend on N
(only what it learns from, a little: an alarm that opens no fault leaves the next windows clean).
The N the detector ran with replays its own events: a check of the replay.

With ``--predicted`` a simulator runs too, and the detector's predicted-mode events (on the
simulator's forecasts) are scored the same way, beside the observed ones; ``published_s`` is
from a fault's start to the first event's publication, which compares the two modes fairly
(a predicted event's window is the forecast's, one interval ahead).

It prints one JSON line per scope, then a table. Needs Docker and the images
(scripts/build-images.sh); set TESTCONTAINERS_RYUK_DISABLED=true where Ryuk cannot be pulled.

    python scripts/bench_emulated.py --scopes host lei --faults 12 --out results.json
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import numpy as np

from dragon.detector.health import fault_starts
from dragon.detector.modelstore import ModelStore
from dragon.detector.online import OnlineSettings
from dragon.logs import configure
from dragon.messages import codec, topics
from dragon.messages.schemas import HOST_METRICS, FaultEvent, FaultInjection, HostHealth, InjectionEvent
from dragon.store import WindowStore
from dragon.testing.lei import LeiStack, environment_items
from dragon.testing.listener import Listener, publish

REPO = Path(__file__).resolve().parent.parent
KINDS = ("cpu", "memory", "disk", "flood")
MAX_PAYLOAD = 65536


def start_lei(scope: str, args, workdir: Path) -> LeiStack:
    hosts = [f"h{i + 1}" for i in range(args.hosts)]
    stack = LeiStack(
        lei=f"em{secrets.token_hex(3)}",
        hosts=hosts,
        workdir=workdir,
        mosquitto_conf=REPO / "compose" / "mosquitto" / "broker.conf",
    )
    stack.start_brokers()
    stack.start_collector(
        "collector",
        {
            "DRAGON_COLLECTOR_INTERVAL": str(args.interval),
            "DRAGON_EMULATED_CPUS": "0.5",
            "DRAGON_EMULATED_MEMORY_MB": "256",
            "DRAGON_DEMO_TASKS": "1",
            "DRAGON_RANDOM_FAULTS_PER_HOUR": "0",
        },
    )
    if args.predicted:
        stack.start_simulator("simulator")
    stack.start_detector(
        "detector",
        {
            "DRAGON_DETECTOR_SCOPE": scope,
            "DRAGON_DETECTOR_WARMUP": str(args.warmup),
            "DRAGON_DETECTOR_WARMUP_MIN_SAMPLES": str(int(args.warmup / args.interval * 0.8)),
            "DRAGON_DETECTOR_TRAIN_EPOCHS": str(args.epochs),
            "DRAGON_DETECTOR_BROKER_HOST": hosts[0],
            **args.detector_env,
        },
    )
    return stack


def wait_until_scoring(stack: LeiStack, timeout: float) -> None:
    with Listener(stack.mqtt_settings(), [f"dragon/{stack.lei}/hosts/+/health"]) as listener:
        for host in stack.hosts:
            listener.wait_for(lambda m, h=host: m.topic.endswith(f"/{h}/health"), timeout)


def inject(stack: LeiStack, host: str, kind: str, duration_s: float) -> None:
    command = FaultInjection(id=uuid.uuid4().hex[:12], kind=kind, duration_s=duration_s, ts=time.time())
    publish(stack.mqtt_settings("operator"), topics.inject(stack.lei, host), codec.encode(command), codec.MSGPACK)


def fault_schedule(args) -> list[tuple[str, str]]:
    """The same seeded (host, kind) sequence for every scope."""
    rng = np.random.default_rng(args.seed)
    hosts = [f"h{i + 1}" for i in range(args.hosts)]
    return [(hosts[rng.integers(len(hosts))], KINDS[i % len(KINDS)]) for i in range(args.faults)]


def run_scope(scope: str, args) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="dragon-emulated-"))
    stack = start_lei(scope, args, workdir)
    started = time.time()
    try:
        wait_until_scoring(stack, timeout=args.warmup + 300)
        model_ready_s = time.time() - started
        filters = [f"dragon/faults/{stack.lei}/+", topics.injections(stack.lei), topics.host_health(stack.lei, "+")]
        with Listener(stack.mqtt_settings(), filters) as listener:
            # The first verdicts settle before the first fault; heard, so that a replay knows the
            # fault state each host is in when the faults begin.
            time.sleep(args.gap)
            phase_start = time.time()
            for host, kind in fault_schedule(args):
                inject(stack, host, kind, args.duration)
                time.sleep(args.duration + args.gap)
            if not args.faults:
                time.sleep(args.gap)  # a quiet run: every start is a false start
            phase_end = time.time()
            messages = listener.matching(lambda m: True)
        outside = outside_training_range(stack)
        result = {"scope": scope, "model_ready_s": round(model_ready_s, 1)}
        result |= evaluate(messages, stack.lei, phase_start, phase_end, args.grace, "observed", outside)
        if args.replay_start_windows:
            clear = int(args.detector_env.get("DRAGON_FAULT_CLEAR_WINDOWS", OnlineSettings().clear_windows))
            result["replayed"] = {
                str(n): replay(messages, stack.lei, phase_start, phase_end, args.grace, clear, n)
                for n in args.replay_start_windows
            }
        if args.predicted:
            result["predicted"] = evaluate(
                messages, stack.lei, phase_start, phase_end, args.grace, "predicted", outside
            )
        return result
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def outside_training_range(stack: LeiStack) -> Callable[[str, float], dict[str, float] | None]:
    """``(host, ts) -> {metric: spans}``: how far the host's sample at ``ts`` lay outside the served
    model's scaler bounds (negative: below), from the checkpoint and the samples kept in Redis;
    ``{}`` when every metric was inside, None when the sample or the model was not found."""
    client = stack.redis_client()
    checkpoint = ModelStore(client, stack.lei, model_dir="").fetch()
    samples = WindowStore(client, stack.lei, history=2)
    stored = {host: samples.all_stored(host) for host in stack.hosts}
    if checkpoint is None:
        return lambda host, ts: None
    lo, hi = np.asarray(checkpoint.lo), np.asarray(checkpoint.hi)

    def outside(host: str, ts: float) -> dict[str, float] | None:
        sample = next((s for s in stored.get(host, []) if abs(s.ts - ts) < 1e-6), None)
        if sample is None:
            return None
        scaled = (np.asarray(sample.vector) - lo) / (hi - lo)
        beyond = np.where(scaled > 1, scaled - 1, np.where(scaled < 0, scaled, 0.0))
        return {name: round(float(v), 3) for name, v in zip(HOST_METRICS, beyond, strict=True) if v}

    return outside


def evaluate(
    messages,
    lei: str,
    phase_start: float,
    phase_end: float,
    grace: float,
    mode: str,
    outside: Callable[[str, float], dict[str, float] | None] = lambda host, ts: None,
) -> dict:
    injections, starts, faults = [], [], []
    thresholds: dict[str, list[tuple[float, float]]] = {}  # host -> (ts, threshold) of its observed verdicts
    for message in messages:
        if message.topic == topics.injections(lei):
            event = codec.decode(InjectionEvent, message.payload, MAX_PAYLOAD, message.content_type)
            if event.status == "started":
                injections.append(event)
        elif message.topic.endswith("/health"):
            health = codec.decode(HostHealth, message.payload, MAX_PAYLOAD, message.content_type)
            thresholds.setdefault(health.host, []).append((health.ts, health.threshold))
        else:
            event = codec.decode(FaultEvent, message.payload, MAX_PAYLOAD, message.content_type)
            if event.mode == mode:
                faults.append(event)  # starts and ends, for which host was flagged when
                if event.type == "start" and event.window_ts >= phase_start:
                    starts.append(event)

    scored = Matched.of(injections, starts, grace)
    published = [min(e.ts for e in hits) - i.started_at for i, hits in scored.hits]
    false_starts, beside = scored.false_starts, scored.beside
    return {
        **scored.summary(phase_end - phase_start),
        "published_s_median": round(float(np.median(published)), 2) if published else None,
        # A missed fault whose host was already flagged when it began: no new start could come.
        "missed_already_flagged": sum(flagged_at(faults, i.host, i.started_at) for i in scored.missed),
        # The model behind each event, in order of first use: a fine-tune serves a new one.
        "models": list(dict.fromkeys(e.model_id[:12] for e in sorted(faults, key=lambda e: e.ts))),
        "false_start_list": [
            {
                "host": e.host,
                "at_s": round(e.window_ts - phase_start, 1),
                "beside": beside.get(id(e)),
                "after_a_fault_s": seconds_since_a_fault_ended(injections, e.window_ts),
                "top_metrics": [c.metric for c in e.top_metrics[:2]],
                "score": round(e.score, 4),
                "threshold": round(e.threshold, 4),
                "threshold_30s_before": median_threshold(thresholds.get(e.host, []), e.window_ts - 30, e.window_ts - 1),
                "model": e.model_id[:12],
                "outside_training_range": outside(e.host, e.window_ts),
            }
            for e in sorted(false_starts, key=lambda e: e.window_ts)
        ],
    }


class Start(Protocol):
    host: str
    window_ts: float


@dataclass(frozen=True)
class ReplayedStart:
    host: str
    window_ts: float


@dataclass
class Matched:
    """Injections against the starts of faults: found (a start on its host with a window taken while it
    ran, or up to ``grace`` s after), missed, and the false starts (those beside another host's fault apart)."""

    hits: list[tuple[InjectionEvent, list[Start]]]
    missed: list[InjectionEvent]
    false_starts: list[Start]
    beside: dict[int, str]  # id of a false start -> kind of the fault running on another host then
    per_kind: dict[str, list[int]]  # kind -> [found, injected]

    @classmethod
    def of(cls, injections: list[InjectionEvent], starts: list[Start], grace: float) -> Matched:
        def during(start: Start, injection: InjectionEvent) -> bool:
            return injection.started_at <= start.window_ts <= injection.ends_at + grace

        per_kind: dict[str, list[int]] = {kind: [0, 0] for kind in KINDS}
        hits, missed, matched = [], [], set()
        for injection in injections:
            found = [e for e in starts if e.host == injection.host and during(e, injection)]
            per_kind[injection.kind][1] += 1
            if found:
                per_kind[injection.kind][0] += 1
                hits.append((injection, found))
                matched.update(id(e) for e in found)
            else:
                missed.append(injection)
        false_starts = [e for e in starts if id(e) not in matched]
        beside = {id(e): i.kind for e in false_starts for i in injections if i.host != e.host and during(e, i)}
        return cls(hits, missed, false_starts, beside, per_kind)

    def summary(self, seconds: float) -> dict:
        delays = [min(e.window_ts for e in found) - injection.started_at for injection, found in self.hits]
        return {
            "injected": sum(total for _, total in self.per_kind.values()),
            "found": len(self.hits),
            "found_by_kind": {kind: f"{found}/{total}" for kind, (found, total) in self.per_kind.items() if total},
            "delay_s_median": round(float(np.median(delays)), 1) if delays else None,
            "delay_s_max": round(float(np.max(delays)), 1) if delays else None,
            "false_starts": len(self.false_starts),
            "false_starts_per_hour": round(len(self.false_starts) / (seconds / 3600.0), 1),
            "false_start_hosts": sorted(e.host for e in self.false_starts),
            "false_starts_beside_a_fault": len(self.beside),
        }


def replay(
    messages, lei: str, phase_start: float, phase_end: float, grace: float, clear: int, start_windows: int
) -> dict:
    """The observed verdicts of the run replayed through the fault state's rule with ``start_windows``
    alarms in a row to open a fault, and its starts scored like the detector's events."""
    injections, verdicts = [], {}
    for message in messages:
        if message.topic == topics.injections(lei):
            event = codec.decode(InjectionEvent, message.payload, MAX_PAYLOAD, message.content_type)
            if event.status == "started":
                injections.append(event)
        elif message.topic.endswith("/health"):  # observed only: predicted verdicts end in /predicted
            health = codec.decode(HostHealth, message.payload, MAX_PAYLOAD, message.content_type)
            verdicts.setdefault(health.host, {})[health.ts] = health  # a redelivery counts once
    starts: list[Start] = []
    for host, by_time in verdicts.items():
        times = sorted(by_time)
        labels = [by_time[ts].label for ts in times]
        silences = [by_time[ts].cause == "silent" for ts in times]
        for i in fault_starts(labels, clear, start_windows, silences):
            if times[i] >= phase_start:
                starts.append(ReplayedStart(host, times[i]))
    return Matched.of(injections, starts, grace).summary(phase_end - phase_start)


def median_threshold(verdicts: list[tuple[float, float]], since: float, until: float) -> float | None:
    """Median threshold of a host's verdicts stamped in [since, until]; None without any."""
    values = [threshold for ts, threshold in verdicts if since <= ts <= until]
    return round(float(np.median(values)), 4) if values else None


def seconds_since_a_fault_ended(injections: list[InjectionEvent], at: float) -> float | None:
    """Seconds from the newest injection (on any host) that ended before ``at``; None before the first."""
    ended = [i.ends_at for i in injections if i.ends_at <= at]
    return round(at - max(ended), 1) if ended else None


def flagged_at(faults: list[FaultEvent], host: str, at: float) -> bool:
    """Whether ``host``'s newest fault event with a window up to ``at`` is a ``start``."""
    before = [e for e in faults if e.host == host and e.window_ts <= at]
    return bool(before) and max(before, key=lambda e: e.window_ts).type == "start"


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Detection quality of the detector on an emulated LEI with real injected faults, per scope "
        "(each host judged alone, or the whole LEI jointly). Needs Docker and the local dragon-*:local images."
    )
    parser.add_argument("--scopes", nargs="+", choices=("host", "lei"), default=["host", "lei"])
    parser.add_argument("--hosts", type=int, default=3, help="emulated hosts (default: 3)")
    parser.add_argument(
        "--faults", type=int, default=12, help="faults injected, one at a time (default: 12; 0: a quiet run of --gap s)"
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds each fault lasts (default: 20)")
    parser.add_argument(
        "--gap", type=float, default=25.0, help="quiet seconds after each fault, or of a quiet run (default: 25)"
    )
    parser.add_argument("--grace", type=float, default=5.0, help="seconds after a fault a start still counts")
    parser.add_argument("--interval", type=float, default=1.0, help="sampling interval in s (default: 1)")
    parser.add_argument("--warmup", type=float, default=90.0, help="normal operation learnt from, s (default: 90)")
    parser.add_argument("--epochs", type=int, default=40, help="training epochs of the on-line model (default: 40)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault sequence (default: 0)")
    parser.add_argument(
        "--predicted", action="store_true", help="run a simulator too and score the predicted-mode events as well"
    )
    parser.add_argument(
        "--detector-env",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="extra environment of the detector, repeatable (e.g. DRAGON_DETECTOR_FAULT_SCORE=excess+unreal)",
    )
    parser.add_argument(
        "--replay-start-windows",
        metavar="N",
        type=int,
        nargs="+",
        default=[],
        help="also score the starts each N alarms in a row (DRAGON_FAULT_START_WINDOWS) would have published, "
        "replayed from the run's verdicts",
    )
    parser.add_argument("--out", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.hosts < 2 or args.faults < 0 or args.gap <= 0 or any(n < 1 for n in args.replay_start_windows):
        parser.error("--hosts must be at least 2, --faults at least 0, --gap positive and --replay-start-windows >= 1")
    try:
        args.detector_env = environment_items(args.detector_env)
    except ValueError as exc:
        parser.error(f"--detector-env: {exc}")
    configure(level="warning", json=True)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    results = []
    for scope in args.scopes:
        result = run_scope(scope, args)
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.out:
        args.out.write_text(
            json.dumps({"started": when, "args": vars(args) | {"out": str(args.out)}, "results": results}, indent=2)
            + "\n"
        )
    print()
    print(
        "scope  found/injected  by kind                                    delay s med/max  "
        "false starts (/h), beside a fault"
    )
    for result in results:
        for label, r in [(result["scope"], result), (f"{result['scope']} predicted", result.get("predicted"))]:
            if r is None:
                continue
            kinds = ", ".join(f"{k} {v}" for k, v in r["found_by_kind"].items())
            delays = f"{r['delay_s_median']}/{r['delay_s_max']}"  # None where nothing was found
            print(
                f"{label:>5}  {r['found']:>5}/{r['injected']:<8}  {kinds:<42}  "
                f"{delays:<15}  {r['false_starts']} ({r['false_starts_per_hour']}), "
                f"{r['false_starts_beside_a_fault']} beside a fault  "
                f"missed while already flagged {r['missed_already_flagged']}  "
                f"published after {r['published_s_median']} s"
            )


if __name__ == "__main__":
    main()
