"""Credentials and broker ACLs for one LEI, generated once (``dragon secrets``).

Writes into one directory:

* ``<user>.password`` — a random password per MQTT user (``collector``,
  ``detector``, ``simulator``, ``planner``, ``migrator``, ``relay`` for the broker's bridges to its peers,
  ``operator`` for people and tests, ``viewer`` read-only for other
  tools, ``healthcheck``), one per host with a collector of its own
  (``collector-<host>``, :func:`remote_collector_user`), which may publish only that host's samples,
  and one per peer LEI (``bridge-<peer>``, :func:`bridge_user`), whose broker's bridge may publish
  only that LEI's topics;
* ``passwd`` — Mosquitto's password file (PBKDF2-SHA512, the ``$7$`` format of
  ``mosquitto_passwd``), so no Mosquitto binary is needed to make it;
* ``acl`` — each service may publish only its own topics; the collector only
  the sample topics of the hosts it samples;
* ``redis.password`` and ``redis.conf`` (``requirepass``), for Redis and its clients;
* ``relay.conf`` — the Mosquitto config of the relay that holds this LEI's bridges to its peers
  (:func:`relay_conf`);
* ``migration.key`` — the key with which the planner signs migration commands and the
  migrator checks them (a second gate behind the ACL: only the planner may publish commands);
  readable by its own group (``MIGRATION_GID``), which only the planner and migrator join.
* ``mqtt-ca.crt``, ``mqtt-broker.crt`` and ``mqtt-broker.key`` — the broker's TLS listener, signed
  by the LEI's own CA, whose key lies in a directory of its own (:mod:`dragon.certificates`).

Existing files are kept, so running it again never changes a password that
services already use; ``--force`` makes new ones.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path

from dragon import certificates

MQTT_USERS = (
    "collector",
    "detector",
    "simulator",
    "planner",
    "migrator",
    "relay",
    "operator",
    "viewer",
    "healthcheck",
)
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd 2.0 uses for $7$
# Who may read what, by group (compose/broker.yml gives each service its groups_of()). Every
# service joins SECRETS_GID, which enters the directory and reads what all of them need (Redis's
# password, the broker's certificates); a file only one service reads belongs to that service's
# own group, so a service broken into cannot log in as another: the detector cannot publish the
# planner's decisions nor Redis read an MQTT password. The collector and the migrator run as root
# (they drive Docker), which reads everything anyway.
SECRETS_GID = 10001
# The planner and the migrator: only they may read the migration key.
MIGRATION_GID = 10002
MIGRATION_KEY = "migration.key"
KEY_HOLDERS = ("planner", "migrator")
SERVICE_GIDS = {
    "mosquitto": 10003,
    "redis": 10004,
    "relay": 10005,
    "collector": 10006,
    "detector": 10007,
    "simulator": 10008,
    "planner": 10009,
    "migrator": 10010,
}
# The files one service alone reads; the others of the directory are for every service, or root's.
OWN_FILES = {
    **{f"{service}.password": service for service in ("collector", "detector", "simulator", "planner", "migrator")},
    "healthcheck.password": "mosquitto",
    "passwd": "mosquitto",
    "acl": "mosquitto",
    certificates.BROKER_KEY: "mosquitto",
    "redis.conf": "redis",
    "relay.conf": "relay",
}
LOCK_FILE = ".dragon-secrets.lock"
# The files every service reads: Redis's password and the broker's certificates (nothing secret).
SHARED_FILES = frozenset({"redis.password", certificates.CA_CERT, certificates.BROKER_CERT})
# Where the relay finds the bridges' files (compose/broker.yml and the tests mount them there).
BRIDGES_MOUNT = "/mosquitto/bridges"
# What each LEI shares with its peers: its samples, both modes' verdicts (a peer's planner plans on
# predicted faults too), its schedule (a move is seen at once) and its planner's decision. Exact
# topics, no "#": they are also what a peer's bridge user may publish here, and a peer could
# otherwise keep any number of retained messages on this broker under deeper topics.
BRIDGED_TOPICS = (
    "dragon/{}/hosts/+/sample",
    "dragon/{}/hosts/+/health",
    "dragon/{}/hosts/+/health/predicted",
    "dragon/{}/tasks",
    "dragon/fed/{}/decision",
)


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    return f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def remote_collector_user(host: str) -> str:
    """The MQTT user of the collector that runs on ``host`` itself (not on the broker)."""
    return f"collector-{host}"


def bridge_user(peer: str) -> str:
    """The MQTT user with which the bridge of LEI ``peer``'s broker logs in to this one."""
    return f"bridge-{peer}"


def acl(lei: str, hosts: Sequence[str], peers: Sequence[str] = (), remote_hosts: Sequence[str] = ()) -> str:
    """The Mosquitto ACL of one LEI: least privilege per service.

    ``hosts`` are sampled by the broker's collector (user ``collector``); each of
    ``remote_hosts`` runs a collector of its own, with a user that may publish that host's
    samples and nothing of any other host, so a password copied to one machine speaks for it
    alone. ``peers`` are the other LEIs of the federation: each one's relay bridges its own
    LEI's samples, verdicts, schedule and decision here, logged in as :func:`bridge_user`, which
    may publish that LEI's topics and nothing else (not this LEI's, not another peer's). This
    LEI's own go out through its relay (user ``relay``, which may only read them): the broker
    holds no bridge itself, because Mosquitto applies no ACL to what arrives over a bridge a
    broker holds, so the broker at the other end could publish anything here.
    """
    lines = [
        "# Generated by `dragon secrets`; one block per MQTT user.",
        "user collector",
        *[f"topic write dragon/{lei}/hosts/{host}/sample" for host in hosts],
        f"topic read dragon/{lei}/inject/+",
        f"topic write dragon/{lei}/injections",
        "topic readwrite dragon/collector/+/available",
        "topic write dragon/collector/+/counters",
        "",
        *[line for host in remote_hosts for line in _remote_collector_lines(lei, host)],
        "user detector",
        f"topic read dragon/{lei}/hosts/+/sample",
        f"topic read dragon/{lei}/hosts/+/forecast",
        f"topic write dragon/{lei}/hosts/+/health",
        f"topic write dragon/{lei}/hosts/+/health/predicted",
        f"topic write dragon/faults/{lei}/+",
        f"topic write dragon/faults-json/{lei}/+",
        "topic readwrite dragon/detector/+/available",
        "topic write dragon/detector/+/counters",
        "",
        "# Every LEI's samples (its own and bridged ones); answers only under its response prefix,",
        "# forecasts only of this LEI's hosts.",
        "user simulator",
        "topic read dragon/+/hosts/+/sample",
        "topic read dragon/+/tasks",
        f"topic read dragon/{lei}/sim/request",
        f"topic write dragon/{lei}/sim/response/+",
        f"topic write dragon/{lei}/hosts/+/forecast",
        "topic readwrite dragon/simulator/+/available",
        "topic write dragon/simulator/+/counters",
        "",
        "# Plans from every LEI's state and verdicts; publishes its decision and, alone, this LEI's commands.",
        "user planner",
        "topic read dragon/+/hosts/+/sample",
        "topic read dragon/+/hosts/+/health/#",
        "topic read dragon/+/tasks",
        "topic read dragon/fed/+/decision",
        f"topic write dragon/fed/{lei}/decision",
        f"topic write dragon/{lei}/migrations/commands",
        f"topic read dragon/{lei}/migrations/events",
        "topic readwrite dragon/planner/+/available",
        "topic write dragon/planner/+/counters",
        "",
        "# Takes this LEI's commands; tells what it did and where each task runs now.",
        "user migrator",
        f"topic read dragon/{lei}/migrations/commands",
        f"topic write dragon/{lei}/migrations/events",
        f"topic readwrite dragon/{lei}/tasks",
        "topic readwrite dragon/migrator/+/available",
        "topic write dragon/migrator/+/counters",
        "",
        "# The relay: takes this LEI's shared topics to the peers' brokers, brings nothing in.",
        "user relay",
        *[f"topic read {pattern.format(lei)}" for pattern in BRIDGED_TOPICS],
        "",
        *[line for peer in peers for line in _bridge_lines(peer)],
        "# People and tests: watch everything, inject faults into this LEI's emulated hosts, ask the simulator.",
        "user operator",
        "topic read dragon/#",
        f"topic write dragon/{lei}/inject/+",
        f"topic write dragon/{lei}/sim/request",
        "topic read $SYS/#",
        "",
        "# Other tools: read-only.",
        "user viewer",
        "topic read dragon/#",
        "",
        "user healthcheck",
        "topic read $SYS/#",
        "",
    ]
    return "\n".join(lines)


def bridge_conf(lei: str, peer: str, address: str, remote_password: str, ca_file: str | None) -> str:
    """Mosquitto config, for this LEI's relay (:func:`relay_conf`), of the bridge that carries this
    LEI's shared topics to ``peer``'s broker at ``address`` (host:port), and nothing back: the
    peer's relay holds the bridge the other way, logged in to this broker as ``bridge-<peer>``.
    ``remote_password`` is the peer's ``bridge-<lei>.password``. A bridge that drops retries with
    backoff; the persistent session (``cleansession false``) keeps what was queued while the link
    was down.
    With ``ca_file`` (the peer's ``mqtt-ca.crt`` as Mosquitto sees it, e.g. under
    :data:`BRIDGES_MOUNT`) the bridge speaks TLS to the peer's TLS listener and checks that
    its certificate names ``address``'s host; with None it is plain TCP.
    """
    if lei == peer:
        raise ValueError(f"LEI {lei!r} cannot bridge to itself")
    # Each lands on a line of a Mosquitto config: a newline in either would write lines of its own.
    if not re.fullmatch(r"[^\s:]+:\d{1,5}", address):
        raise ValueError(f"the address {address!r} is not host:port")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", remote_password):
        raise ValueError("the peer's password is not one `dragon secrets` makes (letters, digits, '-' and '_')")
    lines = [
        f"# Generated by `dragon bridge`: {lei} -> {peer} ({peer}'s relay holds the bridge back).",
        f"connection {lei}-to-{peer}",
        f"address {address}",
        f"remote_username {bridge_user(lei)}",
        f"remote_password {remote_password}",
        f"remote_clientid bridge-{lei}-to-{peer}",
        "cleansession false",
        "try_private true",
        "restart_timeout 1 30",
        "notifications false",
        *([f"bridge_cafile {ca_file}", "bridge_insecure false"] if ca_file is not None else []),
        *[f"topic {pattern.format(lei)} out 1" for pattern in BRIDGED_TOPICS],
        "",
    ]
    return "\n".join(lines)


def relay_conf(lei: str, password: str) -> str:
    """The part of this LEI's relay config every peer's Mosquitto shares (``dragon-relay``,
    compose/mosquitto/relay.sh, runs one per bridge file of :data:`BRIDGES_MOUNT` and adds that
    file and a local listener): a connection to the LEI's broker, logged in as ``relay``, that
    takes this LEI's shared topics in and brings nothing back. One Mosquitto per peer because a
    Mosquitto checks no ACL on what arrives over a bridge it holds and routes it to its other
    bridges: what one peer's broker sends back must reach neither this LEI nor another peer.
    What waits for a peer whose link is down is kept as the broker would keep it (on disk, up
    to 100,000 messages)."""
    return "\n".join(
        [
            "# Generated by `dragon secrets`: the relay of this LEI's bridges to its peers' brokers.",
            "allow_anonymous false",
            "persistence true",
            "persistence_location /mosquitto/data/",
            "autosave_interval 30",
            "max_queued_messages 100000",
            "max_queued_bytes 0",
            "log_dest stderr",
            "connection_messages true",
            "connection local",
            "address mosquitto:1883",
            "remote_username relay",
            f"remote_password {password}",
            f"remote_clientid relay-{lei}",
            "cleansession false",
            "try_private true",
            "restart_timeout 1 30",
            "notifications false",
            *[f"topic {pattern.format(lei)} in 1" for pattern in BRIDGED_TOPICS],
            "",
        ]
    )


def write_bridge(
    out: Path, lei: str, peer: str, address: str, remote_password: str, peer_ca: bytes | None
) -> list[Path]:
    """Write the bridge file ``out`` (:func:`bridge_conf`) and, for TLS, the peer's CA certificate
    beside it as ``<stem>.ca.crt`` (Mosquitto's ``include_dir`` reads ``*.conf`` only); return the
    files written. ValueError when ``peer_ca`` is not a CA certificate to trust."""
    for other in out.parent.glob("*.conf"):
        # Two files for one peer: two relay processes taking one session at the peer in turns.
        try:
            twin = other != out and f"\nconnection {lei}-to-{peer}\n" in other.read_text()
        except OSError:
            continue  # not ours to read
        if twin:
            raise ValueError(f"{other} bridges {lei} to {peer} already: write over it, or delete it first")
    written = []
    ca_file = None
    if peer_ca is not None:
        problem = certificates.ca_file_problem(peer_ca)
        if problem is not None:
            raise ValueError(f"the peer's CA file {problem}")
        copy = out.with_name(f"{out.stem}.ca.crt")
        copy.write_bytes(peer_ca)
        copy.chmod(0o644)  # a certificate: nothing secret
        written.append(copy)
        ca_file = f"{BRIDGES_MOUNT}/{copy.name}"
    _write(out, bridge_conf(lei, peer, address, remote_password, ca_file), [])  # owner-only from its first byte
    share_with_services(out, SERVICE_GIDS["relay"])  # it holds the peer's bridge password: the relay's alone
    return [*written, out]


def _remote_collector_lines(lei: str, host: str) -> list[str]:
    return [
        f"user {remote_collector_user(host)}",
        f"topic write dragon/{lei}/hosts/{host}/sample",
        # Its own status only (it runs with DRAGON_INSTANCE=<host>), not the other collectors'.
        f"topic readwrite dragon/collector/{host}/available",
        f"topic write dragon/collector/{host}/counters",
        "",
    ]


def _bridge_lines(peer: str) -> list[str]:
    return [
        f"# The bridge of {peer}'s relay: {peer}'s own shared topics only, as its relay sends them.",
        f"user {bridge_user(peer)}",
        *[f"topic write {pattern.format(peer)}" for pattern in BRIDGED_TOPICS],
        "",
    ]


def generate(
    directory: Path,
    lei: str,
    hosts: Sequence[str],
    force: bool = False,
    peers: Sequence[str] = (),
    remote_hosts: Sequence[str] = (),
    broker_names: Sequence[str] = (),
    ca_dir: Path | None = None,
    renew_cert: bool = False,
    new_ca: bool = False,
    prune: bool = False,
) -> list[str]:
    """Create what is missing in ``directory``; return the names of the files written.

    A remote host or peer no longer listed loses its login (the password file and the ACL follow
    the lists) but keeps its password file, so that a run that missed the lists (an env file not
    given) locks nobody out for good: listed again, it logs in as before. ``prune`` deletes those
    files (:func:`unlisted` names them), so that one listed again gets a new password.

    ``broker_names`` are the addresses other machines reach the broker by, besides
    :data:`certificates.DEFAULT_BROKER_NAMES`; ``ca_dir`` keeps the CA's key, out of what the
    services mount (default: ``<directory>-ca`` beside it). ``renew_cert`` gives the broker a
    new TLS key and certificate, ``new_ca`` a new CA (:func:`certificates.ensure_broker_tls`).
    Whatever fails, what was written is readable by the services' group only.
    """
    names = certificates.broker_names(broker_names)  # a bad name fails before anything is written
    ca_dir = ca_dir if ca_dir is not None else default_ca_dir(directory)
    _check_ca_apart(directory, ca_dir)
    if lei in peers:
        raise ValueError(f"LEI {lei!r} cannot be its own peer")
    both = sorted(set(hosts) & set(remote_hosts))
    if both:
        raise ValueError(
            f"hosts {both} are sampled by the broker's collector (--hosts) and by one of their own "
            "(--remote-hosts): choose one"
        )
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    written: list[str] = []
    # Two runs at once (two `up`s) would write the same files aside under the same names.
    with open(directory / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            _write_credentials(directory, lei, hosts, force, peers, remote_hosts, written)
            if prune:
                for name in unlisted(directory, peers, remote_hosts):
                    (directory / name).unlink()
            written += certificates.ensure_broker_tls(
                directory, ca_dir, lei, names, renew_cert=renew_cert, new_ca=new_ca
            )
        finally:
            _share_with_services(directory)
    return written


def _write_credentials(
    directory: Path,
    lei: str,
    hosts: Sequence[str],
    force: bool,
    peers: Sequence[str],
    remote_hosts: Sequence[str],
    written: list[str],
) -> None:
    passwords = {}
    (directory / "bridge.password").unlink(missing_ok=True)  # the one user all peers shared, once
    for user in (*MQTT_USERS, *map(remote_collector_user, remote_hosts), *map(bridge_user, peers)):
        passwords[user] = _keep_or_make(directory / f"{user}.password", force, written)
    redis_password = _keep_or_make(directory / "redis.password", force, written)
    _keep_or_make(directory / MIGRATION_KEY, force, written)
    passwd = directory / "passwd"
    if written or _users_of(passwd) != set(passwords):
        # Hashes are salted afresh, so rewrite them only when a password or the set of users changed
        # (a host no longer listed loses its login).
        _write(passwd, "".join(f"{u}:{mosquitto_hash(p)}\n" for u, p in passwords.items()), written)
    _write(directory / "acl", acl(lei, hosts, peers, remote_hosts), written)
    _write(directory / "redis.conf", f"requirepass {redis_password}\n", written)
    _write(directory / "relay.conf", relay_conf(lei, passwords["relay"]), written)


def _check_ca_apart(directory: Path, ca_dir: Path) -> None:
    """The CA's key must not lie in what every service mounts: not in ``directory``, nor below it.

    With ``SECRETS_DIR=/srv/secrets/`` compose's ``${SECRETS_DIR}-ca`` is ``/srv/secrets/-ca``,
    inside; the secrets directory never holds a directory of its own, so any is refused.
    """
    if ca_dir.resolve().is_relative_to(directory.resolve()):
        raise ValueError(f"the CA directory {ca_dir} lies inside the secrets directory {directory}")
    nested = sorted(path.name for path in directory.iterdir() if path.is_dir()) if directory.is_dir() else []
    if nested:
        raise ValueError(
            f"the secrets directory {directory} holds directories ({', '.join(nested)}), which every service "
            "would read: with SECRETS_DIR ending in '/', the CA's directory lands inside it; move them out"
        )


def default_ca_dir(directory: Path) -> Path:
    """Where the CA's key of the secrets in ``directory`` lives unless told otherwise: beside it."""
    return directory.parent / f"{directory.name}-ca"


def _keep_or_make(path: Path, force: bool, written: list[str]) -> str:
    if path.is_file() and not force:
        return path.read_text().strip()
    password = secrets.token_urlsafe(24)
    _write(path, password + "\n", written)
    return password


def unlisted(directory: Path, peers: Sequence[str], remote_hosts: Sequence[str]) -> list[str]:
    """The password files in ``directory`` of remote hosts' collectors and peers' bridges that
    are no longer listed: kept, with no login, until a run with ``prune``."""
    listed = {f"{remote_collector_user(host)}.password" for host in remote_hosts}
    listed |= {f"{bridge_user(peer)}.password" for peer in peers}
    found = [*directory.glob(f"{remote_collector_user('*')}.password"), *directory.glob(f"{bridge_user('*')}.password")]
    return sorted(path.name for path in found if path.name not in listed)


def _users_of(passwd: Path) -> set[str]:
    """The users of a Mosquitto password file (none when it does not exist)."""
    if not passwd.is_file():
        return set()
    return {line.split(":", 1)[0] for line in passwd.read_text().splitlines() if line}


def _write(path: Path, text: str, written: list[str]) -> None:
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.unlink(missing_ok=True)
    # Owner-only from its first byte; _share_with_services opens it to the services' group.
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(text)
    tmp.replace(path)
    written.append(path.name)


def groups_of(service: str) -> list[int]:
    """The groups ``service`` runs with (``group_add`` in compose/broker.yml and the tests' LEI)."""
    return [SECRETS_GID, SERVICE_GIDS[service], *([MIGRATION_GID] if service in KEY_HOLDERS else [])]


def _share_with_services(directory: Path) -> None:
    share_with_services(directory, SECRETS_GID)
    for path in directory.iterdir():
        gid = reader_gid(path.name)
        if gid is not None:
            share_with_services(path, gid)
            continue
        path.chmod(0o600)
        if os.geteuid() == 0:
            os.chown(path, 0, 0)


def reader_gid(name: str) -> int | None:
    """The group that may read the file ``name`` of the secrets directory; None: root's alone.

    Root's alone: the passwords no service of the LEI reads, people's and tools' (``operator``,
    ``viewer``), the relay's (``relay.conf`` holds it) and the ones made for the peers' bridges
    and the remote hosts' collectors (copied to them), so that a service broken into cannot take
    the operator's rights (fault injections start containers) nor speak for a peer or a remote
    host; and any file not known here (a key a run killed midway left aside as ``*.new``, a
    ``*.tmp``): what is not known to be for the services is not theirs to read.
    """
    if name == MIGRATION_KEY:
        return MIGRATION_GID
    if name in OWN_FILES:
        return SERVICE_GIDS[OWN_FILES[name]]
    return SECRETS_GID if name in SHARED_FILES else None


def share_with_services(path: Path, gid: int = SECRETS_GID) -> None:
    """Readable by root and the group ``gid`` only (the group when we may change ownership)."""
    if os.geteuid() == 0:
        os.chown(path, 0, gid)
    path.chmod(0o750 if path.is_dir() else 0o640)
