#!/bin/bash
# The relay of an LEI's bridges to its peers' brokers (compose service `relay`): one Mosquitto per
# bridge file in /mosquitto/bridges, each with its own connection to the LEI's broker from
# /secrets/relay.conf (`dragon secrets`). One per peer, because a Mosquitto checks no ACL on what
# arrives over a bridge it holds and routes it to its other bridges: what one peer's broker sends
# back must reach neither the LEI's broker nor another peer. If one stops, the others are stopped
# too (and the container's restart policy starts them all again).
set -uo pipefail

bridges=/mosquitto/bridges
first_port=18830

# Each Mosquitto saves what it keeps for its peer when it is stopped: stop them and wait for them,
# or they would die with this process (PID 1 of the container) unsaved.
stop_all() {
    kill $(jobs -p) 2>/dev/null
    wait
}
trap 'stop_all; exit 0' TERM INT

declare -A peer_of  # pid -> peer
port=$first_port
shopt -s nullglob
for bridge in "$bridges"/*.conf; do
    peer=$(basename "$bridge" .conf)
    conf="/tmp/relay-$peer.conf"
    # A file the relay cannot read (`dragon bridge` run as a user who cannot give it to the
    # relay's group) would start a Mosquitto with no bridge to the peer, silently: say so, and
    # leave the other peers' bridges running.
    if ! (
        umask 077  # it holds the relay's and the peer's passwords
        {
            echo "listener $port 127.0.0.1"
            echo "persistence_file relay-$peer.db"
            # Each process its own session at the LEI's broker.
            sed "s/^remote_clientid \(.*\)\$/remote_clientid \1-$peer/" /secrets/relay.conf \
                && echo "# $bridge from here on" \
                && cat "$bridge"
        } >"$conf"
    ) || [ "$(grep -c '^connection ' "$conf")" -lt 2 ]; then
        echo "relay: cannot use $bridge (unreadable, or /secrets/relay.conf or its 'connection' line" \
            "missing): peer $peer is not bridged" >&2
        continue
    fi
    /usr/sbin/mosquitto -c "$conf" &
    peer_of[$!]=$peer
    port=$((port + 1))
done

if [ "$port" -eq "$first_port" ]; then
    echo "relay: no usable bridge in $bridges: this LEI is on its own (README: Federate brokers)" >&2
    sleep infinity &
    wait
    exit 0
fi
echo "relay: $((port - first_port)) bridge(s) running: ${peer_of[*]}" >&2
status=0
wait -n -p stopped || status=$?
echo "relay: the Mosquitto of peer ${peer_of[$stopped]:-?} stopped (status $status; its config is" \
    "/tmp/relay-${peer_of[$stopped]:-?}.conf, the bridge file after its '# ... from here on' line):" \
    "stopping the others" >&2
stop_all
exit 1
