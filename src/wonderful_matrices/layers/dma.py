"""Dynamic Mask Attention layer: GQA projections, RoPE on q and k, a per-key bias from the value states, the
``dynamic_mask_attention`` op, and a bounded KV cache for decoding with a window.

Bias (``mask_form``):
* ``"gate"`` (default): ``bias = -exp(A_log) · softplus(dt_proj(v))`` per KV head. ``exp(bias)`` is the paper's
  multiplicative gate ``exp(A·softplus(δ))`` in (0, 1] on each key's attention weight; the bias is bounded above
  by 0, so it cannot overflow.
* ``"doge"``: the published Doge formula, ``bias = exp(A · softplus(dt_proj(v)))`` with a raw parameter ``A``
  (HF transformers' ``DogeAttention``), for converting Doge checkpoints only: it overflows to INF when ``A > 0``
  grows, which is why it is never the default.
* ``"none"``: no learned mask, ``bias = 0`` (no ``dt_proj``, no ``A``): with ``keep_window = w`` each query keeps
  its ``w`` latest keys (ties go to the later key) — sliding-window attention, the positional baseline of the
  learned mask.

Cache (``state``, a dict the model owns per layer): the layout of :mod:`..ops.dma.cache` — ``"key"``,
``"value"``, ``"bias"``, ``"position"`` — holding at most ``keep_window`` keys per KV head (docs/design.md,
fact 2); without a window it grows like plain attention. A one-token call without autograd (generation) is the
op's :class:`~wonderful_matrices.ops.dma.DecodeStep` (``self.decoder``; its ``backend`` is ``decode_backend``),
which updates the cache tensors in place: the layer treats the tensors in ``state`` as its own.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import is_int, require
from ..ops import dynamic_mask_attention
from ..ops.common import trusted_values
from ..ops.dma import DecodeStep, cached_in_order, replace_lowest_and_attend, step_inputs, store
from ..ops.dma.weights import dynamic_mask_attention_weights
from .norm import RMSNorm
from .rotary import RotaryEmbedding, RotaryTables, apply_rotary

MASK_FORMS = ("gate", "doge", "none")


class DynamicMaskAttention(nn.Module):
    """Dynamic mask attention (docs/design.md, "DMA") as a sequence mixer.

    Args:
        hidden_size: model width.
        num_heads: query heads ``hq``.
        num_kv_heads: key/value heads ``hkv`` (``hq % hkv == 0``); the bias is per KV head.
        head_dim: ``d`` (even: RoPE rotates all of it).
        keep_window: ``None`` or ``w >= 1``: each query keeps the ``w`` visible keys with the largest bias
            (ties to the later key); also bounds the decoding cache to ``w`` keys per KV head.
        rope_theta: RoPE base.
        mask_form: ``"gate"`` (parameter ``A_log``), ``"doge"`` (parameter ``A``, checkpoint conversion) or ``"none"``
            (no mask parameters: sliding-window attention with ``keep_window``).
        attention_bias: biases on q/k/v/o projections (``dt_proj`` always has one).
        layer_idx: index of the layer in the model (informational).
        qk_norm: RMSNorm over ``head_dim`` on q and k before RoPE (``q_norm``/``k_norm``, as HF Doge has).
        rms_norm_eps: epsilon of those norms.

        decode_backend: the single-token generation step (:class:`~wonderful_matrices.ops.dma.DecodeStep`):
            ``"triton"`` (fused kernels; float16/bfloat16/float32, ``head_dim <= 256``, CUDA or
            ``TRITON_INTERPRET=1``), ``"torch"``, or ``"auto"`` (triton where supported; if the kernels raise,
            logged once, torch from then on for this layer).

    Parameters use HF names: ``q_proj, k_proj, v_proj, o_proj, dt_proj, A_log | A, q_norm, k_norm``.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 keep_window: int | None = None, rope_theta: float = 10000.0, mask_form: str = "gate",
                 attention_bias: bool = False, layer_idx: int | None = None, qk_norm: bool = False,
                 rms_norm_eps: float = 1e-6, decode_backend: str = "auto"):
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("num_heads", num_heads),
                            ("num_kv_heads", num_kv_heads), ("head_dim", head_dim)):
            require(is_int(value) and value >= 1, name, value, "an int >= 1")
        require(num_heads % num_kv_heads == 0, "num_heads", num_heads, f"a multiple of num_kv_heads={num_kv_heads}")
        require(head_dim % 2 == 0, "head_dim", head_dim, "even (RoPE rotates pairs)")
        require(keep_window is None or (is_int(keep_window)
                                        and keep_window >= 1), "keep_window", keep_window, "None or an int >= 1")
        require(mask_form in MASK_FORMS, "mask_form", mask_form, f"one of {MASK_FORMS}")
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        self.keep_window = keep_window
        self.mask_form = mask_form
        self.layer_idx = layer_idx
        kv_dim = num_kv_heads * head_dim
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=attention_bias)
        self.k_proj = nn.Linear(hidden_size, kv_dim, bias=attention_bias)
        self.v_proj = nn.Linear(hidden_size, kv_dim, bias=attention_bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=attention_bias)
        if mask_form != "none":
            self.dt_proj = nn.Linear(kv_dim, num_kv_heads, bias=True)
        if mask_form == "gate":
            self.A_log = nn.Parameter(torch.zeros(num_kv_heads))  # A = -exp(A_log) = -1 at init
        elif mask_form == "doge":
            self.A = nn.Parameter(torch.zeros(num_kv_heads))
        self.q_norm = RMSNorm(head_dim, rms_norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, rms_norm_eps) if qk_norm else None
        self.rotary = RotaryEmbedding(head_dim, rope_theta)
        self.decoder = DecodeStep(decode_backend)

    def key_bias(self, value_states: torch.Tensor) -> torch.Tensor:
        """value_states (b, l, hkv·d) -> bias (b, l, hkv) float32 (``mask_form`` decides the formula).

        Computed in float64 and rounded once: equal ``dt_proj`` outputs (frequent in bf16) must give equal biases
        wherever they are computed, for the window's tie rule (the later key wins) to hold — in float32 the CPU's
        softplus rounded an element by where it sat in the tensor, and the fused decoding step's own formula
        (``ops/dma/step_input_kernels.py``, float64 too) differed by an ulp."""
        if self.mask_form == "none":
            return value_states.new_zeros(*value_states.shape[:-1], self.num_kv_heads, dtype=torch.float32)
        dt = F.softplus(self.dt_proj(value_states).double())
        if self.mask_form == "gate":
            return (-torch.exp(self.A_log.double()) * dt).float()
        return torch.exp(self.A.double() * dt).float()

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None, state: dict | None = None,
                seq_idx: torch.Tensor | None = None, rotary_tables: RotaryTables | None = None) -> torch.Tensor:
        """hidden_states (b, l, hidden), position_ids (b, l) long, attention_mask (b, l) (1 = token,
        0 = padding) or None, state (dict or None; see the module docstring), seq_idx (b, l) document ids of
        packed rows or None (not with a state: a query then sees only its own document's keys, and the window
        is chosen among those), rotary_tables (the forward's :class:`RotaryTables` of these ``position_ids``,
        shared by a model's layers) or None (the layer builds its own) -> (b, l, hidden)."""
        if not (hidden_states.dim() == 3 and hidden_states.shape[-1] == self.hidden_size
                and position_ids.shape == hidden_states.shape[:2]
                and (attention_mask is None or attention_mask.shape == hidden_states.shape[:2])
                and (seq_idx is None or state is None)):
            self._check_inputs(hidden_states, position_ids, attention_mask, state, seq_idx)
        b, l, _ = hidden_states.shape
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        fused = self._step_inputs(hidden_states, position_ids, attention_mask, state)
        if fused is not None:  # a decoding token on the fused kernels: inputs, attention and cache write
            out = self.decoder.fused_step(*fused, state, self.keep_window)
            if out is not None:  # (None: the attention kernels raised under "auto"; the torch path below)
                return self.o_proj(out.view(b, hq * d))[:, None]  # (b, d) rows: two ATen ops for the linear
        q, k, v, bias = self._project(hidden_states, position_ids, attention_mask, rotary_tables)
        if seq_idx is not None:  # outside trusted_values: an explicit seq_idx of the caller is checked by the op
            out = dynamic_mask_attention(q, k, v, bias, keep_window=self.keep_window, causal=True, seq_idx=seq_idx)
            return self.o_proj(out.reshape(b, l, hq * d))
        position = position_ids[..., None].expand(b, l, hkv).contiguous()
        with trusted_values():  # the bias is computed here, not user input: no device sync per call to check it
            if state is not None and "key" in state and l == 1 and not torch.is_grad_enabled():
                out = self.decoder.step(q, k, v, bias, position, state, self.keep_window)
            elif (state is not None and "key" in state and l == 1 and self.keep_window is not None
                  and state["key"].shape[1] >= self.keep_window):
                out = replace_lowest_and_attend(q, k, v, bias, position, state)
            else:
                out = self._attend(q, k, v, bias, position, state)
        return self.o_proj(out.reshape(b, l, hq * d))

    def _check_inputs(self, hidden_states, position_ids, attention_mask, state, seq_idx) -> None:
        """The argument checks of :meth:`forward`, one error each (run when its one-expression check fails)."""
        require(hidden_states.dim() == 3 and hidden_states.shape[-1] == self.hidden_size, "hidden_states.shape",
                tuple(hidden_states.shape), f"(batch, seq, {self.hidden_size})")
        b, l, _ = hidden_states.shape
        require(tuple(position_ids.shape) == (b, l), "position_ids.shape", tuple(position_ids.shape), f"{(b, l)}")
        require(attention_mask is None or tuple(attention_mask.shape) == (b, l), "attention_mask.shape",
                None if attention_mask is None else tuple(attention_mask.shape), f"{(b, l)}")
        require(seq_idx is None or state is None, "seq_idx", "a tensor with a cache state",
                "None when decoding with a cache (packed rows are for training and scoring)")

    def _step_inputs(self, hidden_states, position_ids, attention_mask, state):
        """For a decoding token that the decoder's Triton kernels will attend (one token, a cache, no padding
        mask, no autograd): ``(q, k, v, bias, position)`` as :meth:`_project` and the cache layout give them, from
        the projections by one launch (:func:`~wonderful_matrices.ops.dma.step_inputs`); else None."""
        b, l, _ = hidden_states.shape
        if (state is None or "key" not in state or l != 1 or attention_mask is not None or torch.is_grad_enabled()
                or self.mask_form == "none"
                or not self.decoder.uses_kernels(hidden_states.dtype, hidden_states.device, self.head_dim, state)):
            return None
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        x = hidden_states[:, 0]  # (b, hidden) rows: a linear on a 2-D input is two ATen ops, on (b, 1, hidden) four
        q = self.q_proj(x).view(b, hq, d)
        k = self.k_proj(x).view(b, hkv, d)
        v_flat = self.v_proj(x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        try:
            q, k, bias, position = step_inputs(
                q, k, self.dt_proj(v_flat), position_ids[:, 0],
                self.rotary.float32_frequencies(hidden_states.device),
                self.A_log if self.mask_form == "gate" else self.A, self.mask_form)
        except Exception as exc:  # noqa: BLE001 - under "auto": the torch path from now on (re-raised under "triton")
            self.decoder.give_up(exc)
            return None
        return q, k, v_flat.view(b, 1, hkv, d), bias, position

    def _project(self, hidden_states, position_ids, attention_mask, rotary_tables=None):
        """q (b, l, hq, d), k, v (b, l, hkv, d) (q, k rotated; tables from ``rotary_tables`` when given), bias
        (b, l, hkv) float32 (-inf at padding)."""
        b, l, _ = hidden_states.shape
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(hidden_states).view(b, l, hq, d)
        k = self.k_proj(hidden_states).view(b, l, hkv, d)
        v_flat = self.v_proj(hidden_states)
        v = v_flat.view(b, l, hkv, d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        tables = RotaryTables(position_ids) if rotary_tables is None else rotary_tables
        cos, sin = tables(self.rotary, torch.float64 if q.dtype == torch.float64 else torch.float32)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        bias = self.key_bias(v_flat)
        if attention_mask is not None:
            bias = bias.masked_fill(~attention_mask.bool()[..., None], float("-inf"))
        return q, k, v, bias

    def attention_weights(self, hidden_states: torch.Tensor, position_ids: torch.Tensor,
                          attention_mask: torch.Tensor | None = None, state: dict | None = None,
                          rotary_tables: RotaryTables | None = None) -> torch.Tensor:
        """The attention probabilities of a forward with the same arguments, computed densely; ``state`` is only
        read (call this before the forward that updates it).

        Returns ``(b, num_heads, l, n)`` float32 over ``n`` keys: those cached in ``state`` (at most
        ``keep_window``, in position order), then the ``l`` new ones.
        """
        q, k, _, bias = self._project(hidden_states, position_ids, attention_mask, rotary_tables)
        if state is not None and "key" in state:
            cached_key, _, cached_bias, _ = cached_in_order(state, self.keep_window)
            k, bias = torch.cat([cached_key, k], dim=1), torch.cat([cached_bias, bias], dim=1)
        return dynamic_mask_attention_weights(q, k, bias, keep_window=self.keep_window, causal=True)

    @property
    def decode_backend(self) -> str:
        """The backend of the one-token generation step (a constructor argument)."""
        return self.decoder.backend

    def _attend(self, q, k, v, bias, position, state):
        """Attention over (position-ordered cache +) new keys; then the cache keeps what stays selectable."""
        if state is not None and "key" in state:
            k, v, bias, position = (torch.cat([c, x], dim=1) for c, x in
                                    zip(cached_in_order(state, self.keep_window), (k, v, bias, position)))
        out = dynamic_mask_attention(q, k, v, bias, keep_window=self.keep_window, causal=True)
        if state is not None:
            store(state, k, v, bias, position, self.keep_window)
        return out
