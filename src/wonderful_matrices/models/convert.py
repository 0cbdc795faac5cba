"""Load HF transformers checkpoints into the matching Cheems configuration (same logits, float32 <= 1e-4).

``from_hf_llama(LlamaForCausalLM) -> CheemsForCausalLM`` (``layer_types`` all ``"attn"``, ``ffn_types`` all
``"mlp"``). Each function builds the config from the HF config, rejects what Cheems cannot express with a
``ValueError`` naming the field, and copies every weight (``load_state_dict(strict=True)``).
"""
from __future__ import annotations

import torch

from .configuration import CheemsConfig
from .modeling import CheemsForCausalLM


def _require(condition: bool, argument: str, value, allowed: str) -> None:
    if not condition:
        raise ValueError(f"{argument}={value!r} is not allowed: {allowed}")


def _rope_theta(hf_config) -> float:
    """The default-RoPE base of an HF config (5.x ``rope_parameters`` or the older ``rope_theta``)."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    _require(rope_type == "default", "rope_parameters.rope_type", rope_type, "only 'default' RoPE converts")
    theta = params.get("rope_theta", getattr(hf_config, "rope_theta", None))
    _require(theta is not None, "rope_theta", theta, "the HF config must give a RoPE base")
    return float(theta)


def _load(config: CheemsConfig, state_dict: dict, like: torch.nn.Module) -> CheemsForCausalLM:
    """A model of ``config`` holding ``state_dict`` (strict), in the dtype and device of ``like``."""
    param = next(like.parameters())
    model = CheemsForCausalLM(config).to(dtype=param.dtype, device=param.device)
    if config.tie_word_embeddings:
        state_dict.pop("lm_head.weight", None)
        state_dict["lm_head.weight"] = state_dict["model.embed_tokens.weight"]
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def from_hf_llama(model) -> CheemsForCausalLM:
    """``transformers.LlamaForCausalLM`` -> :class:`CheemsForCausalLM` with the same logits."""
    c = model.config
    _require(c.hidden_act == "silu", "hidden_act", c.hidden_act, "only 'silu' (SwiGLU)")
    _require(not getattr(c, "mlp_bias", False), "mlp_bias", c.mlp_bias, "only False")
    n = c.num_hidden_layers
    heads = c.num_attention_heads
    config = CheemsConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=n,
        layer_types=["attn"] * n, ffn_types=["mlp"] * n,
        num_attention_heads=heads, num_key_value_heads=c.num_key_value_heads or heads,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads, rope_theta=_rope_theta(c),
        attention_bias=c.attention_bias, intermediate_size=c.intermediate_size, rms_norm_eps=c.rms_norm_eps,
        initializer_range=c.initializer_range, tie_word_embeddings=c.tie_word_embeddings,
        pad_token_id=c.pad_token_id, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
    )
    renames = {"self_attn.": "mixer.", "mlp.": "ffn.", "input_layernorm.": "mixer_norm.",
               "post_attention_layernorm.": "ffn_norm."}
    state = {}
    for name, tensor in model.state_dict().items():
        for old, new in renames.items():
            name = name.replace(f".{old}", f".{new}")
        state[name] = tensor
    return _load(config, state, model)
