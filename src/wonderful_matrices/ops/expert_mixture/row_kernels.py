"""Expert mixture with Triton kernels (GPU; also CPU under ``TRITON_INTERPRET=1``).

The mixture ``y[t] = Σ_j gate[t,j]·act(down[e]·x[t])·up[e]`` (``e = ids[t,j]``, ``M = H·k`` selections per
token) is assembled exactly as in the torch backend (``gather.py``: the autograd Functions ``RowDots`` and
``RowSum``, with ``coef = gate·act(s)`` in plain autograd between them); this module supplies their three
kernels. Every kernel reads the selected table rows by id straight from the ``(N, d)`` table, multiplies in
float32 and writes its output once; no ``(T, N)`` or ``(T, M, d)`` tensor exists.

* ``row_dots``  ``s[t,j] = table[ids[t,j]]·vec[t]``: one program per token and block of ``BLOCK_M``
  selections; loops over ``d`` in ``BLOCK_D`` columns. Forward (``x``, ``down``) and the gate gradient
  (``grad_y``, ``up``).
* ``row_sum``   ``y[t] = Σ_j w[t,j]·table[ids[t,j]]``: one program per token and block of ``BLOCK_D`` columns;
  loops over the ``M`` selections. Forward (``coef``, ``up``) and ``grad_x`` (``grad_s``, ``down``).
* ``table_grad`` ``G[e] = Σ_{ids[t,j]=e} w[t,j]·vec[t]`` (``grad_down`` from ``grad_s, x``; ``grad_up`` from
  ``coef, grad_y``): the ``T·M`` selections are sorted by expert once per call (``torch.sort``, stable, shared by
  both table gradients), ``starts[e]`` marks each expert's segment. One program owns a tile of ``BLOCK_E``
  consecutive experts × ``BLOCK_D`` columns and walks the segments rank by rank (``r = 0 .. max count in the
  tile − 1``), each step gathering one ``vec`` row per expert of the tile: a segmented reduction in float32
  registers, every gradient row written exactly once (zero for unselected experts), no atomics, deterministic.
  With many experts (2^20: about one selection each) a tile takes a few steps and writes the gradient directly.
  With few experts (1024: ~1000 selections each) the ranks are split over ``SPLIT`` programs per tile (about
  ``RANKS_PER_PROGRAM`` ranks each) that write float32 partial sums, added by one ``sum`` (a small buffer:
  ``SPLIT·N·d``). A single very hot expert still makes its own tile longer than the rest (load imbalance,
  correct).

Launch settings are autotuned on the GPU (a single configuration under the interpreter, small blocks, so tests
exercise the masked tails). Outputs are NaN-poisoned under the interpreter, so an unwritten element fails tests.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_utils import interpreting, poisoned_empty
from .gather import RowSum, mixture

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
RANKS_PER_PROGRAM = 32  # table_grad: selections of one expert a program walks before the ranks are split
PARTIAL_BUDGET = 1 << 26  # table_grad: float32 elements of partial sums when the ranks are split (256 MiB)


def _configs(gpu: list[tuple[int, int, int]], interpreted: tuple[int, int], names: tuple[str, str]):
    """Autotune configurations: ``gpu`` (block_a, block_d, num_warps) on a GPU; one small one interpreted."""
    if interpreting():
        return [triton.Config({names[0]: interpreted[0], names[1]: interpreted[1]}, num_warps=1)]
    return [triton.Config({names[0]: a, names[1]: b}, num_warps=w) for a, b, w in gpu]


# Reductions go through ``tl.reduce`` with combine functions of this module rather than ``tl.sum``/``tl.max``:
# those are jit functions of triton's standard library, created in compiled mode when triton was imported before
# TRITON_INTERPRET=1 was set (as in a test session), which the interpreter cannot call.
@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


@triton.autotune(
    configs=_configs([(16, 256, 4), (32, 128, 4), (16, 512, 8), (8, 1024, 8)], (4, 16), ("BLOCK_M", "BLOCK_D")),
    key=["M", "D"])
@triton.jit
def _row_dots_kernel(vec_ptr, table_ptr, ids_ptr, out_ptr, M, D,
                     BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[t, m] = table[ids[t, m]] · vec[t]  (float32); grid (T, cdiv(M, BLOCK_M))."""
    t = tl.program_id(0).to(tl.int64)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    e = tl.load(ids_ptr + t * M + offs_m, mask=mask_m, other=0).to(tl.int64)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        v = tl.load(vec_ptr + t * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        rows = tl.load(table_ptr + e[:, None] * D + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :],
                       other=0.0).to(tl.float32)
        acc += rows * v[None, :]
    tl.store(out_ptr + t * M + offs_m, tl.reduce(acc, 1, _add), mask=mask_m)


@triton.autotune(
    configs=_configs([(16, 256, 4), (32, 128, 4), (16, 512, 8), (32, 256, 8)], (4, 16), ("BLOCK_M", "BLOCK_D")),
    key=["M", "D"])
@triton.jit
def _row_sum_kernel(w_ptr, table_ptr, ids_ptr, out_ptr, M, D,
                    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[t, :] = Σ_m w[t, m] · table[ids[t, m], :] (float32 sums, stored in out's dtype);
    grid (T, cdiv(D, BLOCK_D))."""
    t = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        e = tl.load(ids_ptr + t * M + offs_m, mask=mask_m, other=0).to(tl.int64)
        w = tl.load(w_ptr + t * M + offs_m, mask=mask_m, other=0.0).to(tl.float32)
        rows = tl.load(table_ptr + e[:, None] * D + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :],
                       other=0.0).to(tl.float32)
        acc += w[:, None] * rows
    tl.store(out_ptr + t * D + offs_d, tl.reduce(acc, 0, _add).to(out_ptr.dtype.element_ty), mask=mask_d)


@triton.autotune(
    # BLOCK_E = 32 is left out: triton 3.6 (the GPU host's) fails to lower this kernel with it (PassManager error)
    configs=_configs([(16, 256, 4), (16, 128, 4), (8, 512, 4), (16, 512, 8)], (4, 16), ("BLOCK_E", "BLOCK_D")),
    key=["N", "D", "SPLIT"])
@triton.jit
def _table_grad_kernel(starts_ptr, order_ptr, w_ptr, vec_ptr, out_ptr, N, M, D, SPLIT,
                       BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[s, e, :] = Σ_{r ≡ s (mod SPLIT)} w[p_r] · vec[p_r // M, :] over expert e's sorted positions
    ``p_r = order[starts[e] + r]``; grid (cdiv(N, BLOCK_E), cdiv(D, BLOCK_D), SPLIT). With SPLIT = 1, ``out`` is
    the gradient itself (table dtype); otherwise a float32 (SPLIT, N, D) buffer of partial sums."""
    offs_e = tl.program_id(0).to(tl.int64) * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_e = offs_e < N
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    split = tl.program_id(2)
    begin = tl.load(starts_ptr + offs_e, mask=mask_e, other=0)
    count = tl.load(starts_ptr + offs_e + 1, mask=mask_e, other=0) - begin
    count = tl.where(mask_e, count, 0)
    acc = tl.full([BLOCK_E, BLOCK_D], 0.0, tl.float32)
    for r in range(split, tl.reduce(count, 0, _maximum), SPLIT):
        live = r < count
        pos = tl.load(order_ptr + begin + r, mask=live, other=0).to(tl.int64)
        w = tl.load(w_ptr + pos, mask=live, other=0.0).to(tl.float32)
        rows = tl.load(vec_ptr + (pos // M)[:, None] * D + offs_d[None, :], mask=live[:, None] & mask_d[None, :],
                       other=0.0).to(tl.float32)
        acc += w[:, None] * rows
    out = out_ptr + split.to(tl.int64) * N * D + offs_e[:, None] * D + offs_d[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_e[:, None] & mask_d[None, :])


def rank_split(selections: int, num_experts: int, d: int) -> int:
    """Programs sharing one tile of experts in ``table_grad``: about ``RANKS_PER_PROGRAM`` selections per expert
    each (1 when experts are many and selections per expert few), at most 64 and at most ``PARTIAL_BUDGET``
    float32 elements of partial sums."""
    split = selections // (num_experts * RANKS_PER_PROGRAM)
    return int(max(1, min(64, split, PARTIAL_BUDGET // max(num_experts * d, 1))))


def sort_by_expert(ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (T, M) -> order (T·M,) flat positions sorted by expert (stable) and starts (N + 1,) segment bounds."""
    sorted_ids, order = torch.sort(ids.reshape(-1), stable=True)
    starts = torch.searchsorted(sorted_ids, torch.arange(num_experts + 1, device=ids.device, dtype=sorted_ids.dtype))
    return order.contiguous(), starts.contiguous()


class TritonKernels:
    """``row_dots``, ``row_sum`` and ``table_grad`` (the interface of ``torch.BagKernels``) as Triton launches."""

    @staticmethod
    def row_dots(vec: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """vec (T, d), table (N, d), ids (T, M) -> (T, M) float32."""
        T, M = ids.shape
        out = poisoned_empty(T, M, dtype=torch.float32, device=table.device)
        if T:
            grid = lambda meta: (T, triton.cdiv(M, meta["BLOCK_M"]))  # noqa: E731
            _row_dots_kernel[grid](vec.contiguous(), table, ids, out, M, table.shape[1])
        return out

    @staticmethod
    def row_sum(w: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """w (T, M), table (N, d), ids (T, M) -> (T, d) in the table dtype."""
        T, M = ids.shape
        D = table.shape[1]
        out = poisoned_empty(T, D, dtype=table.dtype, device=table.device)
        if T:
            grid = lambda meta: (T, triton.cdiv(D, meta["BLOCK_D"]))  # noqa: E731
            _row_sum_kernel[grid](w.contiguous(), table, ids, out, M, D)
        return out

    @staticmethod
    def table_grad(w: torch.Tensor, vec: torch.Tensor, ids: torch.Tensor, table: torch.Tensor,
                   cache: dict) -> torch.Tensor:
        """G[e] = Σ_{ids[t,j]=e} w[t,j]·vec[t]: (N, d) in the table dtype; the sort by expert is kept in ``cache``."""
        N, D = table.shape
        M = ids.shape[1]
        if "sorted" not in cache:
            cache["sorted"] = sort_by_expert(ids, N)
        order, starts = cache["sorted"]
        split = rank_split(order.numel(), N, D)
        out = (poisoned_empty(N, D, dtype=table.dtype, device=table.device) if split == 1
               else poisoned_empty(split, N, D, dtype=torch.float32, device=table.device))
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_E"]), triton.cdiv(D, meta["BLOCK_D"]), split)  # noqa: E731
        _table_grad_kernel[grid](starts, order, w.contiguous(), vec.contiguous(), out, N, M, D, split)
        return out if split == 1 else out.sum(0).to(table.dtype)


def expert_mixture(x: torch.Tensor, ids: torch.Tensor, gates: torch.Tensor, down: torch.Tensor,
                   up: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    """x (..., d), ids/gates (..., H, k), down/up (N, d) contiguous -> (..., d); float32/bf16/fp16 tables."""
    return mixture(x, ids, gates, down.contiguous(), up.contiguous(), activation, TritonKernels)


def weighted_rows(weights: torch.Tensor, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``y[t] = Σ_j weights[t, j]·table[ids[t, j]]`` (the PKM read): weights (T, M), ids (T, M) int64,
    table (N, d) -> (T, d) in the table dtype; differentiable in ``weights`` and ``table``."""
    return RowSum.apply(weights.float().contiguous(), ids.contiguous(), table.contiguous(), TritonKernels, {})
