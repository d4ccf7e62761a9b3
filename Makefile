# The README's commands. Everything installs into .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint typecheck openapi install clean bench bench-quick ui

# Under a lock (scripts/install.sh): `make run` and `make test` may start at the same moment.
$(VENV)/.installed: pyproject.toml
	PYTHON=$(PYTHON) sh scripts/install.sh $(VENV)

install: $(VENV)/.installed

## Serve the API on $(HOST):$(PORT) (make run PORT=8080); SQLite in ./data, migrated at
## start; the simulator when no upstream is set. Ctrl-C drains: no new upstream call starts.
run: install
	$(PY) -m app.server --host $(HOST) --port $(PORT)

## Lint, type-check and run the whole test suite.
test: install lint typecheck
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check app tests migrations bench examples
	$(VENV)/bin/ruff format --check app tests migrations bench examples
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/shellcheck scripts/*.sh

typecheck: install
	$(VENV)/bin/mypy

## Benchmarks of issue 8 against the simulator (~20 min on 2 cores): bench/results/*.json and
## summary.md. bench-quick runs a small version of each (< 2 min) and checks the output is sane.
bench: install
	$(PY) -m bench.run

bench-quick: install
	$(PY) -m bench.run --quick --check

## Rebuild the web dashboard (ui/, TypeScript + Vite) into app/ui/static, which is committed:
## `make run` needs no Node. A test fails when the bundle is older than the sources.
ui:
	cd ui && npm ci && npm run build

## Regenerate openapi/openapi.json from the app.
openapi: install
	$(PY) -m app.openapi_export > openapi/openapi.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
