#!/usr/bin/env bash
# Run the test suite -- the same command CI (.ci/run) and the README use:
#
#   scripts/test.sh                 # python -m pytest -m "unit or integration or e2e"
#   scripts/test.sh -m unit -x -q   # extra arguments go to pytest (a later -m replaces the default)
#   scripts/test.sh tests/unit      # one folder or file
#
# Creates/updates the virtualenv first (scripts/setup-venv.sh: .venv with -e '.[model,test]').
# Integration and e2e tests need a running Docker daemon and the local images from
# scripts/build-images.sh. testcontainers' Ryuk reaper cannot be pulled here, so it is disabled.
# pytest's exit code is passed through unchanged: 5 ("no tests collected") fails like any other.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV="${DRAGON_VENV:-$ROOT/.venv}"

bash "$ROOT/scripts/setup-venv.sh"

export TESTCONTAINERS_RYUK_DISABLED=true

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    for img in collector detector simulator planner migrator mosquitto redis; do
        img="dragon-$img:local"
        docker image inspect "$img" >/dev/null 2>&1 \
            || echo "test.sh: WARNING: image $img is missing; run scripts/build-images.sh" >&2
    done
else
    echo "test.sh: WARNING: no Docker daemon reachable; integration and e2e tests will fail" >&2
fi

# Lint first: it takes a second and names the line; tests take minutes.
"$VENV/bin/ruff" check libs tests scripts

exec "$VENV/bin/python" -m pytest -m "unit or integration or e2e" "$@"
