"""model.name = gpt: the GPT-2-class decoder (torchgpt/model/gpt.py) in every flavor of
torchgpt/model/args.py, parallelized by torchgpt/parallel/parallelize.py, costed by
torchgpt/model/cost.py."""

from __future__ import annotations

from typing import Any

from torchgpt.model import cost
from torchgpt.model.args import ModelArgs, get_model_args
from torchgpt.model.gpt import GPT
from torchgpt.parallel.parallelize import parallelize_gpt
from torchgpt.step.spec import TrainSpec


def _model_args(section: Any) -> ModelArgs:
    """The flavor's args with the [model] section's block options on top."""
    options = {
        "qk_norm": section.qk_norm,
        "qkv_layout": section.qkv_layout,
        "tie_embeddings": section.tie_embeddings,
        "zero_init_proj": section.zero_init_proj,
        "unet_skips": section.unet_skips,
        "value_embeds": section.value_embeds,
        "logit_softcap": section.logit_softcap,
        "attn_mask": section.attn_mask,
        "attn_backend": section.attn_backend,
    }
    if section.mlp_type:
        options["mlp_type"] = section.mlp_type
    return get_model_args(section.flavor, **options)


SPEC = TrainSpec(
    model_args=_model_args,
    build_model=GPT,
    parallelize=parallelize_gpt,
    cost=cost,
    doc="GPT-2-class decoder (flavors gpt2-*, modern-*, debug)",
)
