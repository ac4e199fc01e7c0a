"""An MQTT subscriber that records what arrives, for tests and benchmarks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from dragon.mqtt import content_type_of, one_shot_client, publish_once
from dragon.settings import MqttSettings


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    content_type: str
    at: float  # time.time() on arrival
    correlation_data: bytes = b""
    user_properties: tuple[tuple[str, str], ...] = ()
    expiry_s: int | None = None  # MQTT v5 Message Expiry Interval left, as the broker forwarded it


class Listener:
    """Connects as ``settings`` and records every message on ``filters`` (QoS 1)."""

    def __init__(self, settings: MqttSettings, filters: list[str]) -> None:
        self.settings = settings
        self.filters = filters
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = one_shot_client(settings, "test")  # TLS too, when the settings ask for it
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 2)

    def __enter__(self) -> Listener:
        self.client.connect(self.settings.host, self.settings.port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(15):
            raise TimeoutError("listener did not subscribe within 15 s")
        return self

    def __exit__(self, *exc) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        # The callbacks are bound methods of this listener, which holds the client: a cycle that
        # only the garbage collector frees, finalising paho's wake-up socket pair before paho can
        # close it (an "unclosed socket" ResourceWarning, an error under our warning filters).
        # Breaking the cycle lets reference counting run paho's own clean-up right away.
        self.client.on_connect = self.client.on_message = self.client.on_subscribe = None

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe([(f, 1) for f in self.filters])

    def _on_message(self, client, userdata, message) -> None:
        props = message.properties
        content_type = content_type_of(message)
        correlation = bytes(getattr(props, "CorrelationData", b"") or b"") if props is not None else b""
        user_properties = tuple(getattr(props, "UserProperty", []) or []) if props is not None else ()
        expiry = getattr(props, "MessageExpiryInterval", None) if props is not None else None
        received = Received(
            message.topic,
            bytes(message.payload),
            bool(message.retain),
            content_type,
            time.time(),
            correlation,
            user_properties,
            expiry,
        )
        with self._cond:
            self.messages.append(received)
            self._cond.notify_all()

    def matching(self, predicate: Callable[[Received], bool]) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if predicate(m)]

    def wait_for(self, predicate: Callable[[Received], bool], timeout: float, count: int = 1) -> list[Received]:
        """Block until ``count`` recorded messages satisfy ``predicate``; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in self.messages if predicate(m)]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"only {len(found)} of {count} expected messages within {timeout} s")
                self._cond.wait(remaining)


def publish(
    settings: MqttSettings,
    topic: str,
    payload: bytes,
    content_type: str = "",
    response_topic: str = "",
    correlation_data: bytes = b"",
    retain: bool = False,
) -> ReasonCode:
    """Publish one QoS 1 message and wait until the broker has it; returns the broker's reason code
    (a test of the ACL reads "Not authorized" there).

    ``response_topic`` and ``correlation_data`` make it an MQTT v5 request.
    """
    props = Properties(PacketTypes.PUBLISH)
    if content_type:
        props.ContentType = content_type
    if response_topic:
        props.ResponseTopic = response_topic
    if correlation_data:
        props.CorrelationData = correlation_data
    return publish_once(settings, topic, payload, properties=props, retain=retain)
