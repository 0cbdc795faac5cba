"""Windowed DMA's ``dk, dv, dbias`` as one key-major Triton kernel without atomics (issue #13, session 25).

Query position ``p`` keeps key ``j`` exactly when ``j <= p < drop_j`` (docs/design.md, fact 1; ``drop`` from
:func:`.selection.live_keys`, documents already folded in, ``drop_j <= j`` for a key no query keeps). Queries are
bottom-right aligned: query index ``i`` sits at position ``p = lk - lq + i``, so key ``j`` is kept by the query
indices ``[max(j, lk - lq) - (lk - lq), drop_j - (lk - lq))`` — one contiguous range per key.

* **Key tiles** (:func:`key_order`, torch, no gradient): every key of a (batch, KV head) row goes to exactly one tile
  of ``BLOCK_N`` keys, in an order that puts keys of similar ``(j, drop_j)`` together: positions are cut into spans
  of :data:`KEY_SPAN` keys, each span's keys sorted by ``drop_j`` (the keys no query keeps first, ties by ``j``),
  and the row's order is cut into tiles. A tile's queries are the union of its keys' ranges, ``[min first, max
  drop)``, so one long-lived key among short-lived ones would make its tile scan far; sorted by ``drop_j``,
  long-lived keys share tiles. The order does not depend on ``BLOCK_N`` (so the autotuner may choose it): with
  ``KEY_SPAN`` a multiple of ``BLOCK_N`` no tile straddles two spans. :func:`tile_work` counts the (key, query)
  pairs a tiling makes the kernel visit against the kept ones (the efficiency table of docs/kernels_dma.md).
* **The kernel** (:func:`_dkv_key_kernel`), one program per (key tile, (batch, KV head) row): loads its keys'
  positions, ``drop``, K/V rows (gathered by position) and biases once, then for every query head of the GQA group
  loops over the contiguous query tiles of ``BLOCK_M`` from the tile's first live query to its last: plain tile
  loads of ``q``, ``dO``, the log-sum-exp and ``delta`` (written by the dq kernel of :mod:`.windowed_kernels`),
  ``P = exp2(scaled QKᵀ + bias·log2 e − lse)`` recomputed as ``_dkv_kernel`` does, ``dV += Pᵀ dO``,
  ``dS = P (dO Vᵀ − delta)``, ``dK += dSᵀ Q``, ``dbias += rowsum(dS)``. The mask ``j <= p < drop_j`` is applied
  only on the query tiles that need it: a query tile inside ``[max j, min drop_j)`` of the tile's live keys keeps
  every live key and skips it (a uniform branch). Every key is in exactly one tile, so the results are written once,
  with plain stores, directly in the output dtypes: no zero fill, no float32 accumulators, no atomics, no cast
  pass; keys no query keeps get zeros.

Offsets inside one batch row are int32 (int64, ``WIDE``, once one reaches 2**31: ``needs_wide_offsets``). Launch
settings are autotuned on a GPU (a single configuration under ``TRITON_INTERPRET=1``). Float16/bfloat16/float32
inputs (float32 products in IEEE precision), head dims up to 256 (padded to a power of two, ``BLOCK_D``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_utils import autotune, dot_block, poisoned_empty, tile_configs
from .windowed_kernels import needs_wide_offsets

# Span of key positions inside which keys are sorted by drop_j: a multiple of every key tile the autotuner may pick.
# Longer spans let keys of similar drop_j share tiles, shorter ones keep a tile's first positions close. At 16K,
# w = 2048, random biases, the visited pairs are kept pairs at 0.82 / 0.76 (64- / 128-key tiles) with 2048, against
# 0.81 / 0.70 with 1024 and 0.77 / 0.74 with 4096; 2048 is also within 0.02 of the best span from w = 512 to 8192
# (docs/kernels_dma.md, "Key-major dk/dv"; docs/results/session25/keymajor/tiling_efficiency.py).
KEY_SPAN = 2048
# (BLOCK_M = query tile, BLOCK_N = key tile, warps, stages): the configurations that compile for sm_90 without
# register spills under triton 3.6 and 3.7 at head dim 128 (B1 H16) and at 64 with GQA 3 (cheems-base), 8 warps so
# that the dk and dv float32 accumulators take half the registers per thread; 64- and 128-key tiles run wgmma, the
# 32-key one mma.sync (kept for its tiling, the most efficient: 0.85 of the visited pairs kept at 16K). At head
# dim 128, 128-query tiles with 64 or 128 keys spill in every variant (184-3200 B), 64 x 128 too (80-144 B)
# (scripts/dma_compile_report.py --kernels _dkv_key_kernel; docs/kernels_dma.md, "Key-major dk/dv").
KEY_MAJOR = tile_configs([(32, 64, 8, 1), (32, 64, 8, 2), (64, 64, 8, 1), (32, 128, 8, 1), (32, 128, 8, 2),
                          (64, 32, 8, 2)], (16, 16))


@torch.no_grad()
def key_order(drop: torch.Tensor, lq: int, span: int | None = None) -> torch.Tensor:
    """The keys of each row in tile order: ``drop (n, lk)`` (int32, as :func:`.selection.live_keys` returns it) ->
    ``(n, lk)`` int32 key positions, a permutation of ``0 … lk − 1`` per row.

    Positions are cut into spans of ``span`` keys (default :data:`KEY_SPAN`), spans in position order; inside a span
    the keys no query keeps come first (by position), then the others by ``drop_j`` ascending, ties by position. Tile
    ``t`` of ``BLOCK_N`` keys is entries ``[t·BLOCK_N, (t + 1)·BLOCK_N)`` of its row. One sort of an int64 key per
    row: O(n·lk·log lk) work, O(n·lk) memory.
    """
    span = KEY_SPAN if span is None else span
    n, lk = drop.shape
    j = torch.arange(lk, device=drop.device)
    live = drop > j.clamp_min(lk - lq)  # some query (position >= lk - lq) keeps key j
    sort_drop = torch.where(live, drop.long(), 0)  # a live key's drop is at least 1: the dead keys sort first
    composite = ((j // span) * (lk + 1) + sort_drop) * lk + j  # (span, drop, position); unique per row
    return torch.sort(composite, dim=-1).indices.to(torch.int32)


@torch.no_grad()
def tile_work(drop: torch.Tensor, lq: int, order: torch.Tensor, key_tile: int, block_m: int) -> dict:
    """What the kernel does with the tiling ``order`` (:func:`key_order`) in tiles of ``key_tile`` keys and query tiles
    of ``block_m``: ``drop (n, lk)`` -> dict of ints over all rows: ``kept`` (key, query) pairs ``Σ (drop_j −
    max(j, lk − lq))⁺``; ``visited`` pairs, per tile ``key_tile`` × the queries of its loop (``[min first, max
    drop)`` rounded out to whole query tiles, as the kernel's loop runs them); ``query_tiles`` the loop's iterations
    and ``unmasked`` those that keep every live key of their tile (where the kernel skips the mask). Per query
    head."""
    n, lk = drop.shape
    offset = lk - lq
    tiles = -(-lk // key_tile)
    pad = tiles * key_tile - lk
    j = torch.nn.functional.pad(order.long(), (0, pad), value=0)
    first = j.clamp_min(offset) - offset  # the first query index that may keep each key
    end = drop.long().gather(1, j) - offset  # one past the last
    live = (end > first) & (torch.arange(tiles * key_tile, device=drop.device) < lk)
    first, end, live = (t.view(n, tiles, key_tile) for t in (first, end, live))
    lo = torch.where(live, first, lq).amin(-1) // block_m * block_m
    hi = torch.where(live, end, 0).amax(-1)
    full_lo = -(-torch.where(live, first, 0).amax(-1) // block_m) * block_m
    full_hi = torch.where(live, end, lq).amin(-1) // block_m * block_m
    steps = (-(-(hi - lo) // block_m)).clamp_min(0)
    unmasked = ((full_hi - full_lo) // block_m).clamp_min(0) * live.any(-1)
    return dict(kept=int(torch.where(live, end - first, 0).sum()), visited=int(steps.sum()) * block_m * key_tile,
                query_tiles=int(steps.sum()), unmasked=int(unmasked.sum()))


@autotune(configs=KEY_MAJOR, key=["HEAD_DIM", "hq", "hkv"])
@triton.jit
def _dkv_key_kernel(q_ptr, k_ptr, v_ptr, bias_ptr, order_ptr, drop_ptr, do_ptr, lse_ptr, delta_ptr,
                    dk_ptr, dv_ptr, dbias_ptr,
                    sqb, sql, sqh, skb, skl, skh, sbb, sbl, sbh, sdb, sdl, sdh,
                    lq, lk, hq, hkv, scale,
                    BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, WIDE: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    ktile = tl.program_id(0)  # the tiles of one row run side by side: they read the same queries from L2
    row = tl.program_id(1).to(tl.int64)  # bi * hkv + g
    bi = row // hkv
    g = row % hkv
    group = hq // hkv
    offset = lk - lq
    c = ktile * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = c < lk
    j = tl.load(order_ptr + row * lk + c, mask=cmask, other=0)
    drop = tl.load(drop_ptr + row * lk + j, mask=cmask, other=0)
    first = tl.maximum(j, offset)  # the first position that can keep key j
    live = cmask & (drop > first)
    if WIDE:
        j = j.to(tl.int64)
    dd = tl.arange(0, BLOCK_D)
    dmask = dd < HEAD_DIM
    kv_mask = cmask[:, None] & dmask[None, :]
    kv_off = j[:, None] * skl + dd[None, :]
    kv_row = bi * skb + g * skh
    k = tl.load(k_ptr + kv_row + kv_off, mask=kv_mask, other=0.0)
    v = tl.load(v_ptr + kv_row + kv_off, mask=kv_mask, other=0.0)
    # A key no query keeps gets bias 0 (its row is discarded): a -inf or NaN bias never enters the products.
    kb2 = tl.load(bias_ptr + bi * sbb + g * sbh + j * sbl, mask=live, other=0.0) * 1.4426950408889634
    # Query indices of the tile's loop, [lo, hi) (lo rounded down to a query tile), and the query tiles that keep
    # every live key, those starting in [full_lo, full_hi) (both multiples of BLOCK_M).
    lo = (tl.min(tl.where(live, first, lk), 0) - offset) // BLOCK_M * BLOCK_M
    hi = tl.max(tl.where(live, drop, offset), 0) - offset
    full_lo = tl.cdiv(tl.max(tl.where(live, first, offset), 0) - offset, BLOCK_M) * BLOCK_M
    full_hi = (tl.min(tl.where(live, drop, lk), 0) - offset) // BLOCK_M * BLOCK_M
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    db = tl.zeros((BLOCK_N,), tl.float32)
    qk_scale = scale * 1.4426950408889634
    for hh in range(0, group):
        h = g * group + hh
        bh = bi * hq + h
        q_head = q_ptr + bi * sqb + h * sqh  # the head's first query row
        do_head = do_ptr + bi * sdb + h * sdh
        lse_row = lse_ptr + bh * lq
        delta_row = delta_ptr + bh * lq
        for r0 in range(lo, hi, BLOCK_M):
            i = r0 + tl.arange(0, BLOCK_M)
            pos = i + offset
            qmask = i < lq
            if WIDE:
                i = i.to(tl.int64)
            io_mask = qmask[:, None] & dmask[None, :]
            q = tl.load(q_head + i[:, None] * sql + dd[None, :], mask=io_mask, other=0.0)
            do = tl.load(do_head + i[:, None] * sdl + dd[None, :], mask=io_mask, other=0.0)
            lse = tl.load(lse_row + i, mask=qmask, other=0.0)
            delta = tl.load(delta_row + i, mask=qmask, other=0.0)
            st = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale + kb2[:, None]
            pt = tl.exp2(st - lse[None, :])  # (BLOCK_N, BLOCK_M)
            # The mask only where some live key of the tile is not kept by some query of the tile (a query past lq
            # has p >= lk >= drop_j: the drop bound masks it). One loop with a uniform branch, not three loops with
            # a constexpr MASKED as the forward's: on sm_90 the three copies reached 255 registers in every
            # configuration of KEY_MAJOR and spilled in five of six (docs/kernels_dma.md, "Key-major dk/dv").
            if (r0 < full_lo) | (r0 >= full_hi):
                keep = (j[:, None] <= pos[None, :]) & (pos[None, :] < drop[:, None])
                pt = tl.where(keep, pt, 0.0)
            dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
            dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            dst = pt * (dpt - delta[None, :])
            db += tl.sum(dst, 1)
            dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
    # dk, dv (b, lk, hkv, HEAD_DIM) and dbias (b, lk, hkv) contiguous; the row's base added once, int64
    out_row = (bi * lk * hkv + g) * HEAD_DIM
    out_off = j[:, None] * (hkv * HEAD_DIM) + dd[None, :]
    dk = tl.where(live[:, None], dk * scale, 0.0)
    dv = tl.where(live[:, None], dv, 0.0)
    tl.store(dk_ptr + out_row + out_off, dk.to(dk_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptr + out_row + out_off, dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(dbias_ptr + bi * lk * hkv + g + j * hkv, tl.where(live, db, 0.0), mask=cmask)


def key_major_dkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias32: torch.Tensor, drop: torch.Tensor,
                  dout: torch.Tensor, lse: torch.Tensor, delta: torch.Tensor,
                  scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dk, dv, dbias`` of windowed DMA by the key-major kernel.

    q, dout (b, lq, hq, d) and k, v (b, lk, hkv, d) with unit last stride (v laid out like k), bias32 (b, lk, hkv)
    float32, drop (b·hkv, lk) int32 (rows ordered (batch, KV head)), lse and delta (b·hq, lq) float32 as the
    forward and the dq kernel of :mod:`.windowed_kernels` write them (base-2 log-sum-exp; ``rowsum(dO·O)``) ->
    (dk (b, lk, hkv, d) in k's dtype, dv in v's dtype, dbias (b, lk, hkv) float32), contiguous.
    """
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    order = key_order(drop, lq)
    dk = poisoned_empty(b, lk, hkv, d, dtype=k.dtype, device=q.device)
    dv = poisoned_empty(b, lk, hkv, d, dtype=v.dtype, device=q.device)
    dbias = poisoned_empty(b, lk, hkv, device=q.device)
    _dkv_key_kernel[lambda meta: (triton.cdiv(lk, meta["BLOCK_N"]), b * hkv)](
        q, k, v, bias32, order, drop, dout, lse, delta, dk, dv, dbias,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        bias32.stride(0), bias32.stride(1), bias32.stride(2), dout.stride(0), dout.stride(1), dout.stride(2),
        lq, lk, hq, hkv, scale, BLOCK_D=dot_block(d), HEAD_DIM=d,
        PRECISION="ieee" if q.dtype == torch.float32 else None, WIDE=needs_wide_offsets(q, k, v, bias32, dout, dk))
    return dk, dv, dbias
