"""Oracle for product-key top-k: score every one of the N experts, then take the top k.

Builds each expert's full key ``concat(K_0[a], K_1[b])`` (id ``a·√N + b``) and the full query
``concat(q_0, q_1)``, so the score is one dot product per expert — O(N) per token and head, obviously right.
"""
from __future__ import annotations

import torch


def product_key_topk(query: torch.Tensor, sub_keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """query (..., H, 2, dk), sub_keys (H, 2, n, dk) -> scores (..., H, k) descending, ids (..., H, k) int64."""
    H, _, n, dk = sub_keys.shape
    first = sub_keys[:, 0, :, None, :].expand(H, n, n, dk)   # K_0[a] for every (a, b)
    second = sub_keys[:, 1, None, :, :].expand(H, n, n, dk)  # K_1[b] for every (a, b)
    full_keys = torch.cat([first, second], dim=-1).reshape(H, n * n, 2 * dk)  # row a*n + b
    full_query = query.reshape(*query.shape[:-2], 2 * dk)
    if full_query.dtype in (torch.float16, torch.bfloat16):  # scores in float32, as the fast paths compute them
        full_query, full_keys = full_query.float(), full_keys.float()
    all_scores = torch.einsum("...hd,hed->...he", full_query, full_keys)  # (..., H, N)
    scores, ids = all_scores.topk(k, dim=-1, sorted=True)
    return scores, ids
