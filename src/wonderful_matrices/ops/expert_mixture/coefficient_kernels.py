"""The dense mixture's coefficient matrices in one Triton launch (GPU; also CPU under ``TRITON_INTERPRET=1``).

``coef[t, e] = Σ_{j: ids[t, j] = e} w[t, j]`` for ``ids, w (c, M)``: a ``(c, N)`` matrix in the table dtype whose
nonzero entries are the selected experts' summed weights (duplicate ids in a row add up). A program owns
``BLOCK_T`` tokens × ``BLOCK_E`` experts; for ``j = 0, 1, …, M−1`` it loads column ``j`` of its tokens' ids and
weights and adds ``w[t, j]`` into the float32 tile at ``(t, ids[t, j])`` where that expert lies in its block (a
compare and a select per tile element: ``c·N·M`` in all, about 2.4 G at cheems-base's ``T = 32768``, ``N = 2304``,
``M = 32``, far below one of the mixture's matrix products). Every output element is written exactly once, the
float32 sum rounded once at the store: no zero fill, no atomics, and a fixed order of additions (left to right in
``j``), so the result is deterministic. The backward's ``W`` and ``Ws`` share the ids: one launch writes both
(``PAIR``), comparing the ids once.

Against :class:`dense.IdRuns` (a sort, a segmented scan, a searchsorted, gathers, a zero fill and a scatter: about 25
launches per matrix): the same float32 sums up to the order of addition (IdRuns adds a run's members as a tree of
shifted adds, this kernel left to right), so the two agree exactly wherever the float32 sums are exact and otherwise
to float32 rounding before the one rounding to the table dtype.

Launch settings are autotuned on the GPU (one small configuration under the interpreter, so tests cross the
blocks' masked tails). Outputs are NaN-poisoned under the interpreter, so an unwritten element fails tests.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import require
from ..triton_utils import interpreting, opaque_to_compile, poisoned_empty

OUTPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# (BLOCK_T, BLOCK_E, num_warps) on the GPU: a float32 tile (two with PAIR) of 16-32 elements per thread. Compiled
# for sm_90 (scripts/experts_compile_report.py) tiles of 64 tokens take 255 registers and spill with PAIR, and
# 128 × 128 on 8 warps spills 2-3 KB per thread with or without it; these four spill in neither case.
GPU_CONFIGS = [(16, 128, 4), (32, 128, 4), (16, 256, 4), (32, 256, 8)]


def _configs():
    if interpreting():
        return [triton.Config({"BLOCK_T": 4, "BLOCK_E": 16}, num_warps=1)]
    return [triton.Config({"BLOCK_T": t, "BLOCK_E": e}, num_warps=w) for t, e, w in GPU_CONFIGS]


@triton.autotune(configs=_configs(), key=["M", "N", "PAIR"])
@triton.jit
def _coefficients_kernel(ids_ptr, w_ptr, w2_ptr, out_ptr, out2_ptr, T, M, N,
                         PAIR: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):
    """``out[t, e] = Σ_{ids[t,j]=e} w[t, j]`` summed in float32 over ``j`` in increasing order, stored in out's
    dtype; with PAIR also ``out2`` from ``w2`` (the same ids). ids, w, w2 (T, M) and out, out2 (T, N) contiguous;
    grid (cdiv(T, BLOCK_T), cdiv(N, BLOCK_E))."""
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < T
    rows = offs_t.to(tl.int64)
    cols = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    acc = tl.full([BLOCK_T, BLOCK_E], 0.0, tl.float32)
    acc2 = tl.full([BLOCK_T, BLOCK_E], 0.0, tl.float32)
    for j in range(0, M):
        at = rows * M + j
        expert = tl.load(ids_ptr + at, mask=mask_t, other=-1).to(tl.int32)  # ids < N < 2^31; -1 matches no column
        hit = expert[:, None] == cols[None, :]
        w = tl.load(w_ptr + at, mask=mask_t, other=0.0).to(tl.float32)
        acc += tl.where(hit, w[:, None], 0.0)
        if PAIR:
            w2 = tl.load(w2_ptr + at, mask=mask_t, other=0.0).to(tl.float32)
            acc2 += tl.where(hit, w2[:, None], 0.0)
    offs = rows[:, None] * N + cols[None, :]
    mask = mask_t[:, None] & (cols < N)[None, :]
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    if PAIR:
        tl.store(out2_ptr + offs, acc2.to(out2_ptr.dtype.element_ty), mask=mask)


def _coefficients_fake(ids: torch.Tensor, w: torch.Tensor, w2: torch.Tensor | None, N: int,
                       dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    second = (ids.shape[0], N) if w2 is not None else (0,)
    return w.new_empty(ids.shape[0], N, dtype=dtype), w.new_empty(second, dtype=dtype)


@opaque_to_compile("dense_coefficients", _coefficients_fake)
def _coefficients(ids: torch.Tensor, w: torch.Tensor, w2: torch.Tensor | None, N: int,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The launch -> ``(out, out2)``, ``out2`` empty without ``w2``."""
    T, M = ids.shape
    out = poisoned_empty(T, N, dtype=dtype, device=w.device)
    out2 = poisoned_empty(T, N, dtype=dtype, device=w.device) if w2 is not None else \
        torch.empty(0, dtype=dtype, device=w.device)
    if T:
        grid = lambda meta: (triton.cdiv(T, meta["BLOCK_T"]), triton.cdiv(N, meta["BLOCK_E"]))  # noqa: E731
        _coefficients_kernel[grid](ids, w, w if w2 is None else w2, out, out if w2 is None else out2, T, M, N,
                                   PAIR=w2 is not None)
    return out, out2


def coefficient_matrices(values: list[torch.Tensor], ids: torch.Tensor, N: int,
                         dtype: torch.dtype) -> list[torch.Tensor]:
    """One or two weight sets ``values`` (each (c, M) float32) sharing ``ids`` (c, M) int64 in ``[0, N)`` -> as many
    (c, N) matrices in ``dtype`` (float32, bf16 or fp16), ``out[t, e] = Σ_{ids[t,j]=e} w[t, j]`` summed in float32
    in the order of ``j`` and rounded once; one launch for both sets."""
    require(1 <= len(values) <= 2, "values", f"{len(values)} tensors", "one or two (c, M) weight sets")
    require(dtype in OUTPUT_DTYPES, "dtype", dtype, f"one of {OUTPUT_DTYPES}")
    require(ids.dim() == 2 and not ids.is_floating_point(), "ids", f"{ids.dtype} {tuple(ids.shape)}",
            "an integer tensor (c, M)")
    for w in values:
        require(w.shape == ids.shape and w.dtype == torch.float32, "values",
                f"{w.dtype} {tuple(w.shape)}", f"float32 tensors of the shape of ids {tuple(ids.shape)}")
    first, second = _coefficients(ids.contiguous(), values[0].contiguous(),
                                  values[1].contiguous() if len(values) == 2 else None, N, dtype)
    return [first, second][:len(values)]
