"""The windowed DMA selection (:func:`.selection.live_keys`) in Triton kernels, with no large sort beyond the one
global rank sort (docs/design.md, fact 1).

Per row (one batch row and KV head) of ``L`` keys, ``rank`` is the index in the global rank order (padding last,
never counted). The threshold of query position ``p`` is ``T_p``, the ``w``-th smallest rank among the valid keys
``<= p`` (``L`` when there are fewer); ``drop_j`` is the first ``p`` with ``T_p < rank_j``. The ranks are cut into
buckets of ``R`` consecutive ranks and the queries into sub-blocks of ``S`` positions; ``hist[t, b]`` counts the
valid keys ``<= p0_t`` (the sub-block's first position) with a rank in buckets ``0 … b``. Then:

* ``_base_kernel``, per (row, sub-block): the ``min(w, S)`` largest of the ``w`` smallest ranks among the keys
  ``<= p0`` (padded with ``L``). The histogram row gives the bucket holding the first of them and how many smaller
  ranks precede it; the kernel walks the buckets from there, reading each non-empty bucket's ``R`` positions
  (``pos[rank]``, the inverse permutation) and keeping the ranks whose position is ``<= p0``.
* ``_threshold_kernel``, per (row, sub-block): only those base ranks and the sub-block's own keys can be ``T_p``
  for its ``S`` queries (at most ``S − 1`` keys join after ``p0``). For every candidate value and query it counts
  the present values below or equal (a compare and a prefix sum over the joining keys, ``S × 2S``), and ``T_p`` is
  the smallest present value with at least ``min(w, S)`` of them.
* ``_drop_kernel``, per key: a binary search of ``rank_j`` in the non-increasing ``T``; cut at the end of the
  key's document.
* ``_list_kernel``, per (row, query block of ``block`` positions, split): the block's live earlier keys are exactly
  the keys ``j < p0`` with ``drop_j > p0``; they hold the smallest ranks among the keys ``< p0`` (the top ``w``,
  minus other documents, which rank later), so key ``j``'s slot in rank order is the number of valid keys
  ``< p0`` ranked before it: the histogram gives that count at each bucket's start, a prefix sum inside the
  bucket the rest. Splits walk disjoint buckets up to ``T_p0``'s. The own keys follow in position order. The
  earlier keys are then reordered by ``drop_j`` descending (ties by position) with one ``torch.sort`` of each
  block's list (:func:`.selection._carried_by_drop`).

Work per row: ``O(L log L)`` for the sort, ``O(L²/(S·R))`` for the histogram, ``O(L·S)`` for the thresholds,
``O(L log L)`` for the drops, and for the bucket walks about ``R`` per non-empty bucket visited (between the
``(w − S + 1)``-th and the ``w``-th rank up to ``p0`` for the base; up to ``T_p0`` for the lists: ``O(L·w/block·log)``
for random biases, at most ``O(L)`` per block), ``O(L·(w + block)/block·log(w + block))`` for the sort of the lists
by ``drop``. Memory: the histogram ``O(L²/(S·R))`` int32 per row, everything
else ``O(L)`` per row plus the output lists ``O(L·(w + block)/block)``; nothing is (queries × keys).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import require
from ..triton_utils import interpreting, opaque_to_compile, poisoned_empty, pow2_at_least
from .selection import LIVE_TILE, _carried_by_drop, _rank_key, _rank_order_of_key

SUB_BLOCK_MAX = 128  # the threshold kernel's sub-block S is the largest divisor of the query block up to this
THRESHOLD_WARPS = 8  # the threshold kernel holds several S × S integer tiles


def sub_block_for(block: int) -> int:
    """The threshold kernel's sub-block ``S``: the largest divisor of ``block`` that is at most
    :data:`SUB_BLOCK_MAX` (so every query block starts a sub-block)."""
    return max(s for s in range(1, min(block, SUB_BLOCK_MAX) + 1) if block % s == 0)


def bucket_for(lk: int) -> int:
    """Rank bucket ``R``: a power of two about ``lk / 128`` (at least 256, at most 4096), so the histogram has at
    most ~128 buckets per sub-block until ``lk`` = 512K."""
    return int(min(4096, max(256, pow2_at_least(lk // 128))))


@triton.jit
def _prep_kernel(order_ptr, valid_ptr, ranks_ptr, pos_ptr, hist_ptr, lk, offset, nbs, nbk,
                 SUB: tl.constexpr, R: tl.constexpr, BLOCK: tl.constexpr):
    """Per rank ``r`` (key ``order[r]``): ``ranks[key] = r`` (``lk + 1`` for padding), ``pos[r] = key`` (``lk`` for
    padding), and one count in ``hist[t, r // R]`` for the first sub-block ``t`` whose first position is ``>= key``."""
    row = tl.program_id(0).to(tl.int64)
    r = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = r < lk
    key = tl.load(order_ptr + row * lk + r, mask=inside, other=0)
    valid = tl.load(valid_ptr + row * lk + key, mask=inside, other=0) != 0
    tl.store(ranks_ptr + row * lk + key, tl.where(valid, r, lk + 1), mask=inside)
    tl.store(pos_ptr + row * lk + r, tl.where(valid, key, lk), mask=inside)
    after = key - offset
    t = tl.where(after > 0, (after + SUB - 1) // SUB, 0)
    counted = inside & valid & (t < nbs)
    tl.atomic_add(hist_ptr + (row * nbs + t) * nbk + r // R, tl.full((BLOCK,), 1, tl.int32), mask=counted,
                  sem="relaxed")  # counts read by later kernels only: no ordering needed


@triton.jit
def _base_kernel(pos_ptr, hist_ptr, base_ptr, lk, offset, nbs, nbk, w, k_base,
                 SUB: tl.constexpr, R: tl.constexpr, NBK: tl.constexpr, KB: tl.constexpr):
    """``base[row, t, s]`` for ``s < k_base = min(w, SUB)``: the ``(w − k_base + 1 + s)``-th smallest rank among the
    valid keys ``<= p0``, ``lk`` where there are fewer."""
    row = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1)
    p0 = offset + t * SUB
    hrow = hist_ptr + (row * nbs + t) * nbk
    b = tl.arange(0, NBK)
    cum = tl.load(hrow + b, mask=b < nbk, other=2**30)  # valid keys <= p0 with a rank in buckets 0 … b
    total = tl.load(hrow + nbk - 1)
    lo = w - k_base + 1  # 1-based place of the first base rank
    hi = tl.minimum(w, total)  # 1-based place of the last one that exists
    filled = tl.maximum(hi - lo + 1, 0)
    s = tl.arange(0, KB)
    tl.store(base_ptr + (row * nbs + t) * k_base + s, tl.full((KB,), lk, tl.int32), mask=(s >= filled) & (s < k_base))
    bucket = tl.sum((cum < lo).to(tl.int32))  # the bucket holding the lo-th rank
    seen = tl.max(tl.where(cum < lo, cum, 0))  # valid keys <= p0 ranked in earlier buckets
    rr = tl.arange(0, R)
    while seen < hi:
        in_bucket = tl.load(hrow + bucket) - seen
        if in_bucket > 0:
            rank = bucket * R + rr
            pos = tl.load(pos_ptr + row * lk + rank, mask=rank < lk, other=lk)
            present = pos <= p0
            place = seen + tl.cumsum(present.to(tl.int32), 0)
            take = present & (place >= lo) & (place <= hi)
            tl.store(base_ptr + (row * nbs + t) * k_base + place - lo, rank, mask=take)
        seen += in_bucket
        bucket += 1


@triton.jit
def _threshold_kernel(ranks_ptr, base_ptr, neg_t_ptr, lk, lq, offset, nbs, k_base,
                      SUB: tl.constexpr, BS: tl.constexpr):
    """``neg_t[row, i] = −T_p`` for the ``SUB`` queries ``p = p0 + i`` of sub-block ``t``: the ``k_base``-th smallest
    of the base ranks and the joined own ranks (keys ``p0 + 1 … p``)."""
    row = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1)
    p0 = offset + t * SUB
    big = lk + 2
    c = tl.arange(0, BS)
    base_in = c < k_base
    base = tl.load(base_ptr + (row * nbs + t) * k_base + c, mask=base_in, other=big)
    own_pos = p0 + c  # own key m = c joins at query i = m (m = 0 is p0 itself, already in the base)
    own = tl.load(ranks_ptr + row * lk + own_pos, mask=(c >= 1) & (c < SUB) & (own_pos < lk), other=big)
    own_in = own < lk  # valid ranks are below lk; padding (lk + 1) and masked slots never join
    i = tl.arange(0, BS)
    # Base values as candidates: present for every query.
    base_le = tl.sum((base_in[:, None] & (base[:, None] <= base[None, :])).to(tl.int32), 0)
    own_le = tl.cumsum((own_in[:, None] & (own[:, None] <= base[None, :])).to(tl.int32), 0)  # row i: own m <= i
    ok = base_in[None, :] & (base_le[None, :] + own_le >= k_base)
    thr = tl.min(tl.where(ok, base[None, :], big), 1)
    # Own values as candidates: present from their own query on.
    base_le = tl.sum((base_in[:, None] & (base[:, None] <= own[None, :])).to(tl.int32), 0)
    own_le = tl.cumsum((own_in[:, None] & (own[:, None] <= own[None, :])).to(tl.int32), 0)
    ok = own_in[None, :] & (c[None, :] <= i[:, None]) & (base_le[None, :] + own_le >= k_base)
    thr = tl.minimum(thr, tl.min(tl.where(ok, own[None, :], big), 1))
    q = t * SUB + i
    tl.store(neg_t_ptr + row * lq + q, -thr, mask=(i < SUB) & (q < lq))


@triton.jit
def _drop_kernel(ranks_ptr, neg_t_ptr, doc_end_ptr, drop_ptr, lk, lq, offset, steps,
                 HAS_DOCS: tl.constexpr, BLOCK: tl.constexpr):
    """``drop[row, j]``: the first query position ``p`` with ``T_p < rank_j`` (``lk`` if none), cut at the end of
    ``j``'s document; ``0`` for padding."""
    row = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = j < lk
    rank = tl.load(ranks_ptr + row * lk + j, mask=inside, other=lk + 1)
    lo = tl.zeros((BLOCK,), tl.int32)
    hi = tl.full((BLOCK,), lq, tl.int32)
    for _ in range(steps):  # lower bound of −rank_j + 1 in the non-decreasing −T
        active = lo < hi
        mid = (lo + hi) // 2
        kept = tl.load(neg_t_ptr + row * lq + mid, mask=active, other=0) <= -rank
        lo = tl.where(active & kept, mid + 1, lo)
        hi = tl.where(active & ~kept, mid, hi)
    drop = lo + offset
    if HAS_DOCS:
        drop = tl.minimum(drop, tl.load(doc_end_ptr + row * lk + j, mask=inside, other=0))
    tl.store(drop_ptr + row * lk + j, tl.where(rank < lk, drop, 0), mask=inside)


@triton.jit
def _list_kernel(pos_ptr, ranks_ptr, neg_t_ptr, hist_ptr, drop_ptr, doc_base_ptr, keys_ptr, ends_ptr,
                 lk, lq, offset, nbs, nbk, nb, width, w, splits,
                 HAS_DOCS: tl.constexpr, BLOCK: tl.constexpr, SUB: tl.constexpr, R: tl.constexpr,
                 TILE: tl.constexpr, NT: tl.constexpr, BW: tl.constexpr):
    """Block ``t``'s list: its live earlier keys in rank order (buckets ``split, split + splits, …`` up to the
    bucket of ``T_p0``), then (split 0) its own live keys in position order and the prefix counts ``ends``."""
    row = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1)
    split = tl.program_id(2)
    p0 = offset + t * BLOCK
    hrow = hist_ptr + (row * nbs + (t * BLOCK) // SUB) * nbk
    out = keys_ptr + (row * nb + t) * width
    thr = -tl.load(neg_t_ptr + row * lq + t * BLOCK)
    own_rank = tl.load(ranks_ptr + row * lk + p0)  # p0 is counted by the histogram but is not an earlier key
    last = tl.minimum(thr, lk - 1) // R
    rr = tl.arange(0, R)
    for bucket in range(split, last + 1, splits):
        before = tl.load(hrow + bucket - 1, mask=bucket > 0, other=0)
        if tl.load(hrow + bucket) > before:
            rank = bucket * R + rr
            pos = tl.load(pos_ptr + row * lk + rank, mask=rank < lk, other=lk)
            earlier = pos < p0
            live = earlier & (tl.load(drop_ptr + row * lk + pos, mask=earlier, other=0) > p0)
            # Valid keys < p0 ranked before this bucket all precede a live key of it.
            slot = before - (own_rank < bucket * R).to(tl.int32) + tl.cumsum(live.to(tl.int32), 0) - 1
            tl.store(out + slot, pos, mask=live)
    if split == 0:
        in_doc = tl.load(hist_ptr + (row * nbs + (t * BLOCK) // SUB) * nbk + nbk - 1)  # valid keys <= p0
        if HAS_DOCS:
            in_doc -= tl.load(doc_base_ptr + row * lk + p0)
        n_earlier = tl.minimum(w, in_doc) - (own_rank <= thr).to(tl.int32)  # own_rank > thr for padding
        rel = tl.arange(0, BW)
        j = p0 + rel
        mine = (rel < BLOCK) & (j < lk)
        live = mine & (tl.load(drop_ptr + row * lk + j, mask=mine, other=0) > j)
        tl.store(out + n_earlier + tl.cumsum(live.to(tl.int32), 0) - 1, j, mask=live)
        s = tl.arange(0, NT)
        upto = tl.sum((live[None, :] & (rel[None, :] < (s[:, None] + 1) * TILE)).to(tl.int32), 1)
        tl.store(ends_ptr + (row * nb + t) * (BLOCK // TILE) + s, n_earlier + upto, mask=s < BLOCK // TILE)


LIST_SPLITS = 8  # programs per query block walking its earlier keys' buckets (2 under the interpreter)


def _live_keys_fake(bias_rows: torch.Tensor, lq: int, keep_window: int, block: int,
                    documents: torch.Tensor | None = None, tile: int = LIVE_TILE, sub_block: int | None = None,
                    bucket: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, lk = bias_rows.shape
    nb = -(-lq // block)
    return (bias_rows.new_empty(n, lk, dtype=torch.int32), bias_rows.new_empty(n, nb, keep_window + block,
                                                                               dtype=torch.int32),
            bias_rows.new_empty(n, nb, block // tile, dtype=torch.int32))


@opaque_to_compile("dma_live_keys", _live_keys_fake)
@torch.no_grad()
def live_keys_triton(bias_rows: torch.Tensor, lq: int, keep_window: int, block: int,
                     documents: torch.Tensor | None = None, tile: int = LIVE_TILE, sub_block: int | None = None,
                     bucket: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`.selection.live_keys` in Triton kernels: the same ``drop (n, lk)``, ``keys (n, nb, w + block)`` and
    ``ends (n, nb, block / tile)`` (int32), equal element for element.

    ``bias_rows (n, lk)``, ``documents (n, lk)``, ``lq``, ``keep_window``, ``block`` and ``tile`` as there.
    ``sub_block`` (the threshold kernel's ``S``, a divisor of ``block``; default :func:`sub_block_for`) and
    ``bucket`` (the rank bucket ``R``, a power of two; default :func:`bucket_for`) change the cost, never the
    result. Work and memory: see the module docstring; one global sort, no host synchronisation.
    """
    n, lk = bias_rows.shape
    w = keep_window
    offset = lk - lq
    device = bias_rows.device
    sub = sub_block or sub_block_for(block)
    r_size = bucket or bucket_for(lk)
    require(block % sub == 0, "sub_block", sub, f"a divisor of block={block}")
    require(r_size >= 1 and r_size & (r_size - 1) == 0, "bucket", r_size, "a power of two")
    nb, nbs, nbk = -(-lq // block), -(-lq // sub), -(-lk // r_size)
    key = _rank_key(bias_rows)
    order = _rank_order_of_key(key, documents).contiguous()  # rows may be a strided view (the kernels index r·lk + j)
    valid = (key > float("-inf")).contiguous()
    ranks = poisoned_empty(n, lk, dtype=torch.int32, device=device)
    pos = poisoned_empty(n, lk, dtype=torch.int32, device=device)
    hist = torch.zeros(n, nbs, nbk, dtype=torch.int32, device=device)
    chunk = 256 if interpreting() else 1024
    _prep_kernel[(n, triton.cdiv(lk, chunk))](order, valid.view(torch.uint8), ranks, pos, hist, lk, offset, nbs,
                                               nbk, SUB=sub, R=r_size, BLOCK=chunk)
    hist = hist.cumsum(1, dtype=torch.int32).cumsum(2, dtype=torch.int32)
    k_base = min(w, sub)
    base = poisoned_empty(n, nbs, k_base, dtype=torch.int32, device=device)
    _base_kernel[(n, nbs)](pos, hist, base, lk, offset, nbs, nbk, w, k_base, SUB=sub, R=r_size,
                           NBK=pow2_at_least(nbk), KB=pow2_at_least(k_base))
    neg_t = poisoned_empty(n, lq, dtype=torch.int32, device=device)
    _threshold_kernel[(n, nbs)](ranks, base, neg_t, lk, lq, offset, nbs, k_base, SUB=sub, BS=pow2_at_least(sub),
                                num_warps=THRESHOLD_WARPS)
    doc_end = doc_base = None
    if documents is not None:
        documents = documents.contiguous()
        doc_end = torch.searchsorted(documents, documents, right=True).to(torch.int32)
        start = torch.searchsorted(documents, documents)  # each key's document start
        doc_base = (valid.cumsum(1, dtype=torch.int32) - valid.int()).gather(1, start).to(torch.int32)
    drop = poisoned_empty(n, lk, dtype=torch.int32, device=device)
    _drop_kernel[(n, triton.cdiv(lk, chunk))](ranks, neg_t, doc_end, drop, lk, lq, offset, lq.bit_length(),
                                               HAS_DOCS=documents is not None, BLOCK=chunk)
    width = w + block
    keys = torch.zeros(n, nb, width, dtype=torch.int32, device=device)
    ends = poisoned_empty(n, nb, block // tile, dtype=torch.int32, device=device)
    splits = 2 if interpreting() else LIST_SPLITS
    _list_kernel[(n, nb, splits)](pos, ranks, neg_t, hist, drop, doc_base, keys, ends, lk, lq, offset, nbs, nbk,
                                  nb, width, w, splits, HAS_DOCS=documents is not None, BLOCK=block,
                                  SUB=sub, R=r_size, TILE=tile, NT=pow2_at_least(block // tile),
                                  BW=pow2_at_least(block))
    return drop, _carried_by_drop(drop, keys, ends, lq, block), ends
