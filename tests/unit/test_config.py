import re
import subprocess
import sys
from dataclasses import dataclass

import pytest

from dragon import config
from dragon.collector.config import CollectorConfig
from dragon.config import ConfigError, section, setting
from dragon.detector.config import DetectorConfig
from dragon.service.known import CONFIG_CLASSES, known_env_names

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Inner:
    port: int = setting("DRAGON_T_PORT", 1883, "a port")
    secret: str = setting("DRAGON_T_SECRET", "", "a secret", secret=True)


@dataclass(frozen=True)
class Outer:
    inner: Inner = section(Inner)
    names: tuple[str, ...] = setting("DRAGON_T_NAMES", ("a",), "names")
    flag: bool = setting("DRAGON_T_FLAG", False, "a flag")
    ratio: float = setting("DRAGON_T_RATIO", 0.5, "a ratio", "1")


def test_defaults_when_environment_is_empty():
    cfg = config.load(Outer, {})
    assert cfg.inner.port == 1883 and cfg.names == ("a",) and cfg.flag is False and cfg.ratio == 0.5


def test_values_are_parsed_by_type():
    env = {"DRAGON_T_PORT": "1884", "DRAGON_T_NAMES": "h1, h2,,h3", "DRAGON_T_FLAG": "yes", "DRAGON_T_RATIO": "2"}
    cfg = config.load(Outer, env)
    assert cfg.inner.port == 1884
    assert cfg.names == ("h1", "h2", "h3")
    assert cfg.flag is True
    assert cfg.ratio == 2.0


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"DRAGON_T_PORT": "eighty"}, "DRAGON_T_PORT"),
        ({"DRAGON_T_FLAG": "maybe"}, "DRAGON_T_FLAG"),
        ({"DRAGON_T_PROT": "1"}, "unknown settings: DRAGON_T_PROT"),
    ],
)
def test_bad_or_unknown_values_name_the_variable(env, fragment):
    with pytest.raises(ConfigError, match=fragment):
        config.load(Outer, env)


def test_variables_of_other_services_are_accepted_when_known():
    config.load(Outer, {"DRAGON_OTHER": "x"}, known={"DRAGON_OTHER"})


def test_knowing_every_service_s_settings_imports_none_of_their_heavy_libraries():
    """Every service reads every service's variable names to accept them (known_env_names). The
    detector's process paid 4-7 MiB of peak for the Docker SDK when the migrator's settings did."""
    program = """
import sys
from dragon.service.known import known_env_names
known_env_names()
print(sorted(name for name in ("docker", "requests", "torch", "paho", "numpy") if name in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_secret_is_read_from_file_and_redacted(tmp_path):
    path = tmp_path / "pw"
    path.write_text("s3cret\n")
    cfg = config.load(Outer, {"DRAGON_T_SECRET_FILE": str(path)})
    assert cfg.inner.secret == "s3cret"
    assert config.redacted(cfg)["inner"]["secret"] == "***"


def test_missing_secret_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="DRAGON_T_SECRET_FILE"):
        config.load(Outer, {"DRAGON_T_SECRET_FILE": str(tmp_path / "nope")})


def test_a_tls_ca_file_that_is_missing_or_no_certificate_is_a_configuration_error(tmp_path):
    not_pem, with_key = tmp_path / "ca.crt", tmp_path / "bundle.pem"
    not_pem.write_text("not a certificate\n")
    with_key.write_text("-----BEGIN CERTIFICATE-----\n...\n-----BEGIN PRIVATE KEY-----\n...\n")
    cases = ((tmp_path / "nope.crt", "No such file"), (not_pem, "no PEM certificate"), (with_key, "private key"))
    for ca_file, fragment in cases:
        with pytest.raises(ConfigError, match=f"DRAGON_MQTT_CA_FILE=.*{fragment}"):
            config.load(CollectorConfig, {"DRAGON_MQTT_TLS": "true", "DRAGON_MQTT_CA_FILE": str(ca_file)})


def test_a_ca_file_without_tls_is_an_error_not_a_password_sent_in_clear(tmp_path):
    with pytest.raises(ConfigError, match="DRAGON_MQTT_TLS is false"):
        config.load(CollectorConfig, {"DRAGON_MQTT_CA_FILE": str(tmp_path / "ca.crt"), "DRAGON_MQTT_PORT": "8883"})


def test_service_configs_validate_their_ranges():
    with pytest.raises(ConfigError, match="DRAGON_COLLECTOR_INTERVAL"):
        config.load(CollectorConfig, {"DRAGON_COLLECTOR_INTERVAL": "0.1"}, known=known_env_names())
    with pytest.raises(ConfigError, match="DRAGON_LEI"):
        config.load(DetectorConfig, {"DRAGON_LEI": "a/b"}, known=known_env_names())
    with pytest.raises(ConfigError, match="psutil"):
        config.load(CollectorConfig, {"DRAGON_COLLECTOR_PROBE": "psutil"}, known=known_env_names())
    with pytest.raises(ConfigError, match="DRAGON_DETECTOR_FAULT_SCORE"):
        config.load(DetectorConfig, {"DRAGON_DETECTOR_FAULT_SCORE": "unreal"}, known=known_env_names())
    for keep_for in ("-1", "0.0001", "nan", "inf", "1e300"):
        with pytest.raises(ConfigError, match="DRAGON_FINETUNE_KEEP_FOR"):
            config.load(DetectorConfig, {"DRAGON_FINETUNE_KEEP_FOR": keep_for}, known=known_env_names())
    for intervals in ("1", "-3", "nan", "1e9"):  # one sample late is no silence
        with pytest.raises(ConfigError, match="DRAGON_DETECTOR_SILENT_INTERVALS"):
            config.load(DetectorConfig, {"DRAGON_DETECTOR_SILENT_INTERVALS": intervals}, known=known_env_names())
    never = config.load(DetectorConfig, {"DRAGON_DETECTOR_SILENT_INTERVALS": "0"}, known=known_env_names())
    assert never.silent_intervals == 0
    for windows in ("0", "101"):  # none would start every fault before it is seen; a typo switches them off
        with pytest.raises(ConfigError, match="DRAGON_FAULT_START_WINDOWS"):
            config.load(DetectorConfig, {"DRAGON_FAULT_START_WINDOWS": windows}, known=known_env_names())


def test_the_fault_score_setting_reaches_the_model_learnt_on_line():
    from dragon.detector.learning import gon_config

    settings = config.load(DetectorConfig, {"DRAGON_DETECTOR_FAULT_SCORE": "excess+unreal"}, known=known_env_names())
    assert gon_config(settings).fault_score == "excess+unreal"
    assert gon_config(config.load(DetectorConfig, {}, known=known_env_names())).fault_score == "excess"


def test_settings_table_lists_every_variable_once():
    table = config.settings_table(CONFIG_CLASSES)
    names = known_env_names()
    for name in names:
        assert table.count(f"`{name}`") == 1
    # A secret has no default, and says where else it may come from.
    assert "| `DRAGON_REDIS_PASSWORD` | (none: a secret) |" in table and "`DRAGON_REDIS_PASSWORD_FILE`" in table


def test_readme_table_matches_the_code(repo):
    readme = (repo / "README.md").read_text()
    assert config.settings_table(CONFIG_CLASSES) in readme, "README.md is stale: paste `dragon config-table` into it"


# compose/broker.yml brings up a demo LEI out of the box; these it sets, on purpose, to other
# values than the services' own defaults (README, "Set up").
COMPOSE_DEMO_SETTINGS = {
    "DRAGON_COLLECTOR_INTERVAL": "a sample every 2 s, so the demo's detector learns within minutes",
    "DRAGON_RANDOM_FAULTS_PER_HOUR": "random faults on, so fault events appear without a command",
    "DRAGON_RANDOM_FAULT_DURATION": "shorter faults, to match the shorter sampling interval",
    "DRAGON_RANDOM_FAULT_DELAY": "the first one after the two minutes of learning",
    "DRAGON_DETECTOR_WARMUP": "two minutes of normal operation learnt, not five",
    "DRAGON_DETECTOR_WARMUP_MIN_SAMPLES": "at a sample every 2 s, two minutes hold 60",
}


def test_compose_passes_the_services_own_defaults_except_the_demos(repo):
    text = (repo / "compose" / "broker.yml").read_text()
    passed = re.findall(r"\$\{(DRAGON_[A-Z0-9_]+):-([^}]*)\}", text)
    assert len(passed) > 20, "compose/broker.yml no longer passes settings as ${DRAGON_...:-default}"
    for env, raw in passed:
        owners = [cls for cls in CONFIG_CLASSES if env in config.env_names(cls)]
        assert owners, f"compose/broker.yml passes {env}, which no service reads"
        required = {"DRAGON_MIGRATION_KEY": "k"}  # without it the migrator refuses to start
        for owner in owners:  # the simulator's settings are the planner's too, and so on
            given = config.load(owner, {**required, env: raw}, known=known_env_names())
            same = given == config.load(owner, required, known=known_env_names())
            if env in COMPOSE_DEMO_SETTINGS:
                assert not same, f"{env} is listed as a demo setting but compose passes the default"
            else:
                assert same, f"compose/broker.yml defaults {env} to {raw!r}, {owner.__name__} to something else"


def test_the_readme_names_every_default_compose_changes_for_the_demo(repo):
    readme = (repo / "README.md").read_text()
    with_compose = readme.split("**With compose**", 1)[1].split("| variable |", 1)[0]
    for env in COMPOSE_DEMO_SETTINGS:
        assert f"`{env}`" in with_compose, f"README.md's 'With compose' does not say compose changes {env}"


def test_the_scripts_own_variables_are_accepted_and_all_of_them_listed(repo):
    """`DRAGON_VENV=... scripts/setup-venv.sh` exported in a shell made every later `dragon watch`
    stop with "unknown settings"; a new script variable must join SCRIPT_VARIABLES."""
    scripts = [*sorted((repo / "scripts").glob("*.sh")), repo / ".ci" / "run"]
    used = {name for path in scripts for name in re.findall(r"\bDRAGON_[A-Z0-9_]+", path.read_text())}
    assert used - set(known_env_names()) == set(config.SCRIPT_VARIABLES)
    config.load(Outer, dict.fromkeys(config.SCRIPT_VARIABLES, "1"))
