"""expert_mixture's dense backend (matrix products over all N experts, in token chunks) against the looped float64
oracle: forward and every gradient, odd shapes, several chunks, float64 / float32 and the half-precision arithmetic
(on the CPU the same float32 products of half operands the GPU makes); the PKM read ``weighted_rows``; the
``"auto"`` rule. The GPU runs of the same code: tests/ops/test_experts_cuda.py."""
import pytest
import torch
from test_expert_mixture_op import make, run
from test_product_key_op import _LargestTensor

from conftest import rel_err
from wonderful_matrices.ops import expert_mixture
from wonderful_matrices.ops.expert_mixture import DENSE_FACTOR, dense, dense_is_cheaper, weighted_rows

NAMES = ("y", "x", "gates", "down", "up")


@pytest.mark.parametrize("batch,H,k,N,d", [
    ((1,), 1, 1, 4, 8),         # one token, one expert
    ((5,), 2, 3, 3, 7),         # N < H*k: the same expert several times in one token (the scatter adds them)
    ((7,), 3, 1, 10, 9),        # k = 1
    ((2, 3), 3, 4, 64, 16),
    ((4, 1, 2), 4, 2, 25, 5),   # three leading dims, d odd
])
@pytest.mark.parametrize("activation", ["silu", "gelu", "relu"])
def test_matches_loops_float64(batch, H, k, N, d, activation):
    args = make(batch, H, k, N, d)
    got = run("dense", *args, activation=activation)
    ref = run("naive", *args, activation=activation)
    for name, a, b in zip(NAMES, got, ref):
        assert a.dtype == torch.float64, name
        assert b.abs().sum() > 0, name
        assert rel_err(a, b) < 1e-12, name


@pytest.mark.parametrize("tokens_per_chunk", [1, 4, 10 ** 6])  # one token per chunk; 4 + a tail of 3; one chunk
def test_several_chunks_match_loops(monkeypatch, tokens_per_chunk):
    N = 21
    monkeypatch.setattr(dense, "DENSE_BUDGET", tokens_per_chunk * dense.token_bytes(N, torch.float64))
    x, ids, gates, down, up = make((11,), 3, 2, N, 6)
    ids[2, 0] = ids[2, 1] = ids[2, 2, 0] = 5  # one expert picked by every head of a token
    got = run("dense", x, ids, gates, down, up)
    ref = run("naive", x, ids, gates, down, up)
    for name, a, b in zip(NAMES, got, ref):
        assert rel_err(a, b) < 1e-12, name


def test_token_chunks_cover_the_tokens_within_the_budget(monkeypatch):
    monkeypatch.setattr(dense, "DENSE_BUDGET", 40)
    for T, N in ((0, 7), (1, 7), (11, 10), (12, 10), (5, 100)):
        chunks = dense.token_chunks(T, N)
        assert [i for c in chunks for i in range(T)[c]] == list(range(T))
        assert all(0 < c.stop - c.start <= max(1, 40 // N) for c in chunks)


def test_matches_loops_float32():
    args64 = make((3, 4), 2, 5, 36, 24)
    ref = run("naive", *args64)
    got = run("dense", *(t.float() if t.is_floating_point() else t for t in args64))
    for name, a, b in zip(NAMES, got, ref):
        assert a.dtype == torch.float32, name
        assert rel_err(a, b) < 1e-6, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("activation", ["silu", "gelu", "relu"])
def test_half_precision_with_float32_gates(monkeypatch, dtype, activation):
    """The rounding of the dense coefficient matrices to the table dtype stays within the bounds the Triton backend
    meets on the GPU (2e-2 output, 4e-2 gradients) against float64 on the same rounded inputs; several chunks."""
    monkeypatch.setattr(dense, "DENSE_BUDGET", 40 * dense.token_bytes(100, dtype))
    x, ids, gates, down, up = make((97,), 4, 8, 100, 40)
    x, down, up = (t.to(dtype).double() for t in (x, down, up))
    ref = run("naive", x, ids, gates, down, up, activation=activation)
    got = run("dense", x.to(dtype), ids, gates.float(), down.to(dtype), up.to(dtype), activation=activation)
    for name, a, b in zip(NAMES, got, ref):
        assert a.dtype == (torch.float32 if name == "gates" else dtype), name
        assert rel_err(a, b) < (2e-2 if name == "y" else 4e-2), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_with_many_duplicates_per_row(monkeypatch, dtype):
    """Five experts, 32 selections per token: every row of W and Ws sums runs of up to 32 equal ids before its one
    rounding; the same bounds as above against float64, several chunks."""
    monkeypatch.setattr(dense, "DENSE_BUDGET", 7 * dense.token_bytes(5, dtype))
    x, ids, gates, down, up = make((23,), 4, 8, 5, 12)
    ids[0] = 3  # every selection of a token the same expert
    x, down, up = (t.to(dtype).double() for t in (x, down, up))
    ref = run("naive", x, ids, gates, down, up)
    got = run("dense", x.to(dtype), ids, gates.float(), down.to(dtype), up.to(dtype))
    for name, a, b in zip(NAMES, got, ref):
        assert rel_err(a, b) < (2e-2 if name == "y" else 4e-2), name


def _exact_coefficient_case(c, M, N, seed):
    """ids (c, M) with many duplicates (N < M) and w (c, M) float32 multiples of 2^-12 below 1 in magnitude: every
    sum of up to M of them is exact in float32, so the float64 sum is a float32 value and "rounded once" is exact."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, N, (c, M), generator=gen)
    ids[0] = N - 1
    w = torch.randint(-4095, 4096, (c, M), generator=gen).float() / 4096
    return w, ids


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_coefficients_are_the_sums_of_duplicates_rounded_once(dtype):
    c, M, N = 50, 32, 11
    w, ids = _exact_coefficient_case(c, M, N, seed=4)
    w = w.to(dense.compute_dtype(torch.empty(0, dtype=dtype)))
    exact = torch.zeros(c, N, dtype=torch.float64).scatter_add_(1, ids, w.double())
    got = dense.dense_coefficients(w, ids, N, dtype)
    assert got.dtype == dtype and got.shape == (c, N)
    assert torch.equal(got, exact.to(dtype))
    assert torch.equal(got, dense.dense_coefficients(w, ids, N, dtype))  # deterministic: bit-identical again
    assert torch.equal(dense.dense_coefficients(w, ids, N, dtype, by_expert=True), got.t())
    if dtype == torch.bfloat16:  # adding the rounded terms in bf16 rounds many times: the check tells them apart
        assert not torch.equal(got, torch.zeros(c, N, dtype=dtype).scatter_add_(1, ids, w.to(dtype)))


def test_run_totals_of_two_value_sets_at_once():
    """IdRuns.totals over a stacked (2, c, M) input equals two separate calls (the backward builds W and Ws so)."""
    w, ids = _exact_coefficient_case(9, 13, 4, seed=5)
    runs = dense.IdRuns(ids)
    both = runs.totals(torch.stack((w, -2 * w)))
    assert torch.equal(both[0], runs.totals(w)) and torch.equal(both[1], runs.totals(-2 * w))
    exact = torch.zeros(9, 4, dtype=torch.float64).scatter_add_(1, ids, w.double())
    assert torch.equal(both[0].double(), exact.gather(1, runs.ids))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_no_float32_tokens_by_experts_matrix_but_the_products(monkeypatch, dtype):
    """Half tables: the only float32 (chunk, N) tensors are the products' outputs (and, on the CPU, the widened
    operands inside ``matmul``); the coefficient matrices are built in the table dtype."""
    T, H, k, N, d = 12, 2, 3, 37, 5
    inside_matmul = []
    original = dense.matmul

    def recording_matmul(a, b):
        inside_matmul.append(True)
        try:
            return original(a, b)
        finally:
            inside_matmul.pop()

    monkeypatch.setattr(dense, "matmul", recording_matmul)
    x, ids, gates, down, up = (t.to(dtype) if t.is_floating_point() else t for t in make((T,), H, k, N, d))
    leaves = [t.requires_grad_() for t in (x, down, up)]

    class Float32Wide(_LargestTensor):
        def __init__(self):
            super().__init__()
            self.found = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape[-1:] == (N,) \
                        and not inside_matmul:
                    self.found.append(str(func))
            return out

    with Float32Wide() as probe:
        expert_mixture(x, ids, gates.float(), down, up, backend="dense").float().square().sum().backward()
    assert probe.found == [] and all(t.grad is not None for t in leaves)


def test_int32_ids_and_float32_gates_with_float64_tables():
    x, ids, gates, down, up = make((6,), 2, 3, 9, 5)
    got = run("dense", x, ids.int(), gates.float(), down, up)
    ref = run("naive", x, ids, gates.float().double(), down, up)
    assert got[2].dtype == torch.float32
    for name, a, b in zip(NAMES, got, ref):
        assert rel_err(a, b) < (1e-6 if name == "gates" else 1e-12), name


def test_empty_batch_forward_and_backward():
    x = torch.randn(0, 8, requires_grad=True)
    down, up = torch.randn(5, 8, requires_grad=True), torch.randn(5, 8, requires_grad=True)
    gates = torch.rand(0, 2, 3, requires_grad=True)
    y = expert_mixture(x, torch.zeros(0, 2, 3, dtype=torch.long), gates, down, up, backend="dense")
    assert y.shape == (0, 8)
    y.sum().backward()
    assert x.grad.shape == (0, 8) and gates.grad.shape == (0, 2, 3)
    assert torch.equal(down.grad, torch.zeros(5, 8)) and torch.equal(up.grad, torch.zeros(5, 8))


def test_only_requested_gradients():
    x, ids, gates, down, up = make((4,), 2, 2, 6, 3)
    up.requires_grad_()
    y = expert_mixture(x, ids, gates, down, up, backend="dense")
    (grad,) = torch.autograd.grad(y.sum(), up)
    assert rel_err(grad, torch.autograd.grad(expert_mixture(x, ids, gates, down, up, backend="naive").sum(), up)[0]) \
        < 1e-12


def test_no_tokens_by_experts_tensor_beyond_a_chunk(monkeypatch):
    """Forward and backward never create a (tokens, N) tensor, only (chunk, N) ones."""
    T, H, k, N, d = 64, 4, 8, 512, 8
    monkeypatch.setattr(dense, "DENSE_BUDGET", 4 * dense.token_bytes(N, torch.float32))  # 4 tokens per chunk
    x, ids, gates, down, up = make((T,), H, k, N, d, torch.float32)
    leaves = [t.requires_grad_() for t in (x, gates, down, up)]
    with _LargestTensor() as probe:
        expert_mixture(x, ids, gates, down, up, backend="dense").square().sum().backward()
    assert probe.largest <= max(N * d, 4 * N, T * H * k) < T * N
    assert all(t.grad is not None for t in leaves)


@pytest.mark.parametrize("change,argument", [
    (lambda a: a.update(ids=torch.full((3, 2, 2), 9)), "ids"),  # id = N out of range
    (lambda a: a.update(up=a["up"].double()), "up.dtype"),
    (lambda a: a.update(gates=torch.rand(3, 2, 3)), "gates.shape"),
    (lambda a: a.update(activation="tanh"), "activation"),
])
def test_bad_arguments_raise(change, argument):
    args = dict(x=torch.randn(3, 4), ids=torch.randint(0, 9, (3, 2, 2)), gates=torch.rand(3, 2, 2),
                down=torch.randn(9, 4), up=torch.randn(9, 4), backend="dense")
    change(args)
    with pytest.raises(ValueError, match=argument.replace(".", r"\.")):
        expert_mixture(**args)


# ---- the "auto" rule -----------------------------------------------------------------------------------------

def test_dense_is_cheaper_for_few_experts_only():
    assert DENSE_FACTOR == 96
    assert dense_is_cheaper(2304, 4 * 8)              # cheems-base (N = 72·M): measured 1.10x / 1.25x faster dense
    assert dense_is_cheaper(1024, 8 * 16)             # bench.cdmoe_target's N = 1024: measured 2.2x faster dense
    assert not dense_is_cheaper(784, 2 * 4)           # cheems-small (98·M)
    assert not dense_is_cheaper(2 ** 16, 8 * 16)
    assert not dense_is_cheaper(2 ** 20, 8 * 16)
    assert not dense_is_cheaper(DENSE_FACTOR * 32 + 1, 32)


def test_dense_only_where_a_backward_runs():
    """The dense mixture's gain is its backward: a forward alone (prefill, decoding) keeps the gathers."""
    from wonderful_matrices.ops.common import needs_backward

    assert not dense_is_cheaper(2304, 4 * 8, backward=False)
    weights, table = torch.randn(3, 4), torch.randn(5, 2, requires_grad=True)
    assert needs_backward(weights, table)
    assert not needs_backward(weights, table.detach())
    with torch.no_grad():
        assert not needs_backward(weights, table)


def test_auto_on_the_cpu_stays_torch(monkeypatch):
    """Few experts on the CPU: "auto" keeps the gather backend (the CPU default is unchanged)."""
    monkeypatch.setattr(dense.DenseMixture, "apply", None)  # calling the dense backend would fail
    x, ids, gates, down, up = make((5,), 2, 3, 4, 6)
    assert rel_err(expert_mixture(x, ids, gates, down, up), expert_mixture(x, ids, gates, down, up, "silu",
                                                                           backend="naive")) < 1e-12


# ---- weighted_rows (the PKM read) ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_weighted_rows_matches_loops(monkeypatch, dtype, tol):
    monkeypatch.setattr(dense, "DENSE_BUDGET", 3 * dense.token_bytes(7, dtype))  # 3 tokens per chunk
    T, M, N, d = 10, 5, 7, 9
    w = torch.rand(T, M, dtype=torch.float64) + 0.1
    ids = torch.randint(0, N, (T, M))
    ids[0, :2] = 3  # a duplicate in one row
    table = torch.randn(N, d, dtype=torch.float64).to(dtype).double()
    g = torch.randn(T, d, dtype=torch.float64)
    leaves = [w.float().requires_grad_() if dtype != torch.float64 else w.clone().requires_grad_(),
              table.to(dtype).requires_grad_()]
    y = weighted_rows(leaves[0], ids, leaves[1], backend="dense")
    got = (y, *torch.autograd.grad(y, leaves, g.to(y.dtype)))
    ref_leaves = [w.clone().requires_grad_(), table.clone().requires_grad_()]
    ref = torch.stack([sum(ref_leaves[0][t, j] * ref_leaves[1][ids[t, j]] for j in range(M)) for t in range(T)])
    want = (ref, *torch.autograd.grad(ref, ref_leaves, g))
    assert got[0].dtype == got[2].dtype == dtype
    for name, a, b in zip(("y", "weights", "table"), got, want):
        assert rel_err(a, b) < (2 * tol if dtype == torch.bfloat16 and name != "y" else tol), name


def test_compiles_without_graph_breaks():
    """torch.compile(fullgraph=True) traces the dense Function, forward and backward (aot_eager: no codegen)."""
    args = make((6,), 2, 3, 5, 8)

    def fn(x, ids, gates, down, up):
        return expert_mixture(x, ids, gates, down, up, activation="gelu", backend="dense")

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    ref = run("naive", *args, activation="gelu")
    leaves = [t.clone().requires_grad_() for t in (args[0], args[2], args[3], args[4])]
    y = compiled(leaves[0], args[1], *leaves[1:])
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for name, a, b in zip(NAMES, (y, *torch.autograd.grad(y, leaves, g)), ref):
        assert rel_err(a, b) < 1e-12, name


def test_compiled_mixture_keeps_no_tokens_by_experts_matrix_for_the_backward():
    """Under torch.compile the forward's tensors kept for the backward are AOTAutograd's choice, not the Function's
    ``save_for_backward``: when the backward built its coefficient matrices from the same ``(T, N)`` zero matrix as
    the forward, common-subexpression elimination merged the two and the partitioner kept that matrix alive from the
    forward to the backward (151 MB per CDMoE layer at cheems-base's 2 × 16K tokens). The backward builds both as
    one ``(2, T, N)`` matrix, so nothing of ``T·N`` elements or more is kept: only the inputs, ``ids``, ``gates``,
    the ``(T, M)`` dots and tensors of size ``T·M`` or ``N·d``."""
    from torch._functorch.aot_autograd import aot_module_simplified
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    T, H, k, N, d = 64, 2, 4, 49, 24
    x, ids, gates, down, up = make((T,), H, k, N, d)
    x, gates, down, up = (t.float().detach().requires_grad_() for t in (x, gates, down, up))
    kept = []

    def forward_compiler(gm, example_inputs):
        output = next(n for n in gm.graph.nodes if n.op == "output")
        kept.extend(tuple(a.meta["val"].shape) for a in output.args[0] if hasattr(a, "meta") and "val" in a.meta)
        return gm

    def backend(gm, example_inputs):
        return aot_module_simplified(gm, example_inputs, fw_compiler=forward_compiler,
                                     bw_compiler=lambda g, _: g, partition_fn=min_cut_rematerialization_partition)

    torch._dynamo.reset()
    mixture = torch.compile(lambda *a: expert_mixture(*a, backend="dense"), backend=backend, fullgraph=True)
    mixture(x, ids, gates, down, up).sum().backward()
    assert kept and down.grad is not None
    assert all(T * N > max(T * H * k, N * d) and torch.Size(shape).numel() < T * N for shape in kept), kept
