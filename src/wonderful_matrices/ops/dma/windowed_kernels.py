"""Dynamic mask attention with a window, causal: Triton kernels over per-block lists of live keys.

Selection (no gradient, :func:`.selection.live_keys`): every key ``j`` gets ``drop_j``, and query position ``p``
keeps it exactly when ``j <= p < drop_j`` (docs/design.md, fact 1; documents already folded into ``drop_j``). Queries
are cut into blocks of ``B``; block ``t`` gets the list of its at most ``w + B`` live keys (the earlier ones by
``drop_j`` descending, then its own in position order) and, per tile of :data:`.selection.LIVE_TILE` queries, how
many list entries its queries can keep (``ends``), how many leading ones all of them keep and how many leading
carried ones some of them keep (``counts``, :func:`.selection.carried_counts`). The kernels never see the other
keys:

* forward, one program per (query tile of ``BLOCK_M`` inside one block, query head): loops over the list entries
  its queries can keep in tiles of ``BLOCK_N`` keys — the carried keys up to the last one some query of the tile
  keeps, then the block's own keys up to the tile's end (the carried keys dropped before the tile are skipped) —
  loads their key/value rows by index, adds the bias, online softmax in float32 (base 2); writes the output and
  the log-sum-exp. The whole key tiles of the head (the carried keys every query keeps) need no mask (as the
  off-band loop of Triton's fused-attention tutorial); the keys before the tile's first query compare only
  ``p < drop_j``; the block's own keys from there on mask ``j <= p < drop_j`` per element. Each entry's bias (times
  log2 e) and ``drop_j`` are read from arrays in the lists' layout (:func:`list_terms`), not gathered by index.
* ``dq``: the same loops, recomputing the probabilities from the log-sum-exp; it also computes and stores
  ``delta = rowsum(dO·O)`` for its queries (read by the ``dk, dv`` kernel, launched after it).
* ``dk, dv, dbias``: one program per (block, list tile of ``BLOCK_N`` keys, KV head) loops over the block's
  query tiles that keep any of its keys (``[max(j, p0), min(drop_j, p1))`` per key), for every query head of the
  group (GQA: the group shares the list), and adds its partial sums to float32 accumulators with one atomic add
  per program. A key is listed by about ``(drop_j − j) / B + 1`` blocks, so few adds collide.

Launch settings are autotuned on a GPU (query tiles 32/64/128, key tiles 64/128, 4/8 warps, 1-3 stages; a single
configuration under ``TRITON_INTERPRET=1``). Offsets inside one batch row are int32 (int64, ``WIDE``, once one
reaches 2**31: :func:`needs_wide_offsets`). Memory beyond the inputs: the lists ``O(b·hkv·L·(w+B)/B)``,
``drop``, float32 ``dk, dv`` accumulators and the log-sum-exp — linear in ``L``, never ``(lq, lk)`` or
(blocks × keys).
Float16/bfloat16/float32 inputs (float32 products in IEEE precision, not TF32), head dim up to 256.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import require
from ..triton_utils import (
    attention_layout,
    autotune,
    dot_block,
    opaque_to_compile,
    poisoned_empty,
    poisoned_empty_like,
    row_span,
    tile_configs,
)
from . import selection_graphs
from .selection import LIVE_TILE, carried_counts, live_keys

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
BLOCK_ALIGN = 128  # the selection block is a multiple of every query tile the kernels use
MAX_BLOCK = 2048  # the largest selection block block_for picks (the largest measured)
WIDE_OFFSETS = 2 ** 31  # in-row element offsets from here on are computed in int64


def block_for(keep_window: int) -> int:
    """Selection block ``B`` for a window: the window rounded down to a multiple of :data:`BLOCK_ALIGN`, from 128
    to :data:`MAX_BLOCK`.

    A key is listed, and its dk/dv partial sums added atomically, by about ``(drop_j - j) / B + 1`` blocks, so a
    larger block means fewer adds; it also means more listed keys that a query tile skips by its mask (up to ``B``
    dropped inside the block). On an H100 at w = 2048 (docs/results.md, "Session 11"), 16 heads × 128: forward +
    backward 7.38 / 6.29 / 5.97 ms at B = 512 / 1024 / 2048 and T = 16K, 30.4 / 24.9 / 22.3 ms at 64K (the dk/dv
    kernel 3.77 → 2.19 ms at 16K; the forward kernel 0.94 → 1.08 ms, the forward with its selection 1.52 → 1.54);
    cheems-base's 12 × 64 with GQA 3: 4.45 / 4.30 / 4.46 ms."""
    return int(min(MAX_BLOCK, max(BLOCK_ALIGN, keep_window // BLOCK_ALIGN * BLOCK_ALIGN)))


# The 64-key tiles compile without register spills under triton 3.6 for sm_90 at head dim 64 and 128; the 128-key
# tiles spill at head dim 128 in every variant tried and are kept for the smaller head dims (docs/kernels_dma.md
# "Occupancy under triton 3.6"; scripts/dma_compile_report.py). 128 x 128 query-side tiles spill in every variant at
# both head dims and are left out.
QUERY_SIDE = tile_configs([(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (128, 64, 8, 3), (64, 128, 4, 2)],
                          (64, 64))
# (BLOCK_M = query tile, BLOCK_N = key tile) for dk/dv: 8 warps, so that the two float32 accumulators (dk, dv)
# take half the registers per thread they would at 4; 128-query tiles spill in every variant and are left out.
KEY_SIDE = tile_configs([(32, 64, 8, 2), (32, 128, 8, 2), (64, 64, 8, 1), (64, 128, 8, 2)], (64, 64))


@triton.jit
def _listed_keys(list_ptr, list_drop_ptr, list_bias_ptr, dmask, c0, c_end, BLOCK_N: tl.constexpr,
                 MASK: tl.constexpr, BOUNDED: tl.constexpr, WIDE: tl.constexpr):
    """The list entries ``[c0, c0 + BLOCK_N)`` (pointers at the block's list and at its entries' terms,
    :func:`list_terms`): key indices ``j`` (int32; int64 if ``WIDE``), their ``drop_j`` (with a ``MASK``; else
    ``j``, unused), the load mask of their K/V rows (``(BLOCK_N, BLOCK_D)``, or ``(1, BLOCK_D)`` unbounded) and
    their biases times log2 e (float32). ``BOUNDED``: entries from ``c_end`` on are out (``j = 0``, ``drop = 0``:
    kept by no query; K/V rows of zeros); unbounded, the entries must all be listed keys.

    The terms are read at the entry, contiguously, not gathered by ``j``: triton 3.6 compiles a gather of
    ``BLOCK_N`` values by index (in a program of more threads than that) to a 4-byte copy for each of the 16
    columns of the score tile a thread holds, each with its own 64-bit address arithmetic and, bounded, its own
    predicate; a contiguous read of them is 8 copies of 8 bytes (docs/kernels_dma.md, "Forward and dq loop
    trimming (session 25)")."""
    c = c0 + tl.arange(0, BLOCK_N)
    if BOUNDED:
        cmask = c < c_end
        j = tl.load(list_ptr + c, mask=cmask, other=0)
        drop = tl.load(list_drop_ptr + c, mask=cmask, other=0)
        kb2 = tl.load(list_bias_ptr + c, mask=cmask, other=0.0)
        kvmask = cmask[:, None] & dmask[None, :]
    else:
        j = tl.load(list_ptr + c)
        drop = tl.load(list_drop_ptr + c) if MASK > 0 else j
        kb2 = tl.load(list_bias_ptr + c)
        kvmask = dmask[None, :]
    if WIDE:
        j = j.to(tl.int64)
    return j, drop, kvmask, kb2


@triton.jit
def _kept(j, drop, pos, MASK: tl.constexpr):
    """``(BLOCK_M, BLOCK_N)``: whether query position ``pos`` keeps key ``j``, ``j <= p < drop_j``. ``MASK == 1``:
    the keys come before the tile's first query (``j <= p`` holds), so only ``p < drop_j`` is compared: one
    comparison and one select per score instead of two each; ``MASK == 2``: both."""
    if MASK == 1:
        keep = pos[:, None] < drop[None, :]
    else:
        keep = (j[None, :] <= pos[:, None]) & (pos[:, None] < drop[None, :])
    return keep


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_ptr, v_ptr, list_ptr, list_drop_ptr, list_bias_ptr, skl,
               pos, dd, dmask, lo, hi, qk_scale, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
               MASK: tl.constexpr, BOUNDED: tl.constexpr, WIDE: tl.constexpr):
    """Online softmax over the list entries ``[lo, hi)`` in tiles of ``BLOCK_N`` (``BOUNDED``: the last one ends
    at ``hi``; else whole tiles). ``MASK`` 0: every query keeps every key (no ``drop`` read, no comparison), 1: the
    keys come before the tile's first query, 2: any (:func:`_kept`). ``k_ptr``, ``v_ptr``: the row's (batch, KV
    head) first key; offsets from there in int32 unless ``WIDE``."""
    for c0 in range(lo, hi, BLOCK_N):
        j, drop, kvmask, kb2 = _listed_keys(list_ptr, list_drop_ptr, list_bias_ptr, dmask, c0, hi, BLOCK_N,
                                            MASK, BOUNDED, WIDE)
        kv_off = j[:, None] * skl + dd[None, :]
        k = tl.load(k_ptr + kv_off, mask=kvmask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale + kb2[None, :]
        if MASK > 0:
            s = tl.where(_kept(j, drop, pos, MASK), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:  # every score is finite (listed keys have finite biases), so the new maximum is too
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = m_new
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + kv_off, mask=kvmask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _tile_ranges(ends_ptr, counts_ptr, row, t, nb, n_tiles, tile, BLOCK: tl.constexpr, TILE: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The list entries query tile ``tile`` (of ``BLOCK_M`` queries, inside block ``t`` of list row ``row``) loops
    over: ``[0, c_head)`` whole key tiles every query keeps (no mask), ``[c_head, c_alive)`` the rest of the
    carried keys some query keeps, ``[c_own, c_split)`` whole key tiles of the block's own keys before the tile's
    first query, ``[c_split, c_end)`` its other own keys up to the tile's end. The counts are per
    :data:`.selection.LIVE_TILE` queries: those of the LIVE_TILE holding the tile's last query bound what every
    query keeps and where the list ends; that of the one holding its first query what some query keeps, and the
    end of the previous one's (``BLOCK_M`` is a multiple of LIVE_TILE) the own keys before the tile (own keys are
    listed in position order)."""
    block_at = (row * nb + t) * n_tiles
    in_block = (tile * BLOCK_M) % BLOCK
    last_at = block_at + (in_block + BLOCK_M) // TILE - 1
    c_end = tl.load(ends_ptr + last_at)
    c_head = tl.load(counts_ptr + 2 * last_at) // BLOCK_N * BLOCK_N
    c_alive = tl.load(counts_ptr + 2 * (block_at + in_block // TILE) + 1)
    c_own = tl.load(counts_ptr + 2 * block_at + 1)  # the block's carried entries: what its first query keeps
    first_at = block_at + in_block // TILE
    c_prev = tl.load(ends_ptr + first_at - 1, mask=in_block > 0, other=c_own)
    c_split = c_own + (c_prev - c_own) // BLOCK_N * BLOCK_N
    return c_head, c_alive, c_own, c_split, c_end


@autotune(configs=QUERY_SIDE, key=["HEAD_DIM", "BLOCK", "width", "hq", "hkv"])
@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, keys_ptr, list_bias_ptr, list_drop_ptr, ends_ptr, counts_ptr, out_ptr, lse_ptr,
                sqb, sql, sqh, skb, skl, skh, sob, sol, soh,
                lq, lk, hq, hkv, nb, width, n_tiles, scale,
                BLOCK: tl.constexpr, TILE: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
                PRECISION: tl.constexpr, WIDE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    bi = (bh // hq).to(tl.int64)
    head_rows = bh.to(tl.int64) * lq  # the head's first log-sum-exp / delta entry (b·hq·lq may pass 2**31)
    h = bh % hq
    g = h // (hq // hkv)
    row = bi * hkv + g
    i = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # query index
    pos = i + (lk - lq)  # its key position
    if WIDE:
        i = i.to(tl.int64)
    t = (tile * BLOCK_M) // BLOCK
    dd = tl.arange(0, BLOCK_D)
    dmask = dd < HEAD_DIM
    qmask = i < lq
    q = tl.load(q_ptr + bi * sqb + i[:, None] * sql + h * sqh + dd[None, :],
                mask=qmask[:, None] & dmask[None, :], other=0.0)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    base = (row * nb + t) * width
    c_head, c_alive, c_own, c_split, c_end = _tile_ranges(ends_ptr, counts_ptr, row, t, nb, n_tiles, tile, BLOCK,
                                                         TILE, BLOCK_M, BLOCK_N)
    kv_base = bi * skb + g * skh
    qk_scale = scale * 1.4426950408889634
    # The head: carried keys every query of the tile keeps (whole key tiles only), no per-element mask. Then, masked,
    # the keys before the tile's first query that some query of it keeps (only p < drop_j to compare): the rest of
    # the carried ones, then the block's own before the tile in whole tiles (no list bound either); last the other
    # own keys.
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_ptr + kv_base, v_ptr + kv_base, keys_ptr + base,
                               list_drop_ptr + base, list_bias_ptr + base, skl, pos, dd, dmask, 0, c_head,
                               qk_scale, PRECISION, BLOCK_N, 0, False, WIDE)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_ptr + kv_base, v_ptr + kv_base, keys_ptr + base,
                               list_drop_ptr + base, list_bias_ptr + base, skl, pos, dd, dmask, c_head, c_alive,
                               qk_scale, PRECISION, BLOCK_N, 1, True, WIDE)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_ptr + kv_base, v_ptr + kv_base, keys_ptr + base,
                               list_drop_ptr + base, list_bias_ptr + base, skl, pos, dd, dmask, c_own, c_split,
                               qk_scale, PRECISION, BLOCK_N, 1, False, WIDE)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_ptr + kv_base, v_ptr + kv_base, keys_ptr + base,
                               list_drop_ptr + base, list_bias_ptr + base, skl, pos, dd, dmask, c_split, c_end,
                               qk_scale, PRECISION, BLOCK_N, 2, True, WIDE)
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    tl.store(out_ptr + bi * sob + i[:, None] * sol + h * soh + dd[None, :], out.to(out_ptr.dtype.element_ty),
             mask=qmask[:, None] & dmask[None, :])
    lse = tl.where(empty, 0.0, m_i + tl.log2(tl.where(empty, 1.0, l_i)))  # base 2
    tl.store(lse_ptr + head_rows + i, lse, mask=qmask)


@triton.jit
def _dq_inner(dq, q, do, lse, delta, k_ptr, v_ptr, list_ptr, list_drop_ptr, list_bias_ptr, skl,
              pos, dd, dmask, lo, hi, qk_scale, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
              MASK: tl.constexpr, BOUNDED: tl.constexpr, WIDE: tl.constexpr):
    """``dq`` over the list entries ``[lo, hi)``, masked or not as :func:`_fwd_inner`. The rows of queries past
    ``lq`` get arbitrary values (rows are independent; the caller does not store them)."""
    for c0 in range(lo, hi, BLOCK_N):
        j, drop, kvmask, kb2 = _listed_keys(list_ptr, list_drop_ptr, list_bias_ptr, dmask, c0, hi, BLOCK_N,
                                            MASK, BOUNDED, WIDE)
        kv_off = j[:, None] * skl + dd[None, :]
        k = tl.load(k_ptr + kv_off, mask=kvmask, other=0.0)
        v = tl.load(v_ptr + kv_off, mask=kvmask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale + kb2[None, :]
        p = tl.exp2(s - lse[:, None])
        if MASK > 0:  # (a query past lq, at p >= lk >= drop_j, keeps no key)
            p = tl.where(_kept(j, drop, pos, MASK), p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq


@autotune(configs=QUERY_SIDE, key=["HEAD_DIM", "BLOCK", "width", "hq", "hkv"])
@triton.jit
def _dq_kernel(q_ptr, k_ptr, v_ptr, keys_ptr, list_bias_ptr, list_drop_ptr, ends_ptr, counts_ptr, do_ptr, lse_ptr,
               out_ptr, delta_ptr, dq_ptr,
               sqb, sql, sqh, skb, skl, skh, sdb, sdl, sdh,
               lq, lk, hq, hkv, nb, width, n_tiles, scale, sob, sol, soh, sgb, sgl, sgh,
               BLOCK: tl.constexpr, TILE: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
               PRECISION: tl.constexpr, WIDE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    bi = (bh // hq).to(tl.int64)
    head_rows = bh.to(tl.int64) * lq  # the head's first log-sum-exp / delta entry (b·hq·lq may pass 2**31)
    h = bh % hq
    g = h // (hq // hkv)
    row = bi * hkv + g
    i = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    pos = i + (lk - lq)
    if WIDE:
        i = i.to(tl.int64)
    t = (tile * BLOCK_M) // BLOCK
    dd = tl.arange(0, BLOCK_D)
    dmask = dd < HEAD_DIM
    qmask = i < lq
    io_mask = qmask[:, None] & dmask[None, :]
    q = tl.load(q_ptr + bi * sqb + i[:, None] * sql + h * sqh + dd[None, :], mask=io_mask, other=0.0)
    do = tl.load(do_ptr + bi * sdb + i[:, None] * sdl + h * sdh + dd[None, :], mask=io_mask, other=0.0)
    lse = tl.load(lse_ptr + head_rows + i, mask=qmask, other=0.0)
    # delta = rowsum(dO * O), also stored for the dk/dv kernel, which runs after this one
    o = tl.load(out_ptr + bi * sob + i[:, None] * sol + h * soh + dd[None, :], mask=io_mask, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    tl.store(delta_ptr + head_rows + i, delta, mask=qmask)
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    base = (row * nb + t) * width
    c_head, c_alive, c_own, c_split, c_end = _tile_ranges(ends_ptr, counts_ptr, row, t, nb, n_tiles, tile, BLOCK,
                                                         TILE, BLOCK_M, BLOCK_N)  # as in the forward
    kv_base = bi * skb + g * skh
    qk_scale = scale * 1.4426950408889634
    dq = _dq_inner(dq, q, do, lse, delta, k_ptr + kv_base, v_ptr + kv_base, keys_ptr + base, list_drop_ptr + base,
                   list_bias_ptr + base, skl, pos, dd, dmask, 0, c_head, qk_scale, PRECISION, BLOCK_N, 0,
                   False, WIDE)
    dq = _dq_inner(dq, q, do, lse, delta, k_ptr + kv_base, v_ptr + kv_base, keys_ptr + base, list_drop_ptr + base,
                   list_bias_ptr + base, skl, pos, dd, dmask, c_head, c_alive, qk_scale, PRECISION, BLOCK_N,
                   1, True, WIDE)
    dq = _dq_inner(dq, q, do, lse, delta, k_ptr + kv_base, v_ptr + kv_base, keys_ptr + base, list_drop_ptr + base,
                   list_bias_ptr + base, skl, pos, dd, dmask, c_own, c_split, qk_scale, PRECISION, BLOCK_N,
                   1, False, WIDE)
    dq = _dq_inner(dq, q, do, lse, delta, k_ptr + kv_base, v_ptr + kv_base, keys_ptr + base, list_drop_ptr + base,
                   list_bias_ptr + base, skl, pos, dd, dmask, c_split, c_end, qk_scale, PRECISION, BLOCK_N,
                   2, True, WIDE)
    tl.store(dq_ptr + bi * sgb + i[:, None] * sgl + h * sgh + dd[None, :], (dq * scale).to(dq_ptr.dtype.element_ty),
             mask=io_mask)


@autotune(configs=KEY_SIDE, key=["HEAD_DIM", "BLOCK", "width", "hq", "hkv"],
                 reset_to_zero=["dk_ptr", "dv_ptr", "dbias_ptr"])
@triton.jit
def _dkv_kernel(q_ptr, k_ptr, v_ptr, bias_ptr, keys_ptr, ends_ptr, drop_ptr, do_ptr, lse_ptr, delta_ptr,
                dk_ptr, dv_ptr, dbias_ptr,
                sqb, sql, sqh, skb, skl, skh, sbb, sbl, sbh, sdb, sdl, sdh,
                lq, lk, hq, hkv, nb, width, n_tiles, scale,
                BLOCK: tl.constexpr, TILE: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
                PRECISION: tl.constexpr, WIDE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    t = tl.program_id(0)
    ctile = tl.program_id(1)
    row = tl.program_id(2).to(tl.int64)  # bi * hkv + g
    bi = row // hkv
    g = row % hkv
    group = hq // hkv
    count = tl.load(ends_ptr + (row * nb + t) * n_tiles + n_tiles - 1)
    c = ctile * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = c < count
    base = (row * nb + t) * width
    j = tl.load(keys_ptr + base + c, mask=cmask, other=0).to(tl.int64)
    drop = tl.load(drop_ptr + row * lk + j, mask=cmask, other=0)
    offset = lk - lq
    p0 = offset + t * BLOCK  # the block's first query position
    # The block's queries (relative index) that keep key j: [max(j, p0), min(drop_j, p0 + BLOCK)) - p0.
    first = tl.maximum(j - p0, 0).to(tl.int32)
    last = tl.minimum(drop - p0, BLOCK)
    live = cmask & (last > first)
    dd = tl.arange(0, BLOCK_D)
    dmask = dd < HEAD_DIM
    kv_off = bi * skb + j[:, None] * skl + g * skh + dd[None, :]
    k = tl.load(k_ptr + kv_off, mask=cmask[:, None] & dmask[None, :], other=0.0)
    v = tl.load(v_ptr + kv_off, mask=cmask[:, None] & dmask[None, :], other=0.0)
    kb = tl.load(bias_ptr + bi * sbb + j * sbl + g * sbh, mask=live, other=0.0).to(tl.float32)
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    db = tl.zeros((BLOCK_N,), tl.float32)
    lo = tl.min(tl.where(live, first, BLOCK), 0)
    hi = tl.max(tl.where(live, last, 0), 0)
    qk_scale = scale * 1.4426950408889634
    for hh in range(0, group):
        h = g * group + hh
        bh = bi * hq + h
        q_head = q_ptr + bi * sqb + h * sqh  # the head's first query row
        do_head = do_ptr + bi * sdb + h * sdh
        for r0 in range((lo // BLOCK_M) * BLOCK_M, hi, BLOCK_M):
            rel = r0 + tl.arange(0, BLOCK_M)
            i = t * BLOCK + rel
            qmask = (i < lq) & (rel < BLOCK)
            if WIDE:
                i = i.to(tl.int64)
            io_mask = qmask[:, None] & dmask[None, :]
            q = tl.load(q_head + i[:, None] * sql + dd[None, :], mask=io_mask, other=0.0)
            do = tl.load(do_head + i[:, None] * sdl + dd[None, :], mask=io_mask, other=0.0)
            lse = tl.load(lse_ptr + bh * lq + i, mask=qmask, other=0.0)
            delta = tl.load(delta_ptr + bh * lq + i, mask=qmask, other=0.0)
            st = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale + kb[:, None] * 1.4426950408889634
            keep = (first[:, None] <= rel[None, :]) & (rel[None, :] < last[:, None]) & qmask[None, :]
            pt = tl.where(keep, tl.exp2(st - lse[None, :]), 0.0)  # (BLOCK_N, BLOCK_M)
            dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
            dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            dst = pt * (dpt - delta[None, :])
            db += tl.sum(dst, 1)
            dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
    amask = live[:, None] & dmask[None, :]
    out_off = ((bi * lk + j[:, None]) * hkv + g) * HEAD_DIM + dd[None, :]
    # Relaxed: the sums are read after the kernel, so the adds need no ordering (Triton's default, acq_rel, fences
    # every one of them).
    tl.atomic_add(dk_ptr + out_off, dk * scale, mask=amask, sem="relaxed")
    tl.atomic_add(dv_ptr + out_off, dv, mask=amask, sem="relaxed")
    tl.atomic_add(dbias_ptr + (bi * lk + j) * hkv + g, db, mask=live, sem="relaxed")


@triton.jit
def _list_terms_kernel(keys_ptr, bias_ptr, drop_ptr, list_bias_ptr, list_drop_ptr, lk, hkv, sbb, sbl, sbh,
                       entries, BLOCK: tl.constexpr):
    """:func:`list_terms`: one program per ``BLOCK`` entries of one list row (``entries`` = nb·W of them)."""
    chunk = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)  # bi * hkv + g
    c = chunk * BLOCK + tl.arange(0, BLOCK)
    cmask = c < entries
    at = row * entries + c
    j = tl.load(keys_ptr + at, mask=cmask, other=0)
    kb = tl.load(bias_ptr + (row // hkv) * sbb + (row % hkv) * sbh + j.to(tl.int64) * sbl, mask=cmask, other=0.0)
    tl.store(list_bias_ptr + at, kb * 1.4426950408889634, mask=cmask)
    tl.store(list_drop_ptr + at, tl.load(drop_ptr + row * lk + j, mask=cmask, other=0), mask=cmask)


def list_terms(bias32: torch.Tensor, keys: torch.Tensor, drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each list entry's key terms, in the lists' layout, for the forward and dq kernels: bias32 (b, lk, hkv)
    float32, ``keys (b·hkv, nb, W)`` and ``drop (b·hkv, lk)`` of :func:`select` -> ``list_bias (b·hkv, nb, W)``
    float32, the entry's bias times log2 e (the kernels' base-2 scores: the same float32 product they formed per
    key tile before, so the same bits), and ``list_drop (b·hkv, nb, W)`` int32, its ``drop_j``. Entries past a
    list's end (key 0) get key 0's. One launch per forward, reading the lists once: O(b·hkv·nb·W), the lists' own
    size; the backward reuses the forward's.

    The kernels read these at the entry instead of gathering ``bias[j]`` and ``drop[j]`` by index in their loops;
    docs/kernels_dma.md, "Forward and dq loop trimming (session 25)", gives the instructions this saves."""
    n, nb, width = keys.shape
    lk, hkv = bias32.shape[1], bias32.shape[2]
    list_bias = poisoned_empty(n, nb, width, device=keys.device)
    list_drop = poisoned_empty(n, nb, width, dtype=torch.int32, device=keys.device)
    block = 1024
    _list_terms_kernel[(triton.cdiv(nb * width, block), n)](
        keys, bias32, drop, list_bias, list_drop, lk, hkv, bias32.stride(0), bias32.stride(1), bias32.stride(2),
        nb * width, BLOCK=block)
    return list_bias, list_drop


def needs_wide_offsets(*tensors: torch.Tensor) -> bool:
    """Whether an element offset inside one batch row of any of ``tensors`` (b, l, ...) reaches ``2**31``: the
    kernels then compute row offsets in int64 (``WIDE``), else in int32 (fewer registers and instructions)."""
    return any(row_span(t) >= WIDE_OFFSETS for t in tensors)


def _meta(q: torch.Tensor, block: int, *tensors: torch.Tensor) -> dict:
    """The kernels' constexprs for queries ``q`` and the other (b, l, ...) tensors they index, ``tensors``."""
    d = q.shape[-1]
    return dict(BLOCK=block, TILE=LIVE_TILE, BLOCK_D=dot_block(d), HEAD_DIM=d,
                PRECISION="ieee" if q.dtype == torch.float32 else None, WIDE=needs_wide_offsets(q, *tensors))


def select(bias: torch.Tensor, lq: int, keep_window: int, block: int, seq_idx: torch.Tensor | None = None):
    """The kernels' selection: bias (b, lk, hkv), optional seq_idx (b, lk) -> live_keys' ``drop (b·hkv, lk)``,
    ``keys (b·hkv, nb, w + block)``, ``ends (b·hkv, nb, block / LIVE_TILE)`` and carried_counts' ``counts (b·hkv,
    nb, block / LIVE_TILE, 2)`` (rows ordered (batch, KV head)), in the bias's own precision (ties as the oracle
    sees them)."""
    if selection_graphs.applies(bias, seq_idx):  # the same tensors, replayed from a CUDA graph per shape
        replayed = selection_graphs.select_graphed(_select, bias, lq, keep_window, block)
        if replayed is not None:
            return replayed
    return _select(bias, lq, keep_window, block, seq_idx)


def _select(bias: torch.Tensor, lq: int, keep_window: int, block: int, seq_idx: torch.Tensor | None = None):
    b, lk, hkv = bias.shape
    documents = None if seq_idx is None else seq_idx[:, None, :].expand(b, hkv, lk).reshape(b * hkv, lk)
    drop, keys, ends = live_keys(bias.detach().permute(0, 2, 1).reshape(b * hkv, lk), lq, keep_window, block,
                                 documents)
    return drop, keys, ends, carried_counts(drop, keys, ends, lq, block)


def _windowed_forward_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias32: torch.Tensor,
                           keys: torch.Tensor, ends: torch.Tensor, counts: torch.Tensor, drop: torch.Tensor,
                           scale: float, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    b, lq, hq, _ = q.shape
    # contiguous, as the kernels'
    return (q.new_empty(q.shape), q.new_empty(b * hq, lq, dtype=torch.float32),
            keys.new_empty(keys.shape, dtype=torch.float32), keys.new_empty(keys.shape, dtype=torch.int32))


@opaque_to_compile("dma_windowed_forward", _windowed_forward_fake)
def windowed_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias32: torch.Tensor, keys: torch.Tensor,
                     ends: torch.Tensor, counts: torch.Tensor, drop: torch.Tensor, scale: float,
                     block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward kernel: q (b,lq,hq,d), k/v (b,lk,hkv,d) (unit last stride), bias32 (b,lk,hkv) float32
    contiguous, the selection of :func:`select` -> (out (b,lq,hq,d) in q's dtype, lse (b·hq, lq) float32, and the
    lists' terms of :func:`list_terms`, which the backward's dq kernel reads too)."""
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    nb, width, n_tiles = keys.shape[1], keys.shape[2], ends.shape[2]
    out = poisoned_empty_like(q)  # (the kernel writes with out's own strides)
    lse = poisoned_empty(b * hq, lq, device=q.device)
    list_bias, list_drop = list_terms(bias32, keys, drop)
    grid = lambda meta: (triton.cdiv(lq, meta["BLOCK_M"]), b * hq)  # noqa: E731
    _fwd_kernel[grid](q, k, v, keys, list_bias, list_drop, ends, counts, out, lse,
                      q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                      out.stride(0), out.stride(1), out.stride(2),
                      lq, lk, hq, hkv, nb, width, n_tiles, scale, **_meta(q, block, k, v, bias32, out))
    return out, lse, list_bias, list_drop


def _windowed_backward_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias32: torch.Tensor,
                            keys: torch.Tensor, ends: torch.Tensor, counts: torch.Tensor, drop: torch.Tensor,
                            list_bias: torch.Tensor, list_drop: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                            dout: torch.Tensor, scale: float,
                            block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    b, lk, hkv, d = k.shape
    f32 = dict(dtype=torch.float32)
    return (q.new_empty(q.shape), k.new_empty(b, lk, hkv, d, **f32), k.new_empty(b, lk, hkv, d, **f32),
            k.new_empty(b, lk, hkv, **f32))


@opaque_to_compile("dma_windowed_backward", _windowed_backward_fake)
def windowed_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias32: torch.Tensor, keys: torch.Tensor,
                      ends: torch.Tensor, counts: torch.Tensor, drop: torch.Tensor, list_bias: torch.Tensor,
                      list_drop: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor, scale: float,
                      block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward kernels: the forward's inputs and outputs and dout (b,lq,hq,d) contiguous -> (dq in q's dtype,
    dk, dv (b,lk,hkv,d), dbias (b,lk,hkv), float32)."""
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    nb, width, n_tiles = keys.shape[1], keys.shape[2], ends.shape[2]
    delta = poisoned_empty(b * hq, lq, device=q.device)  # rowsum(dout * out), written by the dq kernel
    meta = _meta(q, block, k, v, bias32, dout, out)
    qk_strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2))
    do_strides = (dout.stride(0), dout.stride(1), dout.stride(2))
    sizes = (lq, lk, hq, hkv, nb, width, n_tiles, scale)
    dq = poisoned_empty_like(q)  # contiguous whatever q's strides (a slice of a fused projection is not dense)
    _dq_kernel[lambda meta: (triton.cdiv(lq, meta["BLOCK_M"]), b * hq)](
        q, k, v, keys, list_bias, list_drop, ends, counts, dout, lse, out, delta, dq, *qk_strides, *do_strides,
        *sizes, out.stride(0), out.stride(1), out.stride(2), dq.stride(0), dq.stride(1), dq.stride(2), **meta)
    dk = torch.zeros(b, lk, hkv, d, device=q.device, dtype=torch.float32)
    dv = torch.zeros_like(dk)
    dbias = torch.zeros(b, lk, hkv, device=q.device, dtype=torch.float32)
    _dkv_kernel[lambda meta: (nb, triton.cdiv(width, meta["BLOCK_N"]), b * hkv)](
        q, k, v, bias32, keys, ends, drop, dout, lse, delta, dk, dv, dbias, *qk_strides,
        bias32.stride(0), bias32.stride(1), bias32.stride(2), *do_strides, *sizes, **meta)
    return dq, dk, dv, dbias


class _WindowedCausal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, keep_window: int, scale: float, block: int, seq_idx):
        lq = q.shape[1]
        q, k, v = attention_layout(q, k, v)
        bias32 = bias.float().contiguous()
        drop, keys, ends, counts = select(bias, lq, keep_window, block, seq_idx)
        out, lse, list_bias, list_drop = windowed_forward(q, k, v, bias32, keys, ends, counts, drop, scale, block)
        ctx.save_for_backward(q, k, v, bias32, keys, ends, counts, drop, list_bias, list_drop, out, lse)
        ctx.scale, ctx.block, ctx.bias_dtype = scale, block, bias.dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, bias32, keys, ends, counts, drop, list_bias, list_drop, out, lse = ctx.saved_tensors
        dq, dk, dv, dbias = windowed_backward(q, k, v, bias32, keys, ends, counts, drop, list_bias, list_drop, out,
                                              lse, dout.contiguous(), ctx.scale, ctx.block)
        return dq, dk.to(k.dtype), dv.to(v.dtype), dbias.to(ctx.bias_dtype), None, None, None, None


def dynamic_mask_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                                  keep_window: int, scale: float, block: int | None = None,
                                  seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Windowed causal DMA: q (b,lq,hq,d), k/v (b,lk,hkv,d), bias (b,lk,hkv) -> (b,lq,hq,d) in q's dtype.

    Needs ``keep_window < lk``, ``q.dtype`` in :data:`DTYPES`, ``d <= 256`` (the dispatcher checks); ``lq < lk``
    (queries bottom-right aligned) runs here too. ``block``: selection block, a multiple of :data:`BLOCK_ALIGN`
    (default :func:`block_for`). ``seq_idx (b, l)``: document ids of a packed row (``lq == lk``); the selection
    folds the documents into ``drop``, the kernels are unchanged.
    """
    block = block or block_for(keep_window)
    require(isinstance(block, int) and block > 0 and block % BLOCK_ALIGN == 0, "block", block,
            f"None or a positive multiple of {BLOCK_ALIGN}")
    return _WindowedCausal.apply(q, k, v, bias, keep_window, scale, block, seq_idx)
