"""wm.ops.ssd / ssd_step: the chunked torch backend against the per-step recurrence (the oracle)."""
import random

import pytest
import torch

from conftest import rel_err
from wonderful_matrices.ops import ssd, ssd_step
from wonderful_matrices.ops.ssd.naive import ssd_naive

# (b, l, h, p, g, n, chunk, with_D, with_init): odd lengths, l=1, l < chunk, l = chunk, l = k*chunk + 1,
# groups g=1 / g>1 / g=h, many chunks (the inter-chunk scan recurses past one block of 16 chunks)
FIXED = [
    (1, 1, 1, 1, 1, 1, 64, False, False),
    (2, 1, 4, 3, 2, 5, 8, True, True),
    (2, 7, 4, 3, 1, 4, 4, True, False),
    (1, 16, 2, 5, 2, 3, 16, False, True),
    (2, 17, 6, 2, 3, 4, 16, True, True),
    (1, 33, 4, 4, 4, 2, 8, False, False),
    (1, 45, 3, 2, 1, 6, 2, True, True),
    (1, 150, 2, 2, 1, 3, 1, True, True),
    (2, 100, 4, 3, 2, 4, 2, False, True),
]


def _random_cases(count, seed):
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        g = rng.choice([1, 2, 3])
        h = g * rng.choice([1, 2, 3])
        cases.append((rng.randint(1, 2), rng.randint(1, 70), h, rng.randint(1, 5), g, rng.randint(1, 6),
                      rng.choice([1, 4, 8, 16, 32, 64]), rng.random() < 0.5, rng.random() < 0.5))
    return cases


CASES = FIXED + _random_cases(10, seed=1234)


def make_inputs(b, l, h, p, g, n, with_D, with_init, dtype=torch.float64, dt_scale=1.0):
    """Random inputs (never zeros); dt > 0, A < 0."""
    x = torch.randn(b, l, h, p, dtype=dtype)
    dt = (torch.nn.functional.softplus(torch.randn(b, l, h, dtype=torch.float64)) * dt_scale).to(dtype)
    A = (-torch.exp(torch.randn(h, dtype=torch.float64) * 0.5)).to(dtype)
    B = torch.randn(b, l, g, n, dtype=dtype)
    C = torch.randn(b, l, g, n, dtype=dtype)
    D = torch.randn(h, dtype=dtype) if with_D else None
    init = torch.randn(b, h, p, n, dtype=dtype) if with_init else None
    return dict(x=x, dt=dt, A=A, B=B, C=C, D=D, initial_state=init)


def _leaves(inputs):
    return {k: (v.detach().clone().requires_grad_(True) if v is not None else None) for k, v in inputs.items()}


def _forward_backward(fn, inputs, gy, gs):
    """``fn(**inputs) -> (y, final)``; backward of ``<y, gy> + <final, gs>`` (either may be None: that output gets
    no gradient); returns ``(y, final, {name: grad})``."""
    leaves = _leaves(inputs)
    y, final = fn(**leaves)
    loss = sum((out.double() * g).sum() for out, g in ((y, gy), (final, gs)) if g is not None)
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items() if v is not None}
    return y.detach(), final.detach(), grads


def _run_torch(chunk):
    return lambda **kw: ssd(**kw, chunk_size=chunk, return_final_state=True, backend="torch")


def _run_naive(**kw):
    return ssd_naive(**kw, return_final_state=True)


def _case_id(case):
    b, l, h, p, g, n, chunk, with_D, with_init = case
    return f"b{b}l{l}h{h}p{p}g{g}n{n}q{chunk}{'D' if with_D else ''}{'S' if with_init else ''}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("dtype,bound", [(torch.float64, 1e-11), (torch.float32, 1e-5)], ids=["f64", "f32"])
def test_torch_matches_naive_forward_and_gradients(case, dtype, bound):
    b, l, h, p, g, n, chunk, with_D, with_init = case
    ref_inputs = make_inputs(b, l, h, p, g, n, with_D, with_init)
    gy = torch.randn(b, l, h, p, dtype=torch.float64)
    gs = torch.randn(b, h, p, n, dtype=torch.float64)
    y_ref, s_ref, g_ref = _forward_backward(_run_naive, ref_inputs, gy, gs)
    inputs = {k: (v.to(dtype) if v is not None else None) for k, v in ref_inputs.items()}
    y, s, grads = _forward_backward(_run_torch(chunk), inputs, gy, gs)
    assert y.dtype == dtype and s.dtype == dtype
    assert rel_err(y, y_ref) < bound
    assert rel_err(s, s_ref) < bound
    assert set(grads) == set(g_ref)
    for name in g_ref:
        assert grads[name].dtype == dtype
        assert rel_err(grads[name], g_ref[name]) < (bound if dtype == torch.float64 else 2 * bound), name


@pytest.mark.parametrize("case", FIXED[2:7], ids=_case_id)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward(case, dtype):
    b, l, h, p, g, n, chunk, with_D, with_init = case
    inputs = {k: (v.to(dtype) if v is not None else None)
              for k, v in make_inputs(b, l, h, p, g, n, with_D, with_init).items()}
    y, s = ssd(**inputs, chunk_size=chunk, return_final_state=True)
    assert y.dtype == dtype and s.dtype == torch.float32
    y_ref, s_ref = ssd_naive(**{k: (v.double() if v is not None else None) for k, v in inputs.items()},
                             return_final_state=True)
    assert rel_err(y, y_ref) < 1e-2
    assert rel_err(s, s_ref) < 1e-3  # the state is float32 end to end (inputs are exact in float32)


def test_default_backend_and_chunk_size_invariance():
    inputs = make_inputs(2, 77, 4, 3, 2, 5, True, True)
    y_ref = ssd_naive(**inputs)
    for chunk in (1, 2, 8, 32, 64, 128, 256):
        assert rel_err(ssd(**inputs, chunk_size=chunk), y_ref) < 1e-11, chunk
    assert rel_err(ssd(**inputs), y_ref) < 1e-11  # backend="auto", chunk_size=64


def test_large_decays_stay_finite():
    # cumulative log-decays reach about -1e4 inside a chunk: exp of an unmasked difference would overflow
    inputs = make_inputs(1, 64, 2, 3, 1, 4, True, True, dt_scale=50.0)
    inputs["A"] = torch.tensor([-5.0, -0.01], dtype=torch.float64)
    inputs = {k: (v.float() if v is not None else None) for k, v in inputs.items()}
    gy = torch.randn(1, 64, 2, 3, dtype=torch.float64)
    gs = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    y, s, grads = _forward_backward(_run_torch(64), inputs, gy, gs)
    y_ref, s_ref, g_ref = _forward_backward(_run_naive, {k: (v.double() if v is not None else None)
                                                         for k, v in inputs.items()}, gy, gs)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    assert rel_err(y, y_ref) < 1e-5 and rel_err(s, s_ref) < 1e-5
    for name in g_ref:
        assert torch.isfinite(grads[name]).all(), name
        assert rel_err(grads[name], g_ref[name]) < 1e-4, name


def test_zero_dt_steps_leave_the_state_unchanged():
    inputs = make_inputs(1, 12, 2, 3, 1, 4, True, True)
    inputs["dt"][:, 5:] = 0.0
    _, s_full = ssd(**inputs, chunk_size=4, return_final_state=True)
    _, s_prefix = ssd(**{**inputs, "x": inputs["x"][:, :5], "dt": inputs["dt"][:, :5], "B": inputs["B"][:, :5],
                         "C": inputs["C"][:, :5]}, chunk_size=4, return_final_state=True)
    assert rel_err(s_full, s_prefix) < 1e-12


@pytest.mark.parametrize("g", [1, 2])
@pytest.mark.parametrize("dtype,bound", [(torch.float64, 1e-11), (torch.float32, 1e-5)])
def test_ssd_step_repeated_equals_ssd(g, dtype, bound):
    b, l, h, p, n = 2, 13, 4, 3, 5
    inputs = {k: v.to(dtype) for k, v in make_inputs(b, l, h, p, g, n, True, True).items()}
    y_ref, s_ref = ssd(**inputs, chunk_size=4, return_final_state=True)
    state = inputs["initial_state"]
    before = state.clone()
    ys = []
    for t in range(l):
        y_t, state = ssd_step(state, inputs["x"][:, t], inputs["dt"][:, t], inputs["A"], inputs["B"][:, t],
                              inputs["C"][:, t], D=inputs["D"])
        ys.append(y_t)
    assert torch.equal(inputs["initial_state"], before)  # pure: the given state is not modified
    assert ys[0].dtype == dtype and state.dtype == dtype
    assert rel_err(torch.stack(ys, 1), y_ref) < bound
    assert rel_err(state, s_ref) < bound


def test_ssd_step_half_inputs_keep_a_float32_state():
    state = torch.randn(1, 2, 3, 4)
    y, new = ssd_step(state, torch.randn(1, 2, 3, dtype=torch.bfloat16), torch.rand(1, 2), -torch.rand(2) - 0.1,
                      torch.randn(1, 1, 4, dtype=torch.bfloat16), torch.randn(1, 1, 4, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and new.dtype == torch.float32


def _valid():
    return make_inputs(2, 5, 4, 3, 2, 6, True, True, dtype=torch.float32)


@pytest.mark.parametrize("change,argument", [
    (lambda kw: kw.update(x=kw["x"][0]), "x.shape"),
    (lambda kw: kw.update(x=kw["x"].long()), "x.dtype"),
    (lambda kw: kw.update(dt=kw["dt"][:, :4]), "dt.shape"),
    (lambda kw: kw.update(dt=-kw["dt"]), "dt"),
    (lambda kw: kw.update(A=kw["A"][:3]), "A.shape"),
    (lambda kw: kw.update(A=-kw["A"]), "A"),
    (lambda kw: kw.update(A=torch.ones(4)), "A"),
    (lambda kw: kw.update(A=torch.zeros(4)), "A"),
    (lambda kw: kw.update(A=torch.tensor([-1.0, -float("inf"), -2.0, -0.5])), "A"),
    (lambda kw: kw.update(A=torch.tensor([-1.0, float("nan"), -2.0, -0.5])), "A"),
    (lambda kw: kw["dt"].__setitem__((0, 1, 2), float("inf")), "dt"),
    (lambda kw: kw.update(B=kw["B"][:, :4]), "B.shape"),
    (lambda kw: kw.update(B=torch.randn(2, 5, 3, 6), C=torch.randn(2, 5, 3, 6)), "B.shape"),
    (lambda kw: kw.update(C=kw["C"][..., :5]), "C.shape"),
    (lambda kw: kw.update(D=torch.randn(3)), "D.shape"),
    (lambda kw: kw.update(initial_state=torch.randn(2, 4, 3, 5)), "initial_state.shape"),
    (lambda kw: kw.update(chunk_size=48), "chunk_size"),
    (lambda kw: kw.update(chunk_size=0), "chunk_size"),
    (lambda kw: kw.update(chunk_size=64.0), "chunk_size"),
    (lambda kw: kw.update(backend="cuda"), "backend"),
    (lambda kw: kw.update(return_final_state="yes"), "return_final_state"),
])
def test_bad_arguments_raise_value_error_naming_them(change, argument):
    kw = _valid()
    change(kw)
    with pytest.raises(ValueError, match=rf"^{argument}="):
        ssd(**kw)


def test_triton_backend_needs_cuda_or_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="^backend="):
        ssd(**_valid(), backend="triton")  # a CPU tensor, no interpreter


def test_ssd_step_bad_arguments():
    kw = _valid()
    s, x, dt, A, B, C = kw["initial_state"], kw["x"][:, 0], kw["dt"][:, 0], kw["A"], kw["B"][:, 0], kw["C"][:, 0]
    with pytest.raises(ValueError, match="^state.shape="):
        ssd_step(s[:, :2], x, dt, A, B, C)
    with pytest.raises(ValueError, match="^x_t.shape="):
        ssd_step(s, x[..., None], dt, A, B, C)
    with pytest.raises(ValueError, match="^dt_t.shape="):
        ssd_step(s, x, dt[:, :3], A, B, C)
    with pytest.raises(ValueError, match="^A="):
        ssd_step(s, x, dt, -A, B, C)
    with pytest.raises(ValueError, match="^B_t.shape="):
        ssd_step(s, x, dt, A, B[:1], C)
    with pytest.raises(ValueError, match="^C_t.shape="):
        ssd_step(s, x, dt, A, B, C[..., :2])
    with pytest.raises(ValueError, match="^D.shape="):
        ssd_step(s, x, dt, A, B, C, D=torch.ones(2))
    with pytest.raises(ValueError, match=r"^x_t.shape=\(2, 4, 0\)"):  # no channels: ssd refuses it too
        ssd_step(s[:, :, :0], x[..., :0], dt, A, B, C)


def test_value_checks_are_skipped_only_for_trusted_callers():
    """Layers whose inputs are valid by construction skip the value checks (a device sync each); users do not."""
    from wonderful_matrices.ops.common import trusted_values, value_checks_enabled

    x, dt = torch.randn(1, 4, 2, 3), torch.rand(1, 4, 2)
    B = C = torch.randn(1, 4, 1, 5)
    bad_A = torch.tensor([0.5, -1.0])
    assert value_checks_enabled()
    with pytest.raises(ValueError, match="A"):
        ssd(x, dt, bad_A, B, C)
    with trusted_values():
        assert not value_checks_enabled()
        ssd(x, dt, bad_A, B, C)  # the caller vouches for its values: no check, no sync
    assert value_checks_enabled()
