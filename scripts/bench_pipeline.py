"""Benchmark one LEI's detector: verdict latency, sustained throughput, memory, image sizes.

For each host count N it starts a fresh LEI from the local images (Mosquitto, Redis and one
detector, without a collector) and takes the collector's place itself: it logs in as the MQTT
user ``collector`` and publishes HostSamples for the hosts h0..h{N-1}. The detector serves a
checkpoint that this script trains first on synthetic normal samples.

1. Latency. Every host publishes one sample per interval (N samples/s at 1 s), spread evenly
   over the interval. For each sample we measure the time from its ``ts`` (set when it is
   published) until its HostHealth verdict arrives. The warm-up is left out. A few hosts spike
   (cpu 1.0, heavy disk writes) at moments spread over the phase, and we time the FaultEvent
   for each spiking sample (``window_ts`` == the sample's ``ts``) in the same way.
2. Throughput. Samples go out as fast as QoS 1 allows, round-robin over the hosts. We report
   the verdicts per second in the steady part, the backlog (published minus scored) when
   publishing stops, and how long it takes to drain. Publishing pauses while the backlog is
   above --max-backlog, so Mosquitto's per-session queue (100,000 messages) never drops any.
3. The detector container's memory, from its cgroup, and the sizes of the service images.

The publisher runs in this process and the verdict recorder in a child process, both on the
same machine as the containers, so on a small machine they take CPU away from the detector.

It prints one JSON line per host count, then a table. It needs Docker and the images
(scripts/build-images.sh). Where Ryuk cannot be pulled, set TESTCONTAINERS_RYUK_DISABLED=true.

    python scripts/bench_pipeline.py --hosts 16 64 256 --duration 30 --out results.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import docker
import numpy as np
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from dragon.detector import learning
from dragon.detector.gon import GonConfig
from dragon.detector.lei import lei_trace, train_from_lei
from dragon.detector.train import train_from_series
from dragon.logs import configure
from dragon.messages import codec, topics
from dragon.messages.schemas import HOST_METRICS, FaultEvent, HostHealth, HostMetrics, HostSample, TaskUsage
from dragon.mqtt import one_shot_client
from dragon.settings import MqttSettings
from dragon.store import StoredSample
from dragon.testing import lei as lei_images
from dragon.testing.lei import LeiStack, environment_items

REPO = Path(__file__).resolve().parent.parent
IMAGES = (lei_images.MOSQUITTO_IMAGE, lei_images.REDIS_IMAGE, lei_images.COLLECTOR_IMAGE, lei_images.DETECTOR_IMAGE)
CHECKPOINT_IN_CONTAINER = "/models/bench.pt"
MAX_PAYLOAD = 65536
# QoS 1 samples sent but not yet acknowledged by the broker. This keeps "as fast as possible"
# a measure of the broker and the detector, not of how many messages paho can queue in memory.
MAX_UNACKED = 500
SPIKE_SAMPLES = 3  # consecutive spiking samples of a faulty host
SPIKE_DISK_WRITE = 50e6  # bytes/s, a disk attack: 50x the min-max span of disk_write
TRAIN_SERIES, TRAIN_STEPS = 6, 400  # synthetic hosts x samples each the checkpoint learns from
TASK_CPU_SHARE = 0.8  # of a synthetic host's CPU taken by its one task


# --- synthetic hosts --------------------------------------------------------------------
@dataclass(frozen=True)
class HostProfile:
    """Mean usage of one synthetic host during normal operation, in HostSample units."""

    cpu: float
    ram: float
    disk_read: float
    disk_write: float
    net_rx: float
    net_tx: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> HostProfile:
        return cls(
            cpu=rng.uniform(0.05, 0.15),
            ram=rng.uniform(0.25, 0.35),
            disk_read=rng.uniform(2e3, 2e4),
            disk_write=rng.uniform(2e4, 2e5),
            net_rx=rng.uniform(2e3, 3e4),
            net_tx=rng.uniform(2e3, 3e4),
        )

    def rows(self, rng: np.random.Generator, steps: int) -> np.ndarray:
        """(steps, n) samples of normal operation, columns in HOST_METRICS order."""
        rates = np.array([self.disk_read, self.disk_write, self.net_rx, self.net_tx])
        out = np.empty((steps, len(HOST_METRICS)))
        out[:, 0] = self.cpu + rng.normal(0.0, 0.015, steps)
        out[:, 1] = self.ram + rng.normal(0.0, 0.003, steps)
        out[:, 2] = 0.0  # swap: edge devices here run without it
        out[:, 3:] = rates * rng.lognormal(0.0, 0.3, (steps, len(rates)))  # bursty I/O, never negative
        return np.clip(out, 0.0, None)


def as_metrics(row: np.ndarray) -> HostMetrics:
    return HostMetrics(**{name: float(value) for name, value in zip(HOST_METRICS, row, strict=True)})


def spiked(row: np.ndarray) -> np.ndarray:
    """The same sample during a sudden fault: the CPU saturated and a burst of disk writes."""
    out = row.copy()
    out[HOST_METRICS.index("cpu")] = 1.0
    out[HOST_METRICS.index("disk_write")] = SPIKE_DISK_WRITE
    return out


def task_usage(host: str, row: np.ndarray) -> tuple[TaskUsage, ...]:
    """Every synthetic host runs one task, which takes most of its CPU."""
    return (TaskUsage(f"{host}-task", "bench", TASK_CPU_SHARE * float(row[HOST_METRICS.index("cpu")]), 5e7),)


def train_checkpoint(directory: Path, epochs: int, seed: int, scope: str) -> Path:
    """Train the detector's model on synthetic normal hosts and save it as ``directory/bench.pt``.

    Scope ``host`` learns from each host's series alone; scope ``lei`` from the hosts as one LEI
    with their tasks (one collector tick: every host sampled at the same time).
    """
    rng = np.random.default_rng(seed)
    series = [HostProfile.draw(rng).rows(rng, TRAIN_STEPS) for _ in range(TRAIN_SERIES)]
    # As the service learns: an LEI without the graph transformer (DRAGON_DETECTOR_TOPOLOGY's default).
    cfg = GonConfig(n_features=len(HOST_METRICS), epochs=epochs, seed=seed, scope=scope, topology=scope == "host")
    started = time.perf_counter()
    if scope == "lei":
        history = {
            f"h{i}": [
                StoredSample(1.0 + t, row.tolist(), {task.id: task.cpu for task in task_usage(f"h{i}", row)})
                for t, row in enumerate(rows)
            ]
            for i, rows in enumerate(series)
        }
        checkpoint = train_from_lei(
            lei_trace(history, HOST_METRICS),
            cfg,
            min_span=learning.min_span(),
            pot_q=1e-3,
            pot_level=0.98,
            source="bench:synthetic",
        )
    else:
        checkpoint = train_from_series(
            series, HOST_METRICS, cfg, min_span=learning.min_span(), source="bench:synthetic"
        )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "bench.pt"
    checkpoint.save(path)
    print(json.dumps({"checkpoint": checkpoint.model_id, "train_seconds": round(time.perf_counter() - started, 1)}))
    return path


# --- MQTT ends ------------------------------------------------------------------------------
class SamplePublisher:
    """Stands in for the collector: publishes HostSamples as msgpack with QoS 1.

    A sample counts as published once the broker has acknowledged it (PUBACK).
    """

    def __init__(self, settings: MqttSettings, lei: str, interval_s: float) -> None:
        self.lei = lei
        self.interval_s = interval_s
        self.acked = 0
        self._sent = 0
        self._seq: dict[str, int] = {}
        self._cond = threading.Condition()
        self._props = Properties(PacketTypes.PUBLISH)
        self._props.ContentType = codec.MSGPACK
        self._settings = settings
        self._connected = threading.Event()
        self.client = one_shot_client(settings, "bench-pub")
        self.client.max_inflight_messages_set(MAX_UNACKED)
        self.client.on_connect = lambda client, userdata, flags, reason, props: self._connected.set()
        self.client.on_publish = self._on_publish

    def __enter__(self) -> SamplePublisher:
        self.client.connect(self._settings.host, self._settings.port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(15):
            raise TimeoutError("publisher did not connect within 15 s")
        return self

    def __exit__(self, *exc) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            self.acked += 1
            self._cond.notify_all()

    def publish(self, host: str, row: np.ndarray, ts: float | None = None) -> float:
        """Publish one sample of ``host`` and its task, stamped ``ts`` (default: now); returns that ``ts``."""
        with self._cond:
            while self._sent - self.acked >= MAX_UNACKED:
                self._cond.wait()
        seq = self._seq.get(host, 0)
        self._seq[host] = seq + 1
        ts = time.time() if ts is None else ts
        sample = HostSample(
            lei=self.lei,
            host=host,
            ts=ts,
            seq=seq,
            interval_s=self.interval_s,
            metrics=as_metrics(row),
            tasks=task_usage(host, row),
        )
        self._sent += 1
        self.client.publish(topics.host_sample(self.lei, host), codec.encode(sample), qos=1, properties=self._props)
        return ts

    def wait_acked(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.acked < self._sent:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self._sent - self.acked} samples not acknowledged within {timeout} s")
                self._cond.wait(remaining)


class Verdict(NamedTuple):
    at: float  # time.time() on arrival
    host: str
    ts: float  # the scored sample's ts


class Event(NamedTuple):
    at: float  # time.time() on arrival
    host: str
    type: str
    window_ts: float


class VerdictRecorder:
    """Records when each host's health verdict and fault event arrives, subscribed as ``operator``.

    It runs in a process of its own, with its own GIL. Publishing at full speed in this process
    would otherwise delay the arrivals it records and the count that throttles the publisher.
    Retained messages are skipped: they are old verdicts that the broker replays on subscribe.
    """

    def __init__(self, settings: MqttSettings, lei: str) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process that runs paho threads
        self._count = context.RawValue("q", 0)  # health verdicts so far, written by the child only
        self._ready = context.Event()
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=_record, args=(settings, lei, child_conn, self._count, self._ready), daemon=True
        )

    def __enter__(self) -> VerdictRecorder:
        self._process.start()
        if not self._ready.wait(30):
            self._process.kill()
            raise TimeoutError("recorder did not subscribe within 30 s")
        return self

    def __exit__(self, *exc) -> None:
        self._conn.send(None)
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()

    def health_count(self) -> int:
        return self._count.value

    def health_since(self, index: int) -> list[Verdict]:
        self._conn.send(("health", index))
        return [Verdict(*row) for row in self._conn.recv()]

    def fault_events(self) -> list[Event]:
        self._conn.send(("events", 0))
        return [Event(*row) for row in self._conn.recv()]


def _record(settings: MqttSettings, lei: str, conn, count, ready) -> None:
    """The recorder process: subscribe, stamp and decode arrivals, answer requests until None."""
    health: list[tuple] = []
    events: list[tuple] = []
    lock = threading.Lock()

    def on_message(client, userdata, message) -> None:
        at = time.time()
        if message.retain:
            return
        content_type = getattr(message.properties, "ContentType", "") or ""
        if message.topic.endswith("/health"):
            verdict = codec.decode(HostHealth, message.payload, MAX_PAYLOAD, content_type)
            with lock:
                health.append((at, verdict.host, verdict.ts))
                count.value += 1
        else:
            event = codec.decode(FaultEvent, message.payload, MAX_PAYLOAD, content_type)
            with lock:
                events.append((at, event.host, event.type, event.window_ts))

    filters = [f"dragon/{lei}/hosts/+/health", f"dragon/faults/{lei}/+"]
    client = one_shot_client(settings, "bench-rec")
    client.on_connect = lambda client, *args: client.subscribe([(f, 1) for f in filters])
    client.on_subscribe = lambda *args: ready.set()
    client.on_message = on_message
    client.connect(settings.host, settings.port, keepalive=30)
    client.loop_start()
    try:
        while (request := conn.recv()) is not None:
            kind, index = request
            with lock:
                rows = health[index:] if kind == "health" else list(events)
            conn.send(rows)
    finally:
        client.disconnect()
        client.loop_stop()


# --- phases -------------------------------------------------------------------------------
def milliseconds(seconds: list[float], q: float) -> float | None:
    return round(float(np.quantile(seconds, q)) * 1000.0, 1) if seconds else None


def wait_until_scoring(publisher: SamplePublisher, recorder: VerdictRecorder, host: str, rows, timeout: float) -> None:
    """Publish samples of one host until its first verdict arrives. This confirms the detector
    has subscribed and serves the model."""
    deadline = time.monotonic() + timeout
    while recorder.health_count() == 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no verdict from the detector within {timeout} s")
        publisher.publish(host, next(rows))
        time.sleep(0.2)


def latency_phase(publisher, recorder, hosts, streams, args) -> dict:
    """Every host publishes once per interval. Measures verdict latency, and event latency for the spikes."""
    n = len(hosts)
    warmup_ticks = int(round(args.warmup / args.interval))
    ticks = warmup_ticks + int(round(args.duration / args.interval))
    measured = ticks - warmup_ticks
    # Spikes at evenly spaced moments of the measured part, on hosts spread over the range.
    spiking = {
        hosts[(2 * j + 1) * n // (2 * args.spikes)]: range(tick, tick + SPIKE_SAMPLES)
        for j in range(args.spikes)
        for tick in [warmup_ticks + int((j + 0.5) * measured / args.spikes)]
    }
    spike_ts: dict[str, float] = {}  # host -> ts of its first spiking sample
    first = recorder.health_count()
    start = time.time() + 0.5
    measured_from = start + warmup_ticks * args.interval
    for tick in range(ticks):
        for i, host in enumerate(hosts):
            # Aligned: all hosts at the start of the tick with one time stamp, as one collector
            # samples its hosts; otherwise spread evenly over the interval.
            offset = 0.0 if args.aligned else i / n
            pause = start + (tick + offset) * args.interval - time.time()
            if pause > 0:
                time.sleep(pause)
            stamp = start + tick * args.interval if args.aligned else None
            row = next(streams[host])
            if tick in spiking.get(host, ()):
                ts = publisher.publish(host, spiked(row), stamp)
                spike_ts.setdefault(host, ts)
            else:
                publisher.publish(host, row, stamp)
    measured_to = time.time()
    publisher.wait_acked(30)
    time.sleep(args.grace)  # let the last verdicts arrive

    latencies = [v.at - v.ts for v in recorder.health_since(first) if measured_from <= v.ts <= measured_to]
    expected = measured * n
    event_latency, false_alarms = [], 0
    for event in recorder.fault_events():
        if event.type != "start" or not measured_from <= event.window_ts <= measured_to:
            continue
        if spike_ts.get(event.host) == event.window_ts:
            event_latency.append(event.at - event.window_ts)
        elif event.host not in spike_ts:
            false_alarms += 1
    behind = measured_to - (start + ticks * args.interval)
    return {
        "rate_per_s": round(n / args.interval, 1),
        "verdicts": len(latencies),
        "expected": expected,
        "p50_ms": milliseconds(latencies, 0.5),
        "p99_ms": milliseconds(latencies, 0.99),
        "max_ms": milliseconds(latencies, 1.0),
        "publisher_behind_s": round(max(behind, 0.0), 2),
        "spikes": len(spike_ts),
        "spikes_detected": len(event_latency),
        "event_p50_ms": milliseconds(event_latency, 0.5),
        "event_max_ms": milliseconds(event_latency, 1.0),
        "event_ms": sorted(round(seconds * 1000.0, 1) for seconds in event_latency),
        "false_alarm_starts": false_alarms,
    }


def throughput_phase(publisher, recorder, hosts, streams, args) -> dict:
    """Publish as fast as possible, round-robin, and count the verdicts per second."""
    first = recorder.health_count()
    acked_before = publisher.acked
    throttled = 0.0
    start = time.time()
    stop_at = start + args.duration
    i = 0
    while time.time() < stop_at:
        if i % 100 == 0:
            backlog = (publisher.acked - acked_before) - (recorder.health_count() - first)
            if backlog > args.max_backlog:
                paused = time.time()
                time.sleep(0.05)
                throttled += time.time() - paused
                continue
        host = hosts[i % len(hosts)]
        publisher.publish(host, next(streams[host]))
        i += 1
    stopped = time.time()
    publisher.wait_acked(60)
    published = publisher.acked - acked_before
    backlog_at_stop = published - (recorder.health_count() - first)
    while recorder.health_count() - first < published and time.time() < stopped + args.drain_timeout:
        time.sleep(0.1)
    drained = time.time()

    ours = [v for v in recorder.health_since(first) if v.ts >= start]
    steady_from = start + args.duration * 0.2  # skip the ramp-up (batches filling, queues forming)
    steady = [v for v in ours if steady_from <= v.at <= stopped]
    last = max((v.at for v in ours), default=stopped)
    unscored = published - len(ours)
    drain_s = last - stopped if unscored == 0 and last > stopped else None
    publishing_s = stopped - start - throttled
    return {
        "published": published,
        "published_per_s": round(published / (stopped - start), 1),
        # While not paused by --max-backlog: what one Python publisher manages on this machine.
        "published_per_s_unpaused": round(published / publishing_s, 1) if publishing_s > 0 else None,
        "scored_per_s": round(len(steady) / (stopped - steady_from), 1),
        "scored_per_s_overall": round(len(ours) / (last - start), 1),
        "backlog_at_stop": max(backlog_at_stop, 0),
        "drain_s": round(drain_s, 1) if drain_s else None,
        # The backlog is scored while the publisher is idle: the detector's rate without it.
        "scored_per_s_draining": round(backlog_at_stop / drain_s, 1) if drain_s and backlog_at_stop > 0 else None,
        "unscored_after_drain": unscored,
        "throttled_s": round(throttled, 1),
        "drain_wait_s": round(drained - stopped, 1),
    }


# --- measurements of the containers ----------------------------------------------------------
class MemoryProbe:
    """The detector container's memory, read from its cgroup.

    ``peak_usage`` is the cgroup's high-water mark. It includes the page cache, for example the
    torch libraries the process mapped from the image. ``rss`` is the anonymous memory
    (memory.stat ``total_rss`` on cgroup v1, ``anon`` on v2). A thread samples it every
    ``period`` seconds to find its peak.
    """

    def __init__(self, container, period: float = 0.5) -> None:
        self.container = container
        cid = container.id
        candidates = [
            Path("/sys/fs/cgroup/memory/docker") / cid,
            Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope"),
            Path("/sys/fs/cgroup/docker") / cid,
        ]
        self.cgroup = next((p for p in candidates if p.is_dir()), None)
        self.period = period
        self.rss_peak = 0
        self.marks: dict[str, int | None] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="memory-probe", daemon=True)

    def __enter__(self) -> MemoryProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.period):
            rss = self.rss()
            if rss is not None:
                self.rss_peak = max(self.rss_peak, rss)

    def mark(self, name: str) -> None:
        """Remember the RSS now, reported as ``rss_<name>_mib``."""
        self.marks[name] = self.rss()

    def rss(self) -> int | None:
        if self.cgroup is None:
            return None
        try:
            stat = dict(line.split() for line in (self.cgroup / "memory.stat").read_text().splitlines())
        except OSError:
            return None  # the container is gone
        return int(stat.get("total_rss", stat.get("anon", 0)))

    def peak_usage(self) -> tuple[int | None, str]:
        for name in ("memory.max_usage_in_bytes", "memory.peak"):
            if self.cgroup is not None and (self.cgroup / name).is_file():
                return int((self.cgroup / name).read_text()), f"cgroup {name}"
        stats = self.container.stats(stream=False)["memory_stats"]
        return stats.get("max_usage"), "docker stats max_usage"

    def report(self) -> dict:
        peak, source = self.peak_usage()
        rss = self.rss()
        mb = 1024 * 1024
        return {
            "peak_usage_mib": round(peak / mb, 1) if peak else None,
            "peak_usage_source": source,
            "rss_end_mib": round(rss / mb, 1) if rss is not None else None,
            "rss_peak_mib": round(self.rss_peak / mb, 1) if self.rss_peak else None,
            **{f"rss_{name}_mib": round(value / mb, 1) if value else None for name, value in self.marks.items()},
        }


def image_sizes() -> dict[str, float]:
    client = docker.from_env()
    return {name: round(client.images.get(name).attrs["Size"] / 1e6, 1) for name in IMAGES}


# --- one host count ---------------------------------------------------------------------------
def run_one(n: int, checkpoint: Path, args) -> dict:
    """A fresh LEI for ``n`` hosts: the latency phase, the throughput phase, memory. Always stopped."""
    hosts = [f"h{i}" for i in range(n)]
    workdir = Path(tempfile.mkdtemp(prefix=f"dragon-bench-{n}-"))
    models = workdir / "models"
    models.mkdir()
    shutil.copy(checkpoint, models / "bench.pt")
    # The detector runs as uid 10001: it must be able to read the mounted model.
    models.chmod(0o755)
    (models / "bench.pt").chmod(0o644)
    rng = np.random.default_rng(args.seed + n)
    streams = {host: normal_stream(HostProfile.draw(rng), np.random.default_rng(rng.integers(2**32))) for host in hosts}
    stack = LeiStack(
        lei=f"bench{secrets.token_hex(3)}", hosts=hosts, workdir=workdir, mosquitto_conf=args.mosquitto_conf
    )
    try:
        stack.start_brokers()
        env = {"DRAGON_DETECTOR_CHECKPOINT": CHECKPOINT_IN_CONTAINER, **args.detector_env}
        detector = stack.start_detector("detector", env, volumes={str(models): "/models"})
        with (
            MemoryProbe(detector.get_wrapped_container()) as memory,
            VerdictRecorder(stack.mqtt_settings("operator"), stack.lei) as recorder,
            SamplePublisher(stack.mqtt_settings("collector"), stack.lei, args.interval) as publisher,
        ):
            wait_until_scoring(publisher, recorder, hosts[0], streams[hosts[0]], timeout=60)
            latency = latency_phase(publisher, recorder, hosts, streams, args)
            memory.mark("after_latency")  # at the realistic rate, before the throughput phase
            throughput = throughput_phase(publisher, recorder, hosts, streams, args)
            time.sleep(1.0)  # one more sample of the RSS after the drain
            result = {"hosts": n, "latency": latency, "throughput": throughput, "memory": memory.report()}
        result["load_average_1m"] = round(os.getloadavg()[0], 2)  # the machine may be shared
        return result
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def normal_stream(profile: HostProfile, rng: np.random.Generator, block: int = 512):
    """An endless stream of one host's normal samples (rows in HOST_METRICS order)."""
    while True:
        yield from profile.rows(rng, block)


# --- output -----------------------------------------------------------------------------------
COLUMNS = (  # heading, how to read it from one result
    ("hosts", lambda r: r["hosts"]),
    ("pub/s", lambda r: r["throughput"]["published_per_s"]),
    ("scored/s", lambda r: r["throughput"]["scored_per_s"]),
    ("draining/s", lambda r: r["throughput"]["scored_per_s_draining"]),
    ("backlog", lambda r: r["throughput"]["backlog_at_stop"]),
    ("drain s", lambda r: r["throughput"]["drain_s"]),
    ("p50 ms", lambda r: r["latency"]["p50_ms"]),
    ("p99 ms", lambda r: r["latency"]["p99_ms"]),
    ("event p50/max ms", lambda r: f"{r['latency']['event_p50_ms']}/{r['latency']['event_max_ms']}"),
    ("spikes seen", lambda r: f"{r['latency']['spikes_detected']}/{r['latency']['spikes']}"),
    ("false starts", lambda r: r["latency"]["false_alarm_starts"]),
    ("peak MiB", lambda r: r["memory"]["peak_usage_mib"]),
    ("rss peak MiB", lambda r: r["memory"]["rss_peak_mib"]),
    ("rss at 1/interval MiB", lambda r: r["memory"].get("rss_after_latency_mib")),
)


def table(results: list[dict]) -> str:
    rows = [[heading for heading, _ in COLUMNS]] + [[str(cell(r)) for _, cell in COLUMNS] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark one LEI's detector with synthetic hosts: verdict and event latency at a realistic "
        "rate, sustained throughput, detector memory and image sizes. Starts a fresh stack of the local "
        "dragon-*:local images per host count (needs Docker; set TESTCONTAINERS_RYUK_DISABLED=true where Ryuk "
        "cannot be pulled).",
    )
    parser.add_argument(
        "--hosts", type=int, nargs="+", default=[16, 64, 256], help="host counts to run (default: 16 64 256)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=30.0,
        help="seconds of each measured phase, latency and throughput (default: 30)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="latency phase: seconds between two samples of one host (default: 1)",
    )
    parser.add_argument(
        "--warmup", type=float, default=10.0, help="latency phase: seconds left out at the start (default: 10)"
    )
    parser.add_argument("--spikes", type=int, default=4, help="latency phase: hosts that spike once each (default: 4)")
    parser.add_argument(
        "--grace",
        type=float,
        default=3.0,
        help="seconds to wait for late verdicts after the latency phase (default: 3)",
    )
    parser.add_argument(
        "--max-backlog",
        type=int,
        default=20000,
        help="throughput phase: pause publishing while more samples than this await a verdict (default: 20000)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="throughput phase: how long to wait for the backlog to drain (default: 120)",
    )
    parser.add_argument(
        "--scope",
        choices=("host", "lei"),
        default="host",
        help="what the detector's model judges at once: each host alone, or the whole LEI (default: host)",
    )
    parser.add_argument(
        "--aligned",
        action="store_true",
        help="latency phase: every host publishes at the start of each interval with one time stamp, as one "
        "collector does (default: spread evenly over the interval, as unsynchronised collectors)",
    )
    parser.add_argument("--train-epochs", type=int, default=15, help="epochs of the synthetic model (default: 15)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic hosts and the model (default: 0)")
    parser.add_argument(
        "--mosquitto-conf",
        type=Path,
        default=REPO / "compose" / "mosquitto" / "broker.conf",
        help="Mosquitto config to run (default: the deployment's compose/mosquitto/broker.conf)",
    )
    parser.add_argument(
        "--out", type=Path, help="also write every result, the machine and the image sizes to this JSON file"
    )
    parser.add_argument(
        "--detector-env",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="extra environment of the detector container, repeatable (e.g. OMP_NUM_THREADS=1)",
    )
    args = parser.parse_args()
    try:
        args.detector_env = environment_items(args.detector_env)
    except ValueError as exc:
        parser.error(f"--detector-env: {exc}")
    if args.spikes < 0 or args.spikes > min(args.hosts) // 2:
        parser.error("--spikes must be between 0 and half the smallest host count")
    return args


def main() -> None:
    args = parse_args()
    configure(level="warning", json=True)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="dragon-bench-model-") as scratch:
        checkpoint = train_checkpoint(Path(scratch), args.train_epochs, args.seed, args.scope)
        results = []
        for n in args.hosts:
            result = run_one(n, checkpoint, args)
            print(json.dumps(result), flush=True)
            results.append(result)
    sizes = image_sizes()
    print(json.dumps({"image_size_mb": sizes}), flush=True)
    print()
    print(table(results))
    print("images (MB): " + ", ".join(f"{name} {size}" for name, size in sizes.items()))
    if args.out:
        summary = {
            "started": started,
            "machine": {"kernel": platform.release(), "cpus": os.cpu_count()},
            "args": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
            "results": results,
            "image_size_mb": sizes,
        }
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
