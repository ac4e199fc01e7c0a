#!/bin/bash
# The relay of an LEI's bridges to its peers' brokers (compose service `relay`): one Mosquitto per
# bridge file in /mosquitto/bridges, each with its own connection to the LEI's broker from
# /secrets/relay.conf (`dragon secrets`). One per peer, because a Mosquitto checks no ACL on what
# arrives over a bridge it holds and routes it to its other bridges: what one peer's broker sends
# back must reach neither the LEI's broker nor another peer. If one stops, the container stops
# (and its restart policy starts them all again).
set -euo pipefail

bridges=/mosquitto/bridges
port=18830
trap 'kill $(jobs -p) 2>/dev/null; exit 0' TERM INT
shopt -s nullglob
for bridge in "$bridges"/*.conf; do
    peer=$(basename "$bridge" .conf)
    conf="/tmp/relay-$peer.conf"
    (
        umask 077  # it holds the relay's and the peer's passwords
        {
            echo "listener $port 127.0.0.1"
            echo "persistence_file relay-$peer.db"
            # Each process its own session at the LEI's broker.
            sed "s/^remote_clientid \(.*\)\$/remote_clientid \1-$peer/" /secrets/relay.conf
            cat "$bridge"
        } >"$conf"
    )
    /usr/sbin/mosquitto -c "$conf" &
    port=$((port + 1))
done

if [ "$port" -eq 18830 ]; then
    echo "relay: no bridge in $bridges: this LEI is on its own (README: Federate brokers)" >&2
    sleep infinity &
    wait
    exit 0
fi
echo "relay: $((port - 18830)) bridge(s) running" >&2
wait -n
echo "relay: a bridge's Mosquitto stopped: stopping the others" >&2
exit 1
