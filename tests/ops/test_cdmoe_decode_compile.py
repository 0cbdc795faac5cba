"""The CDMoE decoding kernels (ops/cdmoe/decode_kernels.py) compile for a Hopper GPU (sm_90) without one, in every
autotune configuration: catches front-end, type and lowering errors the interpreter tests cannot."""
import importlib

import pytest

from conftest import compile_every_config, compiles_real_kernels

pytest.importorskip("triton")

pytestmark = compiles_real_kernels

PROJECT = {"x_ptr": "*{dt}", "gate_w_ptr": "*{dt}", "up_w_ptr": "*{dt}", "query_w_ptr": "*{dt}",
           "gate_b_ptr": "*{dt}", "up_b_ptr": "*{dt}", "h_ptr": "*{dt}", "q_ptr": "*{dt}", "T": "i32", "D": "i32",
           "INNER": "i32", "Q": "i32", "HAS_BIAS": "constexpr", "ACT": "constexpr", "PRECISION": "constexpr",
           "BLOCK_T": "constexpr", "BLOCK_O": "constexpr", "BLOCK_K": "constexpr"}
ROUTE = {"x_ptr": "*{dt}", "q_ptr": "*{dt}", "keys_ptr": "*{dt}", "down_ptr": "*{dt}", "up_ptr": "*{dt}",
         "out_ptr": "*fp32", "H": "i32", "N_KEYS": "i32", "DK": "i32", "D": "i32", "K": "constexpr",
         "K_PAD": "constexpr", "DK_PAD": "constexpr", "ACT": "constexpr", "BLOCK_N": "constexpr",
         "BLOCK_D": "constexpr"}
DOWN = {"h_ptr": "*{dt}", "down_w_ptr": "*{dt}", "down_b_ptr": "*{dt}", "private_ptr": "*fp32", "out_ptr": "*{dt}",
        "T": "i32", "D": "i32", "INNER": "i32", "H": "i32", "HAS_BIAS": "constexpr", "PRECISION": "constexpr",
        "BLOCK_T": "constexpr", "BLOCK_O": "constexpr", "BLOCK_K": "constexpr"}
# kernel, signature, constants: the projections with biases and gelu, without and with silu; the routing at
# cheems-base's k = 8 and at k = 5 (a padded register set); the down projection with and without biases
SIGNATURES = {
    "project_bias_gelu": ("_project_kernel", PROJECT, {"HAS_BIAS": True, "ACT": 1, "BLOCK_T": 16}),
    "project_silu": ("_project_kernel", PROJECT, {"HAS_BIAS": False, "ACT": 0, "BLOCK_T": 16}),
    "route_k8": ("_route_mix_kernel", ROUTE, {"K": 8, "K_PAD": 8, "DK_PAD": 32, "ACT": 0}),
    "route_k5_relu": ("_route_mix_kernel", ROUTE, {"K": 5, "K_PAD": 8, "DK_PAD": 32, "ACT": 2}),
    "down_bias": ("_down_kernel", DOWN, {"HAS_BIAS": True, "BLOCK_T": 16}),
    "down": ("_down_kernel", DOWN, {"HAS_BIAS": False, "BLOCK_T": 16}),
}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
@pytest.mark.parametrize("dt", ["bf16", "fp16", "fp32"])
def test_kernel_compiles_for_sm90(name, dt):
    kernels = importlib.import_module("wonderful_matrices.ops.cdmoe.decode_kernels")
    kernel, signature, constants = SIGNATURES[name]
    kernel = getattr(kernels, kernel)
    signature = {k: v.format(dt=dt) for k, v in signature.items()}
    if "PRECISION" in signature:
        constants = {**constants, "PRECISION": "ieee" if dt == "fp32" else "tf32"}
    compile_every_config(kernel, signature, constants, aligned=True)
