# The README's two commands: `make quickstart` and `make test`. Each creates .venv if needed and installs
# what it needs; a stamp file per extra keeps reruns fast until pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip
PY := $(VENV)/bin/python
export XLA_FLAGS ?= --xla_force_host_platform_device_count=4
export HF_HUB_OFFLINE := 1

.PHONY: quickstart test lint format bench

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e .
	touch $@

# torch is pinned in the test extra to the CPU build on local disk; it must resolve in the same install
# as the packages that depend on it, or pip fetches a multi-GB CUDA build.
$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e ".[test]"
	touch $@ $(VENV)/.installed-run

quickstart: $(VENV)/.installed-run
	$(PY) -m jtl.quickstart

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed-test
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# JTL_FAIL_ON_SKIP=1: a skipped test (e.g. a parity test without torch) fails the run.
test: lint
	JTL_FAIL_ON_SKIP=1 $(PY) -m pytest -n 2 --durations=15

bench: $(VENV)/.installed-run
	$(PY) -m benchmarks.freezing
