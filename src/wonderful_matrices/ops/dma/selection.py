"""Which keys each query of dynamic mask attention keeps under a window (docs/design.md, fact 1).

Rank is ``(bias, position)`` descending (ties to the later key, non-finite biases last). Key ``j`` is kept by the
contiguous query range ``[j, drop_j)``, so a block of ``B`` queries keeps at most ``w + B`` distinct keys:
:func:`select_blocks` (the torch path) computes, for every query block at once, those candidate keys and the interval
of the block's queries that keeps each; :func:`live_keys` (the Triton kernels) computes ``drop_j`` per key and each
block's list of live keys. Both run the torch operations here on the CPU, and the Triton kernels of
:mod:`.selection_kernels` where Triton runs (no large sort but the global one; these torch operations are their
oracle). Nothing here builds an ``(L, L)`` or (blocks × keys) tensor; no gradient flows.
"""
from __future__ import annotations

import torch

from ..common import triton_usable


def rank_order(bias_rows: torch.Tensor) -> torch.Tensor:
    """Permutation sorting each row of keys by rank, best first.

    ``bias_rows (n, L)`` in position order; rank is ``(bias, position)`` descending (ties to the later key),
    non-finite biases last. Returns ``(n, L)`` long indices into the rows.
    """
    return _rank_order_of_key(_rank_key(bias_rows))


def _rank_order_of_key(key: torch.Tensor, documents: torch.Tensor | None = None) -> torch.Tensor:
    """Positions best first by ``(bias, position)`` descending, non-finite keys last; with ``documents (n, L)``
    (non-decreasing ids) the document is the first criterion, later documents first."""
    order = key.shape[-1] - 1 - torch.sort(-key.flip(-1), dim=-1, stable=True).indices
    if documents is None:
        return order
    # A stable sort by document keeps the (bias, position) order inside each document; padding stays last.
    primary = torch.where(key > float("-inf"), documents - documents[:, :1], -1).gather(1, order)
    return order.gather(1, torch.sort(primary, dim=-1, descending=True, stable=True).indices)


def _rank_key(bias_rows: torch.Tensor) -> torch.Tensor:
    key = bias_rows.to(torch.float64 if bias_rows.dtype == torch.float64 else torch.float32)
    return torch.nan_to_num(key, nan=float("-inf"), posinf=float("-inf"), neginf=float("-inf"))  # non-finite: -inf


def _smallest(x: torch.Tensor, k: int, fill: int) -> torch.Tensor:
    """The ``k`` smallest of each row of ``x (..., m)``, ascending, padded with ``fill`` when ``m < k``."""
    top = x.sort(dim=-1).values[..., :k]
    if top.shape[-1] < k:
        top = torch.cat([top, top.new_full(top.shape[:-1] + (k - top.shape[-1],), fill)], dim=-1)
    return top


def _carried_ranks(ranks: torch.Tensor, offset: int, nb: int, block: int, k: int) -> torch.Tensor:
    """The ``k`` smallest ranks among the keys before each query block, ascending (``lk`` where fewer).

    ``ranks (n, lk)`` with ``lk`` for a key that never counts (padding); block ``t`` starts at key position
    ``offset + t·block``. The sets are an inclusive prefix scan of "the ``k`` smallest of a union", which is
    associative: element 0 holds the keys ``[0, offset)``, element ``t`` the keys of block ``t − 1``, and
    ``ceil(log2(nb))`` doubling steps (Hillis–Steele) each merge every element with the one ``2^s`` before it by
    one sort of ``2k`` values per block. Work O(n·nb·k·log(nb)·log(k)), memory O(n·nb·k): never a count over
    (blocks × keys). Returns ``(n, nb, k)``.
    """
    n, lk = ranks.shape
    head = _smallest(ranks[:, :offset], k, lk)[:, None]  # (n, 1, k)
    body = ranks[:, offset:offset + (nb - 1) * block].reshape(n, nb - 1, block)
    sets = torch.cat([head, _smallest(body, k, lk)], dim=1)  # (n, nb, k)
    step = 1
    while step < nb:
        merged = torch.cat([sets[:, step:], sets[:, :-step]], dim=-1).sort(dim=-1).values[..., :k]
        sets = torch.cat([sets[:, :step], merged], dim=1)
        step *= 2
    return sets


SUB_BLOCK = 16


def _running_kth(base: torch.Tensor, new: torch.Tensor, new_valid: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th smallest of a growing set, for every step, without a loop over the steps.

    ``base (M, a)`` ascending values (``a >= k``), always in the set; ``new (M, Q)`` values that join one per
    step (in column order), ``new_valid (M, Q)`` False for one that never joins. Returns ``(M, Q)``: column
    ``m`` is the ``k``-th smallest of ``base`` and the valid ``new[:, :m+1]`` (as a multiset: ties are fine;
    invalid values are never counted, whatever they are).

    Only the largest ``k' = min(k, Q + 1)`` of the ``k`` smallest of ``base`` can be the answer (at most ``Q`` new
    values join, and the top ``k`` only loses its largest members), so the problem shrinks to ``k'`` base values
    and ``Q`` new ones: one sort of ``k' + Q`` values and a count per step and value, O(Q·(k' + Q)) — or, for
    ``Q > SUB_BLOCK``, the same count at every ``SUB_BLOCK``-th step only, which gives each sub-block its own
    base of ``SUB_BLOCK + 1`` values, and one recursive call on all sub-blocks at once.
    """
    m_rows, q = new.shape
    kk = min(k, q + 1)
    merged = torch.cat([base[:, k - kk:k], new], dim=1)
    values, perm = merged.sort(dim=1)
    joins_at = perm - kk  # step at which a value joins; negative for base values (always in)
    never = torch.cat([torch.zeros_like(base[:, :kk], dtype=torch.bool), ~new_valid], dim=1).gather(1, perm)
    joins_at = torch.where(never, q, joins_at)  # never in
    if q <= SUB_BLOCK:
        steps = torch.arange(q, device=new.device)
        present = joins_at[:, None, :] <= steps[None, :, None]  # (M, Q, k' + Q)
        count = present.cumsum(-1, dtype=torch.int32)
        at = (count < kk).sum(-1)  # index of the k'-th present value in ascending order
        return values.gather(1, at)
    ns = -(-q // SUB_BLOCK)
    starts = torch.arange(ns, device=new.device) * SUB_BLOCK
    present = joins_at[:, None, :] < starts[None, :, None]  # (M, ns, k' + Q): in the set before each sub-block
    count = present.cumsum(-1, dtype=torch.int32)
    k2 = min(kk, SUB_BLOCK + 1)
    targets = torch.arange(kk - k2 + 1, kk + 1, device=new.device, dtype=torch.int32).expand(m_rows, ns, k2)
    at = torch.searchsorted(count, targets.contiguous())  # the largest k2 of the k' smallest, ascending
    sub_base = values.gather(1, at.reshape(m_rows, ns * k2)).view(m_rows * ns, k2)
    pad = ns * SUB_BLOCK - q
    sub_new = torch.cat([new, new.new_zeros(m_rows, pad)], dim=1).view(m_rows * ns, SUB_BLOCK)
    sub_valid = torch.cat([new_valid, new_valid.new_zeros(m_rows, pad)], dim=1).view(m_rows * ns, SUB_BLOCK)
    return _running_kth(sub_base, sub_new, sub_valid, k2).view(m_rows, ns * SUB_BLOCK)[:, :q]


def _thresholds(bias_rows: torch.Tensor, lq: int, keep_window: int, block: int,
                documents: torch.Tensor | None):
    """What both selections share: ranks, the top ``w`` before each block and the running threshold.

    Returns ``ranks (n, lk)`` (padding ``lk + 1``), ``valid (n, lk)``, ``carried_rank (n, nb, w)`` (ascending,
    ``lk`` for an empty slot), ``carried_pos (n, nb, w)``, ``p0 (nb,)`` the first query position of each block,
    ``block_pos (nb, block)`` (clamped to ``lk − 1``), ``block_valid (n, nb, block)`` and ``threshold (n, nb, block)``:
    ``T_p`` of every query position ``p`` (rows past ``lk`` repeat the last value).
    """
    n, lk = bias_rows.shape
    w = keep_window
    offset = lk - lq
    device = bias_rows.device
    nb = -(-lq // block)
    key = _rank_key(bias_rows)
    order = _rank_order_of_key(key, documents)  # (n, lk): key positions, best first, padding last
    valid = key > float("-inf")
    positions = torch.arange(lk, device=device)
    ranks = torch.empty_like(order).scatter_(1, order, positions.expand(n, lk))
    # Empty slots of the top w (fewer than w keys so far) count as rank lk; padding keys get lk + 1 and never join.
    ranks = torch.where(valid, ranks, lk + 1)
    p0 = offset + torch.arange(nb, device=device) * block  # first query position of each block
    carried_rank = _carried_ranks(torch.where(valid, ranks, lk), offset, nb, block, w)
    carried_pos = order.gather(1, carried_rank.clamp_max(lk - 1).view(n, nb * w)).view(n, nb, w)
    # The block's own keys, joining one per query; positions past lk (last block) never join.
    block_pos = p0[:, None] + torch.arange(block, device=device)  # (nb, block)
    inside = block_pos < lk
    block_pos = block_pos.clamp_max(lk - 1)
    block_rank = ranks[:, block_pos]  # (n, nb, block)
    block_valid = valid[:, block_pos] & inside
    threshold = _running_kth(carried_rank.view(n * nb, w), block_rank.view(n * nb, block),
                             block_valid.view(n * nb, block), w).view(n, nb, block)
    return ranks, valid, carried_rank, carried_pos, p0, block_pos, block_valid, threshold


def _drops(ranks: torch.Tensor, valid: torch.Tensor, threshold: torch.Tensor, offset: int,
           documents: torch.Tensor | None) -> torch.Tensor:
    """``drop (n, lk)`` long from :func:`_thresholds`' ``ranks``, ``valid`` and ``threshold (n, nb, block)``: the
    first query position ``p`` with ``T_p < rank_j`` (``T`` never increases, so one ``searchsorted`` over all
    blocks), at most ``lk``, cut at the end of ``j``'s document; ``0`` for padding. Query ``p`` keeps key ``j``
    exactly when ``j <= p < drop_j``."""
    n, lk = ranks.shape
    first = torch.searchsorted(threshold.reshape(n, -1).neg().contiguous(), ranks.neg().contiguous(), right=True)
    drop = torch.where(valid, (first + offset).clamp_max(lk), 0)
    if documents is not None:  # no query past the end of the key's document
        documents = documents.contiguous()
        drop = torch.minimum(drop, torch.searchsorted(documents, documents, right=True))
    return drop


@torch.no_grad()
def select_blocks(bias_rows: torch.Tensor, lq: int, keep_window: int, block: int,
                  documents: torch.Tensor | None = None):
    """Exact per-query top-``keep_window`` selection for causal queries, for all query blocks at once.

    ``bias_rows (n, lk)``: one row per (batch, KV head). ``documents (n, lk)`` (optional, needs ``lq == lk``):
    non-decreasing document ids; a query then selects among its own document's keys only. Queries sit at key
    positions ``lk - lq … lk - 1``,
    cut into ``nb = ceil(lq / block)`` blocks. Returns ``candidates (n, nb, w + block)`` key positions (long),
    and ``start, end (n, nb, w + block)`` int32: candidate ``c`` of block ``t`` is kept exactly by the block's
    queries ``start <= i < end`` (``i`` relative to the block's first query); a slot kept by none has
    ``start == end == 0``. Slots ``[0, w)`` hold the top ``w`` keys before the block (rank order), slots
    ``[w, w + block)`` the block's own keys (position order); no key is live in two slots of one block.

    Method (docs/design.md, fact 1), with ``rank`` = the index in the order ``(bias, position)`` descending, padding
    (non-finite bias) last and never counted: query ``p`` keeps key ``j <= p`` iff ``rank_j <= T_p``, the
    ``w``-th smallest rank among the keys ``<= p`` (``T_p = lk`` when there are fewer than ``w``). ``T`` never
    increases with ``p``. One global sort gives the ranks; the top ``w`` before every block come from a prefix
    scan over the blocks (:func:`_carried_ranks`, ``ceil(log2(nb))`` steps); ``T`` inside every block from
    :func:`_running_kth` (the top ``w`` before the block plus the block's keys joining one per query); the
    queries that keep a candidate are then ``[max(j, p0), drop_j)`` with ``drop_j`` the first ``p`` with
    ``T_p < rank_j`` (:func:`_drops`, one ``searchsorted``).
    Documents: the rank puts later documents first, so the top ``w`` of a query's visible keys holds the top
    ``w`` of its own document (all of them if fewer), and a key's interval is cut at its document's end; the
    keys of earlier documents in the top ``w`` are then kept by no query. The same fact holds, so the same
    method applies. No loop over blocks and no host synchronisation; memory O(n·nb·(w + block)).

    Where the Triton selection runs (CUDA, or ``TRITON_INTERPRET=1``), the candidates come from
    :func:`live_keys`' lists instead (:mod:`.selection_kernels`, no large sorts): the same kept sets, with the
    live slots first (the earlier keys by ``drop_j`` descending, then the block's own keys in position order) and
    the rest ``(0, 0, 0)``.
    """
    if _triton_selection(bias_rows):
        return _blocks_from_lists(*live_keys(bias_rows, lq, keep_window, block, documents, tile=block), lq, block)
    n, lk = bias_rows.shape
    w = keep_window
    ranks, valid, carried_rank, carried_pos, p0, block_pos, block_valid, threshold = _thresholds(
        bias_rows, lq, w, block, documents)
    nb = p0.shape[0]
    drop = _drops(ranks, valid, threshold, lk - lq, documents)
    cand_pos = torch.cat([carried_pos, block_pos.expand(n, nb, block)], dim=-1)  # (n, nb, w + block)
    # A candidate is kept from its own position (or the block start) until its drop, cut at the block's end.
    end = (drop.gather(1, cand_pos.view(n, -1)).view(n, nb, -1) - p0[None, :, None]).clamp_max(block)
    start = torch.cat([torch.zeros(nb, w, dtype=torch.long, device=bias_rows.device),
                       torch.arange(block, device=bias_rows.device).expand(nb, block)], dim=-1).expand(n, nb, w + block)
    real = torch.cat([carried_rank < lk, block_valid], dim=-1)
    live = real & (end > start)
    candidates = torch.where(real, cand_pos, 0)
    start = torch.where(live, start, 0).to(torch.int32)
    end = torch.where(live, end, 0).to(torch.int32)
    return candidates, start, end


LIVE_TILE = 64  # query granularity of live_keys' prefix counts


@torch.no_grad()
def live_keys(bias_rows: torch.Tensor, lq: int, keep_window: int, block: int,
              documents: torch.Tensor | None = None, tile: int = LIVE_TILE):
    """Per key the end of the queries that keep it, and per query block the list of its live keys.

    ``bias_rows (n, lk)``, ``documents (n, lk)`` and the query placement as in :func:`select_blocks`; ``block``
    a multiple of ``tile``. Query position ``p`` (a key position) keeps key ``j`` exactly when
    ``j <= p < drop_j`` (docs/design.md, fact 1; ``drop_j`` already cut at the end of ``j``'s document, ``0`` for
    padding). Block ``t`` (query positions ``[p0, p0 + block)``, ``p0 = lk - lq + t·block``) keeps at most
    ``w + block`` distinct keys: those ``j < p0`` with ``drop_j > p0`` (all kept by query ``p0``, so among the top
    ``w`` before the block) and its own keys that some query keeps (``drop_j > j``).

    Returns ``drop (n, lk)`` int32; ``keys (n, nb, w + block)`` int32 key positions: block ``t``'s live keys
    first (the earlier, carried keys by ``drop_j`` descending, ties by position ascending, so the keys a query
    tile keeps throughout come first: :func:`carried_counts`; then its own keys in position order), then zeros; and
    ``ends (n, nb, block / tile)`` int32: ``ends[..., s]`` counts the list entries a query of the block's
    ``s``-th tile of ``tile`` queries or an earlier one can keep (the last is the list's length).
    Where Triton runs (CUDA, or ``TRITON_INTERPRET=1``): the kernels of :mod:`.selection_kernels` (no sort but
    the global one; work and memory in its docstring). Elsewhere (:func:`live_keys_torch`, also their
    oracle): the method and cost of :func:`select_blocks` (``drop_j`` is the first query with
    ``T_p < rank_j``, one ``searchsorted`` over the thresholds), plus O(n·nb·(w + block)) to build the lists and
    one sort of the ``w`` carried slots per block (O(n·nb·w·log w)); nothing is (blocks × keys) or
    (queries × keys). Both give the same tensors, element for element.
    """
    if _triton_selection(bias_rows):
        from .selection_kernels import live_keys_triton

        return live_keys_triton(bias_rows, lq, keep_window, block, documents, tile)
    return live_keys_torch(bias_rows, lq, keep_window, block, documents, tile)


def _triton_selection(bias_rows: torch.Tensor) -> bool:
    """Whether the selection runs the Triton kernels for rows on this device (see ``ops.common.triton_usable``)."""
    return triton_usable(bias_rows.device)


def _blocks_from_lists(drop: torch.Tensor, keys: torch.Tensor, ends: torch.Tensor, lq: int, block: int):
    """:func:`select_blocks`' ``candidates``, ``start``, ``end`` from :func:`live_keys`' ``drop (n, lk)``,
    ``keys (n, nb, W)`` and ``ends (n, nb, 1)`` (one tile per block): a listed key ``j`` is kept by the block's
    queries ``[max(j, p0), min(drop_j, p0 + block))`` (relative to ``p0``); unlisted slots are ``(0, 0, 0)``."""
    n, lk = drop.shape
    nb, width = keys.shape[1:]
    p0 = (lk - lq + torch.arange(nb, device=keys.device) * block)[:, None]
    listed = torch.arange(width, device=keys.device) < ends
    cand = keys.long()
    start = torch.where(listed, (cand - p0).clamp_min(0), 0).to(torch.int32)
    end = torch.where(listed, (drop.gather(1, cand.view(n, -1)).view(n, nb, width) - p0).clamp_max(block), 0)
    return cand, start, end.to(torch.int32)


@torch.no_grad()
def live_keys_torch(bias_rows: torch.Tensor, lq: int, keep_window: int, block: int,
                    documents: torch.Tensor | None = None, tile: int = LIVE_TILE):
    """:func:`live_keys` in torch operations (the CPU path and the Triton kernels' oracle)."""
    n, lk = bias_rows.shape
    w = keep_window
    offset = lk - lq
    ranks, valid, carried_rank, carried_pos, p0, block_pos, block_valid, threshold = _thresholds(
        bias_rows, lq, w, block, documents)
    nb = p0.shape[0]
    drop = _drops(ranks, valid, threshold, offset, documents).to(torch.int32).contiguous()
    carried_drop = drop.gather(1, carried_pos.view(n, -1)).view(n, nb, w)
    carried_live = (carried_rank < lk) & (carried_drop > p0[:, None])
    # Carried keys by drop descending, ties by position (unique among live keys); dead ones last.
    order_key = torch.where(carried_live, (lk - carried_drop.long()) * (lk + 1) + carried_pos, (lk + 1) ** 2)
    perm = torch.sort(order_key, dim=-1, stable=True).indices
    carried_pos, carried_live = carried_pos.gather(-1, perm), carried_live.gather(-1, perm)
    own_pos = block_pos.expand(n, nb, block)
    own_live = block_valid & (drop.gather(1, own_pos.reshape(n, -1)).view(n, nb, block) > own_pos)
    live = torch.cat([carried_live, own_live], dim=-1)  # (n, nb, w + block)
    width = w + block
    slot = torch.where(live, live.cumsum(-1) - 1, width)  # dead entries go to a spare column
    keys = torch.zeros(n, nb, width + 1, dtype=torch.int32, device=bias_rows.device)
    keys.scatter_(-1, slot, torch.cat([carried_pos, own_pos], dim=-1).to(torch.int32))
    own_count = own_live.cumsum(-1)[..., tile - 1::tile]  # own keys before each tile's end
    ends = (carried_live.sum(-1, keepdim=True) + own_count).to(torch.int32)
    return drop, keys[..., :width].contiguous(), ends.contiguous()


def _carried(drop: torch.Tensor, keys: torch.Tensor, ends: torch.Tensor, lq: int,
             block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The carried entries of :func:`live_keys`' block lists: ``keys (n, nb, W)`` as int64, whether each slot holds
    a listed key before its block's first query position ``p0`` (n, nb, W) bool, and each slot's ``drop`` (int64)."""
    n, lk = drop.shape
    nb, width = keys.shape[1:]
    p0 = (lk - lq + torch.arange(nb, device=keys.device) * block)[:, None]
    listed = keys.long()
    carried = (torch.arange(width, device=keys.device) < ends[..., -1:]) & (listed < p0)
    return listed, carried, drop.gather(1, listed.view(n, -1)).view(n, nb, width).long()


def _carried_by_drop(drop: torch.Tensor, keys: torch.Tensor, ends: torch.Tensor, lq: int, block: int) -> torch.Tensor:
    """``keys (n, nb, W)`` of :func:`live_keys` with each block's earlier (carried) keys reordered by ``drop_j``
    descending, ties by position ascending; the block's own keys and the unused slots stay where they are.

    ``drop (n, lk)``, ``ends (n, nb, s)`` int32. The carried keys are the listed ones before the block's first
    query position ``p0``, all in front of its own keys. One sort of ``W`` int64 values per block list:
    O(n·nb·W·log W) work, O(n·nb·W) memory. Returns ``(n, nb, W)`` int32."""
    lk = drop.shape[1]
    listed, carried, key_drop = _carried(drop, keys, ends, lq, block)
    slot = torch.arange(keys.shape[-1], device=keys.device)
    order_key = torch.where(carried, (lk - key_drop) * (lk + 1) + listed, (lk + 1) ** 2 + slot)
    return keys.gather(-1, torch.sort(order_key, dim=-1).indices).contiguous()


@torch.no_grad()
def carried_counts(drop: torch.Tensor, keys: torch.Tensor, ends: torch.Tensor, lq: int, block: int) -> torch.Tensor:
    """Per query tile, how many leading entries of its block's list every query of the tile keeps, and how many
    leading entries some query of the tile keeps among the carried ones.

    ``drop (n, lk)``, ``keys (n, nb, W)``, ``ends (n, nb, block / tile)`` as :func:`live_keys` returns them
    (carried keys first, by ``drop_j`` descending; then the block's own keys). A carried key ``j < p0`` is kept
    by query ``p`` of the block exactly when ``p < drop_j``, so in drop order the carried keys kept by every query
    of a tile (``drop_j`` past its last query position ``p1 = min(p0 + (s + 1)·tile, lk) − 1``) form a prefix of
    the list — the kernels skip the per-element mask over it — and so do those kept by some query of it (``drop_j``
    past its first query position ``p0 + s·tile``) — the carried entries after them are kept by none of its
    queries, and the kernels skip them. Returns ``(n, nb, block / tile, 2)`` int32: ``[..., 0]`` the first prefix's
    length (``<= ends``), ``[..., 1]`` the second's (so ``[:, :, 0, 1]`` counts the block's carried entries). One
    gather and two binary searches per tile: O(n·nb·(W + block / tile · log W)).
    """
    n, lk = drop.shape
    nb = keys.shape[1]
    n_tiles = ends.shape[-1]
    tile = block // n_tiles
    p0 = (lk - lq + torch.arange(nb, device=keys.device) * block)[:, None]
    _, carried, key_drop = _carried(drop, keys, ends, lq, block)
    # Non-decreasing along the list: the carried keys' -drop_j (ascending), then +1 for everything else.
    neg_drop = torch.where(carried, -key_drop, 1).contiguous()
    # (nb, n_tiles): each tile's first and last query position; a tile past the last query counts as that query
    first = (p0 + torch.arange(n_tiles, device=keys.device) * tile).clamp_max(lk - 1)
    last = (p0 + (torch.arange(n_tiles, device=keys.device) + 1) * tile).clamp_max(lk) - 1
    bounds = torch.stack([-last, -first], dim=-1).view(nb, 2 * n_tiles)  # drop_j > p  <=>  -drop_j < -p
    counts = torch.searchsorted(neg_drop, bounds.expand(n, nb, 2 * n_tiles).to(neg_drop.dtype).contiguous())
    return counts.view(n, nb, n_tiles, 2).to(torch.int32)


def default_block(keep_window: int) -> int:
    """Query block size for the windowed path: 64 for small windows, up to 512 (a quarter of the window)."""
    return int(min(512, max(64, (keep_window // 4) // 64 * 64)))


def selectable_keys(bias: torch.Tensor, keep_window: int) -> torch.Tensor:
    """Cache slots a future query can still select, for decoding with a bounded cache.

    ``bias (b, n, hkv)`` of the cached keys in position order. A future query sees every cached key, so a key
    outside the top-``keep_window`` by ``(bias, position)`` of its (batch, KV head) has ``keep_window``
    outrankers forever and is never selected again. Returns ``(b, min(n, keep_window), hkv)`` long slot
    indices, ascending (position order is kept).
    """
    b, n, hkv = bias.shape
    if n <= keep_window:
        return torch.arange(n, device=bias.device).view(1, n, 1).expand(b, n, hkv)
    rows = bias.permute(0, 2, 1).reshape(b * hkv, n)
    top = rank_order(rows)[:, :keep_window].sort(dim=-1).values
    return top.view(b, hkv, keep_window).permute(0, 2, 1)
