"""Mixture of single-neuron experts: ``y = Σ_heads Σ_k gate · act(down[e]·x) · up[e]`` per token."""
from __future__ import annotations

from torch import Tensor

from ..common import needs_backward, require, resolve_backend, shape_of, value_checks_enabled
from . import dense as _dense
from . import gather as _gather
from . import naive as _naive
from .naive import ACTIVATIONS

_AVAILABLE = ("naive", "torch", "triton", "dense")
_INDEX_DTYPES = ("torch.int64", "torch.int32")
_TRITON_DTYPES = ("torch.float32", "torch.bfloat16", "torch.float16")


# "auto" on CUDA uses the dense backend while N <= DENSE_FACTOR · M (M = H·k selections per token) and a backward will
# run through the mixture (its gain is the backward; see the forward-only note below). Measured at
# cheems-base's CDMoE (N = 2304, M = 32, i.e. N = 72·M; 8 × 4096 tokens, d = 1024, bf16; one H100, training tokens/s
# of the whole model in one process, docs/results/session8_h100/call2/): the dense mixture trains 1.10x faster than
# the Triton one eager and 1.25x compiled. From the same runs, per layer and step: the Triton mixture ≈ 3.4 ms (its
# three custom ops in the compiled profile), the dense one ≈ 2.1 ms eager and ≈ 1.1 ms compiled — per expert 0.9 /
# 0.46 µs against 106 µs per selection, so break-even near N ≈ 118·M eager and ≈ 230·M compiled. 96 keeps a margin
# below the eager one. At N = 2^16, M = 128 (512·M) the dense mixture took 21.5 ms against Triton's 4.3 (session 5,
# before the bf16 coefficient matrices).
# Forward only (inference: prefill and decoding) the gathers win at every size measured: with the dense mixture in
# "auto" (session 9, docs/results/session9_h100/call1/generate/) cheems-base prefilled 111k / 210k tokens/s at 4K /
# 128K against the Triton mixture's 147k / 303k (session 8), and decoded 24k / 76k tokens/s at 64 / 256 rows against
# 41k / 104k (its coefficient matrices cost a sort and a dozen small launches per layer and step).
DENSE_FACTOR = 96


def dense_is_cheaper(num_experts: int, selections: int, backward: bool = True) -> bool:
    """Whether ``"auto"`` on CUDA picks the dense backend for ``num_experts`` (N) and ``selections`` (M = H·k per
    token): ``N <= DENSE_FACTOR · M`` when a ``backward`` will run through the mixture, never for a forward alone
    (the measurements are at ``DENSE_FACTOR``)."""
    return backward and num_experts <= DENSE_FACTOR * selections


def _backend_for(backend: str, table: Tensor, selections: int, backward: bool) -> str:
    """Resolve ``backend`` for a table and ``selections`` (M) per token, ``backward`` whether autograd will run
    through the op: ``"auto"`` on CUDA is ``"dense"`` where :func:`dense_is_cheaper`, else ``"triton"`` (when triton
    is installed) for float32 / bf16 / fp16 tables, else ``"torch"``; on the CPU ``"auto"`` is ``"torch"``. An
    explicit ``"triton"`` needs float32, bf16 or fp16."""
    if backend == "auto" and table.is_cuda and dense_is_cheaper(table.shape[0], selections, backward):
        return "dense"
    supported = str(table.dtype) in _TRITON_DTYPES
    name = resolve_backend(backend, _AVAILABLE, table.device, ("triton", "torch") if supported else ("torch",))
    if name == "triton":
        require(supported, "dtype", table.dtype, f"one of {_TRITON_DTYPES} for backend='triton' (float64: 'torch')")
    return name


def expert_mixture(x: Tensor, ids: Tensor, gates: Tensor, down: Tensor, up: Tensor,
                   activation: str = "silu", backend: str = "auto") -> Tensor:
    """Weighted sum of single-neuron experts selected per token.

    ``y[t] = Σ_h Σ_j gates[t,h,j] · act(down[e]·x[t]) · up[e]`` with ``e = ids[t,h,j]``. Each token uses only
    its own ids and gates (no mixing across tokens). Differentiable with respect to ``x``, ``gates``, ``down``
    and ``up``.

    Args:
        x: ``(..., d)`` floating point.
        ids: ``(..., H, k)`` int64 (or int32) expert ids in ``[0, N)``; leading dims equal ``x.shape[:-1]``.
        gates: ``(..., H, k)`` floating point weights (any float dtype; float32 gates with bf16 tables is fine).
        down, up: ``(N, d)`` expert tables, the dtype and device of ``x``.
        activation: ``"silu"``, ``"gelu"`` or ``"relu"``.
        backend: ``"auto"`` (on CUDA ``"dense"`` while ``N <= DENSE_FACTOR · H·k`` and a backward will run
            through it, else ``"triton"`` for float32/bf16/fp16 tables, else ``"torch"``; ``"torch"`` on the
            CPU), ``"dense"`` (matrix products over all ``N`` experts in token chunks, every float dtype, any
            device; for few experts), ``"triton"`` (GPU kernels that gather the selected rows by id,
            float32/bf16/fp16; also CPU under ``TRITON_INTERPRET=1``), ``"torch"`` (``embedding_bag`` reductions,
            or chunked gathers for half precision on CUDA; never builds ``(tokens, N)`` or whole
            ``(tokens, H·k, d)`` tensors) or ``"naive"`` (plain loops; the oracle).

    Returns:
        ``(..., d)`` in the dtype of ``x``.
    """
    if not _mixture_args_valid(x, ids, gates, down, up, activation):
        _check_mixture_args(x, ids, gates, down, up, activation)
    if ids.numel() and value_checks_enabled():  # one device synchronisation
        low, high = (int(v) for v in ids.aminmax())
        require(low >= 0 and high < down.shape[0], "ids", f"values in [{low}, {high}]",
                f"expert ids in [0, N={down.shape[0]})")
    name = _backend_for(backend, down, ids.shape[-2] * ids.shape[-1], needs_backward(x, gates, down, up))
    if name == "dense":
        return _dense.expert_mixture(x, ids.long(), gates, down, up, activation)
    if name == "triton":
        from .row_kernels import expert_mixture as triton_mixture  # imported on first use: no triton, no import

        return triton_mixture(x, ids.long(), gates, down, up, activation)
    implementation = _naive.expert_mixture if name == "naive" else _gather.expert_mixture
    return implementation(x, ids.long(), gates, down, up, activation)


def _mixture_args_valid(x, ids, gates, down, up, activation) -> bool:
    """Whether :func:`_check_mixture_args` passes, as one expression: the common case builds no error message."""
    return (isinstance(x, Tensor) and isinstance(ids, Tensor) and isinstance(gates, Tensor)
            and isinstance(down, Tensor) and isinstance(up, Tensor) and x.is_floating_point() and x.dim() >= 1
            and down.dim() == 2 and down.shape[1] == x.shape[-1] and up.shape == down.shape and down.shape[0] >= 1
            and down.dtype == up.dtype == x.dtype and down.device == up.device == ids.device == gates.device == x.device
            and ids.dim() == x.dim() + 1 and ids.shape[:-2] == x.shape[:-1] and str(ids.dtype) in _INDEX_DTYPES
            and gates.shape == ids.shape and gates.is_floating_point() and activation in ACTIVATIONS
            and ids.shape[-1] >= 1 and ids.shape[-2] >= 1)


def _check_mixture_args(x, ids, gates, down, up, activation) -> None:
    """The argument checks of :func:`expert_mixture` (shapes, dtypes, devices, activation), one error each."""
    def described(t):
        return shape_of(t) if isinstance(t, Tensor) else t

    require(isinstance(x, Tensor) and x.is_floating_point() and x.dim() >= 1, "x.shape", described(x),
            "a floating tensor (..., d)")
    require(isinstance(down, Tensor) and down.dim() == 2 and down.shape[1] == x.shape[-1], "down.shape",
            described(down), f"(N, d={x.shape[-1]})")
    require(isinstance(up, Tensor) and up.shape == down.shape, "up.shape", described(up),
            f"the shape of down {shape_of(down)}")
    require(down.shape[0] >= 1, "down.shape", shape_of(down), "at least one expert (N >= 1)")
    for name, t in (("down", down), ("up", up)):
        require(t.dtype == x.dtype, f"{name}.dtype", t.dtype, f"the dtype of x ({x.dtype})")
        require(t.device == x.device, f"{name}.device", t.device, f"the device of x ({x.device})")
    require(isinstance(ids, Tensor) and ids.dim() == x.dim() + 1 and ids.shape[:-2] == x.shape[:-1],
            "ids.shape", described(ids), f"(..., H, k) with leading dims {tuple(x.shape[:-1])} of x")
    require(str(ids.dtype) in _INDEX_DTYPES, "ids.dtype", ids.dtype, f"one of {_INDEX_DTYPES}")
    require(ids.device == x.device, "ids.device", ids.device, f"the device of x ({x.device})")
    require(isinstance(gates, Tensor) and gates.shape == ids.shape and gates.is_floating_point(),
            "gates.shape", described(gates), f"a floating tensor of the shape of ids {shape_of(ids)}")
    require(gates.device == x.device, "gates.device", gates.device, f"the device of x ({x.device})")
    require(activation in ACTIVATIONS, "activation", activation, f"one of {sorted(ACTIVATIONS)}")
    require(ids.shape[-1] >= 1 and ids.shape[-2] >= 1, "ids.shape", shape_of(ids), "H >= 1 and k >= 1")


def weighted_rows(weights: Tensor, ids: Tensor, table: Tensor, backend: str = "auto") -> Tensor:
    """Product-key memory read ``y[t] = Σ_j weights[t, j] · table[ids[t, j]]`` (PKM's value lookup).

    Args:
        weights: ``(T, M)`` floating point; ids: ``(T, M)`` int64 in ``[0, N)``; table: ``(N, d)``.
        backend: ``"auto"`` (on CUDA ``"dense"`` while ``N <= DENSE_FACTOR · M`` and a backward will run through
            it, else ``"triton"`` for
            float32/bf16/fp16 tables, else ``"torch"``; ``"torch"`` on the CPU), ``"torch"``, ``"dense"`` (scatter the
            weights into a ``(T, N)`` matrix, chunked, times the table) or ``"triton"`` (float32/bf16/fp16).

    Returns:
        ``(T, d)`` in the table dtype; differentiable with respect to ``weights`` and ``table``.
    """
    def described(t):
        return shape_of(t) if isinstance(t, Tensor) else t

    require(isinstance(ids, Tensor) and ids.dim() == 2 and str(ids.dtype) in _INDEX_DTYPES, "ids",
            described(ids), f"an integer tensor (T, M) of dtype in {_INDEX_DTYPES}")
    require(isinstance(weights, Tensor) and weights.shape == ids.shape and weights.is_floating_point(),
            "weights.shape", described(weights), f"a floating tensor of the shape of ids {shape_of(ids)}")
    require(isinstance(table, Tensor) and table.dim() == 2 and table.shape[0] >= 1, "table.shape", described(table),
            "(N, d) with N >= 1")
    for name, t in (("weights", weights), ("ids", ids)):
        require(t.device == table.device, f"{name}.device", t.device, f"the device of table ({table.device})")
    if ids.numel() and value_checks_enabled():  # one device synchronisation
        low, high = (int(v) for v in ids.aminmax())
        require(low >= 0 and high < table.shape[0], "ids", f"values in [{low}, {high}]",
                f"row ids in [0, N={table.shape[0]})")
    name = _backend_for(backend, table, ids.shape[1], needs_backward(weights, table))
    require(name != "naive", "backend", backend, "'auto', 'torch', 'dense' or 'triton'")
    if name == "dense":
        return _dense.weighted_rows(weights, ids.long(), table)
    if name == "triton":
        from .row_kernels import weighted_rows as triton_rows

        return triton_rows(weights, ids.long(), table)
    return _gather.weighted_rows(weights, ids.long(), table)


__all__ = ["expert_mixture", "weighted_rows", "dense_is_cheaper", "ACTIVATIONS", "DENSE_FACTOR"]
