"""JobConfig: one dataclass per TOML section, TOML loading, `--section.key` overrides, validation.

Precedence is CLI > TOML > dataclass defaults. Every problem (unknown key, wrong type, bad value,
inconsistent batch arithmetic) is collected and raised once as a `ConfigError`; launchers turn it
into exit code 2 so a bad config never starts a run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torchgpt.config.batch import grad_accum_steps


class ConfigError(ValueError):
    """Every problem found in a config, reported together."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config ({len(problems)} problem(s)):\n{lines}")


@dataclass
class Job:
    name: str = "torchgpt"
    """Run name; the run directory is `dump_folder/name`."""
    dump_folder: str = "./outputs"
    """Parent folder of run directories (checkpoints, metrics, TensorBoard, resolved config)."""
    seed: int = 0
    """Seed for model init, data order and dropout-free sampling; same seed -> same losses."""
    deterministic: bool = False
    """Ask torch for deterministic kernels (slower on GPU; CPU kernels already are)."""


@dataclass
class Model:
    name: str = "gpt"
    """Registered model (torchgpt/step/specs/NAME.py: its builder, parallelize function and
    memory / FLOP model)."""
    flavor: str = "gpt2-124m"
    """Named ModelArgs flavor from torchgpt.model.args.FLAVORS (e.g. debug, gpt2-124m,
    modern-124m)."""
    # The block options below: unset (None, "") keeps the flavor's value (off, except in the
    # speedrun-* flavors); a value set in the TOML or on the command line replaces it.
    qk_norm: bool | None = None
    """Apply RMSNorm to queries and keys (stabilises modern-* flavors at high lr)."""
    mlp_type: Literal["", "gelu", "swiglu", "relu2"] = ""
    """MLP of every block; empty keeps the flavor's (gelu for gpt2-*, swiglu for modern-*);
    relu2 = proj(relu(fc(x))^2) (Primer, modded-nanogpt)."""
    tie_embeddings: bool | None = None
    """Share the token embedding with the lm-head (all but speedrun-*); false unties them."""
    zero_init_proj: bool | None = None
    """Zero-initialise each block's output projections (attn.proj, mlp.proj): blocks start as
    the identity."""
    value_embeds: int | None = None
    """Value embeddings: k token tables mixed into the values of the first and the last k
    blocks (modded-nanogpt: 3); 0 = off; not with parallelism.tp > 1."""
    unet_skips: bool | None = None
    """U-net skips: each of the last n_layers // 2 blocks adds a learned multiple of its
    mirror block's output (modded-nanogpt); not with parallelism.tp > 1."""
    logit_softcap: float | None = None
    """> 0 bounds the logits to (-c, c) with c * tanh(logits / c) (modded-nanogpt: 30)."""
    attn_mask: Literal["causal", "block_causal"] = "causal"
    """block_causal: no attention across documents (each starts at its <|endoftext|>; pairs
    with data.align = bos); costs a (B, 1, T, T) bool mask per forward under sdpa."""
    attn_backend: Literal["auto", "sdpa", "flex"] = "auto"
    """block_causal's kernel: auto = FlexAttention on CUDA, an SDPA mask elsewhere; flex needs
    CUDA (torch has no CPU backward for it)."""
    qkv_layout: Literal["grouped", "per_head"] = "grouped"
    """Row order of the fused qkv weight: grouped (GPT-2's [q | k | v]) or per_head ([q k v]
    of each head), which tensor parallelism (parallelism.tp > 1) needs; the same model either
    way, and exports write grouped. Fixed for a run: a checkpoint resumes with its own."""

    def options(self) -> dict[str, Any]:
        """The ModelArgs fields this section sets on top of the flavor's (unset ones left out)."""
        set_ = {k: v for k, v in dataclasses.asdict(self).items() if v is not None and v != ""}
        return {k: v for k, v in set_.items() if k not in ("name", "flavor")}


@dataclass
class Data:
    dataset_path: str = "./data/fineweb_edu"
    """Folder of token shards written by tools/prepare_data.py (train_*.bin, val_*.bin,
    manifest.json)."""
    tokenizer_dir: str = ""
    """Folder with GPT-2 vocab.bpe + encoder.json for offline use; empty -> env
    TORCHGPT_GPT2_BPE_DIR or the hub."""
    align: Literal["none", "bos"] = "none"
    """Where training windows start: none: every seq_len tokens (nanoGPT / llm.c); bos: at a
    document start (its <|endoftext|>), greedily without overlap, so no sequence opens
    mid-document (modded-nanogpt); the ends of documents a window cuts are left out (the
    share is logged). Validation windows are not aligned (the same set for every run)."""
    num_workers: int = 0
    """DataLoader worker processes that prefetch windows (0 = load in the training process)."""
    allow_data_change: bool = False
    """Resume even when the shard fingerprint differs from the checkpoint's (data order
    restarts)."""
    verify_checksums: bool = True
    """Check every shard of the splits in use against the manifest's sha256 before training
    (run_train.sh, or a single process); sha256 costs ~0.65 s per GiB here."""


@dataclass
class Training:
    steps: int = 100
    """Optimizer steps to run."""
    global_batch_tokens: int = 524_288
    """Tokens per optimizer step over all ranks (GPT-3 small used 0.5M); sets gradient
    accumulation."""
    micro_batch_size: int | Literal["auto"] = 8
    """Sequences per rank per forward/backward; "auto": the largest that fits the device (see
    activation_checkpoint.mode), chosen at start by the memory estimator."""
    seq_len: int = 1024
    """Tokens per sequence (<= the flavor's max_seq_len)."""
    max_norm: float = 1.0
    """Clip the global gradient norm to this value (<= 0 disables clipping)."""
    mixed_precision: Literal["auto", "bf16", "fp32"] = "auto"
    """bf16: FSDP2 MixedPrecisionPolicy (bf16 compute, fp32 master weights and reduction) or
    autocast on one device. auto: bf16 on a CUDA device with bf16 support and on a CPU with bf16
    matmul instructions (AVX512-BF16, AMX), else fp32 (on an AVX2-only CPU bf16 runs ~65x slower
    than fp32); resolved at start, logged with its reason, recorded in config.json."""
    on_nonfinite: Literal["error", "skip"] = "error"
    """What a NaN/Inf loss does: stop with an error naming the step, or skip that optimizer step."""
    spike_zscore: float = 0.0
    """Loss-spike guard: skip the update of a step whose loss or grad norm is more than this
    many standard deviations above the last spike_window accepted steps (every rank agrees;
    counted and logged); 0 = off. 6 is a cautious value for a long run."""
    spike_window: int = 100
    """Accepted steps the spike guard's mean and standard deviation are taken over."""
    spike_min_steps: int = 20
    """Accepted steps the spike guard waits for before it can call a step a spike."""
    spike_max_skips: int = 5
    """This many spikes in a row stop the run (exit 1, the message names their steps)."""
    device_memory_gib: float = 0.0
    """Memory of one device that the "auto" choices size for; 0 = detect (a GPU's total memory,
    the smallest over all ranks; on CPU the host's available memory shared by its ranks)."""
    gc_freq: int = 50
    """Python's garbage collector runs every this many steps, on every rank at the same point
    (generation 1, as TorchTitan), not at random points inside steps; 0: Python's automatic
    collection."""
    allow_tf32: bool = True
    """On CUDA, run fp32 matmuls and convolutions on TF32 tensor cores (fp32 runs and the fp32
    parts of bf16 runs); false for exact-fp32 comparisons. No effect on CPU."""


@dataclass
class Optimizer:
    name: str = "adamw"
    """Registered optimizer (torchgpt/optim/NAME.py): adamw: AdamW everywhere; muon: Muon
    (torchgpt/optim/muon.py) for the 2-D weights of the transformer blocks, AdamW (lr, betas,
    eps, weight_decay below) for embeddings, lm-head, norms and biases."""
    lr: float = 6e-4
    """Peak learning rate (GPT-3 small: 6e-4); with name=muon, the AdamW part's."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2 (0.95 as in GPT-3 / nanoGPT for stability at large batch)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay, applied to >= 2-D weights only (not biases, norms)."""
    implementation: Literal["auto", "fused", "foreach", "for-loop"] = "auto"
    """AdamW kernel: auto = fused on CUDA and CPU, foreach elsewhere."""
    muon_lr: float = 0.02
    """Muon's peak learning rate (scaled per matrix by muon_adjust_lr; the schedule applies)."""
    muon_momentum: float = 0.95
    """Muon's (Nesterov) momentum."""
    muon_weight_decay: float = 0.0
    """Muon's decoupled weight decay (lr x wd per step, as torch.optim.Muon)."""
    muon_ns_steps: int = 5
    """Newton-Schulz iterations of the orthogonalisation."""
    muon_adjust_lr: Literal["original", "match_rms_adamw"] = "original"
    """Shape-aware update scale: original = sqrt(max(1, rows/cols)) (Keller Jordan);
    match_rms_adamw = 0.2 sqrt(max(rows, cols)) (Moonshot), which lets Muon reuse AdamW's lr."""


@dataclass
class LRScheduler:
    warmup_steps: int = 10
    """Linear warmup steps from ~0 to the peak lr."""
    decay_type: Literal["cosine", "linear", "constant", "geometric", "wsd"] = "cosine"
    """Decay after warmup down to min_lr_ratio * lr at the last step; wsd: warmup-stable-decay,
    the peak until the last decay_steps (or decay_fraction) of the run, which fall to
    min_lr_ratio (a cooldown can branch from any stable-phase checkpoint); geometric: the lr
    range test's sweep, rising from min_lr_ratio * lr at step 1 to lr at the last (no
    warmup)."""
    min_lr_ratio: float = 0.1
    """Final lr as a fraction of the peak (0.1 as in Chinchilla / GPT-3)."""
    decay_fraction: float = 0.2
    """wsd: the share of training.steps that decays (the last 20% by default)."""
    decay_steps: int = 0
    """wsd: the decay's length in steps, instead of decay_fraction when > 0 (a cooldown run
    sets it to the steps it adds)."""
    wsd_shape: Literal["linear", "cosine"] = "linear"
    """wsd: the decay's shape."""
    on_steps_change: Literal["stretch", "keep_end"] = "stretch"
    """A resume with another training.steps (checkpoint.allow_change training.steps): stretch
    re-spreads the decay to end at the new last step (a longer run's lr jumps back up at the
    resume step); keep_end keeps the checkpoint's decay end and holds the minimum lr for the
    extra steps (no jump). Either way the old and new schedule are logged."""


@dataclass
class Parallelism:
    dp_replicate: int = 1
    """Replicated data-parallel degree (HSDP when > 1 together with dp_shard > 1; DDP when
    dp_shard == 1)."""
    dp_shard: int = -1
    """Sharded (FSDP2) data-parallel degree; -1 infers world_size / dp_replicate."""
    data_parallel: Literal["fsdp", "ddp"] = "fsdp"
    """fsdp: FSDP2 fully_shard (HSDP with dp_replicate > 1); ddp:
    torch.nn.parallel.DistributedDataParallel over all ranks."""
    collective_timeout_s: float = 1800.0
    """Seconds any collective waits for the other ranks; a stalled or dead rank then makes
    every waiting rank fail, naming the phase, instead of hanging. Must exceed the longest
    rank-0-only pause (in-training harness eval, checksums of a large checkpoint)."""
    tp: int = 1
    """Tensor-parallel degree (Megatron-style, with sequence parallelism, on one DeviceMesh with
    dp_replicate x dp_shard): each block's qkv / fc (and gate) column-wise, its projections
    row-wise, norms and dropout on sequence shards, the embeddings row-wise, the lm-head
    column-wise. world_size = dp_replicate x dp_shard x tp; needs model.qkv_layout =
    "per_head" and data_parallel = "fsdp"; tp ranks share their batch."""
    loss_parallel: bool = True
    """With tp > 1: the lm-head's logits stay split over the vocabulary and the cross-entropy
    runs on the shards (1/tp of the (B*T, V) buffers per rank); false gathers them first."""
    tp_async: bool = False
    """Async TP on CUDA (torch's micro-pipelined all-gather / reduce-scatter matmuls under
    torch.compile); an option that has not run here (no GPU): it is refused on CPU."""
    fsdp_reshard_after_forward: Literal["default", "always", "never"] = "default"
    """Free all-gathered params after forward: default = every block but the last (TorchTitan)."""


@dataclass
class ActivationCheckpoint:
    mode: Literal["none", "full", "selective", "auto"] = "selective"
    """none: keep all activations; full: recompute every block; selective: see selective_option;
    auto: the lightest of none / selective / full that fits the device with a micro-batch of at
    least 8,192 tokens (estimated at start; see training.micro_batch_size)."""
    selective_option: str = "op"
    """'op': save matmul/attention outputs, recompute pointwise ops; an integer N: checkpoint
    every Nth block."""


@dataclass
class Compile:
    enable: bool = False
    """torch.compile each transformer block (inductor; CPU backend here, Triton on GPU)."""
    whole_model: bool = False
    """Compile the whole model as one graph instead of per block (longer warm-up)."""


@dataclass
class Checkpoint:
    enable: bool = True
    """Save distributed checkpoints (DCP) under RUN_DIR/checkpoints/step-N."""
    interval: int = 500
    """Save the 'last' checkpoint every this many steps (and at the final step)."""
    keep_latest_k: int = 3
    """Keep this many newest checkpoints (the best by val loss is never deleted); 0 keeps all."""
    resume: Literal["auto", "none"] = "auto"
    """auto: continue from the newest complete checkpoint of this run, if any."""
    load_step: int = -1
    """Resume from exactly this step (an error if it is missing or incomplete); -1 = as resume
    says."""
    load_path: str = ""
    """Resume from this checkpoint folder (overrides resume / load_step)."""
    async_mode: Literal["disabled", "async"] = "disabled"
    """async: DCP async_save, training continues while the checkpoint is written."""
    export_dtype: Literal["float32", "bfloat16"] = "float32"
    """dtype of the final model-only export (RUN_DIR/model.pt)."""
    allow_change: list[str] = field(default_factory=list)
    """Keys a resume may change although they change the math (global batch, seq_len,
    optimizer, schedule, seed), e.g. training.steps to extend a run; logged and recorded in
    run_info.json. Any other such change is refused with the diff."""


@dataclass
class Validation:
    enable: bool = True
    """Evaluate loss and perplexity on the fixed validation tokens."""
    interval: int = 100
    """Validate every this many steps (and at the final step)."""
    tokens: int = 1_048_576
    """Validation tokens (taken from the start of the val shards, identical every time)."""
    micro_batch_size: int = 0
    """Sequences per rank per validation forward; 0 = training.micro_batch_size."""


@dataclass
class Metrics:
    log_freq: int = 10
    """Log metrics every this many steps."""
    enable_tensorboard: bool = True
    """Write TensorBoard events to RUN_DIR/tb."""
    enable_wandb: bool = False
    """Log to Weights & Biases (offline mode when there is no key or network)."""
    wandb_project: str = "torchgpt"
    """W&B project name."""
    peak_tflops: float = 0.0
    """Peak bf16 TFLOP/s of one device for MFU; 0 = look up the GPU, or unknown on CPU."""
    layer_stats: bool = False
    """At log steps, per transformer block: gradient norm (before clipping), weight norm,
    update / weight norm ratio and the RMS of the residual stream after the block, as
    layer_grad_norm/NN, layer_weight_norm/NN, layer_update_ratio/NN, layer_act_rms/NN in the
    step records, TensorBoard and W&B (cost: BENCHMARK.md)."""


@dataclass
class Eval:
    enable: bool = False
    """Run lm-evaluation-harness tasks on a fixed subset during training."""
    interval: int = 500
    """Harness eval every this many steps."""
    tasks: list[str] = field(default_factory=lambda: ["hellaswag", "arc_easy", "piqa"])
    """Harness task names."""
    limit: int = 200
    """Items per task for the in-training eval (the full sets run in tools/eval.py)."""
    data_dir: str = ""
    """Local folder with the tasks in hub schema (../shared/data/eval); empty -> the hub."""


@dataclass
class Profiling:
    enable: bool = False
    """Record torch.profiler traces (CPU ops, and CUDA kernels on a GPU) of a few steps, one
    file per rank and cycle under RUN_DIR/profile/ (TensorBoard's profiler plugin and Perfetto
    open them)."""
    wait: int = 1
    """Steps skipped at the start of each recording cycle."""
    warmup: int = 1
    """Steps profiled and discarded (the profiler's own start-up) in each cycle."""
    active: int = 2
    """Steps recorded in each cycle."""
    repeat: int = 1
    """Recording cycles (0: until the run ends)."""
    memory_snapshot: bool = False
    """CUDA: record the caching allocator's history (every allocation with its stack) from the
    start, dump RUN_DIR/memory_snapshot/rank{R}.step{N}.pickle after memory_snapshot_steps
    steps, and rank{R}.oom.pickle on an out-of-memory error before the process exits (open
    either at pytorch.org/memory_viz). CPU: a no-op, said once."""
    memory_snapshot_steps: int = 3
    """Optimizer steps recorded before the snapshot is dumped (recording then stops)."""
    memory_snapshot_entries: int = 100_000
    """Allocator events kept (a ring buffer): more covers longer steps, costs host memory."""
    flight_recorder: bool = False
    """NCCL flight recorder: every rank keeps its last flight_recorder_entries collectives and
    dumps them to RUN_DIR/flight_recorder/rank_{R} when a collective times out (analyze with
    `python -m torch.distributed.flight_recorder.fr_trace RUN_DIR/flight_recorder`). Sets the
    TORCH_FR_* / TORCH_NCCL_* variables before the process group starts; gloo ignores them."""
    flight_recorder_entries: int = 20_000
    """Collectives the flight recorder's ring buffer holds per rank."""


@dataclass
class JobConfig:
    job: Job = field(default_factory=Job)
    model: Model = field(default_factory=Model)
    data: Data = field(default_factory=Data)
    training: Training = field(default_factory=Training)
    optimizer: Optimizer = field(default_factory=Optimizer)
    lr_scheduler: LRScheduler = field(default_factory=LRScheduler)
    parallelism: Parallelism = field(default_factory=Parallelism)
    activation_checkpoint: ActivationCheckpoint = field(default_factory=ActivationCheckpoint)
    compile: Compile = field(default_factory=Compile)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    validation: Validation = field(default_factory=Validation)
    metrics: Metrics = field(default_factory=Metrics)
    eval: Eval = field(default_factory=Eval)
    profiling: Profiling = field(default_factory=Profiling)

    @property
    def run_dir(self) -> Path:
        return Path(self.job.dump_folder) / self.job.name

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @property
    def sizing_is_auto(self) -> bool:
        """Micro-batch or activation checkpointing is still "auto" (resolved at start)."""
        return self.training.micro_batch_size == "auto" or self.activation_checkpoint.mode == "auto"

    def grad_accum_steps(self, dp_degree: int) -> int:
        """Micro-steps per optimizer step so that one step sees global_batch_tokens tokens."""
        t = self.training
        return grad_accum_steps(t.global_batch_tokens, t.micro_batch_size, t.seq_len, dp_degree)

    def step_text(self, dp_degree: int) -> str:
        """e.g. '524,288 tokens (4 micro-steps of 16 x 1024 per rank, 8 ranks)'."""
        t, accum = self.training, self.grad_accum_steps(dp_degree)
        return (
            f"{t.global_batch_tokens:,} tokens ({accum} micro-steps of {t.micro_batch_size} x "
            f"{t.seq_len} per rank, {dp_degree} ranks)"
        )
