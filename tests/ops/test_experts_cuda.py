"""Product-key top-k and the expert mixture (torch and Triton backends) on a CUDA device against float64, the
CDMoE / PEER / PKM layers' bf16 training step, and the CDMoE layer's fused decoding step (ops/cdmoe).

Skipped where there is no CUDA device. On a GPU machine: ``AREA=experts OUT=DIR bash scripts/gpu_check.sh`` (or
``python -m pytest tests/ops/test_experts_cuda.py``).
"""
import copy

import pytest
import torch

import wonderful_matrices as wm
from conftest import rel_err
from cuda_helpers import TOL, _grads, _leaf, fingerprint, grouped, memoized, needs_cuda
from wonderful_matrices.ops.expert_mixture import dense, weighted_rows

pytestmark = needs_cuda


def _triton_available():
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


MIXTURE_BACKENDS = ["torch", "dense"] + (["triton"] if _triton_available() else [])


@pytest.mark.xdist_group(name="product-key-and-mixture")  # one worker computes the shared loop oracle once
@pytest.mark.parametrize("backend", MIXTURE_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_product_key_and_mixture_cuda(dtype, backend):
    tokens, H, sqrt_n, dk, k, d = 512, 4, 64, 32, 8, 256
    query = torch.randn(tokens, H, 2, dk)
    sub_keys = torch.randn(H, 2, sqrt_n, dk)
    s_ref, i_ref = memoized(("product-key-naive", k, fingerprint(query, sub_keys)),
                            lambda: wm.ops.product_key_topk(query.double(), sub_keys.double(), k, backend="naive"))
    s, i = wm.ops.product_key_topk(query.cuda(), sub_keys.cuda(), k)
    assert torch.equal(i.cpu(), i_ref)
    assert rel_err(s.cpu(), s_ref) < 1e-4

    x, down, up = torch.randn(tokens, d), torch.randn(sqrt_n ** 2, d) / d ** 0.5, torch.randn(sqrt_n ** 2, d)
    gates = torch.softmax(s_ref, -1).float()

    def fn(x, down, up, gates):
        return wm.ops.expert_mixture(x, i_ref.to(x.device), gates, down, up,
                                     backend="naive" if x.device.type == "cpu" else backend)

    # the loop oracle (a Python loop over tokens and selections, on the CPU where its tiny ops are cheapest), the
    # same for all nine dtype / backend runs
    ref, ref_g = memoized(("mixture-naive", fingerprint(x, i_ref, gates, down, up)),
                          lambda: _grads(fn, [_leaf(t, torch.float64, "cpu") for t in (x, down, up, gates)]))
    out, out_g = _grads(fn, [_leaf(t, dtype, "cuda") for t in (x, down, up)] + [_leaf(gates, torch.float32, "cuda")])
    tol = TOL.get(dtype, 2e-2)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out.cpu(), ref) < tol
    for a, r in zip(out_g, ref_g):
        assert torch.isfinite(a).all()
        assert rel_err(a.cpu(), r) < tol * 2


def _mixture_case(tokens, H, k, N, d, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, d, generator=gen)
    ids = torch.randint(0, N, (tokens, H, k), generator=gen)
    gates = torch.rand(tokens, H, k, generator=gen) + 0.1
    down = torch.randn(N, d, generator=gen) / d ** 0.5
    up = torch.randn(N, d, generator=gen)
    return x, ids, gates, down, up


@pytest.mark.skipif(not _triton_available(), reason="needs triton")
@pytest.mark.parametrize("tokens,H,k,N,d", grouped("mixture-triton", [
    (1, 1, 1, 1, 8),             # one token, one expert
    (300, 8, 16, 16, 96),        # 16 experts: ~2400 selections each (the ranks of a tile are split)
    (1000, 8, 16, 1024, 1000),   # d not a multiple of any block
    (257, 8, 16, 2 ** 16, 64),   # many experts, mostly 0 or 1 selection
]))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_mixture_cuda_against_float64_loops(tokens, H, k, N, d, dtype):
    """The Triton kernels on the GPU against the vectorised float64 reference (itself equal to the loops on CPU),
    computed on the GPU once for both dtypes (the same inputs)."""
    x, ids, gates, down, up = _mixture_case(tokens, H, k, N, d, seed=tokens + N)

    def fn(x, down, up, gates):
        backend = "torch" if x.dtype == torch.float64 else "triton"
        return wm.ops.expert_mixture(x, ids.to(x.device), gates, down, up, backend=backend)

    ref, ref_g = _mixture_reference("silu", x, ids, gates, down, up)
    out, out_g = _grads(fn, [_leaf(t, dtype, "cuda") for t in (x, down, up)] + [_leaf(gates, torch.float32, "cuda")])
    assert rel_err(out.cpu(), ref) < TOL[dtype]
    for name, a, r in zip(("x", "down", "up", "gates"), out_g, ref_g):
        assert torch.isfinite(a).all(), name
        assert rel_err(a.cpu(), r) < TOL[dtype] * 2, name


@pytest.mark.skipif(not _triton_available(), reason="needs triton")
@pytest.mark.parametrize("tokens,H,k,N,d,activation", [
    (999, 4, 6, 64, 200, "gelu"),      # 64 experts (steps split over programs), k not a power of two
    (777, 3, 5, 1024, 96, "relu"),     # 1024 experts, odd everything
    (4097, 8, 16, 2 ** 20, 32, "silu"),  # a million experts: tiles of about one step, direct writes
])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_mixture_cuda_half_precision_activations(tokens, H, k, N, d, activation, dtype):
    """The fused activation epilogues and the table-gradient products (bf16 hi/lo, fp16 tf32x3) in half
    precision against float64 on the same rounded inputs; float32 gates, as the layer passes them."""
    _check_mixture_against_float64("triton", tokens, H, k, N, d, activation, dtype, 2e-2, 4e-2)


def _mixture_reference(activation, x, ids, gates, down, up):
    """The torch backend in float64 on the GPU (gathers of up to tokens·H·k rows of d, slow on the CPU), forward
    and the gradients of x, down, up, gates under _grads' upstream weight -> (out, grads) on the CPU, memoized for
    the other tests of the case in this worker."""
    def compute():
        def fn(x, down, up, gates):
            return wm.ops.expert_mixture(x, ids.cuda(), gates, down, up, activation=activation, backend="torch")

        return _grads(fn, [_leaf(t, torch.float64, "cuda") for t in (x, down, up, gates)])

    return memoized(("mixture-torch", activation, fingerprint(x, ids, gates, down, up)), compute)


def _check_mixture_against_float64(backend, tokens, H, k, N, d, activation, dtype, tol, grad_tol):
    """``backend`` on CUDA in ``dtype`` (float32 gates, as the layer passes them) against the torch backend in
    float64 (on the GPU) from the same rounded inputs: output within ``tol``, the four gradients within
    ``grad_tol``."""
    x, ids, gates, down, up = _mixture_case(tokens, H, k, N, d, seed=tokens + N)
    x, down, up = (t.to(dtype).double() for t in (x, down, up))

    def fn(x, down, up, gates):
        return wm.ops.expert_mixture(x, ids.to(x.device), gates, down, up, activation=activation, backend=backend)

    ref, ref_g = _mixture_reference(activation, x, ids, gates, down, up)
    out, out_g = _grads(fn, [_leaf(t, dtype, "cuda") for t in (x, down, up)] + [_leaf(gates, torch.float32, "cuda")])
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out.cpu(), ref) < tol
    for name, a, r in zip(("x", "down", "up", "gates"), out_g, ref_g):
        assert a.dtype == (torch.float32 if name == "gates" else dtype), name
        assert torch.isfinite(a).all(), name
        assert rel_err(a.cpu(), r) < grad_tol, name


@pytest.mark.parametrize("tokens,H,k,N,d,activation,chunk", [
    (1, 1, 1, 1, 8, "silu", None),             # one token, one expert
    (300, 8, 16, 16, 96, "silu", None),        # 16 experts: every row of W holds many duplicates
    (999, 4, 6, 64, 200, "gelu", 100),         # k not a power of two; 100 tokens per chunk, a tail of 99
    (777, 3, 5, 1024, 96, "relu", None),       # odd everything
    (1000, 8, 16, 1024, 1000, "silu", None),   # d not a multiple of any tile
    (257, 8, 16, 4096, 64, "silu", 64),        # 64 tokens per chunk
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dense_mixture_cuda_against_float64(monkeypatch, tokens, H, k, N, d, activation, chunk, dtype):
    """The dense backend (cuBLAS products over all N experts, half operands -> float32) against float64 on the same
    rounded inputs, float32 gates: the bounds the Triton backend's tests use (float32: TOL, 2·TOL for gradients;
    half precision: 2e-2 output, 4e-2 gradients)."""
    if chunk is not None:
        monkeypatch.setattr(dense, "DENSE_BUDGET", chunk * dense.token_bytes(N, dtype))
    tol, grad_tol = (TOL[dtype], 2 * TOL[dtype]) if dtype == torch.float32 else (2e-2, 4e-2)
    _check_mixture_against_float64("dense", tokens, H, k, N, d, activation, dtype, tol, grad_tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dense_weighted_rows_cuda(dtype):
    """The PKM read through the dense backend against float64: output, weight and table gradients."""
    gen = torch.Generator().manual_seed(3)
    T, M, N, d = 513, 64, 1024, 72
    weights = torch.rand(T, M, generator=gen)
    ids = torch.randint(0, N, (T, M), generator=gen)
    table = torch.randn(N, d, generator=gen).to(dtype).double()

    def fn(weights, table):
        backend = "torch" if table.device.type == "cpu" else "dense"
        return weighted_rows(weights, ids.to(table.device), table, backend=backend)

    ref, ref_g = _grads(fn, [_leaf(weights, torch.float64, "cpu"), _leaf(table, torch.float64, "cpu")])
    out, out_g = _grads(fn, [_leaf(weights, torch.float32, "cuda"), _leaf(table, dtype, "cuda")])
    tol = TOL[dtype] if dtype == torch.float32 else 2e-2
    assert out.dtype == dtype and rel_err(out.cpu(), ref) < tol
    for a, r in zip(out_g, ref_g):
        assert torch.isfinite(a).all() and rel_err(a.cpu(), r) < 2 * tol


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_dense_coefficients_cuda_rounded_once_and_deterministic(dtype):
    """The coefficient matrices on the GPU: the float64 sums of duplicate ids rounded once (values whose float32 sums
    are exact, so the comparison is exact), and a whole bf16 step of the mixture bit-identical when run twice."""
    gen = torch.Generator().manual_seed(6)
    c, M, N = 4099, 32, 24  # many duplicates per row
    ids = torch.randint(0, N, (c, M), generator=gen)
    w = torch.randint(-4095, 4096, (c, M), generator=gen).float() / 4096
    exact = torch.zeros(c, N, dtype=torch.float64).scatter_add_(1, ids, w.double())
    got = dense.dense_coefficients(w.cuda(), ids.cuda(), N, dtype)
    assert got.dtype == dtype and torch.equal(got.cpu(), exact.to(dtype))

    x, ids, gates, down, up = _mixture_case(1000, 8, 16, 64, 96, seed=7)

    def step():
        leaves = [_leaf(t, dtype, "cuda") for t in (x, down, up)] + [_leaf(gates, torch.float32, "cuda")]
        y = wm.ops.expert_mixture(leaves[0], ids.cuda(), leaves[3], leaves[1], leaves[2], backend="dense")
        return (y, *torch.autograd.grad(y.float().square().sum(), leaves))

    for a, b in zip(step(), step()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backward", [True, False], ids=["training", "forward_only"])
@pytest.mark.parametrize("N,H,k,dense_when_training", [
    (2304, 4, 8, True),      # cheems-base: N = 72·M, measured faster dense in training (DENSE_FACTOR)
    (1024, 8, 16, True),     # bench.cdmoe_target at N = 1024
    (2 ** 16, 8, 16, False),
])
def test_auto_picks_dense_for_few_experts_cuda(monkeypatch, N, H, k, dense_when_training, backward):
    """"auto" takes the dense mixture for few experts where a backward runs, never for a forward alone."""
    calls = []
    original = dense.expert_mixture
    monkeypatch.setattr(dense, "expert_mixture", lambda *args: calls.append(args) or original(*args))
    x, ids, gates, down, up = (t.cuda() for t in _mixture_case(64, H, k, N, 64, seed=0))
    down = down.bfloat16().requires_grad_(backward)
    y = wm.ops.expert_mixture(x.bfloat16(), ids, gates, down, up.bfloat16())
    assert bool(calls) == (dense_when_training and backward) and torch.isfinite(y).all()


def _top_scores(q64, k64, k):
    """The k largest of the N = n² exact float64 scores of every token and head (brute force on the GPU, in chunks
    of tokens of about 1 GiB: all scores at once are tokens·H·N values, 17 GB at N = 2^20) -> (tokens, H, k) on
    the CPU, memoized for the other tests of the case in this worker."""
    def compute():
        q, keys = q64.cuda(), k64.cuda()
        H, n = keys.shape[0], keys.shape[2]
        step = max(1, 2 ** 27 // (H * n * n))
        parts = []
        for start in range(0, q.shape[0], step):
            part = q[start:start + step]
            every = (torch.einsum("thd,had->tha", part[:, :, 0], keys[:, 0])[..., :, None]
                     + torch.einsum("thd,hbd->thb", part[:, :, 1], keys[:, 1])[..., None, :]).flatten(-2)
            parts.append(every.topk(k, dim=-1).values)
        return torch.cat(parts)

    return memoized(("product-key-top", k, fingerprint(q64, k64)), compute)


@pytest.mark.skipif(not _triton_available(), reason="needs triton")
@pytest.mark.parametrize("tokens,H,n,dk,k", grouped("product-key", [
    (1, 1, 4, 32, 1),          # N = 16, one token
    (1000, 8, 32, 32, 16),     # N = 1024, the target case's heads and k
    (333, 2, 7, 6, 5),         # odd square, dk below 16, k not a power of two
    (517, 4, 1024, 32, 16),    # N = 2^20, sub-keys over several chunks
    (64, 2, 64, 32, 32),       # the largest k of the fused kernel
    (4133, 4, 48, 32, 8),      # cheems-base's routing (N = 2304)
]))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("forward,backward", [("insertion", "reduced"), ("insertion", "atomic"),
                                              ("bitonic", "reduced")])
def test_product_key_triton_cuda(monkeypatch, tokens, H, n, dk, k, dtype, forward, backward):
    """The fused top-k kernel against brute force in float64 on the same (rounded) inputs: a correct top k
    (each id's exact score equals its score, none left out beats the k-th), and its gradients — with each forward
    (FORWARD) and each backward of small tables (SMALL_TABLE_BACKWARD; tables of more than SMALL_TABLE_KEYS
    sub-keys always take the atomic kernel)."""
    from wonderful_matrices.ops.product_key import topk_kernels

    if backward != "atomic" and topk_kernels._pad(n, 16) > topk_kernels.SMALL_TABLE_KEYS and forward == "insertion":
        pytest.skip("a large table always takes the atomic backward (its 'atomic' case runs it)")
    monkeypatch.setattr(topk_kernels, "FORWARD", forward)
    monkeypatch.setattr(topk_kernels, "SMALL_TABLE_BACKWARD", backward)
    gen = torch.Generator().manual_seed(tokens + n)
    query = torch.randn(tokens, H, 2, dk, generator=gen).to(dtype)
    sub_keys = (torch.randn(H, 2, n, dk, generator=gen) / dk ** 0.5).to(dtype)
    q64, k64 = query.double(), sub_keys.double()
    q, keys = _leaf(query, dtype, "cuda"), _leaf(sub_keys, dtype, "cuda")
    scores, ids = wm.ops.product_key_topk(q, keys, k, backend="triton")
    assert scores.dtype == torch.float32 and ids.dtype == torch.int64 and torch.isfinite(scores).all()
    ids_cpu = ids.cpu()
    assert ((ids_cpu >= 0) & (ids_cpu < n * n)).all() and (ids_cpu.sort(-1).values.diff(dim=-1) > 0).all()
    # the exact score of every returned id (the oracle scores the same experts: ties may pick others)
    q_ref, k_ref = q64.clone().requires_grad_(), k64.clone().requires_grad_()
    a, b = ids_cpu // n, ids_cpu % n
    heads = torch.arange(H)[:, None].expand_as(ids_cpu)
    direct = ((q_ref[:, :, 0, None, :] * k_ref[heads, 0, a]).sum(-1)
              + (q_ref[:, :, 1, None, :] * k_ref[heads, 1, b]).sum(-1))
    assert rel_err(scores.cpu(), direct.detach()) < 1e-5
    assert (scores[..., :-1] >= scores[..., 1:]).all()
    assert rel_err(scores.cpu(), _top_scores(q64, k64, k)) < 1e-5

    weight = torch.randn(scores.shape, generator=gen, dtype=torch.float64)
    (scores * weight.to("cuda", torch.float32)).sum().backward()
    (direct * weight).sum().backward()
    for name, got, ref in (("query", q.grad, q_ref.grad), ("sub_keys", keys.grad, k_ref.grad)):
        assert got.dtype == dtype and torch.isfinite(got).all(), name
        assert rel_err(got.cpu(), ref) < TOL.get(dtype, 2e-2), name


@pytest.mark.parametrize("backend", MIXTURE_BACKENDS)
def test_product_key_layers_bf16_train_step_cuda(backend):
    """CDMoE, PEER and PKM in bf16 on the GPU: forward and backward run and match the float32 CPU layer."""
    from wonderful_matrices.layers import PEER, PKM, CDMoE

    torch.manual_seed(0)
    for cls, kwargs in ((CDMoE, dict(hidden_size=64, intermediate_size=96, num_experts=256, num_heads=4, top_k=4,
                                     retrieval_dim=16, backend=backend)),
                        (PEER, dict(hidden_size=64, num_experts=256, num_heads=4, top_k=4, key_dim=16,
                                    backend=backend)),
                        (PKM, dict(hidden_size=64, num_experts=256, num_heads=4, top_k=4, key_dim=16,
                                   backend=backend))):
        cpu = cls(**dict(kwargs, backend="torch")).double()
        gpu = cls(**kwargs).to("cuda", torch.bfloat16)
        gpu.load_state_dict(cpu.state_dict())
        x = torch.randn(200, 64, dtype=torch.float64)
        y_ref = cpu(x)
        y = gpu(x.to("cuda", torch.bfloat16))
        y.float().square().sum().backward()
        assert torch.isfinite(y).all(), cls.__name__
        ids_gpu = gpu.route(gpu.query(x.to("cuda", torch.bfloat16)))[1].cpu() if cls is CDMoE else None
        if ids_gpu is not None:  # bf16 may pick another expert where two scores round together
            same = (ids_gpu == cpu.route(cpu.query(x))[1]).all(-1).all(-1)
            assert same.sum() >= 40  # of 200 tokens
            assert rel_err(y.cpu()[same], y_ref[same]) < 3e-2
        for (name, p), (_, q) in zip(gpu.named_parameters(), cpu.named_parameters()):
            assert p.grad is not None and torch.isfinite(p.grad).all(), (cls.__name__, name)


# hidden, inner, N, H, k, d_r, activation, bias, tokens: cheems-base's layer with one decoding row, three and the
# largest token block; odd sizes with biases; k = 17 (a padded register set of 32)
CDMOE_DECODE_CASES = [
    (768, 1024, 2304, 4, 8, 64, "silu", False, 1),
    (768, 1024, 2304, 4, 8, 64, "silu", False, 3),
    (768, 1024, 2304, 4, 8, 64, "silu", False, 16),
    (200, 300, 49, 3, 5, 10, "gelu", True, 2),
    (96, 80, 1024, 2, 17, 8, "relu", False, 4),
]


def _cdmoe_layer(d, inner, N, H, k, dr, activation, bias, dtype):
    from wonderful_matrices.layers import CDMoE

    torch.manual_seed(0)
    # backend "triton": the fused decoding step itself, whatever "auto" takes (AUTO_USES_DECODE_STEP)
    layer = CDMoE(d, inner, N, num_heads=H, top_k=k, retrieval_dim=dr, activation=activation, bias=bias,
                  backend="triton")
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05 * torch.randn_like(p))  # nonzero biases
    return layer.to("cuda", dtype).eval()


def _robust_tokens(layer64, tokens):
    """``tokens`` inputs (tokens, d) float64 whose top-k experts win by the widest margins in every head among 512
    random candidates, so that half-precision rounding of the queries cannot change the selection."""
    x = torch.randn(512, layer64.hidden_size, generator=torch.Generator().manual_seed(tokens), dtype=torch.float64)
    with torch.no_grad():
        half = torch.einsum("thcd,hcnd->thcn", layer64.query(x), layer64.keys)
    every = (half[:, :, 0, :, None] + half[:, :, 1, None, :]).flatten(-2)
    top = every.topk(layer64.top_k + 1, dim=-1).values
    margin = (top[..., -2] - top[..., -1]).amin(-1)
    return x[margin.topk(tokens).indices]


@pytest.mark.skipif(not _triton_available(), reason="needs triton")
@pytest.mark.parametrize("case", CDMOE_DECODE_CASES, ids=[str(c) for c in CDMOE_DECODE_CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cdmoe_decode_step_cuda(case, dtype):
    """The CDMoE layer's fused decoding step (ops/cdmoe: three Triton launches) against the layer's torch path in
    float64 on the same (rounded) weights and inputs, and against its own torch path in the same dtype."""
    *sizes, tokens = case
    layer = _cdmoe_layer(*sizes, dtype)
    oracle = copy.deepcopy(layer).to("cpu", torch.float64)
    oracle.backend = "torch"
    plain = copy.deepcopy(layer)
    plain.backend = "torch"
    x64 = _robust_tokens(oracle, tokens).to(dtype).double()
    x = x64.to("cuda", dtype)[:, None]  # (T, 1, d): T decoding rows
    with torch.no_grad():
        assert layer._fused_decode_tensors(x) is not None
        y, y_plain, y_ref = layer(x), plain(x), oracle(x64)[:, None]
    assert y.dtype == dtype and y.shape == x.shape and torch.isfinite(y).all()
    assert rel_err(y.cpu(), y_ref) < (1e-5 if dtype == torch.float32 else TOL.get(dtype, 2e-2))
    assert rel_err(y.cpu(), y_plain.cpu()) < TOL.get(dtype, 2e-2)


@pytest.mark.skipif(not _triton_available(), reason="needs triton")
def test_cdmoe_decode_step_graphed_cuda():
    """The fused step of cheems-base's CDMoE (bf16, 2 rows) runs without a host synchronisation, records in a CUDA
    graph and replays new inputs bit for bit as eager calls."""
    layer = _cdmoe_layer(768, 1024, 2304, 4, 8, 64, "silu", False, torch.bfloat16)
    static = torch.randn(2, 1, 768, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        assert layer._fused_decode_tensors(static) is not None
        layer(static)  # the autotuners run outside the graph
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            layer(static)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            layer(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = layer(static)
        for _ in range(3):
            new = torch.randn_like(static)
            static.copy_(new)
            graph.replay()
            assert torch.equal(out, layer(new))
