#!/usr/bin/env bash
# Reproduce this folder's report: start a local redis-server and Tansu (Kafka protocol) on loopback ports,
# run `visionpipe loadgen compare` over both with the real stages on the CPU, stop the brokers.
# Usage: benchmarks/loadgen-compare/run.sh [extra loadgen options]   (from the repository root)
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-benchmarks/loadgen-compare}
REDIS_PORT=${REDIS_PORT:-16379}
KAFKA_PORT=${KAFKA_PORT:-19092}
source "$(dirname "$0")/../local-brokers.sh"

# Random weights keep no box above the default 0.3 score; threshold 0 and a cap of 4 boxes give the
# classifier 4 crops per image, so both DNN stages do work as they would on real photographs.
"$BIN/visionpipe" loadgen compare \
  --brokers "redis://127.0.0.1:$REDIS_PORT/0,kafka://127.0.0.1:$KAFKA_PORT" \
  --device cpu --weights random \
  --stage-env VISIONPIPE_DETECTOR__SCORE_THRESHOLD=0 --stage-env VISIONPIPE_DETECTOR__MAX_DETECTIONS=4 \
  --pattern poisson --rate 3 --duration 30 --synthetic 640x480 --warmup 4 --drain-timeout 60 \
  --out "$OUT" "$@"
