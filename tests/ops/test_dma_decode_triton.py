"""The fused Triton DMA decode step (ops/dma/decode.py) against the torch step of ops/dma/cache.py (its oracle),
on the CPU under TRITON_INTERPRET=1 (float32, tiny shapes). Compiled CUDA cases are in test_dma_cuda.py.

As in test_dma_triton.py, ``test_interpreted_in_a_subprocess`` reruns this file in a child process with
``TRITON_INTERPRET=1`` (Triton reads the flag at import); the real tests run there.
"""
import copy

import pytest
import torch

from conftest import INTERPRETED, interpreted_only, interpreter_child_test, rel_err

pytest.importorskip("triton")

from wonderful_matrices.layers import DynamicMaskAttention

NAMES = ("key", "value", "bias", "position")


test_interpreted_in_a_subprocess = interpreter_child_test(__file__)


@pytest.mark.skipif(INTERPRETED, reason="the CPU without the interpreter")
def test_decode_backend_arguments_checked():
    with pytest.raises(ValueError, match="decode_backend"):
        DynamicMaskAttention(16, 2, 1, 8, keep_window=3, decode_backend="fast")
    layer = DynamicMaskAttention(16, 2, 1, 8, keep_window=3, decode_backend="triton")
    x, pos = torch.randn(1, 5, 16), torch.arange(5)[None]
    state = {}
    with torch.no_grad():
        layer(x[:, :4], pos[:, :4], None, state)
        with pytest.raises(ValueError, match="decode_backend"):  # no CUDA, no interpreter here
            layer(x[:, 4:], pos[:, 4:], None, state)


def _layer(hq, hkv, d, w, backend):
    return DynamicMaskAttention(hq * d, hq, hkv, d, keep_window=w, decode_backend=backend)


def _random_cache(b, n, hkv, d, ties):
    bias = torch.randint(-2, 1, (b, n, hkv)).float() if ties else torch.randn(b, n, hkv)
    bias[torch.rand(b, n, hkv) < 0.2] = float("-inf")  # padded keys
    position = torch.randint(0, 4, (b, n, hkv)) if ties else torch.arange(n).view(1, n, 1).repeat(b, 1, hkv)
    return {"key": torch.randn(b, n, hkv, d), "value": torch.randn(b, n, hkv, d), "bias": bias,
            "position": position}


def _steps(fused, ref, state_f, state_r, b, hq, hkv, d, steps, ties, start, check):
    """Run the same random steps through both layers; compare outputs and the caches after every step."""
    for t in range(steps):
        q, k, v = torch.randn(b, 1, hq, d), torch.randn(b, 1, hkv, d), torch.randn(b, 1, hkv, d)
        bias = torch.randint(-2, 1, (b, 1, hkv)).float() if ties else torch.randn(b, 1, hkv)
        bias[torch.rand(b, 1, hkv) < 0.25] = float("-inf")
        position = (torch.randint(0, 4, (b, 1, hkv)) if ties else torch.full((b, 1, hkv), start + t))
        with torch.no_grad():
            out_f = fused.decoder.step(q, k, v, bias, position, state_f, fused.keep_window)
            out_r = ref.decoder.step(q, k, v, bias, position, state_r, ref.keep_window)
        assert out_f.shape == out_r.shape and torch.isfinite(out_f).all()
        assert rel_err(out_f, out_r) < 1e-5, t
        for name in NAMES:
            assert state_f[name].shape == state_r[name].shape, name
            assert torch.equal(state_f[name], state_r[name]), (t, name)
        check(state_f)


# (b, hq, hkv, d, w, prefill, ties, block_n, max_splits): GQA (group 1, 2, 3), several batch rows, a prefill
# shorter than the window (empty -inf slots), several key splits (block 16 with a window of 40), one split,
# ties in bias and position, window 1.
WINDOW_CASES = [
    (3, 4, 2, 8, 5, 2, True, 16, None),
    (2, 6, 2, 16, 40, 40, False, 16, 4),
    (2, 2, 2, 8, 40, 13, True, 16, 2),
    (1, 3, 1, 32, 7, 9, False, 64, None),
    (2, 2, 1, 8, 1, 1, True, 16, None),
]


@interpreted_only
@pytest.mark.parametrize("case", WINDOW_CASES, ids=[str(c) for c in WINDOW_CASES])
def test_fused_window_step_equals_torch_step(case, monkeypatch):
    b, hq, hkv, d, w, prefill, ties, block_n, max_splits = case
    from wonderful_matrices.ops.dma import decode

    original = decode.decode_step
    calls = []
    monkeypatch.setattr(decode, "decode_step", lambda *a, **kw: calls.append(1) or original(
        *a, **kw, block_n=block_n, max_splits=max_splits))
    fused, ref = _layer(hq, hkv, d, w, "triton"), _layer(hq, hkv, d, w, "torch")
    state_f = _random_cache(b, min(prefill, w), hkv, d, ties)
    state_r = copy.deepcopy(state_f)
    steps = 12

    def check(state):
        assert state["key"].shape[1] == w

    _steps(fused, ref, state_f, state_r, b, hq, hkv, d, steps, ties, prefill, check)
    assert len(calls) == steps


NO_WINDOW_CASES = [(2, 4, 2, 8, 3, 16, 3), (1, 3, 1, 16, 30, 16, 1)]  # several splits; one split of several tiles


@interpreted_only
@pytest.mark.parametrize("case", NO_WINDOW_CASES, ids=[str(c) for c in NO_WINDOW_CASES])
def test_fused_append_step_equals_torch_step(case, monkeypatch):
    b, hq, hkv, d, prefill, block_n, max_splits = case
    from wonderful_matrices.ops.dma import decode

    original = decode.decode_step
    monkeypatch.setattr(decode, "decode_step", lambda *a, **kw: original(*a, **kw, block_n=block_n,
                                                                         max_splits=max_splits))
    fused, ref = _layer(hq, hkv, d, None, "triton"), _layer(hq, hkv, d, None, "torch")
    state_f = _random_cache(b, prefill, hkv, d, False)
    state_r = copy.deepcopy(state_f)
    sizes = []
    _steps(fused, ref, state_f, state_r, b, hq, hkv, d, 20, False, prefill,
           lambda state: sizes.append(state["key"].shape[1]))
    assert sizes == list(range(prefill + 1, prefill + 21))


@interpreted_only
@pytest.mark.parametrize("w", [None, 4])
def test_layer_decoding_with_fused_step_equals_full_forward(w):
    """Prefill + fused steps (left padding, a padded step, GQA) == one full forward (float32)."""
    layer = DynamicMaskAttention(24, 6, 2, 4, keep_window=w)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    b, prefill, steps = 3, 5, 9
    l = prefill + steps
    x = torch.randn(b, l, 24)
    mask = torch.ones(b, l, dtype=torch.long)
    mask[1, :2] = 0
    mask[2, prefill + 2] = 0
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    with torch.no_grad():
        full = layer(x, pos, mask)
        state = {}
        outs = [layer(x[:, :prefill], pos[:, :prefill], mask[:, :prefill], state)]
        for t in range(prefill, l):
            outs.append(layer(x[:, t:t + 1], pos[:, t:t + 1], mask[:, t:t + 1], state))
    real = mask.bool()
    assert rel_err(torch.cat(outs, 1)[real], full[real]) < 1e-5


@interpreted_only
def test_auto_falls_back_to_torch_once_when_the_kernel_raises(monkeypatch, caplog):
    from wonderful_matrices.ops.dma import decode

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(decode, "decode_step", broken)
    layer, ref = _layer(4, 2, 8, 3, "auto"), _layer(4, 2, 8, 3, "torch")
    ref.load_state_dict(layer.state_dict())
    x, pos = torch.randn(2, 8, 32), torch.arange(8).expand(2, 8)
    with torch.no_grad(), caplog.at_level("WARNING"):
        s1, s2 = {}, {}
        layer(x[:, :4], pos[:, :4], None, s1)
        ref(x[:, :4], pos[:, :4], None, s2)
        for t in range(4, 8):
            assert torch.equal(layer(x[:, t:t + 1], pos[:, t:t + 1], None, s1),
                               ref(x[:, t:t + 1], pos[:, t:t + 1], None, s2))
    assert layer.decoder.failed == "RuntimeError: no kernel"
    assert sum("fused Triton decode step failed" in r.getMessage() for r in caplog.records) == 1
    forced = _layer(4, 2, 8, 3, "triton")  # forced: the error propagates
    forced.load_state_dict(layer.state_dict())
    with torch.no_grad(), pytest.raises(RuntimeError, match="no kernel"):
        forced(x[:, 7:8], pos[:, 7:8], None, s1)
