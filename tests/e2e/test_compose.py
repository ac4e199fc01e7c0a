"""`docker compose -f compose/broker.yml up` brings up a working LEI: random faults become events."""

from __future__ import annotations

import json
import secrets as tokens
import socket
import subprocess
import time

import docker
import pytest

from dragon import certificates, config
from dragon.collector.config import CollectorConfig
from dragon.detector.config import DetectorConfig
from dragon.messages import codec
from dragon.messages.schemas import FaultEvent, Schedule, ServiceCounters, SimRequest, SimResponse
from dragon.migrator.config import MigratorConfig
from dragon.planner.config import PlannerConfig
from dragon.settings import MqttSettings
from dragon.simulator.config import SimulatorConfig
from dragon.testing.listener import Listener, publish

pytestmark = pytest.mark.e2e

HEALTHY_TIMEOUT_S = 120
# Learning (20 s) + the random-fault delay (40 s) + a Poisson arrival (mean 6 s) + detection.
EVENT_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def deployment(repo, tmp_path):
    lei = f"e2e{tokens.token_hex(3)}"
    env_file = tmp_path / "e2e.env"
    settings = {
        "DRAGON_LEI": lei,
        "MQTT_PORT": free_port(),
        "MQTT_TLS_PORT": free_port(),
        "BROKER_NAMES": "broker.e2e.test",
        "SECRETS_DIR": tmp_path / "secrets",
        "DRAGON_COLLECTOR_HOSTS": "h1,h2",
        "DRAGON_COLLECTOR_INTERVAL": "0.5",
        "DRAGON_DEMO_TASKS": "1",
        "DRAGON_DETECTOR_WARMUP": "20",
        "DRAGON_DETECTOR_WARMUP_MIN_SAMPLES": "40",
        # The default random mode, only faster: a fault every ~6 s once learning is done.
        "DRAGON_RANDOM_FAULTS_PER_HOUR": "600",
        "DRAGON_RANDOM_FAULT_DELAY": "40",
        "DRAGON_RANDOM_FAULT_DURATION": "15",
    }
    env_file.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    compose = ["docker", "compose", "--env-file", str(env_file), "-f", str(repo / "compose" / "broker.yml")]
    subprocess.run([*compose, "up", "-d"], check=True, capture_output=True, timeout=180)
    try:
        yield compose, lei, settings
    finally:
        logs = subprocess.run([*compose, "logs", "--no-color", "--tail", "40"], capture_output=True, text=True)
        print(logs.stdout[-8000:])
        subprocess.run([*compose, "down", "-v", "--timeout", "30"], capture_output=True, timeout=180)
        leftovers = docker.from_env().containers.list(all=True, filters={"label": f"dragon.lei={lei}"})
        for container in leftovers:
            container.remove(force=True)
        assert leftovers == [], "compose down left task containers behind"


def container_states(compose) -> dict[str, dict]:
    out = subprocess.run([*compose, "ps", "-a", "--format", "json"], check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    if len(rows) == 1 and isinstance(rows[0], list):
        rows = rows[0]
    return {row["Service"]: row for row in rows}


def wait_healthy(compose, services: set[str]) -> None:
    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    while time.monotonic() < deadline:
        states = container_states(compose)
        if all(states.get(s, {}).get("Health") == "healthy" for s in services):
            return
        time.sleep(2)
    raise AssertionError(f"not all healthy: { {s: states.get(s, {}).get('Health') for s in services} }")


def test_compose_up_protects_emulated_hosts(deployment):
    compose, lei, settings = deployment
    services = {"mosquitto", "redis", "collector", "detector", "simulator", "planner", "migrator"}
    wait_healthy(compose, services)
    assert container_states(compose)["secrets"]["ExitCode"] == 0

    assert_mqtt_is_plain_on_loopback_only_and_tls_for_the_network(compose, settings)
    # Fault events as a tool on another machine gets them: over TLS, trusting the LEI's CA.
    with Listener(mqtt_as("viewer", settings, tls=True), [f"dragon/faults/{lei}/+"]) as listener:
        (message,) = listener.wait_for(lambda m: True, EVENT_TIMEOUT_S)[:1]
    event = codec.decode(FaultEvent, message.payload, 65536, message.content_type)
    assert event.lei == lei and event.host in {"h1", "h2"} and event.type == "start"

    states = container_states(compose)
    assert all(states[s]["Health"] == "healthy" for s in services), states
    assert_the_simulator_sees_the_lei(lei, settings)
    assert_the_migrator_keeps_the_schedule(lei, settings)
    assert_every_service_reports_its_counters(settings, services - {"mosquitto", "redis"})
    assert_the_relay_waits_for_bridges(compose)
    assert_a_service_reads_its_own_password_and_no_other(compose)


def assert_a_service_reads_its_own_password_and_no_other(compose) -> None:
    """A service broken into cannot log in as another (dragon.secrets.groups_of), as deployed."""

    def reads(service: str, name: str) -> bool:
        command = [*compose, "exec", "-T", service, "cat", f"/secrets/{name}"]
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0

    assert reads("detector", "detector.password") and reads("detector", "redis.password")
    assert not reads("detector", "planner.password") and not reads("detector", "migration.key")
    assert reads("planner", "migration.key") and not reads("simulator", "detector.password")
    assert not reads("redis", "detector.password") and not reads("relay", "passwd")


def assert_the_relay_waits_for_bridges(compose) -> None:
    """Up, and idle without peers (one Mosquitto per bridge file once there are some)."""
    assert container_states(compose)["relay"]["State"] == "running"
    logs = subprocess.run([*compose, "logs", "--no-color", "relay"], capture_output=True, text=True).stdout
    assert "relay: no usable bridge in /mosquitto/bridges" in logs, logs[-2000:]


def mqtt_as(user: str, settings: dict, tls: bool = False) -> MqttSettings:
    secrets_dir = settings["SECRETS_DIR"]
    return MqttSettings(
        host="localhost" if tls else "127.0.0.1",  # a name the broker's certificate holds
        port=int(settings["MQTT_TLS_PORT" if tls else "MQTT_PORT"]),
        username=user,
        password=(secrets_dir / f"{user}.password").read_text().strip(),
        tls=tls,
        ca_file=str(secrets_dir / certificates.CA_CERT) if tls else "",
    )


def assert_mqtt_is_plain_on_loopback_only_and_tls_for_the_network(compose, settings: dict) -> None:
    def published(port: int) -> str:
        return subprocess.run([*compose, "port", "mosquitto", str(port)], check=True, capture_output=True, text=True)

    assert published(1883).stdout.strip() == f"127.0.0.1:{settings['MQTT_PORT']}"
    tls = published(8883).stdout.strip()
    assert tls.endswith(f":{settings['MQTT_TLS_PORT']}") and not tls.startswith("127."), tls
    secrets_dir = settings["SECRETS_DIR"]
    assert "broker.e2e.test" in certificates.certificate_names(secrets_dir / certificates.BROKER_CERT)
    # The CA's key is beside the secrets, not in what the services mount.
    assert (secrets_dir.parent / "secrets-ca" / "ca.key").is_file() and not list(secrets_dir.glob("*ca.key"))


def assert_the_migrator_keeps_the_schedule(lei: str, settings: dict) -> None:
    """The deployed migrator keeps the retained schedule: both demo tasks, each on a host of the LEI.

    The migrator may start before the collector has started the demo tasks: its first schedule
    is then empty and the next one, within a heartbeat (5 s) of the tasks starting, lists them.
    """

    def schedule_of(message) -> Schedule:
        return codec.decode(Schedule, message.payload, 65536, message.content_type)

    with Listener(mqtt_as("viewer", settings), [f"dragon/{lei}/tasks"]) as listener:
        (message,) = listener.wait_for(lambda m: len(schedule_of(m).tasks) == 2, 15)[:1]
    schedule = schedule_of(message)
    assert schedule.lei == lei
    assert schedule.migrator == lei  # a fixed instance name: its MQTT session outlives the container
    assert {p.host for p in schedule.tasks} <= {"h1", "h2"}


def assert_the_simulator_sees_the_lei(lei: str, settings: dict) -> None:
    """The deployed simulator answers a request with the LEI's hosts and demo tasks."""
    operator = mqtt_as("operator", settings)
    response_topic = f"dragon/{lei}/sim/response/e2e"
    with Listener(operator, [response_topic]) as listener:
        request = codec.encode(SimRequest(id="e2e", kind="next_window"))
        publish(operator, f"dragon/{lei}/sim/request", request, codec.MSGPACK, response_topic, b"e2e")
        (message,) = listener.wait_for(lambda m: True, 30)
    response = codec.decode(SimResponse, message.payload, 1 << 20, message.content_type)
    assert response.ok, response.error
    assert {f.host for f in response.forecast} == {"h1", "h2"} and response.tasks >= 2


def assert_every_service_reports_its_counters(settings: dict, services: set[str]) -> None:
    """Each deployed service publishes its counters, as the generated ACL lets it; viewer reads them."""

    def service_of(message) -> str:
        return codec.decode(ServiceCounters, message.payload, 65536, message.content_type).service

    with Listener(mqtt_as("viewer", settings), ["dragon/+/+/counters"]) as listener:
        for service in services:
            listener.wait_for(lambda m, s=service: service_of(m) == s, 30)


# Settings compose fixes for every deployment instead of passing on what compose/.env says; any
# other setting a service reads must reach it from compose/.env (a setting left out would be
# silently ignored there: the services reject unknown names, compose does not).
FIXED_BY_THE_DEPLOYMENT = {
    "DRAGON_INSTANCE": "each replica names itself (after its container or a slot), so scaled replicas differ",
    "DRAGON_HEALTH_FILE": "the images' healthchecks read the default path",
    "DRAGON_MQTT_HOST": "the broker of this deployment, on its network",
    "DRAGON_MQTT_PORT": "its plain listener inside the network",
    "DRAGON_MQTT_TLS": "its plain listener inside the network",
    "DRAGON_MQTT_CA_FILE": "its plain listener inside the network",
    "DRAGON_MQTT_USERNAME": "each service has its own user in the generated ACL",
    "DRAGON_MQTT_PASSWORD": "generated into SECRETS_DIR and passed as a file",
    "DRAGON_REDIS_URL": "the Redis of this deployment",
    "DRAGON_REDIS_PASSWORD": "generated into SECRETS_DIR and passed as a file",
    "DRAGON_MIGRATION_KEY": "generated into SECRETS_DIR and passed as a file",
    "DRAGON_CGROUP_ROOT": "where the host's cgroup tree is mounted",
    "DRAGON_PROC_ROOT": "where the host's /proc is mounted",
    "DRAGON_TASK_NETWORK": "the tasks network this file declares",
    "DRAGON_DETECTOR_MODEL_DIR": "where the detector-models volume is mounted",
    "DRAGON_MIGRATOR_DOCKER_ROOT": "the engine's containers folder is mounted at its own path",
}
SERVICE_CONFIGS = {
    "collector": CollectorConfig,
    "detector": DetectorConfig,
    "simulator": SimulatorConfig,
    "planner": PlannerConfig,
    "migrator": MigratorConfig,
}


def test_every_setting_a_service_reads_can_be_set_in_the_env_file(repo, tmp_path):
    names = sorted({name for cls in SERVICE_CONFIGS.values() for name in config.env_names(cls)})
    assert set(FIXED_BY_THE_DEPLOYMENT) <= set(names), "a fixed setting no service reads any more"
    # A value of its own for each (lower case: DRAGON_LEI also names the compose project).
    env_file = tmp_path / "every.env"
    env_file.write_text("".join(f"{name}={name.lower()}\n" for name in names))
    command = ["docker", "compose", "--env-file", str(env_file), "-f", str(repo / "compose" / "broker.yml")]
    resolved = subprocess.run([*command, "config", "--format", "json"], capture_output=True, text=True, timeout=60)
    assert resolved.returncode == 0, resolved.stderr
    services = json.loads(resolved.stdout)["services"]
    for service, cls in SERVICE_CONFIGS.items():
        environment = services[service]["environment"]
        for name in config.env_names(cls):
            if name in FIXED_BY_THE_DEPLOYMENT:
                assert environment.get(name) != name.lower(), f"{service}: {name} is fixed, yet passed on"
            else:
                assert environment.get(name) == name.lower(), f"{service} is not passed {name} from the env file"
