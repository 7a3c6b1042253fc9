# Every target creates .venv and installs what it needs on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Test processes (pytest-xdist); each has its own Redis DB and RabbitMQ vhost. `load`
# spreads the slow integration tests of one module over both processes: it beat
# `loadscope` (a module per process) by a minute on the full suite.
TEST_WORKERS ?= 2
PYTEST_ARGS ?=
PYTEST := $(BIN)/pytest -n $(TEST_WORKERS) --dist load $(PYTEST_ARGS)

.PHONY: install run test unit lint format bench chaos docs simulator clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## run: the embedded demo (simulator + worker + producer, no servers needed)
run: $(STAMP)
	$(BIN)/subswitch demo

## test: lint, type-check, then every test (integration tests need Redis and RabbitMQ)
test: lint
	$(PYTEST)

## unit: the tests that need no broker
unit: $(STAMP)
	$(PYTEST) -m "not integration"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## docs: regenerate the JSON Schemas and the AsyncAPI document under docs/
docs: $(STAMP)
	$(BIN)/python -m subswitch.schemas docs

## bench: every benchmark scenario (about 15 min; results under bench/results/)
bench: $(STAMP)
	$(BIN)/python -m bench

## chaos: 2,000 commands through SIGKILLed workers and a restarted broker, on private
## Redis (6390) and RabbitMQ (5690) servers; checks and prints the Reliability table
chaos: $(STAMP)
	$(BIN)/python -m bench.chaos

simulator: $(STAMP)
	$(BIN)/subswitch simulator

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
