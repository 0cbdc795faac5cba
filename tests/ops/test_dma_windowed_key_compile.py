"""The key-major dk/dv/dbias kernel of windowed DMA (ops/dma/windowed_key_kernels.py) compiles for a Hopper GPU
(sm_90) without one, as test_dma_windowed_compile.py checks the other windowed kernels: at the benchmark's shape
(bf16, head dim 128) the autotune configurations that use the most shared memory (largest tiles; most stages) with
int32 offsets, and float32 (IEEE products) at head dim 64 with int64 offsets (``WIDE``). dk and dv are written in
the inputs' dtype (each compile takes seconds of CPU)."""
import pytest

from conftest import compile_for_sm90, compiles_real_kernels

pytest.importorskip("triton")

pytestmark = compiles_real_kernels

from wonderful_matrices.ops.dma import windowed_key_kernels as wkk  # noqa: E402

SHARED_LIMIT = 232448  # bytes of shared memory one program may use on sm_90 (227 KB)
INT_POINTERS = ("order_ptr", "drop_ptr")
IO_POINTERS = ("q_ptr", "k_ptr", "v_ptr", "do_ptr", "dk_ptr", "dv_ptr")


def _compile(dt, constants, num_warps, num_stages):
    fn = wkk._dkv_key_kernel.fn  # the jit function under the autotuner
    types = {name: "*fp32" for name in fn.arg_names if name.endswith("_ptr")}
    types.update({name: f"*{dt}" for name in IO_POINTERS})
    types.update({name: "*i32" for name in INT_POINTERS}, scale="fp32")
    signature = {name: "constexpr" if name in constants else types.get(name, "i32") for name in fn.arg_names}
    return compile_for_sm90(fn, signature, constants, num_warps, num_stages)


def _cases():
    configs = wkk.KEY_MAJOR
    tile = lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"]  # noqa: E731
    heaviest = {max(configs, key=lambda c: (tile(c), c.num_stages)),
                max(configs, key=lambda c: (c.num_stages, tile(c)))}
    for config in sorted(heaviest, key=str):
        yield "bf16", 128, config
    yield "fp32", 64, configs[0]


@pytest.mark.parametrize("dt,d,config", list(_cases()),
                         ids=[f"{dt}-d{d}-{c.kwargs}-w{c.num_warps}-s{c.num_stages}" for dt, d, c in _cases()])
def test_key_major_kernel_compiles_for_sm90(dt, d, config):
    constants = dict(BLOCK_D=d, HEAD_DIM=d, PRECISION="ieee" if dt == "fp32" else None, WIDE=dt == "fp32",
                     **config.kwargs)
    compiled = _compile(dt, constants, config.num_warps, config.num_stages)
    assert compiled.metadata.shared <= SHARED_LIMIT
    if dt == "bf16":  # the products run on the tensor cores (wgmma on sm_90)
        assert "mma" in compiled.asm["ptx"]
