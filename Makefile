# The two commands a newcomer needs are `make run` and `make test` (README).
PY ?= python3

.PHONY: bootstrap run test lint unit down

bootstrap:
	@bash deploy/local/bootstrap.sh

# The whole lifecycle on this machine: stack, services, Synapse, demo servers, tickets.
run: bootstrap
	intervene demo

down:
	intervene down

lint: bootstrap
	ruff check .
	mypy

unit: bootstrap
	$(PY) -m pytest tests/unit tests/contract -q

# Lint, types, then every suite against the real Kafka and FerretDB. pytest exits 5 when
# it collects nothing, and make fails on that like on any other failure.
test: lint
	$(PY) -m pytest -p no:cacheprovider

chaos:
	$(PY) bench/chaos.py
