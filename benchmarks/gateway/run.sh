#!/usr/bin/env bash
# Reproduce benchmarks/gateway.json: a local redis-server (and Tansu, unused here) on loopback ports, the
# pass-through stages (tests/loadgen/passthrough.py, no stand-in compute: the pipeline is its broker hops) and
# one `visionpipe serve gateway`; then broker-direct vs HTTP at the same Poisson rates, ABBA over two rounds, and
# closed-loop throughput in both modes, all with ~145 KB 1280x720 JPEGs.
# Usage: benchmarks/gateway/run.sh [extra bench options]   (from the repository root)
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-benchmarks/gateway.json}
REDIS_PORT=${REDIS_PORT:-16381}
KAFKA_PORT=${KAFKA_PORT:-19094}
source "$(dirname "$0")/../local-brokers.sh"

"$BIN/visionpipe" bench gateway --broker "redis://127.0.0.1:$REDIS_PORT/0" \
  --stage-command "$BIN/python -m tests.loadgen.passthrough" --compute-scale 0 \
  --rate 50 --rate 200 --duration 15 --rounds 2 --concurrency 16 --json "$OUT" "$@"
