"""The oracle of ``gated_linear``: the formula in plain PyTorch (also the ``"torch"`` backend: autograd
differentiates it)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..expert_mixture.naive import ACTIVATIONS


def gated_linear_naive(gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                       activation: str = "silu") -> torch.Tensor:
    """``F.linear(act(gate) · up, weight, bias)``: gate, up (..., f), weight (o, f), bias (o,) or None -> (..., o)."""
    return F.linear(ACTIVATIONS[activation](gate) * up, weight, bias)
