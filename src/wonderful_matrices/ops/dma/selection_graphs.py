"""The windowed path's selection replayed from CUDA graphs: a few launches of host time per call instead of ~30.

The selection (:func:`.windowed_kernels.select`: the rank sort, five Triton kernels, the carried-key sort and the
head counts) is ~30 small launches whose GPU work is ~0.5 ms at 16K tokens; a lone windowed call is bound by the
host launching them (session 11 on an H100: 1.5 ms of forward kernels in 2.5–3.5 ms of wall time,
docs/results.md). A model's training step hides this behind the GPU's queue; a lone call, a short sequence or a
slow host does not.

Per input shape ``(bias shape, dtype, device, lq, keep_window, block)``: the first call runs eagerly (Triton compiles
its kernels there); the second records the selection into a graph, after one eager run on a side stream as
torch.cuda.graph asks, with a static copy of the bias as input; every later call copies its bias in, replays the
graph and returns **clones** of its outputs (a backward pass holds two layers' selections at once, so no caller may
keep the graph's own buffers). The :data:`GRAPHS_KEPT` most recently used shapes are kept. Rows with documents
(their ids change with every batch), ``torch.compile`` tracing and an outer CUDA graph capture take the eager path,
as does a shape whose recording failed (logged once).

On by default (:data:`ENABLED`; :func:`enabled` switches it for a block). Measured on an H100 (docs/results.md,
session 12, ``python -m wonderful_matrices.bench.dma``, B1 H16 D128, w = 2048): the windowed call at 16K takes
1.67 ms forward / 5.02 ms forward+backward in wall time against 2.40 / 6.09 with the eager selection, at 64K 5.36 /
18.09 against 5.76 / 18.91; the GPU time is the same. ``tests/ops/test_dma_cuda.py -k graphed_selection`` checks
it against the eager selection on the GPU.
"""
from __future__ import annotations

import collections
import contextlib
import logging
from typing import Callable, Iterator

import torch

_log = logging.getLogger(__name__)

ENABLED = True
GRAPHS_KEPT = 4


@contextlib.contextmanager
def enabled(on: bool = True) -> Iterator[None]:
    """``with enabled(): ...`` — the graphed selection on (or off) inside the block, as it was after it."""
    global ENABLED
    saved, ENABLED = ENABLED, on
    try:
        yield
    finally:
        ENABLED = saved


class _Recorded:
    """One shape's graph: its static bias input and its outputs (the graph's own tensors)."""

    def __init__(self, graph: torch.cuda.CUDAGraph, bias: torch.Tensor, outputs: tuple[torch.Tensor, ...]):
        self.graph, self.bias, self.outputs = graph, bias, outputs


_SEEN, _FAILED = "seen once", "recording failed"
_graphs: collections.OrderedDict = collections.OrderedDict()  # key -> _SEEN | _FAILED | _Recorded


def applies(bias: torch.Tensor, seq_idx: torch.Tensor | None) -> bool:
    """Whether a call may use the graphs: :data:`ENABLED`, a CUDA bias, no documents, and neither
    ``torch.compile`` tracing nor a CUDA graph being captured."""
    return (ENABLED and bias.is_cuda and seq_idx is None and not torch.compiler.is_compiling()
            and not torch.cuda.is_current_stream_capturing())


def _record(select: Callable, bias: torch.Tensor, args: tuple) -> _Recorded | str:
    static = bias.detach().clone()
    side, current = torch.cuda.Stream(bias.device), torch.cuda.current_stream(bias.device)
    side.wait_stream(current)
    try:
        with torch.cuda.device(bias.device):  # the graph records on the bias's device, whichever is current
            with torch.cuda.stream(side):
                select(static, *args)  # warm-up on the recording stream
            current.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outputs = select(static, *args)
    except Exception as exc:  # noqa: BLE001 - an op that cannot be recorded: this shape stays eager
        current.wait_stream(side)
        _log.warning("CUDA graph recording of the DMA selection failed (%s: %s); it stays eager for shape %s",
                     type(exc).__name__, exc, tuple(bias.shape))
        return _FAILED
    return _Recorded(graph, static, outputs)


def select_graphed(select: Callable, bias: torch.Tensor, lq: int, keep_window: int,
                   block: int) -> tuple[torch.Tensor, ...] | None:
    """``select(bias, lq, keep_window, block)`` replayed from this shape's graph (recorded on the shape's second
    call): new tensors equal to the eager call's; None where the caller should run it eagerly (the shape's first
    call, or its recording failed). Use where :func:`applies`."""
    key = (tuple(bias.shape), bias.dtype, bias.device, lq, keep_window, block)
    entry = _graphs.get(key)
    if entry is None:
        _graphs[key] = _SEEN
        while len(_graphs) > GRAPHS_KEPT:
            _graphs.popitem(last=False)
        return None
    _graphs.move_to_end(key)
    if entry is _SEEN:
        entry = _graphs[key] = _record(select, bias, (lq, keep_window, block))
    if entry is _FAILED:
        return None
    entry.bias.copy_(bias.detach())
    entry.graph.replay()
    return tuple(t.clone() for t in entry.outputs)
