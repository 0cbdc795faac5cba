"""Helpers shared by the Triton kernels of every op (imported only where triton is installed)."""
from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """Whether kernels run on the CPU interpreter (``TRITON_INTERPRET=1``, the test suite). Read when called: a
    test may set the variable and re-import a kernel module, whose import-time choices then see it."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def poisoned_empty(*shape: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """A fresh ``shape`` buffer for a kernel to write; under the interpreter (tests) filled with NaN (-1 for an
    integer dtype), so that an element the kernel fails to write cannot pass a comparison with the oracle.
    Uninitialised on a GPU."""
    if interpreting():
        return torch.full(shape, float("nan") if dtype.is_floating_point else -1, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def pow2_at_least(size: int) -> int:
    """The smallest power of two ``>= size`` (1 for ``size <= 1``)."""
    return 1 << max(0, (size - 1).bit_length())


def dot_block(size: int) -> int:
    """Tile width covering ``size`` in one block for ``tl.dot``: a power of two, at least 16 (its minimum)."""
    return max(16, pow2_at_least(size))
