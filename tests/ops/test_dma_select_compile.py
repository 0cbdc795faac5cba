"""The selection kernels (ops/dma/selection_kernels.py) compile for a Hopper GPU (sm_90) without one: catches
front-end and type errors the interpreter cannot (loop-carried types, scalar branches in loops), at the benchmark's
sizes (block 512 and block_for(2048)'s 2048 for the list kernel, sub-block 128, bucket 1024), with and without
documents."""
import pytest

from conftest import compile_for_sm90, compiles_real_kernels

pytest.importorskip("triton")

pytestmark = compiles_real_kernels

from wonderful_matrices.ops.dma import selection_kernels as sk  # noqa: E402

POINTERS = {"order_ptr": "*i64", "valid_ptr": "*u8"}
LAUNCH = dict(_prep_kernel=dict(SUB=128, R=1024, BLOCK=1024),
              _base_kernel=dict(SUB=128, R=1024, NBK=128, KB=128),
              _threshold_kernel=dict(SUB=128, BS=128),
              _drop_kernel=dict(BLOCK=1024),
              _list_kernel=dict(BLOCK=512, SUB=128, R=1024, TILE=64, NT=8, BW=512))


def _cases():
    for name, constants in LAUNCH.items():
        if name in ("_drop_kernel", "_list_kernel"):
            for docs in (False, True):
                yield name, dict(constants, HAS_DOCS=docs)
        else:
            yield name, constants
    yield "_list_kernel", dict(LAUNCH["_list_kernel"], BLOCK=2048, NT=32, BW=2048, HAS_DOCS=True)


@pytest.mark.parametrize("name,constants", list(_cases()), ids=[f"{n}-{c}" for n, c in _cases()])
def test_selection_kernels_compile_for_sm90(name, constants):
    fn = getattr(sk, name)
    signature = {arg: "constexpr" if arg in constants else POINTERS.get(arg, "*i32" if arg.endswith("_ptr") else "i32")
                 for arg in fn.arg_names}
    warps = sk.THRESHOLD_WARPS if name == "_threshold_kernel" else 4
    compiled = compile_for_sm90(fn, signature, constants, num_warps=warps)
    assert compiled.asm["ptx"]
