"""Config sections shared by every service (MQTT, Redis, identity, logging)."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from dragon.certificates import ca_file_problem
from dragon.config import ConfigError, section, setting


@dataclass(frozen=True)
class MqttSettings:
    host: str = setting("DRAGON_MQTT_HOST", "localhost", "MQTT broker host name")
    port: int = setting("DRAGON_MQTT_PORT", 1883, "MQTT broker port")
    username: str = setting("DRAGON_MQTT_USERNAME", "", "MQTT user name (empty: anonymous, for development only)")
    password: str = setting("DRAGON_MQTT_PASSWORD", "", "MQTT password", secret=True)
    tls: bool = setting("DRAGON_MQTT_TLS", False, "connect with TLS")
    ca_file: str = setting("DRAGON_MQTT_CA_FILE", "", "CA bundle for TLS (empty: system default)")
    keepalive_s: int = setting("DRAGON_MQTT_KEEPALIVE", 30, "MQTT keep-alive interval", "s")
    session_expiry_s: int = setting(
        "DRAGON_MQTT_SESSION_EXPIRY",
        3600,
        "how long the broker keeps our session and QoS 1 queue while we are away (the simulator keeps none)",
        "s",
    )
    max_payload_bytes: int = setting(
        "DRAGON_MAX_PAYLOAD",
        65536,
        "messages larger than this are dropped unread and counted; the broker does not deliver those over 8 KiB larger",
        "bytes",
    )
    receive_maximum: int = setting(
        "DRAGON_MQTT_RECEIVE_MAXIMUM",
        256,
        "unacknowledged QoS 1 messages the broker may send us at once; also the bound of our own receive queue",
        "messages",
    )
    max_queued: int = setting(
        "DRAGON_MQTT_MAX_QUEUED",
        20000,
        "QoS 1 messages we keep for the broker while it is away (about 2 KiB of memory each for a sample); "
        "beyond it new ones are dropped and counted (publish_queue_full); 0: no bound",
        "messages",
    )
    counters_interval_s: float = setting(
        "DRAGON_COUNTERS_INTERVAL",
        10.0,
        "how often a service publishes its counters (retained) while they change, and refreshes them every "
        "10 such intervals (they expire after 30, so a dead instance's vanish); 0: only when it stops",
        "s",
    )

    def validate(self) -> None:
        if not self.ca_file:
            return
        if not self.tls:  # a client set up for TLS but one setting short must not log in in clear
            raise ConfigError(f"DRAGON_MQTT_CA_FILE={self.ca_file!r} is set but DRAGON_MQTT_TLS is false: set it true")
        try:
            with open(self.ca_file, "rb") as ca:
                problem = ca_file_problem(ca.read())
        except OSError as exc:
            problem = exc.strerror or str(exc)
        if problem is not None:
            raise ConfigError(f"DRAGON_MQTT_CA_FILE={self.ca_file!r}: {problem}")


@dataclass(frozen=True)
class RedisSettings:
    url: str = setting("DRAGON_REDIS_URL", "redis://localhost:6379/0", "Redis URL (without the password)")
    password: str = setting("DRAGON_REDIS_PASSWORD", "", "Redis password", secret=True)
    timeout_s: float = setting("DRAGON_REDIS_TIMEOUT", 2.0, "socket timeout of one Redis call", "s")


@dataclass(frozen=True)
class ServiceSettings:
    lei: str = setting("DRAGON_LEI", "lei1", "id of this LEI (one broker, one Redis)")
    instance: str = setting(
        "DRAGON_INSTANCE",
        "",
        "id of this service instance (empty: the host name, unique per container; a detector: `<lei>-<n>`, "
        "the lowest slot free in Redis)",
    )
    log_level: str = setting("DRAGON_LOG_LEVEL", "info", "debug, info, warning or error")
    health_file: str = setting(
        "DRAGON_HEALTH_FILE", "/tmp/dragon-healthy", "file touched while the service is healthy (container healthcheck)"
    )

    @property
    def instance_id(self) -> str:
        return self.instance or socket.gethostname()

    def validate(self) -> None:
        _check_topic_level("DRAGON_LEI", self.lei)
        if self.instance:
            _check_topic_level("DRAGON_INSTANCE", self.instance)
        if self.log_level not in {"debug", "info", "warning", "error"}:
            raise ConfigError(f"DRAGON_LOG_LEVEL={self.log_level!r} must be debug, info, warning or error")


PLAIN_ID_RULE = "1-64 characters without '/', '+', '#', '$', ':' or spaces, and not '.' or '..'"


def is_plain_id(value: str) -> bool:
    """Ids become MQTT topic levels, Redis key parts and cgroup path components: keep them plain."""
    return 0 < len(value) <= 64 and not any(ch in value for ch in "/+#$ :") and value not in {".", ".."}


def _check_topic_level(name: str, value: str) -> None:
    if not is_plain_id(value):
        raise ConfigError(f"{name}={value!r} must be {PLAIN_ID_RULE}")


check_id = _check_topic_level


@dataclass(frozen=True)
class CommonConfig:
    """What every service reads; service configs embed it as ``common``."""

    service: ServiceSettings = section(ServiceSettings)
    mqtt: MqttSettings = section(MqttSettings)
