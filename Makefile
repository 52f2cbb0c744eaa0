# make demo: set up and run the default experiment; make test: set up and run the tests.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast clean
setup:
	VENV=$(VENV) bash scripts/setup.sh

demo: setup
	$(BIN)/prune run

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not e2e"

clean:
	rm -rf outputs/runs outputs/sweeps outputs/.baselines .pytest_cache
