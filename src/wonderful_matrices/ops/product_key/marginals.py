"""The mean sub-key distribution of product-key routing, ``P[h, c] = mean_t softmax_n(q_{t,h,c} · K_{h,c}ᵀ)``, the
differentiable factor of CDMoE's load-balancing loss (``layers/cdmoe.product_key_balance_loss``), as an operator
that keeps nothing of size ``tokens × heads × 2 × n`` for its backward.

Written as PyTorch ops (:func:`subkey_marginals_naive`, the oracle), autograd keeps the float32 probabilities —
``4·H·2·n`` bytes per token (1.5 KB at cheems-base's 4 heads × 48 sub-keys: 50 MB per layer and 0.6 GB per step at
32K tokens) — and ``torch.compile``'s partitioner keeps them too. The operator keeps only its inputs (the query,
which routing keeps anyway, and the sub-keys) and computes the scores and probabilities again in its backward, one
``(T, H, 2, n)`` product and softmax. Both directions are custom operators, opaque to the compiler, so the
recomputation cannot be merged with the forward's (docs/results.md, session 18).
"""
from __future__ import annotations

import torch
from torch import Tensor


def _probabilities(query: Tensor, sub_keys: Tensor) -> Tensor:
    """(T, H, 2, dk), (H, 2, n, dk) -> softmax over the sub-keys (T, H, 2, n), float32 for half inputs."""
    scores = torch.einsum("thcd,hcnd->thcn", query, sub_keys)
    return scores.to(torch.promote_types(scores.dtype, torch.float32)).softmax(-1)


def subkey_marginals_naive(query: Tensor, sub_keys: Tensor) -> Tensor:
    """The oracle of :func:`subkey_marginals`, differentiable by autograd (keeps the probabilities)."""
    return _probabilities(query.reshape(-1, *query.shape[-3:]), sub_keys).mean(0)


@torch.library.custom_op("wonderful_matrices::subkey_marginals", mutates_args=())
def _marginals(query: Tensor, sub_keys: Tensor) -> Tensor:
    return _probabilities(query, sub_keys).mean(0)


@_marginals.register_fake
def _(query, sub_keys):
    return query.new_empty(query.shape[1:-1] + sub_keys.shape[2:3],
                           dtype=torch.promote_types(query.dtype, torch.float32))


@torch.library.custom_op("wonderful_matrices::subkey_marginals_backward", mutates_args=())
def _marginals_backward(grad: Tensor, query: Tensor, sub_keys: Tensor) -> tuple[Tensor, Tensor]:
    # P = mean_t p_t with p_t = softmax(s_t): dL/ds_t = p_t ⊙ (g − <p_t, g>) / T, g = dL/dP
    p = _probabilities(query, sub_keys)
    g = grad / max(query.shape[0], 1)
    grad_scores = (p * (g - (p * g).sum(-1, keepdim=True))).to(query.dtype)
    # contiguous, as the fake promises (an einsum's output may come back permuted)
    return (torch.einsum("thcn,hcnd->thcd", grad_scores, sub_keys).contiguous(),
            torch.einsum("thcn,thcd->hcnd", grad_scores, query).contiguous())


@_marginals_backward.register_fake
def _(grad, query, sub_keys):
    return torch.empty_like(query), torch.empty_like(sub_keys)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    query, sub_keys = ctx.saved_tensors
    return _marginals_backward(grad.contiguous(), query, sub_keys)


_marginals.register_autograd(_backward, setup_context=_setup)


def subkey_marginals(query: Tensor, sub_keys: Tensor) -> Tensor:
    """Mean over tokens of the softmax over each half's sub-keys: query ``(..., H, 2, dk)``, sub_keys
    ``(H, 2, n, dk)`` of the query's dtype -> ``(H, 2, n)`` (float32 for half-precision inputs, else their dtype);
    differentiable in both, keeping only them for the backward (the module docstring)."""
    if query.dtype != sub_keys.dtype:
        raise ValueError(f"sub_keys.dtype={sub_keys.dtype} is not allowed: the query's dtype ({query.dtype})")
    return _marginals(query.reshape(-1, *query.shape[-3:]).contiguous(), sub_keys.contiguous())
