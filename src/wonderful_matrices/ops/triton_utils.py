"""Helpers shared by the Triton kernels of every op; importable without Triton (``opaque_to_compile`` also serves
torch-only code), which the helpers that need it import when called.

Kernels on a decoding step's path launch as ``kernel.run(*args, grid=..., warmup=False, **meta)``:
``kernel[grid](...)`` builds and unpacks a closure on every launch, host time an eager decoding step pays
for each of its ~90 launches.
"""
from __future__ import annotations

import functools
import inspect
import os
from typing import Callable

import torch


def interpreting() -> bool:
    """Whether kernels run on the CPU interpreter (``TRITON_INTERPRET=1``, the test suite). Read when called: a
    test may set the variable and re-import a kernel module, whose import-time choices then see it."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def poisoned_empty(*shape: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """A fresh ``shape`` buffer for a kernel to write; under the interpreter (tests) filled with NaN (-1 for an
    integer dtype), so that an element the kernel fails to write cannot pass a comparison with the oracle.
    Uninitialised on a GPU (a CUDA ``device`` skips the environment lookup: an eager decoding step allocates ~60
    kernel outputs)."""
    if getattr(device, "type", None) != "cuda" and interpreting():
        return torch.full(shape, float("nan") if dtype.is_floating_point else -1, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def poisoned_empty_like(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """:func:`poisoned_empty` of ``t``'s shape on its device, contiguous whatever ``t``'s strides, in ``dtype``
    (default ``t``'s): the cheapest allocation on the host (``empty_like`` skips building a shape and parsing a
    device)."""
    if not t.is_cuda and interpreting():
        dtype = t.dtype if dtype is None else dtype
        return torch.full_like(t, float("nan") if dtype.is_floating_point else -1, dtype=dtype,
                               memory_format=torch.contiguous_format)
    return torch.empty_like(t, dtype=dtype, memory_format=torch.contiguous_format)


def row_span(t: torch.Tensor) -> int:
    """The largest element offset inside one batch row of ``t`` (b, ...) with its strides: what a kernel that
    addresses a row from its first element must be able to represent (int32 offsets reach ``2**31 - 1``)."""
    return sum((n - 1) * st for n, st in zip(t.shape[1:], t.stride()[1:]))


def attention_layout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *more: torch.Tensor) -> tuple:
    """``(q, k, v, *more)`` as attention kernels index them: every head dim with unit stride, and ``v`` laid out like
    ``k`` (the kernels read both with ``k``'s strides); tensors already so are returned as they are."""
    q, k, v, *more = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v, *more))
    if k.stride() != v.stride():
        k, v = k.contiguous(), v.contiguous()
    return (q, k, v, *more)


def autotune(configs: list, key: list, **options):
    """``triton.autotune`` for this library's kernels, with their picks cached on disk (Triton's ``cache_results``,
    in Triton's cache directory) unless ``WM_AUTOTUNE_CACHE=0``: a later process reuses the configuration an earlier
    one measured instead of timing them again — for the same Triton, GPU architecture (an H100's pick serves an
    H200 sharing the cache directory), kernel source, autotuning key and configurations. Timing afresh in every
    process let a noisy pick of the windowed DMA kernels move cheems-base's 16K training rate by 10% between two
    processes on one GPU (docs/results.md, sessions 18 and 19). The interpreter never caches (Triton's rule)."""
    import triton

    if os.environ.get("WM_AUTOTUNE_CACHE", "1") != "0" and \
            "cache_results" in inspect.signature(triton.autotune).parameters:
        options.setdefault("cache_results", True)
    return triton.autotune(configs=configs, key=key, **options)


def tile_configs(gpu: list[tuple[int, int, int, int]], interpreted: tuple[int, int]) -> list:
    """Autotune configurations ``{"BLOCK_M", "BLOCK_N"}`` from ``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` tuples on a
    GPU; under the interpreter the one configuration ``interpreted`` (``(BLOCK_M, BLOCK_N)``, 4 warps, 1 stage)."""
    import triton  # here, not at the top: this module is imported without Triton too (opaque_to_compile)

    if interpreting():
        m, n = interpreted
        return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in gpu]


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` of two Python ints, for launch grids and block counts on the host (``triton.cdiv`` is a
    constexpr function whose every host call costs microseconds of argument unwrapping)."""
    return -(-a // b)


def pow2_at_least(size: int) -> int:
    """The smallest power of two ``>= size`` (1 for ``size <= 1``)."""
    return 1 << max(0, (size - 1).bit_length())


def dot_block(size: int) -> int:
    """Tile width covering ``size`` in one block for ``tl.dot``: a power of two, at least 16 (its minimum)."""
    return max(16, pow2_at_least(size))


class TunedLaunch:
    """Launches an ``@triton.autotune`` kernel, paying the autotuner's per-call Python once per shape.

    ``launch(grid, key, *args, **kwargs)`` is ``autotuner[grid](*args, **kwargs)``. The autotuner runs (and tunes)
    the first time a ``key`` is seen; later calls with that key launch the configuration it chose directly on the
    kernel it wraps, skipping the autotuner's key building and dict merges on every call (microseconds of host
    time per launch, which an eager decoding step pays per layer). ``key`` must determine the autotuner's own key:
    the values of its key arguments and the dtypes of the tensor arguments. A configuration with a pre-hook
    (which the autotuner calls on every launch) always goes through the autotuner."""

    def __init__(self, autotuner):
        self.autotuner = autotuner
        self.chosen: dict = {}  # key -> the chosen configuration's launch keyword arguments

    def __call__(self, grid, key, *args, **kwargs) -> None:
        options = self.chosen.get(key)
        if options is not None:
            self.autotuner.fn.run(*args, grid=grid, warmup=False, **kwargs, **options)
            return
        self.autotuner[grid](*args, **kwargs)
        config = self.autotuner.best_config
        if config.pre_hook is None:  # (the autotuner's own hooks run only while it benchmarks)
            self.chosen[key] = config.all_kwargs()


def opaque_to_compile(name: str, fake: Callable):
    """Decorator for a function that launches Triton kernels (tensors, ints, floats, bools and None in; a tensor or
    a tuple of fresh tensors out, no input written): eagerly it is called as it is; while ``torch.compile`` traces,
    through the custom op ``wonderful_matrices::<name>``, whose outputs' shapes ``fake`` (same arguments) gives. So
    Dynamo neither traces the host code and launches (it cannot under the interpreter; on a GPU its tracing of user
    kernels covers only part of Triton's launch options) nor breaks the graph there, and eager calls pay no
    dispatcher overhead. The function needs type annotations (they make the op's schema; a decorated function's
    are read from the function it wraps, e.g. under ``torch.no_grad()``, which the op needs not: it records no
    autograd graph)."""
    def wrap(fn: Callable) -> Callable:
        op = torch.library.custom_op(f"wonderful_matrices::{name}", inspect.unwrap(fn), mutates_args=())
        op.register_fake(fake)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            return op(*args, **kwargs) if torch.compiler.is_compiling() else fn(*args, **kwargs)

        return call

    return wrap
