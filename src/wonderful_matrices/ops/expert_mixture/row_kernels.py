"""Expert mixture with Triton kernels (GPU; also CPU under ``TRITON_INTERPRET=1``).

The mixture ``y[t] = Σ_j gate[t,j]·act(s[t,j])·up[e]`` with ``s[t,j] = down[e]·x[t]`` (``e = ids[t,j]``,
``M = H·k`` selections per token) is one autograd Function, :class:`Mixture`, of five launches (plus the sort by
expert); every launch reads the selected table rows by id straight from the ``(N, d)`` table, multiplies in
float32 and writes its output once. No ``(T, N)`` or ``(T, M, d)`` tensor exists, and no float32 copy of a table.

Forward (two launches):

* ``row_dots`` with the forward epilogue: ``s = down[e]·x[t]`` and ``coef = gate·act(s)`` (both ``(T, M)``
  float32, kept for the backward): reads each selected ``down`` row once.
* ``row_sum``: ``y[t] = Σ_j coef[t,j]·up[e]``: reads each selected ``up`` row once.

Backward (three launches): with ``grad_coef = grad_y[t]·up[e]``,

* ``row_dots`` with the backward epilogue: ``grad_s = grad_coef·gate·act'(s)`` and
  ``grad_gate = grad_coef·act(s)``: reads each selected ``up`` row once;
* ``row_sum``: ``grad_x[t] = Σ_j grad_s[t,j]·down[e]``: reads each selected ``down`` row once;
* ``table_grad`` of both tables in one launch, ``grad_down[e] = Σ grad_s·x[t]`` and ``grad_up[e] = Σ coef·grad_y[t]``
  over the selections of expert ``e``: reads activation rows (``x``, ``grad_y``), not table rows.

So each pass reads each selected table row once; the activations ``(T, d)`` a table gradient gathers are small
next to the tables.

``table_grad`` ``G[e] = Σ_{ids[t,j]=e} w[t,j]·vec[t]``: the ``T·M`` selections are sorted by expert once per backward
(``torch.sort`` of the ids, stable) and cut into tiles of ``BLOCK_E = 16`` consecutive
experts; ``bounds[i]`` is the first sorted selection of tile ``i``. A program owns ``TILE_E`` experts (a whole number
of tiles) × ``BLOCK_D`` columns and walks their selections ``BLOCK_R`` at a time: it gathers their ``vec`` rows
``(BLOCK_R, BLOCK_D)`` and adds ``A @ rows`` with ``A[e, r] = w[r]`` where selection ``r`` is expert ``e`` of the
tile, else 0 (a one-hot matrix product on the tensor cores, the segmented sum of the tile's experts). Every gradient
row is written exactly once (zero for unselected experts): no atomics, deterministic. For bf16 rows ``A`` is split
into two bf16 terms (``hi + lo``, together exact to ~2^-16 of ``w``); float32 and fp16 rows multiply in ``tf32x3``
(float32 accuracy). With many experts (2^20: about one selection each) a tile of 16 takes one step, and such a program
is latency-bound (gather, two products, store, with nothing to overlap the gathers with: 0.99 TB/s of written gradient
on an H100, session 14). So the mixture's two gradients share one walk (``PAIRED``: each step loads the sorted ids and
positions once and gathers both row sets, two independent loads in flight), and the autotuner also tries one-stage
programs (no pipeline buffers: more programs resident to hide each other's gathers; its pick at 2^20 on an H200, the
pair in 3.03 ms against 4.70 for two three-stage launches, session 15) and, where the steps are not split, programs
of 32 to 128 experts, whose loops of several steps the compiler pipelines. With few experts (1024: ~1000 selections
each) the steps of a tile are split over ``SPLIT`` programs (about ``STEPS_PER_PROGRAM`` steps each) that write
float32 partial sums, added by one ``sum`` (a small buffer, ``SPLIT·N·d`` per table). A single very hot expert still
makes its own tile longer than the rest (load imbalance, correct).

Launch settings are autotuned on the GPU (a single configuration under the interpreter, small blocks, so tests
exercise the masked tails). Outputs are NaN-poisoned under the interpreter, so an unwritten element fails tests.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import cast
from ..triton_utils import autotune, interpreting, opaque_to_compile, poisoned_empty
from .gather import RowSum

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ACTIVATION_CODES = {"silu": 0, "gelu": 1, "relu": 2}  # the ACT constexpr of the kernels
DOTS, FORWARD, BACKWARD = 0, 1, 2  # the EPILOGUE constexpr of ``_row_dots_kernel``
BLOCK_E = 16  # table_grad: experts per tile (the M side of the one-hot product; 16 is tl.dot's smallest)
BLOCK_R = 16 if interpreting() else 32  # table_grad: sorted selections per step (the K side of the product)
STEPS_PER_PROGRAM = 16  # table_grad: steps of one tile a program takes before the steps are split
PARTIAL_BUDGET = 1 << 26  # table_grad: float32 elements of partial sums when the steps are split (256 MiB)


def _configs(gpu: list[tuple[int, int, int]], interpreted: tuple[int, int], names: tuple[str, str]):
    """Autotune configurations: ``gpu`` (block_a, block_d, num_warps) on a GPU; one small one interpreted."""
    if interpreting():
        return [triton.Config({names[0]: interpreted[0], names[1]: interpreted[1]}, num_warps=1)]
    return [triton.Config({names[0]: a, names[1]: b}, num_warps=w) for a, b, w in gpu]


# Reductions go through ``tl.reduce`` with combine functions of this module rather than ``tl.sum``, and the
# sigmoid is written out: ``tl.sum``/``tl.sigmoid`` are jit functions of triton's standard library, created in
# compiled mode when triton was imported before TRITON_INTERPRET=1 was set (as in a test session), which the
# interpreter cannot call.
@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _activation(s, ACT: tl.constexpr):
    """``(act(s), act'(s))`` in float32 for ACT 0 silu, 1 gelu (erf form, as ``F.gelu``), 2 relu."""
    if ACT == 0:
        sig = 1.0 / (1.0 + tl.exp(-s))
        value = s * sig
        slope = sig * (1.0 + s * (1.0 - sig))
    elif ACT == 1:
        cdf = 0.5 * (1.0 + tl.math.erf(s * 0.7071067811865476))
        value = s * cdf
        slope = cdf + s * tl.exp(-0.5 * s * s) * 0.3989422804014327
    else:
        value = tl.maximum(s, 0.0)
        slope = tl.where(s > 0.0, 1.0, 0.0)
    return value, slope


@autotune(
    configs=_configs([(16, 256, 4), (32, 128, 4), (16, 512, 8), (8, 1024, 8)], (4, 16), ("BLOCK_M", "BLOCK_D")),
    key=["M", "D", "EPILOGUE"])
@triton.jit
def _row_dots_kernel(vec_ptr, table_ptr, ids_ptr, gate_ptr, s_ptr, out_ptr, aux_ptr, M, D,
                     EPILOGUE: tl.constexpr, ACT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """``dot[t, m] = table[ids[t, m]] · vec[t]`` (float32), then by EPILOGUE: DOTS ``out = dot``; FORWARD
    ``out = dot`` (= s), ``aux = gate·act(dot)`` (= coef); BACKWARD (``dot`` = grad_coef, ``s`` loaded)
    ``out = dot·gate·act'(s)`` (= grad_s), ``aux = dot·act(s)`` (= grad_gate, in aux's dtype).
    grid (T, cdiv(M, BLOCK_M)); every (T, M) operand is contiguous."""
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
    dot = tl.reduce(acc, 1, _add)
    at = t * M + offs_m
    if EPILOGUE == 0:  # DOTS
        tl.store(out_ptr + at, dot, mask=mask_m)
    elif EPILOGUE == 1:  # FORWARD
        gate = tl.load(gate_ptr + at, mask=mask_m, other=0.0).to(tl.float32)
        value, _ = _activation(dot, ACT)
        tl.store(out_ptr + at, dot, mask=mask_m)
        tl.store(aux_ptr + at, gate * value, mask=mask_m)
    else:
        gate = tl.load(gate_ptr + at, mask=mask_m, other=0.0).to(tl.float32)
        s = tl.load(s_ptr + at, mask=mask_m, other=0.0)
        value, slope = _activation(s, ACT)
        tl.store(out_ptr + at, dot * gate * slope, mask=mask_m)
        tl.store(aux_ptr + at, (dot * value).to(aux_ptr.dtype.element_ty), mask=mask_m)


@autotune(
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


# table_grad launch settings (experts per program, columns per program, warps, stages): tiles of BLOCK_E experts, and
# where the steps are not split (SPLIT = 1: many experts, few selections each) also wider ones (module docstring); the
# one-stage ones leave the registers and shared memory of a software pipeline (no use to a program of one step) to more
# resident programs, hiding the gathers' latency with other programs
TABLE_GRAD_CONFIGS = [(16, 128, 4, 3), (16, 256, 4, 3), (16, 256, 8, 3), (16, 512, 8, 3),
                      (32, 256, 8, 3), (64, 128, 8, 3), (64, 256, 8, 3), (128, 128, 8, 3),
                      (16, 64, 2, 1), (16, 128, 4, 1), (16, 256, 4, 1), (16, 256, 8, 1)]


def _prune_table_grad(configs, named_args, **kwargs):
    """Only programs of one tile of experts where a tile's steps are split over programs (``SPLIT > 1``: the
    partial sums are per tile)."""
    if named_args["SPLIT"] == 1:
        return configs
    return [c for c in configs if c.kwargs["TILE_E"] == BLOCK_E]


@triton.jit
def _one_hot_product(acc, a, rows, HI_LO: tl.constexpr):
    """``acc + a @ rows``: ``a`` (TILE_E, BLOCK_R) float32, as two bf16 terms for bf16 ``rows``, else in tf32x3."""
    if HI_LO:
        hi = a.to(tl.bfloat16)
        lo = (a - hi.to(tl.float32)).to(tl.bfloat16)
        acc = tl.dot(hi, rows, acc)
        acc = tl.dot(lo, rows, acc)
    else:
        acc = tl.dot(a, rows.to(tl.float32), acc, input_precision="tf32x3")
    return acc


@autotune(
    configs=[triton.Config({"TILE_E": BLOCK_E, "BLOCK_D": 16}, num_warps=1)] if interpreting() else
    [triton.Config({"TILE_E": e, "BLOCK_D": b}, num_warps=w, num_stages=st) for e, b, w, st in TABLE_GRAD_CONFIGS],
    key=["N", "D", "SPLIT", "PAIRED"], prune_configs_by={"early_config_prune": _prune_table_grad})
@triton.jit
def _table_grad_kernel(bounds_ptr, sorted_ptr, order_ptr, w_ptr, vec_ptr, out_ptr, w2_ptr, vec2_ptr, out2_ptr, N, D,
                       SPLIT, M: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr, HI_LO: tl.constexpr,
                       PAIRED: tl.constexpr, TILE_E: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[s, e, :] = Σ w[p] · vec[p // M, :] over the sorted selections ``p = order[r]`` of expert e (those with
    ``sorted[r] = e``) in steps ``i ≡ s (mod SPLIT)`` of BLOCK_R; grid (cdiv(N, TILE_E), cdiv(D, BLOCK_D),
    SPLIT), ``bounds`` per tile of BLOCK_E experts (TILE_E a multiple of BLOCK_E). With SPLIT = 1, ``out`` is the
    gradient itself (table dtype); otherwise a float32 (SPLIT, N, D) buffer of partial sums. PAIRED: also ``out2``
    from ``w2``/``vec2`` (same shapes and dtypes) over the same selections — the mixture's two table gradients from one
    walk of the sorted selections. HI_LO: bf16 ``vec`` (``w`` as two bf16 terms), else the product runs in tf32x3.
    M (selections per token) is a constant so that ``p // M`` compiles to shifts and multiplies, not a 64-bit
    division per gathered row."""
    tile = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    split = tl.program_id(2)
    first = tile.to(tl.int64) * TILE_E
    offs_e = first + tl.arange(0, TILE_E)
    tiles_per_program: tl.constexpr = TILE_E // BLOCK_E
    begin = tl.load(bounds_ptr + tile * tiles_per_program)
    end = tl.load(bounds_ptr + tl.minimum((tile + 1) * tiles_per_program, (N + BLOCK_E - 1) // BLOCK_E))
    acc = tl.full([TILE_E, BLOCK_D], 0.0, tl.float32)
    acc2 = tl.full([TILE_E, BLOCK_D], 0.0, tl.float32)
    for r0 in range(begin + split * BLOCK_R, end, SPLIT * BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        live = offs_r < end
        expert = tl.load(sorted_ptr + offs_r, mask=live, other=-1).to(tl.int64)
        pos = tl.load(order_ptr + offs_r, mask=live, other=0)
        at = (pos // M)[:, None] * D + offs_d[None, :]
        hit = offs_e[:, None] == expert[None, :]  # (TILE_E, BLOCK_R): selection r is expert e of the program
        w = tl.load(w_ptr + pos, mask=live, other=0.0).to(tl.float32)
        rows = tl.load(vec_ptr + at, mask=live[:, None] & mask_d[None, :], other=0.0)
        acc = _one_hot_product(acc, tl.where(hit, w[None, :], 0.0), rows, HI_LO)
        if PAIRED:
            w2 = tl.load(w2_ptr + pos, mask=live, other=0.0).to(tl.float32)
            rows2 = tl.load(vec2_ptr + at, mask=live[:, None] & mask_d[None, :], other=0.0)
            acc2 = _one_hot_product(acc2, tl.where(hit, w2[None, :], 0.0), rows2, HI_LO)
    out_at = split.to(tl.int64) * N * D + offs_e[:, None] * D + offs_d[None, :]
    mask = (offs_e < N)[:, None] & mask_d[None, :]
    tl.store(out_ptr + out_at, acc.to(out_ptr.dtype.element_ty), mask=mask)
    if PAIRED:
        tl.store(out2_ptr + out_at, acc2.to(out2_ptr.dtype.element_ty), mask=mask)


def step_split(selections: int, num_experts: int, d: int, tables: int = 1) -> int:
    """Programs sharing one tile of experts in ``table_grad``: about ``STEPS_PER_PROGRAM`` steps of ``BLOCK_R``
    selections each (1 when experts are many and selections per tile few), at most 64 and at most
    ``PARTIAL_BUDGET`` float32 elements of partial sums for the ``tables`` gradients together."""
    tiles = triton.cdiv(num_experts, BLOCK_E)
    split = selections // (tiles * BLOCK_R * STEPS_PER_PROGRAM)
    return int(max(1, min(64, split, PARTIAL_BUDGET // max(tables * num_experts * d, 1))))


def sort_by_expert(ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids (T, M) -> sorted ids (T·M,), order (T·M,) flat positions sorted by expert (stable) and bounds
    (cdiv(N, BLOCK_E) + 1,): the first sorted position of each tile of ``BLOCK_E`` experts, then ``T·M``."""
    key = ids.reshape(-1)
    key = key.int() if num_experts < 2 ** 31 else key  # 32-bit keys sort faster
    sorted_ids, order = torch.sort(key, stable=True)
    firsts = torch.arange(0, triton.cdiv(num_experts, BLOCK_E) + 1, device=ids.device, dtype=key.dtype) * BLOCK_E
    return sorted_ids, order, torch.searchsorted(sorted_ids, firsts)


def _row_dots_fake(vec: torch.Tensor, table: torch.Tensor, ids: torch.Tensor, epilogue: int, act: int,
                   gates: torch.Tensor | None, s: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    T, M = ids.shape
    aux_shape = (0,) if epilogue == DOTS else (T, M)
    return (table.new_empty(T, M, dtype=torch.float32),
            table.new_empty(aux_shape, dtype=gates.dtype if epilogue == BACKWARD else torch.float32))


@opaque_to_compile("expert_row_dots", _row_dots_fake)
def _row_dots(vec: torch.Tensor, table: torch.Tensor, ids: torch.Tensor, epilogue: int, act: int,
              gates: torch.Tensor | None, s: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`row_dots`' launch -> ``(out, aux)``, ``aux`` empty for DOTS."""
    T, M = ids.shape
    out = poisoned_empty(T, M, dtype=torch.float32, device=table.device)
    aux = torch.empty(0, dtype=torch.float32, device=table.device) if epilogue == DOTS else \
        poisoned_empty(T, M, dtype=torch.float32 if epilogue == FORWARD else gates.dtype, device=table.device)
    if T:
        grid = lambda meta: (T, triton.cdiv(M, meta["BLOCK_M"]))  # noqa: E731
        _row_dots_kernel[grid](vec, table, ids, out if gates is None else gates, out if s is None else s, out,
                               out if epilogue == DOTS else aux, M, table.shape[1], EPILOGUE=epilogue, ACT=act)
    return out, aux


def row_dots(vec: torch.Tensor, table: torch.Tensor, ids: torch.Tensor, epilogue: int = DOTS, act: int = 0,
             gates: torch.Tensor | None = None, s: torch.Tensor | None = None
             ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``dot = table[ids]·vec``: vec (T, d), table (N, d), ids (T, M), gates/s (T, M) contiguous. DOTS: dot
    (T, M) float32; FORWARD: (s, coef) float32; BACKWARD (vec = grad_y, s given): (grad_s float32, grad_gates
    in the gates dtype)."""
    out, aux = _row_dots(vec, table, ids, epilogue, act, gates, s)
    return out if epilogue == DOTS else (out, aux)


def _row_sum_fake(w: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return table.new_empty(ids.shape[0], table.shape[1])


@opaque_to_compile("expert_row_sum", _row_sum_fake)
def row_sum(w: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """w (T, M), table (N, d), ids (T, M) contiguous -> (T, d) in the table dtype."""
    T, M = ids.shape
    D = table.shape[1]
    out = poisoned_empty(T, D, dtype=table.dtype, device=table.device)
    if T:
        grid = lambda meta: (T, triton.cdiv(D, meta["BLOCK_D"]))  # noqa: E731
        _row_sum_kernel[grid](w, table, ids, out, M, D)
    return out


def _table_grad_fake(w: torch.Tensor, vec: torch.Tensor, w2: torch.Tensor | None, vec2: torch.Tensor | None, M: int,
                     table: torch.Tensor, sorted_ids: torch.Tensor, order: torch.Tensor,
                     bounds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(table), torch.empty_like(table) if w2 is not None else table.new_empty(0)


@opaque_to_compile("expert_table_grad", _table_grad_fake)
def _table_grad(w: torch.Tensor, vec: torch.Tensor, w2: torch.Tensor | None, vec2: torch.Tensor | None, M: int,
                table: torch.Tensor, sorted_ids: torch.Tensor, order: torch.Tensor,
                bounds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`table_grad` / :func:`table_grad_pair` with the sort by expert as three tensors -> ``(G, G2)``, ``G2``
    empty when ``w2`` is None."""
    N, D = table.shape
    paired = w2 is not None
    split = step_split(order.numel(), N, D, tables=2 if paired else 1)

    def buffer():
        return (poisoned_empty(N, D, dtype=table.dtype, device=table.device) if split == 1
                else poisoned_empty(split, N, D, dtype=torch.float32, device=table.device))

    outs = [buffer() for _ in range(2 if paired else 1)]
    grid = lambda meta: (triton.cdiv(N, meta["TILE_E"]), triton.cdiv(D, meta["BLOCK_D"]), split)  # noqa: E731
    _table_grad_kernel[grid](bounds, sorted_ids, order, w, vec, outs[0], w2 if paired else w,
                             vec2 if paired else vec, outs[-1], N, D, split, M=M, BLOCK_E=BLOCK_E, BLOCK_R=BLOCK_R,
                             HI_LO=vec.dtype == torch.bfloat16, PAIRED=paired)
    if split > 1:
        outs = [out.sum(0).to(table.dtype) for out in outs]
    return outs[0], outs[1] if paired else table.new_empty(0)


def table_grad(w: torch.Tensor, vec: torch.Tensor, M: int, table: torch.Tensor, by_expert) -> torch.Tensor:
    """``G[e] = Σ_{ids[t,j]=e} w[t,j]·vec[t]``: w (T, M) and vec (T, d) contiguous, ``by_expert`` from
    :func:`sort_by_expert` -> (N, d) in the table dtype."""
    return _table_grad(w, vec, None, None, M, table, *by_expert)[0]


def table_grad_pair(w: torch.Tensor, vec: torch.Tensor, w2: torch.Tensor, vec2: torch.Tensor, M: int,
                    table: torch.Tensor, by_expert) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`table_grad` of ``(w, vec)`` and of ``(w2, vec2)`` (same shapes and dtypes) over the same selections in
    one launch: each program reads the sorted selections once for both -> two (N, d) in the table dtype."""
    return _table_grad(w, vec, w2, vec2, M, table, *by_expert)


class Mixture(torch.autograd.Function):
    """The mixture as five launches (see the module docstring): x (T, d), ids (T, M) int64, gates (T, M), down/up
    (N, d), all contiguous, act an ``ACTIVATION_CODES`` value -> y (T, d) in the dtype of x."""

    @staticmethod
    def forward(ctx, x, ids, gates, down, up, act):
        s, coef = row_dots(x, down, ids, FORWARD, act, gates=gates)
        ctx.save_for_backward(x, ids, gates, down, up, s, coef)
        ctx.act = act
        return cast(row_sum(coef, up, ids), x.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        x, ids, gates, down, up, s, coef = ctx.saved_tensors
        grad_y = grad_y.to(x.dtype).contiguous()
        grad_s, grad_gates = row_dots(grad_y, up, ids, BACKWARD, ctx.act, gates=gates, s=s)
        need_x, _, need_gates, need_down, need_up, _ = ctx.needs_input_grad
        grad_x = row_sum(grad_s, down, ids).to(x.dtype) if need_x else None
        M, N = ids.shape[1], down.shape[0]
        grad_down = grad_up = None
        if need_down and need_up:  # one walk of the selections for both tables (same shape and dtype: x's)
            grad_down, grad_up = table_grad_pair(grad_s, x, coef, grad_y, M, down, sort_by_expert(ids, N))
        elif need_down:
            grad_down = table_grad(grad_s, x, M, down, sort_by_expert(ids, N))
        elif need_up:
            grad_up = table_grad(coef, grad_y, M, up, sort_by_expert(ids, N))
        return grad_x, None, grad_gates if need_gates else None, grad_down, grad_up, None


class TritonKernels:
    """``row_dots``, ``row_sum`` and ``table_grad`` (the interface of ``gather.BagKernels``) as Triton launches,
    for the PKM read (``gather.RowSum``)."""

    @staticmethod
    def row_dots(vec: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """vec (T, d), table (N, d), ids (T, M) -> (T, M) float32."""
        return row_dots(vec.contiguous(), table, ids)

    @staticmethod
    def row_sum(w: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """w (T, M), table (N, d), ids (T, M) -> (T, d) in the table dtype."""
        return row_sum(w.contiguous(), table, ids)

    @staticmethod
    def table_grad(w: torch.Tensor, vec: torch.Tensor, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """G[e] = Σ_{ids[t,j]=e} w[t,j]·vec[t]: (N, d) in the table dtype."""
        return table_grad(w.contiguous(), vec.contiguous(), ids.shape[1], table, sort_by_expert(ids, table.shape[0]))


def expert_mixture(x: torch.Tensor, ids: torch.Tensor, gates: torch.Tensor, down: torch.Tensor,
                   up: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    """x (..., d), ids/gates (..., H, k), down/up (N, d) -> (..., d); float32/bf16/fp16 tables."""
    d = x.shape[-1]
    xf = x.reshape(-1, d).contiguous()
    idsf = ids.reshape(xf.shape[0], ids.shape[-2] * ids.shape[-1]).contiguous()
    y = Mixture.apply(xf, idsf, gates.reshape(idsf.shape).contiguous(), down.contiguous(), up.contiguous(),
                      ACTIVATION_CODES[activation])
    return y.reshape(x.shape)


def weighted_rows(weights: torch.Tensor, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``y[t] = Σ_j weights[t, j]·table[ids[t, j]]`` (the PKM read): weights (T, M), ids (T, M) int64,
    table (N, d) -> (T, d) in the table dtype; differentiable in ``weights`` and ``table``."""
    return RowSum.apply(weights.float().contiguous(), ids.contiguous(), table.contiguous(), TritonKernels)
