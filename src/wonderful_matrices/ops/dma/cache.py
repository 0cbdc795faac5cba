"""The DMA key cache of one layer and its one-token decoding step.

Layout (a dict per layer; the model's ``CheemsCache`` holds it, this module reads and writes it):
``"key"``, ``"value"`` ``(b, n, hkv, d)`` (keys post-RoPE), ``"bias"`` ``(b, n, hkv)`` float32 (``-inf`` = padding
or an empty slot), ``"position"`` ``(b, n, hkv)`` int64 (the position id of each slot, which breaks ties; ``-1``
for an empty slot). With ``keep_window = w`` the cache keeps, per batch row and KV head, only the keys a future
query can still select — the top ``w`` by ``(bias, position)`` of everything seen — so ``n <= w`` always
(docs/design.md, fact 2); heads may hold different positions in one slot, and slots need not be in position
order. Without a window it grows like plain attention.

* :func:`cache_state` builds a cache from given tensors (checked), :func:`cached_in_order` reads it back in
  position order and :func:`store` keeps what stays selectable after a multi-token call.
* :class:`DecodeStep` decodes one token without autograd (generation): O(w) work with a window (O(n) without),
  a fixed sequence of kernels with no host synchronisation, and no allocation in the steady state: the cache
  tensors are prefix views of preallocated buffers (``w + 1`` slots with a window, geometric growth without),
  updated in place. On CUDA (or under ``TRITON_INTERPRET=1``) it is two fused Triton launches
  (:mod:`.decode`); the torch step is their oracle.
* :func:`replace_lowest_and_attend` is the same step without in-place writes, for a full window while autograd
  records (the cache tensors are replaced, not written).
"""
from __future__ import annotations

import logging
import math
import weakref

import torch

from ..common import LAYER_BACKENDS, reject, require, shape_of, triton_usable
from .selection import selectable_keys
from .windowed import dynamic_mask_attention_torch

try:  # triton is optional: without it DecodeStep takes the torch step
    from . import decode as _decode
except ImportError:
    _decode = None

CACHE_FIELDS = ("key", "value", "bias", "position")
DECODE_BACKENDS = LAYER_BACKENDS
_log = logging.getLogger(__name__)
# The buffers _buffers allocated, by id: the only tensors a step writes past a cache tensor's end
_OWNED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def cache_state(key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor, position: torch.Tensor) -> dict:
    """A DMA cache holding ``n`` keys (see the module docstring for the layout).

    Args:
        key, value: ``(b, n, hkv, d)`` post-RoPE keys and values, one dtype.
        bias: ``(b, n, hkv)`` per-key bias (stored as float32; ``-inf`` = never attended).
        position: ``(b, n, hkv)`` or ``(b, n, 1)`` integer position ids (stored as int64, expanded over heads).

    Returns:
        ``{"key", "value", "bias", "position"}``, ready for :class:`DecodeStep` or the DMA layer's ``state``.
    """
    require(key.dim() == 4, "key.shape", shape_of(key), "(batch, n, kv_heads, head_dim)")
    require(value.shape == key.shape and value.dtype == key.dtype, "value", (shape_of(value), value.dtype),
            f"shape {shape_of(key)} and dtype {key.dtype}, as key")
    require(bias.shape == key.shape[:3], "bias.shape", shape_of(bias), f"{tuple(key.shape[:3])}")
    require(position.dim() == 3 and position.shape[:2] == key.shape[:2] and position.shape[2] in (1, key.shape[2])
            and not position.dtype.is_floating_point, "position", (shape_of(position), position.dtype),
            f"integer ids of shape {tuple(key.shape[:3])} or {tuple(key.shape[:2]) + (1,)}")
    return {"key": key, "value": value, "bias": bias.float(),
            "position": position.long().expand(key.shape[:3]).contiguous()}


def cached_in_order(state: dict, keep_window: int | None) -> list[torch.Tensor]:
    """``[key, value, bias, position]`` of the cache in position order (in-place eviction under a window leaves
    the slots in any order; without a window they are in order already)."""
    cached = [state[name] for name in CACHE_FIELDS]
    if keep_window is None:
        return cached
    order = state["position"].argsort(dim=1, stable=True)
    return [t.gather(1, order.view(order.shape + (1,) * (t.dim() - 3)).expand_as(t)) for t in cached]


def store(state: dict, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor, position: torch.Tensor,
          keep_window: int | None) -> None:
    """Make ``state`` the cache of every key seen, ``key, value (b, n, hkv, d)``, ``bias, position (b, n, hkv)``
    in position order: with a window only the ``<= keep_window`` keys a later query can still select."""
    if keep_window is not None and key.shape[1] > keep_window:
        keep = selectable_keys(bias, keep_window)
        key = key.gather(1, keep[..., None].expand(-1, -1, -1, key.shape[-1]))
        value = value.gather(1, keep[..., None].expand(-1, -1, -1, value.shape[-1]))
        bias, position = bias.gather(1, keep), position.gather(1, keep)
    state.update(key=key, value=value, bias=bias, position=position)


def replace_lowest_and_attend(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor,
                              position: torch.Tensor, state: dict) -> torch.Tensor:
    """One new token against a full window of ``w`` cached keys, with no in-place write (autograd may record it).

    Of the ``w + 1`` keys the lowest ranked (smallest bias, ties to the earlier position) is never selected
    again; the new key replaces it (or is itself dropped) and the query attends to the ``w`` that remain — its
    top ``w``. ``q (b, 1, hq, d)``, the new ``key, value (b, 1, hkv, d)``, ``bias, position (b, 1, hkv)`` ->
    ``(b, 1, hq, d)``; ``state`` gets new tensors of the same shapes.
    """
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

    state.update(key=put(state["key"], key), value=put(state["value"], value), bias=put(state["bias"], bias),
                 position=put(state["position"], position))
    return _attend_all(q, state)


class DecodeStep:
    """The one-token generation step of one DMA layer, with what it keeps between steps.

    Args:
        backend: ``"triton"`` (the fused kernels of :mod:`.decode`: float16/bfloat16/float32, ``head_dim <= 256``,
            CUDA or ``TRITON_INTERPRET=1``), ``"torch"``, or ``"auto"`` (triton where supported; if the kernels
            raise, logged once, torch from then on for this step object).

    Attributes: ``backend``; ``workspace``, the Triton step's scratch buffers (reused while shapes stay);
    ``failed``, None or why the Triton step was given up under ``"auto"``.

    ``step(q, key, value, bias, position, state, keep_window) -> (b, 1, hq, d)``: ``q (b, 1, hq, d)`` the new
    query (post-RoPE), ``key, value (b, 1, hkv, d)``, ``bias (b, 1, hkv)`` float32, ``position (b, 1, hkv)``
    int64 the new key; ``state`` a non-empty cache (module docstring), updated in place; call without autograd.
    """

    def __init__(self, backend: str = "auto"):
        require(backend in DECODE_BACKENDS, "decode_backend", backend, f"one of {DECODE_BACKENDS}")
        self.backend = backend
        self.workspace: dict = {}
        self.failed: str | None = None

    def __repr__(self) -> str:
        return f"DecodeStep(backend={self.backend!r}, failed={self.failed!r})"

    def step(self, q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor,
             position: torch.Tensor, state: dict, keep_window: int | None,
             fallback: bool = True) -> torch.Tensor | None:
        """One new token (see the class docstring). The cache tensors become prefix views ``buffer[:, :n]`` of
        preallocated buffers (:func:`_buffers`), so ``state["key"].shape[1]`` stays the number of slots held.
        ``fallback=False``: when the Triton kernels raise under ``"auto"``, return None with the cache unchanged
        (the caller redoes the step on the torch path) instead of taking the torch step on these inputs.

        With a window the cache is first widened once to ``w`` slots (empty slots have bias ``-inf``); the
        buffers have one spare slot ``w``: the new key is written there, the lowest ranked of the ``w + 1`` slots
        is found on the device, and the new key is scattered into that slot (into the spare one when the new key
        itself is the lowest) — a fixed number of small kernels, the same shapes every step. Without a window
        the new key is written at slot ``n`` of buffers that grow geometrically (one copy per growth). The fused
        Triton step does the same in two launches (:func:`.decode.decode_step`), the spare slot unused.
        """
        if self._use_fused(q, state):
            out = self.fused_step(q, key, value, bias, position, state, keep_window)
            if out is not None or not fallback:
                return out
        new = dict(key=key, value=value, bias=bias, position=position)
        w = keep_window
        n = state["key"].shape[1]
        if w is None:
            bufs, _ = _buffers(state, n + 1, grow=True)
            for name in CACHE_FIELDS:
                bufs[name][:, n:n + 1].copy_(new[name])
                state[name] = bufs[name][:, :n + 1]
        else:
            bufs, _ = _buffers(state, w + 1, grow=False)
            if n < w:  # widen once to w slots: empty slots are never attended and are evicted first
                _widen(bufs, n, w)
            bufs["bias"][:, w:].copy_(bias)
            bufs["position"][:, w:].copy_(position)
            drop = _lowest_ranked(bufs["bias"], bufs["position"])  # (b, 1, hkv) in [0, w]
            for name in CACHE_FIELDS:
                buf = bufs[name]
                buf.scatter_(1, drop.view(drop.shape + (1,) * (buf.dim() - 3)).expand_as(new[name]), new[name])
                state[name] = buf[:, :w]
        return _attend_all(q, state)

    def fused_step(self, q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor,
                   position: torch.Tensor, state: dict, keep_window: int | None) -> torch.Tensor | None:
        """:meth:`step` on the Triton kernels, for a step :meth:`uses_kernels` said they run: the same buffers,
        widening and slots as the torch step, two launches (:func:`.decode.decode_step`, the spare slot of a
        window unused). Returns None with the cache unchanged when the kernels raised under ``"auto"`` (the caller
        takes the torch path). A full window's cache tensors are left as they are (the kernels update them in
        place): the same views every step."""
        n = state["key"].shape[1]
        if keep_window is None:
            bufs, _ = _buffers(state, n + 1, grow=True)
            out = self._fused(q, key, value, bias, position, bufs, n, evict=False)
            held = n + 1
        else:
            bufs, views_kept = _buffers(state, keep_window + 1, grow=False)
            if n < keep_window:
                _widen(bufs, n, keep_window)
            out = self._fused(q, key, value, bias, position, bufs, keep_window, evict=True)
            held = keep_window
            if views_kept and n == keep_window:  # the cache tensors are the buffers' first w slots already
                return out
        if out is not None:
            for name in CACHE_FIELDS:
                state[name] = bufs[name][:, :held]
        return out

    def _use_fused(self, q: torch.Tensor, state: dict) -> bool:
        """Whether this step runs the Triton kernels (see ``backend``)."""
        return self.uses_kernels(q.dtype, q.device, q.shape[-1], state)

    def uses_kernels(self, dtype: torch.dtype, device: torch.device, head_dim: int, state: dict) -> bool:
        """Whether a step of queries of ``dtype`` and ``head_dim`` on ``device`` against the cache ``state`` runs
        the Triton kernels (see ``backend``; raises for ``"triton"`` where they cannot run)."""
        backend = self.backend
        if backend == "torch" or (backend == "auto" and self.failed is not None):
            return False
        usable = triton_usable(device)
        if backend == "auto" and not usable:
            return False
        supported = (usable and _decode is not None and dtype in _decode.DTYPES and state["key"].dtype == dtype
                     and head_dim <= 256 and state["bias"].dtype == torch.float32
                     and state["position"].dtype == torch.long)
        if not (supported or backend == "auto"):
            reject("decode_backend", backend,
                   "'triton' needs triton on CUDA (or TRITON_INTERPRET=1), float16/bfloat16/float32 q and cache, "
                   "head_dim <= 256, a float32 bias and int64 position cache")
        return supported

    def _fused(self, q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor,
               position: torch.Tensor, bufs: dict, n: int, evict: bool) -> torch.Tensor | None:
        """The Triton step on the buffers (updated in place); None when it raised under ``"auto"`` (nothing was
        written then: the cache is only written by the second launch, after the first succeeded)."""
        try:
            return _decode.decode_step(q, key, value, bias, position, bufs["key"], bufs["value"], bufs["bias"],
                                       bufs["position"], n, evict, 1.0 / math.sqrt(q.shape[-1]), self.workspace)
        except Exception as exc:  # noqa: BLE001 - any compile/launch failure: fall back to the torch path (re-raised if forced)
            self.give_up(exc)
            return None

    def give_up(self, exc: Exception) -> None:
        """A kernel of this step raised: re-raise under ``"triton"``; under ``"auto"`` log it once and take the
        torch path from now on."""
        if self.backend == "triton":
            raise exc
        self.failed = f"{type(exc).__name__}: {exc}"
        _log.warning("DMA fused Triton decode step failed (%s); using the torch path from now on", self.failed)


def _attend_all(q: torch.Tensor, state: dict) -> torch.Tensor:
    """``q (b, 1, hq, d)`` attends every slot of the cache (no window: the cache holds the query's top ``w``)."""
    return dynamic_mask_attention_torch(q, state["key"], state["value"], state["bias"], None, True,
                                        1.0 / math.sqrt(q.shape[-1]))


def _widen(bufs: dict, n: int, w: int) -> None:
    """Mark slots ``[n, w)`` of the buffers empty (bias ``-inf``, position -1, zero key and value): a cache of ``n``
    keys widened once to the window's ``w`` slots, whose empty slots are never attended and are evicted first."""
    for name in CACHE_FIELDS:
        bufs[name][:, n:w].fill_(float("-inf") if name == "bias" else -1 if name == "position" else 0)


def _lowest_ranked(bias: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """bias, position (b, m, hkv) -> (b, 1, hkv) index of the lowest ranked slot: smallest bias, ties to the
    earliest position (the key a later query would drop first)."""
    lowest = bias == bias.amin(dim=1, keepdim=True)
    return torch.where(lowest, position, torch.iinfo(position.dtype).max).argmin(dim=1, keepdim=True)


def _capacity_view(t: torch.Tensor) -> torch.Tensor | None:
    """If ``t (b, n, ...)`` is the prefix ``buffer[:, :n]`` of a buffer ``(b, cap, ...)`` that :func:`_buffers`
    allocated, that buffer; else None. Reads only metadata (no device access). A tensor the cache did not allocate
    — the caller's, or a slice of a longer tensor of the caller's — is never taken for a buffer: the step would
    write past its end into memory the caller owns."""
    base = t._base  # a view's root: the buffer itself for the views a step made of it
    if base is None or _OWNED.get(id(base)) is not base:
        return None
    if (base.data_ptr() == t.data_ptr() and base.stride() == t.stride() and base.shape[0] == t.shape[0]
            and base.shape[1] >= t.shape[1] and base.shape[2:] == t.shape[2:]):
        return base
    return None


def _buffers(state: dict, slots: int, grow: bool) -> tuple[dict, bool]:
    """Buffers ``(b, cap, ...)`` with ``cap >= slots`` whose prefixes are the cache tensors of ``state``, and whether
    every cache tensor is still such a prefix (no buffer was allocated).

    Reuses the buffers behind the current views when they are large enough (the usual case: no device work);
    otherwise allocates new ones (``cap = slots``, or geometric growth by 1/4 rounded up to 256 slots when
    ``grow``) and copies the cache in — e.g. after the cache's ``index_select`` (beam search) made plain copies.
    """
    out = {}
    kept = True
    for name in CACHE_FIELDS:
        t = state[name]
        buf = _capacity_view(t)
        if buf is None or buf.shape[1] < slots:
            cap = max(slots, -(-(t.shape[1] * 5 // 4) // 256) * 256) if grow else slots
            buf = t.new_empty((t.shape[0], cap) + tuple(t.shape[2:]))
            buf[:, :t.shape[1]].copy_(t)
            _OWNED[id(buf)] = buf
            kept = False
        out[name] = buf
    return out, kept
