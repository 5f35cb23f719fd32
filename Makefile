# Two set-up commands: `make demo` and `make test`. Both bootstrap .venv from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/maskrcnn demo --out out/demo

test: $(STAMP)
	$(BIN)/ruff check maskrcnn tests benchmarks
	$(BIN)/ruff format --check maskrcnn tests benchmarks
	$(BIN)/mypy maskrcnn
	$(BIN)/python -m pytest

format: $(STAMP)
	$(BIN)/ruff format maskrcnn tests benchmarks
	$(BIN)/ruff check --fix maskrcnn tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/roi_ops.py

clean:
	rm -rf $(VENV) out
