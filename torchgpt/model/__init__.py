"""The GPT model package: architecture args and flavors (`args`), the nn.Module (`gpt`),
decoding with a KV cache (`generate`) and Hugging Face interop (`hf`, needs transformers).

Import direction: this package imports neither `torchgpt.config` nor distributed code.
"""

from torchgpt.model.args import (
    FLAVORS,
    ModelArgs,
    flops_per_token,
    get_model_args,
    num_matmul_params,
    num_params,
)
from torchgpt.model.generate import KVCache
from torchgpt.model.gpt import GPT

__all__ = [
    "FLAVORS",
    "GPT",
    "KVCache",
    "ModelArgs",
    "flops_per_token",
    "get_model_args",
    "num_matmul_params",
    "num_params",
]
