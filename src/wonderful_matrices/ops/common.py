"""Argument checking and backend selection shared by every op in ``wonderful_matrices.ops``."""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterable, Iterator

import torch

from ..errors import reject, require

BACKENDS = ("auto", "naive", "torch", "triton")  # what every op's ``backend`` accepts (``"naive"``: the oracle)
LAYER_BACKENDS = ("auto", "torch", "triton")  # what a layer's fast path accepts (the oracle is an op's business)
MIXTURE_LAYER_BACKENDS = LAYER_BACKENDS + ("dense",)  # what the expert-mixture layers (CDMoE, PEER, PKM) accept


def shape_of(t: torch.Tensor) -> tuple:
    """A tensor's shape as a plain tuple, for error messages."""
    return tuple(t.shape)


_trusted = threading.local()


def cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)`` without calling ``to`` when ``t`` already has ``dtype`` (then ``t`` itself).

    The output of a ``torch.autograd.Function``'s forward goes through this, never through a ``to`` that changes
    nothing: on torch 2.11, Dynamo (every ``torch.compile`` backend) traced such a forward so that the Function's
    inputs got zero gradients, silently (torch 2.13 traces it correctly). That zeroed CDMoE's expert and routing
    gradients in compiled training on the GPU; tests/ops/test_compiled_functions.py holds each Function to its eager
    gradients under Dynamo."""
    return t if t.dtype == dtype else t.to(dtype)


def trusted_values() -> contextlib.AbstractContextManager:
    """Inside this block the ops skip the checks that read tensor *values* (``A < 0``, ``dt >= 0``, expert ids in
    range): each costs a device-to-host synchronisation per call. For layers whose op inputs are valid by
    construction (``A = -exp(A_log)``, ids from ``product_key_topk``); shape, dtype and device checks still run.
    While torch.compile traces it is a no-op (value checks are off then anyway, and the thread-local counter
    would break the graph)."""
    if torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return _trusted_block()


@contextlib.contextmanager
def _trusted_block() -> Iterator[None]:
    depth = getattr(_trusted, "depth", 0)
    _trusted.depth = depth + 1
    try:
        yield
    finally:
        _trusted.depth = depth


def value_checks_enabled() -> bool:
    """Whether an op should run its value checks now: not inside :func:`trusted_values`, not while
    ``torch.compile`` traces, not while a CUDA graph is being captured (a synchronisation would break both)."""
    if getattr(_trusted, "depth", 0) or torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def _triton_imports() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


# Whether the triton package imports, tried once on import (a constant, not a cached function: Dynamo warns about
# tracing through ``functools`` caches at every compile)
TRITON_INSTALLED = _triton_imports()


def triton_usable(device: torch.device) -> bool:
    """Whether the Triton backend can run on ``device`` (a CUDA GPU, or any device under TRITON_INTERPRET=1)."""
    return TRITON_INSTALLED and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


def check_linear(weight, bias, in_features: int, weight_name: str, bias_name: str, source: str) -> None:
    """The arguments of a linear layer an op applies: ``weight`` a ``(o, in_features)`` tensor and ``bias`` None or
    ``(o,)``; else ``ValueError`` naming them (``weight_name`` / ``bias_name``) and ``source`` (what gives
    ``in_features``, e.g. ``"x's last dim"``)."""
    require(isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.shape[1] == in_features,
            f"{weight_name}.shape", shape_of(weight) if isinstance(weight, torch.Tensor) else type(weight).__name__,
            f"(o, {in_features}) matching {source}")
    require(bias is None or (isinstance(bias, torch.Tensor) and tuple(bias.shape) == (weight.shape[0],)),
            f"{bias_name}.shape", shape_of(bias) if isinstance(bias, torch.Tensor) else bias,
            f"None or ({weight.shape[0]},)")


def needs_backward(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd will differentiate through an op of ``tensors`` (grad mode on and one of them, None
    skipped, requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast computes matrix products in on ``device`` (CPU or CUDA) when it is on there, else None."""
    kind = device.type
    return torch.get_autocast_dtype(kind) if kind in ("cuda", "cpu") and torch.is_autocast_enabled(kind) else None


def resolve_backend(backend: str, available: Iterable[str], device: torch.device, auto_order: Iterable[str]) -> str:
    """Map ``backend`` (``"auto"`` or a name) to an available implementation for ``device``.

    ``available`` lists the backends the op implements; ``auto_order`` is the preference order for ``"auto"``
    (the first usable one wins; ``"triton"`` is usable only where :func:`triton_usable` says so).
    """
    available = tuple(available)
    if backend != "auto" and backend not in available:  # the message is built only for a bad name
        reject("backend", backend, f"one of {('auto',) + available}")
    if backend != "auto":
        if backend == "triton" and not triton_usable(device):
            reject("backend", backend, "'triton' needs a CUDA device (or TRITON_INTERPRET=1) and the triton package")
        return backend
    for name in auto_order:
        if name in available and (name != "triton" or (device.type == "cuda" and triton_usable(device))):
            return name
    return "torch"
