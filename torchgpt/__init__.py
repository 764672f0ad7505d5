"""torchgpt: GPT-2-class pretraining on torch.distributed primitives (FSDP2, DCP, compile)."""

__version__ = "0.1.0"
