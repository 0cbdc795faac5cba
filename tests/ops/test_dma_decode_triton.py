"""The fused Triton DMA decode step (ops/dma/decode.py) against the torch step of ops/dma/cache.py (its oracle),
on the CPU under TRITON_INTERPRET=1 (float32, tiny shapes). Compiled CUDA cases are in test_dma_cuda.py.

As in test_dma_triton.py, ``test_interpreted_in_a_subprocess`` reruns this file in a child process with
``TRITON_INTERPRET=1`` (Triton reads the flag at import); the real tests run there.
"""
import copy

import pytest
import torch

from conftest import INTERPRETED, decode_through_beam_reorder, interpreted_only, interpreter_child_test, rel_err

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
@pytest.mark.parametrize("mask_form,dt", [("gate", 0.3), ("gate", -2.3047204), ("doge", 1.3840183)])
def test_fused_steps_break_bias_ties_for_the_later_key(mask_form, dt):
    """Every key's bias tied (``dt_proj`` a constant): the window keeps the latest keys, so the cache after fused
    steps holds the last ``w`` positions. The fused step computes a new key's bias as the prefill does, bit for bit
    (at these dt the step's own float32 softplus rounded an ulp below the layer's, and every decoded key lost its
    tie to the prefilled ones)."""
    w, prefill, l = 2, 4, 14
    layer = DynamicMaskAttention(16, 4, 2, 6, keep_window=w, decode_backend="triton", mask_form=mask_form)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        layer.dt_proj.weight.zero_()
        layer.dt_proj.bias.fill_(dt)
    x, pos = torch.randn(1, l, 16), torch.arange(l)[None]
    state = {}
    with torch.no_grad():
        full = layer(x, pos)
        outs = [layer(x[:, :prefill], pos[:, :prefill], None, state)]
        outs += [layer(x[:, t:t + 1], pos[:, t:t + 1], None, state) for t in range(prefill, l)]
    assert sorted(state["position"][0, :, 0].tolist()) == list(range(l - w, l))
    assert all(state["bias"][0, :, h].unique().numel() == 1 for h in range(2))
    assert rel_err(torch.cat(outs, 1), full) < 1e-5


@interpreted_only
@pytest.mark.parametrize("w", [None, 3])
def test_fused_layer_steps_keep_a_full_window_and_survive_beam_reorder_and_reset(w):
    """A full window's fused steps keep the cache tensors (the kernels update them in place); index_select on the
    cache (beam search: plain copies) or a new cache dict (a reset) gets new buffers, and every step stays exact."""
    layer = DynamicMaskAttention(16, 2, 1, 8, keep_window=w, decode_backend="triton")
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    x = torch.randn(2, 12, 16)
    pos = torch.arange(12).expand(2, 12)

    def kept_full_window(t, before, state):
        if w is not None and t > 5:  # widened at the first step, full since
            assert all(state[name] is before[name] for name in NAMES)

    outs, reference = decode_through_beam_reorder(layer, x, pos, kept_full_window)
    assert rel_err(outs, reference) < 1e-5
    with torch.no_grad():
        state = {}  # a reset: the same layer on a new cache
        outs = [layer(x[:, :5], pos[:, :5], None, state)]
        outs += [layer(x[:, t:t + 1], pos[:, t:t + 1], None, state) for t in range(5, 12)]
        assert rel_err(torch.cat(outs, 1), layer(x, pos)) < 1e-5


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


# (b, hq, hkv, d, mask_form, qk_norm, start): GQA groups 1-3, d/2 odd (a masked rotary block), several rows,
# both bias formulas, q/k norms
INPUT_CASES = [(3, 6, 2, 6, "gate", False, 5), (1, 4, 4, 16, "doge", False, 300), (2, 3, 1, 10, "gate", True, 0),
               (2, 4, 2, 8, "doge", True, 77)]


def _random_layer(hq, hkv, d, mask_form, qk_norm, backend="triton"):
    layer = DynamicMaskAttention(hq * d + 3, hq, hkv, d, keep_window=4, mask_form=mask_form, qk_norm=qk_norm,
                                 decode_backend=backend)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return layer


@interpreted_only
@pytest.mark.parametrize("case", INPUT_CASES, ids=[str(c) for c in INPUT_CASES])
def test_step_inputs_match_the_layer_projection(case):
    """step_inputs (rotated q and k, bias, position per KV head) against the layer's torch projection in
    float64, on random projections and positions (each row its own)."""
    from wonderful_matrices.ops.dma import step_inputs

    b, hq, hkv, d, mask_form, qk_norm, start = case
    layer = _random_layer(hq, hkv, d, mask_form, qk_norm)
    x = torch.randn(b, 1, layer.hidden_size)
    pos = start + torch.randint(0, 50, (b, 1))
    oracle = copy.deepcopy(layer).double()
    with torch.no_grad():
        q_o, k_o, _, bias_o = oracle._project(x.double(), pos, None)
        q = layer.q_proj(x).view(b, hq, d)
        k = layer.k_proj(x).view(b, hkv, d)
        if qk_norm:
            q, k = layer.q_norm(q), layer.k_norm(k)
        dt = layer.dt_proj(layer.v_proj(x))[:, 0]
        a = layer.A_log if mask_form == "gate" else layer.A
        q_f, k_f, bias_f, pos_f = step_inputs(q, k, dt, pos[:, 0], layer.rotary.float32_frequencies(x.device), a,
                                              mask_form)
    assert q_f.shape == (b, 1, hq, d) and k_f.shape == (b, 1, hkv, d) and q_f.dtype == k_f.dtype == torch.float32
    assert bias_f.shape == (b, 1, hkv) and bias_f.dtype == torch.float32
    assert rel_err(q_f, q_o) < 1e-5 and rel_err(k_f, k_o) < 1e-5 and rel_err(bias_f, bias_o) < 1e-5
    assert pos_f.dtype == torch.int64 and torch.equal(pos_f, pos[..., None].expand(b, 1, hkv))


@interpreted_only
def test_step_inputs_far_positions_and_softplus_tails():
    """Positions near 10^6 against the float32 torch path (float32 angles ``position · inv_freq``, the same in
    both), and dt far in both softplus tails (above the threshold 20, and -30 where softplus is ~1e-13)."""
    from wonderful_matrices.ops.dma import step_inputs

    layer = _random_layer(4, 2, 8, "gate", False)
    b = 3
    x = torch.randn(b, 1, layer.hidden_size)
    pos = torch.tensor([[999_983], [1_000_000], [524_287]])
    with torch.no_grad():
        q_o, k_o, _, _ = layer._project(x, pos, None)
        q = layer.q_proj(x).view(b, 4, 8)
        k = layer.k_proj(x).view(b, 2, 8)
        dt = torch.tensor([[25.0, -30.0], [0.5, 21.0], [-3.0, 19.5]])
        a = torch.randn(2)
        q_f, k_f, bias_f, _ = step_inputs(q, k, dt, pos[:, 0], layer.rotary.float32_frequencies(x.device), a)
    assert rel_err(q_f, q_o) < 1e-5 and rel_err(k_f, k_o) < 1e-5
    expected = -torch.exp(a.double()) * torch.nn.functional.softplus(dt.double())
    assert torch.allclose(bias_f[:, 0].double(), expected, rtol=1e-6, atol=0)


@interpreted_only
@pytest.mark.parametrize("case", INPUT_CASES, ids=[str(c) for c in INPUT_CASES])
def test_layer_steps_on_fused_inputs_equal_the_torch_layer(case):
    """A layer decoding on the fused kernels (inputs, attention, cache write) against the same layer on the torch
    path in float64: every step's output and the cache after it (the window fills, then evicts)."""
    b, hq, hkv, d, mask_form, qk_norm, start = case
    layer = _random_layer(hq, hkv, d, mask_form, qk_norm)
    oracle = copy.deepcopy(layer).double()
    oracle.decoder = type(oracle.decoder)("torch")
    steps, prefill = 7, 3
    x = torch.randn(b, prefill + steps, layer.hidden_size)
    pos = (start + torch.arange(prefill + steps)).expand(b, -1)
    state, state_o = {}, {}
    with torch.no_grad():
        layer(x[:, :prefill], pos[:, :prefill], None, state)
        oracle(x[:, :prefill].double(), pos[:, :prefill], None, state_o)
        for t in range(prefill, prefill + steps):
            assert layer._step_inputs(x[:, t:t + 1], pos[:, t:t + 1], None, state) is not None
            out = layer(x[:, t:t + 1], pos[:, t:t + 1], None, state)
            out_o = oracle(x[:, t:t + 1].double(), pos[:, t:t + 1], None, state_o)
            assert rel_err(out, out_o) < 1e-5, t
            for name in ("key", "value", "bias"):
                assert rel_err(state[name].nan_to_num(neginf=0.0), state_o[name].nan_to_num(neginf=0.0)) < 1e-5
            assert torch.equal(state["position"], state_o["position"])


@pytest.mark.skipif(INTERPRETED, reason="the CPU without the interpreter")
def test_step_inputs_arguments_checked():
    from wonderful_matrices.ops.dma import step_inputs

    q, k, dt, pos, freq, a = torch.randn(2, 4, 8), torch.randn(2, 2, 8), torch.randn(2, 2), torch.arange(2), \
        torch.ones(4), torch.zeros(2)
    with pytest.raises(ValueError, match="q.shape"):
        step_inputs(torch.randn(2, 4, 7), k, dt, pos, freq, a)
    with pytest.raises(ValueError, match="k"):
        step_inputs(q, torch.randn(2, 3, 8), dt, pos, freq, a)
    with pytest.raises(ValueError, match="inv_freq"):
        step_inputs(q, k, dt, pos, freq.double(), a)
    with pytest.raises(ValueError, match="mask_form"):
        step_inputs(q, k, dt, pos, freq, a, "exp")
    with pytest.raises(ValueError, match="device"):  # no CUDA, no interpreter here
        step_inputs(q, k, dt, pos, freq, a)


def test_step_inputs_quick_check_rejects_what_the_detailed_checks_reject(monkeypatch):
    """step_inputs validates a step with one expression and runs the detailed checks (which name the argument) only
    when it fails: the two must agree, or bad input would slip past on a device where Triton runs. Every bad input
    here fails the quick check (with Triton taken as usable) and the detailed checks; the good one passes both."""
    import wonderful_matrices.ops.dma as dma_ops
    from wonderful_matrices.ops.dma.step_input_kernels import DTYPES, MASK_FORMS

    monkeypatch.setattr(dma_ops, "triton_usable", lambda device: True)
    good = dict(q=torch.randn(2, 4, 8), k=torch.randn(2, 2, 8), dt=torch.randn(2, 2), position=torch.arange(2),
                inv_freq=torch.ones(4), a=torch.zeros(2), mask_form="gate")
    bad = {"q.shape": dict(q=torch.randn(2, 4, 7)), "q.dtype": dict(q=torch.randn(2, 4, 8, dtype=torch.float64)),
           "k": dict(k=torch.randn(2, 3, 8)), "k dtype": dict(k=torch.randn(2, 2, 8).half()),
           "dt": dict(dt=torch.randn(2, 3)), "position": dict(position=torch.arange(2.0)),
           "position shape": dict(position=torch.arange(3)), "inv_freq": dict(inv_freq=torch.ones(4).double()),
           "a": dict(a=torch.zeros(3)), "mask_form": dict(mask_form="exp"),
           "q strides": dict(q=torch.randn(2, 8, 4).mT)}

    def check(args):
        return dma_ops._step_inputs_valid(**args, dtypes=DTYPES, mask_forms=MASK_FORMS)

    assert check(good)
    dma_ops._check_step_inputs(**good, dtypes=DTYPES, mask_forms=MASK_FORMS)
    for name, change in bad.items():
        args = {**good, **change}
        assert not check(args), name
        with pytest.raises(ValueError):
            dma_ops._check_step_inputs(**args, dtypes=DTYPES, mask_forms=MASK_FORMS)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=interpreted_only)])
@pytest.mark.parametrize("w", [None, 8])
def test_a_cache_of_slices_leaves_the_callers_tensors_alone(backend, w):
    """cache_state of the first 5 keys of longer tensors (views: the cache keeps them): a step must not take the
    storage past them for its buffer — it wrote the new key into the caller's sixth row before."""
    from wonderful_matrices.ops import dynamic_mask_attention
    from wonderful_matrices.ops.dma import DecodeStep, cache_state

    torch.manual_seed(0)
    b, length, hq, hkv, d = 1, 20, 2, 2, 16
    keys, values = torch.randn(b, length, hkv, d), torch.randn(b, length, hkv, d)
    bias, positions = -torch.rand(b, length, hkv), torch.arange(length)[None, :, None].expand(b, length, hkv)
    positions = positions.contiguous()
    before = [t.clone() for t in (keys, values, bias, positions)]
    state = cache_state(keys[:, :5], values[:, :5], bias[:, :5], positions[:, :5])
    q, new_k, new_v = torch.randn(b, 1, hq, d), torch.randn(b, 1, hkv, d), torch.randn(b, 1, hkv, d)
    new_b, new_p = -torch.rand(b, 1, hkv), torch.full((b, 1, hkv), 5)
    with torch.no_grad():
        out = DecodeStep(backend).step(q, new_k, new_v, new_b, new_p, state, w)
    expected = dynamic_mask_attention(q, torch.cat([keys[:, :5], new_k], 1), torch.cat([values[:, :5], new_v], 1),
                                      torch.cat([bias[:, :5], new_b], 1), keep_window=w, backend="naive")
    assert all(torch.equal(t, old) for t, old in zip((keys, values, bias, positions), before))
    assert rel_err(out, expected) < 1e-5
