# Sourced by run_train.sh and the scripts/: sets $py to the interpreter to run, explicitly:
# $PYTHON if set, else this checkout's .venv (made by `make setup`), else python3, else python.
# Never relies on a bare `python` being the right one; $py_why says which rule chose it.
_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "${PYTHON:-}" ]; then
  py=$PYTHON py_why="\$PYTHON"
elif [ -x "$_root/.venv/bin/python" ]; then
  py=$_root/.venv/bin/python py_why="the project's .venv"
elif command -v python3 >/dev/null 2>&1; then
  py=$(command -v python3) py_why="python3 on PATH"
elif command -v python >/dev/null 2>&1; then
  py=$(command -v python) py_why="python on PATH"
else
  echo "$(basename "$0"): no Python found: run 'make setup' or set PYTHON=/path/to/python" >&2
  exit 2
fi
if ! "$py" -c "import importlib.util as u, sys; sys.exit(not u.find_spec('torch'))" 2>/dev/null
then
  if [ -n "${PYTHON:-}" ]; then
    echo "$(basename "$0"): PYTHON=$py has no torch (or is not a Python); unset PYTHON to use" \
      "the project's .venv, or point it at an interpreter where 'pip install -e .' was run" >&2
  else
    echo "$(basename "$0"): $py ($py_why) has no torch; run 'make setup' (creates .venv) or" \
      "set PYTHON to an interpreter where 'pip install -e .' was run" >&2
  fi
  exit 2
fi
# This checkout's torchgpt and tools, installed in that interpreter or not.
export PYTHONPATH="$_root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHON="$py"  # children (run_train.sh) use the same interpreter
