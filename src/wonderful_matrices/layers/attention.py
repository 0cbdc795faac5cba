"""Causal softmax attention with GQA and RoPE (the paper's QCAttn baseline; HF Llama's attention).

Parameter names match HF ``LlamaAttention`` (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``), so a Llama
checkpoint loads with no renaming. Follows the layer contract of the package (docs/architecture.md):
``forward(hidden_states, position_ids, attention_mask, state)``.

Two cache layouts. The growing one appends each call's keys with ``torch.cat``, so its shapes change every step.
The static one (a ``state`` holding ``"capacity"``, an int) keeps keys and values in preallocated buffers of
``capacity`` slots, the number of keys written so far as a device tensor ``"length"``, writes a call's keys at
slots ``length .. length + l - 1`` with a tensor index and attends over the whole buffer with unused slots masked
out: a one-token step has the same shapes and addresses every step, so it can be replayed from a CUDA graph. The
buffers are reallocated (contents copied) only when ``"capacity"`` is raised above their size; the caller
(``CheemsCache.reserve``) raises it before a call that needs more slots.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import is_int
from ..ops import dynamic_mask_attention
from ..ops.common import require
from ..ops.dma.weights import dynamic_mask_attention_weights
from .rotary import RotaryEmbedding, RotaryTables, apply_rotary


def causal_padding_mask(key_mask: torch.Tensor, query_length: int) -> torch.Tensor:
    """Boolean visibility ``(b, 1, lq, lk)``: query ``i`` sees key ``j`` iff ``j <= i + (lk - lq)`` and key ``j`` is
    real.

    ``key_mask (b, lk)`` bool, True = real token. Queries are bottom-right aligned with the keys.
    """
    lk = key_mask.shape[1]
    q_pos = torch.arange(query_length, device=key_mask.device)[:, None] + (lk - query_length)
    k_pos = torch.arange(lk, device=key_mask.device)[None, :]
    return (k_pos <= q_pos)[None, None] & key_mask[:, None, None, :]


def static_state(key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor, capacity: int) -> dict:
    """A static attention cache (module docstring) holding ``n`` given keys in ``capacity >= n`` slots.

    key, value (b, n, hkv, d) post-RoPE, key_mask (b, n) bool (True = real) -> ``{"key", "value"
    (b, capacity, hkv, d), "key_mask" (b, capacity) bool (False on unused slots), "length" (b,) long (n in every
    row), "capacity": capacity}``.
    """
    b, n = key.shape[:2]
    require(is_int(capacity) and capacity >= max(n, 1), "capacity", capacity,
            f"an int >= the {max(n, 1)} keys given")
    require(value.shape == key.shape and tuple(key_mask.shape) == (b, n), "value/key_mask.shape",
            (tuple(value.shape), tuple(key_mask.shape)), f"{tuple(key.shape)} and {(b, n)}")
    state = {"capacity": capacity}
    _static_buffers(state, key, value)
    state["key"][:, :n] = key
    state["value"][:, :n] = value
    state["key_mask"][:, :n] = key_mask.to(torch.bool)
    state["length"].fill_(n)
    return state


def _static_buffers(state: dict, k: torch.Tensor, v: torch.Tensor) -> None:
    """Give a static ``state`` buffers of ``state["capacity"]`` slots for keys like ``k`` (b, l, hkv, d): new ones
    (zeros, every slot unused) on the first call, larger ones holding the old contents after ``"capacity"`` grew."""
    b, capacity = k.shape[0], state["capacity"]
    held = state["key"].shape[1] if "key" in state else 0
    require(capacity >= held, "state['capacity']", capacity, f">= the {held} slots allocated (it only grows)")
    if held == capacity:
        return
    fresh = {"key": k.new_zeros(b, capacity, *k.shape[2:]), "value": v.new_zeros(b, capacity, *v.shape[2:]),
             "key_mask": torch.zeros(b, capacity, dtype=torch.bool, device=k.device)}
    if held:
        for name, buffer in fresh.items():
            buffer[:, :held] = state[name]
    else:
        state["length"] = torch.zeros(b, dtype=torch.long, device=k.device)
    state.update(fresh)


class Attention(nn.Module):
    """Causal multi-head softmax attention with grouped KV heads and rotary position embedding.

    Args:
        hidden_size: model width ``d``.
        num_heads: query heads ``hq``.
        num_kv_heads: key/value heads ``hkv`` (``hq % hkv == 0``).
        head_dim: per-head width (even, for RoPE).
        rope_theta: RoPE base.
        attention_bias: biases on the q/k/v/o projections.
        layer_idx: index of the layer in its model (informational).

    ``forward(hidden_states (b, l, d), position_ids (b, l), attention_mask (b, l) | None, state dict | None)
    -> (b, l, d)``. With ``state`` it keeps ``"key"``, ``"value"`` ``(b, n, hkv, head_dim)`` (post-RoPE),
    ``"key_mask"`` ``(b, n)`` bool and ``"has_padding"`` (a Python bool: whether any call had padding; without
    it one-token steps skip the mask). A ``state`` holding ``"capacity"`` is a static cache instead (module
    docstring, :func:`static_state`): ``"key"``/``"value"`` ``(b, capacity, hkv, head_dim)``, ``"key_mask"``
    ``(b, capacity)`` (False on unused slots), ``"length"`` ``(b,)`` long; the caller keeps ``capacity`` at least
    the keys held after the call. Both layouts give the same outputs. Padded keys are never attended; a query
    that sees no real key (a left padding position) outputs zeros.

    Packed documents (``seq_idx`` (b, l) non-decreasing document ids, no cache): a query sees only the keys of
    its own document (:func:`attend_documents`).
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 rope_theta: float = 10000.0, attention_bias: bool = False, layer_idx: int | None = None):
        super().__init__()
        require(hidden_size >= 1, "hidden_size", hidden_size, "must be >= 1")
        require(num_heads >= 1, "num_heads", num_heads, "must be >= 1")
        require(num_kv_heads >= 1 and num_heads % num_kv_heads == 0, "num_kv_heads", num_kv_heads,
                f"must be >= 1 and divide num_heads={num_heads}")
        require(head_dim >= 2 and head_dim % 2 == 0, "head_dim", head_dim, "must be a positive even number (RoPE)")
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.layer_idx = layer_idx
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=attention_bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=attention_bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=attention_bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=attention_bias)
        self.rotary = RotaryEmbedding(head_dim, rope_theta)

    def _project(self, hidden_states: torch.Tensor, position_ids: torch.Tensor,
                 rotary_tables: RotaryTables | None = None):
        """q (b, l, hq, d), k, v (b, l, hkv, d), with RoPE on q and k (tables from ``rotary_tables`` when given)."""
        b, l, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(b, l, self.num_heads, self.head_dim)
        k = self.k_proj(hidden_states).view(b, l, self.num_kv_heads, self.head_dim)
        v = self.v_proj(hidden_states).view(b, l, self.num_kv_heads, self.head_dim)
        tables = RotaryTables(position_ids) if rotary_tables is None else rotary_tables
        cos, sin = tables(self.rotary, torch.float64 if q.dtype == torch.float64 else torch.float32)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def attention_weights(self, hidden_states: torch.Tensor, position_ids: torch.Tensor,
                          attention_mask: torch.Tensor | None = None, state: dict | None = None,
                          rotary_tables: RotaryTables | None = None) -> torch.Tensor:
        """The attention probabilities of a forward with the same arguments, computed densely; ``state`` is only
        read (call this before the forward that updates it).

        Returns ``(b, num_heads, l, n)`` float32 over ``n`` keys: those cached in ``state``, then the ``l`` new
        ones (zero weight on padding; an all-zero row for a query that sees no real key).
        """
        b, l, _ = hidden_states.shape
        q, k, _ = self._project(hidden_states, position_ids, rotary_tables)
        key_mask = (torch.ones(b, l, dtype=torch.bool, device=k.device) if attention_mask is None
                    else attention_mask.to(torch.bool))
        if state is not None and "key" in state:
            held = int(state["length"][0]) if "capacity" in state else state["key"].shape[1]
            k = torch.cat([state["key"][:, :held], k], dim=1)
            key_mask = torch.cat([state["key_mask"][:, :held], key_mask], dim=1)
        # causal softmax attention is dynamic mask attention with a zero bias (-inf on padding) and no window
        bias = torch.zeros(key_mask.shape, dtype=torch.float32, device=k.device).masked_fill(~key_mask, float("-inf"))
        return dynamic_mask_attention_weights(q, k, bias[..., None].expand(-1, -1, self.num_kv_heads))

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None, state: dict | None = None,
                seq_idx: torch.Tensor | None = None, rotary_tables: RotaryTables | None = None) -> torch.Tensor:
        """hidden_states (b, l, d), position_ids (b, l) long, attention_mask (b, l) (1 = real), state (cache dict)
        or None, seq_idx (b, l) document ids of packed rows or None (not with a state), rotary_tables (the
        forward's :class:`RotaryTables` of these ``position_ids``, shared by a model's layers) or None (the layer
        builds its own) -> (b, l, d)."""
        b, l, _ = hidden_states.shape
        require(seq_idx is None or state is None, "seq_idx", "a tensor with a cache state",
                "None when decoding with a cache (packed rows are for training and scoring)")
        require(seq_idx is None or (isinstance(seq_idx, torch.Tensor) and tuple(seq_idx.shape) == (b, l)),
                "seq_idx.shape", tuple(getattr(seq_idx, "shape", ())), f"{(b, l)}: one document id per token")
        q, k, v = self._project(hidden_states, position_ids, rotary_tables)

        if seq_idx is not None:
            out = attend_documents(q, k, v, seq_idx, attention_mask)
            return self.o_proj(out.reshape(b, l, self.num_heads * self.head_dim))
        if state is None and attention_mask is None:
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 is_causal=True, enable_gqa=self.num_heads != self.num_kv_heads)
            return self.o_proj(out.transpose(1, 2).reshape(b, l, self.num_heads * self.head_dim))

        if state is not None and "capacity" in state:
            out = self._attend_static(q, k, v, attention_mask, state)
            return self.o_proj(out.reshape(b, l, self.num_heads * self.head_dim))
        new_mask = (torch.ones(b, l, dtype=torch.bool, device=hidden_states.device) if attention_mask is None
                    else attention_mask.to(torch.bool))
        every_key_real = attention_mask is None
        if state is not None:
            if "key" in state:
                k = torch.cat([state["key"], k], dim=1)
                v = torch.cat([state["value"], v], dim=1)
                new_mask = torch.cat([state["key_mask"], new_mask], dim=1)
            # a Python flag, so that knowing "no key is padding" costs no device sync
            every_key_real = every_key_real and not state.get("has_padding", False)
            state["key"], state["value"], state["key_mask"] = k, v, new_mask
            state["has_padding"] = not every_key_real
        if every_key_real and (l == 1 or l == k.shape[1]):
            # one query sees every key; or a first call, where bottom-right and top-left causal masks agree
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 is_causal=l > 1, enable_gqa=self.num_heads != self.num_kv_heads)
            out = out.transpose(1, 2)
        else:
            out = self._attend_masked(q, k, v, new_mask)
        return self.o_proj(out.reshape(b, l, self.num_heads * self.head_dim))

    def _attend_masked(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       key_mask: torch.Tensor) -> torch.Tensor:
        """q (b, lq, hq, d), k/v (b, lk, hkv, d), key_mask (b, lk) bool -> (b, lq, hq, d), bottom-right causal."""
        visible = causal_padding_mask(key_mask, q.shape[1])
        has_key = visible.any(-1, keepdim=True)  # (b, 1, lq, 1)
        # A row with no visible key would be NaN: let it see every key, then zero its output.
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=visible | ~has_key,
                                             enable_gqa=self.num_heads != self.num_kv_heads)
        return (out * has_key.to(out.dtype)).transpose(1, 2)

    def _attend_static(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       attention_mask: torch.Tensor | None, state: dict) -> torch.Tensor:
        """Write k/v (b, l, hkv, d) into the static cache ``state`` at slots ``length ..`` and attend q (b, l, hq, d)
        over all its slots -> (b, l, hq, d). The writes are in place (fixed addresses for a CUDA graph) unless
        autograd records, where the buffers are replaced instead (the old ones may be saved for backward)."""
        b, l = q.shape[:2]
        _static_buffers(state, k, v)
        new_mask = (torch.ones(b, l, dtype=torch.bool, device=k.device) if attention_mask is None
                    else attention_mask.to(device=k.device, dtype=torch.bool))
        slots = state["length"][:1] + torch.arange(l, device=k.device)  # (l,): read on the device, no sync
        in_place = not torch.is_grad_enabled()
        for name, new in (("key", k), ("value", v), ("key_mask", new_mask)):
            state[name] = (state[name].index_copy_(1, slots, new) if in_place
                           else state[name].index_copy(1, slots, new))
        state["length"] = state["length"].add_(l) if in_place else state["length"] + l
        capacity = state["key"].shape[1]
        visible = state["key_mask"][:, None, None, :]  # (b, 1, 1, capacity): written, real keys
        if l > 1:  # causal among the new queries: query i sees the slots up to its own
            visible = visible & (torch.arange(capacity, device=k.device) <= slots[:, None])[None, None]
        gqa = self.num_heads != self.num_kv_heads
        qt, kt, vt = q.transpose(1, 2), state["key"].transpose(1, 2), state["value"].transpose(1, 2)
        if attention_mask is None:  # every query is real and sees at least its own key
            return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=visible, enable_gqa=gqa).transpose(1, 2)
        has_key = visible.any(-1, keepdim=True)
        # A row with no visible key would be NaN: let it see every key, then zero its output.
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=visible | ~has_key, enable_gqa=gqa)
        return (out * has_key.to(out.dtype)).transpose(1, 2)



def attend_documents(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_idx: torch.Tensor,
                     key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention inside each packed document: :func:`wonderful_matrices.ops.dynamic_mask_attention` with a
    zero bias (``-inf`` on padded keys), no window and ``seq_idx``, so it is plain causal softmax attention
    restricted to the document (on CUDA the op's FlexAttention path, which builds no (l, l) tensor).

    q (b, l, hq, d), k/v (b, l, hkv, d) with ``hq % hkv == 0``, seq_idx (b, l) non-decreasing document ids,
    key_mask (b, l) or None (1 = real key) -> (b, l, hq, d); a query with no visible key outputs zeros.
    """
    b, l, hkv = k.shape[:3]
    bias = torch.zeros(b, l, hkv, dtype=torch.float64 if q.dtype == torch.float64 else torch.float32,
                       device=q.device)
    if key_mask is not None:
        bias = bias.masked_fill(~key_mask.bool()[..., None], float("-inf"))
    return dynamic_mask_attention(q, k, v, bias, keep_window=None, causal=True, seq_idx=seq_idx)
