"""Rotary position embedding shared by attention (on Q, K) and SSD (on C, B).

Rotate-half convention: for ``x = [x1, x2]`` (two halves of the rotary dim),
``rope(x) = x * cos + [-x2, x1] * sin`` with angles ``position * theta^(-2i/dim)``.
Angles depend only on the position, so ``rope(q)_t · rope(k)_s`` is a function of ``t - s``.
"""
from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Cos/sin tables for positions given by ``position_ids``.

    Args:
        dim: rotary dimension (even); applied to the first ``dim`` channels of each head.
        theta: base of the frequencies ``theta^(-2i/dim)``.
    """

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        if dim <= 0 or dim % 2:
            raise ValueError(f"dim={dim!r} is not allowed: the rotary dimension must be a positive even number")
        if theta <= 0:
            raise ValueError(f"theta={theta!r} is not allowed: must be > 0")
        self.dim = dim
        self.theta = float(theta)
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (b, l) integer -> (cos, sin), each (b, l, dim) float32."""
        angles = position_ids.to(torch.float32)[..., None] * self.inv_freq.to(position_ids.device)
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x (b, l, h, d)`` by ``cos, sin (b, l, r)`` with ``r <= d`` (the first ``r`` channels rotate).

    Computed in float32, returned in ``x.dtype``.
    """
    r = cos.shape[-1]
    if r > x.shape[-1]:
        raise ValueError(f"cos.shape[-1]={r} is not allowed: the rotary dim must be <= the head dim {x.shape[-1]}")
    cos = cos[:, :, None, :]
    sin = sin[:, :, None, :]
    xf = x.float()
    rot, rest = xf[..., :r], xf[..., r:]
    rot = rot * cos + rotate_half(rot) * sin
    return torch.cat([rot, rest], dim=-1).to(x.dtype) if rest.shape[-1] else rot.to(x.dtype)
