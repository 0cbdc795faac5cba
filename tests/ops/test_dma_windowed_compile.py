"""The windowed DMA training kernels (ops/dma/windowed_kernels.py) compile for a Hopper GPU (sm_90) without one:
catches front-end, type and shared-memory errors the interpreter tests cannot. At the benchmark's shape (bf16,
head dim 128, the selection block of w = 2048) the autotune configurations that use the most shared memory
(largest tiles; most stages) with int32 offsets, and float32 (IEEE products) at head dim 64 with int64 offsets
(``WIDE``; each compile takes seconds of CPU)."""
import pytest

from conftest import compile_for_sm90, compiles_real_kernels

pytest.importorskip("triton")

pytestmark = compiles_real_kernels

from wonderful_matrices.ops.dma import windowed_kernels as wk  # noqa: E402

SHARED_LIMIT = 232448  # bytes of shared memory one program may use on sm_90 (227 KB)
INT_POINTERS = ("keys_ptr", "ends_ptr", "counts_ptr", "drop_ptr", "list_drop_ptr")
IO_POINTERS = ("q_ptr", "k_ptr", "v_ptr", "out_ptr", "do_ptr", "dq_ptr")


def _compile(kernel, dt, constants, num_warps, num_stages):
    fn = kernel.fn  # the jit function under the autotuner
    types = {name: "*fp32" for name in fn.arg_names if name.endswith("_ptr")}
    types.update({name: f"*{dt}" for name in IO_POINTERS})
    types.update({name: "*i32" for name in INT_POINTERS}, scale="fp32")
    signature = {name: "constexpr" if name in constants else types.get(name, "i32") for name in fn.arg_names}
    return compile_for_sm90(fn, signature, constants, num_warps, num_stages)


def _cases():
    for name, configs in (("_fwd_kernel", wk.QUERY_SIDE), ("_dq_kernel", wk.QUERY_SIDE), ("_dkv_kernel", wk.KEY_SIDE)):
        tile = lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"]  # noqa: E731
        heaviest = {max(configs, key=lambda c: (tile(c), c.num_stages)),
                    max(configs, key=lambda c: (c.num_stages, tile(c)))}
        for config in sorted(heaviest, key=str):
            yield name, "bf16", 128, config
        yield name, "fp32", 64, configs[0]


@pytest.mark.parametrize("name,dt,d,config", list(_cases()),
                         ids=[f"{n}-{dt}-d{d}-{c.kwargs}-w{c.num_warps}-s{c.num_stages}" for n, dt, d, c in _cases()])
def test_windowed_kernels_compile_for_sm90(name, dt, d, config):
    constants = dict(BLOCK=wk.block_for(2048), TILE=wk.LIVE_TILE, BLOCK_D=d, HEAD_DIM=d,
                     PRECISION="ieee" if dt == "fp32" else None, WIDE=dt == "fp32", **config.kwargs)
    compiled = _compile(getattr(wk, name), dt, constants, config.num_warps, config.num_stages)
    assert compiled.metadata.shared <= SHARED_LIMIT
    if dt == "bf16":  # the products run on the tensor cores (wgmma on sm_90)
        assert "mma" in compiled.asm["ptx"]
