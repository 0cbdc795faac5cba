"""Expert mixture as dense matrix products over all ``N`` experts, for pools of few experts.

With ``ids (T, M)`` (``M = H·k`` selections per token) and tables ``down, up (N, d)``, every primitive of the
mixture is one ``(T × N × d)`` matrix product plus a gather from, or a scatter into, a ``(T, N)`` matrix:

* forward: ``s = (x · downᵀ).gather(ids)``; ``coef = gate·act(s)``; ``W = scatter_add(ids, coef)`` (duplicate ids
  in a row add up); ``y = W · up``;
* backward: ``grad_coef = (grad_y · upᵀ).gather(ids)``; ``grad_gate = grad_coef·act(s)``;
  ``grad_s = grad_coef·gate·act'(s)``; ``grad_up = Wᵀ · grad_y``; ``Ws = scatter_add(ids, grad_s)``;
  ``grad_x = Ws · down``; ``grad_down = Wsᵀ · x``.

Six GEMMs (2 forward, 4 backward) of ``2·T·N·d`` FLOP each: on tensor cores this beats gathering the ``T·M``
selected rows (``row_kernels.py``, ``gather.py``) while ``N`` is at most about a hundred times ``M``
(``expert_mixture``'s ``DENSE_FACTOR``); with 2^20 experts the gathers win by far.

Tokens go in chunks of at most ``DENSE_BUDGET // N`` rows, so a ``(chunk, N)`` float32 matrix stays bounded;
nothing ``(T, N)`` is saved for the backward (it keeps ``x``, ``ids``, ``gates`` and ``s (T, M)`` and rebuilds
``W`` and ``Ws`` chunk by chunk). Table gradients accumulate in float32 ``(N, d)`` across chunks and are rounded
to the table dtype once.

Precision for half-precision tables (bf16, fp16): the products take half operands and produce float32
(``torch.mm(..., out_dtype=torch.float32)`` on CUDA; on the CPU the operands are widened to float32 first, the
same arithmetic); ``s``, ``coef``, ``grad_s`` and ``grad_coef`` are float32 as in the other backends; the dense
coefficient matrices ``W`` and ``Ws`` are built in float32 and rounded once to the table dtype to multiply with
the table — one rounding of each coefficient, the same relative error (2^-9 in bf16) as rounding the input ``x``,
well inside the bf16 bounds the gather backends meet (tests/ops/test_expert_mixture_dense.py measures it against
float64).
"""
from __future__ import annotations

import torch

from .gather import RowSum, compute_dtype
from .naive import ACTIVATIONS

DENSE_BUDGET = 1 << 26  # elements of one (chunk, N) float32 matrix (256 MiB)
HALF_DTYPES = (torch.float16, torch.bfloat16)

# act'(s) · grad through ATen's own activation derivatives (those autograd uses for F.silu / F.gelu / F.relu)
ACTIVATION_BACKWARD = {
    "silu": lambda grad, s: torch.ops.aten.silu_backward(grad, s),
    "gelu": lambda grad, s: torch.ops.aten.gelu_backward(grad, s),
    "relu": lambda grad, s: torch.ops.aten.threshold_backward(grad, s, 0),
}


def token_chunks(T: int, N: int) -> list[slice]:
    """Row ranges of at most ``DENSE_BUDGET // N`` tokens (at least one), as equal as possible, covering ``T``."""
    most = max(1, DENSE_BUDGET // N)
    count = -(-T // most)
    step = -(-T // count) if count else 1
    return [slice(t, min(t + step, T)) for t in range(0, T, step)]


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a (m, k) · b (k, n)`` in the compute dtype: float32 from half-precision operands (accumulated in float32),
    else in the operands' dtype."""
    if a.dtype in HALF_DTYPES:
        if a.is_cuda:
            return torch.mm(a, b, out_dtype=torch.float32)
        return torch.mm(a.float(), b.float())
    return torch.mm(a, b)


def dense_coefficients(w: torch.Tensor, ids: torch.Tensor, N: int, dtype: torch.dtype) -> torch.Tensor:
    """w (c, M) compute dtype, ids (c, M) int64 -> (c, N) in ``dtype``: ``out[t, e] = Σ_{ids[t,j]=e} w[t, j]``,
    summed in the compute dtype and rounded once."""
    out = torch.zeros(w.shape[0], N, dtype=w.dtype, device=w.device)
    return out.scatter_add_(1, ids, w).to(dtype)


def selected_dots(vec: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """vec (c, d), table (N, d), ids (c, M) -> (c, M) compute dtype: ``table[ids[t, j]]·vec[t]``."""
    return matmul(vec, table.t()).gather(1, ids)


class DenseKernels:
    """``row_dots``, ``row_sum`` and ``table_grad`` (the interface of ``gather.BagKernels``) as chunked dense
    products, for the mixture's forward and the PKM read (``gather.RowSum``)."""

    @staticmethod
    def row_dots(vec: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """vec (T, d), table (N, d), ids (T, M) int64 -> (T, M) compute dtype."""
        out = torch.empty(ids.shape, dtype=compute_dtype(table), device=table.device)
        vec = vec.to(table.dtype)
        for rows in token_chunks(ids.shape[0], table.shape[0]):
            out[rows] = selected_dots(vec[rows], table, ids[rows])
        return out

    @staticmethod
    def row_sum(w: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """w (T, M), table (N, d), ids (T, M) int64 -> (T, d) in the table dtype."""
        N = table.shape[0]
        out = torch.empty(ids.shape[0], table.shape[1], dtype=table.dtype, device=table.device)
        w = w.to(compute_dtype(table))
        for rows in token_chunks(ids.shape[0], N):
            out[rows] = matmul(dense_coefficients(w[rows], ids[rows], N, table.dtype), table)
        return out

    @staticmethod
    def table_grad(w: torch.Tensor, vec: torch.Tensor, ids: torch.Tensor, table: torch.Tensor,
                   cache: dict) -> torch.Tensor:
        """G[e] = Σ_{ids[t,j]=e} w[t,j]·vec[t]: w (T, M), vec (T, d) -> (N, d) in the table dtype (accumulated in the
        compute dtype over the chunks)."""
        N = table.shape[0]
        compute = compute_dtype(table)
        grad = torch.zeros(table.shape, dtype=compute, device=table.device)
        w, vec = w.to(compute), vec.to(table.dtype)
        for rows in token_chunks(ids.shape[0], N):
            grad += matmul(dense_coefficients(w[rows], ids[rows], N, table.dtype).t(), vec[rows])
        return grad.to(table.dtype)


class DenseMixture(torch.autograd.Function):
    """The mixture as dense products (see the module docstring): x (T, d), ids (T, M) int64, gates (T, M) any float
    dtype, down/up (N, d) of the dtype of x, activation a name of ``ACTIVATIONS`` -> y (T, d) in the dtype of x."""

    @staticmethod
    def forward(ctx, x, ids, gates, down, up, activation):
        s = DenseKernels.row_dots(x, down, ids)
        coef = gates.to(s.dtype) * ACTIVATIONS[activation](s)
        ctx.save_for_backward(x, ids, gates, down, up, s)
        ctx.activation = activation
        return DenseKernels.row_sum(coef, up, ids).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        x, ids, gates, down, up, s = ctx.saved_tensors
        need_x, _, need_gates, need_down, need_up, _ = ctx.needs_input_grad
        act, act_backward = ACTIVATIONS[ctx.activation], ACTIVATION_BACKWARD[ctx.activation]
        (T, M), N = ids.shape, down.shape[0]
        grad_y = grad_y.to(up.dtype)
        grad_x = torch.empty_like(x) if need_x else None
        grad_gates = torch.empty(T, M, dtype=s.dtype, device=s.device) if need_gates else None
        grad_down = torch.zeros(down.shape, dtype=s.dtype, device=s.device) if need_down else None
        grad_up = torch.zeros(up.shape, dtype=s.dtype, device=s.device) if need_up else None
        for rows in token_chunks(T, N):
            ids_c, s_c, gates_c = ids[rows], s[rows], gates[rows].to(s.dtype)
            activated = act(s_c)
            grad_coef = selected_dots(grad_y[rows], up, ids_c)
            if need_gates:
                grad_gates[rows] = grad_coef * activated
            if need_up:
                grad_up += matmul(dense_coefficients(gates_c * activated, ids_c, N, up.dtype).t(), grad_y[rows])
            if need_x or need_down:
                ws = dense_coefficients(act_backward(grad_coef * gates_c, s_c), ids_c, N, down.dtype)
                if need_x:
                    grad_x[rows] = matmul(ws, down)
                if need_down:
                    grad_down += matmul(ws.t(), x[rows])
        return (grad_x, None, grad_gates.to(gates.dtype) if need_gates else None,
                grad_down.to(down.dtype) if need_down else None, grad_up.to(up.dtype) if need_up else None, None)


def expert_mixture(x: torch.Tensor, ids: torch.Tensor, gates: torch.Tensor, down: torch.Tensor,
                   up: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    """x (..., d), ids/gates (..., H, k) (ids int64), down/up (N, d) -> (..., d)
    ``= Σ_h Σ_j gate · act(down[e]·x) · up[e]`` through dense products over all ``N`` experts."""
    d = x.shape[-1]
    xf = x.reshape(-1, d).contiguous()
    idsf = ids.reshape(xf.shape[0], ids.shape[-2] * ids.shape[-1]).contiguous()
    y = DenseMixture.apply(xf, idsf, gates.reshape(idsf.shape), down, up, activation)
    return y.reshape(x.shape)


def weighted_rows(weights: torch.Tensor, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``y[t] = Σ_j weights[t, j]·table[ids[t, j]]`` (the PKM read) as ``scatter_add(ids, weights) · table``:
    weights (T, M), ids (T, M) int64, table (N, d) -> (T, d) in the table dtype; differentiable in ``weights`` and
    ``table``."""
    return RowSum.apply(weights.to(compute_dtype(table)), ids, table, DenseKernels, {})
