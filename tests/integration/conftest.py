"""A real LEI shared by the integration tests: Mosquitto, Redis, a collector with two
emulated hosts and a detector that learns from their first seconds of normal operation."""

from __future__ import annotations

import secrets as tokens
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import redis
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import ExecWaitStrategy

from dragon import config
from dragon.collector.docker_api import HOST_LABEL, LEI_LABEL, TASK_ID_LABEL, TASK_LABEL
from dragon.collector.emulation import EmulatedLei
from dragon.detector.config import DetectorConfig
from dragon.detector.gon import GonConfig, make_windows
from dragon.detector.learning import min_span
from dragon.detector.scorer import Scorer
from dragon.detector.service import Detector
from dragon.detector.train import train_from_series
from dragon.messages import codec, topics
from dragon.messages.schemas import HOST_METRICS, HostHealth, ServiceCounters
from dragon.migrator.journal import Step
from dragon.mqtt import MqttClient
from dragon.testing.lei import COLLECTOR_IMAGE, REDIS_IMAGE, REPORTED_LOG_LINES, LeiStack
from dragon.testing.listener import Listener

SAMPLE_INTERVAL_S = 0.5
HOSTS = ["h1", "h2"]
# A host of the shared LEI with a collector of its own, whose user the tests speak as.
REMOTE_HOST = "pi"

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
# An in-process detector that learns from a minute of recorded samples at once, in seconds.
LEARN_QUICKLY = {
    "DRAGON_DETECTOR_WARMUP": "1",
    "DRAGON_DETECTOR_WARMUP_MIN_SAMPLES": "10",
    "DRAGON_DETECTOR_TRAIN_EPOCHS": "2",
}
SLEEPER = ["python3", "-c", "import time\nwhile True: time.sleep(1)"]


@contextmanager
def running_lei(
    tmp_path_factory,
    repo: Path,
    prefix: str,
    hosts: list[str],
    detector_env: dict[str, str],
    remote_hosts: tuple[str, ...] = (),
) -> Iterator[LeiStack]:
    """A fresh LEI of ``hosts``, its detector serving a model learnt from their normal operation."""
    stack = LeiStack(
        lei=f"{prefix}{tokens.token_hex(3)}",
        hosts=hosts,
        workdir=tmp_path_factory.mktemp(prefix),
        mosquitto_conf=repo / "compose" / "mosquitto" / "broker.conf",
    )
    try:
        stack.start_brokers(remote_hosts=remote_hosts)
        stack.start_collector("collector", COLLECTOR_ENV)
        stack.start_detector("detector", detector_env)
        wait_until_scoring(stack)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def lei(tmp_path_factory, repo):
    with running_lei(tmp_path_factory, repo, "it", HOSTS, DETECTOR_ENV, remote_hosts=(REMOTE_HOST,)) as stack:
        yield stack


def wait_until_scoring(stack: LeiStack) -> None:
    """The detector publishes health only once it serves a model: wait for every host's."""
    with Listener(stack.mqtt_settings(), [f"dragon/{stack.lei}/hosts/+/health"]) as listener:
        for host in stack.hosts:
            listener.wait_for(lambda m, h=host: m.topic.endswith(f"/{h}/health"), MODEL_READY_TIMEOUT_S)


def health_of(message) -> HostHealth:
    return codec.decode(HostHealth, message.payload, 65536, message.content_type)


# A service publishes its counters every DRAGON_COUNTERS_INTERVAL (10 s by default) while they change.
COUNTERS_BOUND_S = 25


def live_counters(
    lei, service: str, enough: Callable[[dict[str, int]], bool] = lambda c: True, container: str | None = None
) -> dict[str, int]:
    """The counters a ``service`` container publishes (retained), once ``enough`` holds for them.

    ``container``: the name the stack started it under, when not the service's (a second detector).
    """
    instance = lei.containers[container or service].env["DRAGON_INSTANCE"]
    topic = topics.service_counters(service, instance)

    def counters_of(message) -> dict[str, int]:
        return codec.decode(ServiceCounters, message.payload, 65536, message.content_type).counters

    with Listener(lei.mqtt_settings("viewer"), [topic]) as listener:
        try:
            (message, *_) = listener.wait_for(lambda m: enough(counters_of(m)), COUNTERS_BOUND_S)
        except TimeoutError:
            seen = [counters_of(m) for m in listener.matching(lambda m: True)]
            raise AssertionError(f"{service}'s counters never held what was expected: {seen[-1:]}") from None
    return counters_of(message)


def fresh_health(
    lei, host: str, timeout: float = 30.0, quiet: bool = False, modes: tuple[str, ...] = ("observed",)
) -> None:
    """Wait until ``host``'s latest verdict in each of ``modes`` was computed from a sample taken after now.

    ``quiet``: and each of those latest verdicts is normal with no fault in force, at one moment,
    so that a fault injected next starts an event of its own in every mode (a false alarm still
    open would swallow its start).
    """
    now = time.time()
    topic_modes = {topics.host_health(lei.lei, host, mode): mode for mode in modes}
    deadline = time.monotonic() + timeout
    with Listener(lei.mqtt_settings(), list(topic_modes)) as listener:
        while True:
            latest = {
                topic_modes[m.topic]: health_of(m) for m in listener.matching(lambda m: not m.retain and m.at > now)
            }
            if len(latest) == len(modes) and (
                not quiet or all(v.label == 0 and v.faulty_since is None for v in latest.values())
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{host}: no {'quiet ' if quiet else ''}verdict in {modes} within {timeout} s: {latest}"
                )
            time.sleep(0.1)


@contextmanager
def bridged_brokers(
    tmp_path_factory, repo: Path, prefix: str, uncertified: str = ""
) -> Iterator[tuple[LeiStack, LeiStack, str]]:
    """Two LEIs' brokers (A: h1, h2; B: h3, h4), each bridging its topics to the other's as
    `dragon bridge` would do it.

    They share an internal network, the "WAN": internal, so taking a broker off it never touches
    the ports the test reaches it on. Yields both stacks and the WAN's name; removes everything.
    ``uncertified``: A dials B by this name, which B has on the WAN but its certificate lacks.
    """
    conf = repo / "compose" / "mosquitto" / "broker.conf"
    suffix = tokens.token_hex(3)
    a = LeiStack(f"{prefix}a{suffix}", ["h1", "h2"], tmp_path_factory.mktemp(f"{prefix}a"), conf)
    b = LeiStack(f"{prefix}b{suffix}", ["h3", "h4"], tmp_path_factory.mktemp(f"{prefix}b"), conf)
    wan = a.docker.networks.create(f"dragon-wan-{suffix}", internal=True, labels={"dragon.test": "true"})
    try:
        b.start_brokers(peers=(a.lei,))
        a.bridge_to(b, dial=uncertified)
        a.start_brokers(peers=(b.lei,))
        b.bridge_to(a)
        b.restart("relay", "relay: ")  # it reads its bridges at start
        a.join_wan(wan.name)
        b.join_wan(wan.name, also_as=(uncertified,) if uncertified else ())
        yield a, b, wan.name
    finally:
        a.stop()
        b.stop()
        wan.remove()


class Killed(Exception):
    """The migrator dies here."""


def dying_after(killed_after: Step):
    """An ``after_step`` hook: the migrator dies right after taking ``killed_after``."""

    def die(step: Step) -> None:
        if step == killed_after:
            raise Killed(step)

    return die


def start_task(
    emulated: EmulatedLei,
    command: list[str] = SLEEPER,
    healthcheck: dict | None = None,
    task_id: str = "",
    **options,
):
    """A task container on h1 of ``emulated``, as a user would run one: labelled, limited, configured.

    ``task_id``: its ``dragon.task.id`` (none: the task is known by the container's name).
    ``options``: more ``containers.run`` arguments (volumes, mounts...).
    """
    labels = {TASK_LABEL: "true", LEI_LABEL: emulated.lei, HOST_LABEL: "h1", "app": "demo"}
    return emulated._client.containers.run(
        COLLECTOR_IMAGE,
        command,
        name=f"dragon-{emulated.lei}-task-{tokens.token_hex(3)}",
        detach=True,
        labels=labels | ({TASK_ID_LABEL: task_id} if task_id else {}),
        environment={"APP_MODE": "edge"},
        cgroup_parent=emulated.cgroup("h1").cgroup_parent,
        network=emulated.network,
        mem_limit="64m",
        healthcheck=healthcheck,
        **options,
    )


def running_copies(emulated: EmulatedLei, name: str) -> list:
    """Every running container of the task: the original name or a move's temporary one."""
    candidates = emulated._client.containers.list(filters={"label": f"{LEI_LABEL}={emulated.lei}"})
    return [c for c in candidates if c.name == name or c.name.startswith(f"{name}-mv-")]


@pytest.fixture(scope="module")
def redis_client() -> Iterator[redis.Redis]:
    """A Redis of the LEI's image to itself, for the tests of one module."""
    container = (
        DockerContainer(REDIS_IMAGE)
        .with_exposed_ports(6379)
        .waiting_for(ExecWaitStrategy(["redis-cli", "ping"]).with_startup_timeout(60))
    )
    with container:
        yield redis.Redis(host=container.get_container_host_ip(), port=int(container.get_exposed_port(6379)))


@pytest.fixture(scope="module")
def host_scorer() -> tuple[Scorer, np.ndarray]:
    """A small host model of window 4 and the raw windows of its last 30 samples."""
    cfg = GonConfig(n_features=len(HOST_METRICS), window=4, hidden=8, gen_steps=2, epochs=2)
    series = 0.5 + 0.1 * np.random.default_rng(0).standard_normal((120, len(HOST_METRICS)))
    scorer = Scorer(train_from_series(series, HOST_METRICS, cfg, min_span=min_span(), source="test"))
    return scorer, make_windows(series[-30:], 4).astype(np.float32)


# The detectors made here keep their models in Redis only: the service's default directory is a
# volume, and a model left there would be served by the next run's detectors.
NO_MODEL_FILE = ""


def detector_on(client, lei: str, instance: str, **settings: str) -> Detector:
    """A detector in this process on the test's Redis; MQTT goes to a port nobody listens on,
    where paho keeps what it is given to publish."""
    where = client.connection_pool.connection_kwargs
    env = {
        "DRAGON_LEI": lei,
        "DRAGON_INSTANCE": instance,
        "DRAGON_REDIS_URL": f"redis://{where['host']}:{where['port']}/0",
        "DRAGON_DETECTOR_MODEL_DIR": NO_MODEL_FILE,
    }
    detector = Detector(config.load(DetectorConfig, env | {"DRAGON_MQTT_PORT": "1"} | settings))
    detector.init_redis()
    detector.mqtt = MqttClient(detector.config.common.mqtt, "detector", instance, detector.counters)
    return detector


def settled_long_ago(client: redis.Redis, lei: str) -> None:
    """Date the LEI's detector members' set a minute back on Redis's clock, past its settling
    (membership.py): the others no longer count a replica that is not live from memory."""
    seconds, _ = client.time()
    client.set(f"dragon:{lei}:detectors:began", str(seconds - 60))


def stacks_used_by(item: pytest.Item) -> list[LeiStack]:
    """The LEIs a test ran on: fixtures that are one, or yield several in a tuple."""
    found = []
    for value in getattr(item, "funcargs", {}).values():
        for candidate in value if isinstance(value, tuple) else (value,):
            if isinstance(candidate, LeiStack):
                found.append(candidate)
    return found


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A test that failed on a real LEI reports the end of each of its services' logs: CI keeps
    nothing of the containers, and a failure that shows up once in many runs must be read there."""
    outcome = yield
    report = outcome.get_result()
    for stack in stacks_used_by(item):
        if report.failed and report.when in {"setup", "call"}:
            for name, tail in stack.log_tails().items():
                report.sections.append((f"{stack.lei} {name}: last {REPORTED_LOG_LINES} log lines", tail))
        elif report.when == "setup":
            stack.forget_removed()  # removed before this test (by a module's fixtures, say): not its own
