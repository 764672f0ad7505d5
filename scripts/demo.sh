#!/usr/bin/env bash
# The demo behind `make demo`: prepare a small token set, train the debug model on 2 processes,
# evaluate it, and build the report. Online it streams FineWeb-Edu from the hub; offline set
# TORCHGPT_SHARED_DIR to the folder holding data/text/openstax, tokenizers/gpt2 and data/eval.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=find_python.sh
source scripts/find_python.sh  # sets $py (never a bare `python`)

DATA_DIR=${DATA_DIR:-data/demo}
RUN_NAME=${RUN_NAME:-demo}
NGPU=${NGPU:-2}
# The demo's length: STEPS steps of 4,096 tokens (checkpoints at STEPS/2 and STEPS, validation
# on 16K tokens every STEPS/4) and EVAL_LIMIT examples per harness task. The defaults take about
# 3 minutes from a fresh clone, install included, on 2 AVX2-only cores (README's timing table).
STEPS=${STEPS:-20}
EVAL_LIMIT=${EVAL_LIMIT:-100}
prep_args=(--out "$DATA_DIR" --max-tokens 4000000 --val-tokens 200000 --shard-size 1000000)
if [ -n "${TORCHGPT_SHARED_DIR:-}" ]; then
  # Every tool (and training) finds $TORCHGPT_SHARED_DIR/tokenizers/gpt2 by itself.
  export TORCHGPT_SHARED_DIR HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
  prep_args+=(--input "$TORCHGPT_SHARED_DIR/data/text/openstax")
fi

echo "== 1/4 prepare data -> $DATA_DIR"
"$py" tools/prepare_data.py "${prep_args[@]}"

echo "== 2/4 train the debug model on $NGPU processes"
NGPU=$NGPU ./run_train.sh train_configs/debug_model.toml \
  --data.dataset_path "$DATA_DIR" --job.name "$RUN_NAME" --checkpoint.resume none \
  --training.steps "$STEPS" --checkpoint.interval $((STEPS / 2)) \
  --validation.interval $((STEPS / 4)) --validation.tokens 16384

RUN_DIR=outputs/$RUN_NAME
if [ -f tools/eval.py ]; then
  echo "== 3/4 evaluate every checkpoint"
  eval_args=(--all --limit "$EVAL_LIMIT")
  [ -n "${TORCHGPT_SHARED_DIR:-}" ] && eval_args+=(--data-dir "$TORCHGPT_SHARED_DIR/data/eval")
  "$py" tools/eval.py "$RUN_DIR" --data "$DATA_DIR" "${eval_args[@]}"
fi
if [ -f tools/report.py ]; then
  echo "== 4/4 report"
  "$py" tools/report.py "$RUN_DIR"
fi
echo "done: $RUN_DIR"
