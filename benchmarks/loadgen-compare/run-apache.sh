#!/usr/bin/env bash
# The broker comparison with the bundled models (NanoDet-g, EfficientNet-Lite0) on the CPU over Redis, Apache Kafka
# and Tansu (each labelled in the report by what it is), started here on loopback ports and stopped on exit.
# Usage: benchmarks/loadgen-compare/run-apache.sh [extra loadgen options]   (from the repository root)
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-benchmarks/loadgen-compare-apache}
REDIS_PORT=${REDIS_PORT:-16379}
KAFKA_PORT=${KAFKA_PORT:-19092}
APACHE_KAFKA=1
source "$(dirname "$0")/../local-brokers.sh"

"$BIN/visionpipe" loadgen compare \
  --brokers "redis://127.0.0.1:$REDIS_PORT/0,$APACHE_URL,kafka://127.0.0.1:$KAFKA_PORT" \
  --device cpu \
  --pattern poisson --rate 1 --duration 40 --synthetic 640x480 --warmup 4 --drain-timeout 90 \
  --out "$OUT" "$@"
