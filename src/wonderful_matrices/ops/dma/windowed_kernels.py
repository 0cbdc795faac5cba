"""Dynamic mask attention with a window, causal: Triton kernels over per-block candidate lists.

Selection (no gradient, :func:`..torch.select_blocks`): queries are cut into blocks of ``B``; block ``t`` gets a
list of ``W = w + B`` candidate key positions and, per candidate, the interval ``[start, end)`` of the block's
queries that keep it (DESIGN.md, fact 1). The kernels never see the other keys:

* forward, one program per (query tile of ``BLOCK_M`` inside one selection block, query head): loops over the
  block's candidates in tiles of ``BLOCK_N`` (up to the block's own keys that follow the tile's last query), loads their key/value rows by index (gathered row pointers), adds
  the bias, masks ``start <= i < end``, online softmax in float32; writes the output and the log-sum-exp.
* ``dq``: the same loop, recomputing the probabilities from the log-sum-exp.
* ``dk, dv, dbias``: one program per (selection block, candidate tile, KV head) loops over the block's queries
  that keep any of its candidates, for every query head of the group (GQA: the group shares the candidate
  list), and adds its tile's partial sums to float32 accumulators with atomics. A key is a candidate of about
  ``(w + B) / B`` blocks, so there are few colliding adds per element; the alternative (per-(block,
  candidate) partial sums reduced with ``index_add_``) would write ``O(L·(w+B)·d/B)`` floats to memory.

Memory beyond the inputs: the candidate tables ``O(b·hkv·L·(w+B)/B)``, float32 ``dk, dv`` accumulators and the
log-sum-exp; never a ``(lq, lk)`` tensor. Float16/bfloat16/float32 inputs (float32 products in IEEE precision,
not TF32), head dim up to 256.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .selection import select_blocks

BLOCK_M = 64
BLOCK_N = 64
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def block_for(keep_window: int) -> int:
    """Selection block ``B`` for a window: a multiple of :data:`BLOCK_M`, about a quarter of the window, <= 512."""
    return int(min(512, max(BLOCK_M, (keep_window // 4) // BLOCK_M * BLOCK_M)))


@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, bias_ptr, cand_ptr, start_ptr, end_ptr, out_ptr, lse_ptr,
                sqb, sql, sqh, skb, skl, skh, sbb, sbl, sbh, sob, sol, soh,
                lq, lk, hq, hkv, nb, width, scale,
                BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr):
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    bi = bh // hq
    h = bh % hq
    g = h // (hq // hkv)
    row = bi * hkv + g
    i = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # query index
    t = (tile * BLOCK_M) // BLOCK
    rel = i - t * BLOCK
    dd = tl.arange(0, BLOCK_D)
    dmask = dd < HEAD_DIM
    qmask = i < lq
    q = tl.load(q_ptr + bi * sqb + i[:, None] * sql + h * sqh + dd[None, :],
                mask=qmask[:, None] & dmask[None, :], other=0.0)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    base = (row * nb + t) * width
    # The block's own keys (the last BLOCK slots, in position order) after this tile's last query are kept by
    # none of its queries: stop before them.
    c_end = width - BLOCK + tl.minimum(BLOCK, (tile * BLOCK_M) % BLOCK + BLOCK_M)
    for c0 in range(0, c_end, BLOCK_N):
        c = c0 + tl.arange(0, BLOCK_N)
        cmask = c < width
        idx = tl.load(cand_ptr + base + c, mask=cmask, other=0)
        s0 = tl.load(start_ptr + base + c, mask=cmask, other=0)
        e0 = tl.load(end_ptr + base + c, mask=cmask, other=0)
        kv_off = bi * skb + idx[:, None] * skl + g * skh + dd[None, :]
        k = tl.load(k_ptr + kv_off, mask=cmask[:, None] & dmask[None, :], other=0.0)
        kb = tl.load(bias_ptr + bi * sbb + idx * sbl + g * sbh, mask=cmask & (e0 > s0), other=0.0).to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale + kb[None, :]
        keep = (s0[None, :] <= rel[:, None]) & (rel[:, None] < e0[None, :])
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + kv_off, mask=cmask[:, None] & dmask[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    tl.store(out_ptr + bi * sob + i[:, None] * sol + h * soh + dd[None, :], out.to(out_ptr.dtype.element_ty),
             mask=qmask[:, None] & dmask[None, :])
    lse = tl.where(empty, 0.0, m_i + tl.log(tl.where(empty, 1.0, l_i)))
    tl.store(lse_ptr + bh * lq + i, lse, mask=qmask)


@triton.jit
def _dq_kernel(q_ptr, k_ptr, v_ptr, bias_ptr, cand_ptr, start_ptr, end_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
               sqb, sql, sqh, skb, skl, skh, sbb, sbl, sbh, sdb, sdl, sdh,
               lq, lk, hq, hkv, nb, width, scale,
               BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
               HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr):
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    bi = bh // hq
    h = bh % hq
    g = h // (hq // hkv)
    row = bi * hkv + g
    i = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    t = (tile * BLOCK_M) // BLOCK
    rel = i - t * BLOCK
    dd = tl.arange(0, BLOCK_D)
    dmask = dd < HEAD_DIM
    qmask = i < lq
    io_mask = qmask[:, None] & dmask[None, :]
    q = tl.load(q_ptr + bi * sqb + i[:, None] * sql + h * sqh + dd[None, :], mask=io_mask, other=0.0)
    do = tl.load(do_ptr + bi * sdb + i[:, None] * sdl + h * sdh + dd[None, :], mask=io_mask, other=0.0)
    lse = tl.load(lse_ptr + bh * lq + i, mask=qmask, other=0.0)
    delta = tl.load(delta_ptr + bh * lq + i, mask=qmask, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    base = (row * nb + t) * width
    # The block's own keys (the last BLOCK slots, in position order) after this tile's last query are kept by
    # none of its queries: stop before them.
    c_end = width - BLOCK + tl.minimum(BLOCK, (tile * BLOCK_M) % BLOCK + BLOCK_M)
    for c0 in range(0, c_end, BLOCK_N):
        c = c0 + tl.arange(0, BLOCK_N)
        cmask = c < width
        idx = tl.load(cand_ptr + base + c, mask=cmask, other=0)
        s0 = tl.load(start_ptr + base + c, mask=cmask, other=0)
        e0 = tl.load(end_ptr + base + c, mask=cmask, other=0)
        kv_off = bi * skb + idx[:, None] * skl + g * skh + dd[None, :]
        k = tl.load(k_ptr + kv_off, mask=cmask[:, None] & dmask[None, :], other=0.0)
        v = tl.load(v_ptr + kv_off, mask=cmask[:, None] & dmask[None, :], other=0.0)
        kb = tl.load(bias_ptr + bi * sbb + idx * sbl + g * sbh, mask=cmask & (e0 > s0), other=0.0).to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale + kb[None, :]
        keep = (s0[None, :] <= rel[:, None]) & (rel[:, None] < e0[None, :]) & qmask[:, None]
        p = tl.where(keep, tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    tl.store(dq_ptr + bi * sqb + i[:, None] * sql + h * sqh + dd[None, :], (dq * scale).to(dq_ptr.dtype.element_ty),
             mask=io_mask)


@triton.jit
def _dkv_kernel(q_ptr, k_ptr, v_ptr, bias_ptr, cand_ptr, start_ptr, end_ptr, do_ptr, lse_ptr, delta_ptr,
                dk_ptr, dv_ptr, dbias_ptr,
                sqb, sql, sqh, skb, skl, skh, sbb, sbl, sbh, sdb, sdl, sdh,
                lq, lk, hq, hkv, nb, width, scale,
                BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr):
    t = tl.program_id(0)
    ctile = tl.program_id(1)
    row = tl.program_id(2)  # bi * hkv + g
    bi = row // hkv
    g = row % hkv
    group = hq // hkv
    c = ctile * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = c < width
    base = (row * nb + t) * width
    idx = tl.load(cand_ptr + base + c, mask=cmask, other=0)
    s0 = tl.load(start_ptr + base + c, mask=cmask, other=0)
    e0 = tl.load(end_ptr + base + c, mask=cmask, other=0)
    live = cmask & (e0 > s0)
    dd = tl.arange(0, BLOCK_D)
    dmask = dd < HEAD_DIM
    kv_off = bi * skb + idx[:, None] * skl + g * skh + dd[None, :]
    k = tl.load(k_ptr + kv_off, mask=cmask[:, None] & dmask[None, :], other=0.0)
    v = tl.load(v_ptr + kv_off, mask=cmask[:, None] & dmask[None, :], other=0.0)
    kb = tl.load(bias_ptr + bi * sbb + idx * sbl + g * sbh, mask=live, other=0.0).to(tl.float32)
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    db = tl.zeros((BLOCK_N,), tl.float32)
    # Only the block's queries that keep some candidate of this tile.
    lo = tl.min(tl.where(live, s0, BLOCK), 0)
    hi = tl.max(tl.where(live, e0, 0), 0)
    q_first = t * BLOCK
    for hh in range(0, group):
        h = g * group + hh
        bh = bi * hq + h
        for r0 in range((lo // BLOCK_M) * BLOCK_M, hi, BLOCK_M):
            rel = r0 + tl.arange(0, BLOCK_M)
            i = q_first + rel
            qmask = i < lq
            io_mask = qmask[:, None] & dmask[None, :]
            q = tl.load(q_ptr + bi * sqb + i[:, None] * sql + h * sqh + dd[None, :], mask=io_mask, other=0.0)
            do = tl.load(do_ptr + bi * sdb + i[:, None] * sdl + h * sdh + dd[None, :], mask=io_mask, other=0.0)
            lse = tl.load(lse_ptr + bh * lq + i, mask=qmask, other=0.0)
            delta = tl.load(delta_ptr + bh * lq + i, mask=qmask, other=0.0)
            st = tl.dot(k, tl.trans(q), input_precision=PRECISION) * scale + kb[:, None]  # (BLOCK_N, BLOCK_M)
            keep = (s0[:, None] <= rel[None, :]) & (rel[None, :] < e0[:, None]) & qmask[None, :]
            pt = tl.where(keep, tl.exp(st - lse[None, :]), 0.0)
            dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
            dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            dst = pt * (dpt - delta[None, :])
            db += tl.sum(dst, 1)
            dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
    amask = live[:, None] & dmask[None, :]
    out_off = ((bi * lk + idx[:, None]) * hkv + g) * HEAD_DIM + dd[None, :]
    tl.atomic_add(dk_ptr + out_off, dk * scale, mask=amask)
    tl.atomic_add(dv_ptr + out_off, dv, mask=amask)
    tl.atomic_add(dbias_ptr + (bi * lk + idx) * hkv + g, db, mask=live)


def _meta(q: torch.Tensor, block: int, wide: bool = False) -> dict:
    d = q.shape[-1]
    return dict(BLOCK=block, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=max(16, triton.next_power_of_2(d)),
                HEAD_DIM=d, PRECISION="ieee" if q.dtype == torch.float32 else None,
                num_warps=8 if wide and d > 64 else 4)


class _WindowedCausal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, keep_window: int, scale: float, block: int, seq_idx):
        b, lq, hq, d = q.shape
        lk, hkv = k.shape[1], k.shape[2]
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        bias32 = bias.float().contiguous()
        # Selection in the bias's own precision (ties as the oracle sees them). Candidates are key positions;
        # start/end count the block's queries (query index i sits at key position i + lk - lq).
        documents = None if seq_idx is None else seq_idx[:, None, :].expand(b, hkv, lk).reshape(b * hkv, lk)
        cand, start, end = select_blocks(bias.detach().permute(0, 2, 1).reshape(b * hkv, lk), lq, keep_window, block,
                                         documents)
        cand = cand.to(torch.int32).contiguous()
        nb, width = cand.shape[1], cand.shape[2]
        out = torch.full_like(q, float("nan"))
        lse = torch.empty(b * hq, lq, device=q.device, dtype=torch.float32)
        meta = _meta(q, block)
        grid = (triton.cdiv(lq, BLOCK_M), b * hq)
        _fwd_kernel[grid](q, k, v, bias32, cand, start, end, out, lse,
                          q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                          bias32.stride(0), bias32.stride(1), bias32.stride(2),
                          out.stride(0), out.stride(1), out.stride(2),
                          lq, lk, hq, hkv, nb, width, scale, **meta)
        ctx.save_for_backward(q, k, v, bias32, cand, start, end, out, lse)
        ctx.scale, ctx.block, ctx.bias_dtype = scale, block, bias.dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, bias32, cand, start, end, out, lse = ctx.saved_tensors
        b, lq, hq, d = q.shape
        lk, hkv = k.shape[1], k.shape[2]
        nb, width = cand.shape[1], cand.shape[2]
        dout = dout.contiguous()
        delta = (dout.float() * out.float()).sum(-1).permute(0, 2, 1).reshape(b * hq, lq).contiguous()
        meta = _meta(q, ctx.block)
        common = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                  bias32.stride(0), bias32.stride(1), bias32.stride(2), dout.stride(0), dout.stride(1),
                  dout.stride(2), lq, lk, hq, hkv, nb, width, ctx.scale)
        dq = torch.empty_strided(q.shape, q.stride(), device=q.device, dtype=q.dtype)
        _dq_kernel[(triton.cdiv(lq, BLOCK_M), b * hq)](q, k, v, bias32, cand, start, end, dout, lse, delta, dq,
                                                        *common, **meta)
        dk = torch.zeros(b, lk, hkv, d, device=q.device, dtype=torch.float32)
        dv = torch.zeros_like(dk)
        dbias = torch.zeros(b, lk, hkv, device=q.device, dtype=torch.float32)
        _dkv_kernel[(nb, triton.cdiv(width, BLOCK_N), b * hkv)](q, k, v, bias32, cand, start, end, dout, lse,
                                                                delta, dk, dv, dbias, *common,
                                                                **_meta(q, ctx.block, wide=True))
        return dq, dk.to(k.dtype), dv.to(v.dtype), dbias.to(ctx.bias_dtype), None, None, None, None


def dynamic_mask_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                                  keep_window: int, scale: float, block: int | None = None,
                                  seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Windowed causal DMA: q (b,lq,hq,d), k/v (b,lk,hkv,d), bias (b,lk,hkv) -> (b,lq,hq,d) in q's dtype.

    Needs ``keep_window < lk``, ``q.dtype`` in :data:`DTYPES`, ``d <= 256`` (the dispatcher checks). ``block``:
    selection block, a multiple of :data:`BLOCK_M` (default :func:`block_for`). ``seq_idx (b, l)``: document
    ids of a packed row (``lq == lk``); the selection confines every query to its document, the kernels are
    unchanged.
    """
    return _WindowedCausal.apply(q, k, v, bias, keep_window, scale, block or block_for(keep_window), seq_idx)
