"""Normalisation layers."""
from __future__ import annotations

import torch
from torch import nn

from ..ops import rms_norm


class RMSNorm(nn.Module):
    """``y = x / sqrt(mean(x^2) + eps) * weight`` over the last dim, computed in float32 (float64 for float64).

    Same parameter name (``weight``) and arithmetic as HF Llama's ``LlamaRMSNorm``; one fused kernel on CUDA
    (``wm.ops.rms_norm``), which can also add the residual stream first.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """x (..., d) -> y (..., d) in ``promote(weight, x)``; with ``residual`` (..., d): the norm of
        ``s = x + residual`` and ``s`` itself, ``(y, s)``."""
        return rms_norm(x, self.weight, self.eps, residual=residual)
