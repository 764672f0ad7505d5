"""The training loss path: train_module.token_loss on padded logits, eager and compiled.

The Trainer asks the model for padded-vocabulary logits (no slice copy in backward) and its
loss masks the padding: the padded columns must never change the loss and must get an exact
zero gradient, on the eager (F.cross_entropy) and the compiled (fused) path alike.
"""

import pytest
import torch

from torchgpt.model import GPT, get_model_args
from torchgpt.step.train_module import token_cross_entropy_sum, token_loss

VOCAB, PADDED = 1000, 1088


def _loss_fn(compile_enable: bool):
    """The loss the TrainModule uses with and without torch.compile."""
    return lambda logits, targets, denom: token_loss(
        logits, targets, denom, vocab_size=VOCAB, fused=compile_enable
    )


@pytest.mark.parametrize("compile_enable", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_padded_columns_never_touch_the_loss(compile_enable, dtype):
    torch.manual_seed(0)
    logits = (3 * torch.randn(2, 32, PADDED)).to(dtype)
    targets = torch.randint(0, VOCAB, (2, 32))
    ref_logits = logits[..., :VOCAB].float().clone().requires_grad_()
    ref = token_cross_entropy_sum(ref_logits, targets) / 64
    ref.backward()

    loss_fn = _loss_fn(compile_enable)
    padded = logits.clone()
    padded[..., VOCAB:] = 1e3  # would dominate any softmax that saw them
    padded.requires_grad_()
    loss = loss_fn(padded, targets, 64)
    loss.backward()
    tol = 1e-6 if dtype == torch.float32 else 1e-5
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=tol)
    assert torch.all(padded.grad[..., VOCAB:] == 0)
    # bf16 logits get bf16 gradients: compare at bf16 resolution (8 mantissa bits).
    rtol, atol = (1e-5, 1e-8) if dtype == torch.float32 else (1e-2, 1e-5)
    torch.testing.assert_close(
        padded.grad[..., :VOCAB].float(), ref_logits.grad, rtol=rtol, atol=atol
    )
    # Real-vocabulary logits (validation calls the model without padded_vocab) give the same.
    with torch.no_grad():
        assert loss_fn(logits[..., :VOCAB], targets, 64).item() == pytest.approx(
            loss.item(), rel=tol
        )


def test_model_padded_vocab_logits_extend_the_default_ones():
    model = GPT(get_model_args("debug"))
    model.init_weights(seed=0)
    tokens = torch.randint(0, 50257, (2, 16))
    full = model(tokens, padded_vocab=True)
    assert full.shape == (2, 16, 50304)
    assert torch.equal(full[..., :50257], model(tokens))
