"""Expert mixture in PyTorch without materialising all gathered expert rows.

The mixture is built from two differentiable primitives over the ``M = H·k`` experts selected by each token
(``ids (T, M)``, tables ``(N, d)``):

* :class:`RowDots`  ``s[t, j] = table[ids[t, j]] · vec[t]``                      (T, M)
* :class:`RowSum`   ``y[t] = Σ_j w[t, j] · table[ids[t, j]]``                      (T, d)

with ``coef = gate·act(s)`` between them (plain autograd). Each primitive's backward is the other primitive plus
a *table gradient* ``G[e] = Σ_{(t, j): ids[t, j] = e} w[t, j] · vec[t]``:
``RowDots``: ``grad_vec = RowSum(grad_s, table)``, ``grad_table = G(grad_s, vec)``;
``RowSum``: ``grad_w = RowDots(grad_y, table)``, ``grad_table = G(w, grad_y)``.

Two implementations of the three kernels (``row_dots``, ``row_sum``, ``table_grad``), picked per call:

* :class:`BagKernels` (CPU, and CUDA float32/float64): ATen's ``embedding_bag`` and its per-sample-weights
  gradient kernel (a dot product per selected row). Memory O(T·(M + d)) plus the table gradients.
* :class:`GatherKernels` (CUDA half precision, where ATen has no bf16 per-sample-weights kernel): gathers of
  the selected rows in token chunks of at most ``GATHER_BUDGET`` elements, products in float32, table
  gradients by ``index_add_`` into a float32 buffer (one rounding to the table dtype at the end).

Neither ever builds a ``(T, N)`` tensor, nor a ``(T, M, d)`` one beyond a bounded chunk. ``s``, ``coef`` and
their gradients are float32 for half-precision tables. The Triton backend (``row_kernels.py``) has its own
mixture Function (the activation fused into its kernels) and reuses :class:`RowSum` for the PKM read.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..common import cast
from .naive import ACTIVATIONS

_MODE_SUM = 0
GATHER_BUDGET = 1 << 25  # elements of one gathered (chunk, M, d) block in GatherKernels (128 MiB in float32)


def compute_dtype(table: torch.Tensor) -> torch.dtype:
    """float32 for half-precision tables, else the table dtype: the dtype of ``s``, ``coef`` and their grads."""
    return torch.float32 if table.dtype in (torch.float16, torch.bfloat16) else table.dtype


class BagKernels:
    """The three kernels through ``embedding_bag`` (ATen); see the module docstring."""

    @staticmethod
    def row_dots(vec: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """vec (T, d), table (N, d), ids (T, M) -> s (T, M) in the compute dtype."""
        T, M = ids.shape
        offsets = torch.arange(0, T * M, M, device=ids.device)
        offset2bag = torch.arange(T, device=ids.device).repeat_interleave(M)
        s = torch.ops.aten._embedding_bag_per_sample_weights_backward(
            vec.to(table.dtype).contiguous(), table, ids.reshape(-1), offsets, offset2bag, _MODE_SUM, -1)
        return cast(s.reshape(T, M), compute_dtype(table))

    @staticmethod
    def row_sum(w: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """w (T, M), table (N, d), ids (T, M) -> (T, d) in the table dtype."""
        return F.embedding_bag(ids, table, per_sample_weights=w.to(table.dtype).contiguous(), mode="sum")

    @staticmethod
    def table_grad(w: torch.Tensor, vec: torch.Tensor, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """G[e] = Σ_{ids[t,j]=e} w[t,j]·vec[t]: the weight gradient of the bag ``row_sum(w, table)`` for upstream
        ``vec``, by ATen's embedding-bag weight-gradient kernel (the one ``embedding_bag``'s backward runs, called
        directly: traceable by ``torch.compile``); (N, d) in the table dtype."""
        T, M = ids.shape
        offset2bag = torch.arange(T, device=ids.device).repeat_interleave(M)
        bag_size = torch.full((T,), M, dtype=torch.long, device=ids.device)  # read by the mean mode only
        max_indices = torch.zeros(T, dtype=torch.long, device=ids.device)  # read by the max mode only
        return torch.ops.aten._embedding_bag_dense_backward(
            vec.to(table.dtype).contiguous(), ids.reshape(-1), offset2bag, bag_size, max_indices, table.shape[0],
            False, _MODE_SUM, w.detach().to(table.dtype).reshape(-1).contiguous(), -1)


class GatherKernels:
    """The three kernels through chunked row gathers with float32 arithmetic; see the module docstring."""

    @staticmethod
    def _chunks(T: int, M: int, d: int) -> tuple[range, int]:
        step = max(1, GATHER_BUDGET // max(M * d, 1))
        return range(0, T, step), step

    @staticmethod
    def row_dots(vec: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """vec (T, d), table (N, d), ids (T, M) -> s (T, M) in the compute dtype."""
        T, M = ids.shape
        dtype = compute_dtype(table)
        out = torch.empty(T, M, dtype=dtype, device=table.device)
        starts, step = GatherKernels._chunks(T, M, table.shape[1])
        for t0 in starts:
            rows = table[ids[t0:t0 + step]].to(dtype)  # (c, M, d)
            out[t0:t0 + step] = torch.bmm(rows, vec[t0:t0 + step, :, None].to(dtype))[..., 0]
        return out

    @staticmethod
    def row_sum(w: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """w (T, M), table (N, d), ids (T, M) -> (T, d) in the table dtype (sums in float32)."""
        T, M = ids.shape
        dtype = compute_dtype(table)
        out = torch.empty(T, table.shape[1], dtype=table.dtype, device=table.device)
        starts, step = GatherKernels._chunks(T, M, table.shape[1])
        for t0 in starts:
            rows = table[ids[t0:t0 + step]].to(dtype)  # (c, M, d)
            out[t0:t0 + step] = torch.bmm(w[t0:t0 + step, None, :].to(dtype), rows)[:, 0]
        return out

    @staticmethod
    def table_grad(w: torch.Tensor, vec: torch.Tensor, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """G[e] = Σ_{ids[t,j]=e} w[t,j]·vec[t], (N, d) in the table dtype, accumulated in a float32 buffer."""
        T, M = ids.shape
        dtype = compute_dtype(table)
        grad = torch.zeros(table.shape, dtype=dtype, device=table.device)
        starts, step = GatherKernels._chunks(T, M, table.shape[1])
        for t0 in starts:
            part = w[t0:t0 + step, :, None].to(dtype) * vec[t0:t0 + step, None, :].to(dtype)  # (c, M, d)
            grad.index_add_(0, ids[t0:t0 + step].reshape(-1), part.reshape(-1, table.shape[1]))
        return grad.to(table.dtype)


def default_kernels(table: torch.Tensor):
    """GatherKernels for half-precision tables on CUDA (no bf16 per-sample-weights kernel there), else BagKernels."""
    if table.is_cuda and table.dtype in (torch.float16, torch.bfloat16):
        return GatherKernels
    return BagKernels


class RowDots(torch.autograd.Function):
    """s[t, j] = table[ids[t, j]] · vec[t]: vec (T, d), ids (T, M) int64, table (N, d) -> (T, M) compute dtype."""

    @staticmethod
    def forward(ctx, vec, ids, table, kernels):
        ctx.save_for_backward(vec, ids, table)
        ctx.kernels = kernels
        return kernels.row_dots(vec, table, ids)

    @staticmethod
    def backward(ctx, grad_s):
        vec, ids, table = ctx.saved_tensors
        grad_vec = grad_table = None
        if ctx.needs_input_grad[0]:
            grad_vec = ctx.kernels.row_sum(grad_s, table, ids).to(vec.dtype)
        if ctx.needs_input_grad[2]:
            grad_table = ctx.kernels.table_grad(grad_s, vec, ids, table)
        return grad_vec, None, grad_table, None


class RowSum(torch.autograd.Function):
    """y[t] = Σ_j w[t, j] · table[ids[t, j]]: w (T, M), ids (T, M) int64, table (N, d) -> (T, d) table dtype."""

    @staticmethod
    def forward(ctx, w, ids, table, kernels):
        ctx.save_for_backward(w, ids, table)
        ctx.kernels = kernels
        return kernels.row_sum(w, table, ids)

    @staticmethod
    def backward(ctx, grad_y):
        w, ids, table = ctx.saved_tensors
        grad_w = grad_table = None
        if ctx.needs_input_grad[0]:
            grad_w = ctx.kernels.row_dots(grad_y, table, ids).to(w.dtype)
        if ctx.needs_input_grad[2]:
            grad_table = ctx.kernels.table_grad(w, grad_y.contiguous(), ids, table)
        return grad_w, None, grad_table, None


def mixture(x: torch.Tensor, ids: torch.Tensor, gates: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
            activation: str, kernels) -> torch.Tensor:
    """x (..., d), ids/gates (..., H, k), down/up (N, d) -> (..., d) with the given kernels (see module doc)."""
    d = x.shape[-1]
    xf = x.reshape(-1, d).contiguous()
    T = xf.shape[0]
    idsf = ids.reshape(T, ids.shape[-2] * ids.shape[-1]).contiguous()
    s = RowDots.apply(xf, idsf, down, kernels)  # (T, M) compute dtype
    compute = compute_dtype(up)
    coef = gates.reshape(idsf.shape).to(compute) * ACTIVATIONS[activation](s.to(compute))
    y = RowSum.apply(coef, idsf, up, kernels)
    return y.to(x.dtype).reshape(x.shape)


def expert_mixture(x: torch.Tensor, ids: torch.Tensor, gates: torch.Tensor, down: torch.Tensor,
                   up: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    """x (..., d), ids/gates (..., H, k), down/up (N, d) -> (..., d) = Σ_h Σ_j gate · act(down[e]·x) · up[e]."""
    return mixture(x, ids, gates, down, up, activation, default_kernels(up))


def weighted_rows(weights: torch.Tensor, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Product-key memory read ``y[t] = Σ_j weights[t, j] · table[ids[t, j]]``, differentiable in ``weights``
    and ``table``: weights (T, M) float, ids (T, M) int64, table (N, d) -> (T, d) in the table dtype."""
    kernels = default_kernels(table)
    compute = compute_dtype(table)
    return RowSum.apply(weights.to(compute).contiguous(), ids.contiguous(), table, kernels)
