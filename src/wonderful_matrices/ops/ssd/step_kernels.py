"""The SSD decoding step of the Cheems SSD layer as one Triton launch, between ``in_proj`` and the gated norm.

From one row of the input projection ``[z, x, B, C, dt]`` (``(b, width)``, the activation dtype) a program of
(batch row, head, block of head channels) computes, in float32:

* ``x, B, C = silu(·)`` (rounded to the activation dtype, as the layer's torch path rounds them),
* ``dt = clamp(softplus(dt + dt_bias), dt_limit)``, ``A = −exp(A_log)``,
* the rotation of ``B`` and ``C`` (rotate-half pairs ``(r, r + n/2)``): ``"fixed"`` by ``position · inv_freq[r]``,
  ``"data"`` by ``φ[h, r] = φ_prev[h, r] + dt[h] · π · tanh(w_r · u)`` (``rate = w · u`` is given, ``φ_prev`` is
  read from and ``φ mod 2π`` written back to the running-angle tensor), ``"none"`` not at all,
* the recurrence ``S ← exp(dt·A)·S + dt·x ⊗ B`` written in place into the float32 state and
  ``y = S·C + D·x`` written in the activation dtype.

No host synchronisation and no allocation but the output: the launch can be recorded in a CUDA graph. The oracle
is the layer's torch path (``SSDMixer`` with ``backend="torch"``; ``tests/ops/test_ssd_decode_triton.py``).
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from ..triton_math import silu
from ..triton_utils import cdiv, poisoned_empty, pow2_at_least

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ROPE_CODES = {"none": 0, "fixed": 1, "data": 2}
TARGET_PROGRAMS = 256  # programs of one launch: enough to spread a batch-1 step over the SMs
BLOCK_P = 16  # head channels per inner step
TWO_PI = float(2 * math.pi)


@triton.jit
def _log1p(e):
    """log(1 + e) for e >= 0, accurate for small e (Kahan: the rounding of 1 + e cancels)."""
    u = 1.0 + e
    return tl.where(u == 1.0, e, tl.log(u) * e / (u - 1.0))


@triton.jit
def _tanh(v):
    """tanh(v) to a few ulps, also near 0: −expm1(−2|v|) / (2 + expm1(−2|v|)) with Kahan's expm1."""
    a = -2.0 * tl.abs(v)
    e = tl.exp(a)
    em1 = tl.where(e == 1.0, a, tl.where(e - 1.0 == -1.0, -1.0, (e - 1.0) * a / tl.log(e)))
    t = -em1 / (2.0 + em1)
    return tl.where(v < 0, -t, t)


@triton.jit
def _silu(v, ACT_TY: tl.constexpr):
    return silu(v.to(tl.float32)).to(ACT_TY).to(tl.float32)


@triton.jit
def _decode_step_kernel(proj_ptr, state_ptr, y_ptr, dt_bias_ptr, a_log_ptr, d_ptr, pos_ptr, inv_freq_ptr,
                        rate_ptr, angle_ptr, s_proj, s_pos, s_rate,
                        x_off, b_off, c_off, dt_off, H, P, heads_per_group, rows_per_program,
                        dt_lo, dt_hi, two_pi,
                        N: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
                        ROPE: tl.constexpr, HAS_D: tl.constexpr):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    bi = (pid // H).to(tl.int64)
    hh = pid % H
    gi = hh // heads_per_group
    ACT_TY: tl.constexpr = proj_ptr.dtype.element_ty
    row = proj_ptr + bi * s_proj
    r = tl.arange(0, BLOCK_H)
    m1 = r < HALF
    m2 = r < N - HALF

    v = tl.load(row + dt_off + hh).to(tl.float32) + tl.load(dt_bias_ptr + hh).to(tl.float32)
    dt = tl.where(v > 20.0, v, tl.maximum(v, 0.0) + _log1p(tl.exp(-tl.abs(v))))  # softplus, threshold 20
    dt = tl.minimum(tl.maximum(dt, dt_lo), dt_hi)
    decay = tl.exp(dt * -tl.exp(tl.load(a_log_ptr + hh).to(tl.float32)))

    b1 = _silu(tl.load(row + b_off + gi * N + r, mask=m1, other=0.0), ACT_TY)
    b2 = _silu(tl.load(row + b_off + gi * N + HALF + r, mask=m2, other=0.0), ACT_TY)
    c1 = _silu(tl.load(row + c_off + gi * N + r, mask=m1, other=0.0), ACT_TY)
    c2 = _silu(tl.load(row + c_off + gi * N + HALF + r, mask=m2, other=0.0), ACT_TY)
    if ROPE != 0:
        if ROPE == 1:
            pos = tl.load(pos_ptr + bi * s_pos).to(tl.float32)
            angle = pos * tl.load(inv_freq_ptr + r, mask=m1, other=0.0)
        else:
            rate = 3.141592653589793 * _tanh(tl.load(rate_ptr + bi * s_rate + r, mask=m1, other=0.0).to(tl.float32))
            angle_at = angle_ptr + (bi * H + hh) * HALF + r
            angle = dt * rate + tl.load(angle_at, mask=m1, other=0.0)
            if split == 0:  # the only program of this head (one split per head with ROPE == 2)
                tl.store(angle_at, angle - two_pi * tl.floor(angle / two_pi), mask=m1)
        cos = tl.cos(angle)
        sin = tl.sin(angle)
        b1, b2 = (b1 * cos - b2 * sin).to(ACT_TY).to(tl.float32), (b2 * cos + b1 * sin).to(ACT_TY).to(tl.float32)
        c1, c2 = (c1 * cos - c2 * sin).to(ACT_TY).to(tl.float32), (c2 * cos + c1 * sin).to(ACT_TY).to(tl.float32)

    if HAS_D:
        d_skip = tl.load(d_ptr + hh).to(tl.float32)
    start = split * rows_per_program
    stop = tl.minimum(start + rows_per_program, P)
    for p0 in range(start, stop, BLOCK_P):
        pp = p0 + tl.arange(0, BLOCK_P)
        pm = pp < stop
        x = _silu(tl.load(row + x_off + hh * P + pp, mask=pm, other=0.0), ACT_TY)
        state_at = state_ptr + ((bi * H + hh) * P + pp)[:, None] * N + r[None, :]
        s1 = tl.load(state_at, mask=pm[:, None] & m1[None, :], other=0.0)
        s2 = tl.load(state_at + HALF, mask=pm[:, None] & m2[None, :], other=0.0)
        dx = (dt * x)[:, None]
        s1 = decay * s1 + dx * b1[None, :]
        s2 = decay * s2 + dx * b2[None, :]
        tl.store(state_at, s1, mask=pm[:, None] & m1[None, :])
        tl.store(state_at + HALF, s2, mask=pm[:, None] & m2[None, :])
        y = tl.sum(s1 * c1[None, :], 1) + tl.sum(s2 * c2[None, :], 1)
        if HAS_D:
            y = y + d_skip * x
        tl.store(y_ptr + bi * H * P + hh * P + pp, y.to(y_ptr.dtype.element_ty), mask=pm)


def decode_step(proj: torch.Tensor, state: torch.Tensor, dt_bias: torch.Tensor, A_log: torch.Tensor,
                D: torch.Tensor | None, num_heads: int, head_dim: int, num_groups: int, state_size: int,
                dt_limit: tuple[float, float], rope: str, position: torch.Tensor | None = None,
                inv_freq: torch.Tensor | None = None, rate: torch.Tensor | None = None,
                angle: torch.Tensor | None = None) -> torch.Tensor:
    """One SSD token from the input projection (see the module docstring).

    Args:
        proj: ``(b, width)`` the ``in_proj`` output ``[z (h·p), x (h·p), B (g·n), C (g·n), dt (h)]`` of one token
            (last dim contiguous), float32/bf16/fp16.
        state: ``(b, h, p, n)`` float32, contiguous: updated in place.
        dt_bias, A_log: ``(h,)``; D: ``(h,)`` or None.
        num_heads, head_dim, num_groups, state_size: ``h, p, g, n``.
        dt_limit: ``(low, high)`` clamp of ``dt`` after softplus.
        rope: ``"fixed"`` (needs ``position (b,)`` integer and ``inv_freq (n/2,)`` float32), ``"data"`` (needs
            ``rate (b, n/2)`` = the angle projection of the layer input and ``angle (b, h, n/2)`` float32
            contiguous, updated in place) or ``"none"``.

    Returns:
        ``y (b, h·p)`` in ``proj``'s dtype.
    """
    b = proj.shape[0]
    h, p, g, n = num_heads, head_dim, num_groups, state_size
    code = ROPE_CODES[rope]
    grid, rows, offsets, half, block_h = _launch_plan(b, h, p, g, n, code)
    y = poisoned_empty(b, h * p, dtype=proj.dtype, device=proj.device)
    # the kernel indexes these by head / frequency with unit stride (no-ops for the layer's own parameters)
    dt_bias, A_log = dt_bias.contiguous(), A_log.contiguous()
    D = D.contiguous() if D is not None else None
    inv_freq = inv_freq.contiguous() if inv_freq is not None else None
    rate = rate if rate is None or rate.stride(-1) == 1 else rate.contiguous()
    dummy = state  # a pointer for the arguments a rope mode does not read
    _decode_step_kernel.run(  # (decoding path: launch convention of ops/triton_utils.py)
        proj, state, y, dt_bias, A_log, D if D is not None else dummy,
        position if position is not None else dummy, inv_freq if inv_freq is not None else dummy,
        rate if rate is not None else dummy, angle if angle is not None else dummy,
        proj.stride(0), position.stride(0) if position is not None else 0, rate.stride(0) if rate is not None else 0,
        *offsets, h, p, h // g, rows, float(dt_limit[0]), float(dt_limit[1]), TWO_PI,
        grid=grid, warmup=False, N=n, HALF=half, BLOCK_H=block_h, BLOCK_P=BLOCK_P, ROPE=code, HAS_D=D is not None,
        num_warps=4)
    return y


@functools.lru_cache(maxsize=None)
def _launch_plan(b: int, h: int, p: int, g: int, n: int, code: int) -> tuple:
    """``(grid, rows per program, offsets of x, B, C and dt in a projection row, HALF, BLOCK_H)`` of a step of ``b``
    rows: remembered per shape (every step of a generation asks for the same)."""
    inner = h * p
    half = (n + 1) // 2
    blocks = cdiv(p, BLOCK_P)
    splits = 1 if code == 2 else max(1, min(blocks, TARGET_PROGRAMS // max(1, b * h)))
    rows = cdiv(blocks, splits) * BLOCK_P
    offsets = (inner, 2 * inner, 2 * inner + g * n, 2 * inner + 2 * g * n)
    return (b * h, cdiv(p, rows)), rows, offsets, half, max(2, pow2_at_least(half))
