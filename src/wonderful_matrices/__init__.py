"""Wonderful Matrices: SSD with RoPE, Dynamic Mask Attention and Cross Domain MoE, combined in Cheems.

Public API (see docs/architecture.md): ``wonderful_matrices.ops`` (functional ops with backends),
``wonderful_matrices.layers`` (nn.Modules), models and presets.
"""
from . import ops
from .models import CheemsConfig, CheemsForCausalLM, CheemsModel, presets

__all__ = ["ops", "CheemsConfig", "CheemsForCausalLM", "CheemsModel", "presets"]

__version__ = "0.1.0"
