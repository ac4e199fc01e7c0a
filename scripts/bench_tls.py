"""What MQTT over TLS costs a remote collector: connect time and a sample's round trip, plain vs TLS.

A real LEI's Mosquitto (the deployment's broker.conf: password file, ACL, the TLS listener with
the certificate `dragon secrets` makes) in a container. A remote collector's user connects over
the plain listener and over TLS, trusting the LEI's CA, and publishes host samples of the size
the collector sends at QoS 1, waiting for each acknowledgement (what bounds a collector's
throughput). The modes alternate in ``--rounds`` rounds so that a noisy machine hits both alike.

    TESTCONTAINERS_RYUK_DISABLED=true .venv/bin/python scripts/bench_tls.py --samples 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import platform
import secrets as tokens
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from dragon.messages import codec, topics
from dragon.messages.schemas import HostMetrics, HostSample, TaskUsage
from dragon.mqtt import connect, one_shot_client
from dragon.settings import MqttSettings
from dragon.testing.lei import LeiStack

REPO = Path(__file__).resolve().parents[1]
HOST = "pi"


def a_sample(lei: str, seq: int) -> bytes:
    """A host sample as a collector with four tasks sends it (msgpack)."""
    tasks = tuple(TaskUsage(id=f"t{i}", name=f"task-{i}", cpu=0.1 * i, ram_bytes=64e6 * i) for i in range(4))
    metrics = HostMetrics(0.42, 0.55, 0.01, 1.2e5, 3.4e5, 2.1e4, 1.9e4)
    return codec.encode(HostSample(lei, HOST, time.time(), seq, 10.0, metrics, tasks))


def one_round(settings: MqttSettings, lei: str, samples: int) -> dict[str, float | list[float]]:
    """Connect, publish ``samples`` samples one at a time at QoS 1, disconnect: the times in ms."""
    client = one_shot_client(settings, "bench-tls")
    acked, connected = threading.Event(), threading.Event()
    client.on_connect = lambda *args: connected.set()
    client.on_publish = lambda *args: acked.set()
    started = time.perf_counter()
    connect(client, settings)
    client.loop_start()
    if not connected.wait(15):
        raise TimeoutError("no CONNACK within 15 s")
    connect_ms = (time.perf_counter() - started) * 1e3
    round_trips = []
    topic = topics.host_sample(lei, HOST)
    for seq in range(samples):
        payload = a_sample(lei, seq)
        acked.clear()
        sent = time.perf_counter()
        client.publish(topic, payload, qos=1)
        if not acked.wait(10):
            raise TimeoutError(f"no PUBACK for sample {seq} within 10 s")
        round_trips.append((time.perf_counter() - sent) * 1e3)
    client.disconnect()
    client.loop_stop()
    return {"connect_ms": connect_ms, "round_trips_ms": round_trips}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000, help="samples per mode and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, plain and TLS alternating")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    if args.samples < 1 or args.rounds < 1:
        parser.error("--samples and --rounds must be at least 1")

    with tempfile.TemporaryDirectory() as workdir:
        stack = LeiStack(
            f"tls{tokens.token_hex(3)}", ["h1"], Path(workdir), REPO / "compose" / "mosquitto" / "broker.conf"
        )
        try:
            stack.start_brokers(remote_hosts=(HOST,))
            stack.certify_test_address()
            plain = stack.mqtt_settings(f"collector-{HOST}")
            modes = {"plain": plain, "tls": stack.mqtt_settings(f"collector-{HOST}", tls=True)}
            results: dict[str, list[dict]] = {mode: [] for mode in modes}
            for round_ in range(args.rounds):
                for mode, settings in modes.items():
                    results[mode].append(one_round(settings, stack.lei, args.samples))
                    print(f"round {round_ + 1} {mode}: done", flush=True)
        finally:
            stack.stop()
    report = {"machine": platform.processor() or platform.machine(), "samples": args.samples, "modes": {}}
    for mode, rounds in results.items():
        trips = np.concatenate([r["round_trips_ms"] for r in rounds])
        report["modes"][mode] = {
            "connect_ms_median": round(statistics.median(r["connect_ms"] for r in rounds), 2),
            "round_trip_ms_p50": round(float(np.percentile(trips, 50)), 3),
            "round_trip_ms_p99": round(float(np.percentile(trips, 99)), 3),
            "samples_per_s": round(len(trips) / (trips.sum() / 1e3), 1),
            "round_p50s_ms": [round(float(np.percentile(r["round_trips_ms"], 50)), 3) for r in rounds],
        }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
