# The two commands a newcomer needs are `make run` and `make test` (README).
# Everything runs from the project's virtual environment `.venv`, which the bootstrap creates
# with the first python3 >= 3.11 on PATH (or $PYTHON) and keeps installed; the system
# interpreter is never installed into.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: bootstrap run test lint unit down

bootstrap:
	@bash deploy/local/bootstrap.sh

# The whole lifecycle on this machine: stack, services, Synapse, demo servers, tickets.
run: bootstrap
	$(BIN)/intervene demo

down: bootstrap
	$(BIN)/intervene down

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: bootstrap
	$(BIN)/python -m pytest tests/unit tests/contract -q

# Lint, types, then every suite against the real Kafka and FerretDB. pytest exits 5 when
# it collects nothing, and make fails on that like on any other failure.
test: lint
	$(BIN)/python -m pytest -p no:cacheprovider

chaos: bootstrap
	$(BIN)/python bench/chaos.py
