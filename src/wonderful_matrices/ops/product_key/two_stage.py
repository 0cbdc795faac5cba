"""Exact product-key top-k in PyTorch at O(√N·dk + k²) per token and head.

For each head the score of expert ``(a, b)`` is ``s_0[a] + s_1[b]`` with ``s_c = q_c · K_c`` (n = √N sub-keys
per half). The k best sums always lie among the pairs of the k best ``s_0`` and the k best ``s_1``: a pair with
``a`` outside the top k of ``s_0`` is beaten or equalled by the k pairs ``(a_i, b_best)``, and likewise for ``b``.
So the top k of the k×k candidate sums is the exact top k over all N experts; no ``(tokens, N)`` tensor is built.
"""
from __future__ import annotations

import torch


def product_key_topk(query: torch.Tensor, sub_keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """query (..., H, 2, dk), sub_keys (H, 2, n, dk) -> scores (..., H, k) descending, ids (..., H, k) int64."""
    n = sub_keys.shape[2]
    if query.dtype in (torch.float16, torch.bfloat16):  # the scores, their sums and ranking in float32 (rounding
        query, sub_keys = query.float(), sub_keys.float()  # the half scores first moved ~1% of the expert sets)
    half_scores = torch.einsum("...hcd,hcnd->...hcn", query, sub_keys)  # (..., H, 2, n)
    top_values, top_index = half_scores.topk(k, dim=-1, sorted=False)  # (..., H, 2, k)
    sums = top_values[..., 0, :, None] + top_values[..., 1, None, :]  # (..., H, k, k)
    scores, flat = sums.flatten(-2).topk(k, dim=-1, sorted=True)  # (..., H, k)
    a = top_index[..., 0, :].gather(-1, torch.div(flat, k, rounding_mode="floor"))
    b = top_index[..., 1, :].gather(-1, flat % k)
    return scores, a * n + b
