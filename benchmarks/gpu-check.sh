#!/usr/bin/env bash
# `make gpu-check DIR=...`: issue 15's GPU measurements as JSON + Markdown in DIR, in <= 8 minutes on one H200.
#
# Runs on the lent GPU machine as it comes: its own python3 (torch 2.11, torchvision 0.26, numpy, msgpack, click,
# rich, pillow, matplotlib, prometheus-client), no venv, no network. What it lacks (pydantic, pydantic-settings,
# redis, confluent-kafka, hdrhistogram, pytest-asyncio) travels as wheels in .whl/ (git-ignored; `make gpu-wheels`
# fills it; the device tool's `carry` brings it) and is installed into a --target dir. The source tree goes on
# the path by symlinks (pyproject's package-dir layout), not installed. DALI (424 MB) cannot travel: its GPU path
# waits for a machine that has it. Elsewhere: `make gpu-check-cpu` runs the same script in its CPU mode.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:?usage: benchmarks/gpu-check.sh DIR [--cpu] [gpu-check options]}
shift
PY=${PYTHON:-python3}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/visionpipe-gpu-check.XXXXXX")
SITE=""
if ! "$PY" -c "import pydantic_settings, redis, confluent_kafka, hdrh, pytest_asyncio" 2>/dev/null; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "packages missing and no wheels in .whl/: run make gpu-wheels" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$TMP/site" .whl/*.whl
    SITE="$TMP/site"
fi
mkdir -p "$TMP/src"
cp -rs "$PWD/shared/visionpipe" "$TMP/src/visionpipe"
ln -s "$PWD/services" "$TMP/src/visionpipe/services"
ln -s "$PWD/loadgen" "$TMP/src/visionpipe/loadgen"
export PYTHONPATH="$TMP/src${SITE:+:$SITE}:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
"$PY" -c "import visionpipe, torch; print('visionpipe from', visionpipe.__file__, '| torch', torch.__version__, \
'| cuda', torch.cuda.is_available())" >&2
exec "$PY" -m visionpipe bench gpu-check "$DIR" "$@"
