"""Expert mixture in PyTorch without materialising gathered expert rows.

Both sides are ``embedding_bag`` reductions over the ``M = H·k`` selected experts of each token:

* input side ``s[t, j] = down[ids[t, j]] · x[t]``: computed by ATen's per-sample-weights gradient kernel of
  ``embedding_bag`` (a dot product per selected row; no ``(tokens, M, d)`` copy). Its backward is again two
  ``embedding_bag`` reductions: ``grad_x[t] = Σ_j grad_s[t, j]·down[ids[t, j]]`` (a weighted bag) and
  ``grad_down[e] = Σ_{(t,j): ids=e} grad_s[t, j]·x[t]`` (the weight gradient of that same bag for upstream ``x``).
* output side ``y[t] = Σ_j coef[t, j]·up[ids[t, j]]`` with ``coef = gate·act(s)``:
  ``F.embedding_bag(ids, up, per_sample_weights=coef, mode="sum")``, differentiated by PyTorch.

Memory is O(tokens·(M + d)) plus the tables' gradients; never O(tokens·N) nor O(tokens·M·d) on CUDA.
Coefficients are computed in float32 for half-precision inputs (the bags accumulate in float32 on CUDA).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .naive import ACTIVATIONS

_MODE_SUM = 0


def _bag_offsets(tokens: int, per_token: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Offsets (tokens,) and offset2bag (tokens·per_token,) of fixed-size bags."""
    offsets = torch.arange(0, tokens * per_token, per_token, device=device)
    offset2bag = torch.arange(tokens, device=device).repeat_interleave(per_token)
    return offsets, offset2bag


class _SelectedRowDot(torch.autograd.Function):
    """s[t, j] = table[ids[t, j]] · x[t]; x (T, d), ids (T, M) int64, table (N, d) -> s (T, M)."""

    @staticmethod
    def forward(ctx, x, ids, table):
        T, M = ids.shape
        offsets, offset2bag = _bag_offsets(T, M, x.device)
        s = torch.ops.aten._embedding_bag_per_sample_weights_backward(
            x.contiguous(), table, ids.reshape(-1), offsets, offset2bag, _MODE_SUM, -1)
        ctx.save_for_backward(x, ids, table)
        return s.reshape(T, M)

    @staticmethod
    def backward(ctx, grad_s):
        x, ids, table = ctx.saved_tensors
        grad_x = grad_table = None
        with torch.enable_grad():
            leaf = table.detach().requires_grad_(ctx.needs_input_grad[2])
            bag = F.embedding_bag(ids, leaf, per_sample_weights=grad_s.to(table.dtype).contiguous(), mode="sum")
            if ctx.needs_input_grad[2]:
                (grad_table,) = torch.autograd.grad(bag, leaf, grad_outputs=x.to(bag.dtype))
        if ctx.needs_input_grad[0]:
            grad_x = bag.detach().to(x.dtype)
        return grad_x, None, grad_table


def expert_mixture(x: torch.Tensor, ids: torch.Tensor, gates: torch.Tensor, down: torch.Tensor,
                   up: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    """x (..., d), ids/gates (..., H, k), down/up (N, d) -> (..., d) = Σ_h Σ_j gate · act(down[e]·x) · up[e]."""
    d = x.shape[-1]
    xf = x.reshape(-1, d)
    T = xf.shape[0]
    idsf = ids.reshape(T, ids.shape[-2] * ids.shape[-1])
    s = _SelectedRowDot.apply(xf, idsf, down)  # (T, M) in the table dtype
    compute = torch.float32 if up.dtype in (torch.float16, torch.bfloat16) else up.dtype
    coef = gates.reshape(idsf.shape).to(compute) * ACTIVATIONS[activation](s.to(compute))
    y = F.embedding_bag(idsf, up, per_sample_weights=coef.to(up.dtype), mode="sum")
    return y.to(x.dtype).reshape(x.shape)
