"""Flow control of the shared MQTT client against the deployment's real Mosquitto.

Mosquitto 2.0.11 overshoots the Receive Maximum a client asks for once acknowledgements
flow (eclipse-mosquitto/mosquitto#2301); the client must bound its own queue so that a
flood waits in the broker's persistent queue, not in the service's memory.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from dragon.messages import codec, topics
from dragon.messages.schemas import ServiceCounters
from dragon.mqtt import GONE_RETAINED_S, Incoming, MqttClient
from dragon.testing.lei import LeiStack
from dragon.testing.listener import Listener, publish

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
            time.sleep(4 * settings.counters_interval_s)  # unchanged, and no refresh due yet: nothing new
            assert len(listener.matching(lambda m: True)) == published
            client.counters.add("windows_scored", 5)
        finally:
            client.stop()  # publishes what changed since, before going offline
        # The stop's own copy, kept a day; a refresh may have carried the same counts just before.
        final_counts = {"dropped_malformed": 2, "windows_scored": 5}
        (last,) = listener.wait_for(lambda m: counters(m).counters == final_counts and m.expiry_s > 3600, 5)
        time.sleep(4 * settings.counters_interval_s)
        assert listener.matching(lambda m: True)[-1] == last  # nothing after it: the reporter stopped first
    report = counters(first)
    assert (report.service, report.instance, first.content_type) == ("detector", "counterstest", codec.JSON)
    assert report.started_ts <= report.ts <= time.time()
    # A running instance's counters expire unless refreshed (30 intervals); its last ones stay a day.
    # Longer than a refresh period (10 intervals), or they would be gone between refreshes.
    assert 10 * settings.counters_interval_s < first.expiry_s <= 30 * settings.counters_interval_s
    assert GONE_RETAINED_S - 60 < last.expiry_s <= GONE_RETAINED_S
    # Retained: a tool that subscribes later still gets the last counters.
    with Listener(brokers.mqtt_settings("viewer"), [topic]) as late:
        (message, *_) = late.wait_for(lambda m: m.retain, 5)
        assert counters(message).counters == {"dropped_malformed": 2, "windows_scored": 5}


# A service that dies: it is killed with SIGKILL, so it sends no DISCONNECT and no last counters.
CRASHING_SERVICE = """
import json, sys, time
from dragon.mqtt import MqttClient
from dragon.settings import MqttSettings
client = MqttClient(MqttSettings(**json.loads(sys.argv[1])), "detector", "crashtest")
client.counters.add("windows_scored", 3)
client.start()
client.wait_connected(15)
time.sleep(600)
"""


def test_a_dead_instance_leaves_offline_for_a_day_and_its_counters_expire(brokers):
    """Every re-created container is a new instance: what a dead one leaves must not stay for ever."""
    settings = dataclasses.replace(brokers.mqtt_settings("detector"), counters_interval_s=0.2)  # refresh 2 s
    counters_topic = topics.service_counters("detector", "crashtest")
    availability = topics.availability("detector", "crashtest")
    service = subprocess.Popen([sys.executable, "-c", CRASHING_SERVICE, json.dumps(dataclasses.asdict(settings))])
    try:
        with Listener(brokers.mqtt_settings("viewer"), [counters_topic, availability]) as listener:
            # Unchanged counters are refreshed while the instance runs, each with a short expiry.
            refreshed = listener.wait_for(lambda m: m.topic == counters_topic, 15, count=2)
            assert all(2 < m.expiry_s <= 6 for m in refreshed)  # beyond the 2 s refresh period
            reports = [codec.decode(ServiceCounters, m.payload, 65536, m.content_type) for m in refreshed]
            assert reports[0].counters == reports[1].counters == {"windows_scored": 3}
            assert reports[0].ts < reports[1].ts  # the same counts, published again
            service.kill()
            (offline, *_) = listener.wait_for(lambda m: m.topic == availability and m.payload == b"offline", 10)
            assert GONE_RETAINED_S - 60 < offline.expiry_s <= GONE_RETAINED_S
            died = time.time()
    finally:
        service.kill()
        service.wait(10)
    time.sleep(max(0.0, died + 7 - time.time()))  # past the last refresh's 6 s
    with Listener(brokers.mqtt_settings("viewer"), [counters_topic, availability]) as late:
        late.wait_for(lambda m: m.topic == availability, 5)  # the will: retained, for a day
        time.sleep(1)
        assert late.matching(lambda m: m.topic == counters_topic) == []  # expired on the broker


def test_a_stopping_client_finishes_its_batch_and_leaves_the_rest_to_its_next_session(brokers):
    """What the batch in hand publishes (a fault event whose transition it recorded) goes out
    before the client disconnects; what it had not begun comes again to the next session."""
    lei, sent = brokers.lei, [str(i).encode() for i in range(20)]
    settings = dataclasses.replace(brokers.mqtt_settings("detector"), receive_maximum=4)
    handled: list[bytes] = []
    began = threading.Event()
    client = MqttClient(settings, "detector", "stoptest")

    def slow(batch: list[Incoming]) -> None:
        began.set()
        time.sleep(1.0)  # stop() is called meanwhile
        handled.extend(m.payload for m in batch)
        client.publish(topics.fault_event(lei, "h1"), b"answer to " + batch[-1].payload)

    client.subscribe_batch(topics.host_samples(lei), slow, qos=1)
    with Listener(brokers.mqtt_settings("viewer"), [topics.fault_event(lei, "h1")]) as listener:
        client.start()
        assert client.wait_connected(15)
        time.sleep(0.5)  # the subscription is in place
        flood(brokers.mqtt_settings("collector"), topics.host_sample(lei, "h1"), len(sent))
        assert began.wait(10)
        client.stop()
        listener.wait_for(lambda m: m.payload == b"answer to " + handled[-1], 5)
    assert 0 < len(handled) < len(sent)
    rest: list[bytes] = []
    again = MqttClient(settings, "detector", "stoptest")  # the same instance: its session
    again.subscribe_batch(topics.host_samples(lei), lambda batch: rest.extend(m.payload for m in batch), qos=1)
    again.start()
    try:
        deadline = time.monotonic() + 15
        while set(handled) | set(rest) != set(sent) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        again.stop()
    assert set(handled) | set(rest) == set(sent)


def test_the_broker_keeps_to_itself_what_no_handler_would_read(brokers):
    """A payload far over DRAGON_MAX_PAYLOAD is never delivered (the client's MQTT v5 Maximum
    Packet Size): queued unread, a flood of them would hold the broker's 1 MiB limit each. One just
    over the limit is still delivered, for the codec to drop and count; the session goes on."""
    settings = dataclasses.replace(brokers.mqtt_settings("detector"), max_payload_bytes=1000)
    got: list[bytes] = []
    client = MqttClient(settings, "detector", "packetsize")
    client.subscribe_batch(topics.host_samples(brokers.lei), lambda batch: got.extend(m.payload for m in batch), qos=1)
    client.start()
    try:
        assert client.wait_connected(15)
        time.sleep(0.5)  # the subscription is in place
        publisher = brokers.mqtt_settings("collector")
        topic = topics.host_sample(brokers.lei, "h1")
        for payload in (b"a" * 200_000, b"b" * 1001, b"c"):
            publish(publisher, topic, payload)
        deadline = time.monotonic() + 10
        while b"c" not in got and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.stop()
    assert got == [b"b" * 1001, b"c"]


def test_a_filter_an_older_version_subscribed_is_dropped_from_the_resumed_session(brokers):
    """The broker keeps a persistent session's subscriptions and delivers a message once per
    filter it matches: a collector of before 2026-12-07 subscribed inject/+, one now its hosts'."""
    settings = brokers.mqtt_settings("collector")
    wildcard, own = topics.inject(brokers.lei, "+"), topics.inject(brokers.lei, "h1")
    older = MqttClient(settings, "collector", "retiring")
    older.subscribe(wildcard, lambda message: None)
    older.start()
    assert older.wait_connected(15)
    time.sleep(0.5)  # subscribed
    older.stop()
    got: list[str] = []
    newer = MqttClient(settings, "collector", "retiring")  # the same client id: the same session
    newer.subscribe(own, lambda message: got.append(message.topic))
    newer.retire(wildcard)
    newer.start()
    try:
        assert newer.wait_connected(15)
        time.sleep(0.5)
        operator = brokers.mqtt_settings("operator")
        publish(operator, own, b"x")
        publish(operator, topics.inject(brokers.lei, "h9"), b"y")
        time.sleep(1.0)
    finally:
        newer.stop()
    assert got == [own]  # once, and nothing of another host
