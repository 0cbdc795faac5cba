"""The backward of no-window dynamic mask attention (causal attention plus a per-key bias) as two Triton kernels.

FlexAttention runs the forward (:mod:`.biased_causal`) and gives the log-sum-exp ``lse`` of every query. From it
the probabilities are recomputed tile by tile, ``P_ij = exp(s_ij + bias_j − lse_i)`` with ``s_ij = scale·q_i·k_j``,
and with ``dP_ij = dO_i·v_j`` and ``δ_i = dO_i·O_i``:

    dS_ij = P_ij (dP_ij − δ_i),   dq_i = scale Σ_j dS_ij k_j,   dk_j = scale Σ_i dS_ij q_i,
    dv_j = Σ_i P_ij dO_i,         dbias_j = Σ_i dS_ij,

summed over the query heads of each key head (GQA). Query ``i`` sits at key position ``p_i = i + lk − lq`` and sees
key ``j`` when ``first_i ≤ j ≤ p_i``, where ``first_i`` is the first position of its document (0 without
documents); equivalently key ``j`` is seen by the positions ``[j, end_j)``, ``end_j`` the end of its document.

* ``dq`` (one program per tile of ``BLOCK_M`` queries and query head): loops over the key tiles from the tile's
  first document start to its last query, in tiles of ``BLOCK_N`` keys; it also computes and stores ``δ`` for its
  queries (read by the ``dk, dv`` kernel, launched after it).
* ``dk, dv, dbias`` (one program per tile of ``BLOCK_N`` keys and key head): loops over every query head of the
  group and the query tiles that see any of its keys, and writes its sums once: no atomic adds, and ``dbias`` is
  the row sum of ``dS`` the loop has in registers anyway — the bias gradient costs no pass of its own, where
  Flex's own backward adds every pair's ``dS`` into the bias atomically and a separate pass for it would
  recompute every score (docs/kernels_dma.md compares the three).

Programs start with the heaviest tiles (the grid's first dimension is the head, the second the tile, in order of
decreasing work: the last query tiles for ``dq``, the first key tiles for ``dk, dv``), so that the GPU's last
wave holds short programs. Both kernels evaluate the mask only on tiles that need it (the diagonal, document
boundaries, the ends); the others run unmasked, as in Triton's fused-attention tutorial. Keys of bias
:data:`.windowed.MASKED_BIAS` (padding) get ``P = 0``; queries that see no key at all must come with
``lse = +inf`` (their ``P`` is then 0; the caller zeroes their output). Offsets inside one batch row are int32
(int64 once one reaches 2**31, ``WIDE``). Float16/bfloat16/float32 inputs (float32 products in IEEE precision,
not TF32), head dims up to 256; launch settings autotuned on a GPU, a single configuration under
``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_utils import attention_layout, autotune, dot_block, poisoned_empty, poisoned_empty_like, tile_configs
from .windowed_kernels import needs_wide_offsets

# dq keeps one (BLOCK_M, D) float32 accumulator, dk/dv two (BLOCK_N, D): the key side takes the narrower query tiles
DQ_CONFIGS = tile_configs([(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (128, 64, 8, 3), (128, 32, 4, 3),
                           (64, 128, 8, 2)], (32, 32))
DKV_CONFIGS = tile_configs([(32, 64, 4, 2), (32, 64, 4, 3), (64, 64, 4, 2), (32, 128, 8, 2), (64, 128, 8, 2),
                            (64, 64, 8, 3)], (32, 32))


@triton.jit
def _dq_inner(dq, q, do, lse2, delta, k_ptr, v_ptr, bias_ptr, skl, pos, first, dd, dmask, lo, hi, lk,
              qk_scale, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
              WIDE: tl.constexpr):
    """``dq`` over the keys ``[lo, hi)`` of one head (``k_ptr``, ``v_ptr``, ``bias_ptr`` at its first key)."""
    for j0 in range(lo, hi, BLOCK_N):
        j = j0 + tl.arange(0, BLOCK_N)
        if WIDE:
            j = j.to(tl.int64)
        jmask = j < lk
        kv_off = j[:, None] * skl + dd[None, :]
        k = tl.load(k_ptr + kv_off, mask=jmask[:, None] & dmask[None, :], other=0.0)
        v = tl.load(v_ptr + kv_off, mask=jmask[:, None] & dmask[None, :], other=0.0)
        kb = tl.load(bias_ptr + j, mask=jmask, other=0.0) * 1.4426950408889634
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale + kb[None, :]
        p = tl.exp2(s - lse2[:, None])
        if MASKED:
            keep = (j[None, :] <= pos[:, None]) & (j[None, :] >= first[:, None]) & jmask[None, :]
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq


@autotune(configs=DQ_CONFIGS, key=["HEAD_DIM", "HAS_DOCS", "hq", "hkv"])
@triton.jit
def _dq_kernel(q_ptr, k_ptr, v_ptr, bias_ptr, first_ptr, do_ptr, lse_ptr, out_ptr, delta_ptr, dq_ptr,
               sqb, sql, sqh, skb, skl, skh, sdb, sdl, sdh, sob, sol, soh, sgb, sgl, sgh, sbb, sbh, sfb,
               lq, lk, hq, hkv, scale,
               HAS_DOCS: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr,
               WIDE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)  # bi * hq + h
    tile = tl.num_programs(1) - 1 - tl.program_id(1)  # the last queries, which see the most keys, first
    bi = bh // hq
    h = bh % hq
    g = h // (hq // hkv)
    offset = lk - lq
    i = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    qmask = i < lq
    pos = i + offset
    if WIDE:
        i = i.to(tl.int64)
    dd = tl.arange(0, BLOCK_D)
    dmask = dd < HEAD_DIM
    io_mask = qmask[:, None] & dmask[None, :]
    q = tl.load(q_ptr + bi * sqb + i[:, None] * sql + h * sqh + dd[None, :], mask=io_mask, other=0.0)
    do = tl.load(do_ptr + bi * sdb + i[:, None] * sdl + h * sdh + dd[None, :], mask=io_mask, other=0.0)
    o = tl.load(out_ptr + bi * sob + i[:, None] * sol + h * soh + dd[None, :], mask=io_mask, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    tl.store(delta_ptr + bh * lq + i, delta, mask=qmask)
    lse2 = tl.load(lse_ptr + bh * lq + i, mask=qmask, other=0.0) * 1.4426950408889634
    p_first = tile * BLOCK_M + offset  # the tile's first and last query positions
    p_last = tl.minimum(tile * BLOCK_M + BLOCK_M, lq) - 1 + offset
    if HAS_DOCS:
        first = tl.load(first_ptr + bi * sfb + pos, mask=qmask, other=0)
        lo_key = tl.load(first_ptr + bi * sfb + p_first)  # document starts never decrease along the row
        hi_first = tl.load(first_ptr + bi * sfb + p_last)
    else:
        first = tl.zeros((BLOCK_M,), tl.int32)
        lo_key = 0
        hi_first = 0
    # key tiles [full_lo, full_hi) are seen by every query of the tile: no mask there
    lo = lo_key // BLOCK_N * BLOCK_N
    full_lo = tl.cdiv(hi_first, BLOCK_N) * BLOCK_N
    full_hi = tl.maximum((p_first + 1) // BLOCK_N * BLOCK_N, full_lo)
    hi = p_last + 1
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    k_head = k_ptr + bi * skb + g * skh
    v_head = v_ptr + bi * skb + g * skh
    bias_head = bias_ptr + bi * sbb + g * sbh
    qk_scale = scale * 1.4426950408889634
    dq = _dq_inner(dq, q, do, lse2, delta, k_head, v_head, bias_head, skl, pos, first, dd, dmask,
                   lo, tl.minimum(full_lo, hi), lk, qk_scale, PRECISION, BLOCK_N, True, WIDE)
    dq = _dq_inner(dq, q, do, lse2, delta, k_head, v_head, bias_head, skl, pos, first, dd, dmask,
                   full_lo, tl.minimum(full_hi, hi), lk, qk_scale, PRECISION, BLOCK_N, False, WIDE)
    dq = _dq_inner(dq, q, do, lse2, delta, k_head, v_head, bias_head, skl, pos, first, dd, dmask,
                   tl.maximum(full_hi, full_lo), hi, lk, qk_scale, PRECISION, BLOCK_N, True, WIDE)
    tl.store(dq_ptr + bi * sgb + i[:, None] * sgl + h * sgh + dd[None, :], (dq * scale).to(dq_ptr.dtype.element_ty),
             mask=io_mask)


@triton.jit
def _dkv_inner(dk, dv, db, k, v, kb2, j, end, q_head, do_head, lse_row, delta_row, sql, sdl, dd, dmask, lo, hi,
               lq, offset, qk_scale, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, MASKED: tl.constexpr,
               WIDE: tl.constexpr):
    """``dk, dv, dbias`` of one key tile over the queries ``[lo, hi)`` of one query head (transposed tiles:
    keys along the rows)."""
    for r0 in range(lo, hi, BLOCK_M):
        i = r0 + tl.arange(0, BLOCK_M)
        qmask = i < lq
        pos = i + offset
        if WIDE:
            i = i.to(tl.int64)
        io_mask = qmask[:, None] & dmask[None, :]
        q = tl.load(q_head + i[:, None] * sql + dd[None, :], mask=io_mask, other=0.0)
        do = tl.load(do_head + i[:, None] * sdl + dd[None, :], mask=io_mask, other=0.0)
        lse2 = tl.load(lse_row + i, mask=qmask, other=0.0) * 1.4426950408889634
        delta = tl.load(delta_row + i, mask=qmask, other=0.0)
        st = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale + kb2[:, None]
        pt = tl.exp2(st - lse2[None, :])  # (BLOCK_N, BLOCK_M)
        if MASKED:
            keep = (j[:, None] <= pos[None, :]) & (pos[None, :] < end[:, None]) & qmask[None, :]
            pt = tl.where(keep, pt, 0.0)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dst = pt * (dpt - delta[None, :])
        db += tl.sum(dst, 1)
        dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv, db


@autotune(configs=DKV_CONFIGS, key=["HEAD_DIM", "HAS_DOCS", "hq", "hkv"])
@triton.jit
def _dkv_kernel(q_ptr, k_ptr, v_ptr, bias_ptr, end_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, dbias_ptr,
                sqb, sql, sqh, skb, skl, skh, sdb, sdl, sdh, sgb, sgl, sgh, sbb, sbh, sxb, sxh, sfb,
                lq, lk, hq, hkv, scale,
                HAS_DOCS: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr,
                WIDE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0)  # bi * hkv + g
    ktile = tl.program_id(1)  # the first keys, seen by the most queries, first
    bi = (row // hkv).to(tl.int64)
    g = row % hkv
    group = hq // hkv
    offset = lk - lq
    j = ktile * BLOCK_N + tl.arange(0, BLOCK_N)
    jmask = j < lk
    if WIDE:
        j = j.to(tl.int64)
    dd = tl.arange(0, BLOCK_D)
    dmask = dd < HEAD_DIM
    kv_mask = jmask[:, None] & dmask[None, :]
    kv_off = bi * skb + j[:, None] * skl + g * skh + dd[None, :]
    k = tl.load(k_ptr + kv_off, mask=kv_mask, other=0.0)
    v = tl.load(v_ptr + kv_off, mask=kv_mask, other=0.0)
    kb2 = tl.load(bias_ptr + bi * sbb + g * sbh + j, mask=jmask, other=0.0) * 1.4426950408889634
    j_last = tl.minimum(ktile * BLOCK_N + BLOCK_N, lk) - 1
    if HAS_DOCS:
        end = tl.load(end_ptr + bi * sfb + j, mask=jmask, other=0)
        min_end = tl.load(end_ptr + bi * sfb + ktile * BLOCK_N)  # document ends never decrease along the row
        max_end = tl.load(end_ptr + bi * sfb + j_last)
    else:
        end = tl.zeros((BLOCK_N,), tl.int32) + lk
        min_end = lk
        max_end = lk
    # the queries (indices) that see a key of the tile: [lo, hi); every query of [full_lo, full_hi) sees all of them
    lo = tl.maximum(ktile * BLOCK_N - offset, 0) // BLOCK_M * BLOCK_M
    hi = tl.minimum(max_end - offset, lq)
    full_lo = tl.cdiv(tl.maximum(j_last - offset, 0), BLOCK_M) * BLOCK_M
    full_hi = tl.maximum(tl.minimum(min_end - offset, lq) // BLOCK_M * BLOCK_M, full_lo)
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    db = tl.zeros((BLOCK_N,), tl.float32)
    qk_scale = scale * 1.4426950408889634
    for hh in range(0, group):
        h = g * group + hh
        bh = bi * hq + h
        q_head = q_ptr + bi * sqb + h * sqh
        do_head = do_ptr + bi * sdb + h * sdh
        lse_row = lse_ptr + bh * lq
        delta_row = delta_ptr + bh * lq
        dk, dv, db = _dkv_inner(dk, dv, db, k, v, kb2, j, end, q_head, do_head, lse_row, delta_row, sql, sdl, dd,
                                dmask, lo, tl.minimum(full_lo, hi), lq, offset, qk_scale, PRECISION, BLOCK_M,
                                True, WIDE)
        dk, dv, db = _dkv_inner(dk, dv, db, k, v, kb2, j, end, q_head, do_head, lse_row, delta_row, sql, sdl, dd,
                                dmask, full_lo, tl.minimum(full_hi, hi), lq, offset, qk_scale, PRECISION, BLOCK_M,
                                False, WIDE)
        dk, dv, db = _dkv_inner(dk, dv, db, k, v, kb2, j, end, q_head, do_head, lse_row, delta_row, sql, sdl, dd,
                                dmask, tl.maximum(full_hi, full_lo), hi, lq, offset, qk_scale, PRECISION, BLOCK_M,
                                True, WIDE)
    out_off = bi * sgb + j[:, None] * sgl + g * sgh + dd[None, :]
    tl.store(dk_ptr + out_off, (dk * scale).to(dk_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptr + out_off, dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(dbias_ptr + bi * sxb + g * sxh + j, db, mask=jmask)


def document_bounds(seq_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """seq_idx (b, l) document ids (equal ids contiguous) -> (first, end), each (b, l) int32 contiguous: the first
    position of every position's document and the position after its last."""
    docs = seq_idx.contiguous()
    first = torch.searchsorted(docs, docs, right=False)
    end = torch.searchsorted(docs, docs, right=True)
    return first.to(torch.int32), end.to(torch.int32)


def biased_causal_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_rows: torch.Tensor,
                           out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor, scale: float,
                           seq_idx: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of causal attention with a per-key bias (module docstring).

    q, out, dout (b, lq, hq, d); k, v (b, lk, hkv, d) (any strides); bias_rows (b, hkv, ≥ lk)
    float32 with unit last stride (finite: padding as :data:`.windowed.MASKED_BIAS`); lse (b, hq, lq) float32, the
    forward's natural-log log-sum-exp, ``+inf`` for queries that see no key; optional seq_idx (b, l) (``lq == lk``)
    -> (dq (b, lq, hq, d) contiguous in q's dtype, dk, dv (b, lk, hkv, d) in k's and v's dtypes,
    dbias (b, hkv, lk) float32).
    """
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    lse = lse.contiguous()
    q, k, v, out, dout = attention_layout(q, k, v, out, dout)
    if seq_idx is None:
        first = end = torch.zeros(1, 1, dtype=torch.int32, device=q.device)  # not read
    else:
        first, end = document_bounds(seq_idx)
    meta = dict(HAS_DOCS=seq_idx is not None, BLOCK_D=dot_block(d), HEAD_DIM=d,
                PRECISION="ieee" if q.dtype == torch.float32 else None,
                WIDE=needs_wide_offsets(q, k, v, out, dout))
    delta = poisoned_empty(b, hq, lq, device=q.device)  # rowsum(dout · out), written by the dq kernel
    dq = poisoned_empty_like(q)  # contiguous whatever q's strides
    _dq_kernel[lambda m: (b * hq, triton.cdiv(lq, m["BLOCK_M"]))](
        q, k, v, bias_rows, first, dout, lse, out, delta, dq,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        dout.stride(0), dout.stride(1), dout.stride(2), out.stride(0), out.stride(1), out.stride(2),
        dq.stride(0), dq.stride(1), dq.stride(2),
        bias_rows.stride(0), bias_rows.stride(1), first.stride(0), lq, lk, hq, hkv, scale, **meta)
    dk = poisoned_empty(b, lk, hkv, d, dtype=k.dtype, device=q.device)
    dv = poisoned_empty(b, lk, hkv, d, dtype=v.dtype, device=q.device)
    dbias = poisoned_empty(b, hkv, lk, device=q.device)
    _dkv_kernel[lambda m: (b * hkv, triton.cdiv(lk, m["BLOCK_N"]))](
        q, k, v, bias_rows, end, dout, lse, delta, dk, dv, dbias,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        dout.stride(0), dout.stride(1), dout.stride(2), dk.stride(0), dk.stride(1), dk.stride(2),
        bias_rows.stride(0), bias_rows.stride(1), dbias.stride(0), dbias.stride(1), end.stride(0),
        lq, lk, hq, hkv, scale, **meta)
    return dq, dk, dv, dbias
