"""A host with a collector of its own logs in as its own user, which speaks for that host alone,
over the broker's TLS listener, trusting the LEI's CA (compose/mosquitto/broker.conf)."""

from __future__ import annotations

import dataclasses
import secrets as tokens
import time

import pytest

from dragon.messages import codec, topics
from dragon.messages.schemas import HostMetrics, HostSample
from dragon.mqtt import MqttClient
from dragon.testing.lei import LeiStack
from dragon.testing.listener import Listener, publish

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def brokers(tmp_path_factory, repo):
    stack = LeiStack(
        lei=f"rc{tokens.token_hex(3)}",
        hosts=["h1"],
        workdir=tmp_path_factory.mktemp("rc"),
        mosquitto_conf=repo / "compose" / "mosquitto" / "broker.conf",
    )
    try:
        stack.start_brokers(remote_hosts=("pi",))
        stack.certify_test_address()
        yield stack
    finally:
        stack.stop()


def sample_of(lei: str, host: str) -> bytes:
    return codec.encode(HostSample(lei, host, time.time(), 1, 1.0, HostMetrics(0.2, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0), ()))


def test_a_remote_collector_publishes_its_own_host_and_no_other(brokers):
    lei, own = brokers.lei, brokers.mqtt_settings("collector-pi")
    with Listener(brokers.mqtt_settings("viewer"), [f"dragon/{lei}/hosts/+/sample"]) as listener:
        assert not publish(own, topics.host_sample(lei, "pi"), sample_of(lei, "pi"), codec.MSGPACK).is_failure
        listener.wait_for(lambda m: m.topic == topics.host_sample(lei, "pi"), 10)
        for host in ("h1", "other"):  # the broker's collector's host, and any other
            reason = publish(own, topics.host_sample(lei, host), sample_of(lei, host), codec.MSGPACK)
            assert str(reason) == "Not authorized", (host, reason)
    # ... nor is the broker's own collector user the remote host's any more.
    reason = publish(brokers.mqtt_settings("collector"), topics.host_sample(lei, "pi"), sample_of(lei, "pi"))
    assert str(reason) == "Not authorized", reason


def test_a_remote_collector_reaches_the_broker_over_tls_trusting_the_lei_ca_only(brokers):
    lei, over_tls = brokers.lei, brokers.mqtt_settings("collector-pi", tls=True)
    with Listener(brokers.mqtt_settings("viewer"), [f"dragon/{lei}/hosts/+/sample"]) as listener:
        assert not publish(over_tls, topics.host_sample(lei, "pi"), sample_of(lei, "pi"), codec.MSGPACK).is_failure
        listener.wait_for(lambda m: m.topic == topics.host_sample(lei, "pi"), 10)
    # The same ACL on the TLS listener as on the plain one.
    assert str(publish(over_tls, topics.host_sample(lei, "h1"), sample_of(lei, "h1"))) == "Not authorized"
    # A client that trusts only the system's CAs stops before it sends its password.
    with pytest.raises(ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        publish(dataclasses.replace(over_tls, ca_file=""), topics.host_sample(lei, "pi"), b"x")
    # Plain MQTT on the TLS port gets nowhere.
    with pytest.raises((ConnectionError, TimeoutError)):
        publish(dataclasses.replace(over_tls, tls=False), topics.host_sample(lei, "pi"), b"x")


def test_a_remote_collector_reports_its_own_status_and_no_other_collectors(brokers):
    own = brokers.mqtt_settings("collector-pi")
    assert not publish(own, "dragon/collector/pi/available", b"online").is_failure
    assert str(publish(own, "dragon/collector/broker-node/available", b"offline")) == "Not authorized"


def test_a_service_counts_and_logs_the_publishes_the_broker_refuses(brokers, capsys):
    """A collector whose user may not publish a host's samples must not fall silent unseen (the
    service's own client, over TLS as a remote collector connects)."""
    client = MqttClient(brokers.mqtt_settings("collector-pi", tls=True), "collector", "pi")
    client.start()
    try:
        assert client.wait_connected(10)
        for _ in range(3):
            client.publish(topics.host_sample(brokers.lei, "h1"), b"x").wait_for_publish(5)
        client.publish(topics.host_sample(brokers.lei, "pi"), b"x").wait_for_publish(5)
        assert client.counters.snapshot().get("publish_refused") == 3
    finally:
        client.stop()
    logged = capsys.readouterr()
    assert (logged.out + logged.err).count("mqtt_publish_refused") == 1  # once a minute, not per message
