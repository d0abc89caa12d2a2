# The two commands of the README: `make demo` and `make test`. Everything else is bootstrapping.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= .lakebase/demo

.PHONY: demo test lint typecheck bench clean install dist

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python -m pip install --quiet -e ".[dev]"
	@# System tools some tests drive: headless Chromium (tests/test_browser.py), a TLS-capable psql
	@# (`lakebase psql`; with pgbench), and for `lakebase proxy` (tests/test_local_proxy.py) Node, a JDK and
	@# the PostgreSQL JDBC driver. Installed with apt when running as root; otherwise those tests skip, saying why.
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; command -v chromium >/dev/null || missing="$$missing chromium"; \
	  command -v psql >/dev/null || missing="$$missing postgresql-client"; \
	  command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	  command -v javac >/dev/null || missing="$$missing default-jdk-headless"; \
	  [ -f /usr/share/java/postgresql.jar ] || missing="$$missing libpostgresql-jdbc-java"; \
	  if [ -n "$$missing" ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	      || echo "note: could not install$$missing; the tests that need it will be skipped"; \
	  fi; \
	fi
	@# node-postgres for tests/test_local_proxy.py, project-local in $(VENV)/node_modules
	@if [ "$$(id -u)" = 0 ] && command -v npm >/dev/null && [ ! -d $(VENV)/node_modules/pg-copy-streams ]; then \
	  npm install --prefix $(VENV) --no-audit --no-fund --silent pg@8 pg-copy-streams@7 >/dev/null \
	    || echo "note: could not install the npm packages pg and pg-copy-streams; the Node test will be skipped"; \
	fi
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@$(BIN)/lakebase demo --data-dir $(DEMO_DIR)

test: $(STAMP)
	@$(BIN)/ruff check src tests benchmarks apps
	@$(BIN)/mypy src/lakebase src/_lakebase_pytest.py
	@$(BIN)/python -m pytest -q -n 4 --dist loadgroup $(PYTEST_ARGS)

lint: $(STAMP)
	@$(BIN)/ruff check src tests benchmarks apps
	@$(BIN)/mypy src/lakebase src/_lakebase_pytest.py

typecheck: $(STAMP)
	@$(BIN)/mypy src/lakebase src/_lakebase_pytest.py

# The sdist and the wheel in $(DIST_DIR), checked with twine and used from a fresh virtualenv.
DIST_DIR ?= dist
dist: $(STAMP)
	@$(BIN)/python -m tests.dist_check --out $(DIST_DIR)

bench: $(STAMP)
	@$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
