# evertune: one-command entry points. Every target installs the virtualenv first when needed (a no-op otherwise).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export EVERTUNE_HOME ?= $(CURDIR)/.evertune

.PHONY: install bootstrap demo up down status serve test test-fast lint bench lock clean

install:
	@bash scripts/install.sh

bootstrap: install
	@$(PY) -m evertune bootstrap

## The main job: bootstrap, start the embedded Airflow, backfill the KB refresh, tune, print a summary.
demo: install
	@$(PY) -m evertune_airflow.demo

## The same stack, left running for a person (Airflow UI :8080, MLflow UI :5000).
up: install
	@$(PY) -m evertune_airflow.stack up

down:
	@$(PY) -m evertune_airflow.stack down

status:
	@$(PY) -m evertune_airflow.stack status

## The answer service in the foreground: champion + production KB on 127.0.0.1:$EVERTUNE_SERVE_PORT (8090).
## `make up` already runs it as the stack's `serve` component (EVERTUNE_SERVE=0 leaves it out); docs/serving.md.
serve: install
	@$(PY) -m evertune serve

## Lint (ruff: AIR, I, B, UP), then the whole suite, slow end-to-end tests included (CI runs exactly this).
test: install lint
	@$(PY) -m pytest -p no:cacheprovider --durations=25

lint: install
	@$(VENV)/bin/ruff check .

test-fast: install
	@$(PY) -m pytest -p no:cacheprovider -m "not slow"

bench: install
	@$(PY) -m bench

## Re-resolve pyproject.toml from scratch and freeze the result into constraints.txt.
lock:
	@bash scripts/lock.sh

clean: down
	rm -rf $(EVERTUNE_HOME)
