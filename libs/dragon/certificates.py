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
issued again when those names change, when it expires within :data:`RENEW_BEFORE_DAYS`, when
it no longer chains to the CA or its key does not match it, or when asked (``renew_cert``).
The CA is kept for :data:`CA_DAYS`, so clients keep the same ``mqtt-ca.crt`` across renewals;
a new CA is made on the first run or when asked (``new_ca``) only: replacing it silently
would cut off every client that trusts the old one.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

CA_CERT = "mqtt-ca.crt"
BROKER_CERT = "mqtt-broker.crt"
BROKER_KEY = "mqtt-broker.key"
CA_KEY_FILE, CA_CERT_FILE = "ca.key", "ca.crt"  # in the CA directory
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
    """openssl is missing or failed, or the CA cannot be kept; the message says what to do."""


def broker_names(extra: Sequence[str]) -> list[str]:
    """The broker certificate's names: the defaults, then ``extra``, each once; ValueError on a bad name."""
    names: list[str] = []
    for name in (*DEFAULT_BROKER_NAMES, *extra):
        canonical = _canonical_name(name)
        if canonical not in names:
            names.append(canonical)
    return names


def _canonical_name(name: str) -> str:
    address = _ip_address(name)
    if address is not None:
        if getattr(address, "scope_id", None):  # fe80::1%eth0: no certificate can name a zone
            raise ValueError(f"broker name {name!r}: an IPv6 address with a zone cannot be certified")
        return str(address)
    if len(name) > 253 or not all(_DNS_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"broker name {name!r} is neither a DNS name nor an IP address")
    return name.lower()


def _ip_address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def ca_file_problem(data: bytes) -> str | None:
    """Why ``data`` cannot serve as a CA file clients trust, or None: PEM certificates and nothing else."""
    if b"-----BEGIN CERTIFICATE-----" not in data:
        return "holds no PEM certificate"
    if b"PRIVATE KEY-----" in data:
        return "holds a private key: give clients the CA's certificate only"
    return None


def ensure_broker_tls(
    secrets_dir: Path,
    ca_dir: Path,
    lei: str,
    names: Sequence[str],
    renew_cert: bool = False,
    new_ca: bool = False,
) -> list[str]:
    """Make or renew the CA and the broker certificate as needed; return the names of the files written.

    ``names`` are the broker certificate's names (:func:`broker_names`). Raises CertificateError
    when the CA is missing, expired or damaged while clients already trust one (``mqtt-ca.crt``
    exists), unless ``new_ca``.
    """
    written: list[str] = []
    ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_dir.chmod(0o700)
    ca_key, ca_cert, trusted = ca_dir / CA_KEY_FILE, ca_dir / CA_CERT_FILE, secrets_dir / CA_CERT
    cert, key = secrets_dir / BROKER_CERT, secrets_dir / BROKER_KEY
    if new_ca or not _pair_current(ca_key, ca_cert, days=0):
        if trusted.is_file() and not (new_ca or renew_cert) and _broker_cert_current(cert, key, trusted, names):
            # The broker can go on serving what clients trust; only a new certificate needs the CA.
            log.warning("mqtt_ca_key_missing", ca_dir=str(ca_dir), broker_certificate_expires=expiry(cert))
            return []
        if trusted.is_file() and not new_ca:
            raise CertificateError(
                f"the LEI's CA in {ca_dir} is missing, expired or damaged, and clients trust {trusted}: restore "
                f"{ca_dir} from a backup, or make a new CA with --new-ca and give every remote collector and "
                "peer broker the new mqtt-ca.crt"
            )
        _make_ca(ca_key, ca_cert, lei)
        written += [CA_KEY_FILE, CA_CERT_FILE]
    if not trusted.is_file() or trusted.read_bytes() != ca_cert.read_bytes():
        shutil.copyfile(ca_cert, trusted)
        written.append(CA_CERT)
    if renew_cert or not _broker_cert_current(cert, key, ca_cert, names):
        _issue_broker_cert(key, cert, ca_key, ca_cert, lei, names)
        written += [BROKER_KEY, BROKER_CERT]
    return written


def expiry(cert: Path) -> str:
    """When ``cert`` expires, as an ISO 8601 date (UTC)."""
    return _not_after(cert).date().isoformat()


def _not_after(cert: Path) -> datetime:
    text = _openssl("x509", "-in", str(cert), "-noout", "-enddate").stdout.strip()  # notAfter=Mar 11 ... GMT
    return datetime.strptime(text.partition("=")[2], "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC)


def _pair_current(key: Path, cert: Path, days: int) -> bool:
    """Whether ``cert`` and ``key`` exist, belong together and stay valid ``days`` from now."""
    if not (key.is_file() and cert.is_file() and _valid_for(cert, days)):
        return False
    certified = _openssl("x509", "-in", str(cert), "-noout", "-pubkey", check=False)
    held = _openssl("pkey", "-in", str(key), "-pubout", check=False)
    return certified.returncode == 0 and held.returncode == 0 and certified.stdout == held.stdout


def _broker_cert_current(cert: Path, key: Path, ca_cert: Path, names: Sequence[str]) -> bool:
    return (
        _pair_current(key, cert, RENEW_BEFORE_DAYS)
        and _openssl("verify", "-CAfile", str(ca_cert), str(cert), check=False).returncode == 0
        and certificate_names(cert) == sorted(names)
    )


def certificate_names(cert: Path) -> list[str]:
    """The subject alternative names of ``cert`` (DNS names and IP addresses), sorted."""
    return alt_names_of(_openssl("x509", "-in", str(cert), "-noout", "-ext", "subjectAltName").stdout)


def alt_names_of(text: str) -> list[str]:
    """The names in ``openssl x509 -ext subjectAltName`` output, canonical (lower case, compact IPv6), sorted."""
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
    with _made_aside(key, cert) as (new_key, new_cert):
        _private_key(new_key)
        _openssl(
            "req", "-new", "-x509", "-key", str(new_key), "-out", str(new_cert), "-days", str(CA_DAYS),
            "-subj", f"/O=DRAGON/CN=DRAGON {lei} broker CA",
            "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip


def _issue_broker_cert(key: Path, cert: Path, ca_key: Path, ca_cert: Path, lei: str, names: Sequence[str]) -> None:
    alt_names = ",".join(f"IP:{name}" if _ip_address(name) else f"DNS:{name}" for name in names)
    # Never beyond the CA's own end: clients would stop trusting it before it expired.
    days = max(1, min(BROKER_DAYS, (_not_after(ca_cert) - datetime.now(UTC)).days))
    with _made_aside(key, cert) as (new_key, new_cert), tempfile.TemporaryDirectory() as scratch:
        request, extensions = Path(scratch) / "broker.csr", Path(scratch) / "broker.ext"
        extensions.write_text(
            f"subjectAltName={alt_names}\nbasicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
        )
        _private_key(new_key)
        _openssl("req", "-new", "-key", str(new_key), "-out", str(request), "-subj", f"/O=DRAGON/CN={lei} broker")
        _openssl(
            "x509", "-req", "-in", str(request), "-CA", str(ca_cert), "-CAkey", str(ca_key),
            "-set_serial", "0x" + secrets.token_hex(16), "-days", str(days),
            "-extfile", str(extensions), "-out", str(new_cert),
        )  # fmt: skip


@contextmanager
def _made_aside(key: Path, cert: Path) -> Iterator[tuple[Path, Path]]:
    """Paths beside ``key`` and ``cert`` to make the new pair in; both renamed into place at the end.

    If making them fails, they are removed: an uncertified key must not linger where the services
    can read it. A crash between the two renames leaves a key that does not match its
    certificate, which the next run finds (:func:`_pair_current`) and issues again.
    """
    new_key, new_cert = key.with_name(key.name + ".new"), cert.with_name(cert.name + ".new")
    try:
        yield new_key, new_cert
    except BaseException:
        new_key.unlink(missing_ok=True)
        new_cert.unlink(missing_ok=True)
        raise
    new_key.replace(key)
    new_cert.replace(cert)


def _private_key(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)  # before a byte of the key is written
    _openssl("genpkey", *KEY_ALGORITHM, "-out", str(path))


def _openssl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if shutil.which("openssl") is None:
        raise CertificateError("the broker's TLS certificate needs the openssl command (apt-get install openssl)")
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise CertificateError(f"openssl {args[0]} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result
