"""One-token decoding steps replayed from a CUDA graph.

A decoding step of a ~100M-parameter model launches about a thousand small kernels, and on a GPU each launch
costs the CPU ~10–25 µs: the step is bound by launches, not by the GPU (docs/results.md measured 2.3 ms of GPU
work in a 56 ms cheems-base step). Once the cache is *steady* — every cached tensor keeps its shape from one step
to the next: SSD and Mamba2 states always, DMA once it holds ``keep_window`` keys, attention with a static cache
(``CheemsCache(static_attention=True)``) until its buffers grow; a growing attention cache never — the whole step
can be recorded once as a CUDA graph and replayed with one launch.

    decoder = GraphedDecoder(model, cache)
    logits = decoder.step(token)   # token (b, 1) -> logits (b, 1, vocab), what model(token, cache) returns

Steps run eagerly until the cache is steady (checked after every eager step: the same tensor shapes before and
after it), off CUDA, or after a failed recording (``decoder.failed`` says why). The first steady step records
the graph; from then on every step replays it. A graph reads and writes fixed addresses, so the recorded step
ends by copying every cache tensor the model replaced (SSD's new state, the token counts) back into the tensor
it replaced; tensors updated in place (DMA's key buffers) need no copy. Cache tensors replaced between steps
(beam search reordering the rows) are copied into the fixed ones before a replay; a cache whose shapes changed
between steps (rows dropped) is recorded again, and so is the cache after its static attention buffers grew
(``CheemsCache.reserve`` before each replay: the step that grows them runs eagerly, the next one records). Not
supported: padding in the new tokens (an ``attention_mask``; padding in the cache is fine), a batch size other
than the cache's, and attention layers with a growing cache (their shapes change every step).

``CheemsForCausalLM`` uses one per cache for ``generate``'s steps on CUDA (``config.graphed_decoding``).
"""
from __future__ import annotations

import logging

import torch

from ..ops.common import require

_log = logging.getLogger(__name__)


class GraphedDecoder:
    """Decoding steps of ``model`` with ``cache`` (a :class:`CheemsCache` already holding the prompt), recorded
    as a CUDA graph once the cache is steady.

    Args:
        model: a :class:`CheemsForCausalLM` in eval mode.
        cache: its :class:`CheemsCache` after the prefill.
        use_graph: record a graph when possible (default: when CUDA is available); False keeps every step eager.

    ``step(input_ids (b, 1) long) -> logits (b, 1, vocab)``. With a graph the returned tensor is the graph's
    output buffer: it is overwritten by the next step (clone it to keep it).
    """

    def __init__(self, model, cache, use_graph: bool | None = None):
        self.model, self.cache = model, cache
        self.use_graph = torch.cuda.is_available() if use_graph is None else bool(use_graph)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed: str | None = None
        self._ids: torch.Tensor | None = None
        self._logits: torch.Tensor | None = None
        self._static: dict | None = None  # the tensors the graph reads and writes, kept alive while it may replay
        self._stream: torch.cuda.Stream | None = None

    @property
    def recorded(self) -> bool:
        """Whether steps now replay a CUDA graph."""
        return self.graph is not None

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        """One token per row: input_ids (b, 1) -> logits (b, 1, vocab)."""
        require(isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 and input_ids.shape[1] == 1,
                "input_ids.shape", tuple(getattr(input_ids, "shape", ())), "(batch, 1): one new token per row")
        if self.graph is not None and self.cache.reserve(self.cache.get_seq_length() + 1):
            self.graph = self._ids = self._logits = self._static = None  # attention buffers grow in this step
        if self.graph is not None:
            try:  # tensors replaced outside the steps (beam search's reorder_cache) go into the fixed ones
                self._fold(self._static)
            except RuntimeError:  # the cache changed shape outside the steps (rows selected): record again
                self.graph = self._ids = self._logits = self._static = None
        if self.graph is not None:
            require(input_ids.shape == self._ids.shape, "input_ids.shape", tuple(input_ids.shape),
                    f"{tuple(self._ids.shape)}, the batch the graph was recorded with")
            self._ids.copy_(input_ids)
            self.graph.replay()
            self.cache.set_seen_tokens(self.cache.get_seq_length() + 1)
            return self._logits
        before = self._shapes()
        on_graph_device = self.use_graph and self.failed is None and input_ids.is_cuda
        if on_graph_device and self._stream is None:
            self._stream = torch.cuda.Stream(input_ids.device)
        if on_graph_device:  # eager steps on the stream the graph will be recorded on (lazy inits happen here)
            self._stream.wait_stream(torch.cuda.current_stream(input_ids.device))
            with torch.cuda.stream(self._stream):
                logits = self._eager(input_ids)
            torch.cuda.current_stream(input_ids.device).wait_stream(self._stream)
        else:
            logits = self._eager(input_ids)
        # steady, and the recorded step would not have to grow static attention buffers
        if (on_graph_device and before is not None and before == self._shapes()
                and not self.cache.reserve(self.cache.get_seq_length() + 1)):
            self._record(input_ids)
        return logits

    def _eager(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, past_key_values=self.cache, use_cache=True,
                          graphed_decoding=False).logits

    def _shapes(self):
        """Shapes of every cached tensor (None before the first call fills the cache)."""
        if self.cache.real_tokens is None:
            return None
        return ([{name: tuple(t.shape) for name, t in state.items() if isinstance(t, torch.Tensor)}
                 for state in self.cache.states], tuple(self.cache.real_tokens.shape))

    def _snapshot(self) -> dict:
        """The cache's current tensors: the fixed buffers the graph reads and writes."""
        static = {(i, name): t for i, state in enumerate(self.cache.states) for name, t in state.items()
                  if isinstance(t, torch.Tensor)}
        static["real_tokens"] = self.cache.real_tokens
        return static

    def _restore(self, static: dict) -> None:
        for key, t in static.items():
            if key == "real_tokens":
                self.cache.real_tokens = t
            else:
                self.cache.states[key[0]][key[1]] = t

    def _fold(self, static: dict) -> None:
        """After a step: every cache tensor the step replaced is copied into the tensor it replaced, and the cache
        points at the fixed tensors again. Raises ``RuntimeError`` if a tensor changed its shape or appeared."""
        current = self._snapshot()
        if current.keys() != static.keys():
            raise RuntimeError(f"the cache is not steady: entries {sorted(map(str, current.keys() ^ static.keys()))}")
        for key, new in current.items():
            fixed = static[key]
            if new.shape != fixed.shape or new.dtype != fixed.dtype:
                raise RuntimeError(f"the cache is not steady: {key} went from {tuple(fixed.shape)} to "
                                   f"{tuple(new.shape)}")
            if new is not fixed and (new.data_ptr() != fixed.data_ptr() or new.stride() != fixed.stride()):
                fixed.copy_(new)
        self._restore(static)

    def _record(self, example_ids: torch.Tensor) -> None:
        """Record one step as a graph (nothing runs: the cache's values stay as they are)."""
        static = self._snapshot()
        seen = self.cache.get_seq_length()
        self._ids = example_ids.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self._stream):
                logits = self._eager(self._ids)
                self._fold(static)
        except Exception as exc:  # noqa: BLE001 - any op that cannot be recorded: stay eager from now on
            self.failed = f"{type(exc).__name__}: {exc}"
            _log.warning("CUDA graph recording of the decoding step failed (%s); decoding stays eager", self.failed)
            graph = None
        # recording ran the model's Python code once: undo what it did to the cache's bookkeeping
        self._restore(static)
        self.cache.set_seen_tokens(seen)
        if graph is not None:
            self.graph, self._logits, self._static = graph, logits, static
