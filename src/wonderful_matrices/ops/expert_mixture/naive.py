"""Oracle for the expert mixture: plain loops over tokens, heads and selected experts."""
from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}


def expert_mixture(x: torch.Tensor, ids: torch.Tensor, gates: torch.Tensor, down: torch.Tensor,
                   up: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    """x (..., d), ids/gates (..., H, k), down/up (N, d) -> (..., d) = Σ_h Σ_j gate · act(down[e]·x) · up[e]."""
    act = ACTIVATIONS[activation]
    d = x.shape[-1]
    xf = x.reshape(-1, d)
    idsf = ids.reshape(xf.shape[0], -1)
    gf = gates.reshape(xf.shape[0], -1)
    rows = []
    for t in range(xf.shape[0]):
        row = torch.zeros(d, dtype=torch.promote_types(x.dtype, gates.dtype), device=x.device)
        for j in range(idsf.shape[1]):
            e = int(idsf[t, j])
            row = row + gf[t, j] * act(torch.dot(down[e], xf[t])) * up[e]
        rows.append(row)
    out = torch.stack(rows) if rows else xf.new_zeros(0, d)
    return out.to(x.dtype).reshape(x.shape)
