"""``CheemsCache``: the inference state of a Cheems model, one dict per layer, for every layer type.

Each layer owns the dict ``cache.layer_state(i)`` and reads/updates it in place (the layer contract,
docs/architecture.md): attention keeps ``key``/``value``/``key_mask``, DMA additionally ``bias`` and keeps at
most ``keep_window`` keys, SSD keeps ``ssm_state``, Mamba2 ``ssm_state`` and ``conv_state``. Every tensor has
batch as dim 0, so beam search reorders the whole cache with one ``index_select(0, beam_idx)`` per tensor.

The cache also counts the tokens it has seen (``get_seq_length()``, padding included, as HF ``generate``
expects) and, per row, the real (unpadded) tokens, from which the model derives the positions of new tokens.
It subclasses ``transformers.Cache`` so ``generate`` (greedy, sampling, beam search) accepts it.

With ``static_attention`` the attention layers keep their keys in preallocated buffers (the static layout of
``layers/attention.py``: ``key``/``value``/``key_mask`` of ``capacity`` slots, ``length`` the keys written), so a
decoding step keeps every shape and can be replayed from a CUDA graph. The capacity is the cache's
(``attention_capacity``); :meth:`reserve` raises it before a call that needs more slots: to the tokens needed
rounded up to a multiple of ``CAPACITY_QUANTUM`` (256), and at least to double the old capacity, so buffers are
reallocated O(log n) times (``generate`` reserves its ``max_length`` up front: none at all).
"""
from __future__ import annotations

import operator

import torch
from transformers.cache_utils import Cache

ATTENTION_LIKE = ("attn", "dma")
CAPACITY_QUANTUM = 256


def uses_static_attention(config, graphed_decoding: bool | None = None, device: torch.device | None = None) -> bool:
    """Whether a cache for ``config`` keeps static attention buffers: ``config.static_attention_cache`` where set,
    else whether the graphed decoding path runs — ``graphed_decoding`` (None: ``config.graphed_decoding``) not
    False, on a CUDA ``device`` (None: whether CUDA is available)."""
    static = getattr(config, "static_attention_cache", None)
    if static is not None:
        return static
    graphed = getattr(config, "graphed_decoding", None) if graphed_decoding is None else graphed_decoding
    on_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    return graphed is not False and on_cuda


class CheemsCache(Cache):
    """Per-layer state dicts for a model with ``mixer_types`` (``"ssd" | "dma" | "attn" | "mamba2"``).

    Args:
        config: a :class:`CheemsConfig` (its ``mixer_types`` are used).
        static_attention: preallocated attention buffers (module docstring); None = :func:`uses_static_attention`.
    """

    def __init__(self, config, static_attention: bool | None = None):
        super().__init__(layers=[])
        if static_attention is None:
            static_attention = uses_static_attention(config)
        if not isinstance(static_attention, bool):
            raise ValueError(f"static_attention={static_attention!r} is not allowed: True, False or None")
        self.static_attention = static_attention
        self.attention_capacity = 0  # slots of every static attention buffer (after the next call)
        self.mixer_types = list(config.mixer_types)
        self.states: list[dict] = [{} for _ in self.mixer_types]
        self.real_tokens: torch.Tensor | None = None  # (b,) long: unpadded tokens seen per row
        self._seen_tokens = 0
        self.graphed_decoder = None  # the GraphedDecoder of CheemsForCausalLM's graphed steps on this cache

    def __len__(self) -> int:
        return len(self.mixer_types)

    def __repr__(self) -> str:
        return f"CheemsCache(layers={len(self)}, seen_tokens={self._seen_tokens})"

    def layer_state(self, layer_idx: int) -> dict:
        """The state dict owned by layer ``layer_idx`` (empty before its first call)."""
        return self.states[layer_idx]

    def kv_length(self, layer_idx: int) -> int:
        """Keys an attention/DMA layer holds now (``state["key"].shape[1]``; a static attention cache's written
        slots, read from the device); 0 for SSD/Mamba2 layers."""
        if not 0 <= layer_idx < len(self):
            raise ValueError(f"layer_idx={layer_idx!r} is not allowed: in [0, {len(self)})")
        state = self.states[layer_idx]
        if "length" in state:
            return int(state["length"][0])
        return 0 if "key" not in state else state["key"].shape[1]

    def reserve(self, tokens: int) -> bool:
        """Make the static attention buffers hold at least ``tokens`` keys from the next call on (their layers
        reallocate them then). Returns whether the capacity grew (always False without ``static_attention``)."""
        if not (isinstance(tokens, int) and tokens >= 0):
            raise ValueError(f"tokens={tokens!r} is not allowed: an int >= 0")
        if not self.static_attention or tokens <= self.attention_capacity:
            return False
        wanted = max(tokens, 2 * self.attention_capacity)
        self.attention_capacity = -(-wanted // CAPACITY_QUANTUM) * CAPACITY_QUANTUM
        for kind, state in zip(self.mixer_types, self.states):
            if kind == "attn":
                state["capacity"] = self.attention_capacity
        return True

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens processed so far (positions of the batch, padding included), for every layer."""
        return self._seen_tokens

    def get_max_length(self, layer_idx: int | None = None) -> int:
        """-1: the cache has no fixed maximum (attention grows; DMA and SSD states are bounded by construction)."""
        return -1

    def past_positions(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """(b,) long: real tokens seen so far per row (0 for an empty cache)."""
        if self.real_tokens is None:
            return torch.zeros(batch_size, dtype=torch.long, device=device)
        return self.real_tokens

    def advance(self, new_mask: torch.Tensor | None, batch_size: int, length: int, device: torch.device) -> None:
        """Record a call of ``length`` new tokens; ``new_mask (b, length)`` marks the real ones (None = all)."""
        if new_mask is None:
            self.real_tokens = (torch.full((batch_size,), length, dtype=torch.long, device=device)
                                if self.real_tokens is None else self.real_tokens + length)
        else:
            self.real_tokens = self.past_positions(batch_size, device) + new_mask.long().sum(-1)
        self._seen_tokens += length

    def set_seen_tokens(self, count: int) -> None:
        """Set the count ``get_seq_length()`` returns: for a step whose tensors were updated outside the model
        (a replayed CUDA graph, which cannot run Python) or a cache filled by hand (benchmarks)."""
        if not (isinstance(count, int) and count >= 0):
            raise ValueError(f"count={count!r} is not allowed: an int >= 0")
        self._seen_tokens = count

    def _map_tensors(self, fn) -> None:
        for state in self.states:
            for name, value in state.items():
                if isinstance(value, torch.Tensor):
                    state[name] = fn(value)
        if self.real_tokens is not None:
            self.real_tokens = fn(self.real_tokens)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row ``i`` of every tensor becomes row ``beam_idx[i]``."""
        self._map_tensors(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every row ``repeats`` times (row-major), as HF does when expanding a batch."""
        self._map_tensors(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows ``indices``."""
        self._map_tensors(lambda t: t[indices.to(t.device)])

    @staticmethod
    def can_roll_back(mixer_types) -> bool:
        """Whether a cache for these layer types can forget its last tokens: attention layers keep every key, so
        they can; SSD/Mamba2 states and DMA's window have already folded the older tokens in or dropped them."""
        return all(t == "attn" for t in mixer_types)

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last ``-tokens_to_remove`` tokens (transformers' convention: a count <= 0; assisted decoding
        calls this after rejecting draft tokens). Only for caches of attention layers (``is_croppable``);
        ``crop(0)`` is a no-op for every cache."""
        if tokens_to_remove == 0:
            return
        if not self.is_croppable:
            raise ValueError(f"tokens_to_remove={tokens_to_remove!r} is not allowed: this cache cannot roll back "
                             f"(layers {sorted(set(self.mixer_types) - {'attn'})} hold recurrent or windowed "
                             "states); only 0")
        remove = -operator.index(tokens_to_remove)  # older transformers pass a 0-d integer tensor: keep an int
        if not 0 < remove <= self._seen_tokens:
            raise ValueError(f"tokens_to_remove={tokens_to_remove!r} is not allowed: a negative count of at most "
                             f"the {self._seen_tokens} tokens held (transformers' convention)")
        held = self._seen_tokens  # every attention layer holds one key per token seen
        for state in self.states:
            if "length" in state:  # static buffers: unmark the slots, which the next tokens overwrite
                removed_mask = state["key_mask"][:, held - remove:held].clone()
                state["key_mask"][:, held - remove:held] = False
                state["length"] = state["length"] - remove
            elif "key" in state:
                removed_mask = state["key_mask"][:, -remove:]
                for name in ("key", "value", "key_mask"):
                    state[name] = state[name][:, :-remove]
        self.real_tokens = self.real_tokens - removed_mask.long().sum(-1)
        self._seen_tokens -= remove

    def reset(self) -> None:
        """Forget everything (an empty cache for the same layers)."""
        self.states = [{} for _ in self.mixer_types]
        self.real_tokens = None
        self._seen_tokens = 0
        self.attention_capacity = 0
        self.graphed_decoder = None

    def nbytes(self) -> int:
        """Bytes held by all cached tensors."""
        return sum(v.numel() * v.element_size() for s in self.states for v in s.values()
                   if isinstance(v, torch.Tensor))

    @property
    def batch_size(self) -> int:
        """Rows in the cache, or -1 before the first call."""
        return -1 if self.real_tokens is None else self.real_tokens.shape[0]

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_croppable(self) -> bool:
        """Whether :meth:`crop` can remove tokens (every layer is attention)."""
        return self.can_roll_back(self.mixer_types)

    @property
    def is_initialized(self) -> bool:
        return self._seen_tokens > 0

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * len(self)

    @property
    def is_linear(self) -> list[bool]:
        return [t not in ATTENTION_LIKE for t in self.mixer_types]
