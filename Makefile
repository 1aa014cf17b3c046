# Every target creates .venv with the pinned dependencies on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check lint typecheck unit slow reliability browser bench sim clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

## demo: run the quickstart job against the built-in simulator
demo: $(STAMP)
	$(BIN)/batchgen run jobs/quickstart.yaml --sim

## test: every CI check (ruff, mypy strict, pytest)
test: $(STAMP) lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

## slow: soak tests kept out of CI
slow: $(STAMP)
	$(BIN)/pytest -q -m slow

## reliability: crash/resume loop, fault matrix, hostile inputs (minutes)
reliability: $(STAMP)
	$(BIN)/pytest -q -m reliability -s

## browser: gallery tests in headless Chromium
browser: $(STAMP)
	$(BIN)/pytest -q -m browser

## bench: every benchmark scenario, printed as a table
bench: $(STAMP)
	$(BIN)/python -m benchmarks

## sim: start the simulator on port 8787
sim: $(STAMP)
	$(BIN)/batchgen sim --port 8787

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
