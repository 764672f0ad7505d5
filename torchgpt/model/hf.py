"""Hugging Face transformers interop: export a GPT to a folder `from_pretrained` can load
(config.json + model.safetensors) and import such a folder or model back.

GPT-2-style args map to `GPT2LMHeadModel`, RoPE/RMSNorm/SwiGLU args to `LlamaForCausalLM`
(or `Qwen3ForCausalLM` with QK-norm). transformers is optional: imported inside functions.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from torchgpt.model.args import ModelArgs
from torchgpt.model.gpt import GPT

GPT2_EOS_ID = 50256
_GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # both are tanh-approximated GELU

# Each rule is (our key, their key, kind). kind: "same"; "t" (HF GPT-2 Conv1D stores weights
# as (in, out), the transpose of nn.Linear); "vocab" (rows beyond vocab_size are our padding);
# "q"/"k"/"v" (one third of our fused qkv along the output dim).
Rule = tuple[str, str, str]


def hf_family(args: ModelArgs) -> str:
    """Return "gpt2", "llama" or "qwen3": the transformers architecture matching `args`.

    Raises:
        ValueError: no transformers architecture has these options.
    """
    a = args
    missing = []  # every option transformers lacks, so one export attempt names them all
    if a.logit_softcap > 0:
        missing.append(
            f"model.logit_softcap = {a.logit_softcap:g}: transformers' GPT-2 / Llama / Qwen3 "
            "models have no logit soft-cap, so an export would score differently; export a "
            "model trained with logit_softcap = 0"
        )
    if a.value_embeds:
        missing.append(
            f"model.value_embeds = {a.value_embeds}: transformers' GPT-2 / Llama / Qwen3 have "
            "no value embeddings; export a model trained with value_embeds = 0"
        )
    if a.unet_skips:
        missing.append(
            "model.unet_skips: transformers' GPT-2 / Llama / Qwen3 have no skip connections "
            "between blocks; export a model trained with unet_skips = false"
        )
    if a.mlp_type == "relu2":
        missing.append(
            'model.mlp_type = "relu2": no transformers architecture among GPT-2 / Llama / '
            "Qwen3 has a ReLU^2 MLP; export a model trained with gelu or swiglu"
        )
    if missing:
        raise ValueError("\n".join(missing))
    if (a.norm_type, a.pos_embedding, a.mlp_type) == ("layernorm", "learned", "gelu"):
        if a.bias and not a.qk_norm:
            return "gpt2"
    elif (a.norm_type, a.pos_embedding, a.mlp_type) == ("rmsnorm", "rope", "swiglu"):
        if not a.qk_norm:
            return "llama"
        if not a.bias:
            return "qwen3"
    raise ValueError(
        f"no transformers architecture matches norm_type={a.norm_type!r}, "
        f"pos_embedding={a.pos_embedding!r}, mlp_type={a.mlp_type!r}, bias={a.bias}, "
        f"qk_norm={a.qk_norm}; exportable: GPT-2 (layernorm, learned, gelu, bias=True, "
        f"qk_norm=False), Llama (rmsnorm, rope, swiglu, qk_norm=False) or Qwen3 (rmsnorm, "
        f"rope, swiglu, qk_norm=True, bias=False)"
    )


def _rules(family: str, args: ModelArgs) -> list[Rule]:
    if family == "gpt2":
        rules = [("tok_embeddings.weight", "transformer.wte.weight", "vocab")]
        rules.append(("pos_embeddings.weight", "transformer.wpe.weight", "same"))
        for i in range(args.n_layers):
            o, h = f"layers.{i}.", f"transformer.h.{i}."
            for ours, theirs, kind in [
                ("attn_norm", "ln_1", "same"),
                ("attn.qkv", "attn.c_attn", "t"),
                ("attn.proj", "attn.c_proj", "t"),
                ("mlp_norm", "ln_2", "same"),
                ("mlp.fc", "mlp.c_fc", "t"),
                ("mlp.proj", "mlp.c_proj", "t"),
            ]:
                rules.append((o + ours + ".weight", h + theirs + ".weight", kind))
                rules.append((o + ours + ".bias", h + theirs + ".bias", "same"))
        rules += [("norm.weight", "transformer.ln_f.weight", "same")]
        rules += [("norm.bias", "transformer.ln_f.bias", "same")]
    else:
        rules = [("tok_embeddings.weight", "model.embed_tokens.weight", "vocab")]
        params = ["weight", "bias"] if args.bias else ["weight"]
        for i in range(args.n_layers):
            o, h = f"layers.{i}.", f"model.layers.{i}."
            rules.append((o + "attn_norm.weight", h + "input_layernorm.weight", "same"))
            rules.append((o + "mlp_norm.weight", h + "post_attention_layernorm.weight", "same"))
            if args.qk_norm:
                rules.append((o + "attn.q_norm.weight", h + "self_attn.q_norm.weight", "same"))
                rules.append((o + "attn.k_norm.weight", h + "self_attn.k_norm.weight", "same"))
            for p in params:
                for part in "qkv":
                    rules.append((f"{o}attn.qkv.{p}", f"{h}self_attn.{part}_proj.{p}", part))
                for ours, theirs in [
                    ("attn.proj", "self_attn.o_proj"),
                    ("mlp.gate", "mlp.gate_proj"),
                    ("mlp.fc", "mlp.up_proj"),
                    ("mlp.proj", "mlp.down_proj"),
                ]:
                    rules.append((f"{o}{ours}.{p}", f"{h}{theirs}.{p}", "same"))
        rules.append(("norm.weight", "model.norm.weight", "same"))
    rules.append(("output.weight", "lm_head.weight", "vocab"))
    return rules


def _eos_id(args: ModelArgs) -> int | None:
    return GPT2_EOS_ID if args.vocab_size > GPT2_EOS_ID else None


def _build_config(family: str, args: ModelArgs) -> Any:
    import transformers

    common = dict(
        vocab_size=args.vocab_size,
        tie_word_embeddings=args.tie_embeddings,
        initializer_range=args.init_std,
        bos_token_id=_eos_id(args),
        eos_token_id=_eos_id(args),
    )
    if family == "gpt2":
        return transformers.GPT2Config(
            n_positions=args.max_seq_len,
            n_embd=args.dim,
            n_layer=args.n_layers,
            n_head=args.n_heads,
            n_inner=args.hidden_dim,
            activation_function="gelu_new",
            layer_norm_epsilon=args.norm_eps,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **common,
        )
    llama_like = dict(
        hidden_size=args.dim,
        intermediate_size=args.hidden_dim,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_heads,
        head_dim=args.head_dim,
        hidden_act="silu",
        max_position_embeddings=args.max_seq_len,
        rms_norm_eps=args.norm_eps,
        rope_theta=args.rope_theta,  # transformers 5 folds it into rope_parameters
        attention_bias=args.bias,
        **common,
    )
    if family == "llama":
        return transformers.LlamaConfig(mlp_bias=args.bias, **llama_like)
    return transformers.Qwen3Config(use_sliding_window=False, **llama_like)


def _model_class(family: str) -> type:
    import transformers

    names = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
    return getattr(transformers, names[family])


def grouped_state_dict(state: dict[str, Tensor], args: Any) -> dict[str, Tensor]:
    """`state` with per_head fused-qkv rows put back in GPT-2's grouped order (as is when the
    model is grouped already)."""
    if args.qkv_layout != "per_head":
        return state
    from torchgpt.model.attention import per_head_order

    back = torch.argsort(per_head_order(args))
    return {k: v[back] if ".attn.qkv." in k else v for k, v in state.items()}


def to_hf_state_dict(model: GPT, family: str | None = None) -> dict[str, Tensor]:
    """Return the transformers-named state dict of `model` (tensors share no storage).

    Args:
        model: the GPT to convert.
        family: "gpt2", "llama" or "qwen3"; default `hf_family(model.args)`.
    """
    args = model.args
    family = family or hf_family(args)
    ours = grouped_state_dict(model.state_dict(), args)
    out = {}
    for our_key, their_key, kind in _rules(family, args):
        t = ours[our_key]
        if kind == "t":
            t = t.t()
        elif kind == "vocab":
            t = t[: args.vocab_size]
        elif kind in ("q", "k", "v"):
            t = t.chunk(3, dim=0)["qkv".index(kind)]
        out[their_key] = t.detach().clone().contiguous()
    return out


def export_hf(model: GPT, out_dir: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Path:
    """Write `model` as a transformers folder (config.json + model.safetensors).

    Args:
        model: an unsharded GPT (gather FSDP-sharded weights first).
        out_dir: folder to create or overwrite.
        dtype: dtype of the saved weights.

    Returns:
        The folder path; load it with `AutoModelForCausalLM.from_pretrained(out_dir)`.

    Raises:
        ValueError: the architecture has no transformers equivalent (see `hf_family`).
    """
    family = hf_family(model.args)
    state = {k: v.to(dtype) for k, v in to_hf_state_dict(model, family).items()}
    # Built on meta: skips transformers' random init; strict=True proves every tensor of
    # the transformers model received one of ours. Its non-persistent buffers (Llama's
    # inv_freq) stay on meta; they are not saved and this model is never run.
    with torch.device("meta"):
        hf_model = _model_class(family)(_build_config(family, model.args))
    hf_model.load_state_dict(state, strict=True, assign=True)
    if model.args.tie_embeddings:
        hf_model.tie_weights()  # assign=True gave lm_head its own tensor
    out = Path(out_dir)
    hf_model.save_pretrained(out)
    return out


def _rope_theta(config: Any) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(f"rope_type={rope_type!r} in the transformers config is not supported")
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    return float(theta)


def _gpt2_args(config: Any) -> ModelArgs:
    if (
        config.activation_function not in _GPT2_ACTIVATIONS
        or config.scale_attn_by_inverse_layer_idx
    ):
        raise ValueError(
            f"GPT-2 config with activation_function={config.activation_function!r}, "
            f"scale_attn_by_inverse_layer_idx={config.scale_attn_by_inverse_layer_idx} "
            f"is not supported (need gelu_new and False)"
        )
    return ModelArgs(
        dim=config.n_embd,
        n_layers=config.n_layer,
        n_heads=config.n_head,
        vocab_size=config.vocab_size,
        max_seq_len=config.n_positions,
        norm_eps=config.layer_norm_epsilon,
        ffn_hidden_dim=config.n_inner or 4 * config.n_embd,
        tie_embeddings=bool(config.tie_word_embeddings),
        init_std=config.initializer_range,
    )


def _llama_args(config: Any) -> ModelArgs:
    family = config.model_type
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    problems = []
    if config.num_key_value_heads != config.num_attention_heads:
        problems.append("grouped-query attention (num_key_value_heads != num_attention_heads)")
    if head_dim * config.num_attention_heads != config.hidden_size:
        problems.append("head_dim * num_attention_heads != hidden_size")
    if config.hidden_act != "silu":
        problems.append(f"hidden_act={config.hidden_act!r} (need silu)")
    if family == "llama" and config.mlp_bias != config.attention_bias:
        problems.append("mlp_bias != attention_bias (one bias flag covers both)")
    if family == "qwen3" and config.attention_bias:
        problems.append("attention_bias=True (Qwen3 MLPs have none; one bias flag covers both)")
    if getattr(config, "use_sliding_window", False):
        problems.append("sliding-window attention")
    if problems:
        raise ValueError(f"unsupported {family} config: {'; '.join(problems)}")
    return ModelArgs(
        dim=config.hidden_size,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        vocab_size=config.vocab_size,
        max_seq_len=config.max_position_embeddings,
        norm_type="rmsnorm",
        norm_eps=config.rms_norm_eps,
        pos_embedding="rope",
        rope_theta=_rope_theta(config),
        mlp_type="swiglu",
        ffn_hidden_dim=config.intermediate_size,
        bias=config.attention_bias,
        qk_norm=family == "qwen3",
        tie_embeddings=bool(config.tie_word_embeddings),
        init_std=config.initializer_range,
    )


def args_from_hf_config(config: Any) -> ModelArgs:
    """Translate a GPT2Config / LlamaConfig / Qwen3Config into ModelArgs.

    Raises:
        ValueError: an architecture or option GPT cannot represent.
    """
    if config.model_type == "gpt2":
        args = _gpt2_args(config)
    elif config.model_type in ("llama", "qwen3"):
        args = _llama_args(config)
    else:
        raise ValueError(
            f"model_type={config.model_type!r} is not supported; import gpt2, llama or qwen3"
        )
    if args.ffn_hidden_dim == dataclasses.replace(args, ffn_hidden_dim=None).hidden_dim:
        args.ffn_hidden_dim = None  # the default width: keep args equal to the flavor's
    args.validate()
    return args


def import_hf(path_or_model: str | os.PathLike | Any) -> GPT:
    """Build a float32 CPU GPT from a transformers folder or an in-memory model.

    Args:
        path_or_model: a folder written by `export_hf` (or any GPT-2 / Llama / Qwen3
            checkpoint folder without unsupported options), or a loaded transformers model.

    Raises:
        ValueError: unsupported architecture or options.
    """
    if isinstance(path_or_model, (str, os.PathLike)):
        import transformers

        path = Path(path_or_model)
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} has no config.json; pass a folder written by export_hf")
        config = transformers.AutoConfig.from_pretrained(path)
        args = args_from_hf_config(config)  # rejects unsupported architectures first
        hf_model = _model_class(config.model_type).from_pretrained(path, dtype=torch.float32)
    else:
        hf_model = path_or_model
        args = args_from_hf_config(hf_model.config)
    return _load_from_hf_state_dict(args, hf_model.state_dict())


def _load_from_hf_state_dict(args: ModelArgs, hf_state: dict[str, Tensor]) -> GPT:
    family = hf_family(args)
    with torch.device("meta"):
        model = GPT(args)
    model.to_empty(device="cpu")
    model.tie_weights()
    ours: dict[str, Tensor] = {}
    qkv_parts: dict[str, list[Tensor]] = {}
    for our_key, their_key, kind in _rules(family, args):
        t = hf_state[their_key].detach().float()
        if kind == "t":
            t = t.t()
        elif kind == "vocab":
            # Padded rows are never read or sampled; zeros keep them inert.
            t = torch.cat([t, t.new_zeros(args.padded_vocab_size - args.vocab_size, args.dim)])
        elif kind in ("q", "k", "v"):
            qkv_parts.setdefault(our_key, []).append(t)
            t = torch.cat(qkv_parts[our_key])
        ours[our_key] = t
    model.load_state_dict(ours, strict=True)
    model.init_buffers()
    return model
