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

# The resident daemon on 127.0.0.1 (no model configured: the tiny demo checkpoint, and it says so).
serve: install
	$(BIN)/pixdesk serve

# Python test extras, plus the system tools some tests drive (chromium for the chat page's browser test),
# installed only when missing (Debian/Ubuntu as root, as in CI; elsewhere it says what to install).
test-deps: $(BIN)/python
	$(BIN)/python -m pip install -q $(CONSTRAINTS) -e '.[test]'
	@missing=""; \
	for tool in chromium:chromium Xvfb:xvfb xclip:xclip xauth:xauth xprop:x11-utils dbus-daemon:dbus; do \
		command -v $${tool%%:*} >/dev/null 2>&1 || missing="$$missing $${tool##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		else \
			echo "make test-deps: missing system packages:$$missing (browser, screen and clipboard tests need them)" >&2; \
		fi; \
	fi

lint: test-deps
	$(BIN)/ruff check pixdesk tests bench

# Under CI=true a test that cannot find its tool fails instead of skipping (tests read CI from the environment).
test: lint
	$(BIN)/python -m pytest -q

format: test-deps
	$(BIN)/ruff format pixdesk tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
