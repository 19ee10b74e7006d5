# Two commands matter: `make run` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3.11
# `make test-postgres`: the suite again, each connector on a fresh database made through this
# admin DSN (every test skipped, saying so, when it is not reachable).
TEST_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/test
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: run test test-postgres lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,brokers]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/connector serve $(if $(CONFIG),--config $(CONFIG),)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	TEST_DATABASE_URL= $(BIN)/python -m pytest -n 2 -q

test-postgres: $(STAMP)
	TEST_DATABASE_URL='$(TEST_DATABASE_URL)' $(BIN)/python -m pytest -n 2 -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/files.py
	$(BIN)/python bench/messages.py
	$(BIN)/python bench/messages.py --prefer-async
	$(BIN)/python bench/events.py
	$(BIN)/python bench/recovery.py
	$(BIN)/python bench/queries.py
	$(BIN)/python bench/push.py
	$(BIN)/python bench/correlation.py
	$(BIN)/python bench/brokers.py
	$(BIN)/python bench/replicas.py
	$(BIN)/python bench/wakeups.py
	$(BIN)/python bench/startup.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
