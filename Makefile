# The commands the README shows. `make run` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Two installs: what running needs (`make run`), and the dev tools on top (everything else).
RUNTIME := $(VENV)/.installed-runtime
STAMP   := $(VENV)/.installed-dev
# TypeScript for the test that runs the lab's own client with Node (tests/test_lab_client.py).
LAB_NODE := tests/lab/node_modules/.installed
export OTEL_SERVICE_CACHE ?= $(HOME)/.cache/otel-service

.PHONY: run test venv lint typecheck unit e2e backends lab-node bench openapi settings-table stack clean

$(RUNTIME): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## Run the sidecar on its embedded default (127.0.0.1:5001, /metrics, JSON logs on stdout).
run: $(RUNTIME)
	$(BIN)/otel-service serve

## The whole suite: lint, types, unit + integration tests, and the end-to-end suite on real binaries.
test: $(STAMP) backends lab-node lint typecheck
	. tools/backends.env && $(BIN)/python -m pytest --cov --cov-report=term $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check otel_service tests bench tools
	$(BIN)/ruff format --check otel_service tests bench tools

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) backends lab-node
	. tools/backends.env && $(BIN)/python -m pytest -m "not e2e" $(PYTEST_ARGS)

e2e: $(STAMP) backends
	. tools/backends.env && $(BIN)/python -m pytest -m e2e $(PYTEST_ARGS)

## Prometheus + promtool, Alertmanager + amtool, the collector (ocb), Jaeger, VictoriaLogs and docker
## compose, all built from the Go module proxy (Apache-2.0 only; never Loki, Tempo or Grafana), cached
## outside the work tree by version and build inputs (tools/backends.sh).
backends:
	tools/backends.sh install
	tools/backends.sh paths > tools/backends.env

## TypeScript for the test that runs the lab's client with Node, as tests/lab/package-lock.json pins it.
## Without npm this only says so; the test then skips if node is missing too, and fails if not.
lab-node: $(LAB_NODE)

$(LAB_NODE): tests/lab/package.json tests/lab/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix tests/lab --no-audit --no-fund && touch $(LAB_NODE); \
	else echo "npm not found: tests/test_lab_client.py needs node and npm (npm ci --prefix tests/lab)"; fi

bench: $(STAMP)
	$(BIN)/python bench/throughput.py

## Rewrite README's settings table from otel_service/config.py (a test checks they agree).
settings-table: $(STAMP)
	$(BIN)/python -c "import pathlib; from otel_service import config as c; p = pathlib.Path('README.md'); \
	t = p.read_text(); i, j = t.index(c.README_START), t.index(c.README_END) + len(c.README_END); \
	p.write_text(t[:i] + c.markdown_table() + t[j:])"

openapi: $(STAMP)
	$(BIN)/python -c "import json; from otel_service.intake.openapi import openapi_document as d; print(json.dumps(d(), indent=2))" > openapi.json

## The whole stack natively (no Docker): sidecar + collector + Prometheus + Alertmanager + Jaeger +
## VictoriaLogs (the Apache-2.0 stack). Options: make stack STACK_ARGS="--random-ports --keep".
stack: $(STAMP) backends
	. tools/backends.env && $(BIN)/python -m tools.stack $(STACK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage tests/lab/node_modules
