"""The RMSNorm Triton kernels compile for a Hopper GPU (sm_90) without one: catches front-end and type errors the
interpreter tests cannot (mixed dtypes: a bf16 input with a float32 residual stream, as under autocast)."""
import pytest

from conftest import compile_for_sm90, compiles_real_kernels

pytest.importorskip("triton")

pytestmark = compiles_real_kernels

# (x, residual, weight, s, y) element types
DTYPES = [("bf16", "bf16", "bf16", "bf16", "bf16"), ("bf16", "fp32", "fp32", "fp32", "fp32"),
          ("fp32", "fp32", "fp32", "fp32", "fp32"), ("fp16", "fp16", "fp32", "fp16", "fp32")]


def _compile(fn, signature, constants, num_warps):
    return compile_for_sm90(fn, signature, constants, num_warps, aligned=True)


@pytest.mark.parametrize("dt", DTYPES, ids=lambda d: "-".join(d))
@pytest.mark.parametrize("has_residual", [False, True])
@pytest.mark.parametrize("store_rstd", [True, False], ids=["training", "no_grad"])
def test_kernels_compile_for_sm90(dt, has_residual, store_rstd):
    from wonderful_matrices.ops.rms_norm import fused_kernels as k

    x, res, w, s, y = dt
    if not has_residual:
        res, s = x, x
    block_m, block_d, num_warps = 4, 1024, 8  # the GPU choice for d = 768
    fwd = {"x_ptr": f"*{x}", "res_ptr": f"*{res}", "w_ptr": f"*{w}", "s_ptr": f"*{s}", "y_ptr": f"*{y}",
           "rstd_ptr": "*fp32", "M": "i32", "D": "i32", "eps": "fp32", "HAS_RESIDUAL": "constexpr",
           "STORE_RSTD": "constexpr", "BLOCK_M": "constexpr", "BLOCK_D": "constexpr"}
    _compile(k._rms_norm_fwd_kernel, fwd, {"HAS_RESIDUAL": has_residual, "STORE_RSTD": store_rstd,
                                           "BLOCK_M": block_m, "BLOCK_D": block_d}, num_warps)
    bwd = {"s_ptr": f"*{s}", "w_ptr": f"*{w}", "rstd_ptr": "*fp32", "dy_ptr": f"*{y}", "ds_in_ptr": f"*{s}",
           "dx_ptr": f"*{x}", "dres_ptr": f"*{res}", "dw_ptr": "*fp32", "M": "i32", "D": "i32",
           "ROWS_PER_PROGRAM": "i32", "HAS_DS": "constexpr", "HAS_DRES": "constexpr", "BLOCK_M": "constexpr",
           "BLOCK_D": "constexpr"}
    _compile(k._rms_norm_bwd_kernel, bwd, {"HAS_DS": has_residual, "HAS_DRES": has_residual,
                                             "BLOCK_M": block_m, "BLOCK_D": block_d}, num_warps)


@pytest.mark.parametrize("dt", [("bf16", "bf16", "fp32"), ("fp32", "bf16", "fp32"), ("fp32", "fp32", "fp32")],
                         ids=lambda d: "-".join(d))
@pytest.mark.parametrize("store_rstd", [True, False], ids=["training", "no_grad"])
def test_gated_kernels_compile_for_sm90(dt, store_rstd):
    from wonderful_matrices.ops.rms_norm import fused_kernels as k

    x, z, w = dt
    block_m, block_d, num_warps = 32, 128, 8  # the GPU choice for groups of 128 channels
    fwd = {"x_ptr": f"*{x}", "z_ptr": f"*{z}", "w_ptr": f"*{w}", "y_ptr": "*fp32", "rstd_ptr": "*fp32", "M": "i32",
           "D": "i32", "G": "i32", "eps": "fp32", "sxm": "i32", "szm": "i32", "STORE_RSTD": "constexpr",
           "BLOCK_M": "constexpr", "BLOCK_D": "constexpr"}
    _compile(k._gated_rms_norm_fwd_kernel, fwd, {"STORE_RSTD": store_rstd, "BLOCK_M": block_m, "BLOCK_D": block_d},
             num_warps)
    # the training case also writes the norm's output again (bf16, as the SSD layer's gated_rms_norm_linear asks)
    bwd = {"x_ptr": f"*{x}", "z_ptr": f"*{z}", "w_ptr": f"*{w}", "rstd_ptr": "*fp32", "dy_ptr": "*fp32",
           "dx_ptr": f"*{x}", "dz_ptr": f"*{z}", "dw_ptr": "*fp32", "y_ptr": "*bf16", "M": "i32", "D": "i32",
           "G": "i32", "ROWS_PER_PROGRAM": "i32", "STORE_Y": "constexpr", "BLOCK_M": "constexpr",
           "BLOCK_D": "constexpr"}
    _compile(k._gated_rms_norm_bwd_kernel, bwd, {"STORE_Y": store_rstd, "BLOCK_M": block_m, "BLOCK_D": block_d},
             num_warps)
