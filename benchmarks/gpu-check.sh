#!/usr/bin/env bash
# `bash benchmarks/gpu-check.sh DIR [--budget-s 330] [--skip SECTION]... [--cpu]`: every GPU measurement as
# gpu-check.json, gpu-check.md and gpu-check.log in DIR, the first two rewritten after every section. With the
# default budget (330 s of sections) it ends inside 6 minutes on one H100, start-up included.
#
# Runs on the lent GPU machine as it comes, without make: its own python3 (3.12, torch 2.11, torchvision 0.26, numpy,
# msgpack, click, rich, pillow, pytest, pytest-timeout, prometheus-client), no venv, no network. What it lacks
# (pydantic, pydantic-settings, redis, confluent-kafka, hdrhistogram, pytest-asyncio) travels as wheels in .whl/
# (git-ignored, <= 16 MiB; `make gpu-wheels` fills it) and is installed into a --target dir. The bundled models'
# weights (33 MB) travel in .gpu-models/ when `make gpu-models` has filled it: then the pipeline and the plain script
# run with the real weights and the models' GPU tests run too; without them, random weights. Carry both with the
# device tool (`carry: [".whl", ".gpu-models"]`) and write DIR under $OUT, which comes back even after a time-out.
# The source tree goes on the path by symlinks (pyproject's package-dir layout), not installed. DALI (424 MB)
# cannot travel: its GPU path waits for a machine that has it. Elsewhere: `make gpu-check-cpu` runs the CPU mode.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:?usage: benchmarks/gpu-check.sh DIR [--cpu] [--budget-s S] [--skip SECTION]...}
shift
PY=${PYTHON:-python3}
mkdir -p "$DIR"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/visionpipe-gpu-check.XXXXXX")
SITE=""
if ! "$PY" -c "import pydantic_settings, redis, confluent_kafka, hdrh, pytest_asyncio" 2>/dev/null; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "packages missing and no wheels in .whl/: run make gpu-wheels" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$TMP/site" .whl/*.whl
    SITE="$TMP/site"
fi
if [ -d .gpu-models ] && [ -z "${VISIONPIPE_MODELS__CACHE_DIR:-}" ]; then
    export VISIONPIPE_MODELS__CACHE_DIR="$PWD/.gpu-models"
fi
mkdir -p "$TMP/src"
cp -rs "$PWD/shared/visionpipe" "$TMP/src/visionpipe"
ln -s "$PWD/services" "$TMP/src/visionpipe/services"
ln -s "$PWD/loadgen" "$TMP/src/visionpipe/loadgen"
export PYTHONPATH="$TMP/src${SITE:+:$SITE}:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
"$PY" -c "import visionpipe, torch; print('visionpipe from', visionpipe.__file__, '| torch', torch.__version__, \
'| cuda', torch.cuda.is_available())" >&2
# stderr (progress, and faulthandler's stacks if a section hangs or a library crashes) also lands in DIR.
exec "$PY" -m visionpipe bench gpu-check "$DIR" "$@" 2> >(tee -a "$DIR/gpu-check.log" >&2)
