"""The simulator service: answers co-simulation requests over MQTT v5 request/response, and
forecasts each host of its LEI's next sample for the detector's predicted mode.

It keeps the federation's current state from every host sample this broker carries, so a
request names only what it asks about: candidate decisions (``evaluate``) or a schedule change
(``next_window``). The answer goes to the request's response topic with its correlation data.

Every request gets an answer: a malformed, oversized or unanswerable one gets ``ok: false``
with the reason. The only requests left unanswered are those that name no response topic, or
one other than a single level under ``dragon/<lei>/sim/response/``: there is nowhere to answer
(the broker's ACL lets the simulator publish nowhere else, and drops what it refuses without a
word), so they are logged and counted.
"""

from __future__ import annotations

import time
from dataclasses import replace

import structlog

from dragon.messages import codec, topics
from dragon.messages.codec import DecodeError
from dragon.messages.schemas import HostSample, Schedule, SimRequest, SimResponse
from dragon.mqtt import Counters, Incoming, MqttClient
from dragon.service.lifecycle import Lifecycle
from dragon.simulator.answers import RequestError, answer, error_response, too_large_response
from dragon.simulator.config import SimulatorConfig
from dragon.simulator.forecasting import Revisions, forecast_samples, stamped
from dragon.simulator.view import co_simulator, follow_samples, follow_schedules, view_from

log = structlog.get_logger(__name__)

SERVICE = "simulator"
HEARTBEAT_S = 5.0


REQUEST_GROUP = "simulator"  # the shared subscription's group: every replica of the LEI's simulator


def shared_requests(lei: str) -> str:
    """The LEI's requests as a shared subscription: each goes to one replica."""
    return f"$share/{REQUEST_GROUP}/{topics.sim_request(lei)}"


class Simulator:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.lei = config.common.service.lei
        self.instance = config.common.service.instance_id
        self.lifecycle = Lifecycle(config.common.service.health_file)
        self.counters = Counters()
        self.response_prefix = topics.sim_responses(self.lei) + "/"
        self.view = view_from(config.cosim)
        self._revisions: Revisions = {}  # our hosts' forecasts, see stamped (MQTT worker only)

    # --- lifecycle --------------------------------------------------------------
    def run(self) -> None:
        self.lifecycle.install_signal_handlers()
        self.init_mqtt()
        self.start_mqtt()
        try:
            self.beat_until_stopped()
        finally:
            self.shutdown()

    def init_mqtt(self) -> None:
        # No session kept while away: the broker hands a shared subscription's messages in turn
        # to every session of the group, offline ones too, and the session a recreated replica
        # left (its client id is the container's host name) would swallow a share of the
        # requests for DRAGON_MQTT_SESSION_EXPIRY. A request sent while no replica runs is
        # lost, as its requester's timeout says; the view is in memory and starts afresh anyway.
        settings = replace(self.config.common.mqtt, session_expiry_s=0)
        self.mqtt = MqttClient(settings, SERVICE, self.instance, self.counters)
        follow_samples(self.mqtt, self.view, then=self.on_samples_taken)
        follow_schedules(self.mqtt, self.view, then=self.on_schedule_taken)
        # One replica answers each request (scaled, every one did); a session kept by an older
        # version still holds the plain subscription, dropped on resuming it.
        self.mqtt.retire(topics.sim_request(self.lei))
        self.mqtt.subscribe(shared_requests(self.lei), self.on_request, qos=1)

    def start_mqtt(self) -> None:
        self.mqtt.start()
        log.info("simulator_started", lei=self.lei, requests=topics.sim_request(self.lei))

    def beat_until_stopped(self) -> None:
        while not self.lifecycle.stop.wait(HEARTBEAT_S):
            self.lifecycle.healthy(self.mqtt.connected)

    def shutdown(self) -> None:
        self.lifecycle.clear()
        self.mqtt.stop()
        log.info("simulator_stopped", counters=self.counters.snapshot())

    # --- forecasts (predicted mode) --------------------------------------------------
    def on_samples_taken(self, samples: list[HostSample]) -> None:
        """Forecast the next sample of each of our hosts that just reported."""
        own = {sample.host for sample in samples if sample.lei == self.lei}
        if own:
            self.publish_forecasts(own, revised=False)

    def on_schedule_taken(self, schedule: Schedule) -> None:
        """A move changes what the hosts will see next: forecast ours again (a peer LEI's schedule
        may move a task off or onto one of them)."""
        self.publish_forecasts(None, revised=True)

    def publish_forecasts(self, hosts: set[str] | None, revised: bool) -> None:
        """Forecast ``hosts`` (None: all of our LEI's) and publish the forecasts; ``revised``: they
        replace earlier ones made from the same samples (a schedule changed), see :func:`stamped`."""
        try:
            snapshot = self.view.snapshot(time.time())
        except ValueError:
            return  # no fresh host: nothing to forecast from
        sim = co_simulator(self.config.cosim, snapshot)
        # Hosts out of the snapshot (stale, or gone) forecast nothing: their next sample, if one
        # comes, starts its revisions afresh, and nothing here grows with every host ever seen.
        fresh = {host for lei, host in snapshot.hosts if lei == self.lei}
        for host in self._revisions.keys() - fresh:
            del self._revisions[host]
        forecasts = forecast_samples(snapshot, sim, self.lei, hosts, self.instance)
        for forecast in stamped(forecasts, self._revisions, revised):
            self.mqtt.publish_message(topics.host_forecast(self.lei, forecast.host), forecast, qos=1)
            self.counters.add("forecasts")

    # --- requests ---------------------------------------------------------------
    def on_request(self, incoming: Incoming) -> None:
        self.counters.add("requests")
        if not self.answerable(incoming.response_topic):
            self.counters.add("requests_unanswerable")
            log.warning("sim_request_without_usable_response_topic", response_topic=incoming.response_topic[:200])
            return
        started = time.perf_counter()
        as_json = codec.is_json(incoming.payload, incoming.content_type)  # answered as it was asked
        response, payload = self.encoded(self.respond(incoming), as_json)
        content_type = codec.JSON if as_json else codec.MSGPACK
        self.mqtt.publish(
            incoming.response_topic,
            payload,
            qos=1,
            content_type=content_type,
            correlation_data=incoming.correlation_data,
        )
        self.counters.add("answered" if response.ok else f"refused_{response.reason}")
        log.info(
            "sim_request_answered",
            id=response.id,
            ok=response.ok,
            reason=response.reason or None,
            kind=response.kind or None,
            decisions=len(response.verdicts),
            ms=round((time.perf_counter() - started) * 1e3, 2),
        )

    def answerable(self, response_topic: str) -> bool:
        """A response topic one level under our prefix, no wildcard: the ACL lets us write
        ``dragon/<lei>/sim/response/+`` only, and paho refuses to publish to a wildcard. An answer
        to a topic deeper down would be dropped by the broker, unseen, and its requester wait for ever."""
        if not response_topic.startswith(self.response_prefix):
            return False
        requester = response_topic[len(self.response_prefix) :]
        return requester != "" and not set("/+#") & set(requester)

    def encoded(self, response: SimResponse, as_json: bool) -> tuple[SimResponse, bytes]:
        """The response and the exact bytes to send; an answer that cannot be sent becomes an error."""
        encode = codec.encode_json if as_json else codec.encode
        try:
            payload = encode(response)
        except ValueError:  # JSON has no infinity: a forecast overflowed (absurd sample values)
            response = error_response(response.id, "invalid", "the answer holds non-finite numbers", self.instance)
            return response, encode(response)
        limit = self.config.common.mqtt.max_payload_bytes
        if len(payload) > limit:
            response = too_large_response(response, len(payload), limit, self.instance)
            payload = encode(response)
        return response, payload

    def respond(self, incoming: Incoming) -> SimResponse:
        """The answer to one request: a result, or an error response saying why there is none."""
        try:
            request = codec.decode(
                SimRequest, incoming.payload, self.config.common.mqtt.max_payload_bytes, incoming.content_type
            )
        except DecodeError as exc:
            self.mqtt.drop(incoming, exc)
            return error_response("", exc.reason, str(exc), self.instance)
        try:
            snapshot = self.view.snapshot(time.time())
        except ValueError as exc:
            return error_response(request.id, "no_state", str(exc), self.instance)
        try:
            response = answer(request, snapshot, co_simulator(self.config.cosim, snapshot), self.config.max_decisions)
        except RequestError as exc:
            return error_response(request.id, exc.reason, str(exc), self.instance)
        return replace(response, simulator=self.instance)
