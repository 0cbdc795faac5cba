"""Cheems and every baseline as one HF model: embeddings -> blocks -> final RMSNorm -> tied LM head.

A block is ``h = h + mixer(mixer_norm(h)); h = h + ffn(ffn_norm(h))`` with the mixer and the FFN chosen per
layer by ``config.mixer_types`` / ``config.ffn_types`` (``"none"`` drops the FFN half). Mixers follow the layer
contract (docs/architecture.md); the model owns positions, padding and the :class:`CheemsCache`.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.generation.configuration_utils import GenerationMode
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from ..errors import is_int, require
from ..layers import Attention, CDMoE, DynamicMaskAttention, GatedMLP, Mamba2Mixer, MoE, RMSNorm, SSDMixer
from ..layers.rotary import RotaryTables
from ..layers.ssd import GatedRMSNorm
from ..ops import linear_cross_entropy
from ..ops.common import autocast_dtype, trusted_values, value_checks_enabled
from .cache import CheemsCache, uses_static_attention
from .configuration import CheemsConfig
from .graph_decode import GraphedDecoder

# The name transformers gives the cache (the keyword `generate` passes to forward, the field of model outputs): it
# renamed `past_key_values` to `cache` after 5.17. The forward methods accept both names.
CACHE_NAME = ("cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
                      else "past_key_values")


# The CheemsForCausalLM.generate running in this thread: .calls (forward calls so far), .prompt (the prompt's
# tokens, cached ones included), .positions (whether the caller gave position_ids); .calls is None outside one.
_generation = threading.local()


@contextlib.contextmanager
def _own_generation(prompt: int, positions: bool) -> Iterator[None]:
    """Marks the forward calls made by one :meth:`CheemsForCausalLM.generate` of a ``prompt``-token prompt (nested
    calls keep their own state)."""
    outer = tuple(getattr(_generation, name, None) for name in ("calls", "prompt", "positions"))
    _generation.calls, _generation.prompt, _generation.positions = 0, prompt, positions
    try:
        yield
    finally:
        _generation.calls, _generation.prompt, _generation.positions = outer


def _generated_step(input_ids: torch.Tensor | None, cache) -> bool:
    """Whether a forward call is a one-token step fed back by the running ``generate`` loop (counted: call it once
    per forward): not its first call, token ids (b, 1) the model itself picked on a cache that holds the whole
    prompt already (transformers' ``prefill_chunk_size`` feeds a prompt in one-token calls too)."""
    calls = getattr(_generation, "calls", None)
    if calls is None:
        return False
    _generation.calls = calls + 1
    return (calls > 0 and input_ids is not None and input_ids.dim() == 2 and input_ids.shape[1] == 1
            and isinstance(cache, CheemsCache) and cache.real_tokens is not None
            and cache.get_seq_length() >= _generation.prompt)


def _caller_positions() -> bool:
    """Whether the running ``generate`` was given ``position_ids`` (its steps' positions then follow the caller's,
    not the cache's count of real tokens)."""
    return bool(getattr(_generation, "positions", False))


def check_token_ids(ids: torch.Tensor, vocab_size: int, name: str = "input_ids",
                    ignore_index: int | None = None) -> None:
    """ids (b, l) -> ValueError naming ``name`` unless they are integers in ``[0, vocab_size)`` (or equal to
    ``ignore_index``: labels' -100, not scored). The range is read (one device sync) unless
    :func:`value_checks_enabled` says not to; the dtype is always checked."""
    not_scored = "" if ignore_index is None else f", {ignore_index} where not scored"
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{name}.dtype={ids.dtype} is not allowed: token ids (integers){not_scored}")
    if not (ids.numel() and value_checks_enabled()):
        return
    bad = (ids < 0) | (ids >= vocab_size)
    if ignore_index is not None:
        bad &= ids != ignore_index
    if bool(bad.any()):
        raise ValueError(f"{name}=[{int(ids[bad][0])}, ...] is not allowed: token ids in [0, vocab_size={vocab_size})"
                         f"{not_scored}")


def given_cache(past_key_values: CheemsCache | None, cache: CheemsCache | None) -> CheemsCache | None:
    """The cache a call passed, under either name (``cache`` or the older ``past_key_values``)."""
    if past_key_values is not None and cache is not None and past_key_values is not cache:
        raise ValueError("past_key_values/cache are two names of one argument: give the cache under one of them")
    return cache if cache is not None else past_key_values


def value_checks_of(config: CheemsConfig) -> contextlib.AbstractContextManager:
    """Nothing with ``config.value_checks`` on; else :func:`~wonderful_matrices.ops.common.trusted_values`, under
    which no check reads a tensor's values (no device sync)."""
    return contextlib.nullcontext() if config.value_checks else trusted_values()


def honours_value_checks(forward):
    """Wrap a model's ``forward`` to run under :func:`value_checks_of` its config."""
    @functools.wraps(forward)
    def checked_forward(self, *args, **kwargs):
        with value_checks_of(self.config):
            return forward(self, *args, **kwargs)

    return checked_forward


def build_mixer(config: CheemsConfig, layer_idx: int) -> nn.Module:
    """The sequence mixer of layer ``layer_idx`` (``config.mixer_types[layer_idx]``)."""
    kind = config.mixer_types[layer_idx]
    if kind == "attn":
        return Attention(config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                         config.head_dim, rope_theta=config.rope_theta, attention_bias=config.attention_bias,
                         layer_idx=layer_idx)
    if kind == "dma":
        return DynamicMaskAttention(config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                                    config.head_dim, keep_window=config.keep_window, rope_theta=config.rope_theta,
                                    mask_form=config.dma_mask_form, attention_bias=config.attention_bias,
                                    layer_idx=layer_idx, qk_norm=config.dma_qk_norm, rms_norm_eps=config.rms_norm_eps,
                                    decode_backend=config.dma_decode_backend)
    if kind == "ssd":
        return SSDMixer(config.hidden_size, config.ssd_num_heads, config.ssd_head_dim, config.ssd_state_size,
                        num_groups=config.ssd_num_groups, chunk_size=config.ssd_chunk_size,
                        rope=config.ssd_rope, rope_theta=config.rope_theta, use_conv=config.ssd_use_conv,
                        conv_kernel=config.ssd_conv_kernel, norm_eps=config.rms_norm_eps, layer_idx=layer_idx,
                        backend=config.ssd_backend)
    if kind == "mamba2":
        inner = config.mamba2_expand * config.hidden_size
        return Mamba2Mixer(config.hidden_size, inner // config.mamba2_head_dim, config.mamba2_head_dim,
                           config.mamba2_state_size, num_groups=config.mamba2_num_groups,
                           chunk_size=config.mamba2_chunk_size, conv_kernel=config.mamba2_conv_kernel,
                           conv_bias=config.mamba2_conv_bias, bias=config.mamba2_bias, norm_eps=config.rms_norm_eps,
                           norm_groups=config.mamba2_norm_groups, layer_idx=layer_idx, backend=config.ssd_backend)
    raise ValueError(f"mixer_types[{layer_idx}]={kind!r} is not allowed: one of 'attn', 'dma', 'ssd', 'mamba2'")


def build_ffn(config: CheemsConfig, layer_idx: int) -> nn.Module | None:
    """The state mixer of layer ``layer_idx`` (``config.ffn_types[layer_idx]``), or None for ``"none"``."""
    kind = config.ffn_types[layer_idx]
    if kind == "none":
        return None
    if kind == "mlp":
        return GatedMLP(config.hidden_size, config.intermediate_size)
    if kind == "cdmoe":
        return CDMoE(config.hidden_size, config.intermediate_size, config.cdmoe_num_experts,
                     num_heads=config.cdmoe_num_heads, top_k=config.cdmoe_top_k,
                     retrieval_dim=config.cdmoe_retrieval_dim, balance_loss_weight=config.balance_loss_weight,
                     backend=config.cdmoe_backend)
    if kind == "moe":
        return MoE(config.hidden_size, config.moe_intermediate_size, config.moe_num_experts, config.moe_top_k,
                   shared_intermediate_size=config.moe_shared_intermediate_size,
                   implementation=config.moe_implementation, balance_loss_weight=config.balance_loss_weight)
    raise ValueError(f"ffn_types[{layer_idx}]={kind!r} is not allowed: one of 'cdmoe', 'moe', 'mlp', 'none'")


def next_token_targets(labels: torch.Tensor | None, shift_labels: torch.Tensor | None,
                       shape: tuple[int, int]) -> torch.Tensor:
    """The target of each logit position, (b, l) long with ``-100`` = not scored.

    ``shift_labels`` (b, l) are used as given: transformers passes them, already shifted, when the sequence is
    split across ranks (sequence/context parallelism), where a rank cannot shift its own slice. Otherwise
    ``labels`` (b, l) shifted left by one: position ``t`` is scored against ``labels[:, t + 1]``, the last
    position against nothing. ``shape`` is the logits' (batch, seq).
    """
    given, name = (shift_labels, "shift_labels") if shift_labels is not None else (labels, "labels")
    if tuple(given.shape) != tuple(shape):
        raise ValueError(f"{name}.shape={tuple(given.shape)} is not allowed: must equal the logits' "
                         f"(batch, seq)={tuple(shape)} (use logits_to_keep=0 with labels)")
    if shift_labels is not None:
        return shift_labels
    return F.pad(labels[:, 1:], (0, 1), value=-100)


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor,
                   num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of ``logits[:, t]`` against ``targets[:, t]`` (``-100`` ignored), in >= float32.

    logits (b, l, V), targets (b, l) (from :func:`next_token_targets`) -> scalar: the mean over counted tokens,
    or their sum divided by ``num_items_in_batch`` when given (HF Trainer's gradient accumulation).
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_targets = targets.reshape(-1).to(logits.device)
    if num_items_in_batch is None:
        return F.cross_entropy(flat_logits, flat_targets, ignore_index=-100)
    return F.cross_entropy(flat_logits, flat_targets, ignore_index=-100, reduction="sum") / num_items_in_batch


def document_starts(position_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                    seq_idx: torch.Tensor | None, past: int) -> torch.Tensor | None:
    """Where packed documents start: (b, l) bool, True at each document's first token except a row's first (the
    tokens where :func:`packed_document_ids` steps up), or None when the call cannot be packed (no
    ``position_ids``/``seq_idx``, ``past > 0``, or one token). Arguments as :func:`packed_document_ids`; reads no
    values (no device sync)."""
    if seq_idx is not None:
        return F.pad(seq_idx[..., 1:] != seq_idx[..., :-1], (1, 0))
    if position_ids is None or past > 0 or position_ids.shape[-1] < 2:
        return None
    starts = position_ids[..., 1:] == 0
    if attention_mask is not None:  # padding neither starts a document nor ends one (a gap inside a row either)
        real = attention_mask[..., -position_ids.shape[-1]:].to(device=starts.device, dtype=torch.bool)
        starts = starts & real[..., :-1] & real[..., 1:]
    return F.pad(starts, (1, 0))


def packed_document_ids(position_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                        seq_idx: torch.Tensor | None, past: int) -> torch.Tensor | None:
    """The document ids of packed rows, or None for rows that each hold one document.

    HF's packed-without-padding convention (``DataCollatorWithFlattening``): a document starts at a token whose
    ``position_ids`` is 0 and which is real, as its previous token is (padding restarts nothing, so left-padded
    rows, and rows with padding inside them as ``generate`` gives a batch whose rows stopped apart, stay one
    document). An explicit ``seq_idx`` wins. Only a call's first tokens (``past == 0``, more than one token)
    can be packed.

    position_ids (b, l) or None, attention_mask (b, l) or (b, past + l) (1 = real; its last ``l`` columns are
    this call's tokens) or None,
    seq_idx (b, l) non-decreasing integer ids or None -> (b, l) long, or None. Reads values once (a device sync)
    to return None for rows without a restart, except while compiling or capturing (then the ids are kept).
    """
    if seq_idx is not None:
        if not isinstance(seq_idx, torch.Tensor) or seq_idx.dim() != 2 or seq_idx.is_floating_point():
            raise ValueError(f"seq_idx={getattr(seq_idx, 'shape', seq_idx)!r} is not allowed: a (batch, seq) "
                             "integer tensor of non-decreasing document ids")
        return seq_idx
    starts = document_starts(position_ids, attention_mask, None, past)
    if starts is None or (value_checks_enabled() and not bool(starts.any())):
        return None
    return starts.long().cumsum(-1)


def without_full_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """mask (b, l) bool (True = real) -> None when it marks no padding (layers take a faster path without a mask),
    else ``mask``. Reads values (a device sync), except while torch.compile/torch.export trace or a CUDA graph is
    captured: then the mask is kept (exact either way)."""
    if mask is None or not value_checks_enabled() or not bool(mask.all()):
        return mask
    return None


def document_positions(seq_idx: torch.Tensor) -> torch.Tensor:
    """seq_idx (b, l) document ids -> (b, l) long positions that restart at 0 where each document starts."""
    steps = torch.arange(seq_idx.shape[1], device=seq_idx.device).expand_as(seq_idx)
    starts = F.pad(seq_idx[:, 1:] != seq_idx[:, :-1], (1, 0), value=True)
    return steps - torch.where(starts, steps, 0).cummax(dim=1).values


def causal_lm_loss_from_hidden(hidden_states: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
    """:func:`causal_lm_loss` of the logits ``hidden_states @ weight.T`` without materialising them
    (``wm.ops.linear_cross_entropy``).

    hidden_states (b, l, d), weight (V, d), targets (b, l) (from :func:`next_token_targets`) -> scalar.
    """
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = linear_cross_entropy(hidden_states.flatten(0, 1), weight, targets.to(hidden_states.device).flatten(),
                                ignore_index=-100, reduction=reduction)
    return loss if num_items_in_batch is None else loss / num_items_in_batch


class CheemsBlock(GradientCheckpointingLayer):
    """Pre-norm residual block: ``h + mixer(norm(h))`` then ``h + ffn(norm(h))`` (``h * r + ...`` with
    ``config.residual_scale``, ``r`` learned per channel).

    ``forward(hidden_states (b, l, d), position_ids (b, l), attention_mask (b, l) | None, state dict | None,
    seq_idx (b, l) | None, output_attentions=False, update=None, defer=False, rotary_tables=None) -> (b, l, d)``, or
    ``((b, l, d), weights)`` with ``output_attentions``: the mixer's attention probabilities
    ``(b, num_attention_heads, l, keys)`` for attention/DMA layers, None for SSD/Mamba2 (not with packed rows).
    The residual adds can be deferred into the next norm's kernel (one launch less per block): ``update (b, l, d)``
    is an output of the previous block not yet added (the block's input is ``hidden_states + update``, summed by
    the mixer norm), and ``defer=True`` returns the pair ``(residual stream, update)`` instead of their sum.
    ``rotary_tables``: the forward's :class:`~wonderful_matrices.layers.rotary.RotaryTables` of ``position_ids``,
    handed to the mixer (None: the mixer builds its own).
    """

    def __init__(self, config: CheemsConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.mixer_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mixer = build_mixer(config, layer_idx)
        ffn = build_ffn(config, layer_idx)
        self.ffn_norm = None if ffn is None else RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.ffn = ffn
        # a module whose input, under autocast, is read only through one cast to the autocast dtype (one linear, or
        # one explicit cast) lets its norm store that dtype: the same values without a float32 copy. Inputs read by
        # several linears stay float32, so their gradients are summed in float32 as autocast does.
        self.mixer_casts_once = getattr(self.mixer, "single_cast_input", False)
        self.ffn_casts_once = getattr(ffn, "single_cast_input", False)
        if config.residual_scale:
            self.mixer_residual = nn.Parameter(torch.ones(config.hidden_size))
            self.ffn_residual = None if ffn is None else nn.Parameter(torch.ones(config.hidden_size))
        else:
            self.mixer_residual = self.ffn_residual = None

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor,
                attention_mask: torch.Tensor | None, state: dict | None,
                seq_idx: torch.Tensor | None = None, output_attentions: bool = False,
                update: torch.Tensor | None = None, defer: bool = False,
                rotary_tables: RotaryTables | None = None) -> torch.Tensor | tuple:
        """(b, l, d) -> (b, l, d) (and the attention weights with ``output_attentions``; a pair of (b, l, d) with
        ``defer``)."""
        mixer_norm, mixer, ffn = self.mixer_norm, self.mixer, self.ffn  # each looked up once: a step's host time
        autocast = autocast_dtype(hidden_states.device)
        mixer_dtype = autocast if self.mixer_casts_once else None
        if update is None:
            normed = mixer_norm(hidden_states, out_dtype=mixer_dtype)
        else:  # one kernel: add and norm
            normed, hidden_states = mixer_norm(update, residual=hidden_states, out_dtype=mixer_dtype)
        weights = None
        if output_attentions and hasattr(mixer, "attention_weights"):
            if seq_idx is not None:
                raise ValueError("output_attentions=True is not allowed with packed rows (seq_idx, or position_ids "
                                 "restarting at 0): the weights are computed for one document per row")
            weights = mixer.attention_weights(normed, position_ids, attention_mask, state, rotary_tables=rotary_tables)
        mixed = mixer(normed, position_ids, attention_mask, state, seq_idx=seq_idx, rotary_tables=rotary_tables)
        scale = self.mixer_residual
        residual = hidden_states if scale is None else hidden_states * scale
        if ffn is None:
            update = mixed
        else:
            normed, hidden_states = self.ffn_norm(mixed, residual=residual,  # one kernel: the add and the norm
                                                  out_dtype=autocast if self.ffn_casts_once else None)
            update = ffn(normed)
            scale = self.ffn_residual
            residual = hidden_states if scale is None else hidden_states * scale
        hidden_states = (residual, update) if defer else residual + update
        return (hidden_states, weights) if output_attentions else hidden_states

    def aux_loss(self) -> torch.Tensor | None:
        """The load-balancing loss the FFN stored on its last forward (None when it has none)."""
        return getattr(self.ffn, "aux_loss", None)


class CheemsPreTrainedModel(PreTrainedModel):
    """Weight initialisation and HF plumbing shared by :class:`CheemsModel` and :class:`CheemsForCausalLM`."""

    config_class = CheemsConfig
    config: CheemsConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["CheemsBlock"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    # every mixer computes attention its own way (SDPA inside); "eager" and "sdpa" are accepted, and
    # output_attentions computes the weights eagerly whatever was chosen
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialise every parameter ``module`` owns directly (HF calls this per module, and only for the
        parameters a checkpoint did not provide: the ``init`` functions skip loaded ones).

        Linear and token-embedding weights ~ N(0, initializer_range), zero biases, unit norm weights; the
        parameters particular to a layer as its constructor draws them: SSD/Mamba2 ``dt_bias``/``A_log``/``D``
        (:meth:`SSDMixer.initial_values`) and short conv (PyTorch's default), DMA ``A_log``/``A`` (zeros), CDMoE
        sub-keys and expert tables (each table an ``nn.Embedding`` module of its own: a checkpoint may hold the
        sub-keys without a table), MoE expert weights, residual scales (ones).
        """
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding) and module is self.get_input_embeddings():
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):  # the other embeddings are expert tables (CDMoE): rows ~ N(0, 1/d)
            init.normal_(module.weight, mean=0.0, std=module.embedding_dim ** -0.5)
        elif isinstance(module, nn.Conv1d):
            module.reset_parameters()  # torch.nn.init inside, which HF guards while it initialises
        elif isinstance(module, (RMSNorm, GatedRMSNorm)):
            init.ones_(module.weight)
        elif isinstance(module, SSDMixer):  # Mamba2Mixer too
            for name, value in module.initial_values().items():
                init.copy_(getattr(module, name), value)
        elif isinstance(module, DynamicMaskAttention) and module.mask_form != "none":
            init.zeros_(module.A_log if module.mask_form == "gate" else module.A)
        elif isinstance(module, CDMoE):  # its expert tables are modules of their own (the branch above)
            init.normal_(module.keys, mean=0.0, std=(module.retrieval_dim // 2) ** -0.5)
        elif isinstance(module, MoE):
            module.reset_expert_parameters()
        elif isinstance(module, CheemsBlock):
            for scale in (module.mixer_residual, module.ffn_residual):
                if scale is not None:
                    init.ones_(scale)


class CheemsModel(CheemsPreTrainedModel):
    """Embeddings, ``num_hidden_layers`` :class:`CheemsBlock` s and a final RMSNorm.

    ``forward(input_ids (b, l) | inputs_embeds (b, l, d), attention_mask (b, l) or (b, past + l),
    position_ids (b, l), past_key_values | cache CheemsCache, use_cache, output_attentions, output_hidden_states,
    return_dict, seq_idx (b, l)) -> BaseModelOutputWithPast`` with ``last_hidden_state (b, l, d)``;
    ``hidden_states``: the ``num_hidden_layers + 1`` block inputs and final output, each (b, l, d); ``attentions``:
    per layer the attention probabilities ``(b, num_attention_heads, l, keys)`` of an attention/DMA layer (keys =
    the cached keys, then the ``l`` new ones), None for SSD/Mamba2 layers. ``output_*`` and ``return_dict`` default
    to the config's values; ``return_dict=False`` returns the output's non-None fields as a tuple. Packed rows
    (:func:`packed_document_ids`: position ids restarting at 0, or an explicit ``seq_idx``) keep every document
    apart in every layer; they build no cache. ``prefill_chunk_tokens`` (default ``config.prefill_chunk_tokens``; None
    = one call): a call with a cache and more tokens runs its blocks chunk by chunk, each chunk continuing the
    cache, so a long prompt's activations are bounded by the chunk (not with ``output_hidden_states`` or
    ``output_attentions``, which run one call). ``generated_step=True`` (what :meth:`CheemsForCausalLM.generate`
    passes for the tokens it feeds back) vouches that the ids are in range and the new tokens are real (padding only
    in the cache), so the call reads no tensor values (no host synchronisation).
    """

    def __init__(self, config: CheemsConfig):
        super().__init__(config)
        # a config is checked when it is made; from_pretrained(..., num_hidden_layers=2) sets fields after that
        config._validate()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(CheemsBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @honours_value_checks
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values: CheemsCache | None = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, seq_idx: torch.LongTensor | None = None,
                cache: CheemsCache | None = None, prefill_chunk_tokens: int | None = None,
                generated_step: bool = False, **kwargs) -> BaseModelOutputWithPast | tuple:
        """Run the blocks; see the class docstring for shapes."""
        past_key_values = given_cache(past_key_values, cache)
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (self.config.output_hidden_states if output_hidden_states is None
                                else output_hidden_states)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("input_ids/inputs_embeds: give exactly one of them")
        if input_ids is not None:
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids.shape={tuple(input_ids.shape)} is not allowed: must be (batch, seq)")
            if input_ids.numel() == 0:
                raise ValueError(f"input_ids.shape={tuple(input_ids.shape)} is not allowed: at least one row and "
                                 "one token")
            if not generated_step:  # generate's own steps feed back ids the model picked from its vocab_size logits
                check_token_ids(input_ids, self.config.vocab_size)
            inputs_embeds = self.embed_tokens(input_ids)
        b, l = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        use_cache = self.config.use_cache if use_cache is None else use_cache
        checkpointing = self.gradient_checkpointing and self.training
        if checkpointing:
            use_cache, past_key_values = False, None
            self._check_checkpointing()
        if past_key_values is not None and not isinstance(past_key_values, CheemsCache):
            raise ValueError(f"past_key_values={type(past_key_values).__name__} is not allowed: "
                             "a CheemsCache (or None)")
        if past_key_values is not None and past_key_values.batch_size not in (-1, b):
            raise ValueError(f"past_key_values (a cache of {past_key_values.batch_size} rows) is not allowed with "
                             f"{b} rows of input: the cache of these rows (generate does not repeat a given cache "
                             "for beams or several sequences per prompt)")
        if position_ids is not None and position_ids.shape[-1] != l:
            raise ValueError(f"position_ids.shape={tuple(position_ids.shape)} is not allowed: last dim must be {l}")
        explicit_seq_idx = seq_idx is not None
        seq_idx = packed_document_ids(position_ids, attention_mask, seq_idx,
                                      past_key_values.get_seq_length() if past_key_values is not None else 0)
        if seq_idx is not None:
            seq_idx = seq_idx.expand(b, -1) if seq_idx.shape[0] == 1 else seq_idx
            if tuple(seq_idx.shape) != (b, l):
                raise ValueError(f"seq_idx.shape={tuple(seq_idx.shape)} is not allowed: must be (batch, seq)={(b, l)}")
            if past_key_values is not None:
                raise ValueError("past_key_values is not allowed with packed rows (position_ids restarting at 0 or "
                                 "seq_idx): a cache continues one document")
            # a caller's ids are checked here, once for every layer (one device sync); the model's own are
            # non-decreasing by construction
            if explicit_seq_idx and l > 1 and value_checks_enabled() and bool((seq_idx[:, 1:] < seq_idx[:, :-1]).any()):
                raise ValueError(f"seq_idx (shape {tuple(seq_idx.shape)}) is not allowed: document ids must not "
                                 "decrease along a row")
            use_cache = False
            seq_idx = seq_idx.to(device)
        cache = past_key_values if past_key_values is not None else (CheemsCache(self.config) if use_cache else None)
        past = cache.get_seq_length() if cache is not None else 0
        if cache is not None and cache.static_attention:
            cache.reserve(past + l)  # static attention buffers hold this call's keys too

        new_mask = None
        if attention_mask is not None:
            if (attention_mask.dim() != 2 or attention_mask.shape[0] != b
                    or attention_mask.shape[1] not in (l, past + l)):
                raise ValueError(f"attention_mask.shape={tuple(attention_mask.shape)} is not allowed: "
                                 f"(batch={b}, {l}) for this call's tokens or (batch, {past + l}) for past + new")
            # generate's own steps append a 1 to the mask for each new token: no padding to find (no device sync)
            new_mask = None if generated_step else attention_mask[:, -l:].to(device=device, dtype=torch.bool)
        if position_ids is None and seq_idx is not None:
            position_ids = document_positions(seq_idx)
        if position_ids is None:
            start = (cache.past_positions(b, device) if cache is not None
                     else torch.zeros(b, dtype=torch.long, device=device))
            if new_mask is None:  # a decoding token sits at `start` itself: no kernel to compute it
                position_ids = start[:, None] if l == 1 else start[:, None] + torch.arange(l, device=device)
            else:
                position_ids = (start[:, None] + new_mask.long().cumsum(-1) - 1).masked_fill(~new_mask, 0)
        position_ids = position_ids.to(device)
        if position_ids.shape != (b, l):  # (a decoding step's positions are (b, 1) already: no view to make)
            position_ids = position_ids.expand(b, l)
        layer_mask = without_full_mask(new_mask)

        chunk = self.config.prefill_chunk_tokens if prefill_chunk_tokens is None else prefill_chunk_tokens
        if chunk is not None and not (is_int(chunk) and chunk >= 1):
            raise ValueError(f"prefill_chunk_tokens={chunk!r} is not allowed: None or an integer >= 1")
        all_hidden = [] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        if (chunk is not None and l > chunk and cache is not None and seq_idx is None and not self.training
                and not output_hidden_states and not output_attentions):
            # a long prompt: consecutive calls continuing the cache (exact: the layers' "prefill + further calls
            # = one forward" contract); positions were computed above for the whole call. Not in training: a
            # training call keeps every activation for its backward anyway, and each FFN's balance loss is one
            # loss over the call's tokens, which separate calls would overwrite chunk by chunk
            parts = []
            for start in range(0, l, chunk):
                part = slice(start, min(l, start + chunk))
                part_mask = None if layer_mask is None else without_full_mask(layer_mask[:, part])
                hidden_states, update = self._blocks(inputs_embeds[:, part], position_ids[:, part], part_mask,
                                                     cache, None, None, None)
                parts.append(hidden_states + update)
            hidden_states, update = torch.cat(parts, 1), None
        else:
            hidden_states, update = self._blocks(inputs_embeds, position_ids, layer_mask, cache, seq_idx, all_hidden,
                                                 all_attentions)
        if cache is not None:
            cache.advance(new_mask, b, l, device)
        if update is None:
            hidden_states = self.norm(hidden_states)
        else:  # the last block's residual add and the final norm in one kernel
            hidden_states, _ = self.norm(update, residual=hidden_states)
        if all_hidden is not None:
            all_hidden.append(hidden_states)
        output = BaseModelOutputWithPast(last_hidden_state=hidden_states, **{CACHE_NAME: cache if use_cache else None},
                                         hidden_states=tuple(all_hidden) if all_hidden is not None else None,
                                         attentions=tuple(all_attentions) if all_attentions is not None else None)
        return output if return_dict else output.to_tuple()

    def _check_checkpointing(self) -> None:
        """ValueError when a block with a load-balancing loss is checkpointed reentrantly (``use_reentrant=True``):
        its forward then runs without autograd, so the loss it stores would add nothing to the gradients."""
        for block in self.layers:
            func = getattr(block, "_gradient_checkpointing_func", None)
            if (block.gradient_checkpointing and getattr(func, "keywords", {}).get("use_reentrant")
                    and getattr(block.ffn, "balance_loss_weight", 0) > 0):
                raise ValueError("gradient_checkpointing_kwargs={'use_reentrant': True} is not allowed with a "
                                 f"load-balancing loss (layer {block.layer_idx}'s {type(block.ffn).__name__}, "
                                 f"balance_loss_weight={block.ffn.balance_loss_weight}): its gradient would be lost; "
                                 "use_reentrant=False (the default) keeps it")

    def _blocks(self, hidden_states: torch.Tensor, position_ids: torch.Tensor, layer_mask: torch.Tensor | None,
                cache: CheemsCache | None, seq_idx: torch.Tensor | None, all_hidden: list | None,
                all_attentions: list | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every block on hidden_states (b, l, d) -> the blocks' output before the final norm as ``(residual,
        update)``, each (b, l, d), whose sum it is: each residual add is left to the next norm's kernel, the last
        one to the final norm's. When ``all_hidden`` or ``all_attentions`` are lists (each block's input, its
        attention weights are appended), the blocks add as they go and ``update`` is None. The rotary cos/sin
        tables are built once for all the blocks (:class:`RotaryTables`)."""
        defer = all_hidden is None and all_attentions is None
        update = None
        tables = RotaryTables(position_ids)
        with trusted_values():  # the ids, biases and seq_idx the layers' ops get are valid by construction or checked
            for i, block in enumerate(self.layers):
                if all_hidden is not None:
                    all_hidden.append(hidden_states)
                state = cache.layer_state(i) if cache is not None else None
                if all_attentions is not None:
                    hidden_states, weights = block(hidden_states, position_ids, layer_mask, state, seq_idx,
                                                   output_attentions=True, rotary_tables=tables)
                    all_attentions.append(weights)
                elif defer:  # update positional: a checkpointed block's tensor inputs must be its arguments
                    hidden_states, update = block(hidden_states, position_ids, layer_mask, state, seq_idx, False,
                                                  update, True, rotary_tables=tables)
                else:
                    hidden_states = block(hidden_states, position_ids, layer_mask, state, seq_idx,
                                          rotary_tables=tables)
        return hidden_states, update


@dataclass
class CheemsCausalLMOutput(CausalLMOutputWithPast):
    """``CausalLMOutputWithPast`` plus ``aux_loss``: the summed weighted load-balancing losses (inside ``loss``)."""

    aux_loss: torch.FloatTensor | None = None


class CheemsForCausalLM(CheemsPreTrainedModel, GenerationMixin):
    """:class:`CheemsModel` + LM head (tied to the embeddings by default).

    ``forward(input_ids (b, l), attention_mask, position_ids, past_key_values | cache, labels (b, l), use_cache,
    output_attentions, output_hidden_states, return_dict, logits_to_keep, seq_idx, skip_logits, prefill_chunk_tokens,
    shift_labels (b, l)) -> CheemsCausalLMOutput`` with ``logits (b, l', vocab)`` (``hidden_states``/``attentions`` as
    :class:`CheemsModel`); with ``labels`` (or ``shift_labels``, already shifted: sequence/context parallelism),
    ``loss`` = next-token cross-entropy (``-100`` ignored, see :func:`next_token_targets`) + the sum of the
    FFN layers' ``aux_loss`` (each already weighted by ``balance_loss_weight``; with the HF Trainer's
    ``num_items_in_batch`` the cross-entropy is a sum over the targets divided by it, and ``aux_loss`` is scaled by this
    call's share of those targets, so gradient accumulation counts it once per step). ``return_dict=False`` returns
    the non-None fields as a tuple. Packed rows (see :class:`CheemsModel`): no label at a document's first token
    is scored (it is not predicted from the previous document).

    Assisted and prompt-lookup decoding need a cache that can roll back: only models whose layers are all
    ``"attn"``; ``generate`` refuses them up front for the others.
    ``skip_logits`` (default: training mode with labels and ``config.fused_loss``) computes the loss chunk by chunk
    from the hidden states (``wm.ops.linear_cross_entropy``) and returns ``logits=None``.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: CheemsConfig):
        super().__init__(config)
        self.model = CheemsModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @property
    def _is_stateful(self) -> bool:
        """Whether the cache cannot roll back (some layer is not ``"attn"``); transformers <= 5.2x reads this to
        refuse assisted decoding."""
        return not CheemsCache.can_roll_back(self.config.mixer_types)

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values: CheemsCache | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0, seq_idx: torch.LongTensor | None = None,
                cache: CheemsCache | None = None, skip_logits: bool | None = None,
                prefill_chunk_tokens: int | None = None, graphed_decoding: bool | None = None,
                **kwargs) -> CheemsCausalLMOutput | tuple:
        """Logits (and loss with ``labels``); see the class docstring. ``shift_labels`` comes in ``kwargs``, as
        transformers passes it (a named parameter with "label" in it would make the Trainer expect it in every
        evaluation batch)."""
        shift_labels = kwargs.get("shift_labels")
        has_targets = labels is not None or shift_labels is not None
        if skip_logits is None:
            skip_logits = self.training and has_targets and self.config.fused_loss
        if skip_logits and not has_targets:
            raise ValueError("skip_logits=True is not allowed without labels: the logits are all there is to return")
        return_dict = self.config.return_dict if return_dict is None else return_dict
        past_key_values = given_cache(past_key_values, cache)
        generated = _generated_step(input_ids, past_key_values)
        graphed = self.config.graphed_decoding if graphed_decoding is None else graphed_decoding
        if graphed is None:  # the default: graphed where a graph can be recorded
            graphed = input_ids is not None and input_ids.is_cuda
        if graphed and self._graphable_step(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds,
                                            has_targets, output_attentions, output_hidden_states, seq_idx,
                                            generated):
            if past_key_values.graphed_decoder is None or past_key_values.graphed_decoder.model is not self:
                past_key_values.graphed_decoder = GraphedDecoder(self, past_key_values)
            # the graph's output buffer is overwritten by the next step: generate copies what it keeps
            output = CheemsCausalLMOutput(logits=past_key_values.graphed_decoder.step(input_ids),
                                          **{CACHE_NAME: past_key_values})
            return output if return_dict else output.to_tuple()
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                             output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                             return_dict=True, seq_idx=seq_idx, prefill_chunk_tokens=prefill_chunk_tokens,
                             generated_step=generated)
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        if skip_logits:
            logits = None
        else:  # (0 keeps every position: no slice to make)
            every = isinstance(logits_to_keep, int) and logits_to_keep == 0
            logits = self.lm_head(hidden_states if every else hidden_states[:, keep, :])

        aux_losses = [a for a in (block.aux_loss() for block in self.model.layers) if a is not None]
        # summed in float32 at least (a half-precision layer's loss is not rounded again; a float64 one stays)
        aux_loss = torch.stack([a.to(torch.promote_types(a.dtype, torch.float32)) for a in aux_losses]).sum() \
            if aux_losses else None
        loss = None
        if has_targets:
            kept = hidden_states[:, keep, :]
            targets = next_token_targets(labels, shift_labels, kept.shape[:2])
            with value_checks_of(self.config):
                check_token_ids(targets, self.config.vocab_size,
                                "shift_labels" if shift_labels is not None else "labels", ignore_index=-100)
            # a packed document's first token is not predicted from the previous document (targets[:, t] is
            # labels[:, t + 1]); the model found the documents with one device sync, where they start needs none
            starts = document_starts(position_ids, attention_mask, seq_idx, past) if shift_labels is None else None
            if starts is not None:
                targets = targets.masked_fill(F.pad(starts[..., 1:], (0, 1)).to(targets.device), -100)
            if skip_logits:
                with value_checks_of(self.config):
                    loss = causal_lm_loss_from_hidden(kept, self.lm_head.weight, targets,
                                                      kwargs.get("num_items_in_batch"))
            else:
                loss = causal_lm_loss(logits, targets, kwargs.get("num_items_in_batch"))
            if aux_loss is not None:
                items = kwargs.get("num_items_in_batch")
                # with gradient accumulation the Trainer sums its micro-batches' losses, each cross-entropy a sum
                # over the targets of all of them (num_items_in_batch): the balance loss gets this micro-batch's
                # share of those targets, so that it counts once per optimizer step, not once per micro-batch
                loss = loss + (aux_loss if items is None else aux_loss * (targets != -100).sum() / items)
        output = CheemsCausalLMOutput(loss=loss, aux_loss=aux_loss, logits=logits,
                                      **{CACHE_NAME: outputs.get(CACHE_NAME)},
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        return output if return_dict else output.to_tuple()

    def _graphable_step(self, input_ids, attention_mask, position_ids, cache, inputs_embeds, has_targets,
                        output_attentions, output_hidden_states, seq_idx, generated: bool = False) -> bool:
        """Whether a call is a one-token decoding step that :class:`GraphedDecoder` can run: token ids (b, 1) on a
        filled cache, eval mode without gradients, nothing else asked for, and no padding among the new tokens
        (position ids, when given, are those the cache implies: ``generate`` derives both from one mask). Off CUDA
        the decoder runs the same eager step. ``generated``: a step fed back by :meth:`generate` (ids in range, the
        new token real, its position the one the cache implies: nothing is read, no device synchronisation)."""
        if not (isinstance(cache, CheemsCache) and cache.real_tokens is not None and input_ids is not None
                and inputs_embeds is None and input_ids.dim() == 2 and input_ids.shape[1] == 1
                and not self.training and not torch.is_grad_enabled() and not has_targets and seq_idx is None
                and not output_attentions and not output_hidden_states and not self.config.output_attentions
                and not self.config.output_hidden_states and value_checks_enabled()):
            return False
        if cache.batch_size != input_ids.shape[0] or (position_ids is not None
                                                      and position_ids.numel() != cache.batch_size):
            return False
        # the value checks read as one (a single device sync per step); out-of-vocabulary ids fail them, and the
        # eager call raises the error naming them
        device = cache.real_tokens.device
        checks = [] if generated else [((input_ids >= 0) & (input_ids < self.config.vocab_size)).all().to(device)]
        if position_ids is not None and (not generated or _caller_positions()):
            checks.append((position_ids.reshape(-1).to(device) == cache.real_tokens).all())
        if attention_mask is not None and not generated:
            checks.append(attention_mask[:, -1].all().to(device))
        return not checks or bool(torch.stack(checks).all())

    def generate(self, inputs: torch.Tensor | None = None, *args, **kwargs):
        """transformers' ``GenerationMixin.generate`` (same arguments and result). Its first forward call (the
        prompt, or the uncached part of it) is checked as any call; the one-token steps the loop then feeds back
        (ids picked from this model's logits, the new token always real) skip the checks that read tensor values,
        so a decoding step of ours makes no host synchronisation and the CPU can queue steps ahead of the GPU.
        Assisted decoding (another model's draft ids) keeps every check."""
        if kwargs.get("assistant_model") is not None:
            return super().generate(inputs, *args, **kwargs)
        self._check_fed_back_ids(kwargs)
        prompt = next((t for t in (inputs, kwargs.get("input_ids"), kwargs.get("inputs_embeds"))
                       if isinstance(t, torch.Tensor) and t.dim() >= 2), None)
        with _own_generation(0 if prompt is None else prompt.shape[1], kwargs.get("position_ids") is not None):
            return super().generate(inputs, *args, **kwargs)

    def _check_fed_back_ids(self, kwargs: dict) -> None:
        """``pad_token_id``, the one id ``generate`` feeds back besides the model's own picks (the next token of a
        finished row; its steps skip the id check), must be in the vocabulary."""
        config = kwargs.get("generation_config") or self.generation_config
        pad = kwargs.get("pad_token_id", getattr(config, "pad_token_id", None))
        value = pad.item() if isinstance(pad, torch.Tensor) and pad.numel() == 1 else pad
        require(value is None or (is_int(value) and 0 <= value < self.config.vocab_size), "pad_token_id", pad,
                f"a token id in [0, vocab_size={self.config.vocab_size}) (generate feeds it back as the next token "
                "of a finished row)")

    def _prepare_cache_for_generation(self, generation_config, model_kwargs: dict, generation_mode=None,
                                      *args, **kwargs) -> None:
        """``generate`` hook: refuse assisted/prompt-lookup decoding when the cache cannot roll back; a user's
        cache must be a :class:`CheemsCache`; otherwise create one (under the name ``generate`` passes on), with
        static attention buffers where the steps are graphed (``config.static_attention_cache``). Either cache
        reserves ``max_length`` tokens (a no-op without static attention buffers)."""
        if generation_mode == GenerationMode.ASSISTED_GENERATION and self._is_stateful:
            kinds = sorted(set(self.config.mixer_types) - {"attn"})
            raise ValueError(f"generation_mode={generation_mode.value!r} is not allowed for this model: assisted and "
                             "prompt-lookup decoding roll the cache back after a rejected draft token, which only "
                             f"attention layers can do (this model has {kinds} layers)")
        user_cache = model_kwargs.get("cache", model_kwargs.get("past_key_values"))
        if user_cache is not None:
            if not isinstance(user_cache, CheemsCache):
                raise ValueError(f"past_key_values={type(user_cache).__name__} is not allowed: a CheemsCache")
            user_cache._is_user_defined = True
            user_cache.reserve(generation_config.max_length or 0)
            return
        if generation_config.use_cache is False:
            return
        impl = generation_config.cache_implementation
        if impl not in (None, "dynamic"):
            raise ValueError(f"cache_implementation={impl!r} is not allowed: Cheems models use their own "
                             "CheemsCache (leave it None)")
        static = uses_static_attention(self.config, model_kwargs.get("graphed_decoding"), self.device)
        cache = CheemsCache(self.config, static_attention=static)
        # every token generate will feed fits the static attention buffers: they are never reallocated
        cache.reserve(generation_config.max_length or 0)
        model_kwargs[CACHE_NAME] = cache
