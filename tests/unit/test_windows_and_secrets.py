import base64
import hashlib
import json
import os
import re
import stat

import pytest
import redis

from dragon import certificates, cli, secrets
from dragon.store import padded_window, refuses_writes_for_now

pytestmark = pytest.mark.unit


def test_window_is_replication_padded_with_the_first_sample():
    assert padded_window([[1.0], [2.0]], 4) == [[1.0], [1.0], [1.0], [2.0]]


def test_window_keeps_only_the_last_k_samples():
    rows = [[float(i)] for i in range(10)]
    assert padded_window(rows, 3) == [[7.0], [8.0], [9.0]]


def test_window_needs_a_sample():
    with pytest.raises(ValueError):
        padded_window([], 3)


def test_mosquitto_hash_is_pbkdf2_sha512_in_the_mosquitto_format():
    salt = b"0123456789ab"
    encoded = secrets.mosquitto_hash("pw", salt)
    kind, iterations, salt_b64, digest_b64 = encoded.split("$")[1:]
    assert (kind, iterations) == ("7", "101")
    assert base64.b64decode(salt_b64) == salt
    assert base64.b64decode(digest_b64) == hashlib.pbkdf2_hmac("sha512", b"pw", salt, 101)


def test_secrets_are_generated_once_and_kept(tmp_path):
    first = secrets.generate(tmp_path, "lei1", ["h1", "h2"])
    assert "passwd" in first and "acl" in first and "redis.conf" in first
    password = (tmp_path / "detector.password").read_text()
    assert secrets.generate(tmp_path, "lei1", ["h1", "h2"]) == []
    assert (tmp_path / "detector.password").read_text() == password
    assert stat.S_IMODE((tmp_path / "detector.password").stat().st_mode) == 0o640
    redis_password = (tmp_path / "redis.password").read_text().strip()
    assert (tmp_path / "redis.conf").read_text() == f"requirepass {redis_password}\n"


def test_acl_gives_the_collector_only_its_hosts():
    acl = secrets.acl("lei1", ["h1", "h2"])
    collector = acl.split("user detector")[0]
    assert "topic write dragon/lei1/hosts/h1/sample" in collector
    assert "topic write dragon/lei1/hosts/h2/sample" in collector
    assert "hosts/+/sample" not in collector
    assert "faults" not in collector


def test_a_host_with_a_collector_of_its_own_gets_a_user_for_its_samples_alone(tmp_path):
    written = secrets.generate(tmp_path, "lei1", ["h1"], remote_hosts=["pi"])
    assert "collector-pi.password" in written
    assert acl_block((tmp_path / "acl").read_text(), "collector-pi") == [
        "topic write dragon/lei1/hosts/pi/sample",
        "topic readwrite dragon/collector/pi/available",
        "topic write dragon/collector/pi/counters",
    ]
    users = [line.split(":")[0] for line in (tmp_path / "passwd").read_text().splitlines()]
    assert "collector-pi" in users and users.count("collector") == 1
    # The broker's collector no longer speaks for that host.
    assert "pi/sample" not in "\n".join(acl_block((tmp_path / "acl").read_text(), "collector"))
    # Taken off the list, the host loses its login; the other passwords stay as they were.
    password, own = (tmp_path / "detector.password").read_text(), (tmp_path / "collector-pi.password").read_text()
    secrets.generate(tmp_path, "lei1", ["h1"])
    assert "collector-pi" not in (tmp_path / "passwd").read_text()
    assert (tmp_path / "detector.password").read_text() == password
    # A run that missed the list (an env file not given) locks it out until it is listed again,
    # not for good: its password is kept, and its collector logs in as before.
    assert secrets.unlisted(tmp_path, [], []) == ["collector-pi.password"]
    secrets.generate(tmp_path, "lei1", ["h1"], remote_hosts=["pi"])
    assert (tmp_path / "collector-pi.password").read_text() == own and "collector-pi:" in (
        tmp_path / "passwd"
    ).read_text()
    # Pruned, listed again later, it gets a new one.
    secrets.generate(tmp_path, "lei1", ["h1"], prune=True)
    assert not (tmp_path / "collector-pi.password").exists() and secrets.unlisted(tmp_path, [], []) == []


def test_a_host_is_sampled_by_one_collector_only(tmp_path):
    with pytest.raises(ValueError, match="choose one"):
        secrets.generate(tmp_path, "lei1", ["h1", "pi"], remote_hosts=["pi"])


def acl_block(acl: str, user: str) -> list[str]:
    """The ACL lines of one user (up to the next blank line)."""
    block = acl.split(f"user {user}\n", 1)[1].split("\n\n", 1)[0]
    return block.splitlines()


def writers(acl: str, topic: str) -> list[str]:
    """The users whose ACL lets them publish on ``topic``."""
    return [
        user
        for user in secrets.MQTT_USERS
        if any("write" in line and line.endswith(f" {topic}") for line in acl_block(acl, user))
    ]


def test_each_peers_bridge_user_may_publish_that_peers_topics_and_nothing_else():
    """One user per peer: a peer's password cannot speak for this LEI, nor for another peer."""
    acl = secrets.acl("lei1", ["h1"], peers=["lei2", "lei3"])
    lei2 = acl_block(acl, "bridge-lei2")
    assert "topic write dragon/lei2/hosts/+/sample" in lei2 and "topic write dragon/fed/lei2/decision" in lei2
    assert all(line.startswith("topic write dragon/") and "lei2/" in line for line in lei2[1:])
    assert not any("read" in line for line in lei2)  # it brings its own in; this LEI's go out on its own bridge
    assert "user bridge\n" not in acl and "user bridge-lei1" not in acl
    assert "user bridge" not in secrets.acl("lei1", ["h1"])
    # The relay takes this LEI's shared topics out and may publish nothing here.
    relay = acl_block(acl, "relay")
    assert relay and all(line.startswith("topic read dragon/") and "lei1/" in line for line in relay)


def test_the_relay_holds_the_bridges_and_brings_nothing_in_from_them(tmp_path):
    """Mosquitto checks no ACL on what comes over a bridge it holds: the relay holds them, one
    Mosquitto per peer, and each one's bridge to the LEI's broker only takes this LEI's shared
    topics in."""
    secrets.generate(tmp_path, "lei1", ["h1"], peers=["lei2"])
    lines = (tmp_path / "relay.conf").read_text().splitlines()
    password = (tmp_path / "relay.password").read_text().strip()
    assert "connection local" in lines and "address mosquitto:1883" in lines
    assert "remote_username relay" in lines and f"remote_password {password}" in lines
    topics = [line for line in lines if line.startswith("topic ")]
    assert topics and all(
        line.startswith("topic dragon/") and "lei1/" in line and line.endswith(" in 1") for line in topics
    )
    assert "allow_anonymous false" in lines and "password_file" not in "\n".join(lines)  # nobody logs in to it
    # dragon-relay adds one bridge file per Mosquitto, and its listener: none here.
    assert not any(line.startswith(("include_dir", "listener")) for line in lines)
    assert "max_queued_messages 100000" in lines and "persistence true" in lines  # as the broker keeps them


def test_a_peer_no_longer_listed_loses_its_bridge_login_and_the_shared_one_is_gone(tmp_path):
    (tmp_path / "bridge.password").write_text("shared by every peer before\n")
    written = secrets.generate(tmp_path, "lei1", ["h1"], peers=["lei2"])
    assert "bridge-lei2.password" in written and not (tmp_path / "bridge.password").exists()
    users = [line.split(":")[0] for line in (tmp_path / "passwd").read_text().splitlines()]
    assert "bridge-lei2" in users and "bridge" not in users
    secrets.generate(tmp_path, "lei1", ["h1"])
    assert "bridge-lei2" not in (tmp_path / "passwd").read_text()
    assert "bridge-lei2" not in (tmp_path / "acl").read_text()
    assert secrets.unlisted(tmp_path, [], []) == ["bridge-lei2.password"]  # kept until --prune
    secrets.generate(tmp_path, "lei1", ["h1"], prune=True)
    assert not (tmp_path / "bridge-lei2.password").exists()


def test_the_simulator_and_planner_answer_and_decide_only_for_their_own_lei():
    acl = secrets.acl("lei1", ["h1"], peers=["lei2"])
    writes = [line for line in acl_block(acl, "simulator") + acl_block(acl, "planner") if "write" in line]
    assert writes == [
        "topic write dragon/lei1/sim/response/+",
        "topic write dragon/lei1/hosts/+/forecast",
        "topic readwrite dragon/simulator/+/available",
        "topic write dragon/simulator/+/counters",
        "topic write dragon/fed/lei1/decision",
        "topic write dragon/lei1/migrations/commands",
        "topic readwrite dragon/planner/+/available",
        "topic write dragon/planner/+/counters",
    ]


def test_only_the_planner_may_command_the_migrator_which_may_only_report():
    acl = secrets.acl("lei1", ["h1"], peers=["lei2"])
    assert writers(acl, "dragon/lei1/migrations/commands") == ["planner"]
    migrator = acl_block(acl, "migrator")
    assert "topic read dragon/lei1/migrations/commands" in migrator
    assert [line for line in migrator if "write" in line] == [
        "topic write dragon/lei1/migrations/events",
        "topic readwrite dragon/lei1/tasks",
        "topic readwrite dragon/migrator/+/available",
        "topic write dragon/migrator/+/counters",
    ]


def test_the_migration_key_is_generated_with_the_passwords_for_its_own_group(tmp_path):
    secrets.generate(tmp_path, "lei1", ["h1"])
    key = (tmp_path / "migration.key").read_text().strip()
    assert len(key) >= 32
    assert stat.S_IMODE((tmp_path / "migration.key").stat().st_mode) == 0o640
    if os.geteuid() == 0:  # only root may give files away
        assert (tmp_path / "migration.key").stat().st_gid == secrets.MIGRATION_GID
        assert (tmp_path / "detector.password").stat().st_gid == secrets.SERVICE_GIDS["detector"]
    assert "migrator:$7$" in (tmp_path / "passwd").read_text()


def test_the_passwords_no_service_reads_are_roots_alone(tmp_path):
    """A service broken into must not take the operator's rights: fault injections start containers."""
    secrets.generate(tmp_path, "lei1", ["h1"], peers=["lei2"], remote_hosts=["pi"])
    for name in (
        "operator.password",
        "viewer.password",
        "relay.password",
        "bridge-lei2.password",
        "collector-pi.password",
    ):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
        if os.geteuid() == 0:
            assert (tmp_path / name).stat().st_gid == 0, name
    assert stat.S_IMODE((tmp_path / "detector.password").stat().st_mode) == 0o640  # the detector's own


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may give files to other groups")
def test_each_service_reads_its_own_password_alone_and_what_every_service_needs(tmp_path):
    """A service broken into must not log in as another: each MQTT password is its service's group's."""
    tmp_path.mkdir(exist_ok=True)
    # What someone left there (a key put aside, a password kept for later):
    # not known to be for the services, so not theirs to read.
    for leftover in (f"{certificates.BROKER_KEY}.bak", "old-redis.password"):
        (tmp_path / leftover).write_text("secret\n")
    secrets.generate(tmp_path, "lei1", ["h1"], peers=["lei2"], remote_hosts=["pi"])
    readers = {}  # file -> the services whose groups may read it
    for path in tmp_path.iterdir():
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o007 == 0, path.name  # nothing for others
        readable_by_group = mode & 0o040 and not path.name.startswith(".")
        readers[path.name] = (
            {s for s in secrets.SERVICE_GIDS if path.stat().st_gid in secrets.groups_of(s)}
            if readable_by_group
            else set()
        )
    for service in ("collector", "detector", "simulator", "planner", "migrator"):
        assert readers[f"{service}.password"] == {service}
    assert readers["healthcheck.password"] == readers["passwd"] == readers["acl"] == {"mosquitto"}
    assert readers[certificates.BROKER_KEY] == {"mosquitto"}
    assert readers["redis.conf"] == {"redis"} and readers["relay.conf"] == {"relay"}
    assert readers[secrets.MIGRATION_KEY] == {"planner", "migrator"}
    assert readers["redis.password"] == readers[certificates.CA_CERT] == set(secrets.SERVICE_GIDS)
    assert readers["collector-pi.password"] == readers["operator.password"] == set()  # root's alone
    assert readers[f"{certificates.BROKER_KEY}.bak"] == readers["old-redis.password"] == set()


def test_compose_gives_each_service_the_groups_that_read_its_secrets(repo):
    text = (repo / "compose" / "broker.yml").read_text()
    for service in secrets.SERVICE_GIDS:
        block = re.search(rf"^  {service}:\n(.*?)(?=^  \S|^\S)", text, re.MULTILINE | re.DOTALL)
        assert block, f"compose/broker.yml has no service {service}"
        groups = re.findall(r"^    group_add: \[(.*)\]", block.group(1), re.MULTILINE)
        assert groups, f"{service} has no group_add of its own"
        assert sorted(int(g.strip(' "')) for g in groups[0].split(",")) == sorted(secrets.groups_of(service)), service


def test_a_bridge_file_carries_each_lei_its_own_direction():
    conf = secrets.bridge_conf("lei1", "lei2", "broker2.example:8883", "s3cret", "/mosquitto/bridges/lei2.ca.crt")
    lines = conf.splitlines()
    assert "address broker2.example:8883" in lines and "bridge_cafile /mosquitto/bridges/lei2.ca.crt" in lines
    assert "bridge_insecure false" in lines  # the peer's certificate must name the address's host
    assert "remote_username bridge-lei1" in lines and "remote_password s3cret" in lines
    assert "topic dragon/lei1/hosts/+/sample out 1" in lines
    assert "topic dragon/fed/lei1/decision out 1" in lines
    assert "topic dragon/lei1/tasks out 1" in lines  # a move is seen by the peers' planners at once
    # Both modes' verdicts, so a peer's planner also plans on the faults a forecast predicts.
    assert "topic dragon/lei1/hosts/+/health out 1" in lines
    assert "topic dragon/lei1/hosts/+/health/predicted out 1" in lines
    assert not any("migrations" in line for line in lines)  # commands never cross brokers
    # Nothing in: Mosquitto applies no ACL to what comes over a bridge the broker holds itself.
    assert [line for line in lines if line.startswith("topic ")] == [
        line for line in lines if line.startswith("topic dragon/") and "lei1/" in line and line.endswith(" out 1")
    ]
    with pytest.raises(ValueError, match="itself"):
        secrets.bridge_conf("lei1", "lei1", "x:1", "p", None)
    plain = secrets.bridge_conf("lei1", "lei2", "broker2.example:1883", "s3cret", None).splitlines()
    assert not any(line.startswith("bridge_") for line in plain)


def test_only_the_simulator_forecasts_and_only_the_detector_judges_forecasts():
    acl = secrets.acl("lei1", ["h1"], peers=["lei2"])
    assert writers(acl, "dragon/lei1/hosts/+/forecast") == ["simulator"]
    assert "topic read dragon/lei1/hosts/+/forecast" in acl_block(acl, "detector")
    assert writers(acl, "dragon/lei1/hosts/+/health/predicted") == ["detector"]


def test_a_lei_cannot_be_its_own_peer(tmp_path):
    with pytest.raises(ValueError, match="own peer"):
        secrets.generate(tmp_path, "lei1", ["h1"], peers=["lei1"])


def test_dragon_bridge_writes_the_file_readable_by_the_broker_only(tmp_path, capsys):
    from dragon.cli import main

    (tmp_path / "bridge-lei1.password").write_text("peerpass\n")
    out = tmp_path / "lei2.conf"
    args = ["bridge", "--lei", "lei1", "--peer", "lei2", "--address", "b2:1883"]
    password = str(tmp_path / "bridge-lei1.password")
    assert main([*args, "--peer-password-file", password, "--out", str(out), "--plain"]) == 0
    assert "remote_password peerpass" in out.read_text()
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    bad = ["bridge", "--lei", "lei1", "--peer", "le/i2", "--address", "b2:1883"]
    assert main([*bad, "--peer-password-file", password, "--out", str(out), "--plain"]) == 2
    assert "--peer" in capsys.readouterr().err
    # A second file for the same peer: two relay processes would take one session at it in turns.
    twin = tmp_path / "lei2-new.conf"
    assert main([*args, "--peer-password-file", password, "--out", str(twin), "--plain"]) == 2
    assert "lei2.conf bridges lei1 to lei2 already" in capsys.readouterr().err and not twin.exists()
    assert main([*args, "--peer-password-file", password, "--out", str(out), "--plain"]) == 0  # over it: fine


@pytest.mark.parametrize(
    "address, password, error",
    [
        ("b2:1883\naddress evil:1883", "peerpass", "is not host:port"),
        ("b2", "peerpass", "is not host:port"),
        ("b2:1883", "pw\nconnection x\naddress evil:1883\ntopic # both 2", "is not one `dragon secrets` makes"),
    ],
)
def test_dragon_bridge_writes_no_config_line_the_peer_or_the_operator_did_not_mean(
    tmp_path, capsys, address, password, error
):
    """What the peer sends (its password file) and the address land on lines of the relay's config."""
    from dragon.cli import main

    (tmp_path / "pw").write_text(password + "\n")
    out = tmp_path / "lei2.conf"
    args = ["bridge", "--lei", "lei1", "--peer", "lei2", "--address", address, "--plain"]
    assert main([*args, "--peer-password-file", str(tmp_path / "pw"), "--out", str(out)]) == 2
    assert error in capsys.readouterr().err and not out.exists()


def test_dragon_bridge_speaks_tls_to_the_peer_it_trusts_unless_told_plain(tmp_path, capsys):
    from dragon.cli import main

    peer = tmp_path / "peer-secrets"
    secrets.generate(peer, "lei2", ["h3"], peers=["lei1"])
    bridges = tmp_path / "bridges"
    bridges.mkdir()
    args = ["bridge", "--lei", "lei1", "--peer", "lei2", "--address", "b2.example:8883"]
    args += ["--peer-password-file", str(peer / "bridge-lei1.password"), "--out", str(bridges / "lei2.conf")]
    with pytest.raises(SystemExit) as neither:  # secure by default: TLS, or plain said out loud
        main(args)
    assert neither.value.code == 2 and "--peer-ca-file" in capsys.readouterr().err
    assert main([*args, "--peer-ca-file", str(peer / "mqtt-ca.crt")]) == 0
    assert (bridges / "lei2.ca.crt").read_bytes() == (peer / "mqtt-ca.crt").read_bytes()
    assert "bridge_cafile /mosquitto/bridges/lei2.ca.crt" in (bridges / "lei2.conf").read_text().splitlines()
    assert main([*args, "--peer-ca-file", str(peer / "bridge-lei1.password")]) == 2  # not a certificate
    assert main([*args, "--peer-ca-file", str(tmp_path / "missing.crt")]) == 2
    assert "missing.crt" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--hosts", "h1,+"),
        ("--hosts", "h/1"),
        ("--lei", "#"),
        ("--peers", "a+"),
        ("--remote-hosts", "p#"),
        ("--remote-hosts", "h1"),  # also sampled by the broker's collector
    ],
)
def test_dragon_secrets_refuses_ids_that_are_not_one_topic_level(tmp_path, capsys, flag, value):
    """Each id becomes a level of an ACL line: "+" would let the collector write every host's samples."""
    args = {"--lei": "lei1", "--hosts": "h1", "--peers": "", "--remote-hosts": ""} | {flag: value}
    argv = ["secrets", "--dir", str(tmp_path / "s"), *[item for pair in args.items() for item in pair]]
    assert cli.main(argv) == 2
    assert flag in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_dragon_secrets_says_which_unlisted_passwords_it_keeps_and_prunes_them_when_asked(tmp_path, capsys):
    base = ["secrets", "--dir", str(tmp_path / "s"), "--lei", "lei1", "--hosts", "h1"]
    assert cli.main([*base, "--peers", "lei2", "--remote-hosts", "pi"]) == 0
    capsys.readouterr()
    assert cli.main(base) == 0  # the lists forgotten, as a run without the env file
    out, err = capsys.readouterr()
    assert json.loads(out)["unlisted_kept"] == ["bridge-lei2.password", "collector-pi.password"]
    assert "--prune" in err
    assert cli.main([*base, "--prune"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pruned"] == ["bridge-lei2.password", "collector-pi.password"] and report["unlisted_kept"] == []


@pytest.mark.parametrize(
    "error, for_now",
    [
        (redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), True),
        (redis.exceptions.ReadOnlyError("You can't write against a read only replica."), True),
        (redis.ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's unable to persist"), True),
        # As redis-py reports an error inside a pipeline (MULTI/EXEC): the command comes first.
        (redis.ResponseError("Command # 1 (ZADD k 1 m) of pipeline caused error: MISCONF Redis is unable"), True),
        (redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
    ],
)
def test_redis_refusing_writes_for_now_is_told_from_a_bad_command(error, for_now):
    assert refuses_writes_for_now(error) == for_now
