"""The mean sub-key distribution of product-key routing, ``P[h, c] = mean_t softmax_n(q_{t,h,c} · K_{h,c}ᵀ)``, the
differentiable factor of CDMoE's load-balancing loss (``layers/cdmoe.product_key_balance_loss``), computed so that
nothing of size ``tokens × heads × 2 × n`` is kept for its backward.

Written as PyTorch ops (:func:`subkey_marginals_naive`, the oracle), autograd keeps the float32 probabilities —
``4·H·2·n`` bytes per token (1.5 KB at cheems-base's 4 heads × 48 sub-keys: 50 MB per layer and 0.6 GB per step at
32K tokens) — and ``torch.compile``'s partitioner keeps them too. :func:`subkey_marginals` runs the same ops under
activation checkpointing: autograd, and the compiler's partitioner alike, keep only the inputs (the query, which
routing keeps anyway, and the sub-keys) and compute the scores and probabilities again in the backward. Under the
compiler these stay ordinary graph nodes that Inductor fuses; an opaque custom operator running the same ops in eager
ATen left them unfused (~6 ms per cheems-base 16K step in copies and float32 passes, docs/results.md, session 20).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def subkey_marginals_naive(query: Tensor, sub_keys: Tensor) -> Tensor:
    """The oracle of :func:`subkey_marginals`, differentiable by autograd (keeps the probabilities)."""
    scores = torch.einsum("thcd,hcnd->thcn", query.reshape(-1, *query.shape[-3:]), sub_keys)
    return scores.to(torch.promote_types(scores.dtype, torch.float32)).softmax(-1).mean(0)


def subkey_marginals(query: Tensor, sub_keys: Tensor) -> Tensor:
    """Mean over tokens of the softmax over each half's sub-keys: query ``(..., H, 2, dk)``, sub_keys
    ``(H, 2, n, dk)`` of the query's dtype -> ``(H, 2, n)`` (float32 for half-precision inputs, else their dtype);
    differentiable in both, keeping only them for the backward (the module docstring)."""
    if query.dtype != sub_keys.dtype:
        raise ValueError(f"sub_keys.dtype={sub_keys.dtype} is not allowed: the query's dtype ({query.dtype})")
    # no randomness to replay: the RNG states are not saved (nor read inside a CUDA graph's capture)
    return checkpoint(subkey_marginals_naive, query, sub_keys, use_reentrant=False, preserve_rng_state=False)
