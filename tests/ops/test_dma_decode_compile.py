"""The fused DMA decode kernels (ops/dma/decode.py) compile for a Hopper GPU (sm_90) without one: catches
front-end, type and shared-memory errors the interpreter tests cannot, for the key tiles :func:`block_n_for`
picks (bf16 and fp32 caches, head dims 128 and 256, eviction and append, a GQA group of 1 and of 8)."""
import pytest

from conftest import compile_for_sm90, compiles_real_kernels

pytest.importorskip("triton")

pytestmark = compiles_real_kernels

import torch  # noqa: E402

from wonderful_matrices.ops.dma import decode  # noqa: E402

SHARED_LIMIT = 232448  # bytes of shared memory one program may use on sm_90 (227 KB)


def _signature(kernel, dt, constants):
    types = {name: "*fp32" for name in kernel.arg_names if name.endswith("_ptr")}
    types.update({name: f"*{dt}" for name in ("q_ptr", "kn_ptr", "vn_ptr", "k_ptr", "v_ptr", "out_ptr")})
    types.update(pn_ptr="*i64", p_ptr="*i64", drop_ptr="*i32", scale="fp32")
    return {name: "constexpr" if name in constants else types.get(name, "i32") for name in kernel.arg_names}


def _compile(kernel, dt, constants):
    return compile_for_sm90(kernel, _signature(kernel, dt, constants), constants)


@pytest.mark.parametrize("evict,dt,dtype,d,group", [
    (True, "bf16", torch.bfloat16, 128, 1), (False, "bf16", torch.bfloat16, 128, 1),
    (True, "fp32", torch.float32, 128, 1), (False, "fp32", torch.float32, 256, 8),
    (True, "bf16", torch.bfloat16, 256, 8)])
def test_decode_kernels_compile_for_sm90(evict, dt, dtype, d, group):
    constants = dict(EVICT=evict, BLOCK_G=max(16, group), BLOCK_N=decode.block_n_for(dtype, d), BLOCK_R=1024,
                     BLOCK_D=d, HEAD_DIM=d, PRECISION="ieee" if dt == "fp32" else None)
    attend = _compile(decode._attend_kernel, dt, constants)
    assert attend.metadata.shared <= SHARED_LIMIT
    if dt == "bf16":  # the products run on the tensor cores
        assert "mma" in attend.asm["ptx"]
    combine = _compile(decode._combine_kernel, dt, dict(BLOCK_S=64, BLOCK_D=d, HEAD_DIM=d))
    assert combine.metadata.shared <= SHARED_LIMIT
