"""Cross Domain Mixture of Experts (CDMoE): a dense SwiGLU shared by every token plus a pool of single-neuron
private experts retrieved per token with product keys (docs/design.md, "CDMoE").

Parameters (names chosen so checkpoints map by name):

* ``gate_proj``, ``up_proj``, ``down_proj`` — the shared SwiGLU, exactly the names and shapes of
  :class:`~wonderful_matrices.layers.mlp.GatedMLP` (and HF ``LlamaMLP`` / ``DogeCDMoE``), so a dense MLP
  checkpoint initialises it (:meth:`CDMoE.load_mlp`, :meth:`CDMoE.from_mlp`).
* ``queries`` — ``Linear(d, H·d_r)``; its output is viewed ``(H, 2, d_r/2)``: one half-query per product half.
* ``keys`` — ``(H, 2, √N, d_r/2)`` sub-keys; expert ``(a, b)`` (id ``a·√N + b``) of head ``h`` scores
  ``q_{h,0}·keys[h,0,a] + q_{h,1}·keys[h,1,b]``.
* ``down_embed``, ``up_embed`` — ``Embedding(N, d)``: row ``e`` is expert ``e``'s input and output vector
  (HF ``DogeCDMoE`` names).

Forward, per token (no token ever sees another): ``shared(x) + Σ_h Σ_k g·act(down[e]·x)·up[e]`` with
``g = softmax`` of the head's top-k scores, the experts found by :func:`~wonderful_matrices.ops.product_key_topk`
(O(√N + k²) per token and head) and mixed by :func:`~wonderful_matrices.ops.expert_mixture`. A decoding step (a few
tokens, no autograd) runs the whole layer in three Triton launches (:func:`~wonderful_matrices.ops.cdmoe.decode_step`)
where the backend allows it (``"triton"``; ``"auto"`` on CUDA, see ``ops.cdmoe.AUTO_USES_DECODE_STEP``).
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

from ..errors import is_finite_number, is_int, reject
from ..ops import expert_mixture, gated_linear, product_key_topk
from ..ops.cdmoe import decode_args_valid, decode_step_usable, launch_decode_step
from ..ops.common import MIXTURE_LAYER_BACKENDS, autocast_dtype, require, trusted_values
from ..ops.product_key.marginals import subkey_marginals
from .mlp import ACTIVATIONS, GatedMLP

SHARED_MLP_NAMES = ("gate_proj", "up_proj", "down_proj")  # the shared SwiGLU, named as GatedMLP and HF LlamaMLP
_COUNT_COPIES = 64  # copies of the balance loss's sub-key counts that tokens are spread over


def product_key_balance_loss(half_scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Switch-style load-balancing loss over the product-key marginals, aligned by sub-key index.

    For head ``h`` and half ``c`` let ``p_{t,h,c} = softmax(half_scores[t,h,c])`` over the ``n = √N`` sub-keys,
    ``P_{h,c}[a] = mean_t p_{t,h,c}[a]`` (differentiable) and ``f_{h,c}[a]`` the fraction of the ``T·k`` selected
    experts of head ``h`` whose half-``c`` sub-key is ``a`` (``a = id // n`` for ``c = 0``, ``id % n`` for ``c = 1``).
    Then ``loss = 1/(2H) · Σ_{h,c} n · Σ_a f_{h,c}[a] · P_{h,c}[a]``: exactly 1 when both are uniform, up to
    ``n`` when every token uses one sub-key. Both factors are indexed by the same sub-key ``a`` (the published
    code pairs rank-sorted probabilities with id-indexed counts; docs/design.md, defect 7).

    Args:
        half_scores: ``(..., H, 2, n)`` sub-key scores of every token.
        ids: ``(..., H, k)`` selected expert ids ``a·n + b``.

    Returns:
        A scalar (float32 for half-precision scores, else their dtype).
    """
    H, n = half_scores.shape[-3], half_scores.shape[-1]
    dtype = torch.float32 if half_scores.dtype in (torch.float16, torch.bfloat16) else half_scores.dtype
    return balance_loss_of_marginals(half_scores.to(dtype).softmax(-1).reshape(-1, H, 2, n).mean(0), ids)


def balance_loss_of_marginals(probs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """:func:`product_key_balance_loss` from the mean sub-key distribution ``probs (H, 2, n)`` (its ``P``; what
    :func:`~wonderful_matrices.ops.product_key.marginals.subkey_marginals` computes from the queries without keeping the
    per-token probabilities) and the selected ``ids (..., H, k)`` -> a scalar in ``probs``' dtype."""
    H, n, dtype = probs.shape[0], probs.shape[-1], probs.dtype
    flat = ids.reshape(-1, H, ids.shape[-1])
    T = flat.shape[0]
    halves = torch.stack([torch.div(flat, n, rounding_mode="floor"), flat % n], dim=2)  # (T, H, 2, k)
    # Token t counts into copy t % R of the (H, 2, n) bins: T·k atomic adds onto only 2·H·n bins serialise on a GPU
    # (0.3 ms a layer at cheems-base's 32K tokens); R copies spread them, and the sum of integer counts is exact.
    spread = min(T, _COUNT_COPIES)
    copies = torch.arange(T, device=ids.device) % spread
    bins = torch.arange(H * 2, device=ids.device).view(1, H, 2, 1) * spread + copies.view(T, 1, 1, 1)
    index = (bins * n + halves).reshape(-1)
    counts = torch.zeros(H * 2 * spread * n, device=ids.device, dtype=dtype)
    counts.scatter_add_(0, index, torch.ones(index.shape, device=ids.device, dtype=dtype))
    counts = counts.view(H, 2, spread, n).sum(2)
    fractions = counts / max(T * flat.shape[-1], 1)
    return n * (fractions * probs).sum(-1).mean()


class CDMoE(nn.Module):
    """Shared SwiGLU + product-key single-neuron experts.

    Args:
        hidden_size: model width ``d``.
        intermediate_size: inner width of the shared SwiGLU (the dense part every token uses).
        num_experts: ``N`` private experts; must be a perfect square (``√N`` sub-keys per half).
        num_heads: retrieval heads ``H`` (each picks its own ``top_k`` experts from the one shared pool).
        top_k: experts per head, ``1 <= top_k <= √N``; default ``min(8, √N)``. A token activates ``H·top_k``.
        retrieval_dim: query width ``d_r`` per head (even; each half is ``d_r/2``). Default 64, as in the
            authors' Doge configs.
        activation: ``"silu"``, ``"gelu"`` or ``"relu"`` for the shared SwiGLU and the private experts.
        balance_loss_weight: weight of :func:`product_key_balance_loss`; 0 disables it (``aux_loss`` is None).
            Computed in training mode only (``aux_loss`` is None after an eval-mode call).
        bias: biases in the shared SwiGLU's linears (as ``GatedMLP``'s ``bias``).
        backend: backend of :func:`~wonderful_matrices.ops.expert_mixture`: ``"auto"`` (on CUDA dense matrix
            products for few experts, ``N <= DENSE_FACTOR · H·top_k``, else Triton kernels; PyTorch on the CPU),
            ``"torch"``, ``"dense"`` or ``"triton"``. The product-key top-k follows it: ``"torch"`` routes in
            PyTorch, the others with the top-k op's ``"auto"`` (its fused kernel on CUDA where it applies,
            ``top_k <= 32``). For at most ``MAX_DECODE_TOKENS`` tokens without autograd (a decoding step),
            ``"triton"`` runs the whole layer as three fused launches
            (:func:`~wonderful_matrices.ops.cdmoe.decode_step`), and so does ``"auto"`` on CUDA;
            ``"torch"`` and ``"dense"`` never do.

    Forward: ``hidden_states (..., d) -> (..., d)``; sets ``self.aux_loss`` (weighted scalar, or None).
    """

    single_cast_input = True  # under autocast the input is cast once for every reader (see CheemsBlock)

    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int, num_heads: int = 1,
                 top_k: int | None = None, retrieval_dim: int = 64, activation: str = "silu",
                 balance_loss_weight: float = 0.0, bias: bool = False, backend: str = "auto"):
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("intermediate_size", intermediate_size),
                            ("num_experts", num_experts), ("num_heads", num_heads)):
            require(is_int(value) and value >= 1, name, value, "an integer >= 1")
        n = math.isqrt(num_experts)
        require(n * n == num_experts, "num_experts", num_experts,
                f"a perfect square (√N sub-keys per half), e.g. {n * n} or {(n + 1) ** 2}")
        top_k = min(8, n) if top_k is None else top_k
        require(is_int(top_k) and 1 <= top_k <= n, "top_k", top_k, f"an integer in [1, √N = {n}]")
        require(is_int(retrieval_dim) and retrieval_dim >= 2 and retrieval_dim % 2 == 0,
                "retrieval_dim", retrieval_dim, "an even integer >= 2")
        require(activation in ACTIVATIONS, "activation", activation, f"one of {sorted(ACTIVATIONS)}")
        require(is_finite_number(balance_loss_weight) and balance_loss_weight >= 0, "balance_loss_weight",
                balance_loss_weight, "a finite number >= 0")
        require(backend in MIXTURE_LAYER_BACKENDS, "backend", backend, f"one of {MIXTURE_LAYER_BACKENDS}")
        self.backend = backend
        self.hidden_size, self.intermediate_size = hidden_size, intermediate_size
        self.num_experts, self.num_keys, self.num_heads, self.top_k = num_experts, n, num_heads, top_k
        self.retrieval_dim, self.activation = retrieval_dim, activation
        self.balance_loss_weight = float(balance_loss_weight)

        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.queries = nn.Linear(hidden_size, num_heads * retrieval_dim, bias=False)
        self.keys = nn.Parameter(torch.empty(num_heads, 2, n, retrieval_dim // 2))
        self.down_embed = nn.Embedding(num_experts, hidden_size)
        self.up_embed = nn.Embedding(num_experts, hidden_size)
        self.aux_loss: torch.Tensor | None = None
        self.decode_workspace: dict = {}  # the fused decoding step's scratch tensors, reused from step to step
        self.reset_private_parameters()

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["decode_workspace"] = {}  # scratch only: copies and pickles start without it
        return state

    def reset_private_parameters(self) -> None:
        """Initialise the retrieval and expert tables: sub-keys ~ N(0, 1/(d_r/2)), expert rows ~ N(0, 1/d)."""
        nn.init.normal_(self.keys, std=(self.retrieval_dim // 2) ** -0.5)
        nn.init.normal_(self.down_embed.weight, std=self.hidden_size ** -0.5)
        nn.init.normal_(self.up_embed.weight, std=self.hidden_size ** -0.5)

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """The shared SwiGLU: ``down_proj(act(gate_proj x) * up_proj x)``; x (..., d) -> (..., d) (in training on
        CUDA the product is not kept for the backward: :func:`~wonderful_matrices.ops.gated_linear`)."""
        down = self.down_proj
        if torch.is_grad_enabled():
            return gated_linear(self.gate_proj(x), self.up_proj(x), down.weight, down.bias, self.activation,
                                "torch" if self.backend == "torch" else "auto")
        return down(ACTIVATIONS[self.activation](self.gate_proj(x)) * self.up_proj(x))

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """Retrieval queries: x (..., d) -> (..., H, 2, d_r/2)."""
        return self.queries(x).unflatten(-1, (self.num_heads, 2, self.retrieval_dim // 2))

    def route(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token routing: query (..., H, 2, d_r/2) -> gates (..., H, k) float32 (softmax over the head's top-k
        scores) and ids (..., H, k) int64."""
        routing = "torch" if self.backend == "torch" else "auto"
        scores, ids = product_key_topk(query, self.keys.to(query.dtype), self.top_k, backend=routing)
        return scores.softmax(-1), ids

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states (..., d) -> (..., d) = shared + private experts; sets ``self.aux_loss``."""
        if not (hidden_states.dim() >= 1 and hidden_states.shape[-1] == self.hidden_size):
            reject("hidden_states.shape", tuple(hidden_states.shape), f"(..., {self.hidden_size})")
        decoding = self._fused_decode_tensors(hidden_states)
        if decoding is not None:
            if self.aux_loss is not None:  # (nn.Module's attribute assignment costs microseconds a step)
                self.aux_loss = None
            return launch_decode_step(*decoding, workspace=self.decode_workspace).view(hidden_states.shape)
        compute = autocast_dtype(hidden_states.device)
        if hidden_states.dtype == torch.float32 and compute is not None:
            # one cast for the three linears (autocast would cast the input in each) and the mixture, which runs
            # in the autocast dtype like the linears
            hidden_states = hidden_states.to(compute)
        shape = hidden_states.shape
        # tokens as rows (T, d): a linear on a 2-D input is two ATen ops, on (b, l, d) four (a decoding step's host
        # work is mostly such small ops)
        flat = hidden_states.reshape(-1, self.hidden_size)
        query = self.query(flat)
        gates, ids = self.route(query)
        dtype = flat.dtype  # the tables follow the input (a no-op when the dtypes agree)
        with trusted_values():  # ids come from product_key_topk: in range, no device sync to check them
            private = expert_mixture(flat, ids, gates, self.down_embed.weight.to(dtype),
                                     self.up_embed.weight.to(dtype), activation=self.activation, backend=self.backend)
        self.aux_loss = None
        # a training loss: not computed in eval or decoding, nor over no tokens (a mean over none)
        if self.balance_loss_weight > 0 and self.training and flat.shape[0]:
            probs = subkey_marginals(query, self.keys.to(query.dtype))  # O(√N) per token, nothing per token kept
            self.aux_loss = self.balance_loss_weight * balance_loss_of_marginals(probs, ids)
        return (self.shared(flat) + private).view(shape)

    def _fused_decode_tensors(self, hidden_states: torch.Tensor) -> tuple | None:
        """The arguments of :func:`~wonderful_matrices.ops.cdmoe.decode_step` (but ``workspace``) when this call
        runs it: ``(x (T, d), gate_w, up_w, down_w, query_w, keys, down_table, up_table, top_k, activation, gate_b,
        up_b, down_b)`` (biases None without them); None when it does not: more than a few tokens, autograd, a
        balance loss to compute, autocast, a backend that does not allow it, or arguments the op would refuse (a
        parameter not in the input's dtype: :func:`~wonderful_matrices.ops.cdmoe.decode_args_valid`, the op's own
        one-expression check, so the step checks them once). Each submodule and parameter is looked up once (a
        decoding step's host time is mostly such Python)."""
        if (torch.is_grad_enabled() or (self.training and self.balance_loss_weight > 0)
                or torch.is_autocast_enabled(hidden_states.device.type)
                or not decode_step_usable(self.backend, hidden_states.device, hidden_states.dtype,
                                          hidden_states.numel() // self.hidden_size, self.top_k)):
            return None
        gate, up, down = self.gate_proj, self.up_proj, self.down_proj
        args = (hidden_states.reshape(-1, self.hidden_size), gate.weight, up.weight, down.weight,
                self.queries.weight, self.keys, self.down_embed.weight, self.up_embed.weight, self.top_k,
                self.activation, gate.bias, up.bias, down.bias)
        return args if decode_args_valid(*args) else None

    # ---- initialisation from a dense MLP ------------------------------------------------------------

    def load_mlp(self, mlp: GatedMLP | Mapping[str, torch.Tensor]) -> None:
        """Copy a dense SwiGLU (a ``GatedMLP``/``LlamaMLP`` module or its state dict, keys ``gate_proj.weight``,
        ...) into the shared part; the private experts are left as they are."""
        state = mlp.state_dict() if isinstance(mlp, nn.Module) else mlp
        own = {k: v for k, v in self.state_dict().items() if k.split(".")[0] in SHARED_MLP_NAMES}
        require(set(state) == set(own), "mlp keys", sorted(state), f"exactly {sorted(own)}")
        for key, value in state.items():
            require(tuple(value.shape) == tuple(own[key].shape), f"mlp[{key!r}].shape", tuple(value.shape),
                    f"{tuple(own[key].shape)}")
        self.load_state_dict(state, strict=False)

    @classmethod
    def from_mlp(cls, mlp: GatedMLP, num_experts: int, **kwargs) -> "CDMoE":
        """A CDMoE whose shared part is a copy of ``mlp`` (sizes and activation taken from it); ``kwargs`` are
        the other constructor arguments (``num_heads``, ``top_k``, ...)."""
        activation = next((name for name, fn in ACTIVATIONS.items() if fn is mlp.act), None)
        require(activation is not None, "mlp.act", mlp.act, f"one of {sorted(ACTIVATIONS)}")
        layer = cls(mlp.gate_proj.in_features, mlp.gate_proj.out_features, num_experts, activation=activation,
                    bias=mlp.gate_proj.bias is not None, **kwargs)
        layer.to(device=mlp.gate_proj.weight.device, dtype=mlp.gate_proj.weight.dtype)
        layer.load_mlp(mlp)
        return layer
