"""The fused product-key top-k kernels compile for a Hopper GPU (sm_90) without one: catches front-end, type and
lowering errors the interpreter tests cannot (run it under another triton with ``PYTHONPATH=/path/to/triton:src``,
see scripts/README.md)."""
import importlib

import pytest

from conftest import compile_for_sm90, compiles_real_kernels

pytest.importorskip("triton")

pytestmark = compiles_real_kernels

FORWARD = {"q_ptr": "*{dt}", "keys_ptr": "*{dt}", "scores_ptr": "*fp32", "ids_ptr": "*i64", "T": "i32", "H": "i32",
           "N_KEYS": "i32", "DK": "i32", "K": "constexpr", "K_PAD": "constexpr", "DK_PAD": "constexpr",
           "PRECISION": "constexpr", "BLOCK_T": "constexpr", "BLOCK_N": "constexpr"}
BACKWARD = {"q_ptr": "*{dt}", "keys_ptr": "*{dt}", "ids_ptr": "*i64", "grad_ptr": "*fp32", "dq_ptr": "*{dt}",
            "dkeys_ptr": "*fp32", "T": "i32", "H": "i32", "N_KEYS": "i32", "DK": "i32", "K": "constexpr",
            "K_PAD": "constexpr", "DK_PAD": "constexpr", "BLOCK_T": "constexpr"}


def _compile(fn, signature, constants, num_warps, dt):
    signature = {k: v.format(dt=dt) for k, v in signature.items()}
    return compile_for_sm90(fn, signature, constants, num_warps, aligned=True)


@pytest.mark.parametrize("k", [16, 5, 32])
@pytest.mark.parametrize("dt", ["bf16", "fp32"])
def test_forward_compiles_for_sm90(dt, k):
    """Every autotune configuration compiles (one failing configuration fails the kernel at its first call)."""
    kernels = importlib.import_module("wonderful_matrices.ops.product_key.topk_kernels")
    kernel = kernels._topk_forward_kernel
    for config in kernel.configs:
        constants = {"K": k, "K_PAD": kernels._pad(k), "DK_PAD": 32,
                     "PRECISION": "ieee" if dt == "fp32" else "tf32", **config.kwargs}
        _compile(kernel.fn, FORWARD, constants, config.num_warps, dt)


@pytest.mark.parametrize("k", [16, 5])
@pytest.mark.parametrize("dt", ["bf16", "fp32"])
def test_backward_compiles_for_sm90(dt, k):
    kernels = importlib.import_module("wonderful_matrices.ops.product_key.topk_kernels")
    constants = {"K": k, "K_PAD": kernels._pad(k), "DK_PAD": 32, "BLOCK_T": 8}
    _compile(kernels._topk_backward_kernel, BACKWARD, constants, 4, dt)


REDUCED = {**{k: v for k, v in BACKWARD.items() if k not in ("K_PAD", "DK_PAD", "BLOCK_T")}, "N_PAD": "constexpr",
           "DK_PAD": "constexpr", "BLOCK_T": "constexpr"}


@pytest.mark.parametrize("n_pad,block_t", [(64, 64), (32, 64), (16, 64)])
@pytest.mark.parametrize("dt", ["bf16", "fp32"])
def test_reduced_backward_compiles_for_sm90(dt, n_pad, block_t):
    """The backward that sums a token block's picks per sub-key, at the block sizes topk_backward picks for
    √N = 48 (cheems-base), 32 and 16."""
    kernels = importlib.import_module("wonderful_matrices.ops.product_key.topk_kernels")
    constants = {"K": 8, "N_PAD": n_pad, "DK_PAD": 32, "BLOCK_T": block_t}
    _compile(kernels._topk_backward_reduced_kernel, REDUCED, constants, 4, dt)


@pytest.mark.parametrize("k,block_n", [(8, 64), (16, 128), (32, 32), (3, 16)])
def test_bitonic_forward_compiles_for_sm90(k, block_n):
    """The sorting-network forward (FORWARD = "bitonic") in bf16, in every autotune configuration its pruning keeps,
    at the chunk widths topk_forward picks for √N = 48 (cheems-base) and 1024 (N = 2^20, chunks merged), and k = 32,
    k = 3 (float32 differs only in the products' precision, which the insertion kernel's test compiles)."""
    dt = "bf16"
    kernels = importlib.import_module("wonderful_matrices.ops.product_key.topk_kernels")
    kernel = kernels._topk_forward_bitonic_kernel
    k_pad = kernels._pad(k, 2)
    for config in kernels.bitonic_configs_for(kernel.configs, k_pad, block_n):
        constants = {"K": k, "K_PAD": k_pad, "DK_PAD": 32, "BLOCK_N": block_n,
                     "PRECISION": "ieee" if dt == "fp32" else "tf32", **config.kwargs}
        _compile(kernel.fn, FORWARD, constants, config.num_warps, dt)
