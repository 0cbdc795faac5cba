"""The dense mixture's coefficient-matrix kernel (ops/expert_mixture/coefficient_kernels.py) against the float64 sums
of duplicate ids rounded once, and the dense backend running through it, on the CPU under TRITON_INTERPRET=1.

Triton decides interpreted vs compiled when it is imported, so in a normal test run ``test_interpreted_in_a_subprocess``
reruns this file in a child process with ``TRITON_INTERPRET=1`` (there the kernel's blocks are 4 tokens × 16 experts,
so the cases below cross the masked tails, and outputs start NaN-poisoned, so an unwritten element fails). The
interpreter's bf16 stores truncate instead of rounding to nearest, so bf16 outputs are tested on the GPU only
(tests/ops/test_experts_cuda.py -k coefficient); float32 and fp16 here. The sm_90 compile of every configuration:
tests/ops/test_expert_mixture_triton_compile.py.
"""
import pytest
import torch
from test_expert_mixture_dense import NAMES, _exact_coefficient_case
from test_expert_mixture_op import make, run

from conftest import interpreted_only, interpreter_child_test, rel_err

pytest.importorskip("triton")

from wonderful_matrices.ops import expert_mixture
from wonderful_matrices.ops.expert_mixture import dense, weighted_rows
from wonderful_matrices.ops.expert_mixture.coefficient_kernels import coefficient_matrices

test_interpreted_in_a_subprocess = interpreter_child_test(__file__)

INTERPRETED_DTYPES = [torch.float32, torch.float16]

# (c, M, N): one token, one selection, one expert; M = 1; odd c and N not a multiple of the blocks (4, 16) with
# unselected experts; N < M (many duplicates per row; the case's first row is one expert M times); M = 32 as at
# cheems-base over more than two expert blocks
CASES = [(1, 1, 1), (7, 1, 5), (9, 6, 37), (13, 32, 11), (6, 32, 50)]


def _float64_sums(w, ids, N):
    return torch.zeros(ids.shape[0], N, dtype=torch.float64).scatter_add_(1, ids, w.double())


@interpreted_only
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
@pytest.mark.parametrize("dtype", INTERPRETED_DTYPES)
def test_sums_of_duplicates_rounded_once(case, dtype):
    """Values whose float32 sums are exact (multiples of 2^-12): the kernel equals the float64 sums rounded once,
    and IdRuns (the torch path) bit for bit; a pair of weight sets equals two single launches."""
    c, M, N = case
    w, ids = _exact_coefficient_case(c, M, N, seed=c + M + N)
    w2 = torch.flip(w, (0,)) * 3
    exact = _float64_sums(w, ids, N)
    assert exact.abs().sum() > 0
    (got,) = coefficient_matrices([w], ids, N, dtype)
    assert got.dtype == dtype and got.shape == (c, N)
    assert torch.equal(got, exact.to(dtype))
    runs = dense.IdRuns(ids)
    assert torch.equal(got, runs.coefficients(runs.totals(w), N, dtype))
    first, second = coefficient_matrices([w, w2], ids, N, dtype)
    assert torch.equal(first, got) and torch.equal(second, _float64_sums(w2, ids, N).to(dtype))


@interpreted_only
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_random_weights_within_float32_rounding(case):
    """Arbitrary float32 weights: the float32 sums (left to right) are the float64 sums to float32 rounding, so are
    IdRuns' (a tree order); two launches are bit-identical (deterministic)."""
    c, M, N = case
    gen = torch.Generator().manual_seed(c * M)
    ids = torch.randint(0, N, (c, M), generator=gen)
    ids[0] = N - 1
    w = torch.randn(c, M, generator=gen)
    (got,) = coefficient_matrices([w], ids, N, torch.float32)
    exact = _float64_sums(w, ids, N)
    assert rel_err(got, exact) < 1e-6
    runs = dense.IdRuns(ids)
    assert rel_err(got, runs.coefficients(runs.totals(w), N, torch.float32)) < 1e-6
    assert torch.equal(got, coefficient_matrices([w], ids, N, torch.float32)[0])


@interpreted_only
def test_half_output_is_the_float32_sum_rounded_to_nearest():
    """The fp16 store rounds the float32 sum to nearest (as torch's ``.to``), including values that round up."""
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 21, (11, 9), generator=gen)
    w = torch.randn(11, 9, generator=gen) * 1000
    half, single = coefficient_matrices([w], ids, 21, torch.float16)[0], coefficient_matrices([w], ids, 21,
                                                                                              torch.float32)[0]
    assert torch.equal(half, single.to(torch.float16))
    assert (half.float().abs() > single.abs()).any()  # not truncation


@interpreted_only
@pytest.mark.parametrize("pair", [False, True])
def test_no_tokens(pair):
    ids, w = torch.zeros(0, 4, dtype=torch.long), torch.zeros(0, 4)
    outs = coefficient_matrices([w, w] if pair else [w], ids, 7, torch.float32)
    assert [o.shape for o in outs] == [(0, 7)] * (2 if pair else 1)


@pytest.mark.parametrize("values,ids,N,dtype,argument", [
    ([], torch.zeros(2, 3, dtype=torch.long), 5, torch.float32, "values"),
    ([torch.zeros(2, 3)] * 3, torch.zeros(2, 3, dtype=torch.long), 5, torch.float32, "values"),
    ([torch.zeros(2, 3)], torch.zeros(2, 3, dtype=torch.long), 5, torch.float64, "dtype"),
    ([torch.zeros(2, 3)], torch.zeros(2, 3), 5, torch.float32, "ids"),
    ([torch.zeros(2, 4)], torch.zeros(2, 3, dtype=torch.long), 5, torch.float32, "values"),
    ([torch.zeros(2, 3, dtype=torch.float64)], torch.zeros(2, 3, dtype=torch.long), 5, torch.float32, "values"),
])
def test_bad_arguments_raise(values, ids, N, dtype, argument):
    with pytest.raises(ValueError, match=argument):
        coefficient_matrices(values, ids, N, dtype)


# ---- the dense backend through the kernel ----------------------------------------------------------------------

@pytest.fixture
def kernel_only(monkeypatch):
    """The dense backend with the torch path (IdRuns) unavailable: every coefficient matrix comes from the kernel."""
    assert dense.coefficient_kernel_applies(torch.zeros(1, 1), torch.float32)
    monkeypatch.setattr(dense, "IdRuns", None)


@interpreted_only
@pytest.mark.parametrize("tokens_per_chunk", [4, 10 ** 6])  # 4 + a tail of 3; one chunk
@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_dense_mixture_float32_matches_loops(monkeypatch, kernel_only, tokens_per_chunk, activation):
    N = 21
    monkeypatch.setattr(dense, "DENSE_BUDGET", tokens_per_chunk * dense.token_bytes(N, torch.float32))
    args = make((11,), 3, 2, N, 6)
    args[1][2] = 5  # one expert picked by every selection of a token
    ref = run("naive", *args, activation=activation)
    got = run("dense", *(t.float() if t.is_floating_point() else t for t in args), activation=activation)
    for name, a, b in zip(NAMES, got, ref):
        assert a.dtype == torch.float32 and b.abs().sum() > 0, name
        assert rel_err(a, b) < 1e-5, name


@interpreted_only
@pytest.mark.parametrize("leaf", ["up", "x"])
def test_dense_mixture_only_requested_gradients(kernel_only, leaf):
    """Only ``up`` needs a gradient (one matrix, W) or only ``x`` (one matrix, Ws): single launches."""
    x, ids, gates, down, up = make((5,), 2, 3, 9, 4)

    def grad_of(dtype, backend):
        inputs = {"x": x.to(dtype), "up": up.to(dtype)}
        inputs[leaf].requires_grad_()
        y = expert_mixture(inputs["x"], ids, gates.to(dtype), down.to(dtype), inputs["up"], backend=backend)
        return torch.autograd.grad(y.square().sum(), inputs[leaf])[0]

    assert rel_err(grad_of(torch.float32, "dense"), grad_of(torch.float64, "naive")) < 1e-5


@interpreted_only
def test_dense_mixture_fp16_with_many_duplicates(monkeypatch, kernel_only):
    """fp16 tables, five experts and 32 selections per token (runs of up to 32 equal ids), several chunks: the
    bounds of the torch path's test (2e-2 output, 4e-2 gradients) against float64 on the same rounded inputs."""
    dtype = torch.float16
    monkeypatch.setattr(dense, "DENSE_BUDGET", 7 * dense.token_bytes(5, dtype))
    x, ids, gates, down, up = make((23,), 4, 8, 5, 12)
    ids[0] = 3
    x, down, up = (t.to(dtype).double() for t in (x, down, up))
    ref = run("naive", x, ids, gates, down, up)
    got = run("dense", x.to(dtype), ids, gates.float(), down.to(dtype), up.to(dtype))
    for name, a, b in zip(NAMES, got, ref):
        assert rel_err(a, b) < (2e-2 if name == "y" else 4e-2), name


@interpreted_only
@pytest.mark.parametrize("dtype", INTERPRETED_DTYPES)
def test_dense_mixture_kernel_on_and_off_within_float32_rounding(monkeypatch, dtype):
    """A whole step with the kernel and with IdRuns: the coefficient sums differ only in their order of float32
    additions, so the results agree to float32 rounding (float32 tables) or to rare one-ulp differences of a
    rounded coefficient (fp16); the kernel's step is bit-identical when repeated."""
    args = [t.to(dtype) if t.is_floating_point() else t for t in make((17,), 4, 8, 12, 10)]
    args[2] = args[2].float()
    on = run("dense", *args)
    assert all(torch.equal(a, b) for a, b in zip(on, run("dense", *args)))
    monkeypatch.setattr(dense, "_KERNEL_ON_CPU", False)
    off = run("dense", *args)
    for name, a, b in zip(NAMES, on, off):
        assert rel_err(a, b) < (1e-6 if dtype == torch.float32 else 2e-3), name


@interpreted_only
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-2)])
def test_weighted_rows_matches_loops(monkeypatch, kernel_only, dtype, tol):
    monkeypatch.setattr(dense, "DENSE_BUDGET", 3 * dense.token_bytes(7, dtype))  # 3 tokens per chunk
    T, M, N, d = 10, 5, 7, 9
    w = torch.rand(T, M, dtype=torch.float64) + 0.1
    ids = torch.randint(0, N, (T, M))
    ids[0, :2] = 3
    table = torch.randn(N, d, dtype=torch.float64).to(dtype).double()
    g = torch.randn(T, d, dtype=torch.float64)
    leaves = [w.float().requires_grad_(), table.to(dtype).requires_grad_()]
    y = weighted_rows(leaves[0], ids, leaves[1], backend="dense")
    got = (y, *torch.autograd.grad(y, leaves, g.to(y.dtype)))
    ref_leaves = [w.clone().requires_grad_(), table.clone().requires_grad_()]
    ref = torch.stack([sum(ref_leaves[0][t, j] * ref_leaves[1][ids[t, j]] for j in range(M)) for t in range(T)])
    want = (ref, *torch.autograd.grad(ref, ref_leaves, g))
    for name, a, b in zip(("y", "weights", "table"), got, want):
        assert rel_err(a, b) < 2 * tol, name


@interpreted_only
def test_compiles_without_graph_breaks(kernel_only):
    """torch.compile(fullgraph=True) over the dense mixture with the kernel's launches as opaque custom ops."""
    args = [t.float() if t.is_floating_point() else t for t in make((6,), 2, 3, 5, 8)]

    def fn(x, ids, gates, down, up):
        return dense.expert_mixture(x, ids, gates, down, up, "gelu")

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in (args[0], args[2], args[3], args[4])]
    y = compiled(leaves[0], args[1], *leaves[1:])
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).float()
    ref = run("naive", *(t.double() if t.is_floating_point() else t for t in args), activation="gelu")
    for name, a, b in zip(NAMES, (y, *torch.autograd.grad(y, leaves, g)), ref):
        assert rel_err(a, b) < 1e-5, name
