# Two entry points (see README):  make demo  |  make test
# Offline (no hub access): TORCHGPT_SHARED_DIR=../shared make demo
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup test lint demo reference clean

setup: $(VENV)/.installed

# torch is installed first and pinned so that nothing later resolves a different build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[all]"
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q -ra tests

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh

# The reference run of WRITEUP.md (about 2.5 hours on 2 cores); needs TORCHGPT_SHARED_DIR.
reference: setup
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/reference_run.sh

clean:
	rm -rf $(VENV) outputs/demo data/demo
