# The two commands of the README: `make demo` and `make test`. Everything else is bootstrapping.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= .lakebase/demo

.PHONY: demo test lint typecheck bench clean install

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@$(BIN)/lakebase demo --data-dir $(DEMO_DIR)

test: $(STAMP)
	@$(BIN)/ruff check src tests benchmarks apps
	@$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	@$(BIN)/ruff check src tests benchmarks apps
	@$(BIN)/ruff format --check src tests benchmarks apps

typecheck: $(STAMP)
	@$(BIN)/mypy src/lakebase

bench: $(STAMP)
	@$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
