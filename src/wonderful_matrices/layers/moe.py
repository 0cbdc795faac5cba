"""Routed top-k mixture of SwiGLU experts with a shared SwiGLU expert: the MoE baseline CDMoE is compared with.

Both implementations use the same parameters and give the same result:

* ``"loop"`` — a Python loop over the experts, each gathering its tokens (the paper's "SEIMoE" baseline; one
  host synchronisation per expert).
* ``"grouped"`` — the ``T·k`` (token, expert) pairs sorted by expert so each expert's tokens are one contiguous
  slice; on CUDA with bf16 weights (widths multiples of 8) the slices run as grouped GEMMs
  (``torch.nn.functional.grouped_mm`` / ``torch._grouped_mm``, at most 512 experts per call), elsewhere as a
  loop over the non-empty contiguous slices.

Parameters: ``router`` ``Linear(d, E)``; ``gate_up_proj (E, 2I, d)`` (rows ``[:I]`` gate, ``[I:]`` up) and
``down_proj (E, d, I)`` — each expert ``e`` is ``down_proj[e] @ (act(gate) * up)``; ``shared_expert`` a
:class:`GatedMLP` (None without a shared expert).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import is_finite_number, is_int
from ..ops.common import require
from .mlp import ACTIVATIONS, GatedMLP

IMPLEMENTATIONS = ("grouped", "loop")
_GROUPS_PER_CALL = 512  # grouped GEMM calls stay below 1024 groups
# Without autograd, (token, slot) rows whose gathered expert weights (rows · 3·I·d elements) fit this budget run as
# batched matrix-vector products over those weights: a decoding step reads exactly its experts, with no host read of
# the routing (so it records in a CUDA graph) and no sort.
GATHERED_BUDGET = 1 << 25


def _grouped_mm_function():
    """``F.grouped_mm`` (torch >= 2.10) or ``torch._grouped_mm``; None when neither exists."""
    return getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def grouped_gemm_usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the CUDA grouped GEMM can run ``x (M, K) @ weight[e].T`` for ``weight (E, O, K)``: a CUDA
    device with compute capability >= 9.0 (Hopper, where every torch with the op has it), bf16 tensors and
    ``K``, ``O`` multiples of 8 (16-byte rows)."""
    return (x.is_cuda and _grouped_mm_function() is not None and x.dtype == weight.dtype == torch.bfloat16
            and torch.cuda.get_device_capability(x.device)[0] >= 9
            and weight.shape[-1] % 8 == 0 and weight.shape[-2] % 8 == 0)


def expert_counts(ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """ids (...) int64 in ``[0, num_experts)`` -> (num_experts,) int64: how often each expert is selected. A scatter
    of ones rather than ``bincount``, whose output length depends on the values (a graph break under
    ``torch.compile``)."""
    flat = ids.reshape(-1)
    return torch.zeros(num_experts, dtype=torch.long, device=ids.device).scatter_add_(0, flat, torch.ones_like(flat))


def moe_balance_loss(probs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Switch-Transformer balance loss ``E · Σ_e f_e · P_e`` aligned by expert id.

    ``probs (T, E)`` router softmax over all experts; ``ids (T, k)`` selected experts. ``P_e`` is the mean
    probability of expert ``e`` and ``f_e`` the fraction of the ``T·k`` selections that are ``e``; 1 when both
    are uniform. Returns a scalar of the dtype of ``probs``.
    """
    E = probs.shape[-1]
    counts = expert_counts(ids, E).to(probs.dtype)
    fractions = counts / max(ids.numel(), 1)
    return E * (fractions * probs.mean(0)).sum()


class MoE(nn.Module):
    """Top-k routed SwiGLU experts plus an optional shared SwiGLU expert.

    Args:
        hidden_size: model width ``d``.
        intermediate_size: inner width ``I`` of each routed expert.
        num_experts: ``E`` routed experts.
        top_k: experts per token, ``1 <= top_k <= E``. Gates are the softmax of the router logits restricted
            to the top-k (the top-k probabilities renormalised).
        shared_intermediate_size: inner width of the shared expert; None or 0 for none.
        implementation: ``"grouped"`` (sorted dispatch, grouped GEMM on CUDA; without autograd, up to
            ``GATHERED_BUDGET``, batched products over each row's gathered expert weights) or ``"loop"``
            (per-expert loop).
        activation: ``"silu"`` (SwiGLU), ``"gelu"`` or ``"relu"``.
        balance_loss_weight: weight of :func:`moe_balance_loss`; 0 disables it (``aux_loss`` stays None).
            Computed in training mode only.

    Forward: ``hidden_states (..., d) -> (..., d)``; per token (routing never looks at other tokens).
    """

    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int, top_k: int,
                 shared_intermediate_size: int | None = None, implementation: str = "grouped",
                 activation: str = "silu", balance_loss_weight: float = 0.0):
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("intermediate_size", intermediate_size),
                            ("num_experts", num_experts)):
            require(is_int(value) and value >= 1, name, value, "an integer >= 1")
        require(is_int(top_k) and 1 <= top_k <= num_experts, "top_k", top_k,
                f"an integer in [1, num_experts = {num_experts}]")
        require(shared_intermediate_size is None or (is_int(shared_intermediate_size)
                                                     and shared_intermediate_size >= 0),
                "shared_intermediate_size", shared_intermediate_size, "None or an integer >= 0")
        require(implementation in IMPLEMENTATIONS, "implementation", implementation, f"one of {IMPLEMENTATIONS}")
        require(activation in ACTIVATIONS, "activation", activation, f"one of {sorted(ACTIVATIONS)}")
        require(is_finite_number(balance_loss_weight) and balance_loss_weight >= 0, "balance_loss_weight",
                balance_loss_weight, "a finite number >= 0")
        self.hidden_size, self.intermediate_size = hidden_size, intermediate_size
        self.num_experts, self.top_k, self.implementation = num_experts, top_k, implementation
        self.activation, self.balance_loss_weight = activation, float(balance_loss_weight)
        self.router = nn.Linear(hidden_size, num_experts, bias=False)
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))
        self.reset_expert_parameters()
        self.shared_expert = (GatedMLP(hidden_size, shared_intermediate_size, activation)
                              if shared_intermediate_size else None)
        self.aux_loss: torch.Tensor | None = None

    def reset_expert_parameters(self) -> None:
        """Initialise the expert tables: ``gate_up_proj ~ N(0, 1/d)``, ``down_proj ~ N(0, 1/I)``."""
        nn.init.normal_(self.gate_up_proj, std=self.hidden_size ** -0.5)
        nn.init.normal_(self.down_proj, std=self.intermediate_size ** -0.5)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (T, d) -> router probabilities (T, E), gates (T, k) (float32 for half-precision x, else its dtype),
        ids (T, k) int64."""
        logits = self.router(x)
        probs = (logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits).softmax(-1)
        top, ids = probs.topk(self.top_k, dim=-1)
        return probs, top / top.sum(-1, keepdim=True), ids

    def _expert(self, x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
        """One routed expert on its tokens: x (m, d), gate_up (2I, d), down (d, I) -> (m, d)."""
        gate, up = (x @ gate_up.t()).chunk(2, dim=-1)
        return (ACTIVATIONS[self.activation](gate) * up) @ down.t()

    # Per-expert weights come from ``unbind``/``split`` (one backward node that stacks the gradients) rather than
    # from indexing, whose backward would write a zero-filled copy of the whole stacked table per expert.

    def _loop(self, x: torch.Tensor, gates: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for e, (gate_up, down) in enumerate(zip(self.gate_up_proj.unbind(0), self.down_proj.unbind(0))):
            token, slot = torch.where(ids == e)
            if token.numel() == 0:
                continue
            y = self._expert(x[token], gate_up, down) * gates[token, slot, None].to(x.dtype)
            out.index_add_(0, token, y)
        return out

    def _gathered(self, x: torch.Tensor, gates: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The routed experts of each (token, slot) as batched products with its gathered expert weights."""
        T, k = ids.shape
        flat = ids.reshape(-1)
        rows = x.repeat_interleave(k, dim=0)[:, :, None]  # (T·k, d, 1)
        gate, up = torch.bmm(self.gate_up_proj[flat], rows).squeeze(-1).chunk(2, dim=-1)
        hidden = (ACTIVATIONS[self.activation](gate) * up)[:, :, None]  # (T·k, I, 1)
        ys = torch.bmm(self.down_proj[flat], hidden).view(T, k, -1)
        return (ys * gates[..., None].to(x.dtype)).sum(1)

    def _gathers(self, x: torch.Tensor) -> bool:
        """Whether :meth:`_gathered` runs: no autograd and the gathered weights fit ``GATHERED_BUDGET``."""
        rows = x.shape[0] * self.top_k
        return not torch.is_grad_enabled() and rows * 3 * self.intermediate_size * self.hidden_size <= GATHERED_BUDGET

    def _grouped(self, x: torch.Tensor, gates: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        order = flat.argsort(stable=True)
        token = torch.div(order, self.top_k, rounding_mode="floor")
        xs = x[token]  # (T·k, d) rows grouped by expert
        counts = expert_counts(flat, self.num_experts)
        if grouped_gemm_usable(x, self.gate_up_proj):
            ys = self._grouped_gemm(xs, counts)
        else:
            ys = self._segment_loop(xs, counts)
        ys = ys * gates.reshape(-1)[order, None].to(x.dtype)
        return torch.zeros_like(x).index_add_(0, token, ys)

    # Eager under torch.compile: the segment sizes are read on the host (a graph break either way; the grouped GEMM
    # needs none), and traced they would be guarded on, recompiling for every new routing.
    @torch.compiler.disable
    def _segment_loop(self, xs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        sizes = counts.tolist()
        pieces = [self._expert(rows, gate_up, down)
                  for rows, gate_up, down, size in zip(xs.split(sizes), self.gate_up_proj.unbind(0),
                                                       self.down_proj.unbind(0), sizes) if size]
        return torch.cat(pieces) if pieces else xs.new_zeros(xs.shape)

    def _grouped_gemm(self, xs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        mm = _grouped_mm_function()
        act = ACTIVATIONS[self.activation]
        group_counts = counts.split(_GROUPS_PER_CALL)
        if len(group_counts) == 1:  # all T·k rows in one call: no host read of the counts
            rows = [xs.shape[0]]
        else:  # one host read splits the rows between the calls
            rows = [int(n) for n in torch.stack([c.sum() for c in group_counts]).tolist()]
        pieces = []
        for x_rows, gate_up, down, group, n in zip(xs.split(rows), self.gate_up_proj.split(_GROUPS_PER_CALL),
                                                   self.down_proj.split(_GROUPS_PER_CALL), group_counts, rows):
            if n == 0:
                continue
            offs = group.cumsum(0).to(torch.int32)
            gate, up = mm(x_rows, gate_up.transpose(-2, -1), offs=offs).chunk(2, dim=-1)
            pieces.append(mm((act(gate) * up).contiguous(), down.transpose(-2, -1), offs=offs))
        return torch.cat(pieces) if pieces else xs.new_zeros(xs.shape)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states (..., d) -> (..., d); sets ``self.aux_loss``."""
        require(hidden_states.dim() >= 1 and hidden_states.shape[-1] == self.hidden_size,
                "hidden_states.shape", tuple(hidden_states.shape), f"(..., {self.hidden_size})")
        x = hidden_states.reshape(-1, self.hidden_size)
        probs, gates, ids = self.route(x)
        routed = self._loop if self.implementation == "loop" else self._gathered if self._gathers(x) else self._grouped
        out = routed(x, gates, ids)
        if self.shared_expert is not None:
            out = out + self.shared_expert(x)
        # a training loss: not computed in eval or decoding, nor over no tokens (a mean over none)
        self.aux_loss = self.balance_loss_weight * moe_balance_loss(probs, ids) \
            if self.balance_loss_weight > 0 and self.training and x.shape[0] else None
        return out.reshape(hidden_states.shape)
