#!/usr/bin/env bash
# One short GPU window, prepared on CPU: everything the 124M recipe needs checked on a GPU
# machine, run with that machine's own python and nothing installed (the checkout on
# PYTHONPATH, synthetic shards written here, optional packages absent), outputs under $OUT.
#
#   OUT=/tmp/window bash bench/gpu_window.sh            # on the GPU machine (~7 min on an H200)
#   OUT=/tmp/window bash bench/gpu_window.sh --smoke    # the same steps on CPU, debug model (CI)
#
# Steps, each logged to $OUT/<step>.log and timed in $OUT/summary.txt; a failed step is
# reported and the next one still runs (exit 1 at the end if any failed):
#   env       python, torch, CUDA, GPU, CPU flags, what training.mixed_precision=auto picks
#   probe     TF32 through both torch APIs (set_fp32_precision) + a torch.compile'd MLP on the
#             device, compared with eager
#   gpu_check bench/gpu_check.py: the recipe's auto sizing, tokens/s, MFU, memory, compile
#   resume    run_train.sh with the recipe on synthetic shards: 4 steps with a checkpoint at 2
#             (and a CUDA memory snapshot of steps 1-2, the flight recorder on), then a second
#             launch to 6 steps resuming from step 4
#   profile   a kernel-time table (torch.profiler, self device time) of one compiled step
# SKIP="gpu_check profile" leaves steps out (CI runs gpu_check --smoke in its own test).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
smoke=0
[[ ${1:-} == --smoke ]] && smoke=1
: "${OUT:?set OUT to the folder for the outputs}"
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export WANDB_MODE=disabled HF_HUB_OFFLINE=1
summary=$OUT/summary.txt
: >"$summary"
failed=0

step() {  # step NAME COMMAND...: run, log, time, never stop the window
  local name=$1 start rc
  shift
  if [[ " ${SKIP:-} " == *" $name "* ]]; then
    echo "== $name: skipped (SKIP)" | tee -a "$summary"
    return
  fi
  start=$(date +%s)
  echo "== $name" | tee -a "$summary"
  "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  local took=$(( $(date +%s) - start ))
  echo "   $name: exit $rc in ${took}s" | tee -a "$summary"
  tail -n 12 "$OUT/$name.log" | sed 's/^/   | /'
  [[ $rc -eq 0 ]] || failed=1
}

if [[ $smoke -eq 1 ]]; then
  # The GPU machine's python has torch, numpy and tiktoken (the core dependencies); the
  # optional packages (pyproject extras) may be absent:
  # here they are made unimportable, so a hard dependency on one fails the smoke run.
  blocked=$OUT/blocked_packages
  for pkg in wandb lm_eval datasets transformers tensorboard pyarrow matplotlib \
             safetensors accelerate huggingface_hub; do
    mkdir -p "$blocked/$pkg"
    echo "raise ImportError('$pkg is blocked by bench/gpu_window.sh --smoke')" \
      >"$blocked/$pkg/__init__.py"
  done
  export PYTHONPATH="$blocked:$PYTHONPATH"
  val_tokens=4096
  recipe=train_configs/debug_model.toml
  size=(--training.seq_len=128 --training.global_batch_tokens=2048 --training.micro_batch_size=8)
  shards=(400000 20000)
  check=(--smoke)
else
  val_tokens=65536
  recipe=train_configs/mini_gpt_100m.toml
  size=()
  shards=(6000000 300000)
  check=(--steps 30)
fi

step env "$PY" -c "
import platform, sys, torch
from torchgpt.utils import hardware
print('python', sys.version.split()[0], sys.executable)
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
if torch.cuda.is_available():
    print('gpu', torch.cuda.get_device_name(), round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1), 'GiB')
print('cpu', platform.processor() or platform.machine(), torch.backends.cpu.get_cpu_capability(), hardware.cpu_bf16_flags())
dev = 'cuda' if torch.cuda.is_available() else 'cpu'
print('mixed_precision auto ->', hardware.resolve_mixed_precision('auto', dev))
for name in ('numpy', 'tiktoken', 'tensorboard', 'wandb', 'lm_eval', 'datasets', 'transformers'):
    try:
        __import__(name); print('have', name)
    except ImportError:
        print('absent', name)
"
[[ -x "$(command -v nvidia-smi)" ]] && nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1

step probe "$PY" -c "
import torch
from torchgpt.utils.hardware import set_fp32_precision
dev = 'cuda' if torch.cuda.is_available() else 'cpu'
print('set:', set_fp32_precision(True))
b = torch.backends
print('legacy', b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, torch.get_float32_matmul_precision())
if hasattr(b.cuda.matmul, 'fp32_precision'):
    print('new', b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision)
mlp = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.GELU(), torch.nn.Linear(2048, 512)).to(dev)
x = torch.randn(64, 512, device=dev)
compiled = torch.compile(mlp)
y, ref = compiled(x), mlp(x)
err = (y - ref).abs().max().item()
print('compiled vs eager max abs diff', err)
assert err < 1e-2, err
"

step gpu_check "$PY" bench/gpu_check.py "${check[@]}" --json "$OUT/gpu_check.json"

data=$OUT/synthetic_shards
"$PY" -c "
import sys
from torchgpt.testing import write_synthetic_shards
write_synthetic_shards(sys.argv[1], train_tokens=int(sys.argv[2]), val_tokens=int(sys.argv[3]), shard_size=2_000_000)
" "$data" "${shards[@]}" >"$OUT/shards.log" 2>&1 || { echo "   shards: failed" | tee -a "$summary"; failed=1; }
run=(--data.dataset_path="$data" --job.dump_folder="$OUT/runs" --job.name=window
     --validation.tokens=$val_tokens --validation.interval=2 --checkpoint.interval=2
     --metrics.log_freq=1 --metrics.enable_wandb=false --data.verify_checksums=false "${size[@]}")
# With a memory snapshot of the first 2 steps (CUDA; a no-op said once on CPU) and the NCCL
# flight recorder switched on (its variables set before the process group starts).
step train_4 env PYTHON="$PY" NGPU=1 ./run_train.sh "$recipe" "${run[@]}" --training.steps=4 \
  --profiling.memory_snapshot=true --profiling.memory_snapshot_steps=2 --profiling.flight_recorder=true
ls -l "$OUT/runs/window/memory_snapshot" 2>/dev/null | sed 's/^/   snapshot: /' | tee -a "$summary"
step resume_6 env PYTHON="$PY" NGPU=1 ./run_train.sh "$recipe" "${run[@]}" --training.steps=6 \
  --checkpoint.allow_change=training.steps
grep -h "resumed from step" "$OUT/resume_6.log" "$OUT/runs/window/train.log" 2>/dev/null | head -1 |
  sed 's/^/   /' | tee -a "$summary"

step profile "$PY" - "$recipe" "$data" "$OUT" "${size[@]}" --compile.enable=true <<'EOF'
"""One compiled training step under torch.profiler: the kernels by self device time."""
import sys
import torch
from torch.profiler import ProfilerActivity, profile
from torchgpt.config.manager import load_config
from torchgpt.train import Trainer

recipe, data, out, extra = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
cfg = load_config(recipe, [f"--data.dataset_path={data}", f"--job.dump_folder={out}/profile_run",
                           "--validation.enable=false", "--checkpoint.enable=false",
                           "--metrics.enable_tensorboard=false", "--metrics.enable_wandb=false",
                           *extra], world_size=1)
trainer = Trainer(cfg)
for _ in range(2):  # compile and settle
    trainer.train_step()
cuda = torch.cuda.is_available()
activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
with profile(activities=activities) as prof:
    trainer.train_step()
    if cuda:
        torch.cuda.synchronize()
trainer.close()
key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
table = prof.key_averages().table(sort_by=key, row_limit=25)
open(f"{out}/profile.txt", "w").write(table)
prof.export_chrome_trace(f"{out}/profile_trace.json")
print(table)
EOF

echo "outputs in $OUT; failed steps: $failed" | tee -a "$summary"
exit $failed
