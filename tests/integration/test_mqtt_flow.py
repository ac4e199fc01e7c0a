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

from dragon.messages import codec, topics
from dragon.messages.schemas import ServiceCounters
from dragon.mqtt import Incoming, MqttClient
from dragon.testing.lei import LeiStack
from dragon.testing.listener import Listener

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


def test_counters_are_published_retained_while_they_change_and_on_stop(brokers):
    """What a service counts reaches operators (read-only ``viewer``) without a restart."""
    settings = dataclasses.replace(brokers.mqtt_settings("detector"), counters_interval_s=0.5)
    client = MqttClient(settings, "detector", "counterstest")
    topic = topics.service_counters("detector", "counterstest")

    def counters(message) -> ServiceCounters:
        return codec.decode(ServiceCounters, message.payload, 65536, message.content_type)

    with Listener(brokers.mqtt_settings("viewer"), [topic]) as listener:
        client.start()
        try:
            assert client.wait_connected(15)
            client.counters.add("dropped_malformed", 2)
            (first, *_) = listener.wait_for(lambda m: counters(m).counters == {"dropped_malformed": 2}, 5)
            published = len(listener.matching(lambda m: True))  # an empty report may have come first
            time.sleep(4 * settings.counters_interval_s)  # unchanged: nothing new
            assert len(listener.matching(lambda m: True)) == published
            client.counters.add("windows_scored", 5)
        finally:
            client.stop()  # publishes what changed since, before going offline
        listener.wait_for(lambda m: counters(m).counters == {"dropped_malformed": 2, "windows_scored": 5}, 5)
    report = counters(first)
    assert (report.service, report.instance, first.content_type) == ("detector", "counterstest", codec.JSON)
    assert report.started_ts <= report.ts <= time.time()
    # Retained: a tool that subscribes later still gets the last counters.
    with Listener(brokers.mqtt_settings("viewer"), [topic]) as late:
        (message, *_) = late.wait_for(lambda m: m.retain, 5)
        assert counters(message).counters == {"dropped_malformed": 2, "windows_scored": 5}
