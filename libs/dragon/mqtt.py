"""The one MQTT client every service uses (paho-mqtt 2.x, MQTT v5).

What it adds to paho:

* a persistent session (``clean_start=False`` plus a session expiry) under a
  stable client id, so QoS 1 messages published while we were away are kept
  by the broker and delivered on reconnect;
* reconnect with exponential backoff (paho's own loop) and re-subscription on
  every successful connect; a refused connect is logged and never treated as
  connected;
* availability: a retained ``online`` on connect and a Last Will ``offline``,
  and ``on_connected`` hooks through which a service republishes its state; what a
  service can do (say, the migrator's CRIU support) rides on the ``online``
  message as MQTT v5 user properties (:meth:`MqttClient.advertise`);
* dispatch by topic filter to handlers that run on one worker thread, not on
  paho's network thread, so slow work never starves keep-alives. QoS 1
  messages are acknowledged only after their handler returned, so a crash
  mid-message means redelivery, not loss;
* a bounded worker queue (``receive_maximum`` messages). We ask the broker for
  that Receive Maximum, but Mosquitto 2.0.11 (Debian bookworm) overshoots it
  once acknowledgements flow (eclipse-mosquitto/mosquitto#2301): measured here,
  a detector under a flood held 32,000 messages in memory. So the network
  thread waits for room instead; TCP back-pressure then keeps the backlog in
  the broker's persistent queue, where it belongs;
* batch handlers receive every message that is waiting at once (up to
  ``MAX_BATCH``), so a service can amortise Redis round trips and model calls;
* counters: what the service counts (drops by reason, handler errors, its own work) is
  published retained on ``dragon/<service>/<instance>/counters`` while it changes and on a
  clean stop, so an operator sees drops as they happen, not only in the log;
* retained state expires (MQTT v5 Message Expiry): every re-created container is a new
  instance, and the broker would otherwise keep each one's ``offline`` and counters for ever.
  A running instance republishes its counters now and then even when they do not change, and
  they expire a few of those periods later, so they vanish soon after a crash; ``offline``
  (clean stop or Last Will) and the counters published on a clean stop stay a day;
* a handler that raises is logged with its topic and counted; the loop goes on.
  A handler that raises :class:`Unprocessed` leaves its messages unacknowledged,
  so the broker delivers them again after a reconnect.
"""

from __future__ import annotations

import collections
import math
import queue
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from dragon.logs import EveryInterval
from dragon.messages import codec, topics
from dragon.messages.codec import DecodeError
from dragon.messages.schema import Message
from dragon.messages.schemas import ServiceCounters, stamped_ahead
from dragon.settings import MqttSettings

log = structlog.get_logger(__name__)

ONLINE = b"online"
# A running instance republishes unchanged counters every this many counter intervals, and they
# expire after COUNTERS_EXPIRY_REFRESHES such periods: 100 s and 300 s at the default 10 s.
COUNTERS_REFRESH_INTERVALS = 10
COUNTERS_EXPIRY_REFRESHES = 3
# How long the broker keeps what a stopped or dead instance left: its offline and last counters.
GONE_RETAINED_S = 86400
MAX_EXPIRY_S = 2**32 - 1  # MQTT v5's Message Expiry Interval is a four-byte integer
OFFLINE = b"offline"
# Every client waits at most this long between two attempts to reach the broker again.
MAX_RECONNECT_DELAY_S = 30
REFUSAL_LOG_INTERVAL_S = 60.0  # refused publishes are counted each, logged at most once a minute


@dataclass(frozen=True)
class Incoming:
    """A received message as handlers see it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    content_type: str
    user_properties: dict[str, str] = field(default_factory=dict)
    response_topic: str = ""  # MQTT v5 request/response: where the requester wants the answer
    correlation_data: bytes = b""  # echoed in the answer so the requester can match it
    received: float = 0.0  # wall clock when paho received it (0: not known), however long it queued here


M = TypeVar("M", bound=Message)
Handler = Callable[[Incoming], None]
BatchHandler = Callable[[list[Incoming]], None]
MAX_BATCH = 256
# What an MQTT v5 PUBLISH holds besides its payload: the fixed header, the topic and the properties
# (content type, response topic, correlation data, user properties), all far below this.
PACKET_HEADROOM_BYTES = 8192
# Publish results that mean paho has the message, to send now or once it reconnects.
QUEUED = (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN)
# Acknowledgements kept of untracked messages, for a tracked one acknowledged before it was tracked.
RECENT_ACKS = 1024
# PUBACK reason codes that refuse a message for good (not authorised, topic name invalid, payload
# format invalid); others (over quota, unspecified) may go another time.
PERMANENT_REFUSALS = frozenset({0x87, 0x90, 0x99})
# How long stop() waits for the batch in hand (a handler waiting on Redis gives up on the stop).
WORKER_STOP_S = 10.0


class Unprocessed(Exception):
    """Raised by a handler that could not finish (e.g. shutting down): do not acknowledge."""


class Counters:
    """Thread-safe named counters (dropped messages by reason, handler errors…)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: collections.Counter[str] = collections.Counter()

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


SHARED_PREFIX = "$share/"


def routing_filter(filter_: str) -> str:
    """The filter a subscription's messages match: a shared subscription's without ``$share/<group>/``."""
    if not filter_.startswith(SHARED_PREFIX):
        return filter_
    group, _, shared = filter_[len(SHARED_PREFIX) :].partition("/")
    if not group or not shared or set("+#") & set(group):
        raise ValueError(f"a shared subscription is $share/<group>/<filter>, got {filter_!r}")
    return shared


class MqttClient:
    """A connected service's MQTT endpoint. Create, ``subscribe``/``on_connected``, then ``start``."""

    def __init__(self, settings: MqttSettings, service: str, instance: str, counters: Counters | None = None) -> None:
        self.settings = settings
        self.service = service
        self.instance = instance
        self.counters = counters or Counters()
        self.availability_topic = topics.availability(service, instance)
        self.counters_topic = topics.service_counters(service, instance)
        self._started_ts = time.time()
        self._published_counters: dict[str, int] | None = None
        self._counters_published_at = 0.0  # time.monotonic() of the last counters published
        # The reporter thread and stop() both publish counters: one at a time, so the reporter's
        # short-lived copy can never reach the broker after stop()'s final one.
        self._counters_lock = threading.Lock()
        self._subscriptions: list[tuple[str, int]] = []
        self._retired: list[str] = []  # filters an older version subscribed (retire)
        self._handlers: list[tuple[str, BatchHandler]] = []
        self._on_connected: list[Callable[[], None]] = []
        self._capabilities: dict[str, str] = {}
        self._work: queue.Queue[paho.MQTTMessage | None] = queue.Queue(maxsize=settings.receive_maximum)
        self._connected = threading.Event()
        self._online_owed = False  # the retained ``online`` found paho's queue full: said at the next publish
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self._refusals = EveryInterval(REFUSAL_LOG_INTERVAL_S)
        self._queue_full = EveryInterval(REFUSAL_LOG_INTERVAL_S)
        # Acknowledgements of tracked publishes (:meth:`publish`'s ``token``), collected on paho's
        # thread, taken by :meth:`acknowledged`. paho's own receipt cannot say it: a message
        # queued while disconnected keeps its error code after it has been sent and acknowledged.
        self._tracked: dict[int, Hashable] = {}  # mid -> token
        self._recent_acks: collections.deque[int] = collections.deque(maxlen=RECENT_ACKS)  # untracked mids
        self._acked: collections.deque[tuple[Hashable, bool]] = collections.deque()  # (token, final)
        self._track_lock = threading.Lock()
        self._client = self._make_client()

    # --- set-up -----------------------------------------------------------------
    def _make_client(self) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{self.service}-{self.instance}",
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        authenticate(client, self.settings)
        # A broker away for a day would otherwise grow our memory by every message meant for it.
        client.max_queued_messages_set(self.settings.max_queued)
        will = Properties(PacketTypes.WILLMESSAGE)
        will.MessageExpiryInterval = GONE_RETAINED_S
        client.will_set(self.availability_topic, OFFLINE, qos=1, retain=True, properties=will)
        client.reconnect_delay_set(min_delay=1, max_delay=MAX_RECONNECT_DELAY_S)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        return client

    def subscribe(self, filter_: str, handler: Handler, qos: int = 1) -> None:
        """Route messages matching ``filter_`` to ``handler``, one at a time."""
        self.subscribe_batch(filter_, lambda batch: _each(handler, batch, self.counters), qos)

    def subscribe_batch(self, filter_: str, handler: BatchHandler, qos: int = 1) -> None:
        """Like :meth:`subscribe`, but ``handler`` gets all waiting messages as one list.

        A shared subscription (``$share/<group>/<filter>``, MQTT v5 4.8.2) gives each message
        to one subscriber of the group; it is routed by its filter, which is what its messages'
        topics match (the broker delivers them under their own topic).
        """
        self._subscriptions.append((filter_, qos))
        self._handlers.append((routing_filter(filter_), handler))

    def retire(self, filter_: str) -> None:
        """Unsubscribe ``filter_`` whenever a session is resumed: an older version subscribed it,
        and the broker keeps a persistent session's subscriptions, delivering a message once for
        each one it matches. Call before :meth:`start`."""
        self._retired.append(filter_)

    def on_connected(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` (on the worker thread) after every successful connect."""
        self._on_connected.append(hook)

    def advertise(self, capabilities: dict[str, str]) -> None:
        """Carry ``capabilities`` as user properties on the retained ``online`` (call before ``start``)."""
        self._capabilities = dict(capabilities)

    def start(self) -> None:
        self._worker = threading.Thread(target=self._work_loop, name=f"{self.service}-mqtt-worker", daemon=True)
        self._worker.start()
        if self.settings.counters_interval_s > 0:
            reporter = threading.Thread(target=self._report_counters, name=f"{self.service}-counters", daemon=True)
            reporter.start()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry_s
        props.ReceiveMaximum = self.settings.receive_maximum
        # The broker discards, undelivered, what no handler here would read (the payload limit,
        # plus room for the topic and properties): read first, 256 queued messages of the
        # broker's 1 MiB limit would hold 256 MiB of a 4 GB device.
        props.MaximumPacketSize = self.settings.max_payload_bytes + PACKET_HEADROOM_BYTES
        self._client.connect_async(
            self.settings.host,
            self.settings.port,
            keepalive=self.settings.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self._client.loop_start()

    def stop(self) -> None:
        """Let the worker finish its batch, say ``offline``, disconnect cleanly (no Last Will).

        The batch in hand is finished while the connection is up, so what it publishes (a fault
        event whose transition it has just recorded) reaches the broker; the messages still
        queued are left unacknowledged, and the broker delivers them again to the next session.
        """
        self._stopping.set()
        if self._worker is not None:
            try:
                self._work.put_nowait(None)  # wakes an idle worker; a busy one sees _stopping
            except queue.Full:
                pass
            self._worker.join(timeout=WORKER_STOP_S)
            if self._worker.is_alive():
                log.warning("mqtt_worker_not_stopping", queued=self._work.qsize())
        self._discard_queued()  # unblocks paho's thread if a full queue held it
        if self._connected.is_set():
            # Sent after the batch's publishes, so its acknowledgement comes after theirs.
            self.publish_counters(wait_s=2, final=True)
            offline = self.publish(self.availability_topic, OFFLINE, retain=True, expiry_s=GONE_RETAINED_S)
            if offline.rc == paho.MQTT_ERR_SUCCESS:  # not when paho's queue is full
                offline.wait_for_publish(timeout=2)
        self._client.disconnect()
        self._client.loop_stop()

    def _discard_queued(self) -> None:
        """Drop what the worker will not take: unacknowledged, it comes again after a restart."""
        while True:
            try:
                self._work.get_nowait()
            except queue.Empty:
                return

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def queued(self) -> int:
        """Messages received and waiting for the worker (at most ``receive_maximum``)."""
        return self._work.qsize()

    # --- publishing ---------------------------------------------------------------
    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        content_type: str | None = None,
        correlation_data: bytes = b"",
        expiry_s: int | None = None,
        token: Hashable | None = None,
    ) -> paho.MQTTMessageInfo:
        """Publish; QoS 1 messages are queued by paho while disconnected and sent on reconnect.

        ``expiry_s``: the broker drops the message (a retained one too) after that many seconds.
        ``token``: :meth:`acknowledged` returns it once the broker has answered the message,
        however long that takes; QoS 1 or 2 only (the broker answers no QoS 0 message).
        """
        if token is not None and qos == 0:
            raise ValueError("a tracked publish needs QoS 1 or 2: the broker acknowledges no QoS 0 message")
        if len(payload) > self.settings.max_payload_bytes:
            return self._refuse_too_large(topic, len(payload))
        if self._online_owed and self._connected.is_set():
            self._say_online()
        props = None
        if content_type or correlation_data or expiry_s:
            props = Properties(PacketTypes.PUBLISH)
            if content_type:
                props.ContentType = content_type
            if correlation_data:
                props.CorrelationData = correlation_data
            if expiry_s:
                props.MessageExpiryInterval = expiry_s
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if token is not None and info.rc in QUEUED:
            self._track(info.mid, token)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            self.counters.add("publish_queue_full")
            held_back = self._queue_full.due()
            if held_back is not None:
                log.warning("mqtt_publish_queue_full", queued=self.settings.max_queued, similar_held_back=held_back)
        elif info.rc not in QUEUED:
            self.counters.add("publish_failed")
            log.warning("mqtt_publish_failed", topic=topic, rc=paho.error_string(info.rc))
        return info

    def _refuse_too_large(self, topic: str, size: int) -> paho.MQTTMessageInfo:
        """Every reader drops a message over DRAGON_MAX_PAYLOAD unread: refused here instead, where
        the log can name what was too large, rather than lost at every reader."""
        self.counters.add("publish_too_large")
        log.error("mqtt_publish_too_large", topic=topic, bytes=size, limit=self.settings.max_payload_bytes)
        refused = paho.MQTTMessageInfo(0)
        refused.rc = paho.MQTT_ERR_PAYLOAD_SIZE
        return refused

    def _track(self, mid: int, token: Hashable) -> None:
        with self._track_lock:
            if mid in self._recent_acks:  # acknowledged before publish() returned (as taken)
                self._recent_acks.remove(mid)
                self._acked.append((token, True))
            else:
                self._tracked[mid] = token

    def acknowledged(self) -> list[tuple[Hashable, bool]]:
        """The tracked publishes the broker answered since the last call: (token, final). Final:
        it took the message, or refused it for good (not authorised, say); not final: it refused
        it for now (over its quota), and the message may be sent again."""
        taken = []
        while self._acked:
            taken.append(self._acked.popleft())
        return taken

    def _handle_publish(self, client, userdata, mid, reason_code, properties) -> None:
        """The broker's acknowledgement of a QoS 1 message: a refusal (the ACL, say a collector
        publishing for a host that is not its own) would otherwise leave the service silent."""
        final = not reason_code.is_failure or reason_code.value in PERMANENT_REFUSALS
        with self._track_lock:
            token = self._tracked.pop(mid, None)
            if token is None:
                self._recent_acks.append(mid)
            else:
                self._acked.append((token, final))
        if reason_code.is_failure:
            self.counters.add("publish_refused")
            held_back = self._refusals.due()
            if held_back is not None:
                user, reason = self.settings.username, str(reason_code)
                log.warning("mqtt_publish_refused", user=user, reason=reason, similar_held_back=held_back)

    def publish_counters(self, wait_s: float = 0.0, final: bool = False) -> None:
        """Publish the counters (retained) if they changed or are due for a refresh; ``wait_s``: wait for the broker.

        ``final``: the instance is stopping; publish them anyway, to be kept as long as its ``offline``.
        """
        with self._counters_lock:
            if self._stopping.is_set() and not final:
                return  # stop() publishes the last ones
            snapshot = self.counters.snapshot()
            due = time.monotonic() - self._counters_published_at >= self._refresh_s
            if snapshot == self._published_counters and not (due or final):
                return
            report = ServiceCounters(self.service, self.instance, time.time(), self._started_ts, snapshot)
            info = self.publish(
                self.counters_topic,
                codec.encode_json(report),
                qos=1,
                retain=True,
                content_type=codec.JSON,
                expiry_s=self._counters_expiry_s(final),
            )
            if info.rc != paho.MQTT_ERR_SUCCESS:
                return
            self._published_counters = snapshot
            self._counters_published_at = time.monotonic()
        if wait_s > 0:
            info.wait_for_publish(timeout=wait_s)

    @property
    def _refresh_s(self) -> float:
        """How often unchanged counters are published again, so they do not expire (0: never)."""
        return COUNTERS_REFRESH_INTERVALS * self.settings.counters_interval_s

    def _counters_expiry_s(self, final: bool) -> int:
        """A day for the last counters of a clean stop (or without refreshes); else a few refreshes."""
        if final or not self._refresh_s:
            return GONE_RETAINED_S
        return min(MAX_EXPIRY_S, max(1, math.ceil(COUNTERS_EXPIRY_REFRESHES * self._refresh_s)))

    def _report_counters(self) -> None:
        """Every ``counters_interval_s``, while connected: the counters, if they changed or are due."""
        while not self._stopping.wait(self.settings.counters_interval_s):
            if self._connected.is_set():
                self.publish_counters()

    def publish_message(
        self,
        topic: str,
        message: Message,
        qos: int = 1,
        retain: bool = False,
        json: bool = False,
        correlation_data: bytes = b"",
        token: Hashable | None = None,
    ) -> paho.MQTTMessageInfo:
        """Publish a schema object as msgpack (or JSON) with its MQTT v5 content type; ``token``: as :meth:`publish`."""
        if json:
            payload, content_type = codec.encode_json(message), codec.JSON
        else:
            payload, content_type = codec.encode(message), codec.MSGPACK
        return self.publish(topic, payload, qos, retain, content_type, correlation_data, token=token)

    def decode_or_drop(self, cls: type[M], incoming: Incoming) -> M | None:
        """Validate a payload at the edge: a bad one is logged once, counted and dropped."""
        try:
            return codec.decode(cls, incoming.payload, self.settings.max_payload_bytes, incoming.content_type)
        except DecodeError as exc:
            self.drop(incoming, exc)
            return None

    def drop(self, incoming: Incoming, error: DecodeError) -> None:
        self.counters.add(f"dropped_{error.reason}")
        log.warning(
            "message_dropped",
            topic=incoming.topic,
            reason=error.reason,
            detail=error.detail[:200],
            size=len(incoming.payload),
        )

    def dropped_if_ahead(self, incoming: Incoming, ts: float, interval_s: float = 0.0) -> bool:
        """Drop ``incoming`` as ``future`` if it is stamped further ahead of our clock than skew
        explains (``schemas.stamped_ahead``): kept, it would outrank every real message of its
        source until that time. True if dropped."""
        now = time.time()
        if not stamped_ahead(ts, interval_s, now):
            return False
        self.drop(incoming, DecodeError("future", f"stamped {ts - now:.0f} s ahead of this clock"))
        return True

    # --- callbacks (paho's network thread) ----------------------------------------
    def _handle_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            # Never mark a refused connection as connected; paho retries with backoff.
            log.error("mqtt_connect_refused", reason=str(reason_code), host=self.settings.host, port=self.settings.port)
            return
        log.info("mqtt_connected", host=self.settings.host, session_present=bool(flags.session_present))
        if self._retired and flags.session_present:
            client.unsubscribe(self._retired)
        if self._subscriptions:
            client.subscribe([(f, paho.SubscribeOptions(qos=q)) for f, q in self._subscriptions])
        self._say_online()
        self._published_counters = None  # a broker that lost its retained messages gets them again
        self._connected.set()
        self._work.put(_RECONNECTED)

    def _handle_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        with self._track_lock:
            # No acknowledgement comes while away, and message ids wrap: an old one must not match.
            self._recent_acks.clear()
        if not self._stopping.is_set():
            log.warning("mqtt_disconnected", reason=str(reason_code))

    def _handle_message(self, client, userdata, message: paho.MQTTMessage) -> None:
        # Blocks while the queue is full: paho stops reading the socket until the worker
        # catches up (see the module docstring). Writes wait too, for about one batch.
        if not self._stopping.is_set():  # else left unacknowledged, for the next session
            self._work.put(message)

    def _say_online(self) -> None:
        """Replace the Last Will's retained ``offline``. Back from a long absence, paho's queue may
        still be full of what waited for the broker: then once there is room (the next publish),
        or the service would look offline for as long as it runs."""
        said = self._client.publish(
            self.availability_topic, ONLINE, qos=1, retain=True, properties=self._online_properties()
        )
        self._online_owed = said.rc not in QUEUED

    def _online_properties(self) -> Properties | None:
        if not self._capabilities:
            return None
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = list(self._capabilities.items())
        return props

    # --- worker thread ---------------------------------------------------------
    def _work_loop(self) -> None:
        pending: list[paho.MQTTMessage | None] = []  # a control item met while filling a batch
        while True:
            message = pending.pop() if pending else self._work.get()
            if message is None or self._stopping.is_set():
                return
            if message is _RECONNECTED:
                self._run_hooks()
                continue
            batch = [message]
            while len(batch) < MAX_BATCH:
                try:
                    more = self._work.get_nowait()
                except queue.Empty:
                    break
                if more is None or more is _RECONNECTED:
                    # Handled right after this batch, in order. Kept here, not put back:
                    # the queue may be full, and only this thread empties it.
                    pending.append(more)
                    break
                batch.append(more)
            try:
                self._dispatch(batch)
            except Exception:  # this thread alone empties the queue: it must outlive any batch
                self.counters.add("dispatch_errors")
                log.exception("mqtt_dispatch_failed", count=len(batch))

    def _run_hooks(self) -> None:
        for hook in self._on_connected:
            try:
                hook()
            except Exception:
                self.counters.add("hook_errors")
                log.exception("mqtt_on_connected_hook_failed", hook=getattr(hook, "__qualname__", repr(hook)))

    def _dispatch(self, batch: list[paho.MQTTMessage]) -> None:
        routed: dict[int, list[Incoming]] = collections.defaultdict(list)
        for message in batch:
            incoming = self._readable(message)
            if incoming is None:
                continue
            index = next(
                (i for i, (filter_, _) in enumerate(self._handlers) if paho.topic_matches_sub(filter_, incoming.topic)),
                None,
            )
            if index is None:
                self.counters.add("unrouted")
            else:
                routed[index].append(incoming)
        # Handlers run in subscription order, not in the order their first message came: a
        # service subscribes what others depend on first (the detector stores samples before
        # it judges the forecasts made from them, whichever arrived first in the batch).
        for index in sorted(routed):
            messages = routed[index]
            filter_, handler = self._handlers[index]
            try:
                handler(messages)
            except Unprocessed:
                log.info("mqtt_messages_left_unacknowledged", filter=filter_, count=len(messages))
                return
            except Exception:
                # One bad batch must never kill the loop.
                self.counters.add("handler_errors")
                log.exception("mqtt_handler_failed", filter=filter_, count=len(messages))
        for message in batch:
            if message.qos > 0:
                self._client.ack(message.mid, message.qos)

    def _readable(self, message: paho.MQTTMessage) -> Incoming | None:
        """The message as handlers read it; None, dropped and counted, if it cannot be read at all:
        paho hands on a topic that is not UTF-8, which another broker than Mosquitto may let through.
        Raised, it would end this thread, and every message after it would wait for ever."""
        try:
            return _incoming(message)
        except Exception as exc:  # whatever paho's message holds, the loop must go on
            self.counters.add("dropped_unreadable")
            topic = repr(getattr(message, "_topic", b""))[:200]  # its raw bytes: the property is what failed
            log.warning("message_dropped", topic=topic, reason="unreadable", detail=str(exc)[:200])
            return None


def _each(handler: Handler, batch: list[Incoming], counters: Counters) -> None:
    for incoming in batch:
        try:
            handler(incoming)
        except Unprocessed:
            raise
        except Exception:
            counters.add("handler_errors")
            log.exception("mqtt_handler_failed", topic=incoming.topic, size=len(incoming.payload))


_RECONNECTED = paho.MQTTMessage(mid=-1, topic=b"$internal/reconnected")


def _incoming(message: paho.MQTTMessage) -> Incoming:
    props = getattr(message, "properties", None)
    user_props = dict(getattr(props, "UserProperty", []) or []) if props is not None else {}
    return Incoming(
        topic=message.topic,
        payload=bytes(message.payload),
        qos=message.qos,
        retain=bool(message.retain),
        content_type=content_type_of(message),
        user_properties=user_props,
        response_topic=(getattr(props, "ResponseTopic", "") if props is not None else "") or "",
        correlation_data=bytes((getattr(props, "CorrelationData", b"") if props is not None else b"") or b""),
        # paho stamps a message with its monotonic clock on receipt.
        received=time.time() - (time.monotonic() - message.timestamp) if message.timestamp else 0.0,
    )


def one_shot_client(settings: MqttSettings, name: str) -> paho.Client:
    """A plain MQTT v5 client for a short task (a command, a watch): no session, no availability."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv5)
    authenticate(client, settings)
    return client


def authenticate(client: paho.Client, settings: MqttSettings) -> None:
    """The user and password, and TLS when the settings ask for it: every client of ours logs in so."""
    if settings.username:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls:
        client.tls_set_context(tls_context(settings))


def content_type_of(message: paho.MQTTMessage) -> str:
    """The MQTT v5 content type of a received message ("" when it has none)."""
    props = getattr(message, "properties", None)
    return (getattr(props, "ContentType", "") if props is not None else "") or ""


class _ClosedOnFailedHandshake(ssl.SSLSocket):
    """An SSL socket that closes itself when its handshake fails.

    paho wraps the TCP socket, then shakes hands; when the broker's certificate is refused it
    raises without closing the socket, which a client retrying every few seconds would leave to
    the garbage collector each time.
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # a non-blocking handshake not done yet, not a failed one
        except BaseException:
            self.close()
            raise


def tls_context(settings: MqttSettings) -> ssl.SSLContext:
    """Python's default client context: the broker's certificate must chain to ``ca_file`` (the
    system's CAs when empty) and name the host we connect to. ValueError for an unreadable CA file."""
    try:
        context = ssl.create_default_context(cafile=settings.ca_file or None)
    except (OSError, ssl.SSLError) as exc:  # the settings, not the network
        raise ValueError(f"DRAGON_MQTT_CA_FILE={settings.ca_file!r}: {exc}") from exc
    context.sslsocket_class = _ClosedOnFailedHandshake
    return context


def connect(client: paho.Client, settings: MqttSettings) -> None:
    """Open ``client``'s connection to the broker ``settings`` name; ConnectionError when it cannot."""
    try:
        client.connect(settings.host, settings.port, keepalive=settings.keepalive_s)
    except OSError as exc:
        raise ConnectionError(f"cannot reach the broker at {settings.host}:{settings.port}: {exc}") from exc


PUBLISH_TIMEOUT_S = 10.0
NO_MATCHING_SUBSCRIBERS = 0x10  # MQTT v5 PUBACK reason: accepted, but nobody subscribes to the topic


def publish_once(
    settings: MqttSettings,
    topic: str,
    payload: bytes,
    properties: Properties | None = None,
    retain: bool = False,
    timeout_s: float = PUBLISH_TIMEOUT_S,
) -> ReasonCode:
    """Connect as ``settings``, publish one QoS 1 message, disconnect; returns the broker's PUBACK reason.

    The broker acknowledges a publish its ACL denies too, with "Not authorized" (MQTT v5), and
    one nobody subscribes to with "No matching subscribers": the caller decides what it needs.
    Raises ConnectionError when the broker cannot be reached or refuses us, TimeoutError when
    no acknowledgement comes within ``timeout_s``.
    """
    client = one_shot_client(settings, "publish")
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties_):
        if reason_code.is_failure:
            outcome["refused"] = reason_code
            done.set()
        elif "sent" not in outcome:  # once: paho resends an unacknowledged message itself after a reconnect
            outcome["sent"] = reason_code
            try:
                client.publish(topic, payload, qos=1, retain=retain, properties=properties)
            except ValueError as exc:  # a topic with wildcards, a payload too large: raised to the caller
                outcome["invalid"] = exc
                done.set()

    def on_publish(client, userdata, mid, reason_code, properties_):
        outcome["acknowledged"] = reason_code
        done.set()

    client.on_connect, client.on_publish = on_connect, on_publish
    connect(client, settings)
    client.loop_start()
    try:
        if not done.wait(timeout_s):
            raise TimeoutError(f"no acknowledgement of {topic} from {settings.host}:{settings.port} in {timeout_s:g} s")
        if "refused" in outcome:
            raise ConnectionError(f"the broker refused the connection as {settings.username!r}: {outcome['refused']}")
        if "invalid" in outcome:
            raise outcome["invalid"]
        return outcome["acknowledged"]
    finally:
        client.disconnect()  # first: it wakes the network thread, which loop_stop() then joins at once
        client.loop_stop()
