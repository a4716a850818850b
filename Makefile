# The two commands of the README. Both are idempotent: a second run does not reinstall anything.
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: setup quickstart test lint bench

setup:
	bash scripts/setup.sh

quickstart: setup
	$(VENV)/bin/estuary run jobs/quickstart.yaml

test: setup
	$(VENV)/bin/python -m pytest -m "not gpu and not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/python -m bench.claims check   # docs/results.md matches the records under results/
