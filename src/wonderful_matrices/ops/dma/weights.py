"""Dynamic mask attention's probabilities as a dense matrix, for inspection (HF's ``output_attentions``).

The same selection as the op (docs/design.md, "DMA"): query ``i`` sits at key position ``i + lk - lq``, sees the
keys up to it (all keys when not causal) with a finite bias, and keeps the ``keep_window`` of those with the
largest ``(bias, position)``. Builds ``(b, hq, lq, lk)`` tensors: meant for short sequences, not for training.
"""
from __future__ import annotations

import math

import torch

from .selection import rank_order


def dynamic_mask_attention_weights(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor,
                                   keep_window: int | None = None, causal: bool = True,
                                   scale: float | None = None) -> torch.Tensor:
    """Softmax weights of dynamic mask attention over every key.

    Args:
        q: ``(b, lq, hq, d)``; k: ``(b, lk, hkv, d)`` with ``hq % hkv == 0``; bias: ``(b, lk, hkv)`` (``-inf``
            = never attended); ``keep_window``, ``causal``, ``scale`` as in :func:`dynamic_mask_attention`.

    Returns:
        ``(b, hq, lq, lk)`` in float32 (float64 for float64 inputs): row ``i`` holds query ``i``'s weights on the
        keys it keeps and zeros elsewhere; a query with no attendable key has an all-zero row. Multiplying by the
        values gives the op's output.
    """
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    work = torch.float64 if torch.float64 in (q.dtype, k.dtype, bias.dtype) else torch.float32
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    bias_rows = bias.to(work).permute(0, 2, 1)  # (b, hkv, lk)
    logits = torch.einsum("bqhgd,bkhd->bhgqk", q.to(work).view(b, lq, hkv, hq // hkv, d), k.to(work)) * scale
    logits = logits + bias_rows[:, :, None, None, :]
    visible = torch.isfinite(bias_rows)[:, :, None, :].expand(b, hkv, lq, lk)
    if causal:
        key_pos = torch.arange(lk, device=q.device)
        query_pos = torch.arange(lq, device=q.device) + (lk - lq)
        visible = visible & (key_pos[None, :] <= query_pos[:, None])
    if keep_window is not None and keep_window < lk:
        order = rank_order(bias_rows.reshape(b * hkv, lk))  # best first
        rank = torch.empty_like(order).scatter_(
            -1, order, torch.arange(lk, 0, -1, device=q.device).expand_as(order)).view(b, hkv, 1, lk)
        visible_rank = torch.where(visible, rank, 0)  # 0 ranks below every key
        kth = visible_rank.topk(keep_window, dim=-1).values[..., -1:]
        visible = visible & (rank >= kth)
    logits = logits.masked_fill(~visible[:, :, None], float("-inf"))
    has_key = visible[:, :, None].any(-1, keepdim=True)
    weights = torch.softmax(logits.masked_fill(~has_key, 0.0), dim=-1) * has_key
    return weights.reshape(b, hq, lq, lk)
