"""The GPT model package: architecture args and flavors (`args`), the nn.Module (`gpt`),
decoding with a KV cache (`generate`, `kv_cache`) and Hugging Face interop (`hf`, needs
transformers).

Import direction: this package imports neither `torchgpt.config.job_config` nor distributed code.
"""

from torchgpt.model.args import (
    FLAVORS,
    ModelArgs,
    flops_per_token,
    get_model_args,
    num_matmul_params,
    num_params,
)
from torchgpt.model.gpt import GPT
from torchgpt.model.kv_cache import KVCache

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
