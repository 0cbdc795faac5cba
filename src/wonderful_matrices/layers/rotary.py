"""Rotary position embedding shared by attention (on Q, K) and SSD (on C, B).

Rotate-half convention: for ``x = [x1, x2]`` (two halves of the rotary dim),
``rope(x) = x * cos + [-x2, x1] * sin`` with angles ``position * theta^(-2i/dim)``.
Angles depend only on the position, so ``rope(q)_t · rope(k)_s`` is a function of ``t - s``.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn


def _memo_allowed(position_ids: torch.Tensor) -> bool:
    """No memo while torch.compile traces or a CUDA graph is captured (their tensors must not leak out)."""
    if torch.compiler.is_compiling():
        return False
    return not (position_ids.is_cuda and torch.cuda.is_current_stream_capturing())


class RotaryEmbedding(nn.Module):
    """Cos/sin tables for positions given by ``position_ids``.

    Args:
        dim: rotary dimension (even); applied to the first ``dim`` channels of each head.
        theta: base of the frequencies ``theta^(-2i/dim)``.

    ``memo`` holds the last tables per (dtype, inference mode), valid only for the same live ``position_ids``
    tensor at the same version (no in-place change since) and dropped when that tensor is freed. A model gives
    all its layers of one ``(dim, theta)`` the same instance (:func:`share_rotary`) and the same ``position_ids``
    tensor in one forward, so the tables are computed once per forward instead of once per layer (each
    computation is ~10 kernel launches, which dominate a one-token decoding step). Copies and pickles of the
    module start with an empty memo.
    """

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        if dim <= 0 or dim % 2:
            raise ValueError(f"dim={dim!r} is not allowed: the rotary dimension must be a positive even number")
        if theta <= 0:
            raise ValueError(f"theta={theta!r} is not allowed: must be > 0")
        self.dim = dim
        self.theta = float(theta)
        self.memo: dict[tuple, tuple] = {}
        self.frequency_memo: dict[torch.device, torch.Tensor] = {}

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["memo"] = {}
        state["frequency_memo"] = {}
        return state

    def frequencies(self, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
        """The ``dim/2`` frequencies ``theta^(-2i/dim)``, computed in float64 and rounded to ``dtype``."""
        exponents = torch.arange(0, self.dim, 2, dtype=torch.float64, device=device) / self.dim
        return (1.0 / self.theta ** exponents).to(dtype)

    def float32_frequencies(self, device: torch.device) -> torch.Tensor:
        """:meth:`frequencies` in float32 on ``device``, computed once per device (the table a fused kernel
        indexes by position instead of building cos/sin tables each step); not memoised while a CUDA graph is
        captured or torch.compile traces."""
        if torch.compiler.is_compiling() or (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            return self.frequencies(torch.float32, device)
        table = self.frequency_memo.get(device)
        if table is None:
            table = self.frequency_memo[device] = self.frequencies(torch.float32, device)
        return table

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype = torch.float32
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (b, l) integer -> (cos, sin), each (b, l, dim) float32 (float64 if ``dtype`` says so).

        Repeated calls with the same, unchanged ``position_ids`` tensor return the same tables (computed once)."""
        if not _memo_allowed(position_ids):
            return self._tables(position_ids, dtype)
        memo = self.memo
        key = (dtype, torch.is_inference_mode_enabled())  # inference tensors stay apart
        hit = memo.get(key)
        if hit is not None and hit[0]() is position_ids and hit[1] == position_ids._version:
            return hit[2], hit[3]
        cos, sin = self._tables(position_ids, dtype)

        def drop(ref, key=key):
            if memo.get(key, (None,))[0] is ref:
                del memo[key]
        memo[key] = (weakref.ref(position_ids, drop), position_ids._version, cos, sin)
        return cos, sin

    def _tables(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # Frequencies are recomputed in float64 on each call (dim/2 numbers): no buffer that `model.to(bf16)` could
        # round.
        inv_freq = self.frequencies(dtype, position_ids.device)
        angles = position_ids.to(dtype)[..., None] * inv_freq
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()


def share_rotary(module: nn.Module) -> None:
    """Make every :class:`RotaryEmbedding` inside ``module`` with the same ``(dim, theta)`` one instance (the
    first one found), so layers that get the same ``position_ids`` share its memo."""
    shared: dict[tuple, RotaryEmbedding] = {}
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, RotaryEmbedding):
                setattr(parent, name, shared.setdefault((child.dim, child.theta), child))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x (b, l, h, d)`` by ``cos, sin (b, l, r)`` with ``r <= d`` (the first ``r`` channels rotate).

    Computed in float32 (float64 for float64 inputs), returned in ``x.dtype``.
    """
    r = cos.shape[-1]
    if r > x.shape[-1]:
        raise ValueError(f"cos.shape[-1]={r} is not allowed: the rotary dim must be <= the head dim {x.shape[-1]}")
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    cos = cos[:, :, None, :].to(compute)
    sin = sin[:, :, None, :].to(compute)
    xf = x.to(compute)
    rot, rest = xf[..., :r], xf[..., r:]
    rot = rot * cos + rotate_half(rot) * sin
    return torch.cat([rot, rest], dim=-1).to(x.dtype) if rest.shape[-1] else rot.to(x.dtype)
