"""`dragon inject`: ask an LEI's collector to start a real fault, and wait for its answer.

The command is one QoS 1 message on ``dragon/<lei>/inject/<host>``; the collector answers on
``dragon/<lei>/injections`` with ``started``, or ``rejected``/``failed`` and a reason. We
subscribe to the answers before sending, so the command's own answer cannot be missed, and exit
0 only once the fault has started. Without this, a command the ACL refused, that no collector
heard, or that named a host no collector emulates vanished while we printed success.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from typing import Any

from dragon.config import ConfigError
from dragon.messages import codec, topics
from dragon.messages.schemas import FaultInjection, InjectionEvent
from dragon.mqtt import NO_MATCHING_SUBSCRIBERS, connect, content_type_of, one_shot_client, publish_once
from dragon.service.known import load_from_env
from dragon.settings import MqttSettings, ServiceSettings, check_id

DEFAULT_WAIT_S = 15.0
MAX_WAIT_S = 3600.0
EXIT_STARTED, EXIT_NOT_STARTED, EXIT_BAD_INPUT = 0, 1, 2
# Waiting for the LEI's retained verdicts, to name its hosts when one is unknown: up to this long
# for the first (an LEI with none has no detector), then this long for the rest of the burst.
VERDICTS_WAIT_S, VERDICTS_BURST_S = 2.0, 0.2


def run(args: Any) -> int:
    """The `dragon inject` command; ``args`` holds host, kind, lei, duration, intensity and wait."""
    command = FaultInjection(
        id=uuid.uuid4().hex[:12], kind=args.kind, duration_s=args.duration, intensity=args.intensity, ts=time.time()
    )
    try:
        command.check()
        settings = load_from_env(MqttSettings)
        # The LEI as the services read it (DRAGON_LEI), so one environment serves them and this command.
        lei = args.lei or load_from_env(ServiceSettings).lei
        for name, value in (("--lei", lei), ("host", args.host)):
            check_id(name, value)
        if not 0 < args.wait <= MAX_WAIT_S:  # also refuses nan; inf would overflow Event.wait
            raise ValueError(f"--wait must be in (0, {MAX_WAIT_S:g}] seconds, got {args.wait:g}")
    except (ConfigError, ValueError) as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    try:
        with AnswerWatch(settings, lei, command.id) as answers:
            refused = _send(settings, lei, args.host, command, answers)
            if refused:
                return _fail(refused, EXIT_NOT_STARTED)
            answer = answers.wait(args.wait)
    except ValueError as exc:  # settings that cannot make a client (TLS files)
        return _fail(str(exc), EXIT_BAD_INPUT)
    except (ConnectionError, TimeoutError) as exc:
        return _fail(str(exc), EXIT_NOT_STARTED)
    if answer is None:
        return _fail(_unanswered(lei, args.host, args.wait, answers.judged_hosts), EXIT_NOT_STARTED)
    print(json.dumps(answer.to_dict()))
    if answer.status != "started":
        return _fail(f"the collector {answer.status} the fault: {answer.reason}", EXIT_NOT_STARTED)
    return EXIT_STARTED


def _send(settings: MqttSettings, lei: str, host: str, command: FaultInjection, answers: AnswerWatch) -> str | None:
    """Publish the command; None once the broker passed it on, else why it did not."""
    topic = topics.inject(lei, host)
    reason = publish_once(settings, topic, codec.encode_json(command))
    if reason.value == NO_MATCHING_SUBSCRIBERS:  # each collector subscribes its own hosts' topics
        unheard = f"no collector of LEI {lei!r} injects into {host!r} (nobody subscribes to {topic})"
        return _unheard(unheard, host, answers.hosts_judged(VERDICTS_WAIT_S))
    if reason.is_failure:  # "Not authorized": the ACL lets the operator inject into its own LEI only
        return f"the broker refused {topic} from user {settings.username!r}: {reason}"
    return None


def _unanswered(lei: str, host: str, wait_s: float, judged: set[str]) -> str:
    return _unheard(f"no answer from a collector of LEI {lei!r} within {wait_s:g} s", host, judged)


def _unheard(message: str, host: str, judged: set[str]) -> str:
    """``message`` and why, as far as we can tell: the LEI's retained verdicts name the hosts it has."""
    if judged and host not in judged:
        hosts = ", ".join(sorted(judged))
        return f"{message}: the LEI's detector has verdicts for {hosts}, none for {host!r}: is that one of its hosts?"
    return (
        f"{message}: is {host!r} one of its emulated hosts, is its collector running, and does it inject faults "
        "(DRAGON_INJECTOR)?"
    )


def _fail(message: str, code: int) -> int:
    print(f"dragon inject: {message}", file=sys.stderr)
    return code


class AnswerWatch:
    """Subscribed to an LEI's injection reports while open; :meth:`wait` returns the one for ``command_id``."""

    def __init__(self, settings: MqttSettings, lei: str, command_id: str, subscribe_timeout_s: float = 10.0) -> None:
        self._settings, self._topic, self._id = settings, topics.injections(lei), command_id
        # The LEI's retained verdicts come with the subscription: the hosts its detector judges.
        self._verdicts, self.judged_hosts = topics.host_verdicts(lei), set[str]()
        self._subscribe_timeout_s = subscribe_timeout_s
        self._subscribed, self._answered, self._verdict_heard = threading.Event(), threading.Event(), threading.Event()
        self._answer: InjectionEvent | None = None
        self._refused = ""
        self._client = one_shot_client(settings, "dragon-inject")
        self._client.on_connect, self._client.on_subscribe = self._on_connect, self._on_subscribe
        self._client.on_message = self._on_message

    def __enter__(self) -> AnswerWatch:
        connect(self._client, self._settings)
        self._client.loop_start()
        if not self._subscribed.wait(self._subscribe_timeout_s):
            self.__exit__(None, None, None)
            raise TimeoutError(f"could not subscribe to {self._topic} within {self._subscribe_timeout_s:g} s")
        if self._refused:
            self.__exit__(None, None, None)
            raise ConnectionError(self._refused)
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()  # before loop_stop: it wakes the network thread at once
        self._client.loop_stop()

    def hosts_judged(self, wait_s: float) -> set[str]:
        """The hosts with a retained verdict. They come in a burst after the subscription, and the
        broker may answer a publish on another connection first: wait up to ``wait_s`` for the
        first, and a moment for the rest of the burst."""
        if self._verdict_heard.wait(wait_s):
            time.sleep(VERDICTS_BURST_S)
        return set(self.judged_hosts)

    def wait(self, timeout_s: float) -> InjectionEvent | None:
        self._answered.wait(timeout_s)
        return self._answer

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = f"the broker refused the connection as {self._settings.username!r}: {reason_code}"
            self._subscribed.set()
            return
        client.subscribe([(self._topic, 1), (self._verdicts, 0)])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        # Only the answers matter; an ACL that hides the verdicts leaves the hint out, nothing more.
        if reason_codes[0].is_failure:
            self._refused = f"the broker refused the subscription to {self._topic}: {reason_codes[0]}"
        self._subscribed.set()

    def _on_message(self, client, userdata, message) -> None:
        if message.topic != self._topic:  # a host's retained verdict: only its name is of use
            self.judged_hosts.add(topics.host_of(message.topic))
            self._verdict_heard.set()
            return
        content_type = content_type_of(message)
        try:
            event = codec.decode(InjectionEvent, message.payload, self._settings.max_payload_bytes, content_type)
        except codec.DecodeError:
            return  # not an answer we can read: not ours either
        if event.id == self._id and self._answer is None:
            self._answer = event
            self._answered.set()
