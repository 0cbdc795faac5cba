"""The expert-mixture Triton kernels compile for a Hopper GPU (sm_90) without one: catches front-end and type
errors the interpreter tests cannot, and checks that bf16 table rows are read with 16-byte loads when ``d`` is a
multiple of 16 (as Triton specialises such arguments)."""
import importlib
import os
import re

import pytest

pytest.importorskip("triton")
compiler = pytest.importorskip("triton.compiler")
backends = pytest.importorskip("triton.backends.compiler")

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles real kernels")

ROWS = {"BLOCK_M": 16, "BLOCK_D": 256}
SIGNATURES = {
    "_row_dots_kernel": ({"vec_ptr": "*{dt}", "table_ptr": "*{dt}", "ids_ptr": "*i64", "out_ptr": "*fp32",
                          "M": "i32", "D": "i32", "BLOCK_M": "constexpr", "BLOCK_D": "constexpr"}, ROWS),
    "_row_sum_kernel": ({"w_ptr": "*fp32", "table_ptr": "*{dt}", "ids_ptr": "*i64", "out_ptr": "*{dt}",
                         "M": "i32", "D": "i32", "BLOCK_M": "constexpr", "BLOCK_D": "constexpr"}, ROWS),
    "_table_grad_kernel": ({"starts_ptr": "*i64", "order_ptr": "*i64", "w_ptr": "*fp32", "vec_ptr": "*{dt}",
                            "out_ptr": "*{dt}", "N": "i32", "M": "i32", "D": "i32", "SPLIT": "i32",
                            "BLOCK_E": "constexpr", "BLOCK_D": "constexpr"}, {"BLOCK_E": 16, "BLOCK_D": 256}),
}


def _autotune_configs(kernel):
    """(constants, num_warps) of each GPU autotune configuration of ``kernel``."""
    return [(dict(c.kwargs), c.num_warps) for c in kernel.configs]


@pytest.mark.parametrize("name", sorted(SIGNATURES))
@pytest.mark.parametrize("dt", ["bf16", "fp32"])
def test_kernel_compiles_for_sm90(name, dt):
    """Every autotune configuration compiles (one failing configuration fails the kernel at its first call)."""
    kernels = importlib.import_module("wonderful_matrices.ops.expert_mixture.row_kernels")
    signature, constants = SIGNATURES[name]
    signature = {k: v.format(dt=dt) for k, v in signature.items()}
    runtime_args = [i for i, v in enumerate(signature.values()) if v != "constexpr"]
    attrs = {(i,): [["tt.divisibility", 16]] for i in runtime_args}  # pointers aligned, d a multiple of 16
    for config, num_warps in _autotune_configs(getattr(kernels, name)) or [(constants, 4)]:
        try:
            source = compiler.ASTSource(fn=getattr(kernels, name).fn, signature=signature,
                                        constexprs={**constants, **config}, attrs=attrs)
            target = backends.GPUTarget("cuda", 90, 32)
        except TypeError as error:  # another triton version's private API
            pytest.skip(f"this triton's compiler API differs: {error}")
        compiled = compiler.compile(source, target=target, options={"num_warps": num_warps})
        if dt == "bf16":
            assert re.search(r"ld\.global(\.\w+)*\.v4", compiled.asm["ptx"]), \
                f"table rows are not read with 16-byte loads ({config}, {num_warps} warps)"
