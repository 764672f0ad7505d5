"""Muon for the blocks' matrices, AdamW for the rest, as one optimizer that works under FSDP2.

Muon (Jordan et al. 2024, github.com/KellerJordan/Muon): SGD momentum with Nesterov, then the
update matrix is orthogonalised by a quintic Newton-Schulz iteration and scaled by its shape.
The math is torch.optim.Muon's (torch >= 2.9): its Newton-Schulz function and shape-aware lr
adjustment are called, and on plain tensors one step equals torch.optim.Muon's bit for bit
(tests/unit/test_muon.py). torch.optim.Muon itself cannot take FSDP2's parameters: each rank
holds a row shard (DTensor Shard(0)) and orthogonalisation needs the whole matrix.

Layout under FSDP2 / HSDP: the momentum buffer is a DTensor sharded like the parameter (so DCP
saves, loads and reshards it like Adam's moments); at each step the Nesterov update is
all-gathered (DTensor.full_tensor), every rank orthogonalises the full matrix (identical inputs
-> identical outputs) and keeps its own shard of the result. Compared with gathering each matrix
to one owner rank and scattering the result, this spends one all-gather of the matrices per step
(as much traffic as one FSDP forward all-gather in fp32) and a redundant Newton-Schulz on every
rank: ~5 x 3 matmuls of d x 4d per matrix, ~0.01% of a 124M step's FLOPs, so the simpler layout
costs nothing measurable at the scales this project targets. DDP and one process use plain
tensors (DDP's gradients are already identical on every rank).

AdamW for embeddings, the lm-head, norms and biases runs through an inner torch.optim.AdamW that
shares this optimizer's parameter-group dicts and state, so the lr schedule, state_dict and DCP
see one optimizer. optimizer.name = muon; SPEC gives the step and the estimator its builder and
memory model (torchgpt/optim/registry.py).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from torchgpt.model.args import ModelArgs
from torchgpt.optim import adamw
from torchgpt.optim.registry import MemoryRows, OptimizerSpec

_WRAPPERS = {"module", "_orig_mod", "_checkpoint_wrapped_module", "_fsdp_wrapped_module"}


def muon_parameter_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """(Muon, AdamW) parameter names: Muon takes the 2-D weights inside the transformer blocks
    (attention qkv / proj, MLP fc / proj / gate); AdamW the embeddings, the lm-head, norm gains
    and biases. Tied parameters appear once."""
    muon, adamw = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # The GPT's own name, under DDP (module.), compile (_orig_mod.) or AC wrappers.
        own = ".".join(part for part in name.split(".") if part not in _WRAPPERS)
        in_block = own.startswith("layers.")
        (muon if in_block and p.dim() == 2 else adamw).append(name)
    return muon, adamw


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer: Muon groups (`group["muon"]` True) and AdamW groups.

    Args:
        model: the (possibly FSDP2-sharded) model.
        lr, betas, eps, weight_decay: AdamW's, for the non-Muon parameters (decay on >= 2-D).
        muon_lr, muon_momentum, muon_weight_decay, muon_ns_steps, muon_adjust_lr: Muon's
            (torch.optim.Muon's meaning; Nesterov always on).
        adamw_kwargs: kernel choice for the inner AdamW (fused / foreach).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        muon_lr: float,
        muon_momentum: float = 0.95,
        muon_weight_decay: float = 0.0,
        muon_ns_steps: int = 5,
        muon_adjust_lr: str = "original",
        adamw_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if not hasattr(torch.optim, "Muon"):
            raise ValueError(
                f"optimizer.name=muon needs torch >= 2.9 (torch.optim.Muon); this is torch "
                f"{torch.__version__}"
            )
        params = dict(model.named_parameters())
        muon_names, adamw_names = muon_parameter_names(model)
        matrices = [params[n] for n in adamw_names if params[n].dim() >= 2]
        vectors = [params[n] for n in adamw_names if params[n].dim() < 2]
        adamw_groups = [{"params": matrices}, {"params": vectors, "weight_decay": 0.0}]
        adamw_groups = [g for g in adamw_groups if g["params"]]
        for g in adamw_groups:
            g["muon"] = False
        self._adamw = torch.optim.AdamW(
            adamw_groups,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            **(adamw_kwargs or {}),
        )
        muon_group = {
            "params": [params[n] for n in muon_names],
            "muon": True,
            "lr": muon_lr,
            "weight_decay": muon_weight_decay,
            "momentum": muon_momentum,
            "nesterov": True,
            "ns_steps": muon_ns_steps,
            "ns_coefficients": (3.4445, -4.775, 2.0315),
            "eps": 1e-7,
            "adjust_lr_fn": muon_adjust_lr,
        }
        super().__init__([muon_group, *self._adamw.param_groups], {"lr": muon_lr})
        self._link()

    def _link(self) -> None:
        """The inner AdamW works on this optimizer's own group dicts and state."""
        self._adamw.param_groups = [g for g in self.param_groups if not g["muon"]]
        self._adamw.state = self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._link()

    @torch.no_grad()
    def step(self, closure=None):
        from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz

        for group in self.param_groups:
            if not group["muon"]:
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad)
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1 - group["momentum"])
                update = grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                full = update.full_tensor() if isinstance(update, DTensor) else update
                ortho = _zeropower_via_newtonschulz(
                    full, group["ns_coefficients"], group["ns_steps"], group["eps"]
                )
                if isinstance(p, DTensor):  # this rank's shard of the full result, no traffic
                    ortho = distribute_tensor(
                        ortho.to(p.dtype), p.device_mesh, p.placements, src_data_rank=None
                    )
                adjusted = _adjust_lr(group["lr"], group["adjust_lr_fn"], p.shape)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(ortho, alpha=-adjusted)
                # Free this matrix's temporaries before the next one allocates its own.
                del update, full, ortho
        self._adamw.step()
        return None


def _build(model: nn.Module, section: Any, device_type: str) -> torch.optim.Optimizer:
    return MuonWithAdamW(
        model,
        **adamw.adamw_args(section),
        muon_lr=section.muon_lr,
        muon_momentum=section.muon_momentum,
        muon_weight_decay=section.muon_weight_decay,
        muon_ns_steps=section.muon_ns_steps,
        muon_adjust_lr=section.muon_adjust_lr,
        adamw_kwargs=adamw.kernel_kwargs(section.implementation, device_type),
    )


_MATRIX_SHAPES: dict[str, list[tuple[int, int]]] = {}


def matrix_shapes(args: ModelArgs) -> list[tuple[int, int]]:
    """Shapes of the matrices Muon updates, all blocks: muon_parameter_names of the model on
    the meta device (whole: options such as value_embeds need their layers), cached per
    architecture (auto sizing evaluates many plans)."""
    key = repr(args)
    if key not in _MATRIX_SHAPES:
        from torchgpt.model.gpt import GPT

        with torch.device("meta"):
            model = GPT(args)
        params = dict(model.named_parameters())
        _MATRIX_SHAPES[key] = [tuple(params[n].shape) for n in muon_parameter_names(model)[0]]
    return _MATRIX_SHAPES[key]


def _state_rows(args: ModelArgs, shard_degree: int, tp: int) -> MemoryRows:
    """One fp32 momentum buffer for the blocks' matrices, AdamW's two moments for the rest
    (tp is always 1: the config refuses Muon with tensor parallelism)."""
    shard = f" / {shard_degree}" if shard_degree > 1 else ""
    n_local = adamw.local_params(args, shard_degree)
    muon_local = math.ceil(sum(r * c for r, c in matrix_shapes(args)) / shard_degree)
    return [
        (f"Muon momentum (fp32){shard}", "optimizer state", 4 * muon_local),
        (
            f"AdamW exp_avg + exp_avg_sq (fp32), non-Muon{shard}",
            "optimizer state",
            8 * (n_local - muon_local),
        ),
    ]


def update_peak(args: ModelArgs, shard_degree: int, sharded: bool) -> int:
    """Temporaries of this optimizer's step for its largest matrix (r x c, one at a time): the
    Nesterov update (fp32, local shard), its all-gathered copy when sharded, then inside torch's
    Newton-Schulz the bf16 iterate twice (old and new) beside the Gram matrix and its update
    (m x m, m = min(r, c)); or, when sharded, after it the bf16 result, its fp32 copy and the
    shard distribute_tensor copies out of it. Matches the tracker's peak of the step exactly
    (tests/unit/test_estimation_memory.py)."""
    peak = 0
    for r, c in matrix_shapes(args):
        n, local = r * c, math.ceil(r / shard_degree) * c
        gathered = 4 * n if sharded else 0
        newton_schulz = 2 * n * 2 + 2 * min(r, c) ** 2 * 2
        after = 2 * n + 4 * n + 4 * local if sharded else 0
        peak = max(peak, 4 * local + gathered + max(newton_schulz, after))
    return peak


def _step_rows(
    args: ModelArgs, shard_degree: int, sharded: bool, section: Any, tp: int
) -> MemoryRows:
    rows = adamw.step_rows(args, shard_degree, sharded, section, tp)
    peak = update_peak(args, shard_degree, sharded)
    return rows + [("Muon update of the largest matrix", "transient", peak)]


SPEC = OptimizerSpec(
    build=_build,
    state_rows=_state_rows,
    step_rows=_step_rows,
    doc="Muon for the blocks' matrices (muon_* keys), AdamW for the rest",
)
