# Sigil: remote signing with phone approval and a Signature Activation Module.
# `make demo` and `make test` set everything up on a new machine.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export SIGIL_HOME ?= $(CURDIR)/var

.PHONY: help setup softhsm init demo test lint bench clean

help:
	@echo "make demo    set up, start server and simulated phone, sign a file, verify"
	@echo "make test    set up and run the test suite (JUnit report in build/)"
	@echo "make lint    ruff and mypy (strict)"
	@echo "make bench   benchmarks (a few minutes)"
	@echo "make clean   remove the virtualenv, token, database and reports"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || \
	  { echo "Python 3.11 is required (found $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

setup: $(STAMP) softhsm

softhsm:
	@bash scripts/ensure-softhsm.sh

init: setup
	$(VENV)/bin/sigil init

demo: init
	$(PY) -m rp_client.demo

test: setup
	@mkdir -p build
	@$(PY) -m pytest --junitxml=build/test-report.xml; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: init
	$(PY) -m bench

clean:
	rm -rf $(VENV) var build .mypy_cache .ruff_cache .pytest_cache
