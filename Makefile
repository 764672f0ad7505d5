# Entry points (see README):  make demo  |  make test  |  make test-fast (unit tests only)
# Offline (no hub access): TORCHGPT_SHARED_DIR=../shared make demo
# Every target runs the project's own .venv/bin/python by path: nothing depends on which
# `python` comes first on PATH (there may be none); PYTHON only names the interpreter that
# creates the venv.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(abspath $(VENV))/bin
PYTEST := $(BIN)/python -m pytest -q -ra --durations=15

.PHONY: setup test test-fast lint demo reference clean

setup: $(VENV)/.installed

# torch is installed first and pinned so that nothing later resolves a different build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[all]"
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Tests that launch run_train.sh or tools pass PYTHON=sys.executable, i.e. this venv's python.
test: lint
	PYTHON=$(BIN)/python $(PYTEST) tests

# The inner loop: unit tests only (no process groups, no torchrun), under 3 minutes.
test-fast: setup
	PYTHON=$(BIN)/python $(PYTEST) tests/unit -m "not slow"

demo: setup
	PYTHON=$(BIN)/python bash scripts/demo.sh

# The reference run of WRITEUP.md (about 2.5 hours on 2 cores); needs TORCHGPT_SHARED_DIR.
reference: setup
	PYTHON=$(BIN)/python bash scripts/reference_run.sh

clean:
	rm -rf $(VENV) outputs/demo data/demo
