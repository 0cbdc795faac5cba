"""Triton paths given inputs with unusual strides, under TRITON_INTERPRET=1 (in the child process
``test_interpreted_in_a_subprocess`` starts): each against the same call on contiguous copies or the oracle, and the
custom ops' fake implementations (what ``torch.compile`` plans with) against the real outputs' strides. Each case
once failed: values read with another tensor's strides, a per-head vector indexed as if contiguous, fake outputs
laid out like a permuted input while the kernels write contiguous ones."""
import pytest
import torch

from conftest import interpreted_only, interpreter_child_test, rel_err

pytest.importorskip("triton")

from wonderful_matrices.ops import dynamic_mask_attention
from wonderful_matrices.ops.dma import biased_causal_kernels
from wonderful_matrices.ops.dma import windowed_kernels as wk
from wonderful_matrices.ops.ssd import chunked_kernels as sk
from wonderful_matrices.ops.ssd import projected_step, ssd

test_interpreted_in_a_subprocess = interpreter_child_test(__file__)


def strided_like(t: torch.Tensor, every: int = 2) -> torch.Tensor:
    """The values of ``t`` in a view whose last dim keeps unit stride but whose other strides are ``every`` times
    wider (every ``every``-th slot of the last dim's storage used: a slice of a fused projection's output)."""
    wide = torch.cat([t] + [torch.zeros_like(t)] * (every - 1), dim=-1)
    return wide[..., :t.shape[-1]]


def grads_of(fn, inputs, weight):
    leaves = [x.detach().clone().requires_grad_() if x.is_contiguous() else
              strided_like(x.detach().contiguous()).requires_grad_() for x in inputs]
    out = fn(*leaves)
    return out, torch.autograd.grad((out * weight).sum(), leaves)


@interpreted_only
def test_windowed_dma_with_values_strided_unlike_keys():
    b, l, hq, hkv, d, w = 1, 96, 2, 1, 16, 12
    q, k, v = torch.randn(b, l, hq, d), torch.randn(b, l, hkv, d), torch.randn(b, l, hkv, d)
    bias = torch.randn(b, l, hkv)
    weight = torch.randn(b, l, hq, d)
    attend = lambda *t: dynamic_mask_attention(*t, keep_window=w, backend="triton")  # noqa: E731
    out, grads = grads_of(attend, (q, k, strided_like(v), bias), weight)
    ref, ref_grads = grads_of(attend, (q, k, v, bias), weight)
    assert rel_err(out, ref) < 1e-6
    for name, a, r in zip("qkvb", grads, ref_grads):
        assert rel_err(a, r) < 1e-6, name


@interpreted_only
def test_no_window_backward_with_values_strided_unlike_keys():
    b, l, hq, hkv, d = 1, 80, 2, 2, 16
    q, k, v, out, dout = (torch.randn(b, l, h, d) for h in (hq, hkv, hkv, hq, hq))
    rows = torch.randn(b, hkv, l)
    lse = torch.randn(b, hq, l) + 5
    got = biased_causal_kernels.biased_causal_backward(q, k, strided_like(v), rows, out, lse, dout, 0.25)
    want = biased_causal_kernels.biased_causal_backward(q, k, v, rows, out, lse, dout, 0.25)
    for name, a, r in zip(("dq", "dk", "dv", "dbias"), got, want):
        assert torch.equal(a, r), name


@interpreted_only
def test_ssd_with_strided_decay_and_skip_vectors():
    b, l, h, p, g, n = 1, 40, 4, 8, 1, 16
    x, dt = torch.randn(b, l, h, p), torch.rand(b, l, h)
    B, C = torch.randn(b, l, g, n), torch.randn(b, l, g, n)
    A, D = -torch.rand(h) - 0.5, torch.randn(h)
    weight = torch.randn(b, l, h, p)

    def run(every):
        leaves = [t.detach().clone().requires_grad_() for t in (x, dt, B, C)]
        # A and D as every `every`-th element of a wider buffer (every = 1: contiguous)
        wide = torch.zeros(2, h, every)
        wide[0, :, 0], wide[1, :, 0] = A, D
        wide.requires_grad_()
        y = ssd(leaves[0], leaves[1], wide[0, :, 0], leaves[2], leaves[3], chunk_size=16, D=wide[1, :, 0],
                backend="triton")
        grads = torch.autograd.grad((y * weight).sum(), leaves + [wide])
        return y, grads[:4] + (grads[4][..., 0],)

    y, grads = run(3)
    ref, ref_grads = run(1)
    assert rel_err(y, ref) < 1e-6
    for i, (a, r) in enumerate(zip(grads, ref_grads)):
        assert rel_err(a, r) < 1e-6, i


@interpreted_only
def test_ssd_decoding_step_with_strided_parameters_and_rate():
    b, h, p, g, n = 2, 4, 8, 2, 16
    proj = torch.randn(b, 2 * h * p + 2 * g * n + h)
    state, angle = torch.randn(b, h, p, n), torch.randn(b, h, n // 2)
    params, rate = torch.randn(h, 3), torch.randn(b, n // 2)

    def step(dt_bias, A_log, D, rate):
        s, a = state.clone(), angle.clone()
        y = projected_step(proj, s, dt_bias, A_log, D, h, p, g, n, (0.0, 10.0), "data", rate=rate, angle=a)
        return y, s, a

    got = step(params[:, 0], params[:, 1], params[:, 2], strided_like(rate))
    want = step(*(params[:, i].contiguous() for i in range(3)), rate)
    for name, a, r in zip(("y", "state", "angle"), got, want):
        assert torch.equal(a, r), name


@interpreted_only
def test_fake_outputs_have_the_kernels_strides():
    """The custom ops ``torch.compile`` sees, given a query / input that is dense but permuted ((b, h, l, d) storage
    seen as (b, l, h, d)): their fake outputs carry the strides of the real ones (opcheck's fake-tensor test).
    A fake laid out like the permuted input made Inductor's stride assertion fail on the real (contiguous) output."""
    b, l, hq, hkv, d, w = 1, 128, 2, 1, 16, 40
    q = torch.randn(b, hq, l, d).transpose(1, 2)
    k, v, bias = torch.randn(b, l, hkv, d), torch.randn(b, l, hkv, d), torch.randn(b, l, hkv)
    block = wk.block_for(w)
    drop, keys, ends, counts = wk.select(bias, l, w, block)
    bias32 = bias.float().contiguous()
    forward = torch.ops.wonderful_matrices.dma_windowed_forward.default
    torch.library.opcheck(forward, (q, k, v, bias32, keys, ends, counts, drop, 0.25, block),
                          test_utils=("test_faketensor",))
    out, lse, list_bias, list_drop = forward(q, k, v, bias32, keys, ends, counts, drop, 0.25, block)
    torch.library.opcheck(torch.ops.wonderful_matrices.dma_windowed_backward.default,
                          (q, k, v, bias32, keys, ends, counts, drop, list_bias, list_drop, out, lse,
                           torch.randn_like(out), 0.25, block),
                          test_utils=("test_faketensor",))
    h, p, g, n = 4, 8, 1, 16
    x = torch.randn(b, h, 64, p).transpose(1, 2)
    dt, A, B, C = torch.rand(b, 64, h), -torch.rand(h) - 0.5, torch.randn(b, 64, g, n), torch.randn(b, 64, g, n)
    torch.library.opcheck(torch.ops.wonderful_matrices.ssd_forward.default,
                          (x, dt, A, B, C, None, None, 16, None), test_utils=("test_faketensor",))
    y, cum, states, docs = sk.ssd_forward(x, dt, A, B, C, None, None, 16, None)
    torch.library.opcheck(torch.ops.wonderful_matrices.ssd_backward.default,
                          (torch.randn_like(y), None, x, dt, A, B, C, None, cum, states, 16, docs, True),
                          test_utils=("test_faketensor",))


def test_ssd_rows_past_int32_offsets_are_refused():
    """A row whose elements lie 2**31 or more apart (here ~600K tokens of a 64 × 64-channel projection, shapes on
    the meta device) is refused with a clear error rather than addressed with wrapped int32 offsets."""
    b, l, h, p, g, n = 1, 600_000, 64, 64, 1, 128
    meta = dict(device="meta")
    x, dt = torch.empty(b, l, h, p, **meta), torch.empty(b, l, h, **meta)
    B = C = torch.empty(b, l, g, n, **meta)
    with pytest.raises(ValueError, match="int32 offsets"):
        sk.ssd_triton(x, dt, torch.empty(h, **meta), B, C, chunk_size=64)
    assert sum((s - 1) * st for s, st in zip(x[0].shape, x[0].stride())) >= 2 ** 31  # the case is what it claims
