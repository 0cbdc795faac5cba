"""Dynamic mask attention with a window, causal, on FlexAttention over each query block's gathered live keys.

The same selection as the Triton kernels (:func:`.windowed_kernels.select`: ``drop_j`` per key, and per query
block of ``B`` its list of at most ``w + B`` live keys — the carried ones by ``drop_j`` descending, then its own in
position order). Here the lists are materialised instead of read by index inside a kernel: K, V and the bias of
each block's list are gathered into ``(b · nb, hkv, W, d)`` tensors (``W = w + B`` rounded up to a Flex tile), the
queries are cut into the matching ``(b · nb, hq, B, d)`` blocks, and FlexAttention runs on them with

* ``score_mod``: ``+ bias`` of the listed key;
* ``mask_mod``: query position ``p`` keeps list entry ``c`` (key ``j_c``) exactly when ``j_c <= p < drop_c``
  (docs/design.md, fact 1; unused slots have ``drop = 0``);
* a block mask built from the lists, per tile of :data:`~.biased_causal.TILE` queries: the leading list tiles that
  every query of the tile keeps are *full* (no mask evaluated: carried keys whose ``drop`` is past the tile's last
  query); the carried tiles up to the last key some query of the tile keeps and the own-key tiles up to the tile's
  last query are *partial*; the others (carried keys dropped before the tile) are skipped.

So the work is that of the kept pairs (plus the partial tiles' waste), in Flex's kernels with their tile loads
instead of per-row gathers, at the price of writing the gathered K/V (each key is listed by about
``(drop_j − j) / B + 1`` blocks: ~2 × K and V at ``w = B``). Memory stays linear in ``L``: the lists are
``O(b · hkv · L · (w + B) / B)``; no ``(L, L)`` or (blocks × keys) tensor.

Backward: Flex's (q, k, v), the bias gradient by column sums (:class:`.biased_causal._BiasGradientByColumnSums`:
no per-pair atomic adds), and the gathers' own gradients summed back per key in float32
(:class:`_GatherListRows`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask

from . import biased_causal
from .biased_causal import KERNEL_OPTIONS, TILE
from .windowed import MASKED_BIAS
from .windowed_kernels import block_for, select

UNUSED = torch.iinfo(torch.int64).max  # the position of an unused list slot in the block mask's counts


class _GatherListRows(torch.autograd.Function):
    """``x (b, lk, hkv, e)`` -> ``(b, nb, hkv, W, e)``: row ``index[b, t, g, c]`` of KV head ``g`` for every list
    slot; the backward adds each slot's gradient back onto its key in float32 (a key sits in several lists)."""

    @staticmethod
    def forward(ctx, x, index):
        b, _, hkv, _ = x.shape
        ctx.save_for_backward(index)
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        bi = torch.arange(b, device=x.device)[:, None, None, None]
        gi = torch.arange(hkv, device=x.device)[None, None, :, None]
        return x[bi, index, gi]

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        b, lk, hkv, e = ctx.x_shape
        flat = (torch.arange(b, device=grad.device)[:, None, None, None] * lk + index) * hkv \
            + torch.arange(hkv, device=grad.device)[None, None, :, None]
        out = torch.zeros(b * lk * hkv, e, device=grad.device, dtype=torch.float32)
        out.index_add_(0, flat.reshape(-1), grad.reshape(-1, e).float())
        return out.view(b, lk, hkv, e).to(ctx.x_dtype), None


def list_block_mask(slot_key: torch.Tensor, slot_drop: torch.Tensor, p0: torch.Tensor, block: int,
                    group: int) -> BlockMask:
    """The Flex block mask of the gathered problem.

    ``slot_key``, ``slot_drop (b, nb, hkv, W)`` int64: each list slot's key position and ``drop`` (``0`` for an
    unused slot, so no query keeps it); ``p0 (nb,)`` each block's first query position; ``block`` a multiple of
    :data:`TILE`, ``W`` too; ``group = hq / hkv``.
    Returns a ``BlockMask`` of batch ``b · nb`` and ``hq`` heads over ``(block, W)``.
    """
    b, nb, hkv, width = slot_key.shape
    nq, nk = block // TILE, width // TILE
    tile_first = p0[:, None] + torch.arange(nq, device=p0.device) * TILE  # (nb, nq) first / last query position
    tile_last = tile_first + TILE - 1
    carried = (slot_drop > 0) & (slot_key < p0[None, :, None, None])
    n_carried = carried.sum(-1, keepdim=True)  # carried slots lead each list
    # non-decreasing along the list: carried keys' -drop, then 1; carried -1, then own keys' positions, then UNUSED
    # (past every query position, also the padded queries' of the last block)
    neg_drop = torch.where(carried, -slot_drop, 1).contiguous()
    own_key = torch.where(carried, -1, torch.where(slot_drop > 0, slot_key, UNUSED)).contiguous()

    def counts(sorted_rows, values, right):  # per query tile: entries < (<=) value, (b, nb, hkv, nq)
        return torch.searchsorted(sorted_rows, values.expand(b, nb, hkv, nq).contiguous(), right=right)

    full_end = counts(neg_drop, (-tile_last)[None, :, None, :], False)  # carried with drop > tile_last
    live_end = counts(neg_drop, (-tile_first)[None, :, None, :], False)  # carried with drop > tile_first
    own_end = counts(own_key, tile_last[None, :, None, :], True)  # carried + own keys <= tile_last
    full = full_end // TILE
    a0, a1 = full, -(-live_end // TILE)  # partial carried tiles [a0, a1)
    b0, b1 = torch.maximum(n_carried // TILE, a1), -(-own_end // TILE)  # own-key tiles not in [a0, a1)
    with_own = own_end > n_carried
    na = (a1 - a0).clamp_min(0)
    nb_own = torch.where(with_own, (b1 - b0).clamp_min(0), 0)
    slot = torch.arange(nk, device=p0.device)
    partial = torch.where(slot < na[..., None], a0[..., None] + slot, b0[..., None] + slot - na[..., None])
    full_idx = slot.expand(*full.shape, nk)

    def per_query_head(x):  # (b, nb, hkv, nq[, nk]) -> (b · nb, hq, nq[, nk]) int32
        x = x.to(torch.int32).clamp(0, nk - 1) if x.dim() == 5 else x.to(torch.int32)
        return x.repeat_interleave(group, dim=2).flatten(0, 1).contiguous()

    key_rows = slot_key.flatten(0, 1)  # (b · nb, hkv, W)
    drop_rows = slot_drop.flatten(0, 1)
    first_rows = p0.repeat(b)  # (b · nb,)

    def mask_mod(bi, h, q_idx, kv_idx):
        g = h // group
        p = first_rows[bi] + q_idx
        return (key_rows[bi, g, kv_idx] <= p) & (p < drop_rows[bi, g, kv_idx])

    return BlockMask.from_kv_blocks(per_query_head(na + nb_own), per_query_head(partial), per_query_head(full),
                                    per_query_head(full_idx), BLOCK_SIZE=TILE, mask_mod=mask_mod,
                                    seq_lengths=(block, width))


def dynamic_mask_attention_windowed_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                                         keep_window: int, scale: float, seq_idx: torch.Tensor | None = None,
                                         block: int | None = None, compiled: bool = True) -> torch.Tensor:
    """Causal DMA with a window on FlexAttention (module docstring): q (b, lq, hq, d), k/v (b, lk, hkv, d), bias
    (b, lk, hkv), optional seq_idx (b, l) -> (b, lq, hq, d) in q's dtype; gradients reach q, k, v and bias.

    ``block``: the selection's query block (default :func:`.windowed_kernels.block_for`), rounded up to a multiple of
    :data:`TILE`. ``compiled``: FlexAttention through ``torch.compile`` (its fast kernels; CUDA) or eagerly (a
    reference computation over all pairs, for tests on the CPU). Needs ``d`` in :data:`.biased_causal.HEAD_DIMS`.
    """
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    block = -(-(block or block_for(keep_window)) // TILE) * TILE
    drop, keys, ends, _ = select(bias, lq, keep_window, block, seq_idx)  # (b·hkv, lk), (b·hkv, nb, w + block), …
    nb, listed = keys.shape[1], keys.shape[2]
    width = -(-listed // TILE) * TILE
    used = torch.arange(width, device=q.device) < ends[..., -1:]  # (b·hkv, nb, width)
    index = F.pad(keys.long(), (0, width - listed)) * used
    slot_drop = drop.long().gather(1, index.view(b * hkv, -1)).view_as(index) * used
    index, slot_drop = (t.view(b, hkv, nb, width).transpose(1, 2) for t in (index, slot_drop))  # (b, nb, hkv, W)
    p0 = lk - lq + torch.arange(nb, device=q.device) * block

    kt, vt = (_GatherListRows.apply(x, index).flatten(0, 1) for x in (k, v))  # (b · nb, hkv, W, d)
    rows = torch.where(torch.isfinite(bias), bias.float(), MASKED_BIAS)
    bias_rows = _GatherListRows.apply(rows[..., None], index)[..., 0].flatten(0, 1)  # (b · nb, hkv, W)
    qt = F.pad(q, (0, 0, 0, 0, 0, nb * block - lq)).view(b, nb, block, hq, d).permute(0, 1, 3, 2, 4).flatten(0, 1)

    block_mask = list_block_mask(index, slot_drop, p0, block, hq // hkv)
    if bias_rows.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        out = biased_causal._BiasGradientByColumnSums.apply(qt, kt, vt, bias_rows, block_mask, scale, compiled)
    else:
        attend = biased_causal._compiled_attend if compiled and biased_causal._compiled_attend is not None \
            else biased_causal._attend
        out = attend(qt, kt, vt, bias_rows, block_mask, scale, KERNEL_OPTIONS)
    out = out.view(b, nb, hq, block, d).permute(0, 1, 3, 2, 4).reshape(b, nb * block, hq, d)[:, :lq]
    return out.to(q.dtype)
