"""State space duality (SSD), the sequence mixer of Mamba2 and of Cheems' SSD layers.

Definition (docs/design.md, "SSD"), per head, with ``S`` of shape ``p × n``::

    S_t = exp(dt_t·A) · S_{t−1} + dt_t · x_t ⊗ B_t,      y_t = S_t · C_t + D · x_t

Backends: ``"naive"`` (the per-step recurrence, the oracle), ``"torch"`` (the chunked dual algorithm, fast on
CPU and GPU) and ``"triton"`` (GPU kernels for float32 / bf16 / fp16, forward and backward; also runs on CPU
under ``TRITON_INTERPRET=1``); ``"auto"`` picks ``"triton"`` on CUDA for float32, and for bf16/fp16 with
``chunk_size >= 64`` (the chunk sizes the CUDA parity tests cover in half precision), else ``"torch"``.
"""
from __future__ import annotations

import torch

from ...errors import is_int, reject
from ..common import require, resolve_backend, shape_of, triton_usable, value_checks_enabled
from .chunked import ssd_chunked
from .naive import ssd_naive
from .step import recurrent_step

try:  # triton is optional: without it the package imports and fused_step_usable says no
    from . import step_kernels as _step_kernels
except ImportError:
    _step_kernels = None

__all__ = ["ssd", "ssd_step"]

_AVAILABLE = ("naive", "torch", "triton")
_TRITON_MIN_HALF_CHUNK = 64  # smallest chunk_size at which "auto" picks triton for bf16/fp16 inputs
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_floating(t, name: str, shape: tuple, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        reject(name, type(t).__name__, "a torch.Tensor")
    if not t.is_floating_point():
        reject(f"{name}.dtype", t.dtype, "a floating-point dtype")
    if tuple(t.shape) != shape:
        reject(f"{name}.shape", shape_of(t), f"{shape} {what}")


def _check_values(A: torch.Tensor, dt: torch.Tensor) -> None:
    """-inf < A < 0 (the recurrence must decay; A >= 0 is defect 6 of the published code, docs/design.md) and
    0 <= dt < inf.

    Needs one device synchronisation; skipped where :func:`value_checks_enabled` says so.
    """
    if not value_checks_enabled():
        return
    bad_a, bad_dt = torch.stack([~((A < 0) & A.isfinite()).all(), ~((dt >= 0) & dt.isfinite()).all()]).tolist()
    if bad_a:  # the value is read only to report it: no second synchronisation on the passing path
        reject("A", A.detach().cpu().tolist() if A.numel() <= 16 else f"tensor of shape {shape_of(A)}",
               "every entry must be finite and < 0 (the state must decay; use A = -exp(A_log))")
    require(not bad_dt, "dt", f"tensor of shape {shape_of(dt)} with negative, infinite or NaN entries",
            "every entry must be finite and >= 0 (dt comes out of softplus; 0 marks padding)")


def _check_seq_idx(seq_idx, b: int, l: int, device: torch.device) -> None:
    """seq_idx: a (b, l) integer tensor on x's device whose ids never decrease along a row (the value check needs
    one device synchronisation; skipped where :func:`value_checks_enabled` says so)."""
    require(isinstance(seq_idx, torch.Tensor), "seq_idx", type(seq_idx).__name__, "a torch.Tensor or None")
    require(not seq_idx.is_floating_point() and not seq_idx.is_complex() and seq_idx.dtype != torch.bool,
            "seq_idx.dtype", seq_idx.dtype, "an integer dtype (document ids)")
    require(tuple(seq_idx.shape) == (b, l), "seq_idx.shape", shape_of(seq_idx), f"(b, l) = ({b}, {l})")
    require(seq_idx.device == device, "seq_idx.device", seq_idx.device, f"the device of x ({device})")
    if value_checks_enabled() and l > 1 and bool((seq_idx[:, 1:] < seq_idx[:, :-1]).any()):
        reject("seq_idx", f"tensor of shape {shape_of(seq_idx)} with a decreasing step",
               "non-decreasing document ids along each row (a document is one contiguous run)")


def _check_common(x, dt, A, B, C, D, h: int, b_name: str, c_name: str) -> None:
    """Shapes shared by :func:`ssd` and :func:`ssd_step`: C like B, groups dividing heads, A and D per head."""
    if tuple(C.shape) != tuple(B.shape):
        reject(f"{c_name}.shape", shape_of(C), f"the same shape as {b_name} {shape_of(B)}")
    g = B.shape[-2]
    if not (g >= 1 and h % g == 0):
        reject(f"{b_name}.shape", shape_of(B), f"groups g (dim -2) must divide the number of heads h={h}")
    if B.shape[-1] < 1:
        reject(f"{b_name}.shape", shape_of(B), "a state size n >= 1 (last dim)")
    _check_floating(A, "A", (h,), "(h,): one decay per head")
    if D is not None:
        _check_floating(D, "D", (h,), "(h,): one skip weight per head")
    for name, t in (("A", A), (b_name, B), (c_name, C), ("D", D), ("dt", dt)):
        if t is not None:
            if t.device != x.device:
                reject(f"{name}.device", t.device, f"the device of x ({x.device})")


def ssd(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
        chunk_size: int = 64, D: torch.Tensor | None = None, initial_state: torch.Tensor | None = None,
        return_final_state: bool = False, seq_idx: torch.Tensor | None = None, backend: str = "auto",
        x_activation: str | None = None):
    """Run SSD over a whole sequence.

    Args:
        x: (b, l, h, p) inputs, any floating dtype (half inputs accumulate in float32).
        dt: (b, l, h) step sizes ``>= 0`` (already through softplus; 0 leaves the state unchanged).
        A: (h,) decay rates, every entry ``< 0``.
        B, C: (b, l, g, n) input / output projections of the state, ``h % g == 0``; head ``i`` uses group
            ``i // (h / g)``.
        chunk_size: chunk length of the dual algorithm, a power of two (any ``l`` works).
        D: optional (h,) skip weights (``y += D · x``).
        initial_state: optional (b, h, p, n) state before the first step (of the row's first document).
        return_final_state: also return ``S_l`` (the state of the row's last document).
        seq_idx: optional (b, l) integer document ids, non-decreasing along a row (packed documents): the
            state is zero before a document's first token, so ``S_t = dt_t · x_t ⊗ B_t`` there, and no
            output depends on another document's inputs. ``None``: the row is one document.
        backend: ``"auto"`` (``"triton"`` on CUDA for float32 inputs and for bf16 / fp16 with
            ``chunk_size >= 64``, else ``"torch"``),
            ``"torch"``, ``"triton"`` or ``"naive"``.
        x_activation: ``None``, or ``"silu"``: ``x`` is a pre-activation and SSD runs on ``silu(x)`` (the ``D``
            skip too). The Triton backend then keeps ``x`` rather than ``silu(x)`` for the backward and recomputes
            the activation there (one element-wise pass; Mamba2's layer saves a ``(b, l, h·p)`` tensor this way).

    Returns:
        y (b, l, h, p) in ``x.dtype``; with ``return_final_state`` the pair ``(y, final_state)``, the state
        (b, h, p, n) in float32 (float64 if ``x`` or ``initial_state`` is float64).

    Raises ``ValueError`` naming the argument for wrong shapes, dtypes, devices, ``chunk_size``, ``backend``,
    ``A >= 0``, ``dt < 0`` or a decreasing ``seq_idx`` (the value checks synchronise the device once and are skipped
    under
    ``torch.compile``).
    """
    require(isinstance(x, torch.Tensor) and x.dim() == 4, "x.shape",
            shape_of(x) if isinstance(x, torch.Tensor) else type(x).__name__, "a 4-D tensor (b, l, h, p)")
    require(x.is_floating_point(), "x.dtype", x.dtype, "a floating-point dtype")
    b, l, h, p = x.shape
    require(l >= 1 and b >= 1 and h >= 1 and p >= 1, "x.shape", shape_of(x), "all of (b, l, h, p) >= 1")
    require(is_int(chunk_size) and chunk_size >= 1
            and chunk_size & (chunk_size - 1) == 0, "chunk_size", chunk_size, "a power of two (1, 2, 4, ..., 64, ...)")
    require(isinstance(return_final_state, bool), "return_final_state", return_final_state, "True or False")
    _check_floating(dt, "dt", (b, l, h), "(b, l, h) matching x")
    require(isinstance(B, torch.Tensor) and B.dim() == 4 and tuple(B.shape[:2]) == (b, l), "B.shape",
            shape_of(B) if isinstance(B, torch.Tensor) else type(B).__name__, f"(b, l, g, n) = ({b}, {l}, g, n)")
    require(isinstance(C, torch.Tensor), "C", type(C).__name__, "a torch.Tensor")
    require(B.is_floating_point(), "B.dtype", B.dtype, "a floating-point dtype")
    require(C.is_floating_point(), "C.dtype", C.dtype, "a floating-point dtype")
    n = B.shape[-1]
    _check_common(x, dt, A, B, C, D, h, "B", "C")
    if initial_state is not None:
        _check_floating(initial_state, "initial_state", (b, h, p, n), "(b, h, p, n)")
        require(initial_state.device == x.device, "initial_state.device", initial_state.device,
                f"the device of x ({x.device})")
    half_or_single = x.dtype in _TRITON_DTYPES and (initial_state is None or initial_state.dtype != torch.float64)
    # "auto" takes triton only where it was verified on a GPU: bf16/fp16 at chunk sizes 64, 128 and 256 and float32
    # (tests/ops/test_ssd_cuda.py on an H100, session 6). Chunk 64 in half precision had a 3% output error on
    # Triton 3.6 / sm_90 until the output kernel took 8 warps there (chunked_kernels.OUTPUT_WARPS_AT_64); smaller
    # half-precision chunks have not run on a GPU and stay on "torch".
    verified = half_or_single and (x.dtype == torch.float32 or chunk_size >= _TRITON_MIN_HALF_CHUNK)
    name = resolve_backend(backend, _AVAILABLE, x.device, ("triton", "torch") if verified else ("torch",))
    if name == "triton":
        require(x.dtype in _TRITON_DTYPES, "x.dtype", x.dtype,
                "float32, bfloat16 or float16 for backend='triton' (float64 runs on 'torch')")
        require(half_or_single, "initial_state.dtype", torch.float64,
                "float32, bfloat16 or float16 for backend='triton' (float64 runs on 'torch')")
    if seq_idx is not None:
        _check_seq_idx(seq_idx, b, l, x.device)
    _check_values(A, dt)
    require(x_activation in (None, "silu"), "x_activation", x_activation, "None or 'silu'")
    if name == "triton":
        from .chunked_kernels import ssd_triton  # imported on first use: the package imports without triton

        return ssd_triton(x, dt, A, B, C, chunk_size=chunk_size, D=D, initial_state=initial_state,
                          return_final_state=return_final_state, seq_idx=seq_idx, silu_x=x_activation == "silu")
    if x_activation == "silu":
        x = torch.nn.functional.silu(x)
    if name == "naive":
        return ssd_naive(x, dt, A, B, C, D=D, initial_state=initial_state, return_final_state=return_final_state,
                         seq_idx=seq_idx)
    return ssd_chunked(x, dt, A, B, C, chunk_size=chunk_size, D=D, initial_state=initial_state,
                       return_final_state=return_final_state, seq_idx=seq_idx)


def ssd_step(state: torch.Tensor, x_t: torch.Tensor, dt_t: torch.Tensor, A: torch.Tensor, B_t: torch.Tensor,
             C_t: torch.Tensor, D: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Advance SSD by one token (decoding). A pure function: ``state`` is not modified.

    Args:
        state: (b, h, p, n) the state before this token.
        x_t: (b, h, p); dt_t: (b, h) ``>= 0``; A: (h,) ``< 0``; B_t, C_t: (b, g, n) with ``h % g == 0``;
        D: optional (h,).

    Returns:
        ``(y_t (b, h, p) in x_t.dtype, new_state (b, h, p, n))``, the state in float32 (float64 if ``state``
        or ``x_t`` is float64). Repeating it over a sequence equals :func:`ssd`.
    """
    if not (isinstance(x_t, torch.Tensor) and x_t.dim() == 3):
        reject("x_t.shape", shape_of(x_t) if isinstance(x_t, torch.Tensor) else type(x_t).__name__,
               "a 3-D tensor (b, h, p)")
    if not x_t.is_floating_point():
        reject("x_t.dtype", x_t.dtype, "a floating-point dtype")
    b, h, p = x_t.shape
    require(b >= 1 and h >= 1 and p >= 1, "x_t.shape", shape_of(x_t), "all of (b, h, p) >= 1")
    _check_floating(dt_t, "dt_t", (b, h), "(b, h) matching x_t")
    if not (isinstance(B_t, torch.Tensor) and B_t.dim() == 3 and B_t.shape[0] == b):
        reject("B_t.shape", shape_of(B_t) if isinstance(B_t, torch.Tensor) else type(B_t).__name__,
               f"(b, g, n) = ({b}, g, n)")
    if not isinstance(C_t, torch.Tensor):
        reject("C_t", type(C_t).__name__, "a torch.Tensor")
    if not B_t.is_floating_point():
        reject("B_t.dtype", B_t.dtype, "a floating-point dtype")
    if not C_t.is_floating_point():
        reject("C_t.dtype", C_t.dtype, "a floating-point dtype")
    n = B_t.shape[-1]
    _check_common(x_t, dt_t, A, B_t, C_t, D, h, "B_t", "C_t")
    _check_floating(state, "state", (b, h, p, n), "(b, h, p, n)")
    if state.device != x_t.device:
        reject("state.device", state.device, f"the device of x_t ({x_t.device})")
    _check_values(A, dt_t)
    return recurrent_step(state, x_t, dt_t, A, B_t, C_t, D)


def fused_step_usable(backend: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the SSD layer's fused decoding step (:func:`projected_step`) runs for a layer ``backend``
    (``"auto"``: on CUDA with triton; ``"triton"``: required, also under ``TRITON_INTERPRET=1``; ``"torch"`` or
    ``"naive"``: never) and activation ``dtype`` (float32, bf16, fp16)."""
    if backend in ("torch", "naive") or dtype not in _TRITON_DTYPES:
        return False
    if backend == "triton":
        if not triton_usable(device):
            reject("backend", backend, "'triton' needs a CUDA device (or TRITON_INTERPRET=1) and the triton package")
        return True
    return device.type == "cuda" and triton_usable(device)


def projected_step(proj: torch.Tensor, state: torch.Tensor, dt_bias: torch.Tensor, A_log: torch.Tensor,
                   D: torch.Tensor | None, num_heads: int, head_dim: int, num_groups: int, state_size: int,
                   dt_limit: tuple[float, float], rope: str, position: torch.Tensor | None = None,
                   inv_freq: torch.Tensor | None = None, rate: torch.Tensor | None = None,
                   angle: torch.Tensor | None = None) -> torch.Tensor:
    """One decoding token of the Cheems SSD layer from its input projection, as one Triton launch: silu of
    ``x, B, C``, ``dt = softplus(dt + dt_bias)``, the rotation of ``B`` and ``C`` and the recurrence, the state
    (and the running angle of ``rope="data"``) updated in place.

    Args:
        proj: ``(b, width)`` the ``in_proj`` output ``[z (h·p), x (h·p), B (g·n), C (g·n), dt (h)]``, float32 /
            bf16 / fp16, last dim contiguous.
        state: ``(b, h, p, n)`` float32 contiguous. dt_bias, A_log: ``(h,)``; D: ``(h,)`` or None.
        num_heads, head_dim, num_groups, state_size: ``h, p, g, n``; dt_limit: ``(low, high)`` clamp of ``dt``.
        rope: ``"fixed"`` with ``position (b,)`` integer and ``inv_freq (n/2,)`` float32; ``"data"`` with
            ``rate (b, n/2)`` (the angle projection of the layer input) and ``angle (b, h, n/2)`` float32
            contiguous; or ``"none"``.

    Returns:
        ``y (b, h·p)`` in ``proj``'s dtype (before the gated norm).
    """
    h, p, g, n = num_heads, head_dim, num_groups, state_size
    if not (proj.dtype in _TRITON_DTYPES and proj.dim() == 2 and proj.shape[1] == 2 * h * p + 2 * g * n + h
            and proj.stride(1) == 1):
        reject("proj", (shape_of(proj), proj.dtype),
               f"(b, {2 * h * p + 2 * g * n + h}) float32/bf16/fp16 with a contiguous last dim")
    if not (state.dtype == torch.float32 and state.is_contiguous() and tuple(state.shape) == (proj.shape[0], h, p, n)):
        reject("state", (shape_of(state), state.dtype), f"({proj.shape[0]}, {h}, {p}, {n}) float32 contiguous")
    if rope not in ("fixed", "data", "none"):
        reject("rope", rope, "'fixed', 'data' or 'none'")
    if rope == "fixed":
        if not (position is not None and inv_freq is not None and inv_freq.dtype == torch.float32
                and inv_freq.shape == (n // 2,)):
            reject("inv_freq", None if inv_freq is None else shape_of(inv_freq),
                   f"({n // 2},) float32 with a position (b,) for rope='fixed'")
    if rope == "data":
        if not (rate is not None and angle is not None and angle.dtype == torch.float32 and angle.is_contiguous()
                and tuple(angle.shape) == (proj.shape[0], h, n // 2)):
            reject("angle", None if angle is None else shape_of(angle),
                   f"({proj.shape[0]}, {h}, {n // 2}) float32 contiguous with a rate (b, {n // 2}) for rope='data'")
    return _step_kernels.decode_step(proj, state, dt_bias, A_log, D, h, p, g, n, dt_limit, rope, position, inv_freq,
                                     rate, angle)
