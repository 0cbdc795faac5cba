"""The expert-mixture Triton kernels compile for a Hopper GPU (sm_90) without one: catches front-end and type
errors the interpreter tests cannot, and checks that bf16 table rows are read with 16-byte loads when ``d`` is a
multiple of 16 (as Triton specialises such arguments): with 16-byte register loads, or, where the loop is
software-pipelined (the table gradient's gathered rows feed a matrix product), 16-byte asynchronous copies."""
import importlib
import re

import pytest

from conftest import compile_every_config, compiles_real_kernels

pytest.importorskip("triton")

pytestmark = compiles_real_kernels

ROWS = {"BLOCK_M": 16, "BLOCK_D": 256}
DOTS = {"vec_ptr": "*{dt}", "table_ptr": "*{dt}", "ids_ptr": "*i64", "gate_ptr": "*fp32", "s_ptr": "*fp32",
        "out_ptr": "*fp32", "aux_ptr": "*fp32", "M": "i32", "D": "i32", "EPILOGUE": "constexpr", "ACT": "constexpr",
        "BLOCK_M": "constexpr", "BLOCK_D": "constexpr"}
TABLE_GRAD = {"bounds_ptr": "*i64", "sorted_ptr": "*i32", "order_ptr": "*i64", "w_ptr": "*fp32", "vec_ptr": "*{dt}",
              "out_ptr": "*{out}", "w2_ptr": "*fp32", "vec2_ptr": "*{dt}", "out2_ptr": "*{out}", "N": "i32", "D": "i32",
              "SPLIT": "i32", "M": "constexpr", "BLOCK_E": "constexpr", "BLOCK_R": "constexpr", "HI_LO": "constexpr",
              "PAIRED": "constexpr", "TILE_E": "constexpr", "BLOCK_D": "constexpr"}
# (kernel, signature, constants): the dots kernel with each epilogue (0 dots, 1 forward, 2 backward) and
# activation (0 silu, 1 gelu, 2 relu) it runs with; the table gradient (one table or the pair) written directly and as
# partial sums
SIGNATURES = {
    "dots": ("_row_dots_kernel", DOTS, {**ROWS, "EPILOGUE": 0, "ACT": 0}),
    "forward_silu": ("_row_dots_kernel", DOTS, {**ROWS, "EPILOGUE": 1, "ACT": 0}),
    "forward_gelu": ("_row_dots_kernel", DOTS, {**ROWS, "EPILOGUE": 1, "ACT": 1}),
    "backward_silu": ("_row_dots_kernel", DOTS, {**ROWS, "EPILOGUE": 2, "ACT": 0}),
    "backward_gelu": ("_row_dots_kernel", DOTS, {**ROWS, "EPILOGUE": 2, "ACT": 1}),
    "backward_relu": ("_row_dots_kernel", DOTS, {**ROWS, "EPILOGUE": 2, "ACT": 2}),
    "row_sum": ("_row_sum_kernel", {"w_ptr": "*fp32", "table_ptr": "*{dt}", "ids_ptr": "*i64", "out_ptr": "*{dt}",
                                    "M": "i32", "D": "i32", "BLOCK_M": "constexpr", "BLOCK_D": "constexpr"}, ROWS),
    "table_grad": ("_table_grad_kernel", TABLE_GRAD,
                   {"M": 32, "BLOCK_E": 16, "BLOCK_R": 32, "HI_LO": "{hi_lo}", "PAIRED": False}),
    "table_grad_partial": ("_table_grad_kernel", dict(TABLE_GRAD, out_ptr="*fp32", out2_ptr="*fp32"),
                           {"M": 32, "BLOCK_E": 16, "BLOCK_R": 32, "HI_LO": "{hi_lo}", "PAIRED": False}),
    "table_grad_pair": ("_table_grad_kernel", TABLE_GRAD,
                        {"M": 32, "BLOCK_E": 16, "BLOCK_R": 32, "HI_LO": "{hi_lo}", "PAIRED": True}),
    "table_grad_pair_partial": ("_table_grad_kernel", dict(TABLE_GRAD, out_ptr="*fp32", out2_ptr="*fp32"),
                                {"M": 32, "BLOCK_E": 16, "BLOCK_R": 32, "HI_LO": "{hi_lo}", "PAIRED": True}),
}


# the paired table gradient in bf16 (training's dtype, the HI_LO products) only: its tf32x3 products are the one-table
# kernel's, compiled below in fp16 and fp32
CASES = [(dt, name) for name in sorted(SIGNATURES) for dt in ("bf16", "fp16", "fp32")
         if dt == "bf16" or not name.startswith("table_grad_pair")]


@pytest.mark.parametrize("dt,name", CASES)
def test_kernel_compiles_for_sm90(name, dt):
    """Every autotune configuration compiles (one failing configuration fails the kernel at its first call)."""
    kernels = importlib.import_module("wonderful_matrices.ops.expert_mixture.row_kernels")
    kernel, signature, constants = SIGNATURES[name]
    kernel = getattr(kernels, kernel)
    signature = {k: v.format(dt=dt, out=dt) for k, v in signature.items()}
    constants = {k: (dt == "bf16") if v == "{hi_lo}" else v for k, v in constants.items()}
    for config, num_warps, compiled in compile_every_config(kernel, signature, constants, aligned=True):
        if dt == "bf16":  # a 16-byte load to registers, or a 16-byte asynchronous copy to shared memory
            ptx = compiled.asm["ptx"]
            copies = re.search(r"cp\.async[.\w]* \[[^]]*\], \[[^]]*\], 0x10", ptx)
            assert re.search(r"ld\.global(\.\w+)*\.v4", ptx) or copies, \
                f"table rows are not read with 16-byte loads ({config}, {num_warps} warps)"
