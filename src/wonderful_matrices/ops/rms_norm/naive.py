"""The oracle of ``rms_norm``: the formula in plain PyTorch (also the ``"torch"`` backend: autograd
differentiates it)."""
from __future__ import annotations

import torch


def rms_norm_naive(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
                   out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``s = x (+ residual)``; ``y = weight · (s / sqrt(mean(s²) + eps))`` over the last dim.

    x, residual (..., d), weight (d,) -> (y, s). ``s`` is stored in ``promote(x, residual)``; the norm is computed
    in float32 (float64 for float64 ``s``), rounded to ``s``'s dtype and multiplied by ``weight``, so ``y`` has
    ``promote(weight, s)`` dtype — the arithmetic of HF Llama's ``LlamaRMSNorm`` — or ``out_dtype``, the product
    rounded once to it.
    """
    s = x if residual is None else x + residual
    acc = torch.float64 if s.dtype == torch.float64 else torch.float32
    sf = s.to(acc)
    normed = sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + eps)
    return _scaled(weight, normed.to(s.dtype), out_dtype), s


def gated_rms_norm_naive(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float,
                         num_groups: int = 1, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``weight · rmsnorm(x · silu(gate))`` with the mean square taken over ``num_groups`` equal groups of channels
    (Mamba2's gated norm).

    x, gate (..., d), weight (d,) -> (..., d) in ``promote(weight, x)`` or ``out_dtype`` (the product rounded once
    to it). ``x · silu(gate)`` and its norm are computed in float32 (float64 for float64 ``x``); the normalised
    value is rounded to ``x``'s dtype before the weight.
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    h = x.to(acc) * torch.nn.functional.silu(gate.to(acc))
    grouped = h.unflatten(-1, (num_groups, -1))
    grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)
    return _scaled(weight, grouped.flatten(-2).to(x.dtype), out_dtype)


def _scaled(weight: torch.Tensor, normed: torch.Tensor, out_dtype: torch.dtype | None) -> torch.Tensor:
    """``weight · normed`` in ``promote(weight, normed)``, or rounded once to ``out_dtype``: the product is taken
    in a dtype that holds it exactly enough (``promote`` with float32; a product of two half values is exact in
    float32), as the kernels take it in float32."""
    if out_dtype is None:
        return weight * normed
    wide = torch.promote_types(torch.promote_types(weight.dtype, normed.dtype), torch.float32)
    return (weight.to(wide) * normed.to(wide)).to(out_dtype)
