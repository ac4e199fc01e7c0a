"""Flow control of the shared MQTT client against the deployment's real Mosquitto.

Mosquitto 2.0.11 overshoots the Receive Maximum a client asks for once acknowledgements
flow (eclipse-mosquitto/mosquitto#2301); the client must bound its own queue so that a
flood waits in the broker's persistent queue, not in the service's memory.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from dragon.messages import topics
from dragon.mqtt import Incoming, MqttClient
from dragon.testing.lei import LeiStack

pytestmark = pytest.mark.integration

RECEIVE_MAXIMUM = 32
FLOOD = 3000


@pytest.fixture(scope="module")
def brokers(tmp_path_factory, repo):
    stack = LeiStack(
        lei="flow",
        hosts=["h1"],
        workdir=tmp_path_factory.mktemp("flow"),
        mosquitto_conf=repo / "compose" / "mosquitto" / "broker.conf",
    )
    try:
        stack.start_brokers()
        yield stack
    finally:
        stack.stop()


class SlowConsumer:
    """A batch handler that takes its time and records how much waited in the client."""

    def __init__(self) -> None:
        self.client: MqttClient | None = None
        self.payloads: list[bytes] = []
        self.most_queued = 0
        self.done = threading.Event()

    def __call__(self, batch: list[Incoming]) -> None:
        self.most_queued = max(self.most_queued, self.client.queued)
        self.payloads += [m.payload for m in batch]
        time.sleep(0.005 * len(batch))  # ~200 messages/s: far slower than the flood
        if len(self.payloads) >= FLOOD:
            self.done.set()


def flood(settings, topic: str, count: int) -> None:
    publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id="flow-publisher", protocol=paho.MQTTv5)
    publisher.username_pw_set(settings.username, settings.password)
    publisher.max_inflight_messages_set(1000)
    publisher.connect(settings.host, settings.port)
    publisher.loop_start()
    try:
        infos = [publisher.publish(topic, str(i).encode(), qos=1) for i in range(count)]
        for info in infos:
            info.wait_for_publish(timeout=30)
    finally:
        publisher.disconnect()
        publisher.loop_stop()


def test_a_flood_waits_in_the_broker_not_in_the_client(brokers):
    settings = brokers.mqtt_settings("detector")
    settings = dataclasses.replace(settings, receive_maximum=RECEIVE_MAXIMUM)
    consumer = SlowConsumer()
    client = MqttClient(settings, "detector", "flowtest")
    consumer.client = client
    client.subscribe_batch(topics.host_samples(brokers.lei), consumer, qos=1)
    client.start()
    try:
        assert client.wait_connected(15)
        time.sleep(0.5)  # the subscription is in place
        flood(brokers.mqtt_settings("collector"), topics.host_sample(brokers.lei, "h1"), FLOOD)
        assert consumer.done.wait(60), f"only {len(consumer.payloads)} of {FLOOD} messages handled"
    finally:
        client.stop()
    assert sorted(consumer.payloads, key=int) == [str(i).encode() for i in range(FLOOD)]
    assert consumer.most_queued <= RECEIVE_MAXIMUM
