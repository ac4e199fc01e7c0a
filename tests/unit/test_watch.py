"""`dragon watch`: which topics it follows and how it reads each."""

from __future__ import annotations

import pytest

from dragon.cli import schema_of, watched_topics
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
