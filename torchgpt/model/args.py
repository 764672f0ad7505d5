"""Model hyper-parameters: the `ModelArgs` dataclass, the named flavors, and the one place
where parameter counts (`num_params`) and training FLOPs per token (`flops_per_token`) are
computed. Everything here is plain arithmetic on `ModelArgs`; no module is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

_NORM_TYPES = ("layernorm", "rmsnorm")
_POS_EMBEDDINGS = ("learned", "rope")
_MLP_TYPES = ("gelu", "swiglu", "relu2")
_ATTN_MASKS = ("causal", "block_causal")
_ATTN_BACKENDS = ("auto", "sdpa", "flex")


@dataclass
class ModelArgs:
    """Architecture of a GPT. Options are fields, not subclasses."""

    dim: int = 768
    """Width of the residual stream (d_model)."""
    n_layers: int = 12
    """Number of transformer blocks."""
    n_heads: int = 12
    """Attention heads per block; must divide `dim`."""
    vocab_size: int = 50257
    """Real vocabulary size (GPT-2 BPE: 50257). Logits are returned for these ids only."""
    vocab_multiple: int = 64
    """Embedding/lm-head rows are padded up to a multiple of this for faster matmuls."""
    max_seq_len: int = 1024
    """Context length: size of the learned position table or of the RoPE tables."""
    norm_type: Literal["layernorm", "rmsnorm"] = "layernorm"
    """LayerNorm (GPT-2) or RMSNorm (Zhang & Sennrich 2019, used by Llama)."""
    norm_eps: float = 1e-5
    """Epsilon of every normalization layer."""
    pos_embedding: Literal["learned", "rope"] = "learned"
    """Learned absolute positions (GPT-2) or rotary embeddings (Su et al. 2021)."""
    rope_theta: float = 10000.0
    """RoPE base frequency; ignored for learned positions."""
    mlp_type: Literal["gelu", "swiglu", "relu2"] = "gelu"
    """GELU MLP (GPT-2), SwiGLU (Shazeer 2020, used by Llama) or ReLU^2 (So et al. 2021,
    Primer; modded-nanogpt): proj(relu(fc(x))^2), two matrices like GELU's."""
    ffn_hidden_dim: int | None = None
    """MLP hidden width; None means 4*dim (gelu, relu2) or 8/3*dim rounded up to 64
    (swiglu)."""
    bias: bool = True
    """Biases in every Linear and LayerNorm (GPT-2) or none (modern models)."""
    qk_norm: bool = False
    """RMSNorm over each head of q and k before attention (as in Qwen3, OLMo 2)."""
    tie_embeddings: bool = True
    """Share the token embedding matrix with the lm-head (Press & Wolf 2017, as GPT-2)."""
    qkv_layout: str = "grouped"
    """Row order of the fused qkv projection: "grouped" = [all q | all k | all v] (GPT-2's
    c_attn); "per_head" = [q, k, v of head 0 | of head 1 | ...], so that a column-wise
    tensor-parallel shard holds whole heads. The same function either way (a per_head model is
    initialized as the grouped one, its rows reordered); exports convert to grouped."""
    init_std: float = 0.02
    """Std of the normal init of weights (GPT-2); residual projections get a scaled std."""
    zero_init_proj: bool = False
    """Initialize the residual output projections (attn.proj, mlp.proj) to zero, so every
    block starts as the identity (modded-nanogpt) instead of GPT-2's scaled normal init."""
    value_embeds: int = 0
    """Value embeddings (modded-nanogpt): k extra token tables; table j is mixed into the
    values of block j and of block n_layers - k + j (v = l0 * v + l1 * table_j[token], learned
    l0, l1 per block, init 0.5); 0 = off. Needs 2k <= n_layers."""
    unet_skips: bool = False
    """U-net skips (modded-nanogpt): the input of each of the last n_layers // 2 blocks gets
    w_i times the output of its mirror among the first n_layers // 2 (learned w_i, init 1)."""
    logit_softcap: float = 0.0
    """> 0: logits = c * tanh(logits / c) (Gemma 2, modded-nanogpt's 30), bounding them to
    (-c, c); 0 leaves them as they are."""
    attn_mask: Literal["causal", "block_causal"] = "causal"
    """causal: a token attends to every earlier one of its window; block_causal: only to the
    earlier ones of its own document, a document starting at each `eos_id` token (torchgpt's
    shards put one before every document), so packed documents never see each other. Applies to
    whole-window forwards (training, validation, scoring); decoding with a KV cache is causal."""
    eos_id: int = 50256
    """The document separator block_causal cuts at (GPT-2's <|endoftext|>)."""
    attn_backend: Literal["auto", "sdpa", "flex"] = "auto"
    """How block_causal is computed: flex = FlexAttention with a block-sparse mask (torch has no
    CPU backward for it); sdpa = scaled_dot_product_attention with a dense (B, 1, T, T) bool
    mask (any device; on CUDA it rules out the flash kernel); auto = flex on CUDA, else sdpa."""

    @property
    def padded_vocab_size(self) -> int:
        """`vocab_size` rounded up to a multiple of `vocab_multiple` (50257 -> 50304)."""
        m = self.vocab_multiple
        return -(-self.vocab_size // m) * m

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """Resolved MLP hidden width."""
        if self.ffn_hidden_dim is not None:
            return self.ffn_hidden_dim
        if self.mlp_type != "swiglu":
            return 4 * self.dim
        # SwiGLU has three matrices instead of two, so 2/3 of 4*dim keeps the parameter count
        # (Shazeer 2020, "GLU Variants Improve Transformer"); round up to 64 for fast matmuls.
        hidden = -(-8 * self.dim // 3)
        return -(-hidden // 64) * 64

    def validate(self) -> None:
        """Check every field and raise once listing all problems.

        Raises:
            ValueError: if any field is out of range or inconsistent with another.
        """
        problems = []
        for name in ("dim", "n_layers", "n_heads", "vocab_size", "vocab_multiple", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                problems.append(f"{name}={value!r} must be a positive integer")
        if not problems and self.dim % self.n_heads != 0:
            problems.append(
                f"n_heads={self.n_heads} does not divide dim={self.dim}; "
                f"pick n_heads from the divisors of dim (e.g. dim/64={self.dim / 64:g})"
            )
        if self.norm_type not in _NORM_TYPES:
            problems.append(f"norm_type={self.norm_type!r} must be one of {_NORM_TYPES}")
        if self.pos_embedding not in _POS_EMBEDDINGS:
            problems.append(
                f"pos_embedding={self.pos_embedding!r} must be one of {_POS_EMBEDDINGS}"
            )
        if self.qkv_layout not in ("grouped", "per_head"):
            problems.append(f"qkv_layout={self.qkv_layout!r} must be 'grouped' or 'per_head'")
        if self.mlp_type not in _MLP_TYPES:
            problems.append(f"mlp_type={self.mlp_type!r} must be one of {_MLP_TYPES}")
        if self.pos_embedding == "rope" and not problems and self.head_dim % 2 != 0:
            problems.append(f"RoPE needs an even head_dim, got dim/n_heads={self.head_dim}")
        if self.ffn_hidden_dim is not None and (
            not isinstance(self.ffn_hidden_dim, int) or self.ffn_hidden_dim <= 0
        ):
            problems.append(
                f"ffn_hidden_dim={self.ffn_hidden_dim!r} must be a positive int or None"
            )
        if not (isinstance(self.value_embeds, int) and 0 <= 2 * self.value_embeds <= self.n_layers):
            problems.append(
                f"value_embeds={self.value_embeds!r} must be an int with 0 <= 2 x value_embeds "
                f"<= n_layers={self.n_layers} (the first and the last k blocks get one each)"
            )
        if not self.logit_softcap >= 0:
            problems.append(f"logit_softcap={self.logit_softcap!r} must be >= 0 (0 = off)")
        if self.attn_mask not in _ATTN_MASKS:
            problems.append(f"attn_mask={self.attn_mask!r} must be one of {_ATTN_MASKS}")
        if self.attn_backend not in _ATTN_BACKENDS:
            problems.append(f"attn_backend={self.attn_backend!r} must be one of {_ATTN_BACKENDS}")
        for name in ("norm_eps", "rope_theta", "init_std"):
            if not getattr(self, name) > 0:
                problems.append(f"{name}={getattr(self, name)!r} must be > 0")
        if problems:
            raise ValueError("invalid ModelArgs:\n  - " + "\n  - ".join(problems))


_GPT2 = dict(norm_type="layernorm", pos_embedding="learned", mlp_type="gelu", bias=True)
_MODERN = dict(norm_type="rmsnorm", pos_embedding="rope", mlp_type="swiglu", bias=False)
# The speedrun block: modern plus the block options that won bench/speedrun.py's one-at-a-time
# ablation on top of modern + Muon (BENCHMARK.md, "Quality per token"). An option joins when it
# alone lowers the final val loss by >= 0.02 (about the run-to-run spread) and the combination
# stays within 10% of modern's step time; the table there says why each other one did not.
SPEEDRUN_OPTIONS = dict(
    mlp_type="relu2", value_embeds=2, unet_skips=True, tie_embeddings=False, zero_init_proj=True
)
_SPEEDRUN = dict(_MODERN, **SPEEDRUN_OPTIONS)

FLAVORS: dict[str, ModelArgs] = {
    # Tiny models for tests and smoke runs: seconds per step on a CPU.
    "debug": ModelArgs(dim=128, n_layers=2, n_heads=4, max_seq_len=512, **_GPT2),
    "debug-modern": ModelArgs(dim=128, n_layers=2, n_heads=4, max_seq_len=512, **_MODERN),
    "debug-speedrun": ModelArgs(dim=128, n_layers=4, n_heads=4, max_seq_len=512, **_SPEEDRUN),
    # CPU-sized models for a 60-90 minute reference run.
    "gpt2-d128-l4": ModelArgs(dim=128, n_layers=4, n_heads=2, **_GPT2),
    "gpt2-d128-l6": ModelArgs(dim=128, n_layers=6, n_heads=2, **_GPT2),
    "modern-d128-l4": ModelArgs(dim=128, n_layers=4, n_heads=2, **_MODERN),
    "gpt2-d192-l4": ModelArgs(dim=192, n_layers=4, n_heads=3, **_GPT2),
    "gpt2-d256-l4": ModelArgs(dim=256, n_layers=4, n_heads=4, **_GPT2),
    # Also the benchmark model (the one measured in ENVIRONMENT_NOTES.md as "bench-30m").
    "gpt2-d384-l6": ModelArgs(dim=384, n_layers=6, n_heads=6, **_GPT2),
    "modern-d384-l6": ModelArgs(dim=384, n_layers=6, n_heads=6, **_MODERN),
    # The published GPT-2 sizes (Radford et al. 2019, table 2).
    "gpt2-124m": ModelArgs(dim=768, n_layers=12, n_heads=12, **_GPT2),
    "gpt2-350m": ModelArgs(dim=1024, n_layers=24, n_heads=16, **_GPT2),
    "gpt2-774m": ModelArgs(dim=1280, n_layers=36, n_heads=20, **_GPT2),
    "gpt2-1558m": ModelArgs(dim=1600, n_layers=48, n_heads=25, **_GPT2),
    # GPT-2 small size with Llama-style components; same parameter count as gpt2-124m
    # minus the position table and biases.
    "modern-124m": ModelArgs(dim=768, n_layers=12, n_heads=12, **_MODERN),
    # The modern sizes with the speedrun block (train_configs/speedrun_124m.toml).
    "speedrun-d384-l6": ModelArgs(dim=384, n_layers=6, n_heads=6, **_SPEEDRUN),
    "speedrun-124m": ModelArgs(dim=768, n_layers=12, n_heads=12, **_SPEEDRUN),
}


def get_model_args(flavor: str, **overrides: object) -> ModelArgs:
    """Return a validated copy of a named flavor with optional field overrides.

    Args:
        flavor: a key of `FLAVORS`, e.g. "gpt2-124m".
        **overrides: ModelArgs fields to replace, e.g. `n_layers=2`.

    Raises:
        ValueError: unknown flavor, unknown override key, or invalid resulting args.
    """
    if flavor not in FLAVORS:
        raise ValueError(f"unknown model flavor {flavor!r}; known flavors: {sorted(FLAVORS)}")
    fields = {f.name for f in dataclasses.fields(ModelArgs)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"unknown ModelArgs field(s) {unknown} overriding flavor {flavor!r}; "
            f"valid fields: {sorted(fields)}"
        )
    args = dataclasses.replace(FLAVORS[flavor], **overrides)
    args.validate()
    return args


def _norm_params(args: ModelArgs, width: int) -> int:
    has_bias = args.norm_type == "layernorm" and args.bias
    return width * (2 if has_bias else 1)


def _block_params(args: ModelArgs) -> int:
    d, h, b = args.dim, args.hidden_dim, int(args.bias)
    attn = 3 * d * d + 3 * d * b + d * d + d * b  # fused qkv + output projection
    n_mlp_mats = 3 if args.mlp_type == "swiglu" else 2
    mlp = n_mlp_mats * d * h + (n_mlp_mats - 1) * h * b + d * b
    qk = 2 * args.head_dim if args.qk_norm else 0
    return 2 * _norm_params(args, d) + attn + mlp + qk


def num_params(args: ModelArgs, *, embeddings: bool = True, padded_vocab: bool = False) -> int:
    """Count the parameters of a GPT built from `args` (tied weights counted once).

    Args:
        args: the architecture.
        embeddings: include the token and learned-position tables. The lm-head is counted
            when untied (it is a matmul, not a lookup); when tied it IS the token table.
            `embeddings=False` is the "non-embedding" N of Kaplan et al. 2020.
        padded_vocab: count vocabulary rows at `padded_vocab_size` (what the module holds)
            instead of `vocab_size` (the published figure, e.g. GPT-2 small = 124,439,808).
    """
    vocab = args.padded_vocab_size if padded_vocab else args.vocab_size
    total = args.n_layers * _block_params(args) + _norm_params(args, args.dim)
    total += args.n_layers // 2 if args.unet_skips else 0  # one skip weight per pair
    total += 4 * args.value_embeds  # the two mixing weights of each block with a table
    if embeddings:
        total += args.value_embeds * vocab * args.dim
    if embeddings:
        total += vocab * args.dim
        if args.pos_embedding == "learned":
            total += args.max_seq_len * args.dim
    if not args.tie_embeddings:
        total += vocab * args.dim
    return total


def num_local_params(args: ModelArgs, tp: int = 1) -> int:
    """Parameters one tensor-parallel rank holds (padded vocabulary), under the plan of
    torchgpt.parallel.parallelize.apply_tp: every matmul weight and the biases of the
    column-wise layers (qkv, fc, gate) split `tp` ways, as are the token table (the tied or
    untied lm-head with it) and learned positions (by rows); norms, qk-norm weights and the
    row-wise projections' biases are replicated. tp = 1 is num_params(padded_vocab=True)."""
    if tp == 1:
        return num_params(args, padded_vocab=True)
    d, h, b = args.dim, args.hidden_dim, int(args.bias)
    n_mlp_mats = 3 if args.mlp_type == "swiglu" else 2
    split = 4 * d * d + 3 * d * b + n_mlp_mats * d * h + (n_mlp_mats - 1) * h * b
    whole = 2 * _norm_params(args, d) + 2 * d * b + (2 * args.head_dim if args.qk_norm else 0)
    rows = args.padded_vocab_size * (1 if args.tie_embeddings else 2)
    if args.pos_embedding == "learned":
        rows += args.max_seq_len
    block = -(-split // tp) + whole
    skips = args.n_layers // 2 if args.unet_skips else 0
    return args.n_layers * block + _norm_params(args, d) + skips + -(-rows // tp) * d


def num_matmul_params(args: ModelArgs) -> int:
    """Weights that take part in a matmul per token: block Linears plus the padded lm-head.

    This is the N of the 6N training-FLOP term. Biases, norm weights and embedding lookups
    cost O(N) elementwise work, not 2 FLOPs per weight, so they are left out; the lm-head is
    counted at the padded vocabulary because that is the matmul the hardware executes.
    """
    d, h = args.dim, args.hidden_dim
    n_mlp_mats = 3 if args.mlp_type == "swiglu" else 2
    per_block = 4 * d * d + n_mlp_mats * d * h
    return args.n_layers * per_block + args.padded_vocab_size * d


def flops_per_token(args: ModelArgs, seq_len: int) -> int:
    """Training (forward + backward) FLOPs per token at sequence length `seq_len`.

    PaLM (Chowdhery et al. 2022), appendix B: 6N + 12*L*d*T. A forward pass costs 2 FLOPs
    per matmul weight and per token, backward twice that (grads of inputs and of weights),
    hence 6N with N = `num_matmul_params(args)`. Attention scores (QK^T) and the weighted sum
    of values each cost 2*T*d per token and layer forward, so 12*L*d*T for forward+backward;
    like PaLM we do not halve it for the causal mask (kernels that skip masked blocks do less).

    Args:
        args: the architecture.
        seq_len: training sequence length T.
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len={seq_len} must be positive")
    return 6 * num_matmul_params(args) + 12 * args.n_layers * args.dim * seq_len
