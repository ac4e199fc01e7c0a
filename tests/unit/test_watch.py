"""`dragon watch`: which topics it follows and how it reads each."""

from __future__ import annotations

import pytest

from dragon.cli import RepeatedCounters, main, schema_of, watched_topics
from dragon.messages.schemas import (
    FaultEvent,
    InjectionEvent,
    MigrationEvent,
    PlanDecision,
    Schedule,
    ServiceCounters,
)

pytestmark = pytest.mark.unit


def test_watch_follows_faults_and_injections_and_with_moves_what_moves_tasks():
    assert watched_topics("lei1", moves=False) == ["dragon/faults/lei1/+", "dragon/lei1/injections"]
    assert watched_topics("+", moves=True)[2:] == [
        "dragon/fed/+/decision",
        "dragon/+/migrations/events",
        "dragon/+/tasks",
    ]
    assert watched_topics("lei1", moves=False, counters=True)[2:] == ["dragon/+/+/counters"]


@pytest.mark.parametrize(
    ("topic", "schema"),
    [
        ("dragon/faults/lei1/h1", FaultEvent),
        ("dragon/lei1/injections", InjectionEvent),
        ("dragon/fed/lei1/decision", PlanDecision),
        ("dragon/lei1/migrations/events", MigrationEvent),
        ("dragon/lei1/tasks", Schedule),
        ("dragon/detector/detector-1/counters", ServiceCounters),
    ],
)
def test_each_watched_topic_is_read_with_its_schema(topic, schema):
    assert schema_of(topic) is schema


def test_counters_republished_unchanged_are_shown_once():
    repeated = RepeatedCounters()
    counters = ServiceCounters("detector", "d1", ts=10.0, started_ts=1.0, counters={"windows_scored": 3})
    topic = "dragon/detector/d1/counters"
    assert repeated(topic, counters) is False
    assert repeated(topic, ServiceCounters("detector", "d1", 110.0, 1.0, {"windows_scored": 3})) is True  # refresh
    assert repeated("dragon/detector/d2/counters", counters) is False  # another instance
    assert repeated(topic, ServiceCounters("detector", "d1", 120.0, 1.0, {"windows_scored": 4})) is False
    assert repeated(topic, ServiceCounters("detector", "d1", 130.0, 125.0, {"windows_scored": 4})) is False  # restarted
    assert repeated("dragon/faults/lei1/h1", object()) is False  # anything else is always shown


def test_watch_and_inject_say_why_they_cannot_reach_the_broker(monkeypatch, capsys):
    monkeypatch.setenv("DRAGON_MQTT_HOST", "127.0.0.1")
    monkeypatch.setenv("DRAGON_MQTT_PORT", "1")  # nothing listens on port 1
    assert main(["watch", "--timeout", "1"]) == 1
    assert main(["inject", "h1", "cpu", "--wait", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("cannot reach the broker at 127.0.0.1:1") == 2, err
    monkeypatch.setenv("DRAGON_MQTT_TLS", "true")
    monkeypatch.setenv("DRAGON_MQTT_CA_FILE", "/no/such/ca.pem")
    assert main(["watch", "--timeout", "1"]) == 2 and main(["inject", "h1", "cpu"]) == 2
    assert capsys.readouterr().err.count("DRAGON_MQTT_CA_FILE") == 2


def test_inject_says_which_hosts_an_lei_has_when_nobody_answered():
    from dragon.inject_command import _unanswered

    assert "detector has verdicts for h1, h2, none for 'h9'" in _unanswered("lei1", "h9", 3, {"h2", "h1"})
    # A host the LEI has (its collector may not inject), or an LEI whose verdicts we did not see.
    for judged in ({"h1", "h9"}, set()):
        assert "is 'h9' one of its emulated hosts" in _unanswered("lei1", "h9", 3, judged)
