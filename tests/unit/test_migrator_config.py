"""The migrator's settings: the key it must have, the hosts' engines, Docker's times."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dragon import config
from dragon.config import ConfigError
from dragon.migrator.config import MigratorConfig, parse_endpoints
from dragon.migrator.engines import Engines, container_named
from dragon.migrator.schedule import started_at

pytestmark = pytest.mark.unit


def load(**env: str) -> MigratorConfig:
    return config.load(MigratorConfig, environ={"DRAGON_MIGRATION_KEY": "k" * 32, **env})


def test_the_migrator_does_not_start_without_the_command_key():
    with pytest.raises(ConfigError, match="DRAGON_MIGRATION_KEY"):
        config.load(MigratorConfig, environ={})
    assert load().commands.key_bytes == b"k" * 32


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DRAGON_MIGRATOR_ENDPOINTS": "pi7"}, "host=url"),
        ({"DRAGON_MIGRATOR_ENDPOINTS": "pi7=http://x"}, "unix:// or tcp://"),
        ({"DRAGON_MIGRATOR_ENDPOINTS": "pi7=ssh://dragon@pi7"}, "use tcp:// with TLS"),
        ({"DRAGON_MIGRATOR_ENDPOINTS": "pi7=tcp://10.0.0.7:2376"}, "DRAGON_MIGRATOR_TLS_DIR"),  # no plain tcp
        ({"DRAGON_MIGRATOR_CRIU": "maybe"}, "auto, off"),
        ({"DRAGON_MIGRATION_MAX_AGE": "0"}, "between 0 and 3600"),
        ({"DRAGON_MIGRATION_MAX_AGE": "100000"}, "between 0 and 3600"),  # records of moves go after a day
        ({"DRAGON_LEI": ".."}, "not '.' or '..'"),  # ids become cgroup paths too
    ],
)
def test_bad_settings_are_refused_with_the_reason(env, message):
    with pytest.raises(ConfigError, match=message):
        load(**env)


def test_endpoints_name_hosts_of_this_lei_or_another():
    endpoints = parse_endpoints("pi7=tcp://10.0.0.7:2376, lei2/pi9=unix:///run/pi9.sock", "lei1")
    assert endpoints == {("lei1", "pi7"): "tcp://10.0.0.7:2376", ("lei2", "pi9"): "unix:///run/pi9.sock"}


def test_an_emulated_host_has_a_parent_cgroup_and_a_machine_none():
    engines = Engines(local=None, cgroup_root="/sys/fs/cgroup", endpoints={("lei1", "pi7"): "tcp://10.0.0.7:2376"})
    assert engines.cgroup_parent("lei1", "h1") == "/dragon/lei1/h1"
    assert engines.cgroup_parent("lei1", "pi7") is None
    assert engines.of("lei1", "h1").name == "local"


def test_dockers_nanosecond_times_become_epoch_seconds():
    assert started_at("2026-12-02T17:11:52.5Z") == pytest.approx(1796231512.5)
    assert started_at("2026-12-02T17:11:52.123456789Z") == pytest.approx(1796231512.123456789)
    assert started_at("0001-01-01T00:00:00Z") == 0.0  # never started


def test_a_name_is_taken_on_an_engine_only_by_a_container_of_exactly_that_name():
    """Docker's name filter matches parts of names, and its lookup by key takes a name for an id
    prefix: a task named ``db`` must not clash with ``db-backup`` or with an id ``db31…``."""
    on_engine = [SimpleNamespace(name="db-backup", id="db31f0"), SimpleNamespace(name="web", id="0a2b")]

    class Containers:
        def list(self, all: bool, filters: dict) -> list:
            return [c for c in on_engine if filters["name"] in c.name]  # as Docker filters names

    engine = SimpleNamespace(containers=Containers())
    assert not container_named(engine, "db")
    assert container_named(engine, "db-backup")
