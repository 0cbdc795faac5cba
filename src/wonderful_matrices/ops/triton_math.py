"""Element-wise functions that the Triton kernels of several ops share, on float32 values (GPU; CPU under
``TRITON_INTERPRET=1``). Needs Triton, unlike ``triton_utils``."""
import triton
import triton.language as tl


@triton.jit
def silu(x):
    """``x · sigmoid(x)``."""
    return x * tl.sigmoid(x)


@triton.jit
def silu_derivative(x):
    """``d silu(x) / dx = sigmoid(x) · (1 + x · (1 − sigmoid(x)))``."""
    sig = tl.sigmoid(x)
    return sig * (1.0 + x * (1.0 - sig))
