"""Load HF transformers checkpoints into the matching Cheems configuration (same logits, float32 <= 1e-4).

* ``from_hf_llama(LlamaForCausalLM)``: ``mixer_types`` all ``"attn"``, ``ffn_types`` all ``"mlp"``.
* ``from_hf_mamba2(Mamba2ForCausalLM)``: all ``"mamba2"``, ``ffn_types`` all ``"none"`` (gated norm grouped as
  the HF model's: over the whole inner width in transformers 5.17, ``mamba2_norm_groups=1``; per group in 5.25).
* ``from_hf_doge(DogeForCausalLM)`` (dense, ``is_moe=False``): all ``"dma"`` with ``dma_mask_form="doge"``,
  ``dma_qk_norm=True``, ``residual_scale=True``, ``ffn_types`` all ``"mlp"``.

Each function builds the config from the HF config, rejects what Cheems cannot express with a ``ValueError``
naming the field, renames the weights and loads them with ``load_state_dict(strict=True)``. Padding differs on
purpose for Mamba2 (HF lets padded steps decay the state; ours leaves it unchanged), so logits agree on
unpadded inputs.
"""
from __future__ import annotations

import torch

from ..layers.dma import load_hf_doge_attention_state
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
        mixer_types=["attn"] * n, ffn_types=["mlp"] * n,
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


def from_hf_mamba2(model) -> CheemsForCausalLM:
    """``transformers.Mamba2ForCausalLM`` -> :class:`CheemsForCausalLM` with the same logits."""
    c = model.config
    _require(c.hidden_act in ("silu", "swish"), "hidden_act", c.hidden_act, "only 'silu'")
    inner = int(c.expand * c.hidden_size)
    _require(inner == c.num_heads * c.head_dim, "expand", c.expand,
             f"expand * hidden_size must equal num_heads * head_dim ({c.num_heads * c.head_dim})")
    limit = tuple(float(v) for v in c.time_step_limit)
    _require(limit == (0.0, float("inf")), "time_step_limit", c.time_step_limit, "only (0.0, inf)")
    n = c.num_hidden_layers
    # HF's gated norm: over the whole inner width in transformers 5.17, per group of `group_size` channels
    # (as mamba_ssm) in newer versions (5.25)
    group_size = getattr(model.backbone.layers[0].mixer.norm, "group_size", None)
    norm_groups = 1 if group_size is None else inner // group_size
    config = CheemsConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=n,
        mixer_types=["mamba2"] * n, ffn_types=["none"] * n, mamba2_expand=int(c.expand),
        mamba2_head_dim=c.head_dim, mamba2_state_size=c.state_size, mamba2_num_groups=c.n_groups,
        mamba2_conv_kernel=c.conv_kernel, mamba2_chunk_size=c.chunk_size, mamba2_conv_bias=c.use_conv_bias,
        mamba2_bias=c.use_bias, mamba2_norm_groups=norm_groups, rms_norm_eps=c.layer_norm_epsilon,
        initializer_range=c.initializer_range, tie_word_embeddings=c.tie_word_embeddings,
        pad_token_id=c.pad_token_id, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
    )
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("backbone.embeddings."):
            name = "model.embed_tokens." + name[len("backbone.embeddings."):]
        elif name.startswith("backbone.norm_f."):
            name = "model.norm." + name[len("backbone.norm_f."):]
        elif name.startswith("backbone.layers."):
            index, rest = name[len("backbone.layers."):].split(".", 1)
            rest = "mixer_norm." + rest[len("norm."):] if rest.startswith("norm.") else rest
            name = f"model.layers.{index}.{rest}"
        state[name] = tensor
    return _load(config, state, model)


def from_hf_doge(model) -> CheemsForCausalLM:
    """Dense ``transformers.DogeForCausalLM`` -> :class:`CheemsForCausalLM` with the same logits."""
    c = model.config
    _require(not c.is_moe, "is_moe", c.is_moe, "only False (dense Doge)")
    _require(c.hidden_act == "silu", "hidden_act", c.hidden_act, "only 'silu' (SwiGLU)")
    _require(not c.mlp_bias, "mlp_bias", c.mlp_bias, "only False")
    _require(c.sliding_window is None, "sliding_window", c.sliding_window, "only None (DMA's keep_window is used)")
    n = c.num_hidden_layers
    heads = c.num_attention_heads
    config = CheemsConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=n,
        mixer_types=["dma"] * n, ffn_types=["mlp"] * n, num_attention_heads=heads,
        num_key_value_heads=c.num_key_value_heads or heads,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads, rope_theta=_rope_theta(c),
        attention_bias=c.attention_bias, keep_window=c.keep_window_size, dma_mask_form="doge", dma_qk_norm=True,
        residual_scale=True, intermediate_size=c.intermediate_size, rms_norm_eps=c.rms_norm_eps,
        initializer_range=c.initializer_range, tie_word_embeddings=c.tie_word_embeddings,
        pad_token_id=c.pad_token_id, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
    )
    renames = {"input_layernorm.": "mixer_norm.", "post_attention_layernorm.": "ffn_norm.", "mlp.": "ffn."}
    residuals = {"input_residual": "mixer_residual", "post_attention_residual": "ffn_residual"}
    state, attention = {}, {}
    for name, tensor in model.state_dict().items():
        if ".self_attn." in name:
            prefix, rest = name.split(".self_attn.")
            attention.setdefault(prefix, {})[rest] = tensor
            continue
        for old, new in renames.items():
            name = name.replace(f".{old}", f".{new}")
        for old, new in residuals.items():
            if name.endswith(f".{old}"):
                name = name[: -len(old)] + new
        state[name] = tensor
    for prefix, sub in attention.items():
        for rest, tensor in load_hf_doge_attention_state(sub).items():
            state[f"{prefix}.mixer.{rest}"] = tensor
    return _load(config, state, model)
