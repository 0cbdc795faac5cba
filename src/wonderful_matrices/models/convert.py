"""Load HF transformers checkpoints into the matching Cheems configuration (same logits, float32 <= 1e-4).

* ``from_hf_llama(LlamaForCausalLM)``: ``mixer_types`` all ``"attn"``, ``ffn_types`` all ``"mlp"``.
* ``from_hf_mamba2(Mamba2ForCausalLM)``: all ``"mamba2"``, ``ffn_types`` all ``"none"`` (gated norm grouped as
  the HF model's: over the whole inner width in transformers 5.17, ``mamba2_norm_groups=1``; per group in 5.25).
* ``from_hf_doge(DogeForCausalLM)`` (dense, ``is_moe=False``): all ``"dma"`` with ``dma_mask_form="doge"``,
  ``dma_qk_norm=True``, ``residual_scale=True``, ``ffn_types`` all ``"mlp"``.

Each function builds the config from the HF config, rejects what Cheems cannot express with a ``ValueError``
naming the field, renames the weights and loads them with ``load_state_dict(strict=True)``. Padding differs on
purpose for Mamba2 (HF lets padded steps decay the state; ours leaves it unchanged), so logits agree on
unpadded inputs. Doge's window differs where keys tie at its cut: ours keeps the later key (docs/design.md), HF's
``torch.topk`` whichever its implementation returns (the earlier one on the CPU) — so logits agree where the mask
values at the cut are distinct, and differ beyond ``keep_window_size`` tokens for repeated tokens in the first layer
(equal values, no rotary) or a layer whose ``A`` is 0 (every key ties: HF's initialisation, hence the warning).

Single layers: :func:`load_hf_doge_attention_state` (``DogeAttention`` -> ``DynamicMaskAttention``),
:func:`doge_cdmoe_state_dict` / :func:`cdmoe_from_doge` (``DogeCDMoE`` -> ``CDMoE``, per token) and
:func:`mamba2_mixer_kwargs_from_hf_config` (``Mamba2Mixer``: HF's weights load by name).
"""
from __future__ import annotations

import warnings
from typing import Mapping

import torch

from ..errors import require
from ..layers.cdmoe import SHARED_MLP_NAMES, CDMoE
from .configuration import CheemsConfig
from .modeling import CheemsForCausalLM


def _rope_theta(hf_config) -> float:
    """The default-RoPE base of an HF config (5.x ``rope_parameters`` or the older ``rope_theta``)."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    require(rope_type == "default", "rope_parameters.rope_type", rope_type, "only 'default' RoPE converts")
    theta = params.get("rope_theta", getattr(hf_config, "rope_theta", None))
    require(theta is not None, "rope_theta", theta, "the HF config must give a RoPE base")
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
    require(c.hidden_act == "silu", "hidden_act", c.hidden_act, "only 'silu' (SwiGLU)")
    require(not getattr(c, "mlp_bias", False), "mlp_bias", c.mlp_bias, "only False")
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
    # checks the activation and the widths; the gated norm grouped as HF's (see the function)
    mixer = mamba2_mixer_kwargs_from_hf_config(c, getattr(model.backbone.layers[0].mixer.norm, "group_size", None))
    limit = tuple(float(v) for v in c.time_step_limit)
    require(limit == (0.0, float("inf")), "time_step_limit", c.time_step_limit, "only (0.0, inf)")
    n = c.num_hidden_layers
    config = CheemsConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=n,
        mixer_types=["mamba2"] * n, ffn_types=["none"] * n, mamba2_expand=int(c.expand),
        mamba2_head_dim=c.head_dim, mamba2_state_size=c.state_size, mamba2_num_groups=c.n_groups,
        mamba2_conv_kernel=c.conv_kernel, mamba2_chunk_size=c.chunk_size, mamba2_conv_bias=c.use_conv_bias,
        mamba2_bias=c.use_bias, mamba2_norm_groups=mixer["norm_groups"], rms_norm_eps=c.layer_norm_epsilon,
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
    require(not c.is_moe, "is_moe", c.is_moe, "only False (dense Doge)")
    require(c.hidden_act == "silu", "hidden_act", c.hidden_act, "only 'silu' (SwiGLU)")
    require(not c.mlp_bias, "mlp_bias", c.mlp_bias, "only False")
    require(c.sliding_window is None, "sliding_window", c.sliding_window, "only None (DMA's keep_window is used)")
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
    tied = [prefix for prefix, sub in attention.items() if "A" in sub and not sub["A"].any()]
    if tied and c.keep_window_size is not None and c.keep_window_size < c.max_position_embeddings:
        warnings.warn(f"from_hf_doge: {len(tied)} layer(s) have A = 0 (e.g. {tied[0]}), so every key's mask value "
                      "ties: the converted model keeps each query's latest keys within keep_window_size="
                      f"{c.keep_window_size}, HF's torch.topk whichever it returns; their logits differ beyond the "
                      "window (see wonderful_matrices.models.convert)", stacklevel=2)
    return _load(config, state, model)


# ---- single layers: the weight mappings the model conversions use, also usable on their own -------------

def load_hf_doge_attention_state(hf_state_dict: dict) -> dict:
    """Map one HF ``DogeAttention`` state dict (keys relative to the attention module) to the state dict of a
    :class:`~wonderful_matrices.layers.DynamicMaskAttention`.

    Build the layer with ``mask_form="doge"``, ``qk_norm=True``, ``attention_bias=config.attention_bias``,
    ``keep_window=config.keep_window_size``, ``rms_norm_eps=config.rms_norm_eps``, ``rope_theta`` from
    ``config.rope_parameters``. Names are identical (``q_proj, k_proj, v_proj, o_proj, dt_proj, A, q_norm,
    k_norm``); ``dt_proj.bias`` is added as zeros when the checkpoint has none (``attention_bias=False``).
    """
    out = dict(hf_state_dict)
    if "dt_proj.bias" not in out:
        weight = out["dt_proj.weight"]
        out["dt_proj.bias"] = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
    return out


def doge_cdmoe_state_dict(doge: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an HF ``DogeCDMoE`` state dict to a :class:`CDMoE` built with ``num_heads=1`` and
    ``retrieval_dim = 2·hidden_size`` (see :func:`cdmoe_from_doge`).

    Doge routes with ``router_gate (2√N, d)``: half ``c`` of token ``x`` scores sub-key ``a`` as
    ``router_gate[c·√N + a]·x``. That is CDMoE's score with ``queries = [I; I]`` (each half-query is
    ``x`` itself) and ``keys[0, c] = router_gate[c·√N:(c+1)·√N]``. Expert ids (``a·√N + b``), gates
    (softmax of the top-k scores; Doge's ``norm_topk_prob`` renormalises an already normalised softmax) and
    the expert tables ``down_embed``/``up_embed`` then agree. Doge's forward reshapes the router logits
    across tokens (docs/design.md, defect 1); CDMoE routes every token on its own, so the two agree exactly one
    token at a time and CDMoE is the corrected model for batches.
    """
    router = doge["router_gate.weight"]
    two_n, d = router.shape
    n = two_n // 2
    require(two_n % 2 == 0 and n >= 1, "router_gate.weight.shape", tuple(router.shape), "(2·√N, d)")
    require(tuple(doge["down_embed.weight"].shape) == (n * n, d), "down_embed.weight.shape",
            tuple(doge["down_embed.weight"].shape), f"({n * n}, {d}): N must be the square of √N = {n}")
    out = {k: v for k, v in doge.items() if k.split(".")[0] in SHARED_MLP_NAMES + ("down_embed", "up_embed")}
    eye = torch.eye(d, dtype=router.dtype, device=router.device)
    out["queries.weight"] = torch.cat([eye, eye], dim=0)
    out["keys"] = router.reshape(1, 2, n, d).clone()
    return out


def cdmoe_from_doge(doge: Mapping[str, torch.Tensor], top_k: int, activation: str = "silu") -> CDMoE:
    """A CDMoE equal (per token) to an HF ``DogeCDMoE`` with the given state dict, ``num_experts_per_tok``
    (``top_k``) and ``hidden_act`` (``activation``)."""
    state = doge_cdmoe_state_dict(doge)
    N, d = state["down_embed.weight"].shape
    inner = state["gate_proj.weight"].shape[0]
    layer = CDMoE(d, inner, N, num_heads=1, top_k=top_k, retrieval_dim=2 * d, activation=activation,
                  bias="gate_proj.bias" in state)
    layer.to(device=state["keys"].device, dtype=state["keys"].dtype)
    layer.load_state_dict(state, strict=True)
    return layer


def mamba2_mixer_kwargs_from_hf_config(config, norm_group_size: int | None = None) -> dict:
    """Constructor kwargs of :class:`~wonderful_matrices.layers.Mamba2Mixer` equal to HF ``Mamba2Mixer(config)``
    (its PyTorch path).

    ``config`` is an HF ``Mamba2Config`` (read by attribute; transformers is not imported here);
    ``norm_group_size`` is the HF mixer's ``norm.group_size``: newer transformers (5.25) normalise the gated norm
    per group of that many channels, as mamba_ssm; None (transformers 5.17, whose norm has no ``group_size``)
    normalises over the whole inner width. Raises ``ValueError`` if ``hidden_size · expand != num_heads ·
    head_dim`` or the activation is not SiLU.
    """
    inner = int(config.expand * config.hidden_size)
    require(inner == config.num_heads * config.head_dim, "config.expand", config.expand,
            f"hidden_size*expand ({inner}) must equal num_heads*head_dim ({config.num_heads * config.head_dim})")
    require(config.hidden_act in ("silu", "swish"), "config.hidden_act", config.hidden_act,
            "Mamba2Mixer uses 'silu'")
    return dict(hidden_size=config.hidden_size, num_heads=config.num_heads, head_dim=config.head_dim,
                state_size=config.state_size, num_groups=config.n_groups, chunk_size=config.chunk_size,
                conv_kernel=config.conv_kernel, conv_bias=config.use_conv_bias, bias=config.use_bias,
                norm_eps=config.layer_norm_epsilon,
                norm_groups=1 if norm_group_size is None else inner // norm_group_size, dt_min=config.time_step_min,
                dt_max=config.time_step_max, dt_init_floor=config.time_step_floor,
                dt_limit=tuple(config.time_step_limit))
