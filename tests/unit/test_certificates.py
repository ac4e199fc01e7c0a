"""The broker's TLS certificate and the LEI's CA (dragon.certificates), made by the real openssl.

Each handshake below is a real TLS 1.2+ handshake between Python's ssl client and server, in
memory, with the files ``dragon secrets`` writes: what a remote collector and Mosquitto do.
"""

from __future__ import annotations

import datetime
import json
import os
import ssl
import stat
import subprocess
from pathlib import Path

import pytest

from dragon import certificates, secrets
from dragon.cli import main

pytestmark = pytest.mark.unit


def handshake(secrets_dir: Path, server_name: str, trusted: Path | None = None) -> None:
    """A client trusting ``trusted`` (default: the LEI's mqtt-ca.crt) connects to ``server_name``."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(secrets_dir / certificates.BROKER_CERT, secrets_dir / certificates.BROKER_KEY)
    client = ssl.create_default_context(cafile=trusted or secrets_dir / certificates.CA_CERT)
    client.verify_flags |= ssl.VERIFY_X509_STRICT  # what Python 3.13 asks of a certificate by default
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_end = client.wrap_bio(to_client, to_server, server_hostname=server_name)
    server_end = server.wrap_bio(to_server, to_client, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, end in (("client", client_end), ("server", server_end)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        if all(done.values()):
            return
    raise AssertionError("the handshake did not finish")


@pytest.fixture
def lei(tmp_path) -> tuple[Path, Path]:
    directory, ca_dir = tmp_path / "secrets", tmp_path / "secrets-ca"
    secrets.generate(directory, "lei1", ["h1"], broker_names=["broker.example", "10.0.0.2"], ca_dir=ca_dir)
    return directory, ca_dir


def test_clients_trusting_the_lei_ca_reach_the_broker_by_each_of_its_names(lei):
    directory, _ = lei
    for name in ("mosquitto", "localhost", "127.0.0.1", "broker.example", "10.0.0.2"):
        handshake(directory, name)


def test_a_name_the_certificate_does_not_hold_or_another_ca_is_refused(lei, tmp_path):
    directory, _ = lei
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(directory, "elsewhere.example")
    other = tmp_path / "other"
    secrets.generate(other, "lei2", ["h3"])
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        handshake(directory, "localhost", trusted=other / certificates.CA_CERT)


def test_the_ca_key_stays_out_of_what_services_mount_and_the_broker_key_is_theirs_only(lei):
    directory, ca_dir = lei
    assert not list(directory.glob("*ca.key")) and (ca_dir / "ca.key").is_file()
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / certificates.BROKER_KEY).stat().st_mode) == 0o640
    if os.geteuid() == 0:  # Mosquitto's own group: other services need not read the broker's key
        assert (directory / certificates.BROKER_KEY).stat().st_gid == secrets.SERVICE_GIDS["mosquitto"]


def test_running_again_keeps_everything_and_new_names_reissue_the_broker_certificate_only(lei):
    directory, ca_dir = lei
    before = {path.name: path.read_bytes() for path in [*directory.iterdir(), *ca_dir.iterdir()]}
    assert secrets.generate(directory, "lei1", ["h1"], broker_names=["10.0.0.2", "broker.example"], ca_dir=ca_dir) == []
    assert secrets.generate(directory, "lei1", ["h1"], broker_names=["pi.lan"], ca_dir=ca_dir) == [
        certificates.BROKER_KEY,
        certificates.BROKER_CERT,
    ]
    assert "pi.lan" in certificates.certificate_names(directory / certificates.BROKER_CERT)
    assert "broker.example" not in certificates.certificate_names(directory / certificates.BROKER_CERT)
    # The CA is the same, so clients keep the mqtt-ca.crt they were given.
    assert (directory / certificates.CA_CERT).read_bytes() == before[certificates.CA_CERT]
    assert (ca_dir / "ca.key").read_bytes() == before["ca.key"]
    handshake(directory, "pi.lan")


def test_renew_cert_gives_the_broker_a_new_key_under_the_same_ca_and_force_does_not(lei):
    directory, ca_dir = lei
    key = (directory / certificates.BROKER_KEY).read_bytes()
    ca = (directory / certificates.CA_CERT).read_bytes()
    names = ["broker.example", "10.0.0.2"]
    written = secrets.generate(directory, "lei1", ["h1"], force=True, broker_names=names, ca_dir=ca_dir)
    assert certificates.BROKER_KEY not in written  # new passwords only: remote hosts keep trusting
    written = secrets.generate(directory, "lei1", ["h1"], renew_cert=True, broker_names=names, ca_dir=ca_dir)
    assert written == [certificates.BROKER_KEY, certificates.BROKER_CERT]
    assert (directory / certificates.BROKER_KEY).read_bytes() != key
    assert (directory / certificates.CA_CERT).read_bytes() == ca
    handshake(directory, "broker.example")


def test_a_key_that_does_not_match_its_certificate_is_issued_again(lei):
    """A crash between renaming the new key and its certificate: Mosquitto could not start."""
    directory, ca_dir = lei
    names = ["broker.example", "10.0.0.2"]
    subprocess.run(
        ["openssl", "genpkey", *certificates.KEY_ALGORITHM, "-out", str(directory / certificates.BROKER_KEY)]
    )
    written = secrets.generate(directory, "lei1", ["h1"], broker_names=names, ca_dir=ca_dir)
    assert written == [certificates.BROKER_KEY, certificates.BROKER_CERT]
    handshake(directory, "localhost")


def test_a_certificate_near_its_end_is_renewed(tmp_path, monkeypatch):
    directory, ca_dir = tmp_path / "s", tmp_path / "ca"
    monkeypatch.setattr(certificates, "BROKER_DAYS", certificates.RENEW_BEFORE_DAYS - 1)
    certificates.ensure_broker_tls(directory_made(directory), ca_dir, "lei1", certificates.broker_names([]))
    monkeypatch.setattr(certificates, "BROKER_DAYS", 825)
    assert certificates.ensure_broker_tls(directory, ca_dir, "lei1", certificates.broker_names([])) == [
        certificates.BROKER_KEY,
        certificates.BROKER_CERT,
    ]
    assert certificates.ensure_broker_tls(directory, ca_dir, "lei1", certificates.broker_names([])) == []


def test_a_lost_ca_is_not_replaced_behind_the_clients_back(lei):
    """Clients trust mqtt-ca.crt: a new CA would cut every remote collector and peer off at once."""
    directory, ca_dir = lei
    (ca_dir / "ca.key").unlink()
    trusted = (directory / certificates.CA_CERT).read_bytes()
    # The broker certificate is still good for what clients ask of it: the LEI comes up without the CA.
    names = ["broker.example", "10.0.0.2"]
    assert secrets.generate(directory, "lei1", ["h1"], broker_names=names, ca_dir=ca_dir) == []
    # A certificate to issue (another name) needs the CA: refused, with what to do.
    with pytest.raises(certificates.CertificateError, match="restore .* or make a new CA with --new-ca"):
        secrets.generate(directory, "lei1", ["h1"], ca_dir=ca_dir)
    assert (directory / certificates.CA_CERT).read_bytes() == trusted
    written = secrets.generate(directory, "lei1", ["h1"], ca_dir=ca_dir, new_ca=True)
    assert written == ["ca.key", "ca.crt", certificates.CA_CERT, certificates.BROKER_KEY, certificates.BROKER_CERT]
    handshake(directory, "localhost")


def test_whatever_fails_nothing_written_is_left_readable_by_all(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise certificates.CertificateError("openssl x509 failed: a disk full, say")

    monkeypatch.setattr(certificates, "ensure_broker_tls", fail)
    with pytest.raises(certificates.CertificateError):
        secrets.generate(tmp_path / "s", "lei1", ["h1"])
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "s").iterdir()}
    assert modes and all(mode in (0o640, 0o600) for mode in modes.values()), modes  # none for others


def test_the_ca_directory_may_not_lie_in_what_the_services_mount(tmp_path):
    directory = tmp_path / "secrets"
    with pytest.raises(ValueError, match="inside the secrets directory"):
        secrets.generate(directory, "lei1", ["h1"], ca_dir=directory / "ca")
    # SECRETS_DIR=/srv/secrets/ makes compose's ${SECRETS_DIR}-ca /srv/secrets/-ca: a directory inside.
    (directory / "-ca").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"holds directories \(-ca\)"):
        secrets.generate(directory, "lei1", ["h1"])


def directory_made(path: Path) -> Path:
    path.mkdir()
    return path


def test_broker_names_come_after_the_defaults_once_each_and_bad_ones_are_refused():
    assert certificates.broker_names(["Pi.LAN", "pi.lan", "0:0:0:0:0:0:0:1", "10.0.0.2"]) == [
        *certificates.DEFAULT_BROKER_NAMES,
        "pi.lan",
        "10.0.0.2",
    ]
    for bad in ("two words", "a,b", "-dash.example", "x" * 64, "", "under_score.example"):
        with pytest.raises(ValueError, match="neither a DNS name nor an IP address"):
            certificates.broker_names([bad])
    with pytest.raises(ValueError, match="zone"):
        certificates.broker_names(["fe80::1%eth0"])


@pytest.mark.parametrize(
    "printed",
    [
        # OpenSSL 3.0 (upper-case hex, as Debian bookworm's prints it) and 1.1.1 (lower case).
        "X509v3 Subject Alternative Name: \n    DNS:mosquitto, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1\n",
        "X509v3 Subject Alternative Name:\n    DNS:Mosquitto, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1",
        "X509v3 Subject Alternative Name: \n    DNS:mosquitto, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:01\n",
    ],
)
def test_the_names_openssl_prints_are_read_in_canonical_form(printed):
    assert certificates.alt_names_of(printed) == ["127.0.0.1", "::1", "mosquitto"]
    assert certificates.alt_names_of("") == []


def test_dragon_secrets_takes_the_broker_names_and_says_which_is_bad(tmp_path, capsys):
    args = ["secrets", "--dir", str(tmp_path / "s"), "--lei", "lei1", "--hosts", "h1"]
    assert main([*args, "--broker-names", "pi.lan,bad name"]) == 2
    assert "'bad name'" in capsys.readouterr().err and not (tmp_path / "s").exists()  # nothing written
    assert main([*args, "--broker-names", "pi.lan, 10.0.0.9"]) == 0
    assert (tmp_path / "s-ca" / "ca.key").is_file()  # beside --dir by default
    handshake(tmp_path / "s", "10.0.0.9")
    report = json.loads(capsys.readouterr().out)
    expires = datetime.date.fromisoformat(report["broker_certificate_expires"])
    assert expires - datetime.date.today() in (datetime.timedelta(days=824), datetime.timedelta(days=825))
    assert datetime.date.fromisoformat(report["ca_expires"]) > expires


def test_a_renewal_that_fails_leaves_the_old_pair_and_no_stray_key(lei, monkeypatch):
    directory, ca_dir = lei
    old_key = (directory / certificates.BROKER_KEY).read_bytes()
    real = certificates._openssl

    def signing_fails(*args, check=True):
        if args[:2] == ("x509", "-req"):
            raise certificates.CertificateError("openssl x509 failed: disk full")
        return real(*args, check=check)

    monkeypatch.setattr(certificates, "_openssl", signing_fails)
    with pytest.raises(certificates.CertificateError):
        secrets.generate(directory, "lei1", ["h1"], renew_cert=True, ca_dir=ca_dir)
    assert not list(directory.glob("*.new")) and (directory / certificates.BROKER_KEY).read_bytes() == old_key
    monkeypatch.undo()
    handshake(directory, "broker.example")


def test_the_broker_certificate_never_outlives_its_ca(tmp_path, monkeypatch):
    monkeypatch.setattr(certificates, "CA_DAYS", 100)
    directory = directory_made(tmp_path / "s")
    certificates.ensure_broker_tls(directory, tmp_path / "ca", "lei1", certificates.broker_names([]))
    ca_end = certificates.expiry(directory / certificates.CA_CERT)
    assert certificates.expiry(directory / certificates.BROKER_CERT) <= ca_end
