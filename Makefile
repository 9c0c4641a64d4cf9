# Sigil: remote signing with phone approval and a Signature Activation Module.
# `make demo` and `make test` set everything up on a new machine.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export SIGIL_HOME ?= $(CURDIR)/var

.PHONY: help setup softhsm ferretdb init demo demo-mongodb test lint bench clean distclean

help:
	@echo "make demo          set up, start server and simulated phone, sign a file, verify"
	@echo "make demo-mongodb  the same demo on the MongoDB store, on FerretDB (needs Go)"
	@echo "make test          set up and run the test suite (JUnit report in build/);"
	@echo "                   MongoDB tests on FerretDB, or on \$$MONGODB_URI when set"
	@echo "make ferretdb      build FerretDB with Go into .tools/bin (once, then reused)"
	@echo "make lint          ruff and mypy (strict)"
	@echo "make bench         benchmarks (a few minutes)"
	@echo "make clean         remove the virtualenv, token, database and reports"
	@echo "make distclean     clean, and remove the FerretDB build in .tools"

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

# FerretDB v1 on SQLite (tools/ferretdb), the MongoDB server of the tests and
# of demo-mongodb; rebuilt only when tools/ferretdb changes. Needs Go >= 1.24.
ferretdb:
	@bash scripts/ensure-ferretdb.sh

init: setup
	$(VENV)/bin/sigil init

demo: init
	$(PY) -m rp_client.demo

demo-mongodb: setup
	@PY=$(PY) bash scripts/demo-mongodb.sh

test: setup ferretdb
	@mkdir -p build
	@$(PY) -m pytest --junitxml=build/test-report.xml; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: init ferretdb
	$(PY) -m bench

clean:
	rm -rf $(VENV) var build .mypy_cache .ruff_cache .pytest_cache

distclean: clean
	rm -rf .tools
