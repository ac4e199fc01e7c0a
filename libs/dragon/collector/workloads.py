"""Real load inside an emulated host: a demo task, and the fault hogs.

Run as ``python3 -m dragon.collector.workloads KIND [options]`` in a container started
with the host's ``--cgroup-parent``, so the host's limits cap the load and the host's
counters see it. Standard library only: it runs in any image with Python 3.11 and this
package. Every kind ends by itself after ``--duration`` seconds (0: never) and promptly on
SIGTERM or SIGINT. Progress goes to stderr as one JSON object a line.

Kinds:
  demo    a small realistic task: an HTTP server answering ``GET /`` plus light, jittery
          periodic work (a few % of one core, a few MB of memory churn)
  cpu     busy loops in ceil(intensity x available cores) processes
  memory  allocate and touch intensity x --megabytes MB gradually, then hold it
  disk    write and fsync files in a temp dir at full speed (x intensity duty cycle)
  flood   many concurrent HTTP GETs to --target
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import http.server
import json
import math
import multiprocessing
import os
import random
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from pathlib import Path

MIB = 1024 * 1024
PAGE = 4096
# v1 reports "no limit" as a value near 2**63.
_UNLIMITED = 1 << 62


def _event(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "ts": round(time.time(), 3), **fields}), file=sys.stderr, flush=True)


class _Run:
    """When to stop: a deadline (``inf`` for no duration) or a signal."""

    def __init__(self, duration_s: float) -> None:
        self.stop = threading.Event()
        self.deadline = time.monotonic() + duration_s if duration_s > 0 else math.inf

    def over(self) -> bool:
        return self.stop.is_set() or time.monotonic() >= self.deadline

    def sleep(self, seconds: float = math.inf) -> bool:
        """Sleep up to ``seconds``; True when the run is over."""
        end = min(self.deadline, time.monotonic() + seconds)
        while not self.stop.is_set():
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            # Short slices keep a signal-set stop prompt however the wait is interrupted.
            self.stop.wait(min(remaining, 0.25))
        return self.over()


# --- demo -----------------------------------------------------------------------------


class _DemoHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so a flood can reuse connections
    # Headers and body go out in two writes; without TCP_NODELAY each keep-alive
    # response then waits for the client's delayed ACK (40 ms).
    disable_nagle_algorithm = True
    served = 0

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/":
            self._send(404, b'{"error": "not found"}\n')
            return
        type(self).served += 1
        body = json.dumps(
            {
                "service": "dragon-demo",
                "host": socket.gethostname(),
                "ts": time.time(),
                "served": type(self).served,
                "note": "a small DRAGON demo task; its load is the normal behaviour of its host",
                "items": [{"id": i, "value": random.random()} for i in range(4)],
            }
        ).encode()
        self._send(200, body + b"\n")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would flood the container log during a request flood


def _demo(args: argparse.Namespace, run: _Run) -> int:
    server = http.server.ThreadingHTTPServer(("", args.port), _DemoHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True)
    thread.start()
    _event("demo_listening", port=args.port)
    rng = random.Random()
    held: deque[bytearray] = deque(maxlen=3)
    data = os.urandom(64 * 1024)
    while True:
        # A few tens of ms of hashing and a few MB of fresh memory per ~second: a load
        # that wiggles like a real service instead of a flat line.
        busy_until = time.monotonic() + rng.uniform(0.02, 0.08)
        while time.monotonic() < busy_until:
            data = hashlib.sha256(data).digest() + data[32:]
        held.append(_touched(rng.randint(1, 4) * MIB))
        if run.sleep(rng.uniform(0.6, 1.4)):
            break
    server.shutdown()
    server.server_close()
    _event("demo_stopped", served=_DemoHandler.served)
    return 0


# --- cpu ------------------------------------------------------------------------------


def _spin(done: multiprocessing.synchronize.Event) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    counter = 0
    while not done.is_set():
        for _ in range(100_000):
            counter += 1


def _cpu(args: argparse.Namespace, run: _Run) -> int:
    cores = len(os.sched_getaffinity(0))
    count = max(1, math.ceil(args.intensity * cores))
    context = multiprocessing.get_context("fork")
    done = context.Event()
    workers = [context.Process(target=_spin, args=(done,), daemon=True) for _ in range(count)]
    for worker in workers:
        worker.start()
    _event("cpu_started", processes=count, cores=cores)
    run.sleep()
    done.set()
    for worker in workers:
        worker.join(timeout=2)
        if worker.is_alive():
            worker.terminate()
    _event("cpu_stopped")
    return 0


# --- memory ---------------------------------------------------------------------------


def _touched(size: int) -> bytearray:
    """A buffer whose every page is written, so it is really resident."""
    buffer = bytearray(size)
    buffer[::PAGE] = b"\x01" * len(range(0, size, PAGE))
    return buffer


def _memory_limit(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """This container's effective memory limit, including its parents' on v1."""
    candidates = []
    v1_stat = cgroup_root / "memory" / "memory.stat"
    try:
        if v1_stat.exists():
            for line in v1_stat.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "hierarchical_memory_limit":
                    candidates.append(int(value))
        v2_max = cgroup_root / "memory.max"
        if v2_max.exists() and (raw := v2_max.read_text().strip()) != "max":
            candidates.append(int(raw))
    except (OSError, ValueError):
        return None
    limited = [value for value in candidates if value < _UNLIMITED]
    return min(limited) if limited else None


def _memory(args: argparse.Namespace, run: _Run) -> int:
    target = int(args.intensity * args.megabytes * MIB)
    limit = _memory_limit()
    if limit is not None:
        # Leave room for the interpreter and the host's other processes.
        target = max(0, min(target, limit - max(32 * MIB, limit // 10)))
    _event("memory_started", target_bytes=target, limit_bytes=limit)
    held: list[bytearray] = []
    allocated = 0
    step = 8 * MIB
    while allocated < target:
        size = min(step, target - allocated)
        try:
            held.append(_touched(size))
        except MemoryError:
            _event("memory_allocation_refused", allocated_bytes=allocated)
            break
        allocated += size
        if run.sleep(0.05):  # about 160 MB/s: a ramp, not a step
            break
    _event("memory_holding", allocated_bytes=allocated)
    run.sleep()
    _event("memory_stopped")
    return 0


# --- disk -----------------------------------------------------------------------------


def _disk(args: argparse.Namespace, run: _Run) -> int:
    block = os.urandom(MIB)
    file_bytes = args.file_megabytes * MIB
    fsync_every = 8 * MIB
    written_total = 0
    _event("disk_started", file_bytes=file_bytes)
    with tempfile.TemporaryDirectory(prefix="dragon-disk-", dir=args.dir) as directory:
        path = Path(directory) / "data"
        while not run.over():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                written = 0
                while written < file_bytes and not run.over():
                    started = time.monotonic()
                    for _ in range(fsync_every // MIB):
                        written += os.write(fd, block)
                    os.fsync(fd)
                    # Duty cycle: at intensity x, idle (1 - x) / x of the time spent writing.
                    pause = (time.monotonic() - started) * (1 - args.intensity) / args.intensity
                    if pause > 0 and run.sleep(pause):
                        break
                written_total += written
            finally:
                os.close(fd)
            path.unlink()
    _event("disk_stopped", written_bytes=written_total)
    return 0


# --- flood ----------------------------------------------------------------------------


def _flood_worker(url: urllib.parse.SplitResult, run: _Run, counts: list[int], index: int) -> None:
    path = url.path or "/"
    connection = None
    while not run.over():
        try:
            if connection is None:
                connection = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=2)
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            counts[index] += 1
        except (OSError, http.client.HTTPException):
            if connection is not None:
                connection.close()
            connection = None
            run.sleep(0.05)  # the target is down or refusing: do not spin on errors
    if connection is not None:
        connection.close()


def _flood(args: argparse.Namespace, run: _Run) -> int:
    url = urllib.parse.urlsplit(args.target)
    count = max(1, round(args.intensity * args.connections))
    counts = [0] * count
    threads = [threading.Thread(target=_flood_worker, args=(url, run, counts, i), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    _event("flood_started", target=args.target, connections=count)
    run.sleep()
    for thread in threads:
        thread.join(timeout=3)
    _event("flood_stopped", requests=sum(counts))
    # A flood that never reached its target did not happen: say so with the exit code.
    return 0 if sum(counts) > 0 else 1


# ---------------------------------------------------------------------------------------

WORKLOADS: dict[str, Callable[[argparse.Namespace, _Run], int]] = {
    "demo": _demo,
    "cpu": _cpu,
    "memory": _memory,
    "disk": _disk,
    "flood": _flood,
}


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError("must be in (0, 1]")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m dragon.collector.workloads",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", choices=sorted(WORKLOADS), help="which load to generate")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds until the load ends by itself; 0: never (default: 0 for demo, 60 for the fault kinds)",
    )
    parser.add_argument(
        "--intensity", type=_fraction, default=1.0, help="share of the full load, in (0, 1] (default 1)"
    )
    parser.add_argument("--port", type=int, default=8080, help="demo: HTTP port to listen on (default 8080)")
    parser.add_argument("--target", default="", help="flood: URL to send GET requests to, e.g. http://10.0.0.5:8080/")
    parser.add_argument(
        "--connections", type=int, default=32, help="flood: concurrent connections at intensity 1 (default 32)"
    )
    parser.add_argument(
        "--megabytes",
        type=int,
        default=256,
        help="memory: MB to hold at intensity 1, capped below the cgroup limit (default 256)",
    )
    parser.add_argument(
        "--file-megabytes", type=int, default=64, help="disk: size of each file before it is deleted (default 64)"
    )
    parser.add_argument("--dir", default=None, help="disk: where to write (default: the temp dir)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.kind == "flood" and not args.target:
        parser.error("flood needs --target URL")
    if args.duration is None:
        args.duration = 0.0 if args.kind == "demo" else 60.0
    run = _Run(args.duration)
    # PID 1 in a container ignores SIGTERM unless it installs a handler.
    signal.signal(signal.SIGTERM, lambda *_: run.stop.set())
    signal.signal(signal.SIGINT, lambda *_: run.stop.set())
    return WORKLOADS[args.kind](args, run)


if __name__ == "__main__":
    sys.exit(main())
