"""``CheemsConfig``: one HF config for Cheems and every baseline, chosen per layer.

Each layer ``i`` is a block ``[RMSNorm -> mixer_types[i] -> residual; RMSNorm -> ffn_types[i] -> residual]``.
``mixer_types[i]`` is a sequence mixer (``"ssd"``, ``"dma"``, ``"attn"``, ``"mamba2"``), ``ffn_types[i]`` a
state mixer (``"cdmoe"``, ``"moe"``, ``"mlp"``) or ``"none"`` (no FFN half). When not given, ``mixer_types``
follows the Cheems pattern: groups of up to ``attention_period`` layers whose last layer is
``attention_layer_type`` and the others ``recurrent_layer_type``; ``ffn_types`` is ``default_ffn_type``
everywhere.

``layer_types`` is an alias of ``mixer_types`` (a constructor keyword and a property), kept for code and
config.json files written before the rename. The field itself is not called ``layer_types`` because
transformers gives that name a meaning of its own (attention kinds such as ``"full_attention"``) and validates
it whenever a config is loaded through ``PretrainedConfig``, e.g. when the ``Trainer`` resumes.
"""
from __future__ import annotations

import dataclasses
import math

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

from ..errors import is_finite_number, is_int, require
from ..ops.common import BACKENDS, LAYER_BACKENDS, MIXTURE_LAYER_BACKENDS

LAYER_TYPES = ("ssd", "dma", "attn", "mamba2")
FFN_TYPES = ("cdmoe", "moe", "mlp", "none")
DMA_MASK_FORMS = ("gate", "doge", "none")
SSD_ROPE_MODES = ("fixed", "data", "none")
MOE_IMPLEMENTATIONS = ("grouped", "loop")


def default_layer_types(num_layers: int, period: int, attention_type: str, recurrent_type: str) -> list[str]:
    """Groups of up to ``period`` consecutive layers; the last layer of each group is ``attention_type``."""
    return [attention_type if (i % period == period - 1 or i == num_layers - 1) else recurrent_type
            for i in range(num_layers)]


# Annotation of a CheemsConfig field -> (test of a value, what is allowed).
_FIELD_TYPES = {
    "int": (is_int, "an integer"),
    "int | None": (lambda v: v is None or is_int(v), "None or an integer"),
    "float": (is_finite_number, "a finite number"),
    "float | int": (is_finite_number, "a finite number"),
    "bool": (lambda v: isinstance(v, bool), "True or False"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "str | None": (lambda v: v is None or isinstance(v, str), "None or a string"),
    "bool | None": (lambda v: v is None or isinstance(v, bool), "None, True or False"),
    "list[str] | None": (lambda v: v is None or (isinstance(v, list) and all(isinstance(t, str) for t in v)),
                         "None or a list of strings"),
    "int | list[int] | None": (lambda v: v is None or is_int(v) or (isinstance(v, list) and all(map(is_int, v))),
                               "None, an integer or a list of integers"),
}


def _check_field_types(config: "CheemsConfig") -> None:
    """Raise ``ValueError`` for a field of the wrong type (``hidden_size=True`` or ``"64"``) before any arithmetic
    uses it, and for an ``eos_token_id`` outside the vocabulary."""
    for name, annotation in CheemsConfig.__annotations__.items():
        rule = _FIELD_TYPES.get(annotation)
        if rule is not None:
            require(rule[0](getattr(config, name)), name, getattr(config, name), rule[1])
    eos = config.eos_token_id
    for token in eos if isinstance(eos, list) else [] if eos is None else [eos]:
        require(0 <= token < config.vocab_size, "eos_token_id", eos,
                f"None or ids in [0, vocab_size={config.vocab_size})")


def config_field_names() -> set[str]:
    """Every keyword ``CheemsConfig`` accepts as a field (its own and ``PretrainedConfig``'s, and the alias
    ``layer_types`` of ``mixer_types``)."""
    return {f.name for f in dataclasses.fields(CheemsConfig)} | {"layer_types"}


@strict
class CheemsConfig(PretrainedConfig):
    r"""Configuration of :class:`~wonderful_matrices.CheemsForCausalLM` (model_type ``"cheems"``).

    Common: ``vocab_size``, ``hidden_size``, ``num_hidden_layers``, ``mixer_types`` (alias ``layer_types``),
    ``ffn_types`` (lists of
    length ``num_hidden_layers``; derived from ``attention_period``/``attention_layer_type``/
    ``recurrent_layer_type``/``default_ffn_type`` when None), ``rms_norm_eps``, ``initializer_range``,
    ``tie_word_embeddings`` (default True), ``pad/bos/eos_token_id``.

    Attention and DMA (``"attn"``, ``"dma"``): ``num_attention_heads``, ``num_key_value_heads``
    (default: ``num_attention_heads``), ``head_dim`` (default: ``hidden_size // num_attention_heads``),
    ``rope_theta`` (shared with SSD), ``attention_bias``, ``keep_window`` (DMA keys kept per query; None = all),
    ``dma_mask_form`` (``"gate"``: bounded log-space gate; ``"doge"``: the published Doge formula; ``"none"``: no
    learned mask, sliding-window attention with ``keep_window``),
    ``dma_qk_norm`` (RMSNorm on DMA queries/keys per head, as Doge).

    SSD (``"ssd"``): ``ssd_num_heads``, ``ssd_head_dim``, ``ssd_state_size``, ``ssd_num_groups``,
    ``ssd_chunk_size`` (power of two), ``ssd_rope`` (``"fixed"``: RoPE on B and C; ``"data"``: data-dependent
    rotary, Mamba-3 style; ``"none"``), ``ssd_use_rope`` (its older boolean spelling: True = ``"fixed"``,
    False = ``"none"``; give either, or both consistently — each is derived from the other, default ``"fixed"``),
    ``ssd_use_conv`` (Mamba2 short conv), ``ssd_conv_kernel``.

    Mamba2 (``"mamba2"``): ``mamba2_expand``, ``mamba2_head_dim``, ``mamba2_state_size``, ``mamba2_num_groups``,
    ``mamba2_conv_kernel``, ``mamba2_chunk_size``, ``mamba2_conv_bias``, ``mamba2_bias`` (in/out projections),
    ``mamba2_norm_groups`` (groups of the gated RMSNorm; None = ``mamba2_num_groups`` as mamba_ssm, 1 = HF's
    PyTorch path).

    FFNs: ``intermediate_size`` (``"mlp"`` and the shared MLP of CDMoE); CDMoE ``cdmoe_num_experts``
    (a perfect square), ``cdmoe_num_heads``, ``cdmoe_top_k``, ``cdmoe_retrieval_dim`` (even);
    MoE ``moe_num_experts``, ``moe_top_k``, ``moe_intermediate_size`` (each expert),
    ``moe_shared_intermediate_size`` (shared expert; 0 = none), ``moe_implementation``;
    ``balance_loss_weight`` (weight of the load-balancing losses added to the LM loss).

    ``residual_scale``: learned per-channel scales on both residual branches (``h * r + f(h)``, as Doge);
    off by default.

    Backends (``"auto"`` picks the fastest for the device; the others force one, e.g. for tests and benchmarks):
    ``ssd_backend`` (``wonderful_matrices.ops.ssd`` in ``"ssd"`` and ``"mamba2"`` layers: ``"auto"``,
    ``"naive"``, ``"torch"``, ``"triton"``), ``cdmoe_backend`` (the expert mixture of ``"cdmoe"`` layers:
    ``"auto"``, ``"torch"``, ``"dense"``, ``"triton"``) and ``dma_decode_backend`` (the one-token generation step of
    ``"dma"`` layers: ``"auto"``, ``"torch"``, ``"triton"``).
    ``fused_loss``: in training mode with ``labels``, ``CheemsForCausalLM`` computes the loss straight from the
    final hidden states with ``wm.ops.linear_cross_entropy`` (chunked; no ``(b, l, V)`` float32 logits) and
    returns ``logits=None``, as HF's Liger kernels do; the ``skip_logits`` argument of ``forward`` overrides it.
    ``value_checks``: ``forward`` reads the values of its inputs to check them (token ids within the vocabulary,
    fused-loss labels, an explicit ``seq_idx`` non-decreasing), a device synchronisation per check; a training
    loop whose data were validated where they entered sets it False, so its steps queue kernels without waiting
    for the GPU (``wm train`` and the benchmarks run their steps inside ``wm.ops.common.trusted_values()``,
    which has the same effect without changing the config).
    ``prefill_chunk_tokens``: a call with a cache and more tokens than this (a long prompt) runs as consecutive
    calls of at most this many tokens, each continuing the cache, so its activation memory is bounded while every
    chunk still uses the chunked SSD / windowed DMA kernels; None = one call; a training-mode call is always one
    call. The ``prefill_chunk_tokens`` argument of ``forward`` (and so of ``generate``) overrides it.
    ``graphed_decoding``: the one-token steps of ``generate`` (in eval mode without gradients) replay a recorded
    CUDA graph (:class:`~wonderful_matrices.models.GraphedDecoder`) once the cache is steady, with the tokens of
    eager decoding (``tests/models/test_models_cuda.py``). None (the default) = on CUDA; True = also route the steps
    through the decoder off CUDA, where it runs them eagerly (the CPU tests of that path); False = eager everywhere.
    The ``graphed_decoding`` argument of ``forward`` (and so of ``generate``) overrides it.
    ``static_attention_cache``: ``"attn"`` layers keep their keys in preallocated buffers (``CheemsCache``'s
    ``static_attention``), so their decoding steps keep every shape and can be graphed; same outputs as the growing
    cache. None (the default) = on exactly when the graphed path runs (``graphed_decoding`` on CUDA), so the eager
    path keeps the growing cache.
    """

    model_type = "cheems"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 32768
    hidden_size: int = 1024
    num_hidden_layers: int = 8
    mixer_types: list[str] | None = None
    ffn_types: list[str] | None = None
    attention_period: int = 8
    attention_layer_type: str = "dma"
    recurrent_layer_type: str = "ssd"
    default_ffn_type: str = "cdmoe"

    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rope_theta: float | int = 10000.0
    attention_bias: bool = False
    keep_window: int | None = 2048
    dma_mask_form: str = "gate"
    dma_qk_norm: bool = False

    ssd_num_heads: int = 8
    ssd_head_dim: int = 128
    ssd_state_size: int = 128
    ssd_num_groups: int = 1
    ssd_chunk_size: int = 256
    ssd_rope: str | None = None
    ssd_use_rope: bool | None = None
    ssd_use_conv: bool = False
    ssd_conv_kernel: int = 4

    mamba2_expand: int = 2
    mamba2_head_dim: int = 64
    mamba2_state_size: int = 128
    mamba2_num_groups: int = 1
    mamba2_conv_kernel: int = 4
    mamba2_chunk_size: int = 256
    mamba2_conv_bias: bool = True
    mamba2_bias: bool = False
    mamba2_norm_groups: int | None = None

    intermediate_size: int = 2048
    cdmoe_num_experts: int = 16384
    cdmoe_num_heads: int = 4
    cdmoe_top_k: int = 8
    cdmoe_retrieval_dim: int = 64
    moe_num_experts: int = 16
    moe_top_k: int = 2
    moe_intermediate_size: int = 512
    moe_shared_intermediate_size: int = 0
    moe_implementation: str = "grouped"
    balance_loss_weight: float | int = 0.01

    ssd_backend: str = "auto"
    cdmoe_backend: str = "auto"
    dma_decode_backend: str = "auto"

    residual_scale: bool = False
    fused_loss: bool = True
    value_checks: bool = True
    prefill_chunk_tokens: int | None = 8192
    graphed_decoding: bool | None = None
    static_attention_cache: bool | None = None
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        legacy = kwargs.pop("layer_types", None)
        if legacy is not None:
            require(self.mixer_types is None or list(self.mixer_types) == list(legacy), "layer_types", legacy,
                    f"the alias of mixer_types, which is already {self.mixer_types!r}: give one of the two")
            require(isinstance(legacy, (list, tuple)) and all(isinstance(t, str) for t in legacy), "layer_types",
                    legacy, "None or a list of strings (the alias of mixer_types)")
            self.mixer_types = legacy
        _check_field_types(self)
        require(self.num_hidden_layers >= 1, "num_hidden_layers", self.num_hidden_layers, "must be >= 1")
        require(self.attention_period >= 1, "attention_period", self.attention_period, "must be >= 1")
        require(self.attention_layer_type in LAYER_TYPES, "attention_layer_type", self.attention_layer_type,
                f"one of {LAYER_TYPES}")
        require(self.recurrent_layer_type in LAYER_TYPES, "recurrent_layer_type", self.recurrent_layer_type,
                f"one of {LAYER_TYPES}")
        require(self.default_ffn_type in FFN_TYPES, "default_ffn_type", self.default_ffn_type, f"one of {FFN_TYPES}")
        if self.mixer_types is None:
            self.mixer_types = default_layer_types(self.num_hidden_layers, self.attention_period,
                                                   self.attention_layer_type, self.recurrent_layer_type)
        if self.ffn_types is None:
            self.ffn_types = [self.default_ffn_type] * self.num_hidden_layers
        self._resolve_ssd_rope()
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and self.num_attention_heads >= 1:
            self.head_dim = self.hidden_size // self.num_attention_heads
        self._validate(mixer_name="mixer_types" if legacy is None else "layer_types")
        super().__post_init__(**kwargs)

    def _resolve_ssd_rope(self) -> None:
        """Fill ``ssd_rope`` and ``ssd_use_rope`` from each other (both None: ``"fixed"``)."""
        if self.ssd_rope is None:
            self.ssd_rope = "none" if self.ssd_use_rope is False else "fixed"
        require(self.ssd_rope in SSD_ROPE_MODES, "ssd_rope", self.ssd_rope, f"one of {SSD_ROPE_MODES}")
        rotates = self.ssd_rope != "none"
        require(self.ssd_use_rope is None or self.ssd_use_rope == rotates, "ssd_use_rope", self.ssd_use_rope,
                f"None or {rotates} with ssd_rope={self.ssd_rope!r}")
        self.ssd_use_rope = rotates

    @property
    def layer_types(self) -> list[str]:
        """Alias of ``mixer_types`` (the sequence mixer of each layer)."""
        return self.mixer_types

    @layer_types.setter
    def layer_types(self, value: list[str]) -> None:
        self.mixer_types = value

    def validate_layer_type(self):
        """Replaces HF's check of ``layer_types``/``mlp_layer_types`` (attention kinds, which Cheems does not
        use): ``mixer_types`` and ``ffn_types`` are checked in ``__post_init__``."""

    def _validate(self, mixer_name: str = "mixer_types") -> None:
        """Raise ``ValueError`` naming the first bad argument (``mixer_name``: how the caller spelled mixer_types)."""
        n = self.num_hidden_layers
        for name in ("vocab_size", "hidden_size"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        require(isinstance(self.mixer_types, list) and len(self.mixer_types) == n, mixer_name, self.mixer_types,
                f"a list of num_hidden_layers={n} entries")
        require(isinstance(self.ffn_types, list) and len(self.ffn_types) == n, "ffn_types", self.ffn_types,
                f"a list of num_hidden_layers={n} entries")
        for t in self.mixer_types:
            require(t in LAYER_TYPES, mixer_name, self.mixer_types, f"entries from {LAYER_TYPES}")
        for t in self.ffn_types:
            require(t in FFN_TYPES, "ffn_types", self.ffn_types, f"entries from {FFN_TYPES}")
        require(self.rms_norm_eps > 0, "rms_norm_eps", self.rms_norm_eps, "must be > 0")
        require(self.initializer_range > 0, "initializer_range", self.initializer_range, "must be > 0")
        require(self.prefill_chunk_tokens is None or self.prefill_chunk_tokens >= 1, "prefill_chunk_tokens",
                self.prefill_chunk_tokens, "None or an integer >= 1")
        require(self.static_attention_cache in (None, True, False), "static_attention_cache",
                self.static_attention_cache, "None, True or False")
        require(self.balance_loss_weight >= 0, "balance_loss_weight", self.balance_loss_weight, "must be >= 0")
        require(self.ssd_backend in BACKENDS, "ssd_backend", self.ssd_backend, f"one of {BACKENDS}")
        require(self.cdmoe_backend in MIXTURE_LAYER_BACKENDS, "cdmoe_backend", self.cdmoe_backend,
                f"one of {MIXTURE_LAYER_BACKENDS}")
        require(self.dma_decode_backend in LAYER_BACKENDS, "dma_decode_backend", self.dma_decode_backend,
                f"one of {LAYER_BACKENDS}")
        for tok in ("pad_token_id", "bos_token_id"):
            v = getattr(self, tok)
            require(v is None or 0 <= v < self.vocab_size, tok, v, f"None or in [0, vocab_size={self.vocab_size})")
        used = set(self.mixer_types)
        if used & {"attn", "dma"}:
            self._validate_attention()
        if "ssd" in used:
            self._validate_ssd()
        if "mamba2" in used:
            self._validate_mamba2()
        ffns = set(self.ffn_types)
        if ffns & {"mlp", "cdmoe"}:
            require(self.intermediate_size >= 1, "intermediate_size", self.intermediate_size, "must be >= 1")
        if "cdmoe" in ffns:
            self._validate_cdmoe()
        if "moe" in ffns:
            self._validate_moe()

    def _validate_attention(self) -> None:
        h, hkv = self.num_attention_heads, self.num_key_value_heads
        require(h >= 1, "num_attention_heads", h, "must be >= 1")
        require(hkv >= 1 and h % hkv == 0, "num_key_value_heads", hkv,
                f"must be >= 1 and divide num_attention_heads={h}")
        require(self.head_dim >= 2 and self.head_dim % 2 == 0, "head_dim", self.head_dim,
                "must be a positive even number (RoPE)")
        require(self.rope_theta > 0, "rope_theta", self.rope_theta, "must be > 0")
        if "dma" in self.mixer_types:
            require(self.keep_window is None or self.keep_window >= 1, "keep_window", self.keep_window,
                    "None or >= 1")
            require(self.dma_mask_form in DMA_MASK_FORMS, "dma_mask_form", self.dma_mask_form,
                    f"one of {DMA_MASK_FORMS}")

    def _validate_ssd(self) -> None:
        for name in ("ssd_num_heads", "ssd_head_dim", "ssd_state_size", "ssd_num_groups", "ssd_conv_kernel"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        require(self.ssd_num_heads % self.ssd_num_groups == 0, "ssd_num_groups", self.ssd_num_groups,
                f"must divide ssd_num_heads={self.ssd_num_heads}")
        c = self.ssd_chunk_size
        require(c >= 1 and c & (c - 1) == 0, "ssd_chunk_size", c, "a power of two")
        if self.ssd_rope != "none":
            require(self.ssd_state_size % 2 == 0, "ssd_state_size", self.ssd_state_size,
                    f"must be even when ssd_rope={self.ssd_rope!r} (rotary on B and C)")
        if self.ssd_rope == "fixed":
            require(self.rope_theta > 0, "rope_theta", self.rope_theta, "must be > 0")

    def _validate_mamba2(self) -> None:
        for name in ("mamba2_expand", "mamba2_head_dim", "mamba2_state_size", "mamba2_num_groups",
                     "mamba2_conv_kernel"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        inner = self.mamba2_expand * self.hidden_size
        require(inner % self.mamba2_head_dim == 0, "mamba2_head_dim", self.mamba2_head_dim,
                f"must divide mamba2_expand * hidden_size = {inner}")
        heads = inner // self.mamba2_head_dim
        require(heads % self.mamba2_num_groups == 0, "mamba2_num_groups", self.mamba2_num_groups,
                f"must divide the number of Mamba2 heads {heads}")
        c = self.mamba2_chunk_size
        require(c >= 1 and c & (c - 1) == 0, "mamba2_chunk_size", c, "a power of two")

    def _validate_cdmoe(self) -> None:
        n = self.cdmoe_num_experts
        root = math.isqrt(n) if n >= 1 else 0
        require(n >= 1 and root * root == n, "cdmoe_num_experts", n,
                "a perfect square (product keys use sqrt(N) sub-keys)")
        require(self.cdmoe_num_heads >= 1, "cdmoe_num_heads", self.cdmoe_num_heads, "must be >= 1")
        require(1 <= self.cdmoe_top_k <= root, "cdmoe_top_k", self.cdmoe_top_k,
                f"in [1, sqrt(cdmoe_num_experts)={root}]")
        require(self.cdmoe_retrieval_dim >= 2 and self.cdmoe_retrieval_dim % 2 == 0, "cdmoe_retrieval_dim",
                self.cdmoe_retrieval_dim, "a positive even number (two halves of product keys)")

    def _validate_moe(self) -> None:
        require(self.moe_num_experts >= 1, "moe_num_experts", self.moe_num_experts, "must be >= 1")
        require(1 <= self.moe_top_k <= self.moe_num_experts, "moe_top_k", self.moe_top_k,
                f"in [1, moe_num_experts={self.moe_num_experts}]")
        require(self.moe_intermediate_size >= 1, "moe_intermediate_size", self.moe_intermediate_size, "must be >= 1")
        require(self.moe_shared_intermediate_size >= 0, "moe_shared_intermediate_size",
                self.moe_shared_intermediate_size, "must be >= 0 (0 = no shared expert)")
        require(self.moe_implementation in MOE_IMPLEMENTATIONS, "moe_implementation", self.moe_implementation,
                f"one of {MOE_IMPLEMENTATIONS}")
