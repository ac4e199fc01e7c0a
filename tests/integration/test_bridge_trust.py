"""What a peer's broker sends back over the bridge that carries this LEI's topics to it reaches
neither this LEI's broker nor another peer: Mosquitto checks no ACL on a bridge it holds and routes
what comes over it to its other bridges, so a broker holding its own bridges would take a fault
injection (it starts containers) or a forged verdict from whoever answers a bridge, and one relay
holding every bridge would pass this LEI's forged verdicts on to its other peers.

The peers here are a few lines of MQTT in this process that answer the relay's bridges; one sends
what no honest broker would: messages its bridge never subscribed to.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from dragon import secrets
from dragon.messages import codec, topics
from dragon.messages.schemas import HostMetrics, HostSample
from dragon.testing.lei import LeiStack
from dragon.testing.listener import Listener, publish

pytestmark = pytest.mark.integration

BRIDGE_TIMEOUT_S = 30  # the relay's bridge retries with backoff (restart_timeout 1 30)
QUIET_S = 3  # what the forged messages had to reach a subscriber


class HostilePeer:
    """Answers one bridge: acknowledges its CONNECT and SUBSCRIBEs, records the topics it sends
    out, and publishes ``forged`` (topic, payload) back once the bridge has sent something."""

    def __init__(self, forged: list[tuple[str, bytes]]) -> None:
        self.forged = forged
        self.received: list[tuple[str, bytes]] = []
        self.forged_sent = threading.Event()
        self._server = socket.create_server(("0.0.0.0", 0))
        self.port = self._server.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        connection, _ = self._server.accept()
        with connection:
            connection.settimeout(BRIDGE_TIMEOUT_S)
            while True:
                kind, body = _read_packet(connection)
                if kind is None:
                    return
                if kind >> 4 == 1:  # CONNECT
                    connection.sendall(b"\x20\x02\x00\x00")
                elif kind >> 4 == 8:  # SUBSCRIBE (a bridge with topics "in"): granted
                    connection.sendall(b"\x90\x03" + body[:2] + b"\x01")
                elif kind >> 4 == 3:  # PUBLISH from the relay: this LEI's shared topics
                    (length,) = struct.unpack("!H", body[:2])
                    qos = (kind >> 1) & 0x03
                    payload = body[2 + length + (2 if qos else 0) :]
                    self.received.append((body[2 : 2 + length].decode(), payload))
                    if qos:  # acknowledge
                        connection.sendall(b"\x40\x02" + body[2 + length : 4 + length])
                    if not self.forged_sent.is_set():
                        for topic, payload in self.forged:
                            connection.sendall(_publish_packet(topic, payload))
                        self.forged_sent.set()

    def close(self) -> None:
        self._server.close()


def _read_packet(connection: socket.socket) -> tuple[int | None, bytes]:
    header = connection.recv(1)
    if not header:
        return None, b""
    length, shift = 0, 0
    while True:
        byte = connection.recv(1)[0]
        length += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    body = b""
    while len(body) < length:
        chunk = connection.recv(length - len(body))
        if not chunk:
            return None, b""
        body += chunk
    return header[0], body


def _publish_packet(topic: str, payload: bytes) -> bytes:
    """A QoS 0 PUBLISH, retained (a forged verdict would stay)."""
    name = topic.encode()
    body = struct.pack("!H", len(name)) + name + payload
    length, remaining = b"", len(body)
    while True:
        byte, remaining = remaining % 128, remaining // 128
        length += bytes([byte | (0x80 if remaining else 0)])
        if not remaining:
            break
    return b"\x31" + length + body


@pytest.fixture
def stack(tmp_path, repo) -> Iterator[LeiStack]:
    conf = repo / "compose" / "mosquitto" / "broker.conf"
    lei = LeiStack(f"trust{int(time.time()) % 100000}", ["h1"], tmp_path, conf)
    try:
        lei.start_brokers(peers=("evil", "honest"))
        yield lei
    finally:
        lei.stop()


def test_what_a_peers_broker_sends_back_over_this_leis_bridge_reaches_nobody_else(stack):
    forged_verdict = b"forged verdict"
    forged = [
        (topics.inject(stack.lei, "h1"), b'{"id": "evil1", "kind": "cpu", "duration_s": 600}'),
        (topics.host_health(stack.lei, "h1"), forged_verdict),  # a topic the other peer's bridge carries
        (topics.host_sample("evil", "x1"), b"forged sample"),
    ]
    evil, honest = HostilePeer(forged), HostilePeer([])
    try:
        gateway = stack.docker.networks.get(stack.network.name).attrs["IPAM"]["Config"][0]["Gateway"]
        for name, peer in (("evil", evil), ("honest", honest)):
            bridge = stack.bridges_dir / f"{name}.conf"
            secrets.write_bridge(bridge, stack.lei, name, f"{gateway}:{peer.port}", "pw", None)
            bridge.chmod(0o644)  # the test may not run as root
        stack.restart("relay", "relay: ")
        watched = [f"dragon/{stack.lei}/#", "dragon/evil/#"]
        own_sample = topics.host_sample(stack.lei, "h1")
        with Listener(stack.mqtt_settings("viewer"), watched) as listener:
            sample = HostSample(stack.lei, "h1", time.time(), 1, 1.0, HostMetrics(0.1, 0.1, 0, 0, 0, 0, 0))
            deadline = time.monotonic() + BRIDGE_TIMEOUT_S
            # The bridges carry this LEI's samples out...
            while not (evil.forged_sent.is_set() and any(t == own_sample for t, _ in honest.received)):
                assert time.monotonic() < deadline, stack.logs("relay")[-3000:]
                publish(stack.mqtt_settings("collector"), own_sample, codec.encode(sample))
                time.sleep(1)
            time.sleep(QUIET_S)
            # ... and what came back reached no subscriber of the LEI's broker, nor the other peer.
            arrived = {message.topic for message in listener.messages}
        assert arrived <= {own_sample}, arrived
        assert all(payload != forged_verdict for _, payload in honest.received), honest.received
    finally:
        evil.close()
        honest.close()


def test_a_bridge_file_the_relay_cannot_read_is_reported_and_the_others_still_run(stack):
    """`dragon bridge` run as a user who cannot give the file to the relay's group leaves one the
    relay cannot read: it started a Mosquitto with no bridge to that peer, and said nothing."""
    gateway = stack.docker.networks.get(stack.network.name).attrs["IPAM"]["Config"][0]["Gateway"]
    for name in ("honest", "evil"):
        bridge = stack.bridges_dir / f"{name}.conf"
        secrets.write_bridge(bridge, stack.lei, name, f"{gateway}:9", "pw", None)
        bridge.chmod(0o644 if name == "honest" else 0o000)  # the relay runs as user mosquitto
    stack.restart("relay", "relay: 1 bridge")
    logs = stack.logs("relay")
    assert "relay: cannot use /mosquitto/bridges/evil.conf" in logs, logs[-3000:]
    assert "relay: 1 bridge(s) running: honest" in logs, logs[-3000:]
