# The commands the README shows. `make run` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export OTEL_SERVICE_CACHE ?= $(HOME)/.cache/otel-service

.PHONY: run test venv lint typecheck unit e2e backends bench openapi stack clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## Run the sidecar on its embedded default (127.0.0.1:5001, /metrics, JSON logs on stdout).
run: $(STAMP)
	$(BIN)/otel-service serve

## The whole suite: lint, types, unit + integration tests, and the end-to-end suite on real binaries.
test: $(STAMP) backends lint typecheck
	. tools/backends.env && $(BIN)/python -m pytest --cov --cov-report=term $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check otel_service tests bench
	$(BIN)/ruff format --check otel_service tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -m "not e2e" $(PYTEST_ARGS)

e2e: $(STAMP) backends
	. tools/backends.env && $(BIN)/python -m pytest -m e2e $(PYTEST_ARGS)

## Prometheus, Alertmanager (Debian), the collector (ocb), Loki and Tempo (Go), cached by version.
backends:
	tools/backends.sh install
	tools/backends.sh paths > tools/backends.env

bench: $(STAMP)
	$(BIN)/python bench/throughput.py

openapi: $(STAMP)
	$(BIN)/python -c "import json; from otel_service.intake.openapi import openapi_document as d; print(json.dumps(d(), indent=2))" > openapi.json

## The whole stack natively (no Docker): sidecar + collector + Prometheus + Loki + Tempo + Alertmanager.
stack: $(STAMP) backends
	. tools/backends.env && $(BIN)/python -m tests.e2e.stack

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
