"""``dragon``: the operator's tool — secrets, watching faults, injecting faults, the config table."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path

from dragon import certificates, inject_command, secrets
from dragon.config import ConfigError, comma_list, settings_table
from dragon.messages import codec, topics
from dragon.messages.schemas import (
    FAULT_KINDS,
    FaultEvent,
    InjectionEvent,
    MigrationEvent,
    PlanDecision,
    Schedule,
    ServiceCounters,
)
from dragon.mqtt import connect, content_type_of, one_shot_client
from dragon.service.known import load_from_env
from dragon.settings import MqttSettings, check_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dragon", description="Operate a DRAGON LEI.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    secrets_help = (
        "generate the LEI's secrets (MQTT and Redis passwords, the migration key, the CA and the broker's TLS "
        "certificate, relay.conf) once, and write the broker ACL again at every run"
    )
    p = commands.add_parser("secrets", help=secrets_help, description=secrets_help[0].upper() + secrets_help[1:] + ".")
    p.add_argument("--dir", type=Path, required=True, help="directory to write into (kept out of git)")
    p.add_argument("--lei", required=True, help="id of this LEI")
    p.add_argument("--hosts", required=True, help="comma-separated host ids the broker's collector publishes for")
    p.add_argument(
        "--remote-hosts",
        default="",
        help="comma-separated ids of hosts with a collector of their own: each gets a user collector-<host>",
    )
    p.add_argument("--force", action="store_true", help="replace existing passwords")
    p.add_argument(
        "--prune",
        action="store_true",
        help="delete the passwords of remote hosts and peers no longer listed (kept by default, without a login)",
    )
    p.add_argument(
        "--peers",
        default="",
        help="comma-separated ids of the other LEIs whose brokers bridge to this one: each gets a user bridge-<peer>",
    )
    p.add_argument(
        "--broker-names",
        default="",
        help="comma-separated DNS names or IP addresses other machines reach the broker by, for its TLS "
        "certificate (besides " + ", ".join(certificates.DEFAULT_BROKER_NAMES) + ")",
    )
    p.add_argument(
        "--ca-dir",
        type=Path,
        help="where the key of the LEI's CA is kept, out of what services mount (default: <dir>-ca beside --dir)",
    )
    p.add_argument("--renew-cert", action="store_true", help="give the broker a new TLS key and certificate (same CA)")
    p.add_argument(
        "--new-ca",
        action="store_true",
        help="make a new CA (when its key is lost or it expired): every client then needs the new mqtt-ca.crt",
    )
    p.set_defaults(handler=_secrets)

    bridge_help = (
        "write the Mosquitto bridge carrying this LEI's topics to a peer's broker (the peer bridges its own back)"
    )
    p = commands.add_parser("bridge", help=bridge_help, description=bridge_help[0].upper() + bridge_help[1:] + ".")
    p.add_argument("--lei", required=True, help="id of this LEI")
    p.add_argument("--peer", required=True, help="id of the peer LEI")
    p.add_argument(
        "--address",
        required=True,
        help="the peer broker's host:port as this broker reaches it (its TLS port, 8883, with --peer-ca-file)",
    )
    p.add_argument(
        "--peer-password-file", type=Path, required=True, help="the peer's secrets/bridge-<this LEI>.password"
    )
    p.add_argument("--out", type=Path, required=True, help="file to write (e.g. compose/bridges/<peer>.conf)")
    over = p.add_mutually_exclusive_group(required=True)
    over.add_argument(
        "--peer-ca-file",
        type=Path,
        help="the peer's secrets/mqtt-ca.crt: bridge over TLS to the peer's TLS port (copied beside --out)",
    )
    over.add_argument(
        "--plain", action="store_true", help="bridge over plain TCP: the bridge password crosses the network in clear"
    )
    p.set_defaults(handler=_bridge)

    mqtt_help = (
        "broker connection: DRAGON_MQTT_HOST, DRAGON_MQTT_PORT, DRAGON_MQTT_USERNAME, DRAGON_MQTT_PASSWORD(_FILE)"
    )
    p = commands.add_parser("watch", help="print fault events (and injections) as JSON lines", description=mqtt_help)
    p.add_argument("--lei", default="+", help="LEI to watch (default: all)")
    p.add_argument(
        "--moves", action="store_true", help="also the planner's decisions, the migrator's events and the schedule"
    )
    p.add_argument(
        "--counters", action="store_true", help="also each service's counters on this broker (drops, work, errors)"
    )
    p.add_argument("--count", type=int, default=0, help="exit after this many messages (0: run until Ctrl-C)")
    p.add_argument("--timeout", type=float, default=0, help="exit with status 1 after this many seconds")
    p.set_defaults(handler=_watch)

    p = commands.add_parser("inject", help="start a real fault inside an emulated host", description=mqtt_help)
    p.add_argument("host", help="emulated host id")
    p.add_argument("kind", choices=FAULT_KINDS, help="fault kind")
    p.add_argument("--lei", help="LEI of the host (default: $DRAGON_LEI, else lei1)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds (default: 60)")
    p.add_argument("--intensity", type=float, default=1.0, help="0 < intensity <= 1 (default: 1)")
    p.add_argument(
        "--wait",
        type=float,
        default=inject_command.DEFAULT_WAIT_S,
        help="seconds to wait for the collector's answer (default: %(default)g); exit 0 only once the fault started",
    )
    p.set_defaults(handler=inject_command.run)

    p = commands.add_parser("config-table", help="print every DRAGON_* setting as a Markdown table")
    p.set_defaults(handler=_config_table)

    args = parser.parse_args(argv)
    return args.handler(args)


def _secrets(args) -> int:
    hosts, remote, peers = (comma_list(text) for text in (args.hosts, args.remote_hosts, args.peers))
    try:
        # Each becomes a topic level of an ACL line: a wildcard would open every host's topics.
        check_id("--lei", args.lei)
        for name, values in (("--hosts", hosts), ("--remote-hosts", remote), ("--peers", peers)):
            for value in values:
                check_id(name, value)
        pruned = secrets.unlisted(args.dir, peers, remote) if args.prune and args.dir.is_dir() else []
        written = secrets.generate(
            args.dir,
            args.lei,
            hosts,
            force=args.force,
            peers=peers,
            remote_hosts=remote,
            broker_names=comma_list(args.broker_names),
            ca_dir=args.ca_dir,
            renew_cert=args.renew_cert,
            new_ca=args.new_ca,
            prune=args.prune,
        )
        kept = secrets.unlisted(args.dir, peers, remote)
        expires = {
            "broker_certificate_expires": certificates.expiry(args.dir / certificates.BROKER_CERT),
            "ca_expires": certificates.expiry(args.dir / certificates.CA_CERT),
        }
    except (ConfigError, ValueError) as exc:
        print(f"dragon secrets: {exc}", file=sys.stderr)
        return 2
    except certificates.CertificateError as exc:
        print(f"dragon secrets: {exc}", file=sys.stderr)
        return 1
    if kept:
        print(
            f"dragon secrets: kept the passwords of users no longer listed, who cannot log in: {', '.join(kept)}; "
            "list them again to give their login back, or run with --prune to delete them",
            file=sys.stderr,
        )
    print(json.dumps({"dir": str(args.dir), "written": written, "pruned": pruned, "unlisted_kept": kept, **expires}))
    return 0


def _bridge(args) -> int:
    try:
        for name, value in (("--lei", args.lei), ("--peer", args.peer)):
            check_id(name, value)
    except ConfigError as exc:
        print(f"dragon bridge: {exc}", file=sys.stderr)
        return 2
    try:
        password = args.peer_password_file.read_text().strip()
        peer_ca = args.peer_ca_file.read_bytes() if args.peer_ca_file is not None else None
    except OSError as exc:
        print(f"dragon bridge: {exc}", file=sys.stderr)
        return 2
    try:
        written = secrets.write_bridge(args.out, args.lei, args.peer, args.address, password, peer_ca)
    except (ValueError, OSError) as exc:
        print(f"dragon bridge: {exc}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        # Only root can give the file to the relay's group; as it is, the relay cannot read it.
        print(
            f"dragon bridge: not root, so {args.out} is not the relay's to read (group "
            f"{secrets.SERVICE_GIDS['relay']}): `sudo chown root:{secrets.SERVICE_GIDS['relay']} {args.out}`",
            file=sys.stderr,
        )
    print(json.dumps({"written": [str(path) for path in written]}))
    return 0


# Topic endings of what ``dragon watch`` follows, and their schemas (anything else: a fault event).
WATCHED = (
    ("/injections", InjectionEvent),
    ("/decision", PlanDecision),
    ("/migrations/events", MigrationEvent),
    ("/tasks", Schedule),
    ("/counters", ServiceCounters),
)


def watched_topics(lei: str, moves: bool, counters: bool = False) -> list[str]:
    """What ``dragon watch`` follows: fault events and injections; with ``moves``, what moves tasks;
    with ``counters``, every service's counters (they are per broker, not per LEI)."""
    faults = [topics.fault_event(lei, "+"), topics.injections(lei)]
    moving = [topics.fed_decision(lei), topics.migration_events(lei), topics.schedule(lei)] if moves else []
    return faults + moving + ([topics.all_service_counters()] if counters else [])


class RepeatedCounters:
    """Says which counters a service republished unchanged (the refresh that keeps them from
    expiring on the broker), so ``dragon watch`` shows counts when they change, not every refresh."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, dict[str, int]]] = {}

    def __call__(self, topic: str, message: object) -> bool:
        if not isinstance(message, ServiceCounters):
            return False
        seen = (message.started_ts, message.counters)
        repeated = self._last.get(topic) == seen
        self._last[topic] = seen
        return repeated


def schema_of(topic: str) -> type:
    """The message schema of a topic ``dragon watch`` follows."""
    for suffix, schema in WATCHED:
        if topic.endswith(suffix):
            return schema
    return FaultEvent


def _watch(args) -> int:
    try:
        settings = load_from_env(MqttSettings)
        client = one_shot_client(settings, "dragon-watch")
    except (ConfigError, ValueError) as exc:
        print(f"dragon watch: {exc}", file=sys.stderr)
        return 2
    seen = 0
    done = threading.Event()
    repeated = RepeatedCounters()

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            print(f"connection refused: {reason_code}", file=sys.stderr)
            done.set()
            return
        client.subscribe([(topic, 1) for topic in watched_topics(args.lei, args.moves, args.counters)])

    def on_message(client, userdata, message):
        nonlocal seen
        schema = schema_of(message.topic)
        content_type = content_type_of(message)
        try:
            event = codec.decode(schema, message.payload, settings.max_payload_bytes, content_type)
        except codec.DecodeError as exc:
            print(json.dumps({"topic": message.topic, "undecodable": exc.reason}), flush=True)
            return
        if repeated(message.topic, event):
            return
        print(json.dumps({"topic": message.topic, **event.to_dict()}), flush=True)
        seen += 1
        if args.count and seen >= args.count:
            done.set()

    client.on_connect = on_connect
    client.on_message = on_message
    try:
        connect(client, settings)
    except ConnectionError as exc:
        print(f"dragon watch: {exc}", file=sys.stderr)
        return 1
    client.loop_start()
    try:
        finished = done.wait(args.timeout or None)
    except KeyboardInterrupt:
        finished = True
    client.disconnect()  # before loop_stop: it wakes the network thread, which would sleep up to 1 s
    client.loop_stop()
    return 0 if finished and (not args.count or seen >= args.count) else 1


def _config_table(args) -> int:
    from dragon.service.known import CONFIG_CLASSES

    print(settings_table(CONFIG_CLASSES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
