#!/usr/bin/env bash
# torchgpt launcher (TorchTitan style).
#   ./run_train.sh CONFIG.toml [--section.key value ...]
# Environment:
#   NGPU      processes per node (default: number of visible GPUs, else 1 on CPU)
#   LOG_RANK  ranks whose output is shown (default 0; e.g. 0,1)
#   TORCHRUN  torchrun command (default: python -m torch.distributed.run)
# Extra torchrun arguments for multi-node jobs go in TORCHRUN_ARGS, e.g.
#   TORCHRUN_ARGS="--nnodes 2 --rdzv_backend c10d --rdzv_endpoint host:29500" ./run_train.sh ...
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: [NGPU=N] [LOG_RANK=0] $0 CONFIG.toml [--section.key value ...]" >&2
  exit 2
fi
CONFIG_FILE=$1
shift

if [ -z "${NGPU:-}" ]; then
  NGPU=$(python -c "import torch; print(max(torch.cuda.device_count(), 1))" 2>/dev/null || echo 1)
fi
LOG_RANK=${LOG_RANK:-0}
TORCHRUN=${TORCHRUN:-"python -m torch.distributed.run"}

standalone="--standalone"
case " ${TORCHRUN_ARGS:-} " in *" --nnodes"* | *" --rdzv"*) standalone="" ;; esac

# shellcheck disable=SC2086
exec $TORCHRUN $standalone --nproc_per_node="$NGPU" \
  --local-ranks-filter "$LOG_RANK" --role rank --tee 3 \
  ${TORCHRUN_ARGS:-} \
  -m torchgpt.train "$CONFIG_FILE" "$@"
