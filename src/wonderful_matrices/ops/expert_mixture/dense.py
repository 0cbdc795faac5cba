"""Expert mixture as dense matrix products over all ``N`` experts, for pools of few experts.

With ``ids (T, M)`` (``M = H·k`` selections per token) and tables ``down, up (N, d)``, every primitive of the
mixture is one ``(T × N × d)`` matrix product plus a gather from, or a scatter into, a ``(T, N)`` matrix:

* forward: ``s = (x · downᵀ).gather(ids)``; ``coef = gate·act(s)``; ``W[t, e] = Σ_{ids[t,j]=e} coef[t, j]``
  (duplicate ids in a row add up); ``y = W · up``;
* backward: ``grad_coef = (grad_y · upᵀ).gather(ids)``; ``grad_gate = grad_coef·act(s)``;
  ``grad_s = grad_coef·gate·act'(s)``; ``grad_up = Wᵀ · grad_y``; ``Ws[t, e] = Σ_{ids[t,j]=e} grad_s[t, j]``;
  ``grad_x = Ws · down``; ``grad_down = Wsᵀ · x``.

Six GEMMs (2 forward, 4 backward) of ``2·T·N·d`` FLOP each: on tensor cores this beats gathering the ``T·M``
selected rows (``row_kernels.py``, ``gather.py``) while ``N`` is a small multiple of ``M`` (``expert_mixture``'s
``DENSE_FACTOR``); with 2^20 experts the gathers win by far.

Tokens go in chunks of at most ``DENSE_BUDGET // token_bytes(N, dtype)`` rows (bytes: a product output row in the
compute dtype plus a coefficient row in the table dtype), so the ``(chunk, N)`` buffers stay bounded; nothing
``(T, N)`` is saved for the backward (it keeps ``x``, ``ids``, ``gates`` and ``s (T, M)`` and rebuilds ``W`` and
``Ws`` chunk by chunk). Table gradients accumulate in float32 ``(N, d)`` across chunks and are rounded to the table
dtype once. The backward builds ``W`` and ``Ws`` together, as one ``(2, chunk, N)`` zero matrix and one scatter
(:meth:`IdRuns.coefficient_rows`), and its GEMMs read them transposed where they need ``Wᵀ`` / ``Wsᵀ``. A distinct
shape matters under ``torch.compile``: a backward that built its matrices from the same ``(chunk, N)`` zero matrix
as the forward had it merged with the forward's by common-subexpression elimination and kept alive from the forward
to the backward (151 MB per layer at cheems-base's 2 × 16K tokens); building them by expert, ``(N, chunk)``, avoided
that but scattered across rows, about twice as slow as the row-wise scatter (session 19's 16K profile on an H100:
159 µs for the pair against 42 µs for the forward's one matrix).

Precision for half-precision tables (bf16, fp16): the products take half operands and accumulate in float32; the
selected dots and the table gradients come out in float32 (``torch.mm(..., out_dtype=torch.float32)`` on CUDA; on
the CPU the operands are widened to float32 first, the same arithmetic), the row sums ``y`` and ``grad_x`` in the
table dtype, rounded once from the float32 accumulator (by the GEMM itself on CUDA); ``s``, ``coef``, ``grad_s`` and
``grad_coef`` are float32 as in the other backends. ``W`` and
``Ws`` are built directly in the table dtype (:class:`IdRuns`): the entries of equal ids in a row are summed in
float32 in the ``(chunk, M)`` space, in a fixed order, and written once into a zero matrix by a plain scatter —
one rounding of each coefficient, the same relative error (2^-9 in bf16) as rounding the input ``x``, well inside
the bf16 bounds the gather backends meet (tests/ops/test_expert_mixture_dense.py measures it against float64),
and bit-identical from run to run (no atomic adds). Float32 and float64 tables get float32 / float64 matrices.
A Triton kernel that wrote the matrices in one launch each (the backward's ``W`` and ``Ws`` in one) was slower and
was removed: on an H100 at cheems-base's CDMoE layer (below; d = 768) the compiled forward + backward took 4.33 ms
per layer with it against 1.83 ms with IdRuns (docs/results.md, session 12; the kernel is in the git history before
its removal).

The selected dots ``s`` and ``grad_coef`` stay a float32 product output plus a gather: one ``(chunk, N)`` float32
write each. Computing only the ``T·M`` selected dots instead (a row-gathering backend) would read ``T·M·d`` half
values, 1.6 GB at cheems-base's shape below, five times the 302 MB the product writes.

Bytes per layer and training step at cheems-base's CDMoE (``T = 32768`` tokens, ``N = 2304``, ``M = 32``, bf16
tables; a ``(T, N)`` matrix is 302 MB in float32, 151 MB in bf16), counting the ``(T, N)`` matrices' traffic
outside the GEMMs' own reads of the tables and activations:

* before (float32 coefficient matrices): 2 float32 product outputs written (604 MB); for each of ``W`` (forward),
  ``W`` and ``Ws`` (backward) a float32 zeros (302), its rounding to bf16 (302 read + 151 written): 3 × 755 MB; the
  GEMMs reading the bf16 coefficients 4 × 151 MB — about 3.5 GB;
* now: the 2 float32 product outputs (604 MB), 3 bf16 zeros (453 MB) and the same 4 × 151 MB of GEMM reads — about
  1.7 GB. The run sums work on ``(T, M)`` tensors (2^20 entries: a sort, ``log2 M = 5`` masked shifted adds and
  a few gathers, of the order of 0.1–0.2 GB per coefficient matrix, sorting shared by ``W`` and ``Ws``).
"""
from __future__ import annotations

import torch

from ..common import cast
from .gather import RowSum, compute_dtype
from .naive import ACTIVATIONS

DENSE_BUDGET = 1 << 29  # bytes of the (chunk, N) buffers of one chunk (512 MiB): see token_bytes
HALF_DTYPES = (torch.float16, torch.bfloat16)

# act'(s) · grad through ATen's own activation derivatives (those autograd uses for F.silu / F.gelu / F.relu)
ACTIVATION_BACKWARD = {
    "silu": lambda grad, s: torch.ops.aten.silu_backward(grad, s),
    "gelu": lambda grad, s: torch.ops.aten.gelu_backward(grad, s),
    "relu": lambda grad, s: torch.ops.aten.threshold_backward(grad, s, 0),
}


def token_bytes(N: int, dtype: torch.dtype) -> int:
    """Bytes per token of the (chunk, N) buffers for tables of ``dtype``: a product output row in the compute dtype
    (float32 for half tables) plus a coefficient row in ``dtype`` — 6·N for bf16/fp16, 8·N float32, 16·N float64.
    The product output is freed before a coefficient matrix is built, and the backward builds ``W`` and ``Ws`` one
    after the other (each where it is used), so this bounds the live (chunk, N) bytes (on the CPU a half coefficient
    matrix and its float32 copy for the product: the same 6·N)."""
    compute = torch.float32 if dtype in HALF_DTYPES else dtype
    return N * (compute.itemsize + dtype.itemsize)


def token_chunks(T: int, per_token: int) -> list[slice]:
    """Row ranges of at most ``DENSE_BUDGET // per_token`` tokens (at least one; ``DENSE_BUDGET`` and
    ``per_token`` in bytes, see :func:`token_bytes`), as equal as possible, covering ``T``."""
    most = max(1, DENSE_BUDGET // per_token)
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


def matmul_rounded(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``a (m, k) · b (k, n)`` rounded once to ``dtype`` (a row sum, in the table dtype): on CUDA, with both operands in
    ``dtype``, the GEMM rounds its float32 accumulator itself (no float32 ``(m, n)`` product written and read back by
    a cast: one such round trip of a ``(T, d)`` matrix per call otherwise); elsewhere :func:`matmul` then a cast."""
    if a.is_cuda and a.dtype == b.dtype == dtype:
        return torch.mm(a, b)
    return matmul(a, b).to(dtype)


def joined(parts: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The chunks' row blocks as one tensor (the one block itself when there is one chunk: no copy; no tokens, no
    chunks: an empty ``(0, d)`` tensor of ``like``'s width, dtype and device)."""
    if not parts:
        return like.new_empty(0, like.shape[-1])
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class IdRuns:
    """The runs of equal expert ids in each row of ``ids (c, M)`` int64, for building dense coefficient matrices
    without adding into them: ``coefficients(w)[t, e] = Σ_{ids[t,j]=e} w[t, j]`` is summed in the ``(c, M)`` space
    in the dtype of ``w``, then written once, rounded once to the table dtype, by a plain scatter.

    The ids are sorted per row (stable), the sorted values summed per run by a segmented inclusive scan
    (``ceil(log2 M)`` shifted adds, each adding only within a run), and every member of a run takes its run's total
    (the scan's value at the run's last member), so the scatter's duplicate writes carry equal values: the result is
    deterministic (no atomics, a fixed order of additions) on every device. The sorting and the run structure depend
    on the ids alone and are shared by all coefficient matrices of a chunk."""

    def __init__(self, ids: torch.Tensor):
        self.ids, self.order = ids.sort(dim=1, stable=True)
        M, shift = ids.shape[1], 1
        self.same = []  # (shift, (c, M - shift) bool: sorted entry j + shift is in the run of entry j)
        while shift < M:
            self.same.append((shift, self.ids[:, shift:] == self.ids[:, :-shift]))
            shift *= 2
        self.last = torch.searchsorted(self.ids, self.ids, right=True) - 1  # (c, M) the last member of each run

    def totals(self, w: torch.Tensor) -> torch.Tensor:
        """w (..., c, M) -> (..., c, M) in the dtype of ``w``, in the sorted order of the ids: each entry is the sum
        of ``w`` over its run of equal ids."""
        v = w.gather(-1, self.order.expand(w.shape))
        for shift, same in self.same:
            v[..., shift:] += torch.where(same, v[..., :-shift], 0)
        return v.gather(-1, self.last.expand(w.shape))

    def coefficients(self, totals: torch.Tensor, N: int, dtype: torch.dtype, by_expert: bool = False) -> torch.Tensor:
        """totals (c, M) from :meth:`totals` -> (c, N) in ``dtype``: the run totals rounded once, zero elsewhere;
        ``by_expert``: its transpose, built as an (N, c) matrix (what a table gradient multiplies)."""
        if by_expert:
            out = torch.zeros(N, totals.shape[0], dtype=dtype, device=totals.device)
            return out.scatter_(0, self.ids.t(), totals.to(dtype).t())
        out = torch.zeros(totals.shape[0], N, dtype=dtype, device=totals.device)
        return out.scatter_(1, self.ids, totals.to(dtype))

    def coefficient_rows(self, totals: torch.Tensor, N: int, dtype: torch.dtype) -> torch.Tensor:
        """totals (k, c, M) from :meth:`totals` -> (k, c, N) in ``dtype``: :meth:`coefficients` of each of the ``k``,
        written by one scatter into one zero matrix."""
        out = torch.zeros(totals.shape[0], totals.shape[1], N, dtype=dtype, device=totals.device)
        return out.scatter_(2, self.ids.expand(totals.shape[0], -1, -1), totals.to(dtype))


def dense_coefficients(w: torch.Tensor, ids: torch.Tensor, N: int, dtype: torch.dtype,
                       by_expert: bool = False) -> torch.Tensor:
    """w (c, M) compute dtype, ids (c, M) int64 -> (c, N) in ``dtype``: ``out[t, e] = Σ_{ids[t,j]=e} w[t, j]``,
    summed in the compute dtype and rounded once, deterministically (:class:`IdRuns`); ``by_expert``: its
    transpose (N, c)."""
    runs = IdRuns(ids)
    return runs.coefficients(runs.totals(w), N, dtype, by_expert)


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
        for rows in token_chunks(ids.shape[0], token_bytes(table.shape[0], table.dtype)):
            out[rows] = selected_dots(vec[rows], table, ids[rows])
        return out

    @staticmethod
    def row_sum(w: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """w (T, M), table (N, d), ids (T, M) int64 -> (T, d) in the table dtype."""
        N = table.shape[0]
        w = w.to(compute_dtype(table))
        return joined([matmul_rounded(dense_coefficients(w[rows], ids[rows], N, table.dtype), table, table.dtype)
                       for rows in token_chunks(ids.shape[0], token_bytes(N, table.dtype))], table)

    @staticmethod
    def table_grad(w: torch.Tensor, vec: torch.Tensor, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """G[e] = Σ_{ids[t,j]=e} w[t,j]·vec[t]: w (T, M), vec (T, d) -> (N, d) in the table dtype (accumulated in the
        compute dtype over the chunks)."""
        N = table.shape[0]
        compute = compute_dtype(table)
        grad = torch.zeros(table.shape, dtype=compute, device=table.device)
        w, vec = w.to(compute), vec.to(table.dtype)
        for rows in token_chunks(ids.shape[0], token_bytes(N, table.dtype)):
            grad += matmul(dense_coefficients(w[rows], ids[rows], N, table.dtype, by_expert=True), vec[rows])
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
        return cast(DenseKernels.row_sum(coef, up, ids), x.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        x, ids, gates, down, up, s = ctx.saved_tensors
        need_x, _, need_gates, need_down, need_up, _ = ctx.needs_input_grad
        need_ws = need_x or need_down
        act, act_backward = ACTIVATIONS[ctx.activation], ACTIVATION_BACKWARD[ctx.activation]
        (T, M), N = ids.shape, down.shape[0]
        grad_y = grad_y.to(up.dtype)
        grad_x = []  # row blocks, one per chunk
        grad_gates = torch.empty(T, M, dtype=s.dtype, device=s.device) if need_gates else None
        grad_down = torch.zeros(down.shape, dtype=s.dtype, device=s.device) if need_down else None
        grad_up = torch.zeros(up.shape, dtype=s.dtype, device=s.device) if need_up else None
        for rows in token_chunks(T, token_bytes(N, up.dtype)):
            ids_c, s_c, gates_c = ids[rows], s[rows], gates[rows].to(s.dtype)
            activated = act(s_c)
            grad_coef = selected_dots(grad_y[rows], up, ids_c)
            if need_gates:
                grad_gates[rows] = grad_coef * activated
            if not (need_up or need_ws):
                continue
            values = ([gates_c * activated] if need_up else []) + \
                ([act_backward(grad_coef * gates_c, s_c)] if need_ws else [])
            # W's and Ws's entries summed per run of equal ids together (one sort and one scan), both matrices
            # written by one scatter; the float32 product behind grad_coef is freed by then, so the two (chunk, N)
            # matrices stay within token_bytes
            runs = IdRuns(ids_c)
            mats = runs.coefficient_rows(runs.totals(torch.stack(values)), N, up.dtype)
            if need_up:
                grad_up += matmul(mats[0].t(), grad_y[rows])
            if need_ws:
                ws = mats[-1]  # (chunk, N)
                if need_x:
                    grad_x.append(matmul_rounded(ws, down, x.dtype))
                if need_down:
                    grad_down += matmul(ws.t(), x[rows])
        return (joined(grad_x, x) if need_x else None, None, grad_gates.to(gates.dtype) if need_gates else None,
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
    return RowSum.apply(weights.to(compute_dtype(table)), ids, table, DenseKernels)
