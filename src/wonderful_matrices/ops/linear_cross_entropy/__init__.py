"""A linear layer followed by cross-entropy (an LM head and its loss) without materialising the logits."""
from __future__ import annotations

import torch

from ...errors import is_int
from ..common import require, resolve_backend, shape_of, value_checks_enabled
from .chunked import ChunkedLinearCrossEntropy, default_chunk_size, logits_dtype
from .naive import linear_cross_entropy_naive

BACKENDS = ("naive", "torch", "triton")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                         reduction: str = "mean", chunk_size: int | None = None,
                         backend: str = "auto") -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T, targets)`` computed chunk by chunk of tokens.

    Args:
        hidden: ``(n, d)`` final hidden states (one row per scored token).
        weight: ``(V, d)`` the output projection (the LM head's weight; no bias).
        targets: ``(n,)`` int64 class ids in ``[0, V)``, or ``ignore_index`` for rows that count nothing. For a
            causal LM these are the already-shifted labels.
        ignore_index: the target value of ignored rows.
        reduction: ``"mean"`` (over counted rows; NaN when none counts, as ``F.cross_entropy``) or ``"sum"``.
        chunk_size: tokens per chunk (``None``: :func:`~.chunked.default_chunk_size`).
        backend: ``"auto"`` (``"triton"`` on CUDA for float16/bfloat16/float32 logits, else ``"torch"``),
            ``"triton"`` (chunked: the logits of one chunk at a time, each chunk's rows in one Triton kernel that
            writes their gradient over them), ``"torch"`` (chunked, the rows in float32 PyTorch) or ``"naive"``
            (the whole logits matrix; the oracle).

    Returns:
        A scalar, float32 (float64 for float64 inputs). The logits are computed in the autocast dtype under
        autocast, else in the inputs' dtype, and the softmax in float32 — as ``F.cross_entropy(lm_head(h).float())``.
        Gradients flow to ``hidden`` and ``weight``.
    """
    for name, t in (("hidden", hidden), ("weight", weight)):
        require(isinstance(t, torch.Tensor), name, type(t).__name__, "a torch.Tensor")
        require(t.dtype in FLOAT_DTYPES, f"{name}.dtype", t.dtype, f"one of {FLOAT_DTYPES}")
    require(hidden.dim() == 2, "hidden.shape", shape_of(hidden), "(n, d)")
    n, d = hidden.shape
    require(weight.dim() == 2 and weight.shape[1] == d and weight.shape[0] >= 1, "weight.shape", shape_of(weight),
            f"(vocab, d={d})")
    require(isinstance(targets, torch.Tensor) and targets.shape == (n,) and targets.dtype == torch.long,
            "targets", (shape_of(targets), targets.dtype) if isinstance(targets, torch.Tensor) else targets,
            f"an int64 tensor of shape ({n},)")
    require(hidden.device == weight.device == targets.device, "device",
            (str(hidden.device), str(weight.device), str(targets.device)), "all tensors on one device")
    require(isinstance(ignore_index, int), "ignore_index", ignore_index, "an int")
    require(reduction in ("mean", "sum"), "reduction", reduction, "'mean' or 'sum'")
    require(chunk_size is None or (is_int(chunk_size) and chunk_size >= 1), "chunk_size", chunk_size,
            "None or an int >= 1")
    vocab = weight.shape[0]
    if n and value_checks_enabled():  # reads values: a device sync, skipped while compiling or capturing
        bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
        if bool(bad.any()):
            raise ValueError(f"targets={targets[bad][:4].tolist()}... is not allowed: class ids in [0, {vocab}) "
                             f"or ignore_index={ignore_index}")
    name = resolve_backend(backend, BACKENDS, hidden.device, ("triton", "torch"))
    if name == "naive":
        return linear_cross_entropy_naive(hidden, weight, targets, ignore_index, reduction)
    if name == "triton" and logits_dtype(hidden, weight) == torch.float64:
        require(backend == "auto", "backend", backend, "'auto', 'torch' or 'naive' for float64 logits")
        name = "torch"
    with_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    chunk = chunk_size if chunk_size is not None else default_chunk_size(n, d, vocab)
    return ChunkedLinearCrossEntropy.apply(hidden, weight, targets, ignore_index, chunk, reduction == "mean",
                                           with_grad, name == "triton")


__all__ = ["linear_cross_entropy"]
