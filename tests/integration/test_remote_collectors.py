"""A host with a collector of its own logs in as its own user, which speaks for that host alone,
over the broker's TLS listener, trusting the LEI's CA (compose/mosquitto/broker.conf)."""

from __future__ import annotations

import dataclasses
import itertools
import secrets as tokens
import tempfile
import threading
import time
from pathlib import Path

import pytest
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import LogMessageWaitStrategy

from dragon import certificates, config
from dragon.collector.config import CollectorConfig
from dragon.collector.docker_api import HOST_LABEL, LEI_LABEL, TASK_ID_LABEL, TASK_LABEL
from dragon.collector.service import Collector
from dragon.messages import codec, topics
from dragon.messages.schemas import HostMetrics, HostSample
from dragon.mqtt import MqttClient
from dragon.testing.lei import COLLECTOR_IMAGE, STARTUP_TIMEOUT_S, LeiStack
from dragon.testing.listener import Listener, publish
from dragon.testing.stalling_docker import StallingDocker

from .conftest import SLEEPER

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


# README, "Use your own hosts": the collector image on a host of the LEI, as `docker run` starts it.
REMOTE_RUN = {
    "pid_mode": "host",  # the machine's processes, and its network counters (/proc/1/net/dev)
    "cgroupns": "host",  # its tasks' cgroup files by their real paths
}
REMOTE_VOLUMES = (
    ("/var/run/docker.sock", "/var/run/docker.sock", "rw"),  # which containers are this host's tasks
    ("/proc", "/host/proc", "ro"),
    ("/sys/fs/cgroup", "/host/sys/fs/cgroup", "ro"),
)


def remote_collector(brokers: LeiStack, host: str) -> DockerContainer:
    """The collector of a real host that is not the broker's, over TLS with its own user, the way
    the README's `docker run` starts it (the broker is `mosquitto` on the stack's network)."""
    env = {
        "DRAGON_LEI": brokers.lei,
        "DRAGON_COLLECTOR_HOSTS": host,
        "DRAGON_INSTANCE": host,
        "DRAGON_COLLECTOR_PROBE": "psutil",
        "DRAGON_EMULATE": "false",
        "DRAGON_INJECTOR": "false",
        "DRAGON_COLLECTOR_INTERVAL": "1",
        "DRAGON_PROC_ROOT": "/host/proc",
        "DRAGON_CGROUP_ROOT": "/host/sys/fs/cgroup",
        "DRAGON_MQTT_HOST": "mosquitto",
        "DRAGON_MQTT_PORT": "8883",
        "DRAGON_MQTT_TLS": "true",
        "DRAGON_MQTT_CA_FILE": "/secrets/mqtt-ca.crt",
        "DRAGON_MQTT_USERNAME": f"collector-{host}",
        "DRAGON_MQTT_PASSWORD_FILE": "/secrets/collector.password",
    }
    container = DockerContainer(COLLECTOR_IMAGE).with_network(brokers.network)
    for key, value in env.items():
        container = container.with_env(key, value)
    for source, target, mode in REMOTE_VOLUMES:
        container = container.with_volume_mapping(source, target, mode)
    password = brokers.secrets_dir / f"collector-{host}.password"
    return (
        container.with_volume_mapping(str(password), "/secrets/collector.password", "ro")
        .with_volume_mapping(str(brokers.secrets_dir / certificates.CA_CERT), "/secrets/mqtt-ca.crt", "ro")
        .with_kwargs(**REMOTE_RUN)
        .waiting_for(LogMessageWaitStrategy("mqtt_connected").with_startup_timeout(STARTUP_TIMEOUT_S))
    )


def test_the_collector_image_on_a_remote_host_samples_the_machine_and_its_labelled_tasks(brokers):
    lei = brokers.lei
    labels = {TASK_LABEL: "true", HOST_LABEL: "pi", LEI_LABEL: lei, TASK_ID_LABEL: "pi-task"}
    task = brokers.docker.containers.run(
        COLLECTOR_IMAGE,
        ["python3", "-m", "dragon.collector.workloads", "cpu", "--intensity", "0.3", "--duration", "120"],
        labels=labels,
        detach=True,
        network_mode="none",
    )
    collector = remote_collector(brokers, "pi")
    try:
        with Listener(brokers.mqtt_settings("viewer"), [topics.host_sample(lei, "pi")]) as listener:
            collector.start()

            def busy_with_its_task(message) -> bool:
                sample = codec.decode(HostSample, message.payload, 65536, message.content_type)
                shares = {usage.id: usage.cpu for usage in sample.tasks}
                measured = sample.metrics.cpu > 0 and sample.metrics.ram > 0 and sample.ram_capacity_bytes > 0
                return measured and shares.get("pi-task", 0.0) > 0.05

            listener.wait_for(busy_with_its_task, 30)
    finally:
        task.remove(force=True)
        collector.stop()


STALL_S = 8.0  # the daemon hangs longer than a list refresh period (5 s)
MAX_SAMPLE_GAP_S = 3.0  # six intervals of 0.5 s: a noisy machine's worst, far below a stall


def in_process_collector(brokers: LeiStack, host: str, workdir: Path) -> Collector:
    """The remote collector of ``host`` in this process, sampling every 0.5 s (Docker per DOCKER_HOST)."""
    broker = brokers.mqtt_settings(f"collector-{host}")
    environ = {
        "DRAGON_LEI": brokers.lei,
        "DRAGON_INSTANCE": host,
        "DRAGON_MQTT_HOST": broker.host,
        "DRAGON_MQTT_PORT": str(broker.port),
        "DRAGON_MQTT_USERNAME": broker.username,
        "DRAGON_MQTT_PASSWORD": broker.password,
        "DRAGON_COLLECTOR_HOSTS": host,
        "DRAGON_COLLECTOR_PROBE": "psutil",
        "DRAGON_EMULATE": "false",
        "DRAGON_INJECTOR": "false",
        "DRAGON_COLLECTOR_INTERVAL": "0.5",
        "DRAGON_HEALTH_FILE": str(workdir / "healthy"),
    }
    return Collector(config.load(CollectorConfig, environ))


def task_ids(message) -> set[str]:
    return {usage.id for usage in codec.decode(HostSample, message.payload, 65536, message.content_type).tasks}


def hung_for(daemon: StallingDocker, listener: Listener, held: int, stalled_at: float) -> list:
    """Keep the daemon stalled at ``stalled_at`` hung for STALL_S, then let it go; the samples
    meanwhile, after checking that they kept coming and that a request waited (more than ``held``
    had before the stall)."""
    time.sleep(max(0.0, stalled_at + STALL_S - time.time()))
    daemon.resume()
    resumed_at = time.time()
    during = listener.matching(lambda m: stalled_at <= m.at <= resumed_at)
    arrivals = [stalled_at, *(m.at for m in during), resumed_at]
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert daemon.held > held, "no container list was asked for while the daemon hung"
    assert max(gaps) < MAX_SAMPLE_GAP_S, f"samples stopped for {max(gaps):.1f} s while Docker hung"
    return during


def test_a_hung_docker_daemon_makes_the_task_list_late_not_the_samples(brokers, tmp_path, monkeypatch):
    """A Pi's Docker daemon that stops answering (its SD card at its limit) must not stop the
    host's samples, at start-up or later: the detector would take the host for dead. The
    collector lists containers on a thread of its own; the samples go on with the last list
    (none yet at start-up), and the list catches up after."""
    lei = brokers.lei

    def task(task_id: str):
        labels = {TASK_LABEL: "true", HOST_LABEL: "pi", LEI_LABEL: lei, TASK_ID_LABEL: task_id}
        return brokers.docker.containers.run(COLLECTOR_IMAGE, SLEEPER, labels=labels, detach=True, network_mode="none")

    tasks = [task("before")]
    # A short directory: a Unix socket's path holds at most 107 bytes.
    with tempfile.TemporaryDirectory(prefix="dragon-") as short, StallingDocker(Path(short)) as daemon:
        monkeypatch.setenv("DOCKER_HOST", daemon.url)
        collector = in_process_collector(brokers, "pi", tmp_path)
        sampling = threading.Thread(target=collector.sample_forever, daemon=True)
        try:
            with Listener(brokers.mqtt_settings("viewer"), [topics.host_sample(lei, "pi")]) as listener:
                daemon.stall("/containers/json")  # it answers its ping, and no list
                stalled_at = time.time()
                collector.start()  # does not wait for a list: the samples start at once
                sampling.start()
                assert all(task_ids(m) == set() for m in hung_for(daemon, listener, 0, stalled_at))
                listener.wait_for(lambda m: task_ids(m) == {"before"}, 15)

                held, stalled_at = daemon.held, time.time()
                daemon.stall()
                tasks.append(task("during"))  # started while the collector's daemon hangs
                during = hung_for(daemon, listener, held, stalled_at)
                assert all(task_ids(m) == {"before"} for m in during)  # the last list, kept
                listener.wait_for(lambda m: task_ids(m) == {"before", "during"}, 15)
        finally:
            collector.lifecycle.stop.set()
            sampling.join(5)
            collector.shutdown()
            for container in tasks:
                container.remove(force=True)
