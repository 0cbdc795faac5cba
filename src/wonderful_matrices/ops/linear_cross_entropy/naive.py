"""The oracle of ``linear_cross_entropy``: the whole logits matrix, then ``F.cross_entropy``."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_cross_entropy_naive(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """hidden (n, d), weight (V, d), targets (n,) -> scalar ``cross_entropy(hidden @ weight.T, targets)`` with the
    logits taken to float32 (float64 stays float64) before the softmax."""
    logits = hidden @ weight.T
    if logits.dtype != torch.float64:
        logits = logits.float()
    return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)
