"""No-window DMA as one SDPA call with the bias as two extra key channels (biased_sdpa.py), on the CPU (SDPA's CPU
kernels) against the loop oracle: outputs and the gradients of q, k, v and bias. The fused CUDA kernels run it in
test_dma_cuda.py."""
import pytest
import torch

from conftest import rel_err
from wonderful_matrices.ops.dma.biased_sdpa import channel_scale, dynamic_mask_attention_biased_sdpa, padded_head_dim
from wonderful_matrices.ops.dma.naive import dynamic_mask_attention_naive


def _run(fn, q, k, v, bias, scale):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, bias)]
    out = fn(*leaves, scale)
    torch.manual_seed(1)
    (out.double() * torch.randn(out.shape, dtype=torch.float64)).sum().backward()
    return out.detach(), [t.grad for t in leaves]


def _oracle(q, k, v, bias, scale):
    return dynamic_mask_attention_naive(q, k, v, bias, None, True, scale, None)


def _inputs(b, lq, lk, hq, hkv, d, bias_std=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, l, h, d, generator=g, dtype=torch.float64)
               for l, h in ((lq, hq), (lk, hkv), (lk, hkv)))
    bias = torch.randn(b, lk, hkv, generator=g, dtype=torch.float64) * bias_std
    return q, k, v, bias


def _check(q, k, v, bias, dtype, tol, scale=None):
    """The op on q, k, v in ``dtype`` and the bias in float32 (float64 with float64) against the float64 oracle on
    those same rounded inputs: the error measured is the op's, not the inputs' rounding (a float32 bias of 3000 is
    itself off by 1e-4)."""
    scale = scale or q.shape[-1] ** -0.5
    cast = [t.to(dtype) for t in (q, k, v)] + [bias.to(torch.float64 if dtype == torch.float64 else torch.float32)]
    ref, ref_g = _run(_oracle, *(t.double() for t in cast), scale)
    out, grads = _run(dynamic_mask_attention_biased_sdpa, *cast, scale)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out, ref) < tol
    # Huge biases saturate the softmax: the q/k gradients are then ~1e-99 and a kernel's are its rounding noise, so
    # each gradient's error is measured against the larger of its own norm and 1e-3 of the value gradient's.
    floor = 1e-3 * ref_g[2].norm()
    for name, a, r in zip("qkvb", grads, ref_g):
        assert torch.isfinite(a).all(), name
        assert ((a.double() - r).norm() / torch.maximum(r.norm(), floor)).item() < tol * 2, name


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("lq,lk,hq,hkv,d", [(37, 37, 4, 4, 7), (50, 50, 4, 2, 128), (33, 61, 4, 1, 13),
                                            (1, 9, 2, 2, 8), (64, 64, 8, 2, 30)])
def test_matches_oracle(dtype, tol, lq, lk, hq, hkv, d):
    """GQA groups 1/2/4, odd head dims and d = 128, lq < lk (bottom-right aligned), padding keys."""
    q, k, v, bias = _inputs(2, lq, lk, hq, hkv, d)
    bias[0, 0, 0] = float("-inf")  # the first key of a row: the first query sees only padding in head 0
    bias[:, 3::5, -1] = float("-inf")
    _check(q, k, v, bias, dtype, tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_queries_seeing_only_padding_output_zeros(dtype, tol):
    q, k, v, bias = _inputs(1, 20, 20, 2, 1, 16)
    bias[0, :6, 0] = float("-inf")  # queries 0..5 see no finite-bias key
    _check(q, k, v, bias, dtype, tol)
    out = dynamic_mask_attention_biased_sdpa(q.to(dtype), k.to(dtype), v.to(dtype), bias, 0.25)
    assert (out[0, :6] == 0).all() and (out[0, 6:].abs() > 0).any()


@pytest.mark.parametrize("dtype,tol,bias_std", [(d, t, s) for d, t in ((torch.float64, 1e-12), (torch.float32, 1e-5))
                                                for s in (2.0, 50.0, 3000.0)]
                         + [(d, 2e-2, s) for d in (torch.bfloat16, torch.float16) for s in (2.0, 50.0)])
def test_large_biases_and_half_precision(dtype, tol, bias_std):
    """Biases far larger than the q·k logits keep their precision through the hi + lo channels (with one rounded
    channel, bfloat16 at bias_std 50 misses the bound: ~2.4e-2). A float32 logit holds a bias ``b`` only to
    ``|b|·2⁻²⁴`` (so does FlexAttention's, which adds it after the scale), which bounds float32's error. Half
    precision stops at 50: at 3000 the softmax saturates and the q/k gradients of a half-precision kernel are
    ~12% off (cancellation in ``dP - rowsum(dO·O)`` with a rounded ``O``; the "torch" backend's likewise)."""
    if dtype == torch.float32:
        tol = max(tol, bias_std * 2.0 ** -24)
    q, k, v, bias = _inputs(1, 96, 96, 4, 2, 64, bias_std=bias_std, seed=3)
    bias[0, 10, 1] = float("-inf")
    _check(q, k, v, bias, dtype, tol)


@pytest.mark.parametrize("scale", [1e-3, 0.125, 7.0])
def test_scales(scale):
    q, k, v, bias = _inputs(1, 40, 40, 2, 2, 24)
    _check(q, k, v, bias, torch.float32, 1e-5, scale=scale)


def test_channel_scale_and_padding():
    for s in (1e-3, 0.088, 0.125, 1.0, 7.0):
        assert 8 <= s * channel_scale(s) < 16
    assert [padded_head_dim(d) for d in (6, 7, 64, 128, 254)] == [8, 16, 72, 136, 256]
