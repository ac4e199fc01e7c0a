#!/usr/bin/env bash
# Build the seven local images the project runs and tests with:
#   dragon-collector:local   services/collector/Dockerfile  (core deps only, small)
#   dragon-detector:local    services/detector/Dockerfile   (core + model extra: numpy, torch CPU)
#   dragon-simulator:local   services/simulator/Dockerfile  (the detector image, another command)
#   dragon-planner:local     services/planner/Dockerfile    (the detector image, another command)
#   dragon-migrator:local    services/migrator/Dockerfile   (the collector image, another command)
#   dragon-mosquitto:local   compose/mosquitto/Dockerfile
#   dragon-redis:local       compose/redis/Dockerfile
#
# No container registry is reachable, so every FROM names a local image: $BASE_IMAGE
# (default python:3.11-slim) when it exists locally, otherwise dragon-base:bookworm, made from
# Debian packages by scripts/make-base-image.sh on first use. Python packages come from the
# host-built wheelhouse (scripts/build-wheelhouse.sh -> build/wheels).
#
# Re-running with nothing changed takes seconds (stamps + docker's layer cache). Uses the legacy
# builder (DOCKER_BUILDKIT=0): there is no buildx plugin here. Build logs: build/logs/.
# Stale images of ours (old tags replaced by a rebuild; they carry a dragon.image label) are
# removed by id; nothing else on the shared daemon is touched.
#
# Env: BASE_IMAGE, DRAGON_IMAGES="collector detector simulator planner migrator mosquitto redis" (subset),
#      NO_CACHE=1 (docker build --no-cache).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export DOCKER_BUILDKIT=0

die() { echo "build-images: ERROR: $*" >&2; exit 1; }
log() { echo "build-images: $*" >&2; }

command -v docker >/dev/null || die "docker CLI not found (apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker daemon; start dockerd first (see .ci/run)"

T0=$SECONDS
START_EPOCH=$(date +%s)
declare -A TIMES=()

# --- base image -------------------------------------------------------------------------------
REQUESTED_BASE="${BASE_IMAGE:-python:3.11-slim}"
if docker image inspect "$REQUESTED_BASE" >/dev/null 2>&1; then
    BASE="$REQUESTED_BASE"
else
    t=$SECONDS
    log "$REQUESTED_BASE is not available locally; using dragon-base:bookworm"
    bash "$ROOT/scripts/make-base-image.sh" || die "could not make dragon-base:bookworm"
    BASE=dragon-base:bookworm
    TIMES[base-image]=$((SECONDS - t))
fi
log "base image: $BASE"

# --- wheelhouse -------------------------------------------------------------------------------
t=$SECONDS
bash "$ROOT/scripts/build-wheelhouse.sh" || die "building the wheelhouse failed"
TIMES[wheelhouse]=$((SECONDS - t))

# --- images -----------------------------------------------------------------------------------
mkdir -p build/logs
CACHE_ARGS=()
[[ "${NO_CACHE:-0}" == 1 ]] && CACHE_ARGS=(--no-cache)

# docker_build NAME LOGFILE ARGS...  (quiet; prints the log tail on failure)
# With NO_CACHE=1 only the first build of an image ignores the cache; the later --target builds
# of the same Dockerfile reuse what it just built.
docker_build() {
    local name=$1 logf=$2; shift 2
    local cache=("${CACHE_ARGS[@]}")
    if grep -q '^Successfully built' "$logf"; then cache=(); fi
    if ! docker build "${cache[@]}" --build-arg "BASE_IMAGE=$BASE" "$@" >>"$logf" 2>&1; then
        echo "----- last lines of $logf -----" >&2
        tail -n 40 "$logf" >&2
        die "docker build of $name failed (full log: $logf)"
    fi
}

build_image() {  # name dockerfile context staged(yes: deps + app stages, tagged :deps and :app)
    local name=$1 dockerfile=$2 context=$3 staged=$4 t=$SECONDS
    local tag="dragon-$name:local" logf="build/logs/build-$name.log"
    log "building $tag ($dockerfile)"
    : >"$logf"
    if [[ $staged == yes ]]; then
        # Tag the intermediate stages too: untagged (dangling) stage images could not be told
        # apart from stale ones, and removing them would throw away the pip-install layer cache.
        docker_build "$name" "$logf" -f "$dockerfile" --target deps -t "dragon-$name:deps" "$context"
        docker_build "$name" "$logf" -f "$dockerfile" --target app -t "dragon-$name:app" "$context"
    fi
    docker_build "$name" "$logf" -f "$dockerfile" -t "$tag" "$context"
    TIMES[$name]=$((SECONDS - t))
}

IMAGES="${DRAGON_IMAGES:-collector detector simulator planner migrator mosquitto redis}"
for name in $IMAGES; do
    case $name in
        collector|detector) build_image "$name" "services/$name/Dockerfile" . yes ;;
        simulator|planner|migrator) build_image "$name" "services/$name/Dockerfile" "services/$name" no ;;
        mosquitto|redis)    build_image "$name" "compose/$name/Dockerfile" "compose/$name" no ;;
        *) die "unknown image '$name' in DRAGON_IMAGES" ;;
    esac
done

# Remove our own stale images: tags replaced by this run leave dangling images with a dragon.image
# label. Only those made before this run started (an untagged image another process is building
# right now from one of ours inherits the label), and never one still used by a container (no -f).
n=0
for id in $(docker images -q --no-trunc -f dangling=true -f label=dragon.image | sort -u); do
    created=$(docker image inspect -f '{{.Created}}' "$id" 2>/dev/null) || continue
    (( $(date -d "$created" +%s) < START_EPOCH )) || continue
    docker rmi "$id" >/dev/null 2>&1 && n=$((n + 1)) || true
done
(( n == 0 )) || log "removed $n stale dragon image(s)"

# --- summary ----------------------------------------------------------------------------------
echo
printf '%-26s %10s %8s\n' IMAGE "SIZE (MB)" "TIME (s)"
for name in $IMAGES; do
    size=$(docker image inspect -f '{{.Size}}' "dragon-$name:local")
    printf '%-26s %10d %8s\n' "dragon-$name:local" $((size / 1000000)) "${TIMES[$name]}"
done
size=$(docker image inspect -f '{{.Size}}' "$BASE")
printf '%-26s %10d %8s\n' "(base) $BASE" $((size / 1000000)) "${TIMES[base-image]:--}"
printf '%-26s %10s %8s\n' "(wheelhouse)" "$(du -sm build/wheels | cut -f1)" "${TIMES[wheelhouse]}"
echo "build-images: done in $((SECONDS - T0)) s (base $BASE)"
