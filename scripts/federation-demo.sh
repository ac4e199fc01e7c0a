#!/usr/bin/env bash
# Two LEIs federated on this machine: demo1 (hosts h1, h2) and demo2 (h3, h4), each a compose
# project of compose/broker.yml with its own Mosquitto (compose/federation/demo{1,2}.env), each
# LEI's relay bridging its topics to the other's broker so that each broker's planner sees both
# LEIs. What README.md's "Federate brokers" does by hand, on one machine.
#
#   scripts/build-images.sh                 # once
#   scripts/federation-demo.sh up           # prints how to watch the decisions
#   scripts/federation-demo.sh down
#
# Variables set in the environment override the env files for both LEIs (compose gives the
# shell precedence), e.g. DRAGON_RANDOM_FAULTS_PER_HOUR=240 for faults sooner.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FED="$ROOT/compose/federation"

compose() {  # compose LEI ARGS...
    local lei=$1; shift
    docker compose --env-file "$FED/$lei.env" -f "$ROOT/compose/broker.yml" "$@"
}

bridge() {  # bridge FROM TO: FROM's topics to TO's broker
    docker run --rm --network none -v "$FED:/fed" dragon-collector:local \
        dragon bridge --lei "$1" --peer "$2" --address "host.docker.internal:$(port_of "$2" MQTT_TLS_PORT)" \
        --peer-password-file "/fed/$2/secrets/bridge-$1.password" --peer-ca-file "/fed/$2/secrets/mqtt-ca.crt" \
        --out "/fed/$1/bridges/$2.conf" >/dev/null
}

port_of() { grep -E "^$2=" "$FED/$1.env" | cut -d= -f2; }  # port_of LEI MQTT_PORT|MQTT_TLS_PORT

up() {
    mkdir -p "$FED"/demo{1,2}/{secrets,secrets-ca,bridges}
    # Credentials first: each broker's bridge carries its own LEI's topics to the other, logged in
    # with the password the other made for it (bridge-<lei>), over TLS to the other's published TLS
    # port, trusting the other's CA.
    compose demo1 run --rm secrets >/dev/null
    compose demo2 run --rm secrets >/dev/null
    bridge demo1 demo2
    bridge demo2 demo1
    compose demo2 up -d
    compose demo1 up -d
    cat <<MSG

Two LEIs are starting. Decisions of both planners, as demo1's broker carries them (msgpack):
  mosquitto_sub -h 127.0.0.1 -p $(port_of demo1 MQTT_PORT) -u viewer -P "\$(sudo cat $FED/demo1/secrets/viewer.password)" \\
      -t 'dragon/fed/+/decision' -v
Fault events as JSON: -t 'dragon/faults-json/#'. Stop with: $0 down
MSG
}

down() {
    for lei in demo1 demo2; do
        compose "$lei" down -v --timeout 30 || true
    done
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
