"""Dynamic mask attention in PyTorch: exact, and O(L·w) with a window.

Both paths fold the bias into the keys, so one scaled-dot-product-attention call applies it: with
``q' = [q, 1, 1, 0…]`` and ``k' = [k, hi, lo, 0…]`` where ``hi + lo = bias / scale`` (``hi`` the bias rounded to
the key dtype, ``lo`` the rounding error, so half-precision keys carry the bias to ~16 bits),
``scale · q'·k' = scale · q·k + bias``. The head dim is padded to a multiple of 8 for the fused kernels.

* No window (or a window >= the key length): SDPA over all keys with a causal flag (bottom-right aligned; an
  explicit ``(lq, lk)`` boolean mask only when ``lq < lk``). No ``(b, h, lq, lk)`` tensor is built; memory is
  that of the SDPA kernel SDPA picks (O(L) for flash / memory-efficient / cuDNN on GPU). Keys with bias
  ``-inf`` get a bias of ``-1e30`` (finite, so no ``0·inf`` in the backward) and queries that see no
  attendable key output zeros.
* Window ``w``, causal: queries are processed in blocks of ``B`` (fact 1 of DESIGN.md). The candidates of a
  block ``[p0, p1)`` are the top ``w`` keys ``< p0`` by rank ``(bias, position)`` (ties to the later key) plus
  the block's own keys; the kept queries of each candidate form an interval ``[start, end)`` inside the
  block. The selection (no gradient, :func:`select_blocks`) computes them for all blocks at once from one
  global sort by rank and the running ``w``-th best rank (a fixed number of tensor operations, no loop over
  blocks); the attention then gathers the ``w + B`` candidate keys/values of each block and
  runs SDPA with the interval mask, several blocks per call. Time O(L·(w+B)·d), memory
  O(b·h·L·(w+B)/B·d) for the gathered keys/values plus O(b·h_kv·L·(w+B)) bits of mask — never
  ``(b, h, lq, lk)``. Gradients reach ``q``, ``k``, ``v`` and ``bias`` through the gathers.
* Window ``w``, not causal: every query keeps the same top-``w`` keys; one gather, one SDPA call.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MASKED_BIAS = -1e30
MASK_ELEMENTS_PER_CALL = 1 << 26


def _compute_dtype(q: torch.Tensor) -> torch.dtype:
    # float16 cannot hold bias / scale for large biases: compute it in float32.
    return torch.float32 if q.dtype == torch.float16 else q.dtype


def _augment(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float,
             masked_bias: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (..., d), k/v (..., d), bias k.shape[:-1] -> q', k', v' with head dim d' = roundup(d + 2, 8).

    ``scale · q'·k' = scale · q·k + bias`` (non-finite biases replaced by ``masked_bias``); ``v'`` is ``v``
    zero-padded to ``d'``.
    """
    dtype = _compute_dtype(q)
    d = q.shape[-1]
    pad = -(-(d + 2) // 8) * 8 - d - 2
    exact = torch.float64 if dtype == torch.float64 else torch.float32
    t = bias.to(exact)
    t = torch.where(torch.isfinite(t), t, torch.full_like(t, masked_bias)) / scale
    hi = t.to(dtype)
    lo = (t - hi.to(exact)).to(dtype)
    qa = q.to(dtype)
    ones = qa.new_ones(qa.shape[:-1] + (2,))
    q_aug = torch.cat([qa, ones, qa.new_zeros(qa.shape[:-1] + (pad,))], dim=-1)
    ka = k.to(dtype)
    k_aug = torch.cat([ka, hi[..., None], lo[..., None], ka.new_zeros(ka.shape[:-1] + (pad,))], dim=-1)
    v_aug = F.pad(v.to(dtype), (0, pad + 2))
    return q_aug, k_aug, v_aug


def _single_query(q, k, v, bias, scale: float) -> torch.Tensor:
    """One query per (batch, head) over all keys (a decoding step): q (b,1,hq,d), k/v (b,n,hkv,d) (any strides,
    e.g. a prefix view of a preallocated cache), bias (b,n,hkv) -> (b,1,hq,d).

    Logits and softmax in float32 (float64 for float64 inputs), so the bias keeps its precision; the keys and
    values of the cache are read once (one conversion copy each), no augmented copy, no mask tensor, no host
    synchronisation. The query heads of a KV group are the rows of one matrix product.
    """
    b, _, hq, d = q.shape
    n, hkv = k.shape[1], k.shape[2]
    work = torch.float64 if torch.float64 in (q.dtype, k.dtype, bias.dtype) else torch.float32
    qg = q.reshape(b, hkv, hq // hkv, d).to(work)
    kf = k.permute(0, 2, 1, 3).to(work, memory_format=torch.contiguous_format)  # (b, hkv, n, d)
    vf = v.permute(0, 2, 1, 3).to(work, memory_format=torch.contiguous_format)
    logits = torch.baddbmm(bias.permute(0, 2, 1).reshape(b * hkv, 1, n).to(work), qg.reshape(b * hkv, -1, d),
                           kf.reshape(b * hkv, n, d).transpose(1, 2), alpha=scale)
    out = torch.bmm(torch.softmax(logits, dim=-1), vf.reshape(b * hkv, n, d)).view(b, hkv, -1, d)
    # All keys -inf (padding / empty slots only): softmax gives NaN; such a query outputs zeros.
    attendable = (bias > float("-inf")).any(dim=1)  # (b, hkv)
    out = torch.where(attendable[:, :, None, None], out, out.new_zeros(()))
    return out.reshape(b, 1, hq, d).to(q.dtype)


def _dense(q, k, v, bias, causal: bool, scale: float) -> torch.Tensor:
    """All visible keys; q (b,lq,hq,d), k/v (b,lk,hkv,d), bias (b,lk,hkv) -> (b,lq,hq,d)."""
    b, lq, hq, d = q.shape
    if lq == 1:  # the only query sits at the last key position (causal or not, it sees every key)
        return _single_query(q, k, v, bias, scale)
    lk, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    qa, ka, va = _augment(q, k, v, bias, scale, MASKED_BIAS)
    # (b, hkv, group, lq, d') queries against (b, hkv, 1, lk, d') keys: batch dims broadcast over the group.
    qa = qa.view(b, lq, hkv, group, -1).permute(0, 2, 3, 1, 4).reshape(b * hkv, group, lq, -1)
    ka = ka.permute(0, 2, 1, 3).reshape(b * hkv, 1, lk, -1).expand(-1, group, -1, -1)
    va = va.permute(0, 2, 1, 3).reshape(b * hkv, 1, lk, -1).expand(-1, group, -1, -1)
    offset = lk - lq
    mask, is_causal = None, False
    if causal and offset == 0:
        is_causal = True
    elif causal and lq > 1:
        mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(diagonal=offset)
    out = F.scaled_dot_product_attention(qa, ka, va, attn_mask=mask, is_causal=is_causal, scale=scale)
    out = out[..., :d].reshape(b, hkv, group, lq, d).permute(0, 3, 1, 2, 4).reshape(b, lq, hq, d)
    # A query whose visible keys all have bias -inf outputs zeros.
    finite = torch.isfinite(bias).permute(0, 2, 1)  # (b, hkv, lk)
    if causal:
        positions = torch.arange(lk, device=q.device)
        first = torch.where(finite, positions, lk).amin(dim=-1)  # (b, hkv)
        attendable = (torch.arange(lq, device=q.device) + offset)[None, :, None] >= first[:, None, :]
    else:
        attendable = finite.any(dim=-1)[:, None, :].expand(b, lq, hkv)
    attendable = attendable.repeat_interleave(group, dim=2)[..., None]
    return torch.where(attendable, out, out.new_zeros(())).to(q.dtype)


def rank_order(bias_rows: torch.Tensor) -> torch.Tensor:
    """Permutation sorting each row of keys by rank, best first.

    ``bias_rows (n, L)`` in position order; rank is ``(bias, position)`` descending (ties to the later key),
    non-finite biases last. Returns ``(n, L)`` long indices into the rows.
    """
    return _rank_order_of_key(_rank_key(bias_rows))


def _rank_order_of_key(key: torch.Tensor) -> torch.Tensor:
    order = torch.sort(-key.flip(-1), dim=-1, stable=True).indices
    return key.shape[-1] - 1 - order


def _rank_key(bias_rows: torch.Tensor) -> torch.Tensor:
    key = bias_rows.to(torch.float64 if bias_rows.dtype == torch.float64 else torch.float32)
    return torch.nan_to_num(key, nan=float("-inf"), posinf=float("-inf"), neginf=float("-inf"))  # non-finite: -inf


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


@torch.no_grad()
def select_blocks(bias_rows: torch.Tensor, lq: int, keep_window: int, block: int):
    """Exact per-query top-``keep_window`` selection for causal queries, for all query blocks at once.

    ``bias_rows (n, lk)``: one row per (batch, KV head). Queries sit at key positions ``lk - lq … lk - 1``,
    cut into ``nb = ceil(lq / block)`` blocks. Returns ``candidates (n, nb, w + block)`` key positions (long),
    and ``start, end (n, nb, w + block)`` int32: candidate ``c`` of block ``t`` is kept exactly by the block's
    queries ``start <= i < end`` (``i`` relative to the block's first query); a slot kept by none has
    ``start == end == 0``. Slots ``[0, w)`` hold the top ``w`` keys before the block (rank order), slots
    ``[w, w + block)`` the block's own keys (position order); no key is live in two slots of one block.

    Method (DESIGN.md, fact 1), with ``rank`` = the index in the order ``(bias, position)`` descending, padding
    (non-finite bias) last and never counted: query ``p`` keeps key ``j <= p`` iff ``rank_j <= T_p``, the
    ``w``-th smallest rank among the keys ``<= p`` (``T_p = lk`` when there are fewer than ``w``). ``T`` never
    increases with ``p``. One global sort gives the ranks; the top ``w`` before every block come from one
    prefix count over the rank order (``(n, nb, lk)``); ``T`` inside every block from :func:`_running_kth`
    (the top ``w`` before the block plus the block's keys joining one per query); the queries that keep a
    candidate are then ``[max(j, p0), first p with T_p < rank_j)``, one ``searchsorted``. About 90 tensor
    operations whatever the length (no loop over blocks, no host synchronisation); work
    O(n·lk·(lk / block + 2·block / SUB_BLOCK + 2·SUB_BLOCK)) elementwise (compare + int32 cumulative sum), plus
    sorts of n rows of lk, n·nb rows of ``min(w, block + 1) + block`` and n·lk / SUB_BLOCK rows of
    ``2·SUB_BLOCK + 1`` values, and searchsorted of n·nb·(2w + block) values.
    """
    n, lk = bias_rows.shape
    w = keep_window
    offset = lk - lq
    device = bias_rows.device
    nb = -(-lq // block)
    key = _rank_key(bias_rows)
    order = _rank_order_of_key(key)  # (n, lk): key positions, best first, padding last
    valid = key > float("-inf")
    positions = torch.arange(lk, device=device)
    ranks = torch.empty_like(order).scatter_(1, order, positions.expand(n, lk))
    # Empty slots of the top w (fewer than w keys so far) count as rank lk; padding keys get lk + 1 and never join.
    ranks = torch.where(valid, ranks, lk + 1)
    p0 = offset + torch.arange(nb, device=device) * block  # first query position of each block
    # Top w before each block: keys in rank order that are < p0 and not padding (moved to position lk), the
    # first w of them.
    order_valid = torch.where(positions < valid.sum(1, keepdim=True), order, lk)
    # (n, nb, lk) counts, in as few calls as MASK_ELEMENTS_PER_CALL allows (one up to n·nb·lk = 2^26).
    per_call = max(1, MASK_ELEMENTS_PER_CALL // max(1, n * lk))
    targets = torch.arange(1, w + 1, device=device, dtype=torch.int32).expand(n, min(nb, per_call), w)
    carried_rank = torch.cat([  # (n, nb, w): rank (= index in the order) of the i-th, or lk if none
        torch.searchsorted((order_valid[:, None, :] < p0[None, t0:t0 + per_call, None]).cumsum(-1, dtype=torch.int32),
                           targets[:, : min(per_call, nb - t0)].contiguous())
        for t0 in range(0, nb, per_call)], dim=1)
    carried = carried_rank < lk
    carried_pos = order.gather(1, carried_rank.clamp_max(lk - 1).view(n, nb * w)).view(n, nb, w)
    # The block's own keys, joining one per query; positions past lk (last block) never join.
    block_pos = p0[:, None] + torch.arange(block, device=device)  # (nb, block)
    inside = block_pos < lk
    block_pos = block_pos.clamp_max(lk - 1)
    block_rank = ranks[:, block_pos]  # (n, nb, block)
    block_valid = valid[:, block_pos] & inside
    threshold = _running_kth(carried_rank.view(n * nb, w), block_rank.view(n * nb, block),
                             block_valid.view(n * nb, block), w).view(n, nb, block)
    cand_rank = torch.cat([carried_rank, block_rank], dim=-1)  # (n, nb, w + block)
    # A candidate is kept from its own position (or the block start) until the first query with T_p < rank.
    end = torch.searchsorted(threshold.neg().contiguous(), cand_rank.neg().contiguous(), right=True)
    end = torch.minimum(end, (lk - p0).clamp_max(block)[None, :, None])
    start = torch.cat([torch.zeros(nb, w, dtype=torch.long, device=device),
                       torch.arange(block, device=device).expand(nb, block)], dim=-1).expand(n, nb, w + block)
    real = torch.cat([carried, block_valid], dim=-1)
    live = real & (end > start)
    candidates = torch.where(real, torch.cat([carried_pos, block_pos.expand(n, nb, block)], dim=-1), 0)
    start = torch.where(live, start, 0).to(torch.int32)
    end = torch.where(live, end, 0).to(torch.int32)
    return candidates, start, end


def default_block(keep_window: int) -> int:
    """Query block size for the windowed path: 64 for small windows, up to 512 (a quarter of the window)."""
    return int(min(512, max(64, (keep_window // 4) // 64 * 64)))


def _windowed_causal(q, k, v, bias, keep_window: int, scale: float, block: int) -> torch.Tensor:
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    n = b * hkv
    rows = bias.permute(0, 2, 1).reshape(n, lk)
    candidates, start, end = select_blocks(rows, lq, keep_window, block)
    nb, width = candidates.shape[1], candidates.shape[2]
    qa, ka, va = _augment(q, k, v, bias, scale, 0.0)  # non-finite keys are never kept: any finite value
    dp = qa.shape[-1]
    ka = ka.reshape(b * lk * hkv, dp)
    va = va.reshape(b * lk * hkv, dp)
    # Flat row of candidate (batch bi, head h, key j) in the (b, lk, hkv) tables, laid out (b, nb, hkv, W).
    heads = torch.arange(hkv, device=q.device)
    batches = torch.arange(b, device=q.device)
    flat = (candidates.view(b, hkv, nb, width) * hkv + heads[None, :, None, None]
            + (batches * lk * hkv)[:, None, None, None]).permute(0, 2, 1, 3)
    masks = (start.view(b, hkv, nb, width).permute(0, 2, 1, 3), end.view(b, hkv, nb, width).permute(0, 2, 1, 3))
    qa = F.pad(qa, (0, 0, 0, 0, 0, nb * block - lq))
    qa = qa.view(b, nb, block, hkv, group, dp).permute(0, 1, 3, 4, 2, 5)  # (b, nb, hkv, group, block, d')
    rel = torch.arange(block, device=q.device, dtype=torch.int32)
    per_call = max(1, MASK_ELEMENTS_PER_CALL // max(1, b * hkv * block * width))
    outs = []
    for t0 in range(0, nb, per_call):
        t1 = min(nb, t0 + per_call)
        m = t1 - t0
        s, e = masks[0][:, t0:t1], masks[1][:, t0:t1]
        mask = (s[..., None, :] <= rel[:, None]) & (rel[:, None] < e[..., None, :])  # (b, m, hkv, block, W)
        attendable = mask.any(-1, keepdim=True)
        mask = mask | (~attendable & (torch.arange(width, device=q.device) == 0))  # no all-masked row
        idx = flat[:, t0:t1].reshape(-1)
        kc = ka.index_select(0, idx).view(b * m * hkv, 1, width, dp).expand(-1, group, -1, -1)
        vc = va.index_select(0, idx).view(b * m * hkv, 1, width, dp).expand(-1, group, -1, -1)
        qc = qa[:, t0:t1].reshape(b * m * hkv, group, block, dp)
        out = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask.reshape(b * m * hkv, 1, block, width),
                                             scale=scale)
        out = out[..., :d].view(b, m, hkv, group, block, d)
        out = torch.where(attendable.view(b, m, hkv, 1, block, 1), out, out.new_zeros(()))
        outs.append(out)
    out = torch.cat(outs, dim=1).permute(0, 1, 4, 2, 3, 5).reshape(b, nb * block, hq, d)
    return out[:, :lq].to(q.dtype)


def _windowed_full(q, k, v, bias, keep_window: int, scale: float) -> torch.Tensor:
    """Not causal: every query keeps the same top-``keep_window`` keys of its (batch, KV head)."""
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    rows = bias.permute(0, 2, 1).reshape(b * hkv, lk)
    width = min(keep_window, lk)
    with torch.no_grad():
        top = rank_order(rows)[:, :width]  # (b*hkv, W)
        valid = torch.isfinite(rows.gather(1, top))
    qa, ka, va = _augment(q, k, v, bias, scale, 0.0)
    dp = qa.shape[-1]
    heads = torch.arange(hkv, device=q.device)
    flat = (top.view(b, hkv, width) * hkv + heads[None, :, None]
            + (torch.arange(b, device=q.device) * lk * hkv)[:, None, None]).reshape(-1)
    kc = ka.reshape(-1, dp).index_select(0, flat).view(b * hkv, 1, width, dp).expand(-1, group, -1, -1)
    vc = va.reshape(-1, dp).index_select(0, flat).view(b * hkv, 1, width, dp).expand(-1, group, -1, -1)
    qc = qa.view(b, lq, hkv, group, dp).permute(0, 2, 3, 1, 4).reshape(b * hkv, group, lq, dp)
    attendable = valid.any(-1)  # (b*hkv,)
    mask = valid | (~attendable[:, None] & (torch.arange(width, device=q.device) == 0))
    out = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask.view(b * hkv, 1, 1, width), scale=scale)
    out = torch.where(attendable.view(-1, 1, 1, 1), out[..., :d], out.new_zeros(()))
    return out.view(b, hkv, group, lq, d).permute(0, 3, 1, 2, 4).reshape(b, lq, hq, d).to(q.dtype)


def dynamic_mask_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                                 keep_window: int | None, causal: bool, scale: float,
                                 block: int | None = None) -> torch.Tensor:
    """q (b,lq,hq,d), k/v (b,lk,hkv,d), bias (b,lk,hkv) -> (b,lq,hq,d) (arguments already checked).

    ``block``: query block of the windowed causal path (default :func:`default_block`).
    """
    lk = k.shape[1]
    if keep_window is None or keep_window >= lk:
        return _dense(q, k, v, bias, causal, scale)
    if not causal:
        return _windowed_full(q, k, v, bias, keep_window, scale)
    return _windowed_causal(q, k, v, bias, keep_window, scale, block or default_block(keep_window))


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
