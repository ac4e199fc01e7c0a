"""The broker's TLS certificate and the private CA that signs it (part of ``dragon secrets``).

Whatever reaches the broker from another machine — a remote host's collector, a peer broker's
bridge, an operator's tool — should not send its password in clear. ``dragon secrets`` makes a
private CA for the LEI once and a certificate for the broker signed by it:

* in the CA directory (never mounted into a service): ``ca.key`` (mode 0600) and ``ca.crt``;
* in the secrets directory: ``mqtt-ca.crt`` (the CA certificate, what clients trust: copy it
  to every remote host and peer broker), ``mqtt-broker.crt`` and ``mqtt-broker.key``
  (Mosquitto's TLS listener).

The broker certificate names every address clients use for the broker (``--broker-names``:
DNS names or IP addresses), since clients check the name they connected to against it. It is
issued again when those names change, when it expires within :data:`RENEW_BEFORE_DAYS`, or
when it no longer chains to the CA; the CA is kept for :data:`CA_DAYS`, so clients keep the
same ``mqtt-ca.crt`` across renewals.

The keys and certificates are made by the ``openssl`` command (every Debian image with
``ca-certificates`` has it), so no Python dependency is needed for an occasional task.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

CA_CERT = "mqtt-ca.crt"
BROKER_CERT = "mqtt-broker.crt"
BROKER_KEY = "mqtt-broker.key"
# The names the broker is always reachable by: its service name on the deployment's network,
# and this machine's loopback (tools on the broker node, published ports).
DEFAULT_BROKER_NAMES = ("mosquitto", "localhost", "127.0.0.1", "::1")
CA_DAYS = 3650
BROKER_DAYS = 825
RENEW_BEFORE_DAYS = 30
# An ECDSA P-256 key: what every TLS stack here speaks, and a fraction of an RSA key's cost on a Pi.
KEY_ALGORITHM = ("-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class CertificateError(RuntimeError):
    """openssl is missing or failed; the message says which step."""


def broker_names(extra: Sequence[str]) -> list[str]:
    """The broker certificate's names: the defaults, then ``extra``, each once; ValueError on a bad name."""
    names: list[str] = []
    for name in (*DEFAULT_BROKER_NAMES, *extra):
        canonical = _canonical_name(name)
        if canonical not in names:
            names.append(canonical)
    return names


def _canonical_name(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    if len(name) > 253 or not all(_DNS_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"broker name {name!r} is neither a DNS name nor an IP address")
    return name.lower()


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def ensure_broker_tls(
    secrets_dir: Path, ca_dir: Path, lei: str, names: Sequence[str], renew: bool = False
) -> list[str]:
    """Make or renew the CA and the broker certificate as needed; return the names of the files written.

    ``names`` are the broker certificate's names (:func:`broker_names`). Files still valid are
    kept, unless ``renew``: then the broker gets a new key and certificate (under the same CA).
    """
    written: list[str] = []
    ca_dir.mkdir(parents=True, exist_ok=True)
    ca_dir.chmod(0o700)
    ca_key, ca_cert = ca_dir / "ca.key", ca_dir / "ca.crt"
    if not (ca_key.is_file() and ca_cert.is_file() and _valid_for(ca_cert, RENEW_BEFORE_DAYS)):
        _make_ca(ca_key, ca_cert, lei)
        written += ["ca.key", "ca.crt"]
    trusted = secrets_dir / CA_CERT
    if not trusted.is_file() or trusted.read_bytes() != ca_cert.read_bytes():
        shutil.copyfile(ca_cert, trusted)
        written.append(CA_CERT)
    cert, key = secrets_dir / BROKER_CERT, secrets_dir / BROKER_KEY
    if renew or not _broker_cert_current(cert, key, ca_cert, names):
        _issue_broker_cert(key, cert, ca_key, ca_cert, lei, names)
        written += [BROKER_KEY, BROKER_CERT]
    return written


def _broker_cert_current(cert: Path, key: Path, ca_cert: Path, names: Sequence[str]) -> bool:
    return (
        cert.is_file()
        and key.is_file()
        and _valid_for(cert, RENEW_BEFORE_DAYS)
        and _openssl("verify", "-CAfile", str(ca_cert), str(cert), check=False).returncode == 0
        and certificate_names(cert) == sorted(names)
    )


def certificate_names(cert: Path) -> list[str]:
    """The subject alternative names of ``cert`` (DNS names and IP addresses), sorted."""
    text = _openssl("x509", "-in", str(cert), "-noout", "-ext", "subjectAltName").stdout
    names = []
    for entry in re.split(r",\s*", text.split("\n", 1)[-1].strip()):
        kind, _, value = entry.partition(":")
        if kind == "DNS":
            names.append(value.lower())
        elif kind == "IP Address":
            names.append(str(ipaddress.ip_address(value)))
    return sorted(names)


def _valid_for(cert: Path, days: int) -> bool:
    """Whether ``cert`` is still valid ``days`` from now (and readable at all)."""
    return _openssl("x509", "-in", str(cert), "-noout", "-checkend", str(days * 86400), check=False).returncode == 0


def _make_ca(key: Path, cert: Path, lei: str) -> None:
    _private_key(key)
    _openssl(
        "req", "-new", "-x509", "-key", str(key), "-out", str(cert), "-days", str(CA_DAYS),
        "-subj", f"/O=DRAGON/CN=DRAGON {lei} broker CA",
        "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip


def _issue_broker_cert(key: Path, cert: Path, ca_key: Path, ca_cert: Path, lei: str, names: Sequence[str]) -> None:
    alt_names = ",".join(f"IP:{name}" if _is_ip(name) else f"DNS:{name}" for name in names)
    with tempfile.TemporaryDirectory() as scratch:
        request, extensions = Path(scratch) / "broker.csr", Path(scratch) / "broker.ext"
        extensions.write_text(
            f"subjectAltName={alt_names}\nbasicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
        )
        new_key = key.with_suffix(key.suffix + ".tmp")
        _private_key(new_key)
        _openssl("req", "-new", "-key", str(new_key), "-out", str(request), "-subj", f"/O=DRAGON/CN={lei} broker")
        _openssl(
            "x509", "-req", "-in", str(request), "-CA", str(ca_cert), "-CAkey", str(ca_key),
            "-set_serial", "0x" + secrets.token_hex(16), "-days", str(BROKER_DAYS),
            "-extfile", str(extensions), "-out", str(cert.with_suffix(cert.suffix + ".tmp")),
        )  # fmt: skip
    # The key and its certificate change together: Mosquitto never reads one without the other.
    new_key.replace(key)
    cert.with_suffix(cert.suffix + ".tmp").replace(cert)


def _private_key(path: Path) -> None:
    path.touch(mode=0o600)
    path.chmod(0o600)  # before a byte of the key is written
    _openssl("genpkey", *KEY_ALGORITHM, "-out", str(path))


def _openssl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if shutil.which("openssl") is None:
        raise CertificateError("the broker's TLS certificate needs the openssl command (apt-get install openssl)")
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise CertificateError(f"openssl {args[0]} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result
