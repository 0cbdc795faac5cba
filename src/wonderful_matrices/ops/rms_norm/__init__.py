"""RMSNorm with an optional fused residual add (``s = x + residual``, ``y = weight · s / rms(s)``), and Mamba2's
gated RMSNorm (``weight · rmsnorm(x · silu(gate))`` per group of channels)."""
from __future__ import annotations

import math

import torch

from ...errors import reject
from ..common import autocast_dtype, check_linear, needs_backward, require, resolve_backend, shape_of
from .naive import gated_rms_norm_naive, rms_norm_naive

try:  # triton is optional: without it the package still imports and the backend is not offered
    from . import fused_kernels as _triton_backend
except ImportError:
    _triton_backend = None

BACKENDS = ("torch",) + (("triton",) if _triton_backend is not None else ())
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
AUTO_ORDER = ("triton", "torch")  # what "auto" prefers


def _valid(x, weight, eps, other: torch.Tensor | None) -> bool:
    """Whether :func:`_check` passes for ``x``, ``weight``, ``eps`` and the tensor ``other`` shaped like ``x`` (None
    for none), as one expression: the common case builds no error message (nor a dict of the arguments)."""
    return (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor) and x.dtype in FLOAT_DTYPES
            and weight.dtype in FLOAT_DTYPES and x.dim() >= 1 and x.shape[-1] >= 1 and weight.dim() == 1
            and weight.shape[0] == x.shape[-1] and weight.device == x.device
            and isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0
            and (other is None or (isinstance(other, torch.Tensor) and other.dtype in FLOAT_DTYPES
                                   and other.shape == x.shape and other.device == x.device)))


def _check(x, weight, eps, others: dict) -> None:
    """The arguments both norms share: floating tensors on one device, ``x (..., d)``, ``weight (d,)``, ``eps >= 0``,
    and ``others`` (name -> tensor, at most one) shaped like ``x``. Called when :func:`_valid` fails."""
    for name, t in {"x": x, "weight": weight, **others}.items():
        require(isinstance(t, torch.Tensor), name, type(t).__name__, "a torch.Tensor")
        require(t.dtype in FLOAT_DTYPES, f"{name}.dtype", t.dtype, f"one of {FLOAT_DTYPES}")
    require(x.dim() >= 1 and x.shape[-1] >= 1, "x.shape", shape_of(x), "(..., d) with d >= 1")
    for name, t in others.items():
        require(t.shape == x.shape, f"{name}.shape", shape_of(t), f"equal to x.shape {shape_of(x)}")
    d = x.shape[-1]
    require(weight.shape == (d,), "weight.shape", shape_of(weight), f"({d},) matching x's last dim")
    require(isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0, "eps", eps, "a finite number >= 0")
    devices = {t.device for t in (x, weight, *others.values())}
    require(len(devices) == 1, "device", sorted(map(str, devices)), "all tensors on one device")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, residual: torch.Tensor | None = None,
             backend: str = "auto", out_dtype: torch.dtype | None = None
             ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Root-mean-square normalisation over the last dim, optionally of ``x + residual``.

    Args:
        x: ``(..., d)``.
        weight: ``(d,)`` per-channel scale.
        eps: added to the mean square (``>= 0``).
        residual: ``None`` or ``(..., d)`` like ``x``: the residual stream the block adds ``x`` to.
        backend: ``"auto"`` (``"triton"`` on CUDA, else ``"torch"``), ``"torch"`` (the formula, autograd) or
            ``"triton"`` (one kernel forward, one backward; float16/bfloat16/float32, ``d <= 16384``; other calls
            run the torch path; on CPU only under ``TRITON_INTERPRET=1``).
        out_dtype: ``None`` or a floating dtype for ``y`` (e.g. the autocast dtype when ``y`` feeds a linear
            layer: the cast the linear would make, done by the kernel's store).

    Returns:
        Without ``residual``: ``y (..., d)``. With it: ``(y, s)`` where ``s = x + residual`` (``(..., d)`` in
        ``promote(x, residual)``) is the new residual stream, written once by the same kernel. The norm is
        computed in float32 (float64 for float64), rounded to ``s``'s dtype and scaled, so ``y`` has
        ``promote(weight, s)`` dtype — HF Llama's ``LlamaRMSNorm`` arithmetic — or ``out_dtype``, the scaled value
        rounded once to it.
    """
    if not _valid(x, weight, eps, residual):
        _check(x, weight, eps, {"residual": residual} if residual is not None else {})
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        reject("out_dtype", out_dtype, f"None or one of {FLOAT_DTYPES}")
    name = resolve_backend(backend, BACKENDS, x.device, AUTO_ORDER)
    if (name == "triton" and x.dtype in _triton_backend.DTYPES and weight.dtype in _triton_backend.DTYPES
            and (residual is None or residual.dtype in _triton_backend.DTYPES)
            and (out_dtype is None or out_dtype in _triton_backend.DTYPES) and x.shape[-1] <= _triton_backend.MAX_DIM):
        y, s = _triton_backend.rms_norm_triton(x, weight, eps, residual, out_dtype)
    else:
        y, s = rms_norm_naive(x, weight, eps, residual, out_dtype)
    return y if residual is None else (y, s)


def gated_rms_norm(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                   num_groups: int = 1, backend: str = "auto", out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Mamba2's gated RMSNorm: ``weight · rmsnorm(x · silu(gate))``, the mean square taken per group.

    Args:
        x, gate: ``(..., d)``.
        weight: ``(d,)``.
        eps: added to the mean square (``>= 0``).
        num_groups: ``d`` is split into this many equal groups, each normalised on its own (1: HF
            ``MambaRMSNormGated``; ``n_groups``: mamba_ssm's ``RMSNormGated(group_size=d/n_groups)``).
        backend: ``"auto"`` (``"triton"`` on CUDA, else ``"torch"``), ``"torch"`` (the formula, autograd) or
            ``"triton"`` (one kernel forward, one backward; float16/bfloat16/float32, ``num_groups`` a power of two
            up to 16, ``d / num_groups <= 16384``; other calls run the torch path; on CPU only under
            ``TRITON_INTERPRET=1``).
        out_dtype: ``None`` or a floating dtype for the result (as in :func:`rms_norm`).

    Returns:
        ``(..., d)`` in ``promote(weight, x)`` or ``out_dtype``: computed in float32 (float64 for float64 ``x``),
        the normalised value rounded to ``x``'s dtype before the weight, the scaled value rounded once.
    """
    _check_gated(x, gate, weight, eps, num_groups, out_dtype)
    name = resolve_backend(backend, BACKENDS, x.device, AUTO_ORDER)
    if name == "triton" and _triton_usable(x, gate, weight, num_groups, out_dtype):
        return _triton_backend.gated_rms_norm_triton(x, gate, weight, eps, num_groups, out_dtype)
    return gated_rms_norm_naive(x, gate, weight, eps, num_groups, out_dtype)


def _check_gated(x, gate, weight, eps, num_groups, out_dtype) -> None:
    """The arguments of :func:`gated_rms_norm`: ``ValueError`` naming the first wrong one."""
    if not _valid(x, weight, eps, gate):
        _check(x, weight, eps, {"gate": gate})
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        reject("out_dtype", out_dtype, f"None or one of {FLOAT_DTYPES}")
    d = x.shape[-1]
    if not (isinstance(num_groups, int) and num_groups >= 1 and d % num_groups == 0):
        reject("num_groups", num_groups, f"a divisor of d={d}")


def _triton_usable(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, num_groups: int,
                   out_dtype: torch.dtype | None) -> bool:
    """Whether the gated norm's Triton kernels take these (validated) arguments: their dtypes, a power-of-two
    group count up to 16, groups of at most ``MAX_DIM`` channels; other calls run the torch path."""
    kernels = _triton_backend
    return (x.dtype in kernels.DTYPES and gate.dtype in kernels.DTYPES and weight.dtype in kernels.DTYPES
            and (out_dtype is None or out_dtype in kernels.DTYPES) and num_groups <= 16
            and num_groups & (num_groups - 1) == 0 and x.shape[-1] // num_groups <= kernels.MAX_DIM)


def gated_rms_norm_linear(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, linear_weight: torch.Tensor,
                          linear_bias: torch.Tensor | None = None, eps: float = 1e-6, num_groups: int = 1,
                          backend: str = "auto", out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``F.linear(gated_rms_norm(x, gate, weight, eps, num_groups, backend, out_dtype), linear_weight, linear_bias)``
    (Mamba2's gated norm and output projection) — the same values, and on the Triton backend under autograd the
    norm's output is not kept for the backward: the norm's backward kernel writes it again for the linear's weight
    gradient (one ``(..., d)`` tensor less at the training step's peak).

    Args:
        x, gate, weight, eps, num_groups, backend, out_dtype: as :func:`gated_rms_norm`.
        linear_weight: ``(o, d)``; linear_bias: ``(o,)`` or None.

    Returns:
        ``(..., o)``, as ``F.linear`` gives it (under autocast, in the autocast dtype).
    """
    _check_gated(x, gate, weight, eps, num_groups, out_dtype)
    check_linear(linear_weight, linear_bias, x.shape[-1], "linear_weight", "linear_bias", "x's last dim")
    if (needs_backward(x, gate, weight, linear_weight, linear_bias)
            and resolve_backend(backend, BACKENDS, x.device, AUTO_ORDER) == "triton"):
        y_dtype = out_dtype or torch.promote_types(weight.dtype, x.dtype)
        # the dtype F.linear would compute in: autocast's, else its operands' (which must then agree)
        linear_dtype = autocast_dtype(x.device) or linear_weight.dtype
        if y_dtype == linear_dtype and _triton_usable(x, gate, weight, num_groups, out_dtype):
            return _triton_backend.gated_rms_norm_linear_triton(x, gate, weight, eps, num_groups, out_dtype,
                                                                linear_weight, linear_bias)
    y = gated_rms_norm(x, gate, weight, eps, num_groups=num_groups, backend=backend, out_dtype=out_dtype)
    return torch.nn.functional.linear(y, linear_weight, linear_bias)


__all__ = ["rms_norm", "gated_rms_norm", "gated_rms_norm_linear"]
