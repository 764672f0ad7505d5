#!/usr/bin/env bash
# Reproduce the reference run of WRITEUP.md: prepare -> lr range test -> train -> evaluate every
# checkpoint -> equal-time architecture ablation -> report. About 2.5 hours on a 2-core CPU.
#
#   TORCHGPT_SHARED_DIR=../shared scripts/reference_run.sh          # everything
#   TORCHGPT_SHARED_DIR=../shared scripts/reference_run.sh eval     # from one stage on
#   TORCHGPT_SHARED_DIR=../shared scripts/reference_run.sh eval eval  # one stage (FROM TO)
#
# Stages: prepare, sizing, lr_range, train, eval, ablation, recipe, report. Each writes under outputs/ (never
# committed) except `report`, which copies the run's small files (config, metrics, log, launch
# record, eval results) to reference/ and writes MODEL_CARD.md, BENCHMARK.md (its marked
# section), LOSS_CURVE.png and SAMPLES.md at the top level.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=find_python.sh
source scripts/find_python.sh  # sets $py (never a bare `python`)

SHARED=${TORCHGPT_SHARED_DIR:?set TORCHGPT_SHARED_DIR to a folder with data/text/openstax, tokenizers/gpt2 and data/eval}
export TORCHGPT_GPT2_BPE_DIR="$SHARED/tokenizers/gpt2" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
CFG=train_configs/reference_cpu.toml
DATA=data/openstax
RUN=outputs/reference
TORCHRUN=("$py" -m torch.distributed.run --standalone --nproc_per_node 2)

# The ablation: both architectures get the same wall-clock budget (6 minutes of training steps),
# so each gets the steps its own throughput buys: 360 s x the mean tokens/s of its 12-step probe
# (gpt2_d128l4_2p, modern_d128l4_2p in the sizing stage) / 32,768 tokens per step.
ABLATION_STEPS_GPT2=${ABLATION_STEPS_GPT2:-48}  # 360 s x 4,401 tokens/s / 32,768
ABLATION_STEPS_MODERN=${ABLATION_STEPS_MODERN:-51}  # 360 s x 4,638 tokens/s / 32,768

stages=(prepare sizing lr_range train eval ablation recipe report)
start=${1:-prepare}
stop=${2:-report}
for s in "$start" "$stop"; do
  case " ${stages[*]} " in *" $s "*) ;; *) echo "unknown stage '$s'; one of: ${stages[*]}" >&2; exit 2 ;; esac
done
run_stage() {  # true when $1 lies between $start and $stop (inclusive) in stage order
  local inside=0
  for s in "${stages[@]}"; do
    [ "$s" = "$start" ] && inside=1
    [ "$s" = "$1" ] && return $((1 - inside))
    [ "$s" = "$stop" ] && inside=0
  done
  return 1
}

if run_stage prepare; then
  echo "== prepare: OpenStax parquet -> $DATA"
  "$py" tools/prepare_data.py --out "$DATA" --input "$SHARED/data/text/openstax"
fi

probe() {  # NAME NPROC FLAVOR [overrides]: 12 steps, tokens/s at steps 4, 8 and 12
  local name=$1 nproc=$2 flavor=$3
  shift 3
  NGPU=$nproc ./run_train.sh train_configs/debug_model.toml --job.dump_folder outputs/sizing \
    --job.name "$name" --model.flavor "$flavor" --data.dataset_path "$DATA" --training.steps 12 \
    --training.seq_len 512 --training.micro_batch_size 16 --training.global_batch_tokens 32768 \
    --compile.enable true --checkpoint.enable false --validation.enable false \
    --metrics.log_freq 4 --metrics.enable_tensorboard false "$@"
}

if run_stage sizing; then
  echo "== sizing: throughput of candidate sizes (WRITEUP.md, 'Sizing by Chinchilla')"
  probe d192_1p 1 gpt2-d192-l4
  probe d192_2p 2 gpt2-d192-l4
  probe d128l4_2p 2 gpt2-d128-l4
  probe d128l6_2p 2 gpt2-d128-l6
  probe d128l4_2p_mb32 2 gpt2-d128-l4 --training.micro_batch_size 32 \
    --training.global_batch_tokens 65536
  # The ablation's two arms, probed back to back: their tokens/s set each arm's steps.
  probe gpt2_d128l4_2p 2 gpt2-d128-l4
  probe modern_d128l4_2p 2 modern-d128-l4
fi

if run_stage lr_range; then
  echo "== lr range test (60 steps, lr 1e-5 -> 1e-1, 16K-token steps)"
  "${TORCHRUN[@]}" tools/lr_range_test.py "$CFG" --steps 60 --min-lr 1e-5 --max-lr 1e-1 \
    --out outputs/lr_range --training.global_batch_tokens 16384
fi

if run_stage train; then
  echo "== train: FSDP2 over 2 processes, bf16, compile ($CFG)"
  NGPU=2 ./run_train.sh "$CFG"
fi

if run_stage eval; then
  echo "== evaluate every checkpoint on the full local sets (two at a time, one thread each)"
  mkdir -p "$RUN/eval_logs"
  pids=()
  for ckpt in "$RUN"/checkpoints/step-*/; do
    ckpt=${ckpt%/}
    OMP_NUM_THREADS=1 "$py" tools/eval.py "$ckpt" --data "$DATA" --data-dir "$SHARED/data/eval" \
      >"$RUN/eval_logs/$(basename "$ckpt").log" 2>&1 &
    pids+=($!)
    if [ ${#pids[@]} -ge 2 ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
  done
  for p in "${pids[@]}"; do wait "$p"; done  # set -e: a failed evaluation stops the script
fi

if run_stage ablation; then
  echo "== ablation: gpt2 vs modern at an equal wall-clock budget"
  common=(--checkpoint.enable false --validation.interval 10 --lr_scheduler.warmup_steps 5)
  NGPU=2 ./run_train.sh "$CFG" --job.name ablation-gpt2 --model.flavor gpt2-d128-l4 \
    --training.steps "$ABLATION_STEPS_GPT2" "${common[@]}"
  NGPU=2 ./run_train.sh "$CFG" --job.name ablation-modern --model.flavor modern-d128-l4 \
    --training.steps "$ABLATION_STEPS_MODERN" "${common[@]}"
  "$py" tools/compare_runs.py outputs/ablation-gpt2 outputs/ablation-modern \
    --out outputs/ablation
fi

if run_stage recipe; then
  echo "== the 100M recipe: a few real steps here, memory against the estimate, GPU projections"
  mkdir -p outputs/recipe
  "$py" bench/memory_estimate.py --only recipe | tee outputs/recipe/memory_estimate_recipe.txt
  NGPU=2 ./run_train.sh train_configs/mini_gpt_100m.toml --data.dataset_path "$DATA" \
    --job.dump_folder outputs/recipe --job.name mini_gpt_100m --training.steps 4 \
    --training.micro_batch_size 2 --training.global_batch_tokens 4096 \
    --lr_scheduler.warmup_steps 1 --checkpoint.enable false --validation.enable false \
    --metrics.log_freq 1 --checkpoint.resume none
  for layout in "h100 1" "a100-80g 4" "rtx4090 2"; do
    set -- $layout
    "$py" tools/memory_estimate.py train_configs/mini_gpt_100m.toml --gpu "$1" --nproc "$2" \
      --json > "outputs/recipe/estimate_${1}_x$2.json"
  done
  # Analytic peaks for the AC and FSDP/DDP trade-offs discussed in WRITEUP.md.
  est=("$py" tools/memory_estimate.py train_configs/mini_gpt_100m.toml --no-trace --json)
  for ac in none selective full; do
    "${est[@]}" --gpu rtx4090 --nproc 2 --activation_checkpoint.mode $ac \
      > "outputs/recipe/analytic_rtx4090_x2_fsdp_ac-$ac.json"
  done
  "${est[@]}" --gpu rtx4090 --nproc 2 --parallelism.data_parallel ddp \
    > outputs/recipe/analytic_rtx4090_x2_ddp_ac-selective.json
  for ac in none selective; do
    "${est[@]}" --gpu h100 --nproc 1 --activation_checkpoint.mode $ac \
      > "outputs/recipe/analytic_h100_x1_ac-$ac.json"
  done
fi

if run_stage report; then
  echo "== report"
  mkdir -p reference/run reference/ablation reference/sizing
  for d in outputs/sizing/*/; do
    mkdir -p "reference/sizing/$(basename "$d")"
    cp "$d"/config.json "$d"/metrics.jsonl "reference/sizing/$(basename "$d")/"
  done
  cp "$RUN"/{config.json,metrics.jsonl,train.log,run_info.json} reference/run/
  rm -rf reference/run/eval && cp -r "$RUN"/eval reference/run/eval
  cp outputs/lr_range/lr_range_test.{json,png} reference/
  cp outputs/ablation.{json,png} reference/
  for name in ablation-gpt2 ablation-modern; do
    mkdir -p "reference/ablation/$name"
    cp outputs/$name/{config.json,metrics.jsonl,train.log,run_info.json} "reference/ablation/$name/"
  done
  mkdir -p reference/recipe
  cp outputs/recipe/*.txt outputs/recipe/*.json reference/recipe/
  cp outputs/recipe/mini_gpt_100m/{config.json,metrics.jsonl,train.log} reference/recipe/
  "$py" tools/report.py reference/run --out .
fi
echo "done"
