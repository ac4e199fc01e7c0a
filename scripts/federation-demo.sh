#!/usr/bin/env bash
# Two LEIs federated on this machine: lei1 (hosts h1, h2) and lei2 (h3, h4), each a compose
# project of compose/broker.yml with its own Mosquitto, bridged so that each broker's planner
# sees both LEIs. What README.md's "Federate brokers" does by hand, on one machine.
#
#   scripts/build-images.sh                 # once
#   scripts/federation-demo.sh up           # prints how to watch the decisions
#   scripts/federation-demo.sh down
#
# Env: DEMO_DIR (default build/federation-demo), LEI1_PORT / LEI2_PORT (published MQTT ports,
# default 18831 / 18832), and any DRAGON_* or compose variable to pass to both LEIs
# (e.g. DRAGON_RANDOM_FAULTS_PER_HOUR=60 for faults sooner).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEMO=${DEMO_DIR:-$ROOT/build/federation-demo}
LEI1_PORT=${LEI1_PORT:-18831}
LEI2_PORT=${LEI2_PORT:-18832}
COMPOSE_FILE="$ROOT/compose/broker.yml"

env_file() {  # env_file LEI PORT PEER HOSTS
    local dir="$DEMO/$1"
    mkdir -p "$dir/secrets" "$dir/bridges"
    {
        echo "DRAGON_LEI=$1"
        echo "MQTT_PORT=$2"
        echo "FEDERATION_PEERS=$3"
        echo "DRAGON_COLLECTOR_HOSTS=$4"
        echo "SECRETS_DIR=$dir/secrets"
        echo "BRIDGES_DIR=$dir/bridges"
        # Pass through whatever the caller set for both LEIs.
        env | grep -E '^(DRAGON_(RANDOM_FAULT|DETECTOR_WARMUP|PLANNER_|SIM_|COLLECTOR_INTERVAL|DEMO_TASKS)[A-Z_]*)=' || true
    } > "$dir/env"
    echo "$dir/env"
}

compose() {  # compose LEI ARGS...
    local lei=$1; shift
    docker compose --env-file "$DEMO/$lei/env" -f "$COMPOSE_FILE" "$@"
}

up() {
    env_file lei1 "$LEI1_PORT" lei2 h1,h2 >/dev/null
    env_file lei2 "$LEI2_PORT" lei1 h3,h4 >/dev/null
    # Credentials first: lei1's bridge logs in to lei2's broker with lei2's bridge password.
    compose lei1 run --rm secrets >/dev/null
    compose lei2 run --rm secrets >/dev/null
    docker run --rm --network none -v "$DEMO:/demo" dragon-collector:local \
        dragon bridge --lei lei1 --peer lei2 --address "host.docker.internal:$LEI2_PORT" \
        --peer-password-file /demo/lei2/secrets/bridge.password --out /demo/lei1/bridges/lei2.conf >/dev/null
    compose lei2 up -d
    compose lei1 up -d
    cat <<MSG

Two LEIs are starting. Decisions of both planners, as lei1's broker carries them:
  mosquitto_sub -h 127.0.0.1 -p $LEI1_PORT -u viewer -P "\$(cat $DEMO/lei1/secrets/viewer.password)" \\
      -t 'dragon/fed/+/decision' -F '%t %p'
(msgpack; or watch faults as JSON on 'dragon/faults-json/#'). Stop with: $0 down
MSG
}

down() {
    for lei in lei1 lei2; do
        [[ -f "$DEMO/$lei/env" ]] && compose "$lei" down -v --timeout 30 || true
    done
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
