"""A real LEI shared by the integration tests: Mosquitto, Redis, a collector with two
emulated hosts and a detector that learns from their first seconds of normal operation."""

from __future__ import annotations

import secrets as tokens
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dragon.messages import codec
from dragon.messages.schemas import HostHealth
from dragon.testing.lei import LeiStack
from dragon.testing.listener import Listener

SAMPLE_INTERVAL_S = 0.5
HOSTS = ["h1", "h2"]

COLLECTOR_ENV = {
    "DRAGON_COLLECTOR_INTERVAL": str(SAMPLE_INTERVAL_S),
    "DRAGON_EMULATED_CPUS": "0.5",
    "DRAGON_EMULATED_MEMORY_MB": "256",
    "DRAGON_DEMO_TASKS": "1",
}
DETECTOR_ENV = {
    # Learn from ~20 s of normal operation instead of minutes (shrunk timers, not sleeps).
    "DRAGON_DETECTOR_WARMUP": "20",
    "DRAGON_DETECTOR_WARMUP_MIN_SAMPLES": "40",
    "DRAGON_DETECTOR_TRAIN_EPOCHS": "40",
}
MODEL_READY_TIMEOUT_S = 120


@contextmanager
def running_lei(
    tmp_path_factory, repo: Path, prefix: str, hosts: list[str], detector_env: dict[str, str]
) -> Iterator[LeiStack]:
    """A fresh LEI of ``hosts``, its detector serving a model learnt from their normal operation."""
    stack = LeiStack(
        lei=f"{prefix}{tokens.token_hex(3)}",
        hosts=hosts,
        workdir=tmp_path_factory.mktemp(prefix),
        mosquitto_conf=repo / "compose" / "mosquitto" / "broker.conf",
    )
    try:
        stack.start_brokers()
        stack.start_collector("collector", COLLECTOR_ENV)
        stack.start_detector("detector", detector_env)
        wait_until_scoring(stack)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def lei(tmp_path_factory, repo):
    with running_lei(tmp_path_factory, repo, "it", HOSTS, DETECTOR_ENV) as stack:
        yield stack


def wait_until_scoring(stack: LeiStack) -> None:
    """The detector publishes health only once it serves a model: wait for every host's."""
    with Listener(stack.mqtt_settings(), [f"dragon/{stack.lei}/hosts/+/health"]) as listener:
        for host in stack.hosts:
            listener.wait_for(lambda m, h=host: m.topic.endswith(f"/{h}/health"), MODEL_READY_TIMEOUT_S)


def health_of(message) -> HostHealth:
    return codec.decode(HostHealth, message.payload, 65536, message.content_type)
