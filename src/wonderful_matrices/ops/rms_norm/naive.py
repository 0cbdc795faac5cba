"""The oracle of ``rms_norm``: the formula in plain PyTorch (also the ``"torch"`` backend: autograd differentiates it)."""
from __future__ import annotations

import torch


def rms_norm_naive(x: torch.Tensor, weight: torch.Tensor, eps: float,
                   residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``s = x (+ residual)``; ``y = weight · (s / sqrt(mean(s²) + eps))`` over the last dim.

    x, residual (..., d), weight (d,) -> (y, s). ``s`` is stored in ``promote(x, residual)``; the norm is computed
    in float32 (float64 for float64 ``s``), rounded to ``s``'s dtype and multiplied by ``weight``, so ``y`` has
    ``promote(weight, s)`` dtype — the arithmetic of HF Llama's ``LlamaRMSNorm``.
    """
    s = x if residual is None else x + residual
    acc = torch.float64 if s.dtype == torch.float64 else torch.float32
    sf = s.to(acc)
    normed = sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(s.dtype), s
