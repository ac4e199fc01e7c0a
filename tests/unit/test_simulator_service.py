"""The simulator service driven as the broker would drive it, without one: messages in through its
MQTT client's dispatch, what it publishes recorded where the client would hand it to paho."""

from __future__ import annotations

import dataclasses
import time
from types import SimpleNamespace

import pytest
import structlog

from dragon.messages import codec
from dragon.messages.schemas import ForecastSample, Schedule, SimRequest, TaskPlacement
from dragon.mqtt import Incoming
from dragon.simulator import service as simulator_module
from dragon.simulator.service import Simulator

from .test_simulator import delivered, sample, simulator_service

pytestmark = pytest.mark.unit

BEHIND_S = 120.0  # a Pi without a real-time clock, no NTP yet


class Sent:
    """What the service published, by topic, in order."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes, *_args, **_options) -> None:
        self.messages.append((topic, payload))

    def forecasts(self, host: str) -> list[ForecastSample]:
        topic = f"dragon/a/hosts/{host}/forecast"
        return [codec.decode(ForecastSample, payload, 65536) for to, payload in self.messages if to == topic]


def started(monkeypatch: pytest.MonkeyPatch) -> tuple[Simulator, Sent]:
    """A simulator subscribed as it is in service, publishing into a Sent."""
    service, sent = simulator_service(), Sent()
    service.init_mqtt()
    monkeypatch.setattr(service.mqtt, "publish", sent.publish)
    return service, sent


@pytest.fixture
def simulator(monkeypatch: pytest.MonkeyPatch) -> tuple[Simulator, Sent]:
    return started(monkeypatch)


def deliver(service: Simulator, topic: str, message) -> None:
    service.mqtt._dispatch([delivered(topic, message)])


def deliver_sample(service: Simulator, host: str, ts: float, tasks=()) -> None:
    deliver(service, f"dragon/a/hosts/{host}/sample", sample("a", host, 0.3, tasks, ts=ts))


def behind_and_live(service: Simulator, host: str, now: float) -> None:
    """``host`` runs BEHIND_S behind our clock, and its samples came live before ``now``."""
    service.view.observe(sample("a", host, 0.3, ts=now - BEHIND_S - 3), now - 2)
    service.view.observe(sample("a", host, 0.3, ts=now - BEHIND_S - 2), now - 1)


def schedule(ts: float, host: str = "h1") -> Schedule:
    return Schedule("a", ts, (TaskPlacement("t1", "c1", host, since=ts - 0.1),))


# --- requests -----------------------------------------------------------------------
def request(response_topic: str) -> Incoming:
    payload = codec.encode(SimRequest(id="r1", kind="next_window"))
    return Incoming("dragon/a/sim/request", payload, 1, False, codec.MSGPACK, response_topic=response_topic)


def test_a_reply_topic_the_broker_would_refuse_is_not_answered_but_counted(simulator):
    """The ACL lets the simulator write one level under its response prefix only: an answer to
    dragon/a/sim/response/app/q1 would be dropped by the broker unseen, and counted as answered."""
    service, sent = simulator
    service.view.observe(sample("a", "h1", 0.3, ts=time.time()), time.time())
    service.on_request(request("dragon/a/sim/response/app/q1"))
    assert sent.messages == [] and service.counters.snapshot() == {"requests": 1, "requests_unanswerable": 1}
    service.on_request(request("dragon/a/sim/response/app"))
    assert [topic for topic, _ in sent.messages] == ["dragon/a/sim/response/app"]
    assert service.counters.snapshot()["answered"] == 1


# --- forecasts --------------------------------------------------------------------
def samples_between_republished_schedules(service: Simulator, now: float) -> None:
    """h1, BEHIND_S behind, samples three times; its LEI's schedule comes, then is republished."""
    behind_and_live(service, "h1", now)
    deliver(service, "dragon/a/tasks", schedule(now - 1))
    deliver_sample(service, "h1", now - BEHIND_S, [("t1", 0.2)])
    deliver_sample(service, "h1", now - BEHIND_S + 1, [("t1", 0.2)])
    deliver(service, "dragon/a/tasks", dataclasses.replace(schedule(now - 1), ts=now - 0.5))  # unchanged
    deliver_sample(service, "h1", now - BEHIND_S + 2, [("t1", 0.2)])


def test_forecasts_of_a_host_whose_clock_runs_behind_are_stamped_on_its_clock_in_order(simulator, monkeypatch):
    """Stamped with the newest schedule's arrival (our clock, ahead of the host's), the forecasts of
    consecutive samples shared one stamp until the migrator republished, and the detector judged
    only the first. Each is stamped with its sample's time: newer with every sample, and the same
    on a replica that takes the same messages in."""
    service, sent = simulator
    now = time.time()
    samples_between_republished_schedules(service, now)
    first, *forecasts = sent.forecasts("h1")  # the first: the schedule's, revising the live sample's
    assert [f.ts for f in forecasts] == [now - BEHIND_S, now - BEHIND_S + 1, now - BEHIND_S + 2]
    assert first.ts < forecasts[0].ts

    replica, its_sent = started(monkeypatch)
    samples_between_republished_schedules(replica, now)
    assert [f.ts for f in its_sent.forecasts("h1")] == [f.ts for f in sent.forecasts("h1")]


def test_a_forecast_revised_after_a_move_supersedes_its_samples_and_not_the_next_samples(simulator):
    """A task moves off a host whose clock runs behind, after its sample: the forecast made again
    (the task's demand gone) must be judged in place of the one made before the move, and must not
    hide the forecast of the host's next sample, which the detector would then drop as stale."""
    service, sent = simulator
    now = time.time()
    behind_and_live(service, "h1", now)
    deliver_sample(service, "h2", now)  # h2 keeps our time
    deliver_sample(service, "h1", now - BEHIND_S, [("t1", 0.2)])
    deliver(service, "dragon/a/tasks", schedule(now, host="h2"))  # t1 moved to h2
    deliver_sample(service, "h1", now - BEHIND_S + 1)
    before, revised, after = sent.forecasts("h1")
    assert before.based_on_ts == revised.based_on_ts == now - BEHIND_S
    assert revised.tasks == () and before.tasks == ("t1",)
    assert before.ts < revised.ts < after.ts
    assert sent.forecasts("h2")[-1].tasks == ("t1",)


# --- samples --------------------------------------------------------------------------
def test_a_sample_no_newer_than_its_hosts_newest_is_refused_counted_and_logged(simulator):
    """Redelivered, or its host's clock stepped back: it tells nothing new, and forecasting again
    from the newest sample would publish a forecast the detector has judged already."""
    service, sent = simulator
    now = time.time()
    deliver_sample(service, "h1", now)
    with structlog.testing.capture_logs() as logs:
        deliver_sample(service, "h1", now)  # redelivered
        deliver_sample(service, "h1", now - 30)  # the host's clock stepped back 30 s
    assert len(sent.forecasts("h1")) == 1
    counters = service.counters.snapshot()
    assert counters["dropped_stale"] == 2 and counters["forecasts"] == 1
    # Logged once a minute at most: a broker's redelivery brings a burst.
    assert [(e["event"], e["host"], e["behind_s"]) for e in logs] == [("sample_not_newer_than_its_hosts_last", "h1", 0)]


def test_what_is_kept_to_stamp_revisions_is_forgotten_with_hosts_that_fell_silent(simulator, monkeypatch):
    """A simulator runs for months: its revision counts must not grow with every host ever seen."""
    service, _ = simulator
    clock = [time.time()]
    ours = SimpleNamespace(time=lambda: clock[0], perf_counter=time.perf_counter)
    monkeypatch.setattr(simulator_module, "time", ours)
    for host in ("h1", "h2"):
        service.view.observe(sample("a", host, 0.3, ts=clock[0]), clock[0])
    service.publish_forecasts(None, revised=False)
    assert set(service._revisions) == {"h1", "h2"}
    clock[0] += 60  # h1 silent for a minute of 1 s samples
    service.view.observe(sample("a", "h2", 0.3, ts=clock[0]), clock[0])
    service.publish_forecasts({"h2"}, revised=False)
    assert set(service._revisions) == {"h2"}


def test_replicas_share_the_requests_and_keep_no_session_while_away(simulator):
    """Scaled, every replica answered every request; with a session kept while away, the broker
    would queue a share of them for the session a recreated replica left."""
    service, _ = simulator
    assert ("$share/simulator/dragon/a/sim/request", 1) in service.mqtt._subscriptions
    assert "dragon/a/sim/request" in service.mqtt._retired  # an older version's plain subscription
    assert service.mqtt.settings.session_expiry_s == 0
