"""A SwiGLU's product and the linear layer after it as one autograd function whose backward does not need the
product kept (GPU; CPU under ``TRITON_INTERPRET=1``).

Forward: ``p = silu(gate) · up`` (one element-wise kernel, in float32, rounded once to the inputs' dtype), then
``F.linear(p, weight, bias)``. Kept for the backward: ``gate``, ``up`` and the weight — not ``p``, which an MLP
would otherwise keep as the linear's input (AOTAutograd's partitioner keeps it beside ``gate`` and ``up``: one
``(tokens, f)`` tensor per MLP). Backward: ``grad_p = grad_out · weight``, then one kernel reads ``gate``, ``up`` and
``grad_p`` and writes ``grad_gate``, ``grad_up`` and ``p`` again (the same arithmetic as the forward kernel, so the
same bits), from which ``grad_weight = grad_outᵀ · p``. The two kernels are separate operators opaque to
``torch.compile``: a recomputation by the forward's own operator would be merged with the forward's call and its
output kept.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..triton_math import silu, silu_derivative
from ..triton_utils import cdiv, opaque_to_compile, poisoned_empty_like

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK = 1024


@triton.jit
def _product_kernel(g_ptr, u_ptr, p_ptr, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(p_ptr + offs, (silu(g) * u).to(p_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _product_bwd_kernel(g_ptr, u_ptr, dp_ptr, dg_ptr, du_ptr, p_ptr, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dp = tl.load(dp_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    activated = silu(g)
    tl.store(p_ptr + offs, (activated * u).to(p_ptr.dtype.element_ty), mask=mask)  # as the forward kernel
    tl.store(du_ptr + offs, (dp * activated).to(du_ptr.dtype.element_ty), mask=mask)
    tl.store(dg_ptr + offs, (dp * u * silu_derivative(g)).to(dg_ptr.dtype.element_ty), mask=mask)


def _product_fake(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(gate)


@opaque_to_compile("gated_product_forward", _product_fake)
def gated_product_forward(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gate, up (..., f) contiguous, one dtype -> ``silu(gate) · up`` (..., f)."""
    p = poisoned_empty_like(gate)
    n = gate.numel()
    if n:
        _product_kernel[(cdiv(n, BLOCK),)](gate, up, p, n, BLOCK=BLOCK)
    return p


def _product_backward_fake(gate: torch.Tensor, up: torch.Tensor,
                           grad_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.empty_like(gate), torch.empty_like(up), torch.empty_like(gate)


@opaque_to_compile("gated_product_backward", _product_backward_fake)
def gated_product_backward(gate: torch.Tensor, up: torch.Tensor,
                           grad_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """gate, up, grad_p (..., f) contiguous, one dtype -> (grad_gate, grad_up, the product ``silu(gate) · up``)."""
    grad_gate, grad_up, p = poisoned_empty_like(gate), poisoned_empty_like(up), poisoned_empty_like(gate)
    n = gate.numel()
    if n:
        _product_bwd_kernel[(cdiv(n, BLOCK),)](gate, up, grad_p, grad_gate, grad_up, p, n, BLOCK=BLOCK)
    return grad_gate, grad_up, p


class GatedLinearFunction(torch.autograd.Function):
    """(gate (T, f), up (T, f) contiguous in one dtype, weight (o, f), bias (o,) | None) -> (T, o): ``F.linear`` of
    ``silu(gate) · up`` with the weight and bias cast to the product's dtype (as autocast casts them); the product
    is written again by the backward kernel rather than kept."""

    @staticmethod
    def forward(ctx, gate, up, weight, bias):
        p = gated_product_forward(gate, up)
        out = F.linear(p, weight.to(p.dtype), None if bias is None else bias.to(p.dtype))
        ctx.save_for_backward(gate, up, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        gate, up, weight = ctx.saved_tensors
        grad_out = grad_out.to(gate.dtype)
        grad_p = grad_out @ weight.to(gate.dtype)
        grad_gate, grad_up, p = gated_product_backward(gate, up, grad_p)
        grad_weight = (grad_out.t() @ p).to(weight.dtype)
        grad_bias = None if ctx.bias_dtype is None else grad_out.sum(0).to(ctx.bias_dtype)
        return grad_gate, grad_up, grad_weight, grad_bias


def gated_linear_triton(gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor | None) -> torch.Tensor:
    """:class:`GatedLinearFunction` on tensors of any leading shape: gate, up (..., f) -> (..., o)."""
    f = gate.shape[-1]
    out = GatedLinearFunction.apply(gate.reshape(-1, f).contiguous(), up.reshape(-1, f).contiguous(), weight, bias)
    return out.view(*gate.shape[:-1], weight.shape[0])
