#!/usr/bin/env bash
# torchgpt launcher (TorchTitan style).
#   ./run_train.sh CONFIG.toml [--section.key value ...]
# Environment:
#   PYTHON    interpreter to run (default: this checkout's .venv if present, else python3, else
#             python); the choice is printed, so a wrong interpreter is never a mystery
#   NGPU      processes per node (default: number of visible GPUs, else 1 on CPU)
#   LOG_RANK  ranks whose output is shown (default 0; e.g. 0,1)
#   TORCHGPT_DEBUG=1  print a failing run's traceback here too (it always goes to train.log)
# Extra torchrun arguments for multi-node jobs go in TORCHRUN_ARGS, e.g.
#   TORCHRUN_ARGS="--nnodes 2 --rdzv_backend c10d --rdzv_endpoint host:29500" ./run_train.sh ...
# Exit codes: 0 finished, or stopped by SIGTERM/SIGINT with nothing lost (the step reached is
# saved); 2 bad config or input (nothing started); 1 any other failure, or a stop that lost steps
# (the workers killed after torchrun's grace, TORCH_ELASTIC_SHUTDOWN_TIMEOUT, default 30 s).
# A stop prints what is saved and what the same command does next; RUN_DIR/last_exit.json says so.
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: [NGPU=N] [LOG_RANK=0] $0 CONFIG.toml [--section.key value ...]" >&2
  exit 2
fi

# A signal before the launcher takes over (it says the same for its own checks); exec drops it.
trap 'echo "run_train.sh: stopped by a signal before training started: nothing was started" \
  "or written" >&2; exit 0' TERM INT

# shellcheck source=scripts/find_python.sh
source "$(dirname "${BASH_SOURCE[0]}")/scripts/find_python.sh"
echo "run_train.sh: python $py ($py_why)" >&2

# torchgpt.run.launch checks the config and the data in this one process, then runs torchrun.
exec "$py" -m torchgpt.run.launch --nproc-per-node="${NGPU:-auto}" --log-rank="${LOG_RANK:-0}" \
  --torchrun-args="${TORCHRUN_ARGS:-}" -- "$@"
