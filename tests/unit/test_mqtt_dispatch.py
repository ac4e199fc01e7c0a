"""How a batch of received messages reaches the handlers (no broker: the batch is handed in)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from dragon.mqtt import Counters, MqttClient
from dragon.settings import MqttSettings

pytestmark = pytest.mark.unit


def message(topic: str) -> paho.MQTTMessage:
    received = paho.MQTTMessage(mid=1, topic=topic.encode())
    received.payload, received.qos = b"x", 0
    return received


def test_handlers_run_in_subscription_order_whatever_arrived_first():
    """The detector subscribes samples before forecasts: a forecast that came first in a batch
    must still be judged after the sample it was made from is stored."""
    client = MqttClient(MqttSettings(), "test", "t-1", Counters())
    calls: list[tuple[str, list[str]]] = []
    client.subscribe_batch("dragon/a/hosts/+/sample", lambda batch: calls.append(("samples", [m.topic for m in batch])))
    client.subscribe_batch(
        "dragon/a/hosts/+/forecast", lambda batch: calls.append(("forecasts", [m.topic for m in batch]))
    )
    client._dispatch(
        [
            message("dragon/a/hosts/h1/forecast"),
            message("dragon/a/hosts/h2/sample"),
            message("dragon/a/hosts/h2/forecast"),
        ]
    )
    assert calls == [
        ("samples", ["dragon/a/hosts/h2/sample"]),
        ("forecasts", ["dragon/a/hosts/h1/forecast", "dragon/a/hosts/h2/forecast"]),
    ]


def test_messages_for_a_broker_that_is_away_are_kept_up_to_a_bound_then_dropped_and_counted():
    """A broker away for a day must not grow a collector's memory by every sample meant for it."""
    client = MqttClient(MqttSettings(port=1, max_queued=10), "test", "t-queue", Counters())  # nothing listens
    infos = [client.publish("dragon/a/hosts/h1/sample", b"x") for _ in range(25)]
    assert [info.rc for info in infos].count(paho.MQTT_ERR_QUEUE_SIZE) == 15
    assert client.counters.snapshot()["publish_queue_full"] == 15


def test_a_message_every_reader_would_drop_as_too_large_is_refused_and_counted_at_the_sender():
    client = MqttClient(MqttSettings(port=1, max_payload_bytes=100), "test", "t-size", Counters())  # nothing listens
    assert client.publish("dragon/fed/a/decision", b"x" * 100).rc == paho.MQTT_ERR_NO_CONN  # queued
    refused = client.publish("dragon/fed/a/decision", b"x" * 101, token="d1")
    assert refused.rc == paho.MQTT_ERR_PAYLOAD_SIZE and client.acknowledged() == []
    assert client.counters.snapshot()["publish_too_large"] == 1
    assert len(client._client._out_messages) == 1  # only the first waits for the broker


def test_online_is_said_once_there_is_room_when_paho_s_queue_was_full_at_the_reconnect():
    """Back after a long absence, what waited for the broker fills paho's queue: the ``online``
    that replaces the Last Will's ``offline`` must not be lost, or the service looks offline."""
    client = MqttClient(MqttSettings(port=1, max_queued=3), "test", "t-online", Counters())  # nothing listens
    for _ in range(3):
        client.publish("dragon/a/hosts/h1/sample", b"x")
    connected = SimpleNamespace(session_present=False)
    client._handle_connect(client._client, None, connected, ReasonCode(PacketTypes.CONNACK, "Success"), None)
    waiting = client._client._out_messages
    assert [m.topic for m in waiting.values()] == ["dragon/a/hosts/h1/sample"] * 3  # no room for online
    waiting.clear()  # the broker acknowledged what waited
    client.publish("dragon/a/hosts/h1/sample", b"y")
    assert [(m.topic, m.payload) for m in waiting.values()] == [
        (client.availability_topic, b"online"),
        ("dragon/a/hosts/h1/sample", b"y"),
    ]
    client.publish("dragon/a/hosts/h1/sample", b"z")
    assert [m.payload for m in waiting.values()] == [b"online", b"y", b"z"]  # said once


def puback(client: MqttClient, mid: int, reason: str = "Success") -> None:
    """What paho's network thread calls when the broker answers message ``mid``."""
    client._handle_publish(None, None, mid, ReasonCode(PacketTypes.PUBACK, reason), None)


def test_a_tracked_publish_is_reported_once_the_broker_acknowledges_it_even_if_queued_while_away():
    """paho's receipt keeps MQTT_ERR_NO_CONN for a message queued while disconnected, after it was
    sent and acknowledged: the client reports acknowledgements itself."""
    client = MqttClient(MqttSettings(port=1), "test", "t-track", Counters())  # nothing listens
    queued = client.publish("dragon/faults/a/h1", b"start", token="e1")
    untracked = client.publish("dragon/a/hosts/h1/health", b"h")
    assert queued.rc == paho.MQTT_ERR_NO_CONN and client.acknowledged() == []
    puback(client, untracked.mid)
    puback(client, queued.mid)  # sent after the reconnect, acknowledged
    assert client.acknowledged() == [("e1", True)] and client.acknowledged() == []
    # Acknowledged before publish() had returned: still reported.
    early = client._client._mid_generate() + 1
    puback(client, early)
    assert client.publish("dragon/faults/a/h2", b"end", token="e2").mid == early
    assert client.acknowledged() == [("e2", True)]
    # Refused: for good (not authorised), or for now (over the broker's quota), to be sent again.
    refused, over_quota = (client.publish("dragon/faults/a/h3", b"x", token=t) for t in ("e3", "e4"))
    puback(client, refused.mid, "Not authorized")
    puback(client, over_quota.mid, "Quota exceeded")
    assert client.acknowledged() == [("e3", True), ("e4", False)]
    with pytest.raises(ValueError, match="QoS 1"):  # never answered: it would wait for ever
        client.publish("dragon/faults/a/h5", b"x", qos=0, token="e5")


def test_a_message_says_when_it_was_received_not_when_the_worker_took_it():
    """A detector behind on its queue must not take every host's samples for late."""
    client = MqttClient(MqttSettings(), "test", "t-received", Counters())
    got: list[float] = []
    client.subscribe_batch("dragon/a/hosts/+/sample", lambda batch: got.extend(m.received for m in batch))
    queued = message("dragon/a/hosts/h1/sample")
    queued.timestamp = time.monotonic() - 5.0  # paho received it 5 s ago
    client._dispatch([queued])
    assert got and abs(time.time() - 5.0 - got[0]) < 0.5


def test_a_message_whose_topic_cannot_be_read_is_dropped_and_counted_and_the_worker_goes_on():
    """paho hands on a topic that is not UTF-8 (Mosquitto refuses one; another broker may not).
    Reading it raises: the worker, the one thread that empties the queue, must live on."""
    client = MqttClient(MqttSettings(), "test", "t-unreadable", Counters())
    got: list[str] = []
    client.subscribe_batch("dragon/a/hosts/+/sample", lambda batch: got.extend(m.topic for m in batch))
    worker = threading.Thread(target=client._work_loop, daemon=True)
    worker.start()
    unreadable = paho.MQTTMessage(mid=1, topic=b"dragon/a/hosts/\xff/sample")
    client._work.put(unreadable)
    client._work.put(message("dragon/a/hosts/h1/sample"))
    deadline = time.monotonic() + 5.0
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    client._work.put(None)
    worker.join(5.0)
    assert got == ["dragon/a/hosts/h1/sample"]
    assert client.counters.snapshot()["dropped_unreadable"] == 1


def test_a_shared_subscriptions_messages_reach_its_handler_under_their_own_topic():
    """The broker delivers a $share/<group>/<filter> subscription's messages under their topic,
    which the shared filter itself never matches: they were dropped as unrouted."""
    client = MqttClient(MqttSettings(), "test", "t-1", Counters())
    got: list[str] = []
    client.subscribe_batch("$share/simulator/dragon/a/sim/request", lambda batch: got.extend(m.topic for m in batch))
    client._dispatch([message("dragon/a/sim/request")])
    assert got == ["dragon/a/sim/request"] and client.counters.snapshot().get("unrouted") is None
    assert client._subscriptions == [("$share/simulator/dragon/a/sim/request", 1)]  # what the broker is asked
    for malformed in ("$share//dragon/a", "$share/group", "$share/g+/dragon/a"):
        with pytest.raises(ValueError, match="shared subscription"):
            client.subscribe_batch(malformed, got.extend)
