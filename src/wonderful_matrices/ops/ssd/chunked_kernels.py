"""SSD with Triton kernels: forward and backward of the chunked dual algorithm (a ``torch.autograd.Function``).

Notation (per batch row ``b``, head ``h``, chunk ``c`` of ``Q`` steps; ``i, j`` positions inside the chunk):
``a_t = dt_t·A_h <= 0``, ``cum_i = Σ_{t<=i} a_t`` (running sum inside the chunk), ``S_c`` the state entering
chunk ``c`` (``p × n``; ``S_0`` = initial state), head ``h`` reading group ``h // (H/G)`` of ``B`` and ``C``.

Forward kernels (each timed separately by ``scripts/gpu_ssd.sh``):

1. ``cumsum``: ``cum`` (b, h, chunks, Q) float32;
2. ``cb``: ``CB_ij = C_i·B_j`` per chunk and group (b, chunks, g, Q, Q) float32, shared by the group's heads
   (run again in the backward rather than kept for it);
3. ``chunk_state``: ``U_c = Σ_j exp(cum_last − cum_j)·dt_j·x_j ⊗ B_j`` (a matmul per chunk and head);
4. ``state_pass``: ``S_{c+1} = exp(cum_last_c)·S_c + U_c``, sequential over chunks, in place over ``U``;
   ``states`` (b, chunks+1, h, p, n) float32 holds ``S_0 … S_chunks`` (the last is the final state);
5. ``output``: ``y_i = Σ_{j<=i} CB_ij·exp(cum_i − cum_j)·dt_j·x_j + exp(cum_i)·S_c·C_i + D·x_i``.

Backward, with ``dS_c`` the gradient of the state entering chunk ``c`` (``dS_chunks`` = gradient of the final state):

1. ``chunk_state`` again: ``G_c = Σ_i exp(cum_i)·dy_i ⊗ C_i``;
2. ``state_pass_bwd``: ``dS_c = G_c + exp(cum_last_c)·dS_{c+1}`` in reverse, giving ``d initial_state = dS_0``
   and ``<S_{c+1}, dS_{c+1}>`` (the gradient of ``cum_last``);
3. ``dx2`` (per tile, chunk and head): ``dx_j = dt_j·[Σ_{i>=j} CB_ij·exp(cum_i − cum_j)·dy_i
   + exp(cum_last − cum_j)·dS_{c+1}·B_j] + D·dy_j``;
4. ``dcb`` (per causal tile pair, chunk and split of a group's heads): ``W_ij = (dy_i·x_j)·exp(cum_i − cum_j)``,
   ``dCB_ij = Σ_heads W_ij·dt_j`` (the gradient of ``C_i·B_j``), and per head the row / column sums of ``CB∘W``;
   ``dc2`` and ``db2`` (per tile, chunk and head split): ``dC_i = Σ_{j<=i} dCB_ij·B_j + Σ_heads exp(cum_i)·dy_i·S_c``,
   ``dB_j = Σ_{i>=j} dCB_ij·C_i + Σ_heads exp(cum_last − cum_j)·dt_j·x_j·dS_{c+1}``.
   (Summing over a group's heads inside the program keeps the (Q × Q) products shared; redoing them per head
   spills registers and is slower: docs/kernels_ssd.md has the work counts, compile reports and timings.)
5. ``dcum`` (one small kernel per batch, head and chunk): the gradient of ``cum`` is
   ``dy_k·(y_k − D·x_k) − dt_k·(x_k·dxpre_k) + [k last]·<S_{c+1}, dS_{c+1}>``, where the first term comes from
   ``dc2`` and the row sums of ``dcb`` and ``x_k·dxpre_k`` (the direct part of ``ddt``) from ``dx2`` and the column
   sums of ``dcb``; a reverse running sum inside each chunk turns it into the gradient of ``a``, hence
   ``ddt += A·da`` and ``dA = Σ dt·da``.

Packed documents (``seq_idx`` (b, l), non-decreasing ids; ``HAS_SEQ``): masks inside the existing loops, no extra
pass. A small kernel (``doc_bounds``, once in the forward, saved for the backward) turns ``seq_idx`` into int32
chunk-local bounds per step: where its document starts (−1 if before the chunk) and where it ends (Q − 1 if at or
after the chunk's last step). With ``e_c`` the document of the state entering chunk ``c`` (that of step ``c·Q − 1``;
of step 0 for the first chunk) and ``f_c`` the document of its last step: the decay ``exp(cum_i − cum_j)`` (i >= j)
is masked unless ``j >= start_i`` (equivalently ``i <= end_j``); ``U_c`` sums only steps of ``f_c`` (``end = Q − 1``);
``S_{c+1} = [e_c = f_c]·exp(cum_last)·S_c + U_c`` (``e_c = f_c`` iff the last step's start is −1); the entering term
of ``y_i`` needs ``start_i = −1``. The backward uses the same masks (``G_c`` over steps of ``e_c``, ``dS_c = G_c +
[e_c = f_c]·exp(cum_last)·dS_{c+1}``, dx's and dB's state terms over steps of ``f_c``, dC's over steps of ``e_c``);
the gradient of ``cum`` keeps its form, since every masked term is still ``exp`` of a difference of ``cum``. Row
masks are folded into the load masks the kernels already have (a masked step reads ``dt = 0`` or ``dy = 0``). dx2
branches once per program: if every column's document reaches the chunk's end it runs the unpacked loop, else the
masked one, stopping after the last row those documents reach. The other kernels take no loop bound from loaded
values (that cost registers there: docs/kernels_ssd.md, "Packed documents: cost").

Matrix products take operands in the input dtype (bf16 / fp16; float32 inputs use exact float32 products, not
TF32) and accumulate in float32; decays, states and all sums are float32. Every exponent is ``<= 0`` (segment
differences are masked to ``−inf`` above the diagonal before ``exp``). Lengths that are not a multiple of the
chunk are handled by masked loads (steps past the end read as ``dt = 0, x = 0``), never by padding copies.
The chunk is ``max(16, min(chunk_size, next power of two >= l))``: ``tl.dot`` tiles need 16 rows, and the chunk
length changes only the order of float operations, not the function.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..common import require
from ..triton_utils import dot_block, interpreting, opaque_to_compile, poisoned_empty, pow2_at_least, row_span

# launch settings per kernel (num_warps, num_stages); a starting point for tuning on the H200
CONFIG = {
    "doc_bounds": (4, 1),
    "cumsum": (4, 1),
    "cb": (4, 2),
    "chunk_state": (8, 2),
    "state_pass": (4, 1),
    "output": (4, 2),
    "state_pass_bwd": (4, 1),
    "dx2": (8, 2),
    "dcb": (8, 2),
    "dc2": (8, 2),
    "db2": (8, 2),
    "dcum": (4, 1),
}
# where a head-dim tile is wider than 64 (p > 64: cheems-base's 128), instead of CONFIG's (the output kernel at
# 4 warps takes 240 registers there, two programs per SM; at 8 warps 128, two programs of twice the warps)
CONFIG_WIDE = {"output": (8, 2)}
DCB_HEADS_PER_PROGRAM = 16  # heads a dcb program sums over (partial dCB per head split, summed by dc2 / db2)
BC_HEADS_PER_PROGRAM = 8  # heads a dc2 / db2 program sums over (partial dC / dB per head split, summed in PyTorch)
# products with a float32 operand that keep ~16 bits of it for half inputs (``_mm_f32b``): the forward chunk
# states and dx2's B·dS (both feed the gradient of A through sums that cancel). Also possible: "chunk_state_bwd",
# "dc" (not needed: docs/kernels_ssd.md has the errors measured without each).
SPLIT_SITES = ("chunk_state", "dx")
# head-dim rows of the state per chunk_state program, and per step of db2's contraction over p: wider, they take
# over 128 registers at 8 warps (one program per SM; p = 128, cheems-base: docs/kernels_ssd.md)
P_BLOCK = 64
DC2_COLUMNS = 64  # state columns per dc2 program (a 64 × 128 float32 state tile spills registers at 8 warps)
BLOCK_Q = 64  # rows of a chunk per tile (at most the chunk)
# rows (and columns) of the dcb kernel's tiles, 32 or 64 (at most BLOCK_Q). 64: 10 tile pairs a chunk of 256, but
# 168 registers under triton 3.6 (one program of 8 warps per SM); 32: 36 pairs at 80 (three programs), with products
# too small for wgmma and dy / x tiles read 1.8x as often. docs/kernels_ssd.md, "dcb on 32-row tiles".
DCB_TILE = 64
STATE_BLOCK = 1024  # state elements per program of the sequential passes

_TL_DTYPE = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
SUPPORTED_DTYPES = tuple(_TL_DTYPE)


# ----------------------------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------------------------

@triton.jit
def _mm(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b with float32 accumulation. UPCAST (interpreter only: its bf16 dot is wrong) multiplies the
    already-rounded operands in float32, which gives the same products."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _mm_into(a, b, acc, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b with the product accumulating into ``acc`` (float32) itself (see :func:`_mm`)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=PREC)


@triton.jit
def _mm_f32b(a, b, acc, DT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, SPLIT: tl.constexpr):
    """acc + a @ b for a float32 ``b`` (a state): ``b`` is rounded to DT; with SPLIT (half inputs) the rounding
    error goes through a second product, so the result keeps about 16 bits of ``b``. Both products accumulate into
    ``acc`` in turn: their sum as a separate tile would hold a second accumulator's registers (under triton 3.6,
    132 registers instead of 75 in the forward chunk_state at the paper's shape)."""
    hi = b.to(DT)
    acc = _mm_into(a, hi, acc, PREC, UPCAST)
    if SPLIT:
        acc = _mm_into(a, (b - hi.to(tl.float32)).to(DT), acc, PREC, UPCAST)
    return acc


@triton.jit
def _max_i32(a, b):
    return tl.maximum(a, b)


@triton.jit
def _min_i32(a, b):
    return tl.minimum(a, b)


@triton.jit
def _doc_bounds_kernel(seq_ptr, docs_ptr, L, NC, s_seq_b, s_seq_l, Q: tl.constexpr):
    """docs[b, c] (2, Q) int32 for the steps of chunk ``c`` of row ``b`` (chunk-local indices): row 0 where each
    step's document starts, −1 if it started before the chunk (the state entering the chunk is its state; in the
    first chunk the row's first document takes the initial state); row 1 where it ends, Q − 1 if it reaches the
    chunk's last step. Steps past L belong to the row's last document."""
    pid = tl.program_id(0)
    bi = (pid // NC).to(tl.int64)
    ci = pid % NC
    q = tl.arange(0, Q)
    t = ci * Q + q
    tc = tl.minimum(t, L - 1)
    base = seq_ptr + bi * s_seq_b
    here = tl.load(base + tc * s_seq_l)
    starts = (t > 0) & (t < L) & (here != tl.load(base + tl.maximum(tc - 1, 0) * s_seq_l))
    ends = (q < Q - 1) & (t + 1 < L) & (here != tl.load(base + tl.minimum(tc + 1, L - 1) * s_seq_l))
    start = tl.associative_scan(tl.where(starts, q, -1), 0, _max_i32)
    end = tl.associative_scan(tl.where(ends, q, Q - 1), 0, _min_i32, reverse=True)
    out = docs_ptr + pid.to(tl.int64) * (2 * Q) + q
    tl.store(out, start)
    tl.store(out + Q, end)


@triton.jit
def _doc_row(docs_ptr, bi, ci, NC, END: tl.constexpr, Q: tl.constexpr):
    """Pointer to the starts (END = 0) or the ends (END = 1) of chunk ``ci``'s documents (see _doc_bounds_kernel)."""
    return docs_ptr + ((bi * NC + ci) * 2 + END) * Q


@triton.jit
def _chunk_docs(docs_ptr, bi, ci, NC, Q: tl.constexpr):
    """(entering_end, last_start) of chunk ``ci``: the state entering the chunk reaches its steps
    ``<= entering_end`` (−1: none, a document starts at the chunk's first step); the chunk's last document holds
    its steps ``>= last_start`` (−1: that document began before the chunk, so the chunk holds no document start)."""
    starts = _doc_row(docs_ptr, bi, ci, NC, 0, Q)
    entering_end = tl.where(tl.load(starts) < 0, tl.load(starts + Q), -1)
    return entering_end, tl.load(starts + Q - 1)


@triton.jit
def _cumsum_kernel(dt_ptr, A_ptr, cum_ptr, L, H, NC, s_dt_b, s_dt_l, s_dt_h,
                   Q: tl.constexpr, BLOCK_H: tl.constexpr):
    pid_bc = tl.program_id(0)
    pid_h = tl.program_id(1)
    bi = (pid_bc // NC).to(tl.int64)
    ci = pid_bc % NC
    q = tl.arange(0, Q)
    t = ci * Q + q
    hs = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    hm = hs < H
    dt = tl.load(dt_ptr + bi * s_dt_b + t[:, None] * s_dt_l + hs[None, :] * s_dt_h,
                 mask=(t[:, None] < L) & hm[None, :], other=0.0).to(tl.float32)
    a = tl.load(A_ptr + hs, mask=hm, other=0.0).to(tl.float32)
    cum = tl.cumsum(dt * a[None, :], axis=0)
    tl.store(cum_ptr + ((bi * H + hs[None, :]) * NC + ci) * Q + q[:, None], cum, mask=hm[None, :])


@triton.jit
def _cb_kernel(B_ptr, C_ptr, cb_ptr, L, G, NC, N,
               s_b_b, s_b_l, s_b_g, s_b_n, s_c_b, s_c_l, s_c_g, s_c_n,
               Q: tl.constexpr, BQ: tl.constexpr, BN: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr,
               UPCAST: tl.constexpr):
    NB: tl.constexpr = Q // BQ
    pid_ij = tl.program_id(0)
    pid_bc = tl.program_id(1)
    gi = tl.program_id(2)
    bi = (pid_bc // NC).to(tl.int64)
    ci = pid_bc % NC
    rows = (pid_ij // NB) * BQ + tl.arange(0, BQ)
    cols = (pid_ij % NB) * BQ + tl.arange(0, BQ)
    ns = tl.arange(0, BN)
    nm = ns < N
    ti = ci * Q + rows
    tj = ci * Q + cols
    c_i = tl.load(C_ptr + bi * s_c_b + ti[:, None] * s_c_l + gi * s_c_g + ns[None, :] * s_c_n,
                  mask=(ti[:, None] < L) & nm[None, :], other=0.0).to(DT)
    b_j = tl.load(B_ptr + bi * s_b_b + tj[:, None] * s_b_l + gi * s_b_g + ns[None, :] * s_b_n,
                  mask=(tj[:, None] < L) & nm[None, :], other=0.0).to(DT)
    acc = _mm(c_i, tl.trans(b_j), PREC, UPCAST)
    tl.store(cb_ptr + ((bi * NC + ci) * G + gi) * Q * Q + rows[:, None] * Q + cols[None, :], acc)


@triton.jit
def _chunk_state_kernel(v_ptr, w_ptr, dt_ptr, cum_ptr, docs_ptr, out_ptr, L, H, G, NC, P, N, OFFSET,
                        s_v_b, s_v_l, s_v_h, s_v_p, s_w_b, s_w_l, s_w_g, s_w_n, s_dt_b, s_dt_l, s_dt_h,
                        Q: tl.constexpr, BQ: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                        DT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, SPLIT: tl.constexpr,
                        FORWARD: tl.constexpr, HAS_SEQ: tl.constexpr):
    """out[b, c + OFFSET, h] (p × n) = Σ_k scale_k · v_k ⊗ w_k over the chunk's steps k, with
    scale = exp(cum_last − cum_k)·dt_k (FORWARD: v = x, w = B) or exp(cum_k) (backward: v = dy, w = C).
    HAS_SEQ: only steps of the chunk's last document (FORWARD) or of the entering document (backward) count.
    Program axis 2: blocks of BP rows of the state."""
    pid_bc = tl.program_id(0)
    hi = tl.program_id(1)
    bi = (pid_bc // NC).to(tl.int64)
    ci = pid_bc % NC
    gi = hi // (H // G)
    ps = tl.program_id(2) * BP + tl.arange(0, BP)
    ns = tl.arange(0, BN)
    pm = ps < P
    nm = ns < N
    cum_base = cum_ptr + ((bi * H + hi) * NC + ci) * Q
    cum_last = tl.load(cum_base + Q - 1)
    if HAS_SEQ:
        entering_end, last_start = _chunk_docs(docs_ptr, bi, ci, NC, Q)
        k_end = tl.minimum(L - ci * Q, entering_end + 1)
    acc = tl.zeros((BN, BP), dtype=tl.float32)  # the transposed state
    for k0 in range(0, Q, BQ):
        ks = k0 + tl.arange(0, BQ)
        t = ci * Q + ks
        if HAS_SEQ and not FORWARD:  # steps after the entering document read as zeros, like steps past the end
            tm = ks < k_end
        else:
            tm = t < L
        cum_k = tl.load(cum_base + ks)
        if FORWARD:
            counts = tm
            if HAS_SEQ:  # steps of earlier documents read dt = 0 (last_start <= k < L − c·Q as one comparison)
                counts = (ks - last_start).to(tl.uint32) < (L - ci * Q - last_start).to(tl.uint32)
            dt_k = tl.load(dt_ptr + bi * s_dt_b + t * s_dt_l + hi * s_dt_h, mask=counts, other=0.0).to(tl.float32)
            scale = tl.exp(cum_last - cum_k) * dt_k
        else:
            scale = tl.exp(cum_k)
        v = tl.load(v_ptr + bi * s_v_b + t[:, None] * s_v_l + hi * s_v_h + ps[None, :] * s_v_p,
                    mask=tm[:, None] & pm[None, :], other=0.0).to(tl.float32)
        w = tl.load(w_ptr + bi * s_w_b + t[:, None] * s_w_l + gi * s_w_g + ns[None, :] * s_w_n,
                    mask=tm[:, None] & nm[None, :], other=0.0).to(DT)
        acc = _mm_f32b(tl.trans(w), v * scale[:, None], acc, DT, PREC, UPCAST, SPLIT)
    tl.store(out_ptr + (((bi * (NC + 1) + ci + OFFSET) * H + hi) * P + ps[None, :]) * N + ns[:, None], acc,
             mask=pm[None, :] & nm[:, None])


@triton.jit
def _state_pass_kernel(st_ptr, cum_ptr, init_ptr, docs_ptr, H, NC, PN, Q: tl.constexpr,
                       BLOCK: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr):
    """In place over st (b, NC+1, h, p·n): slot c holds U_c on entry and S_c on exit; slot NC gets S_NC.
    HAS_SEQ: a chunk holding a document start drops the entering state (its decay factor is 0)."""
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    bi = pid_bh // H
    hi = pid_bh % H
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < PN
    if HAS_INIT:
        s = tl.load(init_ptr + pid_bh * PN + offs, mask=m, other=0.0).to(tl.float32)
    else:
        s = tl.zeros((BLOCK,), dtype=tl.float32)
    base = st_ptr + (bi * (NC + 1) * H + hi) * PN + offs
    HPN = pid_bh * 0 + H * PN  # the stride of a chunk, in 64 bits (pid_bh is int64; H or PN may be a constant 1)
    u = tl.load(base, mask=m, other=0.0)
    for c in range(NC):
        # the next chunk's U is loaded before this chunk's store: two loads in flight, not a load-store chain
        u_next = tl.load(base + (c + 1) * HPN, mask=m & (c + 1 < NC), other=0.0)
        tl.store(base + c * HPN, s, mask=m)
        decay = tl.exp(tl.load(cum_ptr + (pid_bh * NC + c) * Q + Q - 1))
        if HAS_SEQ:
            decay = tl.where(tl.load(_doc_row(docs_ptr, bi, c, NC, 0, Q) + Q - 1) < 0, decay, 0.0)
        s = decay * s + u
        u = u_next
    tl.store(base + NC * HPN, s, mask=m)


@triton.jit
def _output_kernel(x_ptr, dt_ptr, cum_ptr, C_ptr, cb_ptr, st_ptr, D_ptr, docs_ptr, y_ptr, L, H, G, NC, P, N,
                   s_x_b, s_x_l, s_x_h, s_x_p, s_dt_b, s_dt_l, s_dt_h, s_c_b, s_c_l, s_c_g, s_c_n,
                   s_y_b, s_y_l, s_y_h, s_y_p,
                   Q: tl.constexpr, BQ: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                   DT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, HAS_D: tl.constexpr,
                   HAS_SEQ: tl.constexpr):
    NB: tl.constexpr = Q // BQ
    hi = tl.program_id(0) // NB  # heads and tiles of one chunk are neighbours: its CB stays in L2
    pid_i = tl.program_id(0) % NB
    pid_bc = tl.program_id(1)
    bi = (pid_bc // NC).to(tl.int64)
    ci = pid_bc % NC
    gi = hi // (H // G)
    ps = tl.arange(0, BP)
    ns = tl.arange(0, BN)
    pm = ps < P
    nm = ns < N
    rows = pid_i * BQ + tl.arange(0, BQ)
    ti = ci * Q + rows
    im = ti < L
    cum_base = cum_ptr + ((bi * H + hi) * NC + ci) * Q
    cum_i = tl.load(cum_base + rows)
    c_i = tl.load(C_ptr + bi * s_c_b + ti[:, None] * s_c_l + gi * s_c_g + ns[None, :] * s_c_n,
                  mask=im[:, None] & nm[None, :], other=0.0).to(DT)
    s_t = tl.load(st_ptr + (((bi * (NC + 1) + ci) * H + hi) * P + ps[None, :]) * N + ns[:, None],
                  mask=pm[None, :] & nm[:, None], other=0.0)  # (BN, BP): S_c transposed
    from_start = tl.exp(cum_i)
    if HAS_SEQ:  # the entering state reaches only the steps of its own document; row i sees columns >= start_i
        start_i = tl.load(_doc_row(docs_ptr, bi, ci, NC, 0, Q) + rows)
        from_start = tl.where(start_i < 0, from_start, 0.0)
    acc = _mm(c_i, s_t.to(DT), PREC, UPCAST) * from_start[:, None]
    cb_base = cb_ptr + ((bi * NC + ci) * G + gi) * Q * Q
    for jb in range(0, pid_i + 1):
        cols = jb * BQ + tl.arange(0, BQ)
        tj = ci * Q + cols
        jm = tj < L
        cum_j = tl.load(cum_base + cols)
        dt_j = tl.load(dt_ptr + bi * s_dt_b + tj * s_dt_l + hi * s_dt_h, mask=jm, other=0.0).to(tl.float32)
        cb = tl.load(cb_base + rows[:, None] * Q + cols[None, :])
        causal = rows[:, None] >= cols[None, :]
        if HAS_SEQ:
            causal = causal & (cols[None, :] >= start_i[:, None])
        decay = tl.exp(tl.where(causal, cum_i[:, None] - cum_j[None, :], float("-inf")))
        w = cb * decay * dt_j[None, :]
        x_j = tl.load(x_ptr + bi * s_x_b + tj[:, None] * s_x_l + hi * s_x_h + ps[None, :] * s_x_p,
                      mask=jm[:, None] & pm[None, :], other=0.0).to(DT)
        acc += _mm(w.to(DT), x_j, PREC, UPCAST)
    if HAS_D:
        x_i = tl.load(x_ptr + bi * s_x_b + ti[:, None] * s_x_l + hi * s_x_h + ps[None, :] * s_x_p,
                      mask=im[:, None] & pm[None, :], other=0.0).to(tl.float32)
        acc += tl.load(D_ptr + hi).to(tl.float32) * x_i
    tl.store(y_ptr + bi * s_y_b + ti[:, None] * s_y_l + hi * s_y_h + ps[None, :] * s_y_p,
             acc.to(y_ptr.dtype.element_ty), mask=im[:, None] & pm[None, :])


@triton.jit
def _state_pass_bwd_kernel(dst_ptr, st_ptr, cum_ptr, dfinal_ptr, sdot_ptr, docs_ptr, H, NC, PN, Q: tl.constexpr,
                            BLOCK: tl.constexpr, HAS_DFINAL: tl.constexpr, HAS_SEQ: tl.constexpr):
    """In place over dst (b, NC+1, h, p·n): slot c+1 holds G_c on entry and dS_{c+1} on exit; slot 0 gets dS_0.
    sdot[b, h, c, program] = <S_{c+1}, dS_{c+1}> over this program's elements. HAS_SEQ: no gradient flows back
    through a chunk that holds a document start."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    bi = pid_bh // H
    hi = pid_bh % H
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < PN
    if HAS_DFINAL:
        run = tl.load(dfinal_ptr + pid_bh * PN + offs, mask=m, other=0.0).to(tl.float32)
    else:
        run = tl.zeros((BLOCK,), dtype=tl.float32)
    base = (bi * (NC + 1) * H + hi) * PN + offs
    HPN = pid_bh * 0 + H * PN  # the stride of a chunk, in 64 bits (pid_bh is int64; H or PN may be a constant 1)
    g = tl.load(dst_ptr + base + NC * HPN, mask=m, other=0.0)
    s_next = tl.load(st_ptr + base + NC * HPN, mask=m, other=0.0)
    for k in range(NC):
        c = NC - 1 - k
        # slot c + 1 holds G_c and S_{c+1}; the loads of slot c are issued before the store to slot c + 1
        g_prev = tl.load(dst_ptr + base + c * HPN, mask=m & (c > 0), other=0.0)
        s_prev = tl.load(st_ptr + base + c * HPN, mask=m & (c > 0), other=0.0)
        tl.store(dst_ptr + base + (c + 1) * HPN, run, mask=m)
        tl.store(sdot_ptr + (pid_bh * NC + c) * nprog + pid, tl.sum(s_next * run, axis=0))
        decay = tl.exp(tl.load(cum_ptr + (pid_bh * NC + c) * Q + Q - 1))
        if HAS_SEQ:
            decay = tl.where(tl.load(_doc_row(docs_ptr, bi, c, NC, 0, Q) + Q - 1) < 0, decay, 0.0)
        run = g + decay * run
        g = g_prev
        s_next = s_prev
    tl.store(dst_ptr + base, run, mask=m)


@triton.jit
def _dx2_rows(acc, ib_start, ib_stop, cols, cum_j, end_j, ci, L, cum_base, cb_base, dy_rows, s_dy_l, s_dy_p, ps, pm,
              Q: tl.constexpr, BQ: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
              MASK: tl.constexpr):
    """acc (BQ, BP) + Σ_i (CB∘decay)ᵀ_ji dy_i over the row tiles ``ib_start <= ib < ib_stop`` of one chunk for the
    columns ``cols`` (BQ,): decay_ij = exp(cum_i − cum_j) for rows i >= j, and with MASK also i <= end_j (BQ,) (the
    column's document ends there; ``end_j`` is not read without MASK). ``dy_rows`` points at the (batch, head)
    of dy; ``cum_base`` and ``cb_base`` at the chunk's cum (Q,) and CB (Q, Q)."""
    for ib in range(ib_start, ib_stop):
        rows = ib * BQ + tl.arange(0, BQ)
        ti = ci * Q + rows
        cum_i = tl.load(cum_base + rows)
        dy_i = tl.load(dy_rows + ti[:, None] * s_dy_l + ps[None, :] * s_dy_p, mask=(ti < L)[:, None] & pm[None, :],
                       other=0.0).to(DT)
        cb_t = tl.load(cb_base + rows[None, :] * Q + cols[:, None])  # (j, i) = CB[i, j]
        causal = rows[None, :] >= cols[:, None]
        if MASK:
            causal = causal & (rows[None, :] <= end_j[:, None])
        decay = tl.exp(tl.where(causal, cum_i[None, :] - cum_j[:, None], float("-inf")))
        acc += _mm((cb_t * decay).to(DT), dy_i, PREC, UPCAST)
    return acc


@triton.jit
def _dx2_kernel(x_ptr, dt_ptr, cum_ptr, B_ptr, cb_ptr, dst_ptr, dy_ptr, D_ptr, docs_ptr, dx_ptr, ddt_ptr, dyx_ptr,
                L, H, G, NC, P, N,
                s_x_b, s_x_l, s_x_h, s_x_p, s_dt_b, s_dt_l, s_dt_h, s_b_b, s_b_l, s_b_g, s_b_n,
                s_dy_b, s_dy_l, s_dy_h, s_dy_p, s_dx_b, s_dx_l, s_dx_h, s_dx_p,
                Q: tl.constexpr, BQ: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BNK: tl.constexpr,
                DT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, SPLIT: tl.constexpr, HAS_D: tl.constexpr,
                HAS_SEQ: tl.constexpr):
    """One (j-tile, batch·chunk, head): dx_j = dt_j·[exp(cum_last − cum_j)·B_j·dS_{c+1}ᵀ + Σ_{i>=j} (CB∘decay)ᵀ_ji dy_i]
    + D·dy_j, and the inter-chunk part of x_j·dxpre_j (the intra-chunk part comes from the dcb kernel)."""
    NB: tl.constexpr = Q // BQ
    pid_hj = tl.program_id(0)  # heads and tiles of one chunk are neighbours: its CB tile stays in L2
    pid_bc = tl.program_id(1)
    hi = pid_hj // NB
    pid_j = pid_hj % NB
    bi = (pid_bc // NC).to(tl.int64)
    ci = pid_bc % NC
    gi = hi // (H // G)
    ps = tl.arange(0, BP)
    pm = ps < P
    cols = pid_j * BQ + tl.arange(0, BQ)
    tj = ci * Q + cols
    jm = tj < L
    cum_base = cum_ptr + ((bi * H + hi) * NC + ci) * Q
    cum_j = tl.load(cum_base + cols)
    cum_last = tl.load(cum_base + Q - 1)
    dt_j = tl.load(dt_ptr + bi * s_dt_b + tj * s_dt_l + hi * s_dt_h, mask=jm, other=0.0).to(tl.float32)
    acc = tl.zeros((BQ, BP), dtype=tl.float32)
    dst_base = dst_ptr + (((bi * (NC + 1) + ci + 1) * H + hi) * P) * N
    for n0 in range(0, BN, BNK):
        ns = n0 + tl.arange(0, BNK)
        nm = ns < N
        b_j = tl.load(B_ptr + bi * s_b_b + tj[:, None] * s_b_l + gi * s_b_g + ns[None, :] * s_b_n,
                      mask=jm[:, None] & nm[None, :], other=0.0).to(DT)
        dsn_t = tl.load(dst_base + ps[None, :] * N + ns[:, None], mask=pm[None, :] & nm[:, None], other=0.0)
        acc += _mm_f32b(b_j, dsn_t, tl.zeros((BQ, BP), dtype=tl.float32), DT, PREC, UPCAST, SPLIT)  # B_j·dS_{c+1}ᵀ
    to_end = tl.exp(cum_last - cum_j)
    if HAS_SEQ:  # only steps of the chunk's last document reach the next chunk's state; column j sees rows <= end_j
        end_j = tl.load(_doc_row(docs_ptr, bi, ci, NC, 1, Q) + cols)
        to_end = tl.where(end_j == Q - 1, to_end, 0.0)
    acc = acc * to_end[:, None]
    x_j = tl.load(x_ptr + bi * s_x_b + tj[:, None] * s_x_l + hi * s_x_h + ps[None, :] * s_x_p,
                  mask=jm[:, None] & pm[None, :], other=0.0).to(tl.float32)
    row_base = ((bi * H + hi) * NC + ci) * Q + cols
    tl.store(ddt_ptr + row_base, tl.sum(acc * x_j, axis=1))
    dy_ptrs = dy_ptr + bi * s_dy_b + tj[:, None] * s_dy_l + hi * s_dy_h + ps[None, :] * s_dy_p
    if HAS_D:  # here, so that x_j is not live across the loop
        tl.store(dyx_ptr + row_base, tl.sum(tl.load(dy_ptrs, mask=jm[:, None] & pm[None, :], other=0.0).to(tl.float32)
                                            * x_j, axis=1))
    cb_base = cb_ptr + ((bi * NC + ci) * G + gi) * Q * Q
    dy_rows = dy_ptr + bi * s_dy_b + hi * s_dy_h
    if HAS_SEQ:
        ends = _doc_row(docs_ptr, bi, ci, NC, 1, Q) + pid_j * BQ  # non-decreasing: the tile's first and last column
        if tl.load(ends) < Q - 1:  # rows past the last column's end hold no term: their tiles are skipped
            acc = _dx2_rows(acc, pid_j, tl.load(ends + BQ - 1) // BQ + 1, cols, cum_j, end_j, ci, L, cum_base,
                            cb_base, dy_rows, s_dy_l, s_dy_p, ps, pm, Q, BQ, DT, PREC, UPCAST, True)
        else:  # every column's document reaches the chunk's end: no document mask
            acc = _dx2_rows(acc, pid_j, NB, cols, cum_j, end_j, ci, L, cum_base, cb_base, dy_rows, s_dy_l, s_dy_p,
                            ps, pm, Q, BQ, DT, PREC, UPCAST, False)
    else:
        acc = _dx2_rows(acc, pid_j, NB, cols, cum_j, cols, ci, L, cum_base, cb_base, dy_rows, s_dy_l, s_dy_p, ps, pm,
                        Q, BQ, DT, PREC, UPCAST, False)
    dx = acc * dt_j[:, None]
    if HAS_D:
        dy_tile = tl.load(dy_ptrs, mask=jm[:, None] & pm[None, :], other=0.0).to(tl.float32)
        dx += tl.load(D_ptr + hi).to(tl.float32) * dy_tile
    tl.store(dx_ptr + bi * s_dx_b + tj[:, None] * s_dx_l + hi * s_dx_h + ps[None, :] * s_dx_p,
             dx.to(dx_ptr.dtype.element_ty), mask=jm[:, None] & pm[None, :])


@triton.jit
def _dcb_kernel(x_ptr, dt_ptr, cum_ptr, cb_ptr, dy_ptr, docs_ptr, dcb_ptr, rowpart_ptr, colpart_ptr,
                L, H, G, NC, P, NSPLIT,
                s_x_b, s_x_l, s_x_h, s_x_p, s_dt_b, s_dt_l, s_dt_h, s_dy_b, s_dy_l, s_dy_h, s_dy_p,
                Q: tl.constexpr, BQ: tl.constexpr, BP: tl.constexpr, HPP: tl.constexpr, OUT_BQ: tl.constexpr,
                DT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, HAS_SEQ: tl.constexpr):
    """One tile pair (i >= j) of one chunk, for HPP heads of a group. Per head, W_ij = (dy_i·x_j)·exp(cum_i − cum_j)
    (j <= i) and Z = CB∘W (float32); stores the row sums Σ_j Z_ij·dt_j (the intra part of dy_i·(y_i − D·x_i)) and
    the column sums Σ_i Z_ij (the intra part of x_j·dxpre_j) by tile, and dCB = Σ_heads W·dt_j (the gradient of
    C_i·B_j) for this head split. dc2 / db2 read dCB in (OUT_BQ × OUT_BQ) tiles on and below the diagonal: where
    BQ < OUT_BQ, a diagonal program also writes zeros to the tiles right of it inside its OUT_BQ block."""
    NB: tl.constexpr = Q // BQ
    pid_pair = tl.program_id(0)
    pid_bc = tl.program_id(1)
    pid_gs = tl.program_id(2)
    it = 0  # pair k = it·(it+1)/2 + jt with jt <= it
    for k in tl.static_range(1, NB):
        it += (pid_pair >= k * (k + 1) // 2).to(tl.int32)
    jt = pid_pair - it * (it + 1) // 2
    bi = (pid_bc // NC).to(tl.int64)
    ci = pid_bc % NC
    gi = pid_gs // NSPLIT
    h0 = gi * (H // G) + (pid_gs % NSPLIT) * HPP
    ps = tl.arange(0, BP)
    pm = ps < P
    rows = it * BQ + tl.arange(0, BQ)
    cols = jt * BQ + tl.arange(0, BQ)
    ti = ci * Q + rows
    tj = ci * Q + cols
    im = ti < L
    jm = tj < L
    causal = rows[:, None] >= cols[None, :]
    if HAS_SEQ:  # row i sees columns >= the start of its document
        causal = causal & (cols[None, :] >= tl.load(_doc_row(docs_ptr, bi, ci, NC, 0, Q) + rows)[:, None])
    cb = tl.load(cb_ptr + ((bi * NC + ci) * G + gi) * Q * Q + rows[:, None] * Q + cols[None, :])
    acc = tl.zeros((BQ, BQ), dtype=tl.float32)
    for r in range(HPP):
        hi = h0 + r
        cum_base = cum_ptr + ((bi * H + hi) * NC + ci) * Q
        cum_i = tl.load(cum_base + rows)
        cum_j = tl.load(cum_base + cols)
        dt_j = tl.load(dt_ptr + bi * s_dt_b + tj * s_dt_l + hi * s_dt_h, mask=jm, other=0.0).to(tl.float32)
        dy_i = tl.load(dy_ptr + bi * s_dy_b + ti[:, None] * s_dy_l + hi * s_dy_h + ps[None, :] * s_dy_p,
                       mask=im[:, None] & pm[None, :], other=0.0).to(DT)
        x_j = tl.load(x_ptr + bi * s_x_b + tj[:, None] * s_x_l + hi * s_x_h + ps[None, :] * s_x_p,
                      mask=jm[:, None] & pm[None, :], other=0.0).to(DT)
        w = _mm(dy_i, tl.trans(x_j), PREC, UPCAST) * tl.exp(tl.where(causal, cum_i[:, None] - cum_j[None, :],
                                                                      float("-inf")))
        z = cb * w
        part = (bi * H + hi) * NC + ci
        tl.store(rowpart_ptr + (part * NB + jt) * Q + rows, tl.sum(z * dt_j[None, :], axis=1))
        tl.store(colpart_ptr + (part * NB + it) * Q + cols, tl.sum(z, axis=0))
        acc += w * dt_j[None, :]
    dcb_base = dcb_ptr + ((bi * NC + ci) * (G * NSPLIT) + pid_gs) * Q * Q
    tl.store(dcb_base + rows[:, None] * Q + cols[None, :], acc)
    SUB: tl.constexpr = OUT_BQ // BQ
    if SUB > 1:
        if it == jt:
            for k in tl.static_range(1, SUB):
                if jt % SUB + k < SUB:
                    tl.store(dcb_base + rows[:, None] * Q + (cols + k * BQ)[None, :],
                             tl.zeros((BQ, BQ), dtype=tl.float32))


@triton.jit
def _dc2_kernel(C_ptr, B_ptr, cum_ptr, st_ptr, dy_ptr, dcb_ptr, docs_ptr, dC_ptr, rowinter_ptr, L, H, G, NC, P, N,
                NSPLIT, HSPLIT, NBN,
                s_b_b, s_b_l, s_b_g, s_b_n, s_c_b, s_c_l, s_c_g, s_c_n, s_dy_b, s_dy_l, s_dy_h, s_dy_p,
                Q: tl.constexpr, BQ: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, HPP: tl.constexpr,
                DT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, SPLIT: tl.constexpr,
                HAS_SEQ: tl.constexpr):
    """One (i-tile × block of BN columns, batch·chunk, group, head split): the split's part of dC_i, Σ_{its heads}
    exp(cum_i)·dy_i·S_c,
    plus (split 0 only) Σ_{j<=i} dCB_ij·B_j; and per head the inter-chunk part of dy_i·(y_i − D·x_i),
    Σ_n (exp(cum_i)·dy_i·S_c)_n·C_in over the block's columns (partial sums by block)."""
    pid_i = tl.program_id(0) // NBN
    pid_n = tl.program_id(0) % NBN
    pid_bc = tl.program_id(1)
    pid_gs = tl.program_id(2)
    bi = (pid_bc // NC).to(tl.int64)
    ci = pid_bc % NC
    gi = pid_gs // HSPLIT
    h0 = gi * (H // G) + (pid_gs % HSPLIT) * HPP
    ps = tl.arange(0, BP)
    ns = pid_n * BN + tl.arange(0, BN)
    pm = ps < P
    nm = ns < N
    rows = pid_i * BQ + tl.arange(0, BQ)
    ti = ci * Q + rows
    im = ti < L
    c_i = tl.load(C_ptr + bi * s_c_b + ti[:, None] * s_c_l + gi * s_c_g + ns[None, :] * s_c_n,
                  mask=im[:, None] & nm[None, :], other=0.0)  # kept in its own dtype (fewer registers)
    sees_state = im
    if HAS_SEQ:  # the entering state reaches only the steps of its own document (the others read dy = 0)
        sees_state = im & (tl.load(_doc_row(docs_ptr, bi, ci, NC, 0, Q) + rows) < 0)
    acc = tl.zeros((BQ, BN), dtype=tl.float32)
    for r in range(HPP):
        hi = h0 + r
        cum_i = tl.load(cum_ptr + ((bi * H + hi) * NC + ci) * Q + rows)
        from_start = tl.exp(cum_i)
        dy_i = tl.load(dy_ptr + bi * s_dy_b + ti[:, None] * s_dy_l + hi * s_dy_h + ps[None, :] * s_dy_p,
                       mask=sees_state[:, None] & pm[None, :], other=0.0).to(DT)
        s = tl.load(st_ptr + (((bi * (NC + 1) + ci) * H + hi) * P + ps[:, None]) * N + ns[None, :],
                    mask=pm[:, None] & nm[None, :], other=0.0)  # S_c (BP, BN) float32
        off = _mm_f32b(dy_i, s, tl.zeros((BQ, BN), dtype=tl.float32), DT, PREC, UPCAST, SPLIT) * from_start[:, None]
        acc += off
        tl.store(rowinter_ptr + (((bi * H + hi) * NC + ci) * NBN + pid_n) * Q + rows,
                 tl.sum(off * c_i.to(tl.float32), axis=1))
    dcb_base = dcb_ptr + (bi * NC + ci) * (G * NSPLIT) * Q * Q
    for jb in range(0, tl.where(pid_gs % HSPLIT == 0, pid_i + 1, 0)):
        cols = jb * BQ + tl.arange(0, BQ)
        tj = ci * Q + cols
        dcb = tl.zeros((BQ, BQ), dtype=tl.float32)
        for sp in range(NSPLIT):
            dcb += tl.load(dcb_base + (gi * NSPLIT + sp) * Q * Q + rows[:, None] * Q + cols[None, :])
        b_j = tl.load(B_ptr + bi * s_b_b + tj[:, None] * s_b_l + gi * s_b_g + ns[None, :] * s_b_n,
                      mask=(tj < L)[:, None] & nm[None, :], other=0.0).to(DT)
        acc += _mm(dcb.to(DT), b_j, PREC, UPCAST)
    tl.store(dC_ptr + ((bi * L + ti[:, None]) * (G * HSPLIT) + pid_gs) * N + ns[None, :], acc,
             mask=im[:, None] & nm[None, :])


@triton.jit
def _db2_kernel(x_ptr, dt_ptr, cum_ptr, C_ptr, dst_ptr, dcb_ptr, docs_ptr, dB_ptr, L, H, G, NC, P, N, NSPLIT, HSPLIT,
                s_x_b, s_x_l, s_x_h, s_x_p, s_dt_b, s_dt_l, s_dt_h, s_c_b, s_c_l, s_c_g, s_c_n,
                Q: tl.constexpr, BQ: tl.constexpr, BP: tl.constexpr, BPK: tl.constexpr, BN: tl.constexpr,
                HPP: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, HAS_SEQ: tl.constexpr):
    """One (j-tile, batch·chunk, group, head split): the split's part of dB_j,
    Σ_{its heads} exp(cum_last − cum_j)·dt_j·x_j·dS_{c+1} (the contraction over p in blocks of BPK), plus
    (split 0 only) Σ_{i>=j} dCB_ijᵀ·C_i."""
    NB: tl.constexpr = Q // BQ
    pid_j = tl.program_id(0)
    pid_bc = tl.program_id(1)
    pid_gs = tl.program_id(2)
    bi = (pid_bc // NC).to(tl.int64)
    ci = pid_bc % NC
    gi = pid_gs // HSPLIT
    h0 = gi * (H // G) + (pid_gs % HSPLIT) * HPP
    ns = tl.arange(0, BN)
    nm = ns < N
    cols = pid_j * BQ + tl.arange(0, BQ)
    tj = ci * Q + cols
    jm = tj < L
    to_state = jm
    if HAS_SEQ:  # only steps of the chunk's last document reach the next chunk's state (the others read dt = 0)
        to_state = jm & (tl.load(_doc_row(docs_ptr, bi, ci, NC, 1, Q) + cols) == Q - 1)
    acc = tl.zeros((BQ, BN), dtype=tl.float32)
    for r in range(HPP):
        hi = h0 + r
        cum_base = cum_ptr + ((bi * H + hi) * NC + ci) * Q
        scale = tl.exp(tl.load(cum_base + Q - 1) - tl.load(cum_base + cols))
        scale *= tl.load(dt_ptr + bi * s_dt_b + tj * s_dt_l + hi * s_dt_h, mask=to_state, other=0.0).to(tl.float32)
        for p0 in range(0, BP, BPK):
            ps = p0 + tl.arange(0, BPK)
            pm = ps < P
            x_j = tl.load(x_ptr + bi * s_x_b + tj[:, None] * s_x_l + hi * s_x_h + ps[None, :] * s_x_p,
                          mask=jm[:, None] & pm[None, :], other=0.0).to(tl.float32)
            dsn = tl.load(dst_ptr + (((bi * (NC + 1) + ci + 1) * H + hi) * P + ps[:, None]) * N + ns[None, :],
                          mask=pm[:, None] & nm[None, :], other=0.0)  # dS_{c+1} (BPK, BN) float32
            acc += _mm((x_j * scale[:, None]).to(DT), dsn.to(DT), PREC, UPCAST)
    dcb_base = dcb_ptr + (bi * NC + ci) * (G * NSPLIT) * Q * Q
    for ib in range(pid_j, tl.where(pid_gs % HSPLIT == 0, NB, 0)):
        rows = ib * BQ + tl.arange(0, BQ)
        ti = ci * Q + rows
        dcb_t = tl.zeros((BQ, BQ), dtype=tl.float32)
        for sp in range(NSPLIT):
            dcb_t += tl.load(dcb_base + (gi * NSPLIT + sp) * Q * Q + rows[None, :] * Q + cols[:, None])  # (j, i)
        c_i = tl.load(C_ptr + bi * s_c_b + ti[:, None] * s_c_l + gi * s_c_g + ns[None, :] * s_c_n,
                      mask=(ti < L)[:, None] & nm[None, :], other=0.0).to(DT)
        acc += _mm(dcb_t.to(DT), c_i, PREC, UPCAST)
    tl.store(dB_ptr + ((bi * L + tj[:, None]) * (G * HSPLIT) + pid_gs) * N + ns[None, :], acc,
             mask=jm[:, None] & nm[None, :])


@triton.jit
def _dcum_kernel(row1_ptr, R1, row2_ptr, R2, col1_ptr, C1, col2_ptr, C2, sdot_ptr, NPROG, dt_ptr, A_ptr, ddt_ptr,
                 dA_ptr, L, H, NC, s_dt_b, s_dt_l, s_dt_h, Q: tl.constexpr):
    """One (batch, head, chunk): row = Σ of the row-sum parts (the terms dy·(y − D·x)), col = Σ of the column-sum
    parts (x·dxpre), dcum = row − dt·col (+ <S_{c+1}, dS_{c+1}> at the last step), da = its reverse running sum;
    writes ddt = col + A·da (b, l, h) float32 and this chunk's Σ dt·da (its part of dA)."""
    pid = tl.program_id(0).to(tl.int64)  # (b·H + h)·NC + c
    ci = pid % NC
    hi = (pid // NC) % H
    bi = pid // (NC * H)
    qs = tl.arange(0, Q)
    t = ci * Q + qs
    tm = t < L
    row = tl.zeros((Q,), dtype=tl.float32)
    for r in range(R1):
        row += tl.load(row1_ptr + (pid * R1 + r) * Q + qs)
    for r in range(R2):
        row += tl.load(row2_ptr + (pid * R2 + r) * Q + qs)
    col = tl.zeros((Q,), dtype=tl.float32)
    for r in range(C1):
        col += tl.load(col1_ptr + (pid * C1 + r) * Q + qs)
    for r in range(C2):
        col += tl.load(col2_ptr + (pid * C2 + r) * Q + qs)
    sdot = 0.0
    for k in range(NPROG):
        sdot += tl.load(sdot_ptr + pid * NPROG + k)
    dt = tl.load(dt_ptr + bi * s_dt_b + t * s_dt_l + hi * s_dt_h, mask=tm, other=0.0).to(tl.float32)
    dcum = row - dt * col + tl.where(qs == Q - 1, sdot, 0.0)
    da = tl.cumsum(dcum, axis=0, reverse=True)  # gradient of a_t = dt_t·A: Σ dcum over k >= t
    tl.store(ddt_ptr + (bi * L + t) * H + hi, col + tl.load(A_ptr + hi).to(tl.float32) * da, mask=tm)
    tl.store(dA_ptr + pid, tl.sum(dt * da, axis=0))


# ----------------------------------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------------------------------

class _Plan:
    """Sizes, tile shapes and launch settings for one call."""

    def __init__(self, x: torch.Tensor, B: torch.Tensor, chunk_size: int, docs: torch.Tensor | None = None):
        self.b, self.l, self.h, self.p = x.shape
        self.g, self.n = B.shape[2], B.shape[3]
        self.q = max(16, min(chunk_size, pow2_at_least(self.l)))
        self.nc = -(-self.l // self.q)
        self.bq = min(BLOCK_Q, self.q)
        require(DCB_TILE in (32, 64), "DCB_TILE", DCB_TILE, "32 or 64")
        self.dcb_bq = min(DCB_TILE, self.bq)
        self.bp = dot_block(self.p)
        self.bp_state = min(self.bp, P_BLOCK)
        self.bn = dot_block(self.n)
        self.dt_dot = _TL_DTYPE[x.dtype]
        self.prec = "ieee" if x.dtype == torch.float32 else "tf32"
        self.upcast = interpreting() and x.dtype == torch.bfloat16
        # half inputs: some products with a float32 operand (states, decay-scaled inputs) keep about 16 bits of
        # it (see _mm_f32b and SPLIT_SITES); with 8 bits the gradient of A loses its accuracy (it sums terms that
        # cancel)
        self.split = x.dtype != torch.float32
        r = self.h // self.g
        self.state_block = min(STATE_BLOCK, pow2_at_least(self.p * self.n))
        self.dcb_hpp = max(d for d in range(1, min(r, DCB_HEADS_PER_PROGRAM) + 1) if r % d == 0)
        self.dcb_nsplit = r // self.dcb_hpp
        self.bc_hpp = max(d for d in range(1, min(r, BC_HEADS_PER_PROGRAM) + 1) if r % d == 0)
        self.bc_nsplit = r // self.bc_hpp
        # packed documents: the (b, nc, 2, q) int32 bounds of _doc_bounds_kernel, or None for one document a row
        self.docs = docs

    @property
    def has_seq(self) -> bool:
        """Whether the rows hold packed documents (the kernels' ``HAS_SEQ``)."""
        return self.docs is not None

    def split_at(self, site: str) -> bool:
        """Whether the product with a float32 state at ``site`` uses the split-bf16 form (half inputs only)."""
        return self.split and site in SPLIT_SITES

def _docs_arg(pl: _Plan, any_tensor: torch.Tensor) -> torch.Tensor:
    """The kernels' ``docs_ptr``: the plan's document bounds; without them the kernels never read the pointer, so
    any tensor serves."""
    return pl.docs if pl.docs is not None else any_tensor


# The output kernel with 4 warps at Q = BQ = 64 on half inputs is off by ~3% on an H100 with Triton 3.6 (every chunk,
# rows from ~16 on; float32, Q = 128 and 8 warps are exact: docs/results/session5_h100/call2/ssd64_diag.log), so that
# case takes 8 warps.
OUTPUT_WARPS_AT_64 = 8


def _launch(kernel, grid, name, *args, num_warps: int | None = None, **meta):
    warps, stages = CONFIG_WIDE[name] if name in CONFIG_WIDE and meta.get("BP", 0) > 64 else CONFIG[name]
    kernel[grid](*args, **meta, num_warps=num_warps or warps, num_stages=stages)


def chunk_products(pl: _Plan, B: torch.Tensor, C: torch.Tensor, run=None) -> torch.Tensor:
    """The ``cb`` kernel: ``CB_ij = C_i·B_j`` (b, chunks, g, Q, Q) float32. Cheap (its inputs are B and C, a
    small fraction of the layer's traffic), so the autograd function runs it again in the backward instead of
    keeping it from the forward (34 MB per SSD layer at 32K tokens)."""
    b, l, g, n, q, nc = pl.b, pl.l, pl.g, pl.n, pl.q, pl.nc
    run = run or (lambda name, fn: fn())
    cb = poisoned_empty(b, nc, g, q, q, device=B.device)
    nb = q // pl.bq
    run("cb", lambda: _launch(_cb_kernel, (nb * nb, b * nc, g), "cb", B, C, cb, l, g, nc, n,
                              *B.stride(), *C.stride(), Q=q, BQ=pl.bq, BN=pl.bn, DT=pl.dt_dot, PREC=pl.prec,
                              UPCAST=pl.upcast))
    return cb


def forward_kernels(x, dt, A, B, C, D, initial_state, chunk_size: int, timer=None, seq_idx=None):
    """Run the forward kernels. Returns ``(y, cum, cb, states, plan)``; ``states[:, -1]`` is the final state.
    ``seq_idx`` (b, l) integer document ids or None (see the module notes on packed documents).

    ``timer``, if given, is called as ``timer(name, fn)`` around each launch (used by the GPU benchmark to
    time kernels separately); ``None`` runs them directly.
    """
    pl = _Plan(x, B, chunk_size)
    run = timer or (lambda name, fn: fn())
    b, l, h, p, g, n, q, nc = pl.b, pl.l, pl.h, pl.p, pl.g, pl.n, pl.q, pl.nc
    dev = x.device
    if seq_idx is not None:
        pl.docs = docs = poisoned_empty(b, nc, 2, q, dtype=torch.int32, device=dev)
        run("doc_bounds", lambda: _launch(_doc_bounds_kernel, (b * nc,), "doc_bounds", seq_idx, docs, l, nc,
                                          *seq_idx.stride(), Q=q))
    seq = _docs_arg(pl, x)
    cum = poisoned_empty(b, h, nc, q, device=dev)
    block_h = min(16, pow2_at_least(h))
    run("cumsum", lambda: _launch(_cumsum_kernel, (b * nc, triton.cdiv(h, block_h)), "cumsum",
                                  dt, A, cum, l, h, nc, *dt.stride(), Q=q, BLOCK_H=block_h))
    cb = chunk_products(pl, B, C, run)
    nb = q // pl.bq
    states = poisoned_empty(b, nc + 1, h, p, n, device=dev)
    run("chunk_state", lambda: _launch(
        _chunk_state_kernel, (b * nc, h, triton.cdiv(p, pl.bp_state)), "chunk_state", x, B, dt, cum, seq, states, l,
        h, g, nc, p, n, 0, *x.stride(), *B.stride(), *dt.stride(), Q=q, BQ=pl.bq, BP=pl.bp_state, BN=pl.bn,
        DT=pl.dt_dot, PREC=pl.prec, UPCAST=pl.upcast, SPLIT=pl.split_at("chunk_state"), FORWARD=True,
        HAS_SEQ=pl.has_seq))
    init = initial_state.float().contiguous() if initial_state is not None else states
    run("state_pass", lambda: _launch(
        _state_pass_kernel, (triton.cdiv(p * n, pl.state_block), b * h), "state_pass", states, cum, init, seq, h,
        nc, p * n, Q=q, BLOCK=pl.state_block, HAS_INIT=initial_state is not None,
        HAS_SEQ=pl.has_seq))
    y = poisoned_empty(b, l, h, p, dtype=x.dtype, device=dev)
    output_warps = OUTPUT_WARPS_AT_64 if q == 64 and x.dtype != torch.float32 else None
    run("output", lambda: _launch(
        _output_kernel, (h * nb, b * nc), "output", x, dt, cum, C, cb, states, D if D is not None else A, seq, y,
        l, h, g, nc, p, n, *x.stride(), *dt.stride(), *C.stride(), *y.stride(), Q=q, BQ=pl.bq,
        BP=pl.bp, BN=pl.bn, DT=pl.dt_dot, PREC=pl.prec, UPCAST=pl.upcast, HAS_D=D is not None, HAS_SEQ=pl.has_seq,
        num_warps=output_warps))
    return y, cum, cb, states, pl


def backward_kernels(dy, dfinal, x, dt, A, B, C, D, cum, cb, states, pl: _Plan, timer=None):
    """Run the backward kernels and the closing PyTorch reductions (packed documents: the bounds the forward left
    in ``pl.docs``).

    Returns float32 ``(dx in x.dtype, ddt (b,l,h), dA (h,), dB (b,l,g,n), dC (b,l,g,n), dD (h,) or None,
    d_initial (b,h,p,n))``.
    """
    run = timer or (lambda name, fn: fn())
    b, l, h, p, g, n, q, nc = pl.b, pl.l, pl.h, pl.p, pl.g, pl.n, pl.q, pl.nc
    seq = _docs_arg(pl, x)
    dev = x.device
    if dy is None:
        dy = torch.zeros_like(x)
    dst = poisoned_empty(b, nc + 1, h, p, n, device=dev)
    run("chunk_state_bwd", lambda: _launch(
        _chunk_state_kernel, (b * nc, h, triton.cdiv(p, pl.bp_state)), "chunk_state", dy, C, dt, cum, seq, dst, l,
        h, g, nc, p, n, 1, *dy.stride(), *C.stride(), *dt.stride(), Q=q, BQ=pl.bq, BP=pl.bp_state, BN=pl.bn,
        DT=pl.dt_dot, PREC=pl.prec, UPCAST=pl.upcast, SPLIT=pl.split_at("chunk_state_bwd"), FORWARD=False,
        HAS_SEQ=pl.has_seq))
    nprog = triton.cdiv(p * n, pl.state_block)
    sdot = poisoned_empty(b, h, nc, nprog, device=dev)
    dfin = dfinal.float().contiguous() if dfinal is not None else dst
    run("state_pass_bwd", lambda: _launch(
        _state_pass_bwd_kernel, (nprog, b * h), "state_pass_bwd", dst, states, cum, dfin, sdot, seq, h, nc,
        p * n, Q=q, BLOCK=pl.state_block, HAS_DFINAL=dfinal is not None, HAS_SEQ=pl.has_seq))
    dx = poisoned_empty(b, l, h, p, dtype=x.dtype, device=dev)
    out = {}
    rows, cols, dyx = _backward_products(run, pl, dy, x, dt, A, B, C, D, cb, cum, states, dst, dx, out)

    def reduce():
        ddt = poisoned_empty(b, l, h, device=dev)
        da_part = poisoned_empty(b, h, nc, device=dev)
        (r1, n1), (r2, n2) = (rows + [(rows[0][0], 0)])[:2]
        (c1, m1), (c2, m2) = (cols + [(cols[0][0], 0)])[:2]
        _launch(_dcum_kernel, (b * h * nc,), "dcum", r1, n1, r2, n2, c1, m1, c2, m2, sdot, nprog, dt, A, ddt,
                da_part, l, h, nc, *dt.stride(), Q=q)
        out["ddt"] = ddt
        out["dA"] = da_part.sum((0, 2))
        out["dD"] = dyx.sum((0, 2, 3)) if D is not None else None
    run("reduce", reduce)
    return dx, out["ddt"], out["dA"], out["dB"], out["dC"], out["dD"], dst[:, 0].clone()


def _backward_products(run, pl, dy, x, dt, A, B, C, D, cb, cum, states, dst, dx, out):
    """dx per (tile, chunk, head); the (Q × Q) gradient of C·B summed over a group's heads once (dcb), then dC
    and dB per group from it and from the states. See the notes at the top of the module."""
    b, l, h, p, g, n, q, nc = pl.b, pl.l, pl.h, pl.p, pl.g, pl.n, pl.q, pl.nc
    seq = _docs_arg(pl, x)
    dev = x.device
    nb = q // pl.bq
    ddt_inter = poisoned_empty(b, h, nc, q, device=dev)
    dyx = poisoned_empty(b, h, nc, q, device=dev) if D is not None else ddt_inter
    run("dx2", lambda: _launch(
        _dx2_kernel, (h * nb, b * nc), "dx2", x, dt, cum, B, cb, dst, dy, D if D is not None else A, seq, dx,
        ddt_inter, dyx, l, h, g, nc, p, n, *x.stride(), *dt.stride(), *B.stride(), *dy.stride(), *dx.stride(),
        Q=q, BQ=pl.bq, BP=pl.bp, BN=pl.bn, BNK=min(pl.bn, 64), DT=pl.dt_dot, PREC=pl.prec,
        UPCAST=pl.upcast, SPLIT=pl.split_at("dx"), HAS_D=D is not None, HAS_SEQ=pl.has_seq))
    # partial sums by dcb tile: entries of tiles above the diagonal stay zero
    nbd = q // pl.dcb_bq
    rowpart = torch.zeros(b, h, nc, nbd, q, dtype=torch.float32, device=dev)
    colpart = torch.zeros(b, h, nc, nbd, q, dtype=torch.float32, device=dev)
    dcb = poisoned_empty(b, nc, g * pl.dcb_nsplit, q, q, device=dev)
    run("dcb", lambda: _launch(
        _dcb_kernel, (nbd * (nbd + 1) // 2, b * nc, g * pl.dcb_nsplit), "dcb", x, dt, cum, cb, dy, seq, dcb, rowpart,
        colpart, l, h, g, nc, p, pl.dcb_nsplit, *x.stride(), *dt.stride(), *dy.stride(),
        Q=q, BQ=pl.dcb_bq, BP=pl.bp, HPP=pl.dcb_hpp, OUT_BQ=pl.bq, DT=pl.dt_dot, PREC=pl.prec, UPCAST=pl.upcast,
        HAS_SEQ=pl.has_seq))
    hs = pl.bc_nsplit
    dC = poisoned_empty(b, l, g * hs, n, device=dev)
    bnc = max(16, min(pl.bn, DC2_COLUMNS))
    nbn = triton.cdiv(n, bnc)
    rowinter = poisoned_empty(b, h, nc, nbn, q, device=dev)
    run("dc2", lambda: _launch(
        _dc2_kernel, (nb * nbn, b * nc, g * hs), "dc2", C, B, cum, states, dy, dcb, seq, dC, rowinter, l, h, g, nc,
        p, n, pl.dcb_nsplit, hs, nbn, *B.stride(), *C.stride(), *dy.stride(), Q=q, BQ=pl.bq,
        BP=pl.bp, BN=bnc, HPP=pl.bc_hpp, DT=pl.dt_dot, PREC=pl.prec, UPCAST=pl.upcast, SPLIT=pl.split_at("dc"),
        HAS_SEQ=pl.has_seq))
    dB = poisoned_empty(b, l, g * hs, n, device=dev)
    run("db2", lambda: _launch(
        _db2_kernel, (nb, b * nc, g * hs), "db2", x, dt, cum, C, dst, dcb, seq, dB, l, h, g, nc, p, n,
        pl.dcb_nsplit, hs, *x.stride(), *dt.stride(), *C.stride(), Q=q, BQ=pl.bq, BP=pl.bp,
        BPK=pl.bp_state, BN=pl.bn, HPP=pl.bc_hpp, DT=pl.dt_dot, PREC=pl.prec, UPCAST=pl.upcast, HAS_SEQ=pl.has_seq))
    run("partials", lambda: out.update(dB=dB.view(b, l, g, hs, n).sum(3), dC=dC.view(b, l, g, hs, n).sum(3)))
    return [(rowinter, nbn), (rowpart, nbd)], [(ddt_inter, 1), (colpart, nbd)], dyx


def _ssd_forward_fake(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                      D: torch.Tensor | None, initial_state: torch.Tensor | None, chunk_size: int,
                      seq_idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    pl = _Plan(x, B, chunk_size)
    f32 = dict(dtype=torch.float32)
    docs = (x.new_empty(pl.b, pl.nc, 2, pl.q, dtype=torch.int32) if seq_idx is not None
            else x.new_empty(0, dtype=torch.int32))
    return (x.new_empty(x.shape), x.new_empty(pl.b, pl.h, pl.nc, pl.q, **f32),  # y contiguous, as the kernel's
            x.new_empty(pl.b, pl.nc + 1, pl.h, pl.p, pl.n, **f32), docs)


@opaque_to_compile("ssd_forward", _ssd_forward_fake)
def ssd_forward(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                D: torch.Tensor | None, initial_state: torch.Tensor | None, chunk_size: int,
                seq_idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`forward_kernels` on ``x`` -> ``(y, cum, states, docs)``, ``docs`` the document bounds (b, nc, 2, q)
    int32 with ``seq_idx``, else an empty tensor (the plan is rebuilt from them by :func:`ssd_backward`); ``cb`` is
    not returned (:func:`ssd_backward` recomputes it)."""
    y, cum, _, states, pl = forward_kernels(x, dt, A, B, C, D, initial_state, chunk_size, seq_idx=seq_idx)
    return y, cum, states, pl.docs if pl.docs is not None else x.new_empty(0, dtype=torch.int32)


def _ssd_backward_fake(dy: torch.Tensor | None, dfinal: torch.Tensor | None, x: torch.Tensor, dt: torch.Tensor,
                       A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None, cum: torch.Tensor,
                       states: torch.Tensor, chunk_size: int, docs: torch.Tensor, silu_x: bool
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                  torch.Tensor]:
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    f32 = dict(dtype=torch.float32)
    return (x.new_empty(x.shape), x.new_empty(b, l, h, **f32), x.new_empty(h, **f32), x.new_empty(b, l, g, n, **f32),
            x.new_empty(b, l, g, n, **f32), x.new_empty(h if D is not None else 0, **f32),
            x.new_empty(b, h, p, n, **f32))


@opaque_to_compile("ssd_backward", _ssd_backward_fake)
def ssd_backward(dy: torch.Tensor | None, dfinal: torch.Tensor | None, x: torch.Tensor, dt: torch.Tensor,
                 A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None, cum: torch.Tensor,
                 states: torch.Tensor, chunk_size: int, docs: torch.Tensor, silu_x: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                            torch.Tensor]:
    """:func:`backward_kernels` with the plan of ``(x, B, chunk_size)`` and the document bounds ``docs`` of
    :func:`ssd_forward` (empty: one document a row), ``cb`` recomputed; ``dD`` is an empty tensor without ``D``.
    With ``silu_x`` the kernels run on ``silu(x)``, recomputed here, and ``dx`` is the gradient of ``silu(x)``
    (:class:`_SSDTriton` applies SiLU's derivative outside the operator)."""
    pl = _Plan(x, B, chunk_size, docs if docs.numel() else None)
    cb = chunk_products(pl, B, C)
    x_in = F.silu(x) if silu_x else x
    dx, ddt, dA, dB, dC, dD, dinit = backward_kernels(dy, dfinal, x_in, dt, A, B, C, D, cum, cb, states, pl)
    return dx, ddt, dA, dB, dC, dD if dD is not None else x.new_empty(0, dtype=torch.float32), dinit


class _SSDTriton(torch.autograd.Function):
    """The kernels' forward and backward; with ``silu_x`` the input ``x`` is a pre-activation: the kernels run on
    ``silu(x)``, and ``x`` itself is what is kept (the activation is recomputed inside the backward operator). The
    activation and its derivative are applied here, outside the operators: under ``torch.compile`` they are graph
    nodes that Inductor fuses into the kernels that produce ``x`` and read ``dx`` (the layer's in_proj output split
    and its gradient's concatenation) instead of passes of their own; and as the backward graph needs ``x`` alone,
    ``silu(x)`` is not kept. (The recomputation stays inside ``ssd_backward``: the compiler would merge a second
    ``silu(x)`` of this function with the first and keep it.) The final state is an output only when asked for
    (``final_state``): under ``torch.compile`` an unused output still gets a gradient, a zero tensor that the
    backward would read."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, initial_state, chunk_size, seq_idx, silu_x, final_state):
        y, cum, states, docs = ssd_forward(F.silu(x) if silu_x else x, dt, A, B, C, D, initial_state, chunk_size,
                                           seq_idx)
        ctx.save_for_backward(x, dt, A, B, C, D, initial_state, cum, states, docs)
        ctx.chunk_size, ctx.silu_x = chunk_size, silu_x
        ctx.set_materialize_grads(False)
        return (y, states[:, -1].clone()) if final_state else y

    @staticmethod
    def backward(ctx, dy, dfinal=None):
        x, dt, A, B, C, D, initial_state, cum, states, docs = ctx.saved_tensors
        dx, ddt, dA, dB, dC, dD, dinit = ssd_backward(dy, dfinal, x, dt, A, B, C, D, cum, states, ctx.chunk_size,
                                                      docs, ctx.silu_x)
        if ctx.silu_x:
            dx = torch.ops.aten.silu_backward(dx, x)
        return (dx, ddt.to(dt.dtype), dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
                dD.to(D.dtype) if D is not None else None,
                dinit.to(initial_state.dtype) if initial_state is not None else None, None, None, None, None)


def ssd_triton(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
               chunk_size: int = 64, D: torch.Tensor | None = None, initial_state: torch.Tensor | None = None,
               return_final_state: bool = False, seq_idx: torch.Tensor | None = None, silu_x: bool = False):
    """SSD through the Triton kernels (arguments validated by :func:`wonderful_matrices.ops.ssd.ssd`).

    x (b,l,h,p) float32/bf16/fp16, dt (b,l,h), A (h,), B/C (b,l,g,n), D (h,) or None, initial_state (b,h,p,n)
    or None, seq_idx (b,l) non-decreasing integer document ids or None -> y (b,l,h,p) in ``x.dtype``, and the final
    state (b,h,p,n) float32 if ``return_final_state``. ``silu_x``: run on ``silu(x)``, keeping ``x`` for the
    backward (see :class:`_SSDTriton`).
    Differentiable in every tensor argument.
    """
    A, D = A.contiguous(), D.contiguous() if D is not None else None  # the kernels index both by head
    # offsets inside one batch row are int32 in the kernels (x, B, C, dt as given; y, dx contiguous)
    row_extent = max(max(row_span(t) for t in (x, dt, B, C)), x[0].numel())
    require(row_extent < 2 ** 31, "x", tuple(x.shape),
            f"rows whose elements the Triton kernels can address with int32 offsets (this row spans {row_extent}: "
            "split it, e.g. prefill_chunk_tokens, or use backend='torch')")
    return _SSDTriton.apply(x, dt, A, B, C, D, initial_state, chunk_size, seq_idx, silu_x, return_final_state)
