"""The migrator's configuration (see the table in README.md), and the command key it shares with the planner."""

from __future__ import annotations

from dataclasses import dataclass

from dragon.config import ConfigError, section, setting
from dragon.settings import CommonConfig, RedisSettings

CRIU_MODES = ("auto", "off")


def parse_endpoints(text: str, lei: str) -> dict[tuple[str, str], str]:
    """``h1=unix:///x.sock,lei2/h3=tcp://a:2376`` as {(lei, host): url}; ValueError when malformed."""
    endpoints = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, url = item.partition("=")
        if not sep or not url.strip():
            raise ValueError(f"endpoint {item!r} is not host=url")
        host_lei, _, host = key.strip().rpartition("/")
        if url.startswith("ssh://"):
            raise ValueError(f"endpoint {item!r}: ssh:// is not supported, use tcp:// with TLS (docs/migrator.md)")
        if not url.startswith(("unix://", "tcp://")):
            raise ValueError(f"endpoint {item!r}: the url must start with unix:// or tcp://")
        endpoints[(host_lei or lei, host)] = url.strip()
    return endpoints


@dataclass(frozen=True)
class CommandSettings:
    """What signs and bounds a migration command; the planner and the migrator read the same."""

    key: str = setting(
        "DRAGON_MIGRATION_KEY",
        "",
        "key signing migration commands (HMAC-SHA256), shared by the planner and the migrator; "
        "without it the planner issues no commands and the migrator does not start",
        secret=True,
    )
    max_age_s: float = setting(
        "DRAGON_MIGRATION_MAX_AGE", 30.0, "a migration command older than this is refused as stale", "s"
    )

    def validate(self) -> None:
        # Below the day a finished move's record is kept: an older command must be refused as
        # stale, since its record (which answers it again rather than move the task twice) may be gone.
        if not 0 < self.max_age_s <= 3600:
            raise ConfigError("DRAGON_MIGRATION_MAX_AGE must be between 0 and 3600 seconds")

    @property
    def key_bytes(self) -> bytes:
        return self.key.encode()


@dataclass(frozen=True)
class MigratorConfig:
    common: CommonConfig = section(CommonConfig)
    redis: RedisSettings = section(RedisSettings)
    commands: CommandSettings = section(CommandSettings)
    cgroup_root: str = setting("DRAGON_CGROUP_ROOT", "/sys/fs/cgroup", "where the host's cgroupfs is mounted")
    endpoints: str = setting(
        "DRAGON_MIGRATOR_ENDPOINTS",
        "",
        "hosts with their own Docker engine, as host=url pairs (lei/host=url for another LEI's host; url: "
        "unix:// or tcp://); other hosts are emulated hosts of the local engine",
    )
    tls_dir: str = setting(
        "DRAGON_MIGRATOR_TLS_DIR", "", "ca.pem, cert.pem and key.pem for tcp:// endpoints (empty: plain tcp)"
    )
    start_timeout_s: float = setting(
        "DRAGON_MIGRATOR_START_TIMEOUT",
        60.0,
        "a moved task that is not running (and healthy, if it has a healthcheck) this long after its start "
        "is rolled back",
        "s",
    )
    criu: str = setting(
        "DRAGON_MIGRATOR_CRIU", "auto", "auto: probe the engine for checkpoint/restore at start-up; off: never use it"
    )
    docker_root: str = setting(
        "DRAGON_MIGRATOR_DOCKER_ROOT",
        "",
        "the engine's data root as the migrator sees it, for CRIU checkpoints (empty: what the engine reports)",
    )
    probe_image: str = setting(
        "DRAGON_MIGRATOR_PROBE_IMAGE", "dragon-collector:local", "local image of the throw-away CRIU probe container"
    )
    schedule_interval_s: float = setting(
        "DRAGON_MIGRATOR_SCHEDULE_INTERVAL",
        30.0,
        "an unchanged schedule is republished this often; a changed one (moves, tasks others start or stop) sooner",
        "s",
    )

    def validate(self) -> None:
        if not self.commands.key:
            raise ConfigError(
                "DRAGON_MIGRATION_KEY (or DRAGON_MIGRATION_KEY_FILE) must be set: the migrator carries out "
                "signed commands only (`dragon secrets` writes migration.key)"
            )
        try:
            endpoints = parse_endpoints(self.endpoints, self.common.service.lei)
        except ValueError as exc:
            raise ConfigError(f"DRAGON_MIGRATOR_ENDPOINTS: {exc}") from None
        if any(url.startswith("tcp://") for url in endpoints.values()) and not self.tls_dir:
            # A Docker engine on plain tcp is root on that machine for anyone who can reach it.
            raise ConfigError("tcp:// endpoints need DRAGON_MIGRATOR_TLS_DIR (mutual TLS): plain tcp is refused")
        if self.criu not in CRIU_MODES:
            raise ConfigError(f"DRAGON_MIGRATOR_CRIU={self.criu!r} must be one of {', '.join(CRIU_MODES)}")
        if self.start_timeout_s <= 0 or self.schedule_interval_s <= 0:
            raise ConfigError("DRAGON_MIGRATOR_START_TIMEOUT and DRAGON_MIGRATOR_SCHEDULE_INTERVAL must be positive")
