# Two entry points: `make serve` and `make test`. Both create .venv and install into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Dev and CI pin the CPU torch that lies on disk; `make serve` keeps a torch that is already installed.
CONSTRAINTS := -c constraints.txt

.PHONY: serve test install test-deps lint format clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
		$(BIN)/python -m pip install -q -e . ; \
	else \
		$(BIN)/python -m pip install -q $(CONSTRAINTS) -e . ; \
	fi

# Until the daemon exists this asks the configured model (or the tiny demo checkpoint) one question.
serve: install
	$(BIN)/pixdesk ask "Describe what pixdesk can do."

test-deps: $(BIN)/python
	$(BIN)/python -m pip install -q $(CONSTRAINTS) -e '.[test]'

lint: test-deps
	$(BIN)/ruff check pixdesk tests bench

test: lint
	$(BIN)/python -m pytest -q

format: test-deps
	$(BIN)/ruff format pixdesk tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
