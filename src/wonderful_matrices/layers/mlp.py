"""Dense gated MLP (SwiGLU), the FFN of Llama and the shared part of CDMoE."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import is_int, reject, require
from ..ops import gated_linear
from ..ops.expert_mixture import ACTIVATIONS


class GatedMLP(nn.Module):
    """``down_proj(act(gate_proj x) * up_proj x)``; parameter names match HF ``LlamaMLP``.

    Args:
        hidden_size: model width ``d``.
        intermediate_size: inner width.
        activation: ``"silu"`` (SwiGLU), ``"gelu"`` or ``"relu"``.
        bias: linear biases.
        backend: of :func:`~wonderful_matrices.ops.gated_linear` (the product and ``down_proj``): ``"auto"`` (in
            training on CUDA, the product is not kept for the backward), ``"torch"`` or ``"triton"``.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str = "silu", bias: bool = False,
                 backend: str = "auto"):
        super().__init__()
        require(activation in ACTIVATIONS, "activation", activation, f"one of {sorted(ACTIVATIONS)}")
        for name, value in (("hidden_size", hidden_size), ("intermediate_size", intermediate_size)):
            require(is_int(value) and value >= 1, name, value, "an integer >= 1")
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.act = ACTIVATIONS[activation]
        self.activation = activation
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., d) -> (..., d)."""
        if x.shape[-1:] != (self.gate_proj.in_features,):  # a tuple comparison: no cost to a decoding step
            reject("x.shape", tuple(x.shape), f"(..., {self.gate_proj.in_features})")
        down = self.down_proj
        if torch.is_grad_enabled():  # training: the product is not kept for the backward
            return gated_linear(self.gate_proj(x), self.up_proj(x), down.weight, down.bias, self.activation,
                                self.backend)
        return down(self.act(self.gate_proj(x)) * self.up_proj(x))  # no argument checks: a decoding step's host time
