"""Dynamic Mask Attention layer: GQA projections, RoPE on q and k, a per-key bias from the value states, the
``dynamic_mask_attention`` op, and a bounded KV cache for decoding with a window.

Bias (``mask_form``):
* ``"gate"`` (default): ``bias = -exp(A_log) · softplus(dt_proj(v))`` per KV head. ``exp(bias)`` is the paper's
  multiplicative gate ``exp(A·softplus(δ))`` in (0, 1] on each key's attention weight; the bias is bounded above
  by 0, so it cannot overflow.
* ``"doge"``: the published Doge formula, ``bias = exp(A · softplus(dt_proj(v)))`` with a raw parameter ``A``
  (HF transformers' ``DogeAttention``), for converting Doge checkpoints only: it overflows to INF when ``A > 0``
  grows, which is why it is never the default.

Cache (``state``, a dict the model owns per layer): ``"key"``, ``"value"`` ``(b, n, hkv, d)`` (keys post-RoPE),
``"bias"`` ``(b, n, hkv)`` float32 (``-inf`` = padding / empty), ``"position"`` ``(b, n, hkv)`` long (the
position id of each slot, for ties; ``-1`` for an empty slot). With ``keep_window = w`` the cache keeps, per
batch row and KV head, only the keys a future query can still select — the top ``w`` by ``(bias, position)`` of
everything seen — so ``n <= w`` always (DESIGN.md, fact 2); heads may hold different positions in one slot.
Without a window it grows like plain attention.

Decoding one token without autograd (generation) is O(w) work with a window (O(n) without), runs a fixed
sequence of kernels with no host synchronisation, and allocates nothing in the steady state: the cache tensors
are prefix views of preallocated buffers (``w + 1`` slots with a window, geometric growth without), updated in
place. The layer treats the tensors in ``state`` as its own (it writes into their buffers). On CUDA that step
is two fused Triton launches (:mod:`..ops.dma.decode`: eviction, insertion and split-K attention); the torch
path (CPU, float64, or ``decode_backend = "torch"``) is its oracle.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import dynamic_mask_attention
from ..ops.common import triton_usable, trusted_values
from ..ops.dma import selectable_keys
from ..ops.dma.weights import dynamic_mask_attention_weights
from .norm import RMSNorm
from .rotary import RotaryEmbedding, apply_rotary

MASK_FORMS = ("gate", "doge")
DECODE_BACKENDS = ("auto", "triton", "torch")
_log = logging.getLogger(__name__)
_fused_decode_failed = False  # set when the Triton decode step raised once under "auto": torch from then on


def _check(condition: bool, argument: str, value, allowed: str) -> None:
    if not condition:
        raise ValueError(f"{argument}={value!r} is not allowed: {allowed}")


class DynamicMaskAttention(nn.Module):
    """Dynamic mask attention (DESIGN.md, "DMA") as a sequence mixer.

    Args:
        hidden_size: model width.
        num_heads: query heads ``hq``.
        num_kv_heads: key/value heads ``hkv`` (``hq % hkv == 0``); the bias is per KV head.
        head_dim: ``d`` (even: RoPE rotates all of it).
        keep_window: ``None`` or ``w >= 1``: each query keeps the ``w`` visible keys with the largest bias
            (ties to the later key); also bounds the decoding cache to ``w`` keys per KV head.
        rope_theta: RoPE base.
        mask_form: ``"gate"`` (parameter ``A_log``) or ``"doge"`` (parameter ``A``, checkpoint conversion).
        attention_bias: biases on q/k/v/o projections (``dt_proj`` always has one).
        layer_idx: index of the layer in the model (informational).
        qk_norm: RMSNorm over ``head_dim`` on q and k before RoPE (``q_norm``/``k_norm``, as HF Doge has).
        rms_norm_eps: epsilon of those norms.

    Parameters use HF names: ``q_proj, k_proj, v_proj, o_proj, dt_proj, A_log | A, q_norm, k_norm``.

    Attribute ``decode_backend`` (default ``"auto"``) picks the single-token generation step: ``"triton"`` (the
    fused kernels of :mod:`..ops.dma.decode`; float16/bfloat16/float32, ``head_dim <= 256``, CUDA or
    ``TRITON_INTERPRET=1``), ``"torch"``, or ``"auto"`` (triton where supported: CUDA, or any device under
    ``TRITON_INTERPRET=1``; if the kernels raise, logged once, torch from then on).
    """

    decode_backend = "auto"

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 keep_window: int | None = None, rope_theta: float = 10000.0, mask_form: str = "gate",
                 attention_bias: bool = False, layer_idx: int | None = None, qk_norm: bool = False,
                 rms_norm_eps: float = 1e-6):
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("num_heads", num_heads),
                            ("num_kv_heads", num_kv_heads), ("head_dim", head_dim)):
            _check(isinstance(value, int) and value >= 1, name, value, "an int >= 1")
        _check(num_heads % num_kv_heads == 0, "num_heads", num_heads, f"a multiple of num_kv_heads={num_kv_heads}")
        _check(head_dim % 2 == 0, "head_dim", head_dim, "even (RoPE rotates pairs)")
        _check(keep_window is None or (isinstance(keep_window, int) and not isinstance(keep_window, bool)
                                       and keep_window >= 1), "keep_window", keep_window, "None or an int >= 1")
        _check(mask_form in MASK_FORMS, "mask_form", mask_form, f"one of {MASK_FORMS}")
        self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim = hidden_size, num_heads, num_kv_heads, head_dim
        self.keep_window = keep_window
        self.mask_form = mask_form
        self.layer_idx = layer_idx
        kv_dim = num_kv_heads * head_dim
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=attention_bias)
        self.k_proj = nn.Linear(hidden_size, kv_dim, bias=attention_bias)
        self.v_proj = nn.Linear(hidden_size, kv_dim, bias=attention_bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=attention_bias)
        self.dt_proj = nn.Linear(kv_dim, num_kv_heads, bias=True)
        if mask_form == "gate":
            self.A_log = nn.Parameter(torch.zeros(num_kv_heads))  # A = -exp(A_log) = -1 at init
        else:
            self.A = nn.Parameter(torch.zeros(num_kv_heads))
        self.q_norm = RMSNorm(head_dim, rms_norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, rms_norm_eps) if qk_norm else None
        self.rotary = RotaryEmbedding(head_dim, rope_theta)

    def key_bias(self, value_states: torch.Tensor) -> torch.Tensor:
        """value_states (b, l, hkv·d) -> bias (b, l, hkv) float32 (``mask_form`` decides the formula)."""
        dt = F.softplus(self.dt_proj(value_states).float())
        if self.mask_form == "gate":
            return -torch.exp(self.A_log.float()) * dt
        return torch.exp(self.A.float() * dt)

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None, state: dict | None = None,
                seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states (b, l, hidden), position_ids (b, l) long, attention_mask (b, l) (1 = token,
        0 = padding) or None, state (dict or None; see the module docstring), seq_idx (b, l) document ids of
        packed rows or None (not with a state: a query then sees only its own document's keys, and the window
        is chosen among those) -> (b, l, hidden)."""
        _check(hidden_states.dim() == 3 and hidden_states.shape[-1] == self.hidden_size, "hidden_states.shape",
               tuple(hidden_states.shape), f"(batch, seq, {self.hidden_size})")
        b, l, _ = hidden_states.shape
        _check(tuple(position_ids.shape) == (b, l), "position_ids.shape", tuple(position_ids.shape), f"{(b, l)}")
        _check(attention_mask is None or tuple(attention_mask.shape) == (b, l), "attention_mask.shape",
               None if attention_mask is None else tuple(attention_mask.shape), f"{(b, l)}")
        _check(seq_idx is None or state is None, "seq_idx", "a tensor with a cache state",
               "None when decoding with a cache (packed rows are for training and scoring)")
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v, bias = self._project(hidden_states, position_ids, attention_mask)
        if seq_idx is not None:  # outside trusted_values: an explicit seq_idx of the caller is checked by the op
            out = dynamic_mask_attention(q, k, v, bias, keep_window=self.keep_window, causal=True, seq_idx=seq_idx)
            return self.o_proj(out.reshape(b, l, hq * d))
        position = position_ids[..., None].expand(b, l, hkv).contiguous()
        with trusted_values():  # the bias is computed here, not user input: no device sync per call to check it
            if state is not None and "key" in state and l == 1 and not torch.is_grad_enabled():
                out = self._decode_step(q, k, v, bias, position, state)
            elif (state is not None and "key" in state and l == 1 and self.keep_window is not None
                  and state["key"].shape[1] >= self.keep_window):
                out = self._decode_full_cache(q, k, v, bias, position, state)
            else:
                out = self._attend(q, k, v, bias, position, state)
        return self.o_proj(out.reshape(b, l, hq * d))

    def _project(self, hidden_states, position_ids, attention_mask):
        """q (b, l, hq, d), k, v (b, l, hkv, d) (q, k rotated), bias (b, l, hkv) float32 (-inf at padding)."""
        b, l, _ = hidden_states.shape
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(hidden_states).view(b, l, hq, d)
        k = self.k_proj(hidden_states).view(b, l, hkv, d)
        v_flat = self.v_proj(hidden_states)
        v = v_flat.view(b, l, hkv, d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = self.rotary(position_ids, torch.float64 if q.dtype == torch.float64 else torch.float32)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        bias = self.key_bias(v_flat)
        if attention_mask is not None:
            bias = bias.masked_fill(~attention_mask.bool()[..., None], float("-inf"))
        return q, k, v, bias

    def attention_weights(self, hidden_states: torch.Tensor, position_ids: torch.Tensor,
                          attention_mask: torch.Tensor | None = None, state: dict | None = None) -> torch.Tensor:
        """The attention probabilities of a forward with the same arguments, computed densely; ``state`` is only
        read (call this before the forward that updates it).

        Returns ``(b, num_heads, l, n)`` float32 over ``n`` keys: those cached in ``state`` (at most
        ``keep_window``, in position order), then the ``l`` new ones.
        """
        q, k, _, bias = self._project(hidden_states, position_ids, attention_mask)
        if state is not None and "key" in state:
            cached_key, cached_bias = state["key"], state["bias"]
            if self.keep_window is not None:
                order = state["position"].argsort(dim=1, stable=True)
                cached_key = cached_key.gather(1, order[..., None].expand_as(cached_key))
                cached_bias = cached_bias.gather(1, order)
            k, bias = torch.cat([cached_key, k], dim=1), torch.cat([cached_bias, bias], dim=1)
        return dynamic_mask_attention_weights(q, k, bias, keep_window=self.keep_window, causal=True)

    def _attend(self, q, k, v, bias, position, state):
        """Attention over (position-ordered cache +) new keys; then the cache keeps what stays selectable."""
        if state is not None and "key" in state:
            cached = [state[name] for name in ("key", "value", "bias", "position")]
            if self.keep_window is not None:  # in-place eviction may have left the slots out of position order
                order = state["position"].argsort(dim=1, stable=True)
                cached = [t.gather(1, order.view(order.shape + (1,) * (t.dim() - 3)).expand_as(t)) for t in cached]
            k, v, bias, position = (torch.cat([c, x], dim=1) for c, x in zip(cached, (k, v, bias, position)))
        out = dynamic_mask_attention(q, k, v, bias, keep_window=self.keep_window, causal=True)
        if state is not None:
            if self.keep_window is not None and k.shape[1] > self.keep_window:
                keep = selectable_keys(bias, self.keep_window)
                k = k.gather(1, keep[..., None].expand(-1, -1, -1, k.shape[-1]))
                v = v.gather(1, keep[..., None].expand(-1, -1, -1, v.shape[-1]))
                bias, position = bias.gather(1, keep), position.gather(1, keep)
            state.update(key=k, value=v, bias=bias, position=position)
        return out

    def _decode_full_cache(self, q, k, v, bias, position, state):
        """One new token with ``w`` cached keys, while a graph is recorded (no in-place writes): of the ``w + 1``
        keys the lowest ranked (smallest bias, ties to the earlier position) is never selected again; it is
        replaced (or the new key dropped) and the query attends to the ``w`` that remain — its top-``w``."""
        all_bias = torch.cat([state["bias"], bias], dim=1)  # (b, w+1, hkv)
        all_pos = torch.cat([state["position"], position], dim=1)
        drop = _lowest_ranked(all_bias, all_pos)  # (b, 1, hkv) slot index in [0, w]
        w = state["bias"].shape[1]
        insert = drop < w
        slot = drop.clamp_max(w - 1)

        def put(cached, new):
            idx = slot.view(slot.shape + (1,) * (cached.dim() - 3)).expand_as(new)
            src = torch.where(insert.view(idx.shape[:3] + (1,) * (cached.dim() - 3)), new, cached.gather(1, idx))
            return cached.scatter(1, idx, src)

        state.update(key=put(state["key"], k), value=put(state["value"], v), bias=put(state["bias"], bias),
                     position=put(state["position"], position))
        return dynamic_mask_attention(q, state["key"], state["value"], state["bias"], keep_window=None, causal=True)

    def _decode_step(self, q, k, v, bias, position, state):
        """One new token, no graph recorded (generation): O(w) work (O(n) without a window), no host sync.

        The cache tensors are prefix views ``buffer[:, :n]`` of preallocated buffers (see :func:`_buffers`), so
        ``state["key"].shape[1]`` stays the number of slots held. With a window the cache is first widened once
        to ``w`` slots (empty slots have bias ``-inf``); the buffers have one spare slot ``w``: the new key is
        written there, the lowest ranked of the ``w + 1`` slots is found on the device, and the new key is
        scattered into that slot (into the spare one when the new key itself is the lowest) — a fixed number of
        small kernels, the same shapes every step. Without a window the new key is written at slot ``n`` of
        buffers that grow geometrically (one copy per growth). With the fused Triton step (``decode_backend``)
        the same happens in two launches (:func:`..ops.dma.decode.decode_step`), the spare slot unused."""
        names = ("key", "value", "bias", "position")
        new = dict(key=k, value=v, bias=bias, position=position)
        w = self.keep_window
        n = state["key"].shape[1]
        fused = self._use_fused_decode(q, state)
        if w is None:
            bufs = _buffers(state, n + 1, grow=True)
            out = self._fused_decode(q, new, bufs, n, evict=False) if fused else None
            if out is not None:
                for name in names:
                    state[name] = bufs[name][:, :n + 1]
                return out
            for name in names:
                bufs[name][:, n:n + 1].copy_(new[name])
                state[name] = bufs[name][:, :n + 1]
        else:
            bufs = _buffers(state, w + 1, grow=False)
            if n < w:  # widen once to w slots: empty slots are never attended and are evicted first
                for name in names:
                    bufs[name][:, n:w].fill_(float("-inf") if name == "bias" else -1 if name == "position" else 0)
            out = self._fused_decode(q, new, bufs, w, evict=True) if fused else None
            if out is not None:
                for name in names:
                    state[name] = bufs[name][:, :w]
                return out
            bufs["bias"][:, w:].copy_(bias)
            bufs["position"][:, w:].copy_(position)
            drop = _lowest_ranked(bufs["bias"], bufs["position"])  # (b, 1, hkv) in [0, w]
            for name in names:
                buf = bufs[name]
                buf.scatter_(1, drop.view(drop.shape + (1,) * (buf.dim() - 3)).expand_as(new[name]), new[name])
                state[name] = buf[:, :w]
        return dynamic_mask_attention(q, state["key"], state["value"], state["bias"], keep_window=None, causal=True)

    def _use_fused_decode(self, q, state) -> bool:
        """Whether this generation step runs the Triton kernels (see ``decode_backend``)."""
        backend = self.decode_backend
        _check(backend in DECODE_BACKENDS, "decode_backend", backend, f"one of {DECODE_BACKENDS}")
        if backend == "torch" or (backend == "auto" and (_fused_decode_failed or not triton_usable(q.device))):
            return False
        supported = (triton_usable(q.device) and q.dtype in _decode_dtypes() and state["key"].dtype == q.dtype
                     and q.shape[-1] <= 256 and state["bias"].dtype == torch.float32
                     and state["position"].dtype == torch.long)
        _check(supported or backend == "auto", "decode_backend", backend,
               "'triton' needs triton on CUDA (or TRITON_INTERPRET=1), float16/bfloat16/float32 q and cache, "
               "head_dim <= 256, a float32 bias and int64 position cache")
        return supported

    def _fused_decode(self, q, new, bufs, n, evict):
        """The Triton step on the buffers (updated in place); None when it raised under ``"auto"`` (nothing was
        written then: the cache is only written by the second launch, after the first succeeded)."""
        global _fused_decode_failed
        from ..ops.dma.decode import decode_step

        workspace = self.__dict__.setdefault("_decode_workspace", {})
        try:
            return decode_step(q, new["key"], new["value"], new["bias"], new["position"], bufs["key"],
                               bufs["value"], bufs["bias"], bufs["position"], n, evict,
                               1.0 / math.sqrt(self.head_dim), workspace)
        except Exception as exc:  # noqa: BLE001 - any compile/launch failure: fall back to the torch path
            if self.decode_backend == "triton":
                raise
            _fused_decode_failed = True
            _log.warning("DMA fused Triton decode step failed (%s: %s); using the torch path from now on",
                         type(exc).__name__, exc)
            return None


def _decode_dtypes() -> tuple:
    try:
        from ..ops.dma.decode import DTYPES
    except ImportError:  # no triton
        return ()
    return DTYPES


def _lowest_ranked(bias: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """bias, position (b, m, hkv) -> (b, 1, hkv) index of the lowest ranked slot: smallest bias, ties to the
    earliest position (the key a later query would drop first)."""
    lowest = bias == bias.amin(dim=1, keepdim=True)
    return torch.where(lowest, position, torch.iinfo(position.dtype).max).argmin(dim=1, keepdim=True)


def _capacity_view(t: torch.Tensor) -> torch.Tensor | None:
    """If ``t (b, n, ...)`` is the prefix ``buffer[:, :n]`` of a larger buffer ``(b, cap, ...)`` (dims after 1
    contiguous), return that whole buffer as a view; else None. Reads only metadata (no device access)."""
    inner = 1
    for size in t.shape[2:]:
        inner *= size
    if inner == 0 or list(t.stride()[1:]) != [inner] + _inner_strides(t.shape[2:]):
        return None
    elements = t.untyped_storage().nbytes() // t.element_size()
    if t.shape[0] == 1:  # the batch stride of a single row says nothing: the storage's end bounds the buffer
        cap = (elements - t.storage_offset()) // inner
    elif t.stride(0) % inner:
        return None
    else:
        cap = t.stride(0) // inner
        if t.storage_offset() + (t.shape[0] - 1) * t.stride(0) + cap * inner > elements:
            return None
    if cap < t.shape[1]:
        return None
    return t.as_strided((t.shape[0], cap) + tuple(t.shape[2:]), (cap * inner,) + tuple(t.stride()[1:]))


def _inner_strides(shape) -> list:
    strides, acc = [], 1
    for size in reversed(tuple(shape)):
        strides.insert(0, acc)
        acc *= size
    return strides


def _buffers(state: dict, slots: int, grow: bool) -> dict:
    """Buffers ``(b, cap, ...)`` with ``cap >= slots`` whose prefixes are the cache tensors of ``state``.

    Reuses the buffers behind the current views when they are large enough (the usual case: no device work);
    otherwise allocates new ones (``cap = slots``, or geometric growth by 1/4 rounded up to 256 slots when
    ``grow``) and copies the cache in — e.g. after the cache's ``index_select`` (beam search) made plain copies.
    """
    out = {}
    for name in ("key", "value", "bias", "position"):
        t = state[name]
        buf = _capacity_view(t)
        if buf is None or buf.shape[1] < slots:
            cap = max(slots, -(-(t.shape[1] * 5 // 4) // 256) * 256) if grow else slots
            buf = t.new_empty((t.shape[0], cap) + tuple(t.shape[2:]))
            buf[:, :t.shape[1]].copy_(t)
        out[name] = buf
    return out


def load_hf_doge_attention_state(hf_state_dict: dict) -> dict:
    """Map one HF ``DogeAttention`` state dict (keys relative to the attention module) to this layer's.

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
