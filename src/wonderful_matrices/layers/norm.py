"""Normalisation layers."""
from __future__ import annotations

import torch
from torch import nn

from ..ops import rms_norm


class RMSNorm(nn.Module):
    """``y = x / sqrt(mean(x^2) + eps) * weight`` over the last dim, computed in float32 (float64 for float64).

    Same parameter name (``weight``) and arithmetic as HF Llama's ``LlamaRMSNorm``; one fused kernel on CUDA
    (``wm.ops.rms_norm``), which can also add the residual stream first.

    Args:
        hidden_size: channels ``d``.
        eps: added to the mean square.
        backend: of :func:`~wonderful_matrices.ops.rms_norm`: ``"auto"`` (the Triton kernel on CUDA), ``"torch"``
            or ``"triton"``.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6, backend: str = "auto"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps
        self.backend = backend

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, out_dtype: torch.dtype | None = None):
        """x (..., d) -> y (..., d) in ``promote(weight, x)`` (or ``out_dtype``); with ``residual`` (..., d): the
        norm of ``s = x + residual`` and ``s`` itself, ``(y, s)``."""
        return rms_norm(x, self.weight, self.eps, residual=residual, backend=self.backend, out_dtype=out_dtype)
