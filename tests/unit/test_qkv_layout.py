"""model.qkv_layout (issue #24): the per_head row order of the fused qkv weight is the same model
as GPT-2's grouped order, bitwise, and exports write grouped; a checkpoint saved before the
field existed resumes as grouped."""

from __future__ import annotations

import pytest
import torch

from torchgpt.model import GPT
from torchgpt.model.args import get_model_args
from torchgpt.model.attention import per_head_order
from torchgpt.model.hf import to_hf_state_dict


@pytest.mark.parametrize("flavor", ["debug", "debug-modern"])
def test_per_head_is_the_grouped_model_reordered(flavor):
    tokens = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))
    models = {}
    for layout in ("grouped", "per_head"):
        models[layout] = GPT(get_model_args(flavor, qkv_layout=layout))
        models[layout].init_weights(seed=0)
    grouped, per_head = models["grouped"], models["per_head"]
    assert torch.equal(grouped(tokens), per_head(tokens))  # the same function, bitwise
    w_g, w_p = grouped.layers[0].attn.qkv.weight, per_head.layers[0].attn.qkv.weight
    assert not torch.equal(w_g, w_p) and torch.equal(w_g[per_head_order(grouped.args)], w_p)
    hf_g, hf_p = to_hf_state_dict(grouped), to_hf_state_dict(per_head)
    assert hf_g.keys() == hf_p.keys() and all(torch.equal(hf_g[k], hf_p[k]) for k in hf_g)


def test_a_head_shard_of_per_head_rows_holds_whole_heads():
    args = get_model_args("debug", qkv_layout="per_head")  # 4 heads of 32
    order = per_head_order(args)
    first_half = order[: len(order) // 2]  # tp rank 0 of 2: heads 0 and 1, their q, k and v
    d, hs = args.dim, args.head_dim
    parts_heads = {(int(r) // d, (int(r) % d) // hs) for r in first_half}
    assert parts_heads == {(part, head) for part in range(3) for head in (0, 1)}


def test_checkpoints_from_before_the_field_resume_as_grouped(tmp_path):
    from dataclasses import asdict

    from torchgpt.checkpoint import layout
    from torchgpt.config.manager import load_config
    from torchgpt.run.preflight import check_resume

    saved_args = asdict(get_model_args("debug"))
    del saved_args["qkv_layout"]  # what a checkpoint of an earlier torchgpt holds
    ckpt = tmp_path / "run" / "checkpoints" / "step-2"
    ckpt.mkdir(parents=True)
    (ckpt / ".metadata").write_text("")
    (ckpt / layout.MARKER_NAME).write_text("")
    layout.write_json_atomic(ckpt / layout.INFO_NAME, {"extra": {"model_args": saved_args}})
    for qkv, refused in (("grouped", False), ("per_head", True)):
        cfg = load_config(
            None,
            [
                "--model.flavor",
                "debug",
                "--training.seq_len",
                "64",
                "--job.dump_folder",
                str(tmp_path),
            ]
            + ["--job.name", "run"]
            + ["--checkpoint.load_path", str(ckpt), "--model.qkv_layout", qkv],
        )
        problems = " ".join(check_resume(cfg))
        assert ("qkv_layout 'grouped' -> 'per_head'" in problems) == refused, problems
