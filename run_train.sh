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
# Exit codes: 0 finished, 2 bad config or input (nothing started), 1 any other failure.
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: [NGPU=N] [LOG_RANK=0] $0 CONFIG.toml [--section.key value ...]" >&2
  exit 2
fi

# shellcheck source=scripts/find_python.sh
source "$(dirname "${BASH_SOURCE[0]}")/scripts/find_python.sh"
echo "run_train.sh: python $py ($py_why)" >&2

# torchgpt.launch checks the config and the data in this one process, then runs torchrun.
exec "$py" -m torchgpt.launch --nproc-per-node="${NGPU:-auto}" --log-rank="${LOG_RANK:-0}" \
  --torchrun-args="${TORCHRUN_ARGS:-}" -- "$@"
