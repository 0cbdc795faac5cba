"""A gated MLP's second half: ``F.linear(act(gate) · up, weight, bias)``, with the product not kept for the backward
on the Triton path (see ``fused_kernels.py``)."""
from __future__ import annotations

import torch

from ..common import autocast_dtype, check_linear, needs_backward, require, resolve_backend, shape_of
from ..expert_mixture.naive import ACTIVATIONS
from .naive import gated_linear_naive

try:  # triton is optional: without it the package still imports and the backend is not offered
    from . import fused_kernels as _triton_backend
except ImportError:
    _triton_backend = None

BACKENDS = ("naive", "torch") + (("triton",) if _triton_backend is not None else ())
AUTO_ORDER = ("triton", "torch")


def gated_linear(gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 activation: str = "silu", backend: str = "auto") -> torch.Tensor:
    """``F.linear(act(gate) · up, weight, bias)`` — the down projection of a gated MLP (SwiGLU for ``"silu"``).

    Args:
        gate, up: ``(..., f)``, the gate and up projections' outputs.
        weight: ``(o, f)``; bias: ``(o,)`` or None.
        activation: ``"silu"``, ``"gelu"`` or ``"relu"``.
        backend: ``"auto"`` (``"triton"`` on CUDA, else ``"torch"``), ``"torch"`` / ``"naive"`` (the formula,
            autograd) or ``"triton"``: under autograd, for ``"silu"`` with ``gate`` and ``up`` of one dtype
            (float32 / bfloat16 / float16) that ``F.linear`` would compute in (the autocast dtype under autocast,
            else the weight's), one autograd function that keeps ``gate`` and ``up`` but not the product (its
            backward kernel writes it again); other calls (and ``f = 0``) run the formula.

    Returns:
        ``(..., o)``, as ``F.linear`` gives it.
    """
    require(isinstance(gate, torch.Tensor) and isinstance(up, torch.Tensor) and gate.shape == up.shape
            and gate.dim() >= 1, "up.shape", shape_of(up) if isinstance(up, torch.Tensor) else type(up).__name__,
            f"equal to gate.shape {shape_of(gate) if isinstance(gate, torch.Tensor) else gate}")
    check_linear(weight, bias, gate.shape[-1], "weight", "bias", "gate's last dim")
    require(activation in ACTIVATIONS, "activation", activation, f"one of {sorted(ACTIVATIONS)}")
    name = resolve_backend(backend, BACKENDS, gate.device, AUTO_ORDER)
    if name == "triton" and activation == "silu" and needs_backward(gate, up, weight, bias):
        linear_dtype = autocast_dtype(gate.device) or weight.dtype  # what F.linear computes in
        if gate.dtype == up.dtype == linear_dtype and gate.dtype in _triton_backend.DTYPES and gate.shape[-1]:
            return _triton_backend.gated_linear_triton(gate, up, weight, bias)
    return gated_linear_naive(gate, up, weight, bias, activation)


__all__ = ["gated_linear"]
