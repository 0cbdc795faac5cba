"""Named configurations: ``{cheems, doge, llama, mamba2, jamba}-{tiny, small, base}``.

* ``cheems``: 7 SSD (with RoPE, no conv) : 1 DMA, CDMoE everywhere (the paper's model; at a depth below 8 the
  last layer of the group is DMA).
* ``doge``: all DMA + CDMoE.
* ``llama``: causal softmax attention (GQA, RoPE) + SwiGLU MLP.
* ``mamba2``: Mamba2 blocks, no FFN.
* ``jamba``: 1 attention : 7 Mamba2 (attention last in each group of up to 8), routed MoE with a shared
  expert on every other layer (odd layers), SwiGLU MLP on the others.

Sizes: ``tiny`` (width 64, 4 layers, vocab 512: tests), ``small`` (width 256, 8 layers, vocab 4096: CPU
training in minutes), ``base`` (width 768, vocab 32768, ~100-150M parameters: GPU). Presets of one size are
roughly parameter-matched; docs/architecture.md has the table (``parameter_count``).

``get(name, hybrid_ratio=None, **overrides) -> CheemsConfig``; ``names() -> list[str]``. ``hybrid_ratio``
changes the hybrids' layout (cheems, jamba): ``r`` recurrent layers then one attention layer per group instead of
7 : 1 (e.g. 3 for the 3 : 1 that arXiv 2507.06457 recommends for hybrid linear-attention models).
"""
from __future__ import annotations

import difflib

from ..errors import is_int
from .configuration import CheemsConfig, config_field_names, default_layer_types

FAMILIES = ("cheems", "doge", "llama", "mamba2", "jamba")
SIZES = ("tiny", "small", "base")

# Shared by every family at a size: width, vocab, attention/SSD/Mamba2 shapes, DMA window.
_COMMON = {
    "tiny": dict(vocab_size=512, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 keep_window=8, ssd_num_heads=4, ssd_head_dim=16, ssd_state_size=16, ssd_chunk_size=16,
                 mamba2_expand=2, mamba2_head_dim=16, mamba2_state_size=16, mamba2_chunk_size=16),
    "small": dict(vocab_size=4096, hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                  keep_window=128, ssd_num_heads=4, ssd_head_dim=64, ssd_state_size=64, ssd_chunk_size=64,
                  mamba2_expand=2, mamba2_head_dim=64, mamba2_state_size=64, mamba2_chunk_size=64),
    "base": dict(vocab_size=32768, hidden_size=768, num_attention_heads=12, num_key_value_heads=4, head_dim=64,
                 keep_window=2048, ssd_num_heads=6, ssd_head_dim=128, ssd_state_size=128, ssd_chunk_size=256,
                 mamba2_expand=2, mamba2_head_dim=64, mamba2_state_size=128, mamba2_chunk_size=256),
}

# Per family and size: depth and FFN sizes, chosen so that one size class is roughly parameter-matched.
_CDMOE_SIZES = {  # cheems and doge differ only in their sequence mixers, so they share sizes
    "tiny": dict(num_hidden_layers=4, intermediate_size=128, cdmoe_num_experts=64, cdmoe_num_heads=2,
                 cdmoe_top_k=4, cdmoe_retrieval_dim=16),
    "small": dict(num_hidden_layers=8, intermediate_size=256, cdmoe_num_experts=784, cdmoe_num_heads=2,
                  cdmoe_top_k=4, cdmoe_retrieval_dim=64),
    "base": dict(num_hidden_layers=12, intermediate_size=1024, cdmoe_num_experts=2304, cdmoe_num_heads=4,
                 cdmoe_top_k=8, cdmoe_retrieval_dim=64),
}
_FAMILY = {
    "cheems": _CDMOE_SIZES,
    "doge": _CDMOE_SIZES,
    "jamba": {
        "tiny": dict(num_hidden_layers=4, intermediate_size=128, moe_num_experts=4, moe_top_k=2,
                     moe_intermediate_size=32, moe_shared_intermediate_size=32),
        "small": dict(num_hidden_layers=8, intermediate_size=256, moe_num_experts=8, moe_top_k=2,
                      moe_intermediate_size=64, moe_shared_intermediate_size=128),
        "base": dict(num_hidden_layers=12, intermediate_size=1536, moe_num_experts=8, moe_top_k=2,
                     moe_intermediate_size=192, moe_shared_intermediate_size=384),
    },
    "llama": {
        "tiny": dict(num_hidden_layers=4, intermediate_size=192),
        "small": dict(num_hidden_layers=8, intermediate_size=768),
        "base": dict(num_hidden_layers=12, intermediate_size=2560),
    },
    "mamba2": {
        "tiny": dict(num_hidden_layers=8),
        "small": dict(num_hidden_layers=16),
        "base": dict(num_hidden_layers=24),
    },
}


HYBRIDS = ("cheems", "jamba")  # the families with recurrent and attention layers
DEFAULT_HYBRID_RATIO = 7  # recurrent layers per attention layer in the hybrids' groups


def is_hybrid_ratio(value) -> bool:
    """Whether ``value`` can be a ``hybrid_ratio``: an int >= 1 (not a bool)."""
    return is_int(value) and value >= 1


def _layout(family: str, num_layers: int, hybrid_ratio: int = DEFAULT_HYBRID_RATIO) -> dict:
    """``mixer_types`` / ``ffn_types`` of a family at a depth; the hybrids put ``hybrid_ratio`` recurrent layers
    before each attention layer."""
    period = hybrid_ratio + 1
    if family == "cheems":
        return dict(mixer_types=default_layer_types(num_layers, period, "dma", "ssd"),
                    ffn_types=["cdmoe"] * num_layers)
    if family == "doge":
        return dict(mixer_types=["dma"] * num_layers, ffn_types=["cdmoe"] * num_layers)
    if family == "llama":
        return dict(mixer_types=["attn"] * num_layers, ffn_types=["mlp"] * num_layers)
    if family == "mamba2":
        return dict(mixer_types=["mamba2"] * num_layers, ffn_types=["none"] * num_layers)
    return dict(mixer_types=default_layer_types(num_layers, period, "attn", "mamba2"),
                ffn_types=["moe" if i % 2 == 1 else "mlp" for i in range(num_layers)])


def names() -> list[str]:
    """Every preset name, ``family-size``."""
    return [f"{f}-{s}" for f in FAMILIES if f in _FAMILY for s in SIZES]


def get(name: str, hybrid_ratio: int | None = None, **overrides) -> CheemsConfig:
    """The :class:`CheemsConfig` of preset ``name``; ``overrides`` replace any config field (another keyword
    raises ``ValueError`` naming it and the closest field). ``hybrid_ratio`` (cheems and jamba only; default 7):
    recurrent layers per attention layer, each group of ``hybrid_ratio + 1`` layers ending in its attention layer
    (as does the last layer)."""
    if name not in names():
        raise ValueError(f"name={name!r} is not allowed: one of {names()}")
    family, size = name.split("-")
    if hybrid_ratio is not None and (family not in HYBRIDS or not is_hybrid_ratio(hybrid_ratio)):
        raise ValueError(f"hybrid_ratio={hybrid_ratio!r} is not allowed: an integer >= 1, for the hybrid families "
                         f"{HYBRIDS} only (preset {name!r})")
    unknown = sorted(set(overrides) - config_field_names())
    if unknown:
        close = difflib.get_close_matches(unknown[0], config_field_names(), n=1)
        raise ValueError(f"{unknown[0]}={overrides[unknown[0]]!r} is not allowed: not a CheemsConfig field"
                         + (f" (did you mean {close[0]!r}?)" if close else ""))
    kwargs = dict(_COMMON[size])
    kwargs.update(_FAMILY[family][size])
    kwargs.update(_layout(family, kwargs["num_hidden_layers"], hybrid_ratio or DEFAULT_HYBRID_RATIO))
    if "layer_types" in overrides:  # the alias of mixer_types replaces the preset's layout too
        overrides = dict(overrides)
        overrides["mixer_types"] = overrides.pop("layer_types")
    kwargs.update(overrides)
    return CheemsConfig(**kwargs)


def parameter_count(name: str) -> int:
    """Parameters of preset ``name`` (tied embeddings counted once), built on the meta device."""
    import torch

    from .modeling import CheemsForCausalLM

    with torch.device("meta"):
        model = CheemsForCausalLM(get(name))
    return sum(p.numel() for p in model.parameters())
