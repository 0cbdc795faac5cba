"""Rotary position embedding shared by attention (on Q, K) and SSD (on C, B).

Rotate-half convention: for ``x = [x1, x2]`` (two halves of the rotary dim),
``rope(x) = x * cos + [-x2, x1] * sin`` with angles ``position * theta^(-2i/dim)``.
Angles depend only on the position, so ``rope(q)_t · rope(k)_s`` is a function of ``t - s``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops.triton_utils import opaque_to_compile  # torch only: no Triton needed


def rotary_frequencies(dim: int, theta: float, dtype: torch.dtype, device: torch.device | None = None
                       ) -> torch.Tensor:
    """The ``dim/2`` frequencies ``theta^(-2i/dim)``, computed in float64 and rounded to ``dtype``."""
    exponents = torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim
    return (1.0 / theta ** exponents).to(dtype)


def _tables_fake(position_ids: torch.Tensor, dim: int, theta: float, dtype: torch.dtype):
    shape = (*position_ids.shape, dim)
    return position_ids.new_empty(shape, dtype=dtype), position_ids.new_empty(shape, dtype=dtype)


# Opaque to torch.compile: its outputs are buffers that every layer reads, and AOTAutograd saves them for the
# backward instead of recomputing them (a cheap-looking pointwise chain from ``position_ids``, which Inductor would
# otherwise fold into every layer's rotation kernel, forward and backward, computing pow/cos/sin per head).
@opaque_to_compile("rotary_tables", _tables_fake)
def rotary_tables(position_ids: torch.Tensor, dim: int, theta: float, dtype: torch.dtype
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """position_ids (b, l) integer -> (cos, sin), each (b, l, dim) in ``dtype``, of the angles
    ``position * theta^(-2i/dim)`` (rotate-half layout: the ``dim/2`` angles twice)."""
    # the frequencies are recomputed in float64 on each call (dim/2 numbers): no buffer that `model.to(bf16)` could
    # round
    angles = position_ids.to(dtype)[..., None] * rotary_frequencies(dim, theta, dtype, position_ids.device)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


class RotaryEmbedding(nn.Module):
    """Cos/sin tables for positions given by ``position_ids``.

    Args:
        dim: rotary dimension (even); applied to the first ``dim`` channels of each head.
        theta: base of the frequencies ``theta^(-2i/dim)``.

    A model builds the tables once per forward for all its layers of one ``(dim, theta)`` (:class:`RotaryTables`);
    a layer called alone builds its own.
    """

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        if dim <= 0 or dim % 2:
            raise ValueError(f"dim={dim!r} is not allowed: the rotary dimension must be a positive even number")
        if theta <= 0:
            raise ValueError(f"theta={theta!r} is not allowed: must be > 0")
        self.dim = dim
        self.theta = float(theta)
        self.frequency_memo: dict[torch.device, torch.Tensor] = {}

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["frequency_memo"] = {}
        return state

    def frequencies(self, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
        """The ``dim/2`` frequencies ``theta^(-2i/dim)``, computed in float64 and rounded to ``dtype``."""
        return rotary_frequencies(self.dim, self.theta, dtype, device)

    def float32_frequencies(self, device: torch.device) -> torch.Tensor:
        """:meth:`frequencies` in float32 on ``device``, computed once per device (the table a fused kernel
        indexes by position instead of building cos/sin tables each step). While torch.compile traces it is
        computed in the graph; while a CUDA graph is captured the table computed before is read (a fixed address
        the memo keeps alive), and none is stored (the capture's memory belongs to the graph)."""
        if torch.compiler.is_compiling():
            return self.frequencies(torch.float32, device)
        table = self.frequency_memo.get(device)
        if table is None:
            table = self.frequencies(torch.float32, device)
            if not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
                self.frequency_memo[device] = table
        return table

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype = torch.float32
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (b, l) integer -> (cos, sin), each (b, l, dim) float32 (float64 if ``dtype`` says so)."""
        return rotary_tables(position_ids, self.dim, self.theta, dtype)


class RotaryTables:
    """The cos/sin tables of one forward call: built on the first request for each ``(dim, theta, dtype)``, then
    handed to every layer that asks for the same.

    A model creates one per forward from its ``position_ids`` (b, l) and passes it to every layer, so the tables
    are computed once per forward, not once per layer — also under torch.compile, where each layer building its
    own would put the transcendental math into every layer's rotation kernel. Lazy, so a forward whose layers all
    take fused decoding kernels (which index :meth:`RotaryEmbedding.float32_frequencies` by position) builds none.
    Lives as long as the forward; nothing is kept across calls.

    ``tables(rotary, dtype) -> (cos, sin)``, each (b, l, rotary.dim) in ``dtype``, as ``rotary(position_ids, dtype)``.
    """

    def __init__(self, position_ids: torch.Tensor):
        self.position_ids = position_ids
        self.built: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, rotary: RotaryEmbedding, dtype: torch.dtype = torch.float32
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        key = (rotary.dim, rotary.theta, dtype)
        tables = self.built.get(key)
        if tables is None:
            tables = self.built[key] = rotary(self.position_ids, dtype)
        return tables


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
