"""Product-key retrieval baselines built on :func:`~wonderful_matrices.ops.product_key_topk`.

* :class:`PKM` — Lample et al. 2019, "Large Memory Layers with Product Keys": each head retrieves the top-k of
  ``N`` memory slots and returns the softmax-weighted sum of their value vectors; heads are summed.
* :class:`PEER` — He 2024, "Mixture of A Million Experts": each head retrieves the top-k of ``N`` single-neuron
  experts (``down``, ``up`` rows) and mixes ``softmax(scores)·act(down[e]·x)·up[e]``; heads are summed.

Both score expert ``(a, b)`` (id ``a·√N + b``) of head ``h`` as ``q_{h,0}·keys[h,0,a] + q_{h,1}·keys[h,1,b]``
with ``q = queries(x)`` viewed ``(H, 2, d_k/2)``. The papers normalise queries with BatchNorm; BatchNorm mixes
the tokens of a batch, so here the query is a plain linear map and every token is routed on its own.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import is_int, reject
from ..ops import expert_mixture, product_key_topk
from ..ops.common import MIXTURE_LAYER_BACKENDS, require, trusted_values
from ..ops.expert_mixture import weighted_rows
from .mlp import ACTIVATIONS


class _ProductKeyRouter(nn.Module):
    """Query projection ``queries: Linear(d, H·d_k)`` and sub-keys ``keys (H, 2, √N, d_k/2)``; returns gates
    ``(..., H, k)`` float32 (softmax over the top-k scores) and ids ``(..., H, k)`` for x ``(..., d)``."""

    def __init__(self, hidden_size: int, num_experts: int, num_heads: int, top_k: int, key_dim: int):
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("num_experts", num_experts), ("num_heads", num_heads)):
            require(is_int(value) and value >= 1, name, value, "an integer >= 1")
        n = math.isqrt(num_experts)
        require(n * n == num_experts, "num_experts", num_experts, "a perfect square (√N sub-keys per half)")
        require(is_int(top_k) and 1 <= top_k <= n, "top_k", top_k, f"an integer in [1, √N = {n}]")
        require(is_int(key_dim) and key_dim >= 2 and key_dim % 2 == 0, "key_dim", key_dim,
                "an even integer >= 2")
        self.num_heads, self.top_k, self.key_dim = num_heads, top_k, key_dim
        self.queries = nn.Linear(hidden_size, num_heads * key_dim, bias=False)
        self.keys = nn.Parameter(torch.randn(num_heads, 2, n, key_dim // 2) * (key_dim // 2) ** -0.5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-1:] != (self.queries.in_features,):
            reject("x.shape", tuple(x.shape), f"(..., {self.queries.in_features})")
        query = self.queries(x).unflatten(-1, (self.num_heads, 2, self.key_dim // 2))
        scores, ids = product_key_topk(query, self.keys.to(query.dtype), self.top_k)
        return scores.softmax(-1), ids


class PKM(nn.Module):
    """Product-key memory: ``y = Σ_h Σ_k softmax(scores)·values[e]``.

    Args:
        hidden_size: width ``d`` of input and output (values are ``d`` wide).
        num_experts: memory slots ``N`` (a perfect square).
        num_heads: retrieval heads. top_k: slots per head (``<= √N``). key_dim: query width per head (even).
        backend: backend of the value read (:func:`~wonderful_matrices.ops.expert_mixture.weighted_rows`):
            ``"auto"``, ``"torch"``, ``"dense"`` or ``"triton"``.

    Parameters: ``router.queries``, ``router.keys``, ``values (N, d)`` (an ``nn.Embedding``).
    Forward: ``x (..., d) -> (..., d)``.
    """

    def __init__(self, hidden_size: int, num_experts: int, num_heads: int = 4, top_k: int = 32,
                 key_dim: int = 128, backend: str = "auto"):
        super().__init__()
        require(backend in MIXTURE_LAYER_BACKENDS, "backend", backend, f"one of {MIXTURE_LAYER_BACKENDS}")
        self.backend = backend
        self.router = _ProductKeyRouter(hidden_size, num_experts, num_heads, top_k, key_dim)
        self.values = nn.Embedding(num_experts, hidden_size)
        nn.init.normal_(self.values.weight, std=hidden_size ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., d) -> (..., d)."""
        gates, ids = self.router(x)
        flat_ids = ids.reshape(-1, ids.shape[-2] * ids.shape[-1])
        with trusted_values():  # ids from product_key_topk are in range
            y = weighted_rows(gates.reshape(flat_ids.shape), flat_ids, self.values.weight.to(x.dtype), self.backend)
        return y.to(x.dtype).reshape(x.shape)


class PEER(nn.Module):
    """Parameter-efficient expert retrieval: ``y = Σ_h Σ_k softmax(scores)·act(down[e]·x)·up[e]``.

    Args:
        hidden_size: width ``d``.
        num_experts: single-neuron experts ``N`` (a perfect square).
        num_heads: retrieval heads (the paper uses 8). top_k: experts per head (paper: 16, ``<= √N``).
        key_dim: query width per head (paper: 128; even). activation: ``"gelu"`` (paper), ``"silu"`` or ``"relu"``.
        backend: backend of :func:`~wonderful_matrices.ops.expert_mixture`: ``"auto"``, ``"torch"``, ``"dense"`` or
            ``"triton"``.

    Parameters: ``router.queries``, ``router.keys``, ``down_embed``/``up_embed (N, d)`` (``nn.Embedding``).
    Forward: ``x (..., d) -> (..., d)``.
    """

    def __init__(self, hidden_size: int, num_experts: int, num_heads: int = 8, top_k: int = 16,
                 key_dim: int = 128, activation: str = "gelu", backend: str = "auto"):
        super().__init__()
        require(activation in ACTIVATIONS, "activation", activation, f"one of {sorted(ACTIVATIONS)}")
        require(backend in MIXTURE_LAYER_BACKENDS, "backend", backend, f"one of {MIXTURE_LAYER_BACKENDS}")
        self.activation, self.backend = activation, backend
        self.router = _ProductKeyRouter(hidden_size, num_experts, num_heads, top_k, key_dim)
        self.down_embed = nn.Embedding(num_experts, hidden_size)
        self.up_embed = nn.Embedding(num_experts, hidden_size)
        nn.init.normal_(self.down_embed.weight, std=hidden_size ** -0.5)
        nn.init.normal_(self.up_embed.weight, std=hidden_size ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., d) -> (..., d)."""
        gates, ids = self.router(x)
        with trusted_values():  # ids from product_key_topk are in range
            return expert_mixture(x, ids, gates, self.down_embed.weight.to(x.dtype),
                                  self.up_embed.weight.to(x.dtype), self.activation, backend=self.backend)
