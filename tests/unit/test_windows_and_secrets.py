import base64
import hashlib
import stat

import pytest

from dragon import secrets
from dragon.store import padded_window

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
