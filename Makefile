# Entry points (see README):  make demo  |  make test  |  make test-fast (unit tests only)
# Offline (no hub access): TORCHGPT_SHARED_DIR=../shared make demo
# Every target runs the project's own .venv/bin/python by path: nothing depends on which
# `python` comes first on PATH (there may be none); PYTHON only names the interpreter that
# creates the venv.
PYTHON ?= python3
VENV ?= .venv
# The torch to install (split into words: it may carry pip options) and where from: auto = a
# CUDA build where nvidia-smi sees a GPU, else the CPU build of the same version; pypi; or an
# index URL (scripts/install_torch.sh). Example: make setup TORCH_INDEX=https://download.pytorch.org/whl/cu126
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= auto
BIN := $(abspath $(VENV))/bin
PYTEST := $(BIN)/python -m pytest -q -ra --durations=15

.PHONY: setup test test-fast test-compat lint demo reference clean

setup: $(VENV)/.installed

# torch is installed first and pinned so that nothing later resolves a different build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	bash scripts/install_torch.sh $(BIN)/python "$(TORCH_SPEC)" "$(TORCH_INDEX)"
	$(BIN)/python -m pip install -q -e ".[all]"
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Tests that launch run_train.sh or tools pass PYTHON=sys.executable, i.e. this venv's python.
# Two pytest workers (pytest-xdist, work stealing): most of a test's time is single-threaded
# (process start, imports, torch.compile, gloo waits), so two share 2 cores well. TEST_WORKERS=0
# runs them one at a time.
TEST_WORKERS ?= 2
test: lint
	PYTHON=$(BIN)/python $(PYTEST) -n $(TEST_WORKERS) --dist worksteal tests

# The inner loop: unit tests only (no process groups, no torchrun); README gives its time per CPU kind.
test-fast: setup
	PYTHON=$(BIN)/python $(PYTEST) -n $(TEST_WORKERS) --dist worksteal tests/unit -m "not slow"

# The unit and distributed tests on another torch, in a venv of its own (.venv-compat), e.g. the
# GPU machine's: make test-compat COMPAT_TORCH=torch==2.11.0 (a CUDA build from PyPI, ~4.7 GB
# with its nvidia packages: not part of `make test`).
COMPAT_TORCH ?= torch==2.11.0
COMPAT_VENV ?= .venv-compat
test-compat:
	$(PYTHON) -m venv $(COMPAT_VENV)
	bash scripts/install_torch.sh $(abspath $(COMPAT_VENV))/bin/python "$(COMPAT_TORCH)" pypi
	$(COMPAT_VENV)/bin/python -m pip install -q -e ".[all]"
	$(COMPAT_VENV)/bin/python -c "import torch; print('test-compat: torch', torch.__version__)"
	PYTHON=$(abspath $(COMPAT_VENV))/bin/python $(abspath $(COMPAT_VENV))/bin/python -m pytest -q -ra -n $(TEST_WORKERS) --dist worksteal tests/unit tests/distributed

demo: setup
	PYTHON=$(BIN)/python bash scripts/demo.sh

# The reference run of WRITEUP.md (about 2.5 hours on 2 cores); needs TORCHGPT_SHARED_DIR.
reference: setup
	PYTHON=$(BIN)/python bash scripts/reference_run.sh

clean:
	rm -rf $(VENV) outputs/demo data/demo
