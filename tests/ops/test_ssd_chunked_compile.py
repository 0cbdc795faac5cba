"""SSD's chunked Triton kernels (ops/ssd/chunked_kernels.py) compile for a Hopper GPU (sm_90) without one, with
the arguments and launch settings the library passes them: the forward and backward are run on the CPU with every
launch recorded instead of made, and each recorded launch is compiled. Triton's code generator rejects what its
interpreter runs (session 6), so a kernel change the interpreter tests pass can still fail on the GPU; this catches
it before a GPU run. Shapes: cheems-base's head (128 × 128 state, one group) and the paper's (64 × 64 state 128),
half inputs, with and without packed documents."""
import pytest
import torch

from conftest import compile_for_sm90, compiles_real_kernels

pytest.importorskip("triton")

pytestmark = compiles_real_kernels

TYPES = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.int32: "*i32",
         torch.int64: "*i64"}


def recorded_launches(monkeypatch, dtype, h, p, n, chunk, packed):
    """The (kernel, signature, constants, warps, stages) of every launch of one forward and backward."""
    from wonderful_matrices.ops.ssd import chunked_kernels as ck

    launches = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, num_warps, num_stages, **meta):
                names = self.kernel.arg_names
                signature, constants = {}, dict(meta)
                for name, value in zip(names, args):
                    if isinstance(value, torch.Tensor):
                        signature[name] = TYPES[value.dtype]
                    elif isinstance(value, bool):
                        signature[name] = "i1"
                    elif isinstance(value, int):
                        signature[name] = "i32"
                    else:
                        signature[name] = "fp32"
                signature.update({name: "constexpr" for name in meta})
                launches.append((self.kernel, {n: signature[n] for n in names}, constants, num_warps, num_stages))
            return launch

    original = ck._launch
    monkeypatch.setattr(ck, "_launch", lambda kernel, grid, name, *args, **kw: original(
        Recorder(kernel), grid, name, *args, **kw))
    b, l, g = 1, 2 * chunk, 1
    x = torch.randn(b, l, h, p, dtype=dtype)
    dt = torch.rand(b, l, h) * 0.1
    A, D = -torch.rand(h), torch.randn(h)
    B, C = torch.randn(b, l, g, n, dtype=dtype), torch.randn(b, l, g, n, dtype=dtype)
    seq_idx = torch.tensor([[0] * (chunk // 2) + [1] * (l - chunk // 2)]) if packed else None
    y, cum, cb, states, plan = ck.forward_kernels(x, dt, A, B, C, D, None, chunk, seq_idx=seq_idx)
    ck.backward_kernels(torch.randn_like(x), None, x, dt, A, B, C, D, cum, cb, states, plan)
    return launches


CHEEMS, PAPER = (12, 128, 128, 256), (64, 64, 128, 256)  # heads, head dim, state, chunk


@pytest.mark.parametrize("shape, packed", [(CHEEMS, False), (CHEEMS, True), (PAPER, False), (PAPER, True)],
                         ids=["cheems", "cheems-packed", "paper", "paper-packed"])
def test_ssd_chunked_kernels_compile_for_sm90(monkeypatch, shape, packed):
    h, p, n, chunk = shape
    launches = recorded_launches(monkeypatch, torch.bfloat16, h, p, n, chunk, packed)
    names = {kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__ for kernel, *_ in launches}
    assert {"_chunk_state_kernel", "_output_kernel", "_dx2_kernel", "_dcb_kernel", "_db2_kernel"} <= names
    for kernel, signature, constants, warps, stages in launches:
        compiled = compile_for_sm90(kernel, signature, constants, warps, stages)
        assert compiled.asm["ptx"]
