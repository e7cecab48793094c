#!/usr/bin/env bash
# The broker alone (no DNN): produce -> consume -> ack hop at our streams' payload sizes, Redis vs Tansu (Kafka
# protocol), both started here on loopback ports and stopped afterwards.
# Usage: benchmarks/loadgen-broker-bench/run.sh [extra `visionpipe bench broker` options]   (from the repository root)
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-benchmarks/loadgen-broker-bench}
REDIS_PORT=${REDIS_PORT:-16389}
KAFKA_PORT=${KAFKA_PORT:-19102}
source "$(dirname "$0")/../local-brokers.sh"

"$BIN/visionpipe" bench broker --no-baseline \
  --broker "redis://127.0.0.1:$REDIS_PORT/0" --broker "kafka://127.0.0.1:$KAFKA_PORT" \
  --size 30000 --size 150000 --size 1228800 --rate 50 --duration 5 --out "$OUT" "$@"
