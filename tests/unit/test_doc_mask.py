"""model.attn_mask = "block_causal" (issue #26): no attention across documents. A packed window
scores each of its documents exactly as that document alone (RoPE is relative, so a document's
offset in the window does not matter), in the forward and in the gradients; the FlexAttention
mask is the SDPA one; the config keys reach the model; the estimator counts the mask."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from torchgpt.config.job_config import ConfigError
from torchgpt.config.manager import load_config
from torchgpt.estimation.memory import analytic_memory
from torchgpt.estimation.plan import TrainingPlan
from torchgpt.estimation.trace import trace_memory
from torchgpt.model.args import get_model_args
from torchgpt.model.attention import document_mask
from torchgpt.model.gpt import GPT
from torchgpt.model.hf import hf_family
from torchgpt.step.config import TrainModuleConfig

EOS = 50256
DEBUG = Path(__file__).resolve().parents[2] / "train_configs" / "debug_model.toml"


def _model(attn_mask: str, **options) -> GPT:
    torch.manual_seed(0)
    model = GPT(get_model_args("debug-modern", attn_mask=attn_mask, **options))
    model.init_weights(seed=0)
    return model


def _documents(lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(0, EOS, (n,), generator=g) for n in lengths]
    return [torch.cat([torch.tensor([EOS]), d]) for d in docs]  # each opens with <|endoftext|>


def test_the_mask_is_causal_within_each_document():
    tokens = torch.tensor([[5, EOS, 7, 8, EOS, 9], [EOS, 1, 2, 3, 4, 5]])
    mask = document_mask(tokens, EOS, "sdpa")[:, 0]  # (B, T, T)
    assert mask.shape == (2, 6, 6) and mask.dtype == torch.bool
    # row 0: documents [5] (opened before the window), [EOS 7 8], [EOS 9]
    doc = torch.tensor([0, 1, 1, 1, 2, 2])
    expected = torch.ones(6, 6, dtype=torch.bool).tril() & (doc[:, None] == doc[None, :])
    assert torch.equal(mask[0], expected)
    assert torch.equal(mask[1], torch.ones(6, 6, dtype=torch.bool).tril())  # one document


@pytest.mark.parametrize("options", [{}, {"qk_norm": True, "value_embeds": 1}])
def test_a_packed_window_scores_each_document_as_if_alone(options):
    docs = _documents([9, 20, 1, 14])
    packed = torch.cat(docs)[None]  # (1, 48)
    model = _model("block_causal", **options).eval()
    with torch.no_grad():
        logits = model(packed)[0]
        alone = torch.cat([model(d[None])[0] for d in docs])
        causal = _model("causal", **options).eval()(packed)[0]
    torch.testing.assert_close(logits, alone, rtol=1e-5, atol=1e-5)
    later = slice(len(docs[0]), None)  # the causal model lets later documents see earlier ones
    assert (causal[later] - alone[later]).abs().max() > 1e-2


def test_the_gradients_are_the_sum_of_each_documents_alone():
    docs = _documents([12, 7, 25], seed=1)
    model = _model("block_causal")

    def loss_sum(seq: torch.Tensor) -> torch.Tensor:
        logits = model(seq[None, :-1])[0]
        return F.cross_entropy(logits.float(), seq[1:], reduction="sum")

    def grads() -> list[torch.Tensor]:
        out = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        return out

    loss_sum(torch.cat(docs)).backward()
    g_packed = grads()
    # Alone: each document and the separator it predicts last (the next document's opener);
    # the last document has none in the window.
    eos = torch.tensor([EOS])
    alone = [torch.cat([d, eos]) for d in docs[:-1]] + [docs[-1]]
    sum(loss_sum(s) for s in alone).backward()
    for a, b in zip(g_packed, grads(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_window_without_a_separator_is_plain_causal():
    tokens = torch.randint(0, EOS, (2, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = _model("block_causal").eval()(tokens)
        b = _model("causal").eval()(tokens)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_the_flex_mask_gives_the_sdpa_masks_attention():
    # torch has no FlexAttention backward on CPU: its forward (compiled) is what runs here.
    docs = _documents([40, 100, 3, 113], seed=3)
    tokens = torch.stack([torch.cat(docs), torch.cat(docs[::-1])])  # (2, 260)
    with torch.no_grad():
        sdpa = _model("block_causal", attn_backend="sdpa").eval()(tokens)
        flex = _model("block_causal", attn_backend="flex").eval()(tokens)
    torch.testing.assert_close(flex, sdpa, rtol=1e-4, atol=1e-4)
    block = document_mask(tokens, EOS, "flex")
    assert block.shape[-2:] == (260, 260)


def test_the_config_keys_reach_the_model_and_flex_needs_cuda(tmp_path):
    cfg = load_config(None, ["--model.attn_mask", "block_causal"], world_size=1)
    args = TrainModuleConfig.from_job(cfg, mixed_precision="fp32").model_args
    assert (args.attn_mask, args.attn_backend, args.eos_id) == ("block_causal", "auto", EOS)
    with pytest.raises(ConfigError, match="model.attn_mask"):
        load_config(None, ["--model.attn_mask", "document"], world_size=1)
    from torchgpt.training.trainer import Trainer

    flex = load_config(
        None,
        ["--model.attn_backend", "flex", "--job.dump_folder", str(tmp_path)],
        world_size=1,
    )
    with pytest.raises(ConfigError, match="model.attn_backend = flex: torch has no"):
        Trainer(flex)


def test_the_export_keeps_the_weights_of_a_block_causal_model():
    # A training-time mask: the exported model attends causally, the same for one document.
    assert hf_family(get_model_args("debug-modern", attn_mask="block_causal")) == "llama"


@pytest.mark.parametrize(
    "overrides,nproc",
    [
        (["--training.mixed_precision=fp32", "--activation_checkpoint.mode=none"], 1),
        (["--training.mixed_precision=bf16", "--activation_checkpoint.mode=none"], 1),
        (["--activation_checkpoint.mode=selective"], 1),
        (
            [
                "--activation_checkpoint.mode=selective",
                "--activation_checkpoint.selective_option=2",
            ],
            1,
        ),
        (["--activation_checkpoint.mode=full"], 2),
        (["--activation_checkpoint.mode=none"], 2),  # FSDP2: bf16 parameters
        (["--parallelism.tp=2", "--model.qkv_layout=per_head"], 2),  # heads sharded
        (["--compile.enable=true", "--activation_checkpoint.mode=none"], 1),
    ],
)
def test_the_estimator_counts_the_dense_mask_as_the_trace_sees_it(overrides, nproc):
    common = ["--model.flavor=debug-modern", "--training.micro_batch_size=8", *overrides]
    plans = [
        TrainingPlan.from_config(load_config(DEBUG, [*common, *extra], world_size=nproc), nproc)
        for extra in ([], ["--model.attn_mask=block_causal"])
    ]
    plain, masked = plans
    for n in (2, 4):  # the per-block copies scale with the blocks
        plain, masked = (dataclasses.replace(p, step=_layers(p.step, n)) for p in plans)
        traced = trace_memory(masked).peak_bytes - trace_memory(plain).peak_bytes
        analytic = analytic_memory(masked).peak_bytes - analytic_memory(plain).peak_bytes
        assert traced >= 8 * 256 * 256  # at least the bool mask itself
        assert analytic == pytest.approx(traced, rel=0.02)


def _layers(step, n: int):
    return dataclasses.replace(step, model_args=dataclasses.replace(step.model_args, n_layers=n))
