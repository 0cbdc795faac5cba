"""RMSNorm (+ residual add) and the gated RMSNorm, one Triton kernel forward and one backward each (GPU; CPU
under ``TRITON_INTERPRET=1``).

Forward: each program normalises ``BLOCK_M`` rows of ``d <= BLOCK_D`` columns held in registers: it reads ``x``
(and ``residual``) once, writes the sum ``s`` (when a residual is given), ``y`` and the per-row ``1/rms`` that the
backward reuses. Backward: a fixed number of programs (a few per SM) each walk a contiguous run of rows, write
``ds = rstd·(g − x̂·mean(g·x̂)) + grad_s`` (``g = grad_y·weight``, ``x̂ = s·rstd``) into ``grad_x`` (and
``grad_residual``) and keep their share of ``grad_weight = Σ_rows grad_y·x̂`` in float32 registers, written once
per program and summed by one ``sum``: no atomics, deterministic. The arithmetic and roundings are those of
``naive.rms_norm_naive`` (``s`` rounded to its dtype, ``x̂`` rounded to ``s``'s dtype before the weight).

The gated norm (Mamba2's ``weight · rmsnorm(x · silu(z))`` per group of ``Dg`` channels) works the same way on
rows that are groups: it reads ``x`` and ``z`` once, writes ``y`` and ``1/rms``; the backward recomputes
``x · silu(z)`` from them and writes ``grad_x`` and ``grad_z``. Its weight gradient keeps one float32 accumulator
per row slot of a block, whose group is fixed because blocks start at multiples of the group count.
Outputs are NaN-poisoned under the interpreter, so an unwritten element fails the tests.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..triton_math import silu, silu_derivative
from ..triton_utils import cdiv, interpreting, opaque_to_compile, poisoned_empty, poisoned_empty_like, pow2_at_least

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_DIM = 16384  # a row lives in registers


@triton.jit
def _rms_norm_fwd_kernel(x_ptr, res_ptr, w_ptr, s_ptr, y_ptr, rstd_ptr, M, D, eps,
                         HAS_RESIDUAL: tl.constexpr, STORE_RSTD: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < M) & (cols[None, :] < D)
    offs = rows[:, None].to(tl.int64) * D + cols[None, :]
    s = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        s = s + tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        s_stored = s.to(s_ptr.dtype.element_ty)
        tl.store(s_ptr + offs, s_stored, mask=mask)
        s = s_stored.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(s * s, axis=1) / D + eps)
    if STORE_RSTD:
        tl.store(rstd_ptr + rows, rstd, mask=rows < M)
    normed = (s * rstd[:, None]).to(s_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, (normed * w[None, :]).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_bwd_kernel(s_ptr, w_ptr, rstd_ptr, dy_ptr, ds_in_ptr, dx_ptr, dres_ptr, dw_ptr, M, D,
                         ROWS_PER_PROGRAM, HAS_DS: tl.constexpr, HAS_DRES: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    w = tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_D,), dtype=tl.float32)
    start = pid * ROWS_PER_PROGRAM
    end = tl.minimum(start + ROWS_PER_PROGRAM, M)
    for row0 in range(start, end, BLOCK_M):
        rows = row0 + tl.arange(0, BLOCK_M)
        row_ok = rows < end
        mask = row_ok[:, None] & (cols[None, :] < D)
        offs = rows[:, None].to(tl.int64) * D + cols[None, :]
        s = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
        normed = s * rstd[:, None]
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = dy * w[None, :]
        mean_gx = tl.sum(g * normed, axis=1) / D
        ds = (g - normed * mean_gx[:, None]) * rstd[:, None]
        if HAS_DS:
            ds = ds + tl.load(ds_in_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + offs, ds.to(dx_ptr.dtype.element_ty), mask=mask)
        if HAS_DRES:
            tl.store(dres_ptr + offs, ds.to(dres_ptr.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * normed.to(s_ptr.dtype.element_ty).to(tl.float32), axis=0)
    tl.store(dw_ptr + pid.to(tl.int64) * D + cols, dw, mask=cols < D)


@triton.jit
def _gated_rms_norm_fwd_kernel(x_ptr, z_ptr, w_ptr, y_ptr, rstd_ptr, M, D, G, eps, sxm, szm,
                               STORE_RSTD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    # rows are groups of D channels: row r is group r % G of token r // G (weight slice (r % G)·D ...)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < M) & (cols[None, :] < D)
    offs = rows[:, None].to(tl.int64) * D + cols[None, :]
    # a token's G groups are contiguous in x and z; tokens are sxm / szm elements apart
    token = (rows // G).to(tl.int64)[:, None]
    within = (rows % G)[:, None] * D + cols[None, :]
    x = tl.load(x_ptr + token * sxm + within, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + token * szm + within, mask=mask, other=0.0).to(tl.float32)
    h = x * silu(z)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=1) / D + eps)
    if STORE_RSTD:
        tl.store(rstd_ptr + rows, rstd, mask=rows < M)
    normed = (h * rstd[:, None]).to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + (rows % G)[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, (normed * w).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_rms_norm_bwd_kernel(x_ptr, z_ptr, w_ptr, rstd_ptr, dy_ptr, dx_ptr, dz_ptr, dw_ptr, y_ptr, M, D, G,
                               ROWS_PER_PROGRAM, STORE_Y: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    # BLOCK_M and ROWS_PER_PROGRAM are multiples of G: slot j of every row block holds group j % G, so the
    # weight gradient accumulates per slot and the host folds the slots into groups. STORE_Y: also write the
    # forward's output y (the same arithmetic as the forward kernel, so the same bits)
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    slots = tl.arange(0, BLOCK_M)
    w = tl.load(w_ptr + (slots % G)[:, None] * D + cols[None, :], mask=cols[None, :] < D, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    start = pid * ROWS_PER_PROGRAM
    end = tl.minimum(start + ROWS_PER_PROGRAM, M)
    for row0 in range(start, end, BLOCK_M):
        rows = row0 + slots
        row_ok = rows < end
        mask = row_ok[:, None] & (cols[None, :] < D)
        offs = rows[:, None].to(tl.int64) * D + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        activated = silu(z)
        h = x * activated  # as the forward kernel computes it
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
        normed = h * rstd[:, None]
        if STORE_Y:
            tl.store(y_ptr + offs, (normed.to(x_ptr.dtype.element_ty).to(tl.float32) * w).to(y_ptr.dtype.element_ty),
                     mask=mask)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = dy * w
        mean_gh = tl.sum(g * normed, axis=1) / D
        dh = (g - normed * mean_gh[:, None]) * rstd[:, None]
        tl.store(dx_ptr + offs, (dh * activated).to(dx_ptr.dtype.element_ty), mask=mask)
        tl.store(dz_ptr + offs, (dh * x * silu_derivative(z)).to(dz_ptr.dtype.element_ty), mask=mask)
        dw += dy * normed.to(x_ptr.dtype.element_ty).to(tl.float32)
    out = dw_ptr + pid.to(tl.int64) * BLOCK_M * D + slots[:, None] * D + cols[None, :]
    tl.store(out, dw, mask=cols[None, :] < D)


# The interpreter (tests) takes blocks of 4 rows so that small cases cross row blocks; decided on import, as Triton
# decides whether it interprets.
_INTERPRETED = interpreting()


@functools.lru_cache(maxsize=None)
def _blocks(d: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_D, num_warps) for rows of ``d`` columns: about 4K elements per program. Remembered per ``d``:
    every norm of a decoding step asks for the same."""
    block_d = pow2_at_least(d)
    block_m = 4 if _INTERPRETED else max(1, min(32, 4096 // block_d))
    num_warps = max(1, min(8, block_m * block_d // 512))
    return block_m, block_d, num_warps


def _rms_norm_fake(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None, eps: float,
                   y_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m, d = x.shape
    s_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    y = x.new_empty(m, d, dtype=y_dtype)
    return y, x.new_empty((m, d) if residual is not None else (0,), dtype=s_dtype), x.new_empty(m, dtype=torch.float32)


@opaque_to_compile("rms_norm_forward", _rms_norm_fake)
def rms_norm_forward(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None, eps: float,
                     y_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward kernel: x (M, d), weight (d,), residual (M, d) or None -> (y (M, d) in ``y_dtype``, s (M, d) =
    x + residual, or an empty tensor without a residual (s is x), rstd (M,) float32)."""
    m, d = x.shape
    s_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    s = poisoned_empty(m, d, dtype=s_dtype, device=x.device) if residual is not None else \
        torch.empty(0, dtype=s_dtype, device=x.device)
    y = poisoned_empty(m, d, dtype=y_dtype, device=x.device)
    rstd = poisoned_empty(m, dtype=torch.float32, device=x.device)
    _launch_rms_norm(x, residual, weight, x if residual is None else s, y, rstd, eps)
    return y, s, rstd


def _launch_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, s: torch.Tensor,
                     y: torch.Tensor, rstd: torch.Tensor | None, eps: float) -> None:
    """One forward launch over the rows of contiguous ``x (..., d)`` into ``s`` (``x`` itself without a
    residual), ``y`` and ``rstd`` (rows,) float32 — not stored when None."""
    d = x.shape[-1]
    m = x.numel() // d if d else 0
    block_m, block_d, num_warps = _blocks(d)
    if m:
        _rms_norm_fwd_kernel.run(  # (decoding path: launch convention of ops/triton_utils.py)
            x, x if residual is None else residual, weight, s, y, y if rstd is None else rstd, m, d, eps,
            grid=(cdiv(m, block_m),), warmup=False, HAS_RESIDUAL=residual is not None, STORE_RSTD=rstd is not None,
            BLOCK_M=block_m, BLOCK_D=block_d, num_warps=num_warps)


def _rms_norm_backward_fake(s: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, grad_y: torch.Tensor,
                            grad_s: torch.Tensor | None, x_dtype: torch.dtype,
                            residual_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m, d = s.shape
    grad_res = s.new_empty((m, d) if residual_dtype is not None else (0,),
                           dtype=residual_dtype if residual_dtype is not None else x_dtype)
    return s.new_empty(m, d, dtype=x_dtype), weight.new_empty(d), grad_res


@opaque_to_compile("rms_norm_backward", _rms_norm_backward_fake)
def rms_norm_backward(s: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, grad_y: torch.Tensor,
                      grad_s: torch.Tensor | None, x_dtype: torch.dtype,
                      residual_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward kernel: s (M, d) the normalised sum, weight (d,), rstd (M,), grad_y (M, d) contiguous, grad_s
    (M, d) contiguous or None, the dtypes of x and of the residual (None: no residual) -> (grad_x (M, d), grad_weight
    (d,), grad_residual (M, d), or an empty tensor without a residual)."""
    m, d = s.shape
    block_m, block_d, num_warps = _blocks(d)
    programs, rows_per_program = _backward_programs(m, block_m, s.device)
    has_ds = grad_s is not None
    has_dres = residual_dtype is not None
    grad_x = poisoned_empty(m, d, dtype=x_dtype, device=s.device)
    grad_res = poisoned_empty(m, d, dtype=residual_dtype, device=s.device) if has_dres else \
        torch.empty(0, dtype=x_dtype, device=s.device)
    dw_parts = poisoned_empty(programs, d, dtype=torch.float32, device=s.device)
    if m:
        _rms_norm_bwd_kernel[(programs,)](
            s, weight, rstd, grad_y, grad_s if has_ds else grad_y, grad_x, grad_res if has_dres else grad_x,
            dw_parts, m, d, rows_per_program,
            HAS_DS=has_ds, HAS_DRES=has_dres, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=num_warps)
    else:
        dw_parts.zero_()
    return grad_x, dw_parts.sum(0).to(weight.dtype), grad_res


class RMSNormFunction(torch.autograd.Function):
    """(x (M, d), weight (d,), residual (M, d) | None, eps, y_dtype) -> (y (M, d) in ``y_dtype``, s (M, d)); ``s``
    is ``x`` itself without a residual. Shapes and dtypes are checked by ``rms_norm``."""

    @staticmethod
    def forward(ctx, x, weight, residual, eps, y_dtype):
        y, s, rstd = rms_norm_forward(x, weight, residual, eps, y_dtype)
        s = x if residual is None else s
        ctx.save_for_backward(s, weight, rstd)
        ctx.x_dtype = x.dtype
        ctx.residual_dtype = None if residual is None else residual.dtype
        ctx.y_dtype = y_dtype
        ctx.set_materialize_grads(False)  # an unused s (or y) gets no gradient: nothing to read
        return y if residual is None else (y, s)

    @staticmethod
    def backward(ctx, grad_y, grad_s=None):
        s, weight, rstd = ctx.saved_tensors
        grad_y = torch.zeros_like(s, dtype=ctx.y_dtype) if grad_y is None \
            else grad_y.contiguous()
        grad_x, grad_w, grad_res = rms_norm_backward(s, weight, rstd, grad_y,
                                                     None if grad_s is None else grad_s.contiguous(), ctx.x_dtype,
                                                     ctx.residual_dtype)
        return grad_x, grad_w, grad_res if ctx.residual_dtype is not None else None, None, None


def _backward_programs(rows: int, block_m: int, device: torch.device) -> tuple[int, int]:
    """(programs, rows per program, a multiple of ``block_m``) of a backward over ``rows`` rows: a few programs
    per SM; at most three under the interpreter, so tests walk several row blocks per program."""
    programs = cdiv(rows, block_m)
    cap = 4 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 3
    programs = max(min(programs, cap), 1)
    return programs, cdiv(cdiv(rows, programs), block_m) * block_m


def _gated_rms_norm_fake(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, groups: int, eps: float,
                         y_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    rows, dg = x.shape
    return x.new_empty(rows, dg, dtype=y_dtype), \
        x.new_empty(rows, dtype=torch.float32)


@opaque_to_compile("gated_rms_norm_forward", _gated_rms_norm_fake)
def gated_rms_norm_forward(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, groups: int, eps: float,
                           y_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward kernel: x, gate (R, Dg), weight (G·Dg,) -> (y (R, Dg) in ``y_dtype``, rstd (R,) float32)."""
    rows, dg = x.shape
    y = poisoned_empty(rows, dg, dtype=y_dtype, device=x.device)
    rstd = poisoned_empty(rows, dtype=torch.float32, device=x.device)
    _launch_gated_rms_norm(x, gate, weight, y, rstd, rows, dg, groups, eps, groups * dg, groups * dg)
    return y, rstd


def _launch_gated_rms_norm(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, y: torch.Tensor,
                           rstd: torch.Tensor | None, rows: int, dg: int, groups: int, eps: float, x_stride: int,
                           gate_stride: int) -> None:
    """One forward launch over ``rows`` groups of ``dg`` channels (``groups`` per token, a token's groups
    contiguous, tokens ``x_stride`` / ``gate_stride`` elements apart) into contiguous ``y`` and ``rstd`` (rows,)
    float32 — not stored when None."""
    block_m, block_d, num_warps = _blocks(dg)
    block_m = max(block_m, groups)
    if rows:
        _gated_rms_norm_fwd_kernel.run(
            x, gate, weight, y, y if rstd is None else rstd, rows, dg, groups, eps, x_stride, gate_stride,
            grid=(cdiv(rows, block_m),), warmup=False, STORE_RSTD=rstd is not None, BLOCK_M=block_m,
            BLOCK_D=block_d, num_warps=num_warps)


def _gated_rms_norm_backward_fake(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor,
                                  grad_y: torch.Tensor, groups: int, y_dtype: torch.dtype | None = None
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    y = x.new_empty(x.shape if y_dtype is not None else (0,), dtype=y_dtype or x.dtype)
    return torch.empty_like(x), torch.empty_like(gate), torch.empty_like(weight), y


@opaque_to_compile("gated_rms_norm_backward", _gated_rms_norm_backward_fake)
def gated_rms_norm_backward(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor,
                            grad_y: torch.Tensor, groups: int, y_dtype: torch.dtype | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward kernel: x, gate (R, Dg), weight (G·Dg,), rstd (R,), grad_y (R, Dg) contiguous -> (grad_x,
    grad_gate (R, Dg), grad_weight (G·Dg,), and with ``y_dtype`` the forward's output y (R, Dg) in it, written by
    the same pass; else an empty tensor)."""
    rows, dg = x.shape
    block_m, block_d, num_warps = _blocks(dg)
    block_m = max(block_m, groups)
    programs, rows_per_program = _backward_programs(rows, block_m, x.device)
    grad_x = poisoned_empty(rows, dg, dtype=x.dtype, device=x.device)
    grad_gate = poisoned_empty(rows, dg, dtype=gate.dtype, device=x.device)
    dw_parts = poisoned_empty(programs, block_m, dg, dtype=torch.float32, device=x.device)
    y = poisoned_empty(rows, dg, dtype=y_dtype, device=x.device) if y_dtype is not None else \
        torch.empty(0, dtype=x.dtype, device=x.device)
    if rows:
        _gated_rms_norm_bwd_kernel[(programs,)](
            x, gate, weight, rstd, grad_y, grad_x, grad_gate, dw_parts, y if y_dtype is not None else grad_x, rows,
            dg, groups, rows_per_program, STORE_Y=y_dtype is not None, BLOCK_M=block_m, BLOCK_D=block_d,
            num_warps=num_warps)
    else:
        dw_parts.zero_()
    grad_w = dw_parts.view(programs, block_m // groups, groups * dg).sum((0, 1))
    return grad_x, grad_gate, grad_w.to(weight.dtype), y


class GatedRMSNormFunction(torch.autograd.Function):
    """(x (R, Dg), gate (R, Dg), weight (G·Dg,), G, eps, y_dtype) -> y (R, Dg) in ``y_dtype``: rows are groups of
    ``Dg`` channels (token ``r // G``, group ``r % G``). Shapes and dtypes are checked by ``gated_rms_norm``."""

    @staticmethod
    def forward(ctx, x, gate, weight, groups, eps, y_dtype):
        y, rstd = gated_rms_norm_forward(x, gate, weight, groups, eps, y_dtype)
        ctx.save_for_backward(x, gate, weight, rstd)
        ctx.groups = groups
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, gate, weight, rstd = ctx.saved_tensors
        grad_x, grad_gate, grad_w, _ = gated_rms_norm_backward(x, gate, weight, rstd, grad_y.contiguous(), ctx.groups)
        return grad_x, grad_gate, grad_w, None, None, None


class GatedRMSNormLinearFunction(torch.autograd.Function):
    """(x (R, Dg), gate (R, Dg), weight (G·Dg,), G, eps, y_dtype, linear_weight (o, G·Dg), linear_bias (o,) | None)
    -> (R/G, o): ``F.linear`` of the gated norm's output (in ``y_dtype``, the linear's weight and bias cast to it, as
    autocast casts them). It keeps ``x``, ``gate`` and ``1/rms`` but not the norm's output: the backward recomputes
    that for the linear's weight gradient in the norm's backward kernel (one more write there instead of a
    ``(tokens, G·Dg)`` tensor kept from the forward; mamba_ssm's fused Mamba2 layer recomputes it too). A separate
    forward launch in the backward would not do under ``torch.compile``: two calls of one operator on the same
    inputs are merged, and the merged output kept."""

    @staticmethod
    def forward(ctx, x, gate, weight, groups, eps, y_dtype, linear_weight, linear_bias):
        y, rstd = gated_rms_norm_forward(x, gate, weight, groups, eps, y_dtype)
        bias = None if linear_bias is None else linear_bias.to(y_dtype)
        out = F.linear(y.view(-1, weight.shape[0]), linear_weight.to(y_dtype), bias)
        ctx.save_for_backward(x, gate, weight, rstd, linear_weight)
        ctx.groups, ctx.eps, ctx.y_dtype = groups, eps, y_dtype
        ctx.bias_dtype = None if linear_bias is None else linear_bias.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, gate, weight, rstd, linear_weight = ctx.saved_tensors
        grad_out = grad_out.to(ctx.y_dtype)
        grad_y = (grad_out @ linear_weight.to(ctx.y_dtype)).view(x.shape)
        grad_x, grad_gate, grad_w, y = gated_rms_norm_backward(x, gate, weight, rstd, grad_y, ctx.groups, ctx.y_dtype)
        grad_linear_weight = (grad_out.t() @ y.view(-1, weight.shape[0])).to(linear_weight.dtype)
        grad_bias = None if ctx.bias_dtype is None else grad_out.sum(0).to(ctx.bias_dtype)
        return grad_x, grad_gate, grad_w, None, None, None, grad_linear_weight, grad_bias


def gated_rms_norm_linear_triton(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float,
                                 num_groups: int, out_dtype: torch.dtype | None, linear_weight: torch.Tensor,
                                 linear_bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(gated_rms_norm_triton(x, gate, ...), linear_weight, linear_bias)`` with the norm's output
    recomputed in the backward (:class:`GatedRMSNormLinearFunction`): x, gate (..., d), weight (d,), linear_weight
    (o, d), linear_bias (o,) or None -> (..., o) in the norm's output dtype (``out_dtype``, None:
    ``promote(weight, x)``)."""
    shape = x.shape
    dg = shape[-1] // num_groups
    out = GatedRMSNormLinearFunction.apply(x.reshape(-1, dg).contiguous(), gate.reshape(-1, dg).contiguous(),
                                           weight.contiguous(), num_groups, float(eps),
                                           out_dtype or torch.promote_types(weight.dtype, x.dtype), linear_weight,
                                           linear_bias)
    return out.view(*shape[:-1], linear_weight.shape[0])


@functools.lru_cache(maxsize=None)
def _promoted(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """``torch.promote_types`` remembered: a call is an ATen op, i.e. host work on every decoding step."""
    return torch.promote_types(a, b)


def _inference(*tensors: torch.Tensor | None) -> bool:
    """Whether a forward needs no autograd record (nothing requires grad, or grad is off) and runs eagerly: then
    the kernel is launched directly on the given tensors (no reshapes, no saved ``1/rms``): the fewest host
    operations, which is what a decoding step pays for."""
    if torch.compiler.is_compiling():
        return False
    return not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in tensors)


def _row_stride(t: torch.Tensor) -> int | None:
    """Elements between consecutive rows of ``t (..., d)`` seen as ``(rows, d)`` (the last dim contiguous, rows
    evenly spaced, e.g. a column range of a projection), or None when they are not."""
    if t.dim() < 2 or t.stride(-1) != 1:
        return None
    if t.dim() == 2:  # a decoding step's rows: no loop
        return t.stride(0) if t.shape[0] != 1 else t.shape[1]
    stride = expected = None
    for size, step in zip(reversed(t.shape[:-1]), reversed(t.stride()[:-1])):
        if size == 1:
            continue
        if expected is not None and step != expected:
            return None
        stride = step if stride is None else stride
        expected = step * size
    return t.shape[-1] if stride is None else stride


def gated_rms_norm_triton(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float,
                          num_groups: int = 1, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``naive.gated_rms_norm_naive`` by the kernels: x, gate (..., d), weight (d,) -> (..., d) in ``out_dtype``
    (None: ``promote(weight, x)``); ``num_groups`` a power of two. Without autograd, ``x`` and ``gate`` may be row
    slices of wider tensors (e.g. ``gate`` a column range of a projection, rows a fixed stride apart)."""
    shape = x.shape
    x_rows, gate_rows = _row_stride(x), _row_stride(gate)
    if _inference(x, gate, weight) and x_rows is not None and gate_rows is not None:
        dg = shape[-1] // num_groups
        rows = x.numel() // dg
        y = poisoned_empty_like(x, out_dtype or _promoted(weight.dtype, x.dtype))
        _launch_gated_rms_norm(x, gate, weight.contiguous(), y, None, rows, dg, num_groups, float(eps), x_rows,
                               gate_rows)
        return y
    dg = shape[-1] // num_groups
    y = GatedRMSNormFunction.apply(x.reshape(-1, dg).contiguous(), gate.reshape(-1, dg).contiguous(),
                                   weight.contiguous(), num_groups, float(eps),
                                   out_dtype or torch.promote_types(weight.dtype, x.dtype))
    return y.view(shape)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
                    out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``naive.rms_norm_naive`` by the kernels: x, residual (..., d), weight (d,) -> (y, s) of the same shapes, ``y``
    in ``out_dtype`` (None: ``promote(weight, s)``)."""
    shape = x.shape
    d = shape[-1]
    if _inference(x, weight, residual):
        return _rms_norm_inference(x, weight, eps, residual, out_dtype)
    s_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    y_dtype = out_dtype or torch.promote_types(weight.dtype, s_dtype)
    x2 = x.reshape(-1, d).contiguous()
    res2 = None if residual is None else residual.reshape(-1, d).contiguous()
    if res2 is None:
        y = RMSNormFunction.apply(x2, weight.contiguous(), None, float(eps), y_dtype)
        return y.view(shape), x
    y, s = RMSNormFunction.apply(x2, weight.contiguous(), res2, float(eps), y_dtype)
    return y.view(shape), s.view(shape)


def _rms_norm_inference(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None,
                        out_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rms_norm_triton` without autograd: one launch on the tensors as they are (made contiguous), the
    outputs allocated in their final shapes, no ``1/rms`` stored -> (y, s)."""
    x = x.contiguous()
    if residual is None:
        s = x
    else:
        residual = residual.contiguous()
        s = poisoned_empty_like(x, _promoted(x.dtype, residual.dtype))
    y = poisoned_empty_like(x, out_dtype or _promoted(weight.dtype, s.dtype))
    _launch_rms_norm(x, residual, weight.contiguous(), s, y, None, float(eps))
    return y, s
