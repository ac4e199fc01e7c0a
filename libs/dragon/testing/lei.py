"""A real LEI made of the service images, started with testcontainers.

Used by the integration tests and the benchmarks: Mosquitto with the deployment's
own config (password file, ACL, persistence), Redis with a password and AOF, and
any number of collector and detector containers on one private Docker network.
The test process talks to Mosquitto and Redis through their mapped ports.
"""

from __future__ import annotations

import os
import secrets as random_tokens
import time
from collections.abc import Mapping
from pathlib import Path

import docker
import redis
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network
from testcontainers.core.wait_strategies import ExecWaitStrategy, LogMessageWaitStrategy

from dragon import certificates, secrets
from dragon.collector.cgroups import DEFAULT_ROOT, CgroupError, CgroupHost, emulated_lei_path
from dragon.settings import MqttSettings

MOSQUITTO_IMAGE = "dragon-mosquitto:local"
REDIS_IMAGE = "dragon-redis:local"
COLLECTOR_IMAGE = "dragon-collector:local"
DETECTOR_IMAGE = "dragon-detector:local"
MIGRATOR_IMAGE = "dragon-migrator:local"
SIMULATOR_IMAGE = "dragon-simulator:local"
PLANNER_IMAGE = "dragon-planner:local"
STARTUP_TIMEOUT_S = 60
TLS_PORT = 8883  # Mosquitto's TLS listener (compose/mosquitto/broker.conf)
REPORTED_LOG_LINES = 80


def groups_of(service: str) -> list[str]:
    """The groups ``service``'s container runs with, as compose/broker.yml gives them."""
    return [str(gid) for gid in secrets.groups_of(service)]


class MissingImage(RuntimeError):
    """A service image is not built; the message says how to build it."""


def require_images(client: docker.DockerClient, images: tuple[str, ...]) -> None:
    for image in images:
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            raise MissingImage(f"image {image} is missing: run scripts/build-images.sh first") from None


def environment_items(items: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` command-line items (a benchmark's ``--detector-env``) as a container environment."""
    malformed = [item for item in items if "=" not in item or item.startswith("=")]
    if malformed:
        raise ValueError(f"expected KEY=VALUE, got {', '.join(malformed)}")
    return dict(item.split("=", 1) for item in items)


def standalone_redis(password: str) -> DockerContainer:
    """A Redis container with a password and nothing else (use as a context manager)."""
    return (
        DockerContainer(REDIS_IMAGE)
        .with_exposed_ports(6379)
        .with_command(["redis-server", "--requirepass", password])
        .waiting_for(ExecWaitStrategy(["redis-cli", "-a", password, "--no-auth-warning", "ping"]))
    )


def redis_client_of(server: DockerContainer, password: str) -> redis.Redis:
    """A client of a started :func:`standalone_redis` through its mapped port."""
    return redis.Redis(server.get_container_host_ip(), int(server.get_exposed_port(6379)), password=password)


class LeiStack:
    """Start with :meth:`start_brokers`, then add collectors/detectors; :meth:`stop` removes everything."""

    def __init__(self, lei: str, hosts: list[str], workdir: Path, mosquitto_conf: Path) -> None:
        self.lei = lei
        self.hosts = hosts
        self.secrets_dir = workdir / "secrets"
        self.bridges_dir = workdir / "bridges"  # the relay's bridges to peer brokers, one Mosquitto each
        self.mosquitto_conf = mosquitto_conf
        self.network = Network()
        self.containers: dict[str, DockerContainer] = {}
        self._removed_log_tails: dict[str, str] = {}  # of the services removed since forget_removed()
        self._restarted_at: dict[str, int] = {}  # container name -> when restart() restarted it
        self.docker = docker.from_env()
        require_images(self.docker, (MOSQUITTO_IMAGE, REDIS_IMAGE, COLLECTOR_IMAGE, DETECTOR_IMAGE))

    # --- brokers ----------------------------------------------------------------
    def start_brokers(self, peers: tuple[str, ...] = (), remote_hosts: tuple[str, ...] = ()) -> None:
        self._peers, self._remote_hosts = peers, remote_hosts
        self._write_secrets(broker_names=(self.wan_alias,))  # what peers' bridges connect to over TLS
        self.bridges_dir.mkdir(parents=True, exist_ok=True)
        self.bridges_dir.chmod(0o755)
        self.network.create()
        self.containers["mosquitto"] = self._mosquitto().start()
        self.containers["relay"] = self._relay().start()
        self.containers["redis"] = self._redis().start()

    def _mosquitto(self) -> DockerContainer:
        return (
            DockerContainer(MOSQUITTO_IMAGE)
            .with_network(self.network)
            .with_network_aliases("mosquitto")
            .with_exposed_ports(1883, TLS_PORT)
            .with_volume_mapping(str(self.mosquitto_conf), "/mosquitto/config/mosquitto.conf", "ro")
            .with_volume_mapping(str(self.secrets_dir), "/secrets", "ro")
            .with_kwargs(group_add=groups_of("mosquitto"))
            .waiting_for(
                LogMessageWaitStrategy(r"mosquitto version \d+\.\d+\.\d+ running").with_startup_timeout(
                    STARTUP_TIMEOUT_S
                )
            )
        )

    def _relay(self) -> DockerContainer:
        """This LEI's bridges to its peers, as compose runs them (secrets.relay_conf)."""
        return (
            DockerContainer(MOSQUITTO_IMAGE)
            .with_network(self.network)
            .with_command(["/usr/local/bin/dragon-relay"])
            .with_volume_mapping(str(self.secrets_dir), "/secrets", "ro")
            .with_volume_mapping(str(self.bridges_dir), secrets.BRIDGES_MOUNT, "ro")
            .with_kwargs(group_add=groups_of("relay"))
            .waiting_for(LogMessageWaitStrategy(r"relay: ").with_startup_timeout(STARTUP_TIMEOUT_S))
        )

    def _redis(self) -> DockerContainer:
        command = [
            "redis-server",
            "/secrets/redis.conf",
            "--bind",
            "0.0.0.0",
            "--dir",
            "/data",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
        ]
        password = self.password("redis")
        return (
            DockerContainer(REDIS_IMAGE)
            .with_network(self.network)
            .with_network_aliases("redis")
            .with_exposed_ports(6379)
            .with_command(command)
            .with_volume_mapping(str(self.secrets_dir), "/secrets", "ro")
            .with_kwargs(group_add=groups_of("redis"))
            .waiting_for(
                ExecWaitStrategy(["redis-cli", "-a", password, "--no-auth-warning", "ping"]).with_startup_timeout(
                    STARTUP_TIMEOUT_S
                )
            )
        )

    def _write_secrets(self, broker_names: tuple[str, ...]) -> None:
        secrets.generate(
            self.secrets_dir,
            self.lei,
            self.hosts,
            peers=self._peers,
            remote_hosts=self._remote_hosts,
            broker_names=broker_names,
        )

    def certify_test_address(self) -> None:
        """Let this process reach Mosquitto's TLS listener (:meth:`mqtt_settings` with ``tls``).

        It connects to a mapped port on ``get_container_host_ip()``: ``localhost``, which the
        certificate names, or a gateway's IP when the tests run inside a container, which it
        does not. Then the broker's certificate is issued again with that address and Mosquitto
        restarted to read it, as an operator adds a name with ``BROKER_NAMES``.
        """
        host = self.containers["mosquitto"].get_container_host_ip()
        if host in certificates.broker_names([]):
            return
        self._write_secrets(broker_names=(self.wan_alias, host))
        self.restart("mosquitto", "running")

    def password(self, user: str) -> str:
        return (self.secrets_dir / f"{user}.password").read_text().strip()

    def mqtt_settings(self, user: str = "operator", tls: bool = False) -> MqttSettings:
        """How the test process reaches Mosquitto (mapped port) as ``user``; with ``tls`` its TLS
        listener (after :meth:`certify_test_address`)."""
        broker = self.containers["mosquitto"]
        return MqttSettings(
            host=broker.get_container_host_ip(),
            port=int(broker.get_exposed_port(TLS_PORT if tls else 1883)),
            username=user,
            password=self.password(user),
            tls=tls,
            ca_file=str(self.secrets_dir / certificates.CA_CERT) if tls else "",
        )

    def redis_client(self) -> redis.Redis:
        server = self.containers["redis"]
        return redis.Redis(
            host=server.get_container_host_ip(),
            port=int(server.get_exposed_port(6379)),
            password=self.password("redis"),
            socket_timeout=5,
        )

    def bridge_to(self, peer: LeiStack, dial: str = "") -> None:
        """Bridge this LEI's topics to ``peer``'s broker from this LEI's relay, as `dragon bridge`
        would, over their :meth:`join_wan` network (the peer bridges its own back with its own call).

        Call after the peer's secrets are written (its :meth:`start_brokers`), listing this LEI
        among its peers, and before this stack's :meth:`start_brokers` (else restart its relay).
        ``dial``: the name to reach the peer by, if not the one its certificate holds
        (:attr:`wan_alias`).
        """
        self.bridges_dir.mkdir(parents=True, exist_ok=True)
        written = secrets.write_bridge(
            self.bridges_dir / f"{peer.lei}.conf",
            self.lei,
            peer.lei,
            f"{dial or peer.wan_alias}:{TLS_PORT}",
            peer.password(secrets.bridge_user(self.lei)),
            (peer.secrets_dir / certificates.CA_CERT).read_bytes(),
        )
        if os.geteuid() != 0:  # cannot give it to the services' group: let the mosquitto user read it
            written[-1].chmod(0o644)

    @property
    def wan_alias(self) -> str:
        """The broker's name on the federation's network (:meth:`join_wan`), which its certificate names."""
        return f"mosquitto-{self.lei}"

    def join_wan(self, wan: str, also_as: tuple[str, ...] = ()) -> None:
        """Put this broker on the federation's network ``wan`` as ``mosquitto-<lei>``, where peers'
        bridges find it, and the relay, whose bridges dial the peers there.

        ``wan`` should be an internal network: Docker never routes a container's default gateway
        (and so its published ports) through one, so leaving it cannot cut the test's own access.
        """
        network = self.docker.networks.get(wan)
        network.connect(self.containers["mosquitto"].get_wrapped_container(), aliases=[self.wan_alias, *also_as])
        network.connect(self.containers["relay"].get_wrapped_container())

    def leave_wan(self, wan: str) -> None:
        """Take this LEI off the federation's network: a WAN outage, as both ends of its bridges see it."""
        network = self.docker.networks.get(wan)
        for name in ("mosquitto", "relay"):
            network.disconnect(self.containers[name].get_wrapped_container())

    # --- services -----------------------------------------------------------------
    def _service_env(self, user: str) -> dict[str, str]:
        return {
            "DRAGON_LEI": self.lei,
            "DRAGON_MQTT_HOST": "mosquitto",
            "DRAGON_MQTT_USERNAME": user,
            "DRAGON_MQTT_PASSWORD_FILE": f"/secrets/{user}.password",
            "DRAGON_LOG_LEVEL": "info",
        }

    def start_detector(
        self, name: str, env: Mapping[str, str] | None = None, volumes: Mapping[str, str] | None = None
    ) -> DockerContainer:
        """``volumes`` maps host paths to container paths, mounted read-only (a checkpoint, say)."""
        container = DockerContainer(DETECTOR_IMAGE)
        for host_path, container_path in (volumes or {}).items():
            container = container.with_volume_mapping(host_path, container_path, "ro")
        redis_env = {
            "DRAGON_REDIS_URL": "redis://redis:6379/0",
            "DRAGON_REDIS_PASSWORD_FILE": "/secrets/redis.password",
        }
        instance = {"DRAGON_INSTANCE": f"{name}-{random_tokens.token_hex(3)}"}
        return self._start_service(name, container, "detector", {**redis_env, **instance, **(env or {})})

    def start_planner(self, name: str, env: Mapping[str, str] | None = None) -> DockerContainer:
        require_images(self.docker, (PLANNER_IMAGE,))
        container = DockerContainer(PLANNER_IMAGE)
        return self._start_service(name, container, "planner", {"DRAGON_INSTANCE": name, **(env or {})})

    def start_simulator(self, name: str, env: Mapping[str, str] | None = None) -> DockerContainer:
        require_images(self.docker, (SIMULATOR_IMAGE,))
        container = DockerContainer(SIMULATOR_IMAGE)
        return self._start_service(name, container, "simulator", {"DRAGON_INSTANCE": name, **(env or {})})

    def start_migrator(self, name: str, env: Mapping[str, str] | None = None) -> DockerContainer:
        """The migrator, with the Docker socket, the hosts' cgroups (read-only) and the migration key."""
        require_images(self.docker, (MIGRATOR_IMAGE,))
        container = (
            DockerContainer(MIGRATOR_IMAGE)
            .with_volume_mapping("/var/run/docker.sock", "/var/run/docker.sock", "rw")
            .with_volume_mapping("/sys/fs/cgroup", "/host/sys/fs/cgroup", "ro")
        )
        migrator_env = {
            "DRAGON_REDIS_URL": "redis://redis:6379/0",
            "DRAGON_REDIS_PASSWORD_FILE": "/secrets/redis.password",
            "DRAGON_MIGRATION_KEY_FILE": "/secrets/migration.key",
            "DRAGON_CGROUP_ROOT": "/host/sys/fs/cgroup",
            "DRAGON_INSTANCE": name,
        }
        return self._start_service(name, container, "migrator", {**migrator_env, **(env or {})})

    def migration_key(self) -> bytes:
        return (self.secrets_dir / "migration.key").read_text().strip().encode()

    def _start_service(
        self, name: str, container: DockerContainer, user: str, env: Mapping[str, str]
    ) -> DockerContainer:
        """Start a broker-side service as MQTT ``user``, with the secrets, once it has connected."""
        for key, value in {**self._service_env(user), **env}.items():
            container = container.with_env(key, value)
        container = (
            container.with_network(self.network)
            .with_volume_mapping(str(self.secrets_dir), "/secrets", "ro")
            .with_kwargs(group_add=groups_of(user))
            .waiting_for(LogMessageWaitStrategy("mqtt_connected").with_startup_timeout(STARTUP_TIMEOUT_S))
        )
        self.containers[name] = container.start()
        return container

    def start_collector(self, name: str, env: Mapping[str, str] | None = None) -> DockerContainer:
        container = DockerContainer(COLLECTOR_IMAGE).with_network(self.network)
        all_env = {
            **self._service_env("collector"),
            "DRAGON_COLLECTOR_HOSTS": ",".join(self.hosts),
            "DRAGON_CGROUP_ROOT": "/host/sys/fs/cgroup",
            "DRAGON_PROC_ROOT": "/host/proc",
            "DRAGON_TASK_NETWORK": self.network.name,
            "DRAGON_INSTANCE": name,
            **(env or {}),
        }
        for key, value in all_env.items():
            container = container.with_env(key, value)
        container = (
            container.with_volume_mapping(str(self.secrets_dir), "/secrets", "ro")
            .with_volume_mapping("/var/run/docker.sock", "/var/run/docker.sock", "rw")
            .with_volume_mapping("/sys/fs/cgroup", "/host/sys/fs/cgroup", "rw")
            .with_volume_mapping("/proc", "/host/proc", "ro")
            .with_kwargs(pid_mode="host", cgroupns="host")
            .waiting_for(LogMessageWaitStrategy("mqtt_connected").with_startup_timeout(STARTUP_TIMEOUT_S))
        )
        self.containers[name] = container.start()
        return container

    def stop_service(self, name: str, grace_s: float | None = None) -> None:
        """Remove one service, leaving the rest of the LEI running: killed, or with ``grace_s`` stopped
        first as Docker and compose stop it (SIGTERM, SIGKILL after the grace)."""
        try:
            container = self.containers.pop(name)
            if grace_s is not None:
                container.get_wrapped_container().stop(timeout=grace_s)
            # Its last words (a graceful stop's included) before the container is removed.
            self._removed_log_tails[f"{name} (removed)"] = self._log_tail(container, REPORTED_LOG_LINES)
            container.stop()
        except docker.errors.NotFound:
            pass

    # --- faults of the infrastructure ----------------------------------------------
    def restart(self, name: str, wait_for: str, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Restart a container in place (SIGTERM, then start) and wait for a log line."""
        container = self.containers[name].get_wrapped_container()
        self._restarted_at[name] = since = int(time.time())
        container.restart(timeout=10)
        self.restart_wait(name, wait_for, timeout, since)

    def restart_wait(self, name: str, wait_for: str, timeout: float = STARTUP_TIMEOUT_S, since: int = 0) -> None:
        """Wait for a log line of ``name`` since its last :meth:`restart`."""
        container = self.containers[name].get_wrapped_container()
        since = since or self._restarted_at.get(name, 0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if wait_for.encode() in container.logs(since=since):
                return
            time.sleep(0.2)
        raise TimeoutError(f"{name} did not log {wait_for!r} within {timeout} s after a restart")

    def logs(self, name: str) -> str:
        stdout, stderr = self.containers[name].get_logs()
        return (stdout + stderr).decode(errors="replace")

    def log_tails(self, lines: int = REPORTED_LOG_LINES) -> dict[str, str]:
        """The last ``lines`` of every service's log, those removed during the test included: what a
        failed test reports, since CI keeps nothing of the containers once they are gone."""
        tails = dict(self._removed_log_tails)
        for name, container in self.containers.items():
            tails[name] = self._log_tail(container, lines)
        return tails

    def forget_removed(self) -> None:
        """Report no more of the services removed so far (a test begins)."""
        self._removed_log_tails.clear()

    @staticmethod
    def _log_tail(container: DockerContainer, lines: int) -> str:
        try:
            return container.get_wrapped_container().logs(tail=lines).decode(errors="replace")
        except Exception as exc:  # noqa: BLE001 - gone, or the daemon away: a report must not hide the test's failure
            return f"(no log: {exc!r})"

    def stop(self) -> None:
        for name in reversed(list(self.containers)):
            try:
                self.containers[name].stop()
            except docker.errors.NotFound:
                pass
        self.containers.clear()
        # The collector was killed, not stopped: remove the task and hog containers it started,
        # then its emulated hosts' cgroups, which would pile up on the machine run after run.
        for container in self.docker.containers.list(all=True, filters={"label": f"dragon.lei={self.lei}"}):
            container.remove(force=True)
        try:
            CgroupHost(emulated_lei_path(self.lei), DEFAULT_ROOT).remove()
        except CgroupError:
            pass  # no cgroup hierarchy here, or not ours to write (not root)
        try:
            self.network.remove()
        except docker.errors.APIError:
            pass
