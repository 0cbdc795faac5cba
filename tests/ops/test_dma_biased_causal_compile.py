"""The no-window DMA backward kernels (ops/dma/biased_causal_kernels.py) compile for a Hopper GPU (sm_90) without
one: catches front-end, type and shared-memory errors the interpreter tests cannot. bf16 at head dim 128 (the
benchmark's shape) in the autotune configuration that uses the most shared memory (the largest tile, most stages),
without documents; float32 (IEEE products) at head dim 64 with documents and int64 offsets (``WIDE``)."""
import pytest

from conftest import compile_for_sm90, compiles_real_kernels

pytest.importorskip("triton")

pytestmark = compiles_real_kernels

from wonderful_matrices.ops.dma import biased_causal_kernels as bk  # noqa: E402

SHARED_LIMIT = 232448  # bytes of shared memory one program may use on sm_90 (227 KB)
IO_POINTERS = ("q_ptr", "k_ptr", "v_ptr", "out_ptr", "do_ptr", "dq_ptr", "dk_ptr", "dv_ptr")
INT_POINTERS = ("first_ptr", "end_ptr")


def _cases():
    for name, configs in (("_dq_kernel", bk.DQ_CONFIGS), ("_dkv_kernel", bk.DKV_CONFIGS)):
        tile = lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"]  # noqa: E731
        yield name, "bf16", 128, max(configs, key=lambda c: (tile(c), c.num_stages))
        yield name, "fp32", 64, configs[0]


@pytest.mark.parametrize("name,dt,d,config", list(_cases()),
                         ids=[f"{n}-{dt}-d{d}-{c.kwargs}-w{c.num_warps}-s{c.num_stages}" for n, dt, d, c in _cases()])
def test_biased_causal_kernels_compile_for_sm90(name, dt, d, config):
    fn = getattr(bk, name).fn  # the jit function under the autotuner
    constants = dict(HAS_DOCS=dt == "fp32", BLOCK_D=d, HEAD_DIM=d, PRECISION="ieee" if dt == "fp32" else None,
                     WIDE=dt == "fp32", **config.kwargs)
    types = {name: "*fp32" for name in fn.arg_names if name.endswith("_ptr")}
    types.update({name: f"*{dt}" for name in IO_POINTERS}, scale="fp32")
    types.update({name: "*i32" for name in INT_POINTERS})
    signature = {name: "constexpr" if name in constants else types.get(name, "i32") for name in fn.arg_names}
    compiled = compile_for_sm90(fn, signature, constants, config.num_warps, config.num_stages)
    assert compiled.metadata.shared <= SHARED_LIMIT
    if dt == "bf16":  # the products run on the tensor cores (wgmma on sm_90)
        assert "mma" in compiled.asm["ptx"]
