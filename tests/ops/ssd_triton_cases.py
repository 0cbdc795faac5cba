"""Cases for wm.ops.ssd(backend="triton"): the Triton kernels against the per-step recurrence (float64 oracle).

Not collected on its own (the name does not start with ``test_``): ``test_ssd_triton_op.py`` runs this file in
a child pytest with ``TRITON_INTERPRET=1`` (the interpreter must be chosen before triton is first imported).
Under the interpreter the kernels' internal buffers start NaN-poisoned, so an unwritten element fails a case.
Shapes are tiny: the interpreter executes every program in Python. Run directly with
``TRITON_INTERPRET=1 python -m pytest tests/ops/ssd_triton_cases.py``.
"""
import os

import pytest
import torch

from conftest import rel_err

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 (set before triton is imported)", allow_module_level=True)

from test_ssd_op import _forward_backward, _run_naive, make_inputs
from test_ssd_packed import _case_id as _packed_id
from test_ssd_packed import check_packed, packed_inputs, separate
from test_ssd_packed import forward_backward as packed_forward_backward

from wonderful_matrices.ops import ssd
from wonderful_matrices.ops.ssd.naive import ssd_naive


def _run(inputs, chunk, gy, gs):
    """The triton backend's output, final state and gradients of ``<y, gy> + <final, gs>``."""
    run = lambda **kw: ssd(**kw, chunk_size=chunk, return_final_state=True, backend="triton")  # noqa: E731
    return _forward_backward(run, inputs, gy, gs)


def _oracle(inputs, gy, gs):
    """The same from the float64 recurrence."""
    return _forward_backward(_run_naive, {k: (v.double() if v is not None else None) for k, v in inputs.items()},
                             gy, gs)


# (b, l, h, p, g, n, chunk, with_D, with_init): l = 1; chunk < 16 (run as 16); several chunks with a partial
# last one; two and four tiles per chunk (chunk 128, 256 > BLOCK_Q = 64); groups g > 1 and g = h; 16 heads per group
# (the backward programs split a group's heads in two, dB/dC summed across programs); odd p and n (masked tiles);
# p > P_BLOCK = 64 (chunk_state's programs split the head dim, db2 contracts over it in steps; the last one partial)
CASES = [
    (1, 1, 1, 1, 1, 1, 64, False, True),  # with no initial state, l = 1 has dA = 0 exactly
    (1, 21, 3, 2, 1, 6, 4, True, True),
    (2, 37, 4, 3, 2, 5, 16, True, True),
    (1, 150, 2, 3, 1, 4, 128, False, True),
    (2, 45, 6, 5, 3, 6, 32, True, False),
    (1, 40, 16, 2, 1, 3, 16, True, True),
    (1, 19, 3, 17, 3, 2, 16, False, False),
    (1, 300, 2, 3, 1, 4, 256, True, True),  # four tiles per chunk: ten tile pairs in the dcb kernel
    (1, 40, 2, 70, 1, 8, 32, True, True),
]


def _case_id(case):
    b, l, h, p, g, n, chunk, with_D, with_init = case
    return f"b{b}l{l}h{h}p{p}g{g}n{n}q{chunk}{'D' if with_D else ''}{'S' if with_init else ''}"


# the dcb kernel's tile (DCB_TILE): 64 everywhere, and 32 where the kernels' chunk is over 32 (below, both settings
# give 32-row tiles or fewer: the same launches)
DCB_CASES = ([(case, 64) for case in CASES]
             + [(case, 32) for case in CASES if max(16, min(case[6], 1 << (case[1] - 1).bit_length())) > 32])


@pytest.fixture
def dcb_tile(request, monkeypatch):
    """Sets ``chunked_kernels.DCB_TILE`` to the test's parameter."""
    from wonderful_matrices.ops.ssd import chunked_kernels as kernels

    monkeypatch.setattr(kernels, "DCB_TILE", request.param)
    return request.param


@pytest.mark.parametrize("case, dcb_tile", DCB_CASES, ids=[f"{_case_id(c)}-dcb{t}" for c, t in DCB_CASES],
                         indirect=["dcb_tile"])
def test_triton_float32_matches_naive_forward_and_all_gradients(case, dcb_tile):
    b, l, h, p, g, n, chunk, with_D, with_init = case
    ref = make_inputs(b, l, h, p, g, n, with_D, with_init)
    gy = torch.randn(b, l, h, p, dtype=torch.float64)
    gs = torch.randn(b, h, p, n, dtype=torch.float64)
    y_ref, s_ref, g_ref = _oracle(ref, gy, gs)
    y, s, grads = _run({k: (v.float() if v is not None else None) for k, v in ref.items()}, chunk, gy, gs)
    assert y.dtype == torch.float32 and s.dtype == torch.float32
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(s, s_ref) < 1e-5
    assert set(grads) == set(g_ref)
    for name in g_ref:
        assert grads[name].dtype == torch.float32, name
        assert rel_err(grads[name], g_ref[name]) < 2e-5, name


@pytest.mark.parametrize("dcb_tile", [64, 32], indirect=True, ids=["dcb64", "dcb32"])
def test_triton_backward_with_split_heads(monkeypatch, dcb_tile):
    """A group's heads split over programs (partial dCB / dB / dC sums across programs), dC split by state
    columns, two tiles per chunk (four dcb tiles at DCB_TILE = 32)."""
    from wonderful_matrices.ops.ssd import chunked_kernels as kernels

    monkeypatch.setattr(kernels, "DCB_HEADS_PER_PROGRAM", 2)  # 3 dcb splits, 2 dc2 / db2 splits
    monkeypatch.setattr(kernels, "BC_HEADS_PER_PROGRAM", 3)
    monkeypatch.setattr(kernels, "DC2_COLUMNS", 16)  # n = 40: three column blocks, the last one partial
    ref = make_inputs(1, 90, 6, 3, 1, 40, True, True)
    gy = torch.randn(1, 90, 6, 3, dtype=torch.float64)
    gs = torch.randn(1, 6, 3, 40, dtype=torch.float64)
    y_ref, s_ref, g_ref = _oracle(ref, gy, gs)
    y, s, grads = _run({k: v.float() for k, v in ref.items()}, 128, gy, gs)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(s, s_ref) < 1e-5
    assert set(grads) == set(g_ref)
    for name in g_ref:
        assert rel_err(grads[name], g_ref[name]) < 2e-5, name


@pytest.mark.parametrize("p", [16, 70])  # 70: two head-dim blocks (see CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_half_precision_forward_and_gradients(dtype, p):
    _check_half(dtype, 2, 40, 4, p, 2, 16, 16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dcb_tile", [32], indirect=True, ids=["dcb32"])
def test_triton_half_precision_with_32_row_dcb_tiles(dtype, dcb_tile):
    _check_half(dtype, 1, 150, 2, 16, 1, 16, 128)  # chunk 128: two 64-row tiles, four dcb tiles


def _check_half(dtype, b, l, h, p, g, n, chunk):
    """Forward and every gradient with x, B, C in ``dtype`` against the float64 oracle on the same rounded values."""
    ref = {k: (v.to(dtype).double() if k in ("x", "B", "C") else v) for k, v in
           make_inputs(b, l, h, p, g, n, True, True).items()}  # x, B, C exactly representable in half
    gy = torch.randn(b, l, h, p, dtype=torch.float64)
    gs = torch.randn(b, h, p, n, dtype=torch.float64)
    y_ref, s_ref, g_ref = _oracle(ref, gy, gs)
    inputs = {k: (v.to(dtype) if k in ("x", "B", "C") else v.float()) for k, v in ref.items()}
    y, s, grads = _run(inputs, chunk, gy, gs)
    assert y.dtype == dtype and s.dtype == torch.float32
    assert rel_err(y, y_ref) < 1e-2
    assert rel_err(s, s_ref) < 1e-2
    for name in g_ref:
        assert grads[name].dtype == inputs[name].dtype, name
        assert rel_err(grads[name], g_ref[name]) < 2e-2, name


def test_triton_gradient_of_output_only_and_of_final_state_only():
    ref = make_inputs(1, 30, 2, 3, 1, 4, True, True)
    inputs = {k: v.float() for k, v in ref.items()}
    gy = torch.randn(1, 30, 2, 3, dtype=torch.float64)
    gs = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    for a, b in ((gy, None), (None, gs)):
        _, _, g_ref = _oracle(ref, a, b)
        _, _, grads = _run(inputs, 16, a, b)
        assert set(grads) == set(inputs)
        for name in inputs:
            if g_ref.get(name) is not None:
                assert rel_err(grads[name], g_ref[name]) < 2e-5, name
            else:  # C and D do not reach the final state: the oracle leaves their gradients out
                assert name in ("C", "D") and b is not None and grads[name].abs().max() < 1e-6, name


def test_triton_strided_inputs_and_return_y_only():
    ref = make_inputs(2, 25, 4, 3, 2, 5, True, False)
    base = torch.randn(2, 4, 25, 6, dtype=torch.float64)  # x as a non-contiguous view (b, l, h, p)
    ref["x"] = base.permute(0, 2, 1, 3)[..., :3]
    ref["B"] = torch.randn(2, 5, 25, 2, dtype=torch.float64).permute(0, 2, 3, 1)
    inputs = {k: (v.float() if v is not None else None) for k, v in ref.items()}
    assert not inputs["x"].is_contiguous() and not inputs["B"].is_contiguous()
    y = ssd(**inputs, chunk_size=16, backend="triton")
    assert rel_err(y, ssd_naive(**ref)) < 1e-5


@pytest.mark.parametrize("dcb_tile", [64, 32], indirect=True, ids=["dcb64", "dcb32"])
def test_triton_large_decays_stay_finite(dcb_tile):
    ref = make_inputs(1, 64, 2, 3, 1, 4, True, True, dt_scale=50.0)
    ref["A"] = torch.tensor([-5.0, -0.01], dtype=torch.float64)
    gy = torch.randn(1, 64, 2, 3, dtype=torch.float64)
    gs = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    y_ref, s_ref, g_ref = _oracle(ref, gy, gs)
    y, s, grads = _run({k: v.float() for k, v in ref.items()}, 64, gy, gs)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    assert rel_err(y, y_ref) < 1e-5 and rel_err(s, s_ref) < 1e-5
    for name in g_ref:
        assert torch.isfinite(grads[name]).all(), name
        assert rel_err(grads[name], g_ref[name]) < 1e-4, name


@pytest.mark.parametrize("dcb_tile", [48], indirect=True, ids=["dcb48"])
def test_triton_rejects_a_dcb_tile_other_than_32_or_64(dcb_tile):
    inputs = {k: (v.float() if v is not None else None) for k, v in make_inputs(1, 5, 2, 3, 1, 4, False, False).items()}
    with pytest.raises(ValueError, match="^DCB_TILE=48.*32 or 64"):
        ssd(**inputs, backend="triton")


def test_triton_rejects_float64():
    inputs = make_inputs(1, 5, 2, 3, 1, 4, False, False)
    with pytest.raises(ValueError, match="^x.dtype="):
        ssd(**inputs, backend="triton")
    assert rel_err(ssd(**inputs), ssd_naive(**inputs)) < 1e-11  # "auto" on float64 stays on torch


# packed documents (seq_idx), same layout as test_ssd_packed.PACKED_CASES; the kernels' chunk is at least 16:
# document starts at a chunk edge (16, 32), at a chunk's last step (15), inside chunks, documents of length 1,
# a chunk holding several documents, two tiles per chunk (chunk 128), a one-document row next to a packed row
PACKED = [
    (2, 3, 1, 4, 16, True, True, [[16, 16, 5], [3, 1, 1, 32]]),
    (4, 2, 2, 3, 16, False, True, [[15, 1, 17, 4], [1, 6, 2, 9, 1, 18]]),
    (2, 3, 2, 5, 32, True, False, [[31, 1, 1, 40]]),
    (2, 2, 1, 3, 128, True, True, [[64, 1, 70, 15], [150]]),
    (2, 70, 1, 4, 16, True, True, [[5, 20, 15]]),  # p > 64: two head-dim blocks
    (1, 1, 1, 1, 64, True, True, [[1]]),
]


@pytest.mark.parametrize("case", PACKED, ids=_packed_id)
def test_triton_packed_equals_documents_alone(case):
    check_packed("triton", case)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_packed_half_precision(dtype):
    check_packed("triton", (4, 16, 2, 16, 16, True, True, [[5, 16, 11, 1, 7], [40]]), dtype=dtype, tol=1e-2)


def _doc_bounds_reference(seq_idx, q):
    """(b, nc, 2, q) chunk-local document starts (−1: begun before the chunk, or the row's first document, which
    takes the initial state) and ends (q − 1: reaches the chunk's last step), steps past the end counted in the
    row's last document, from a loop over the steps."""
    b, l = seq_idx.shape
    nc = -(-l // q)
    ids = torch.cat([seq_idx, seq_idx[:, -1:].expand(b, nc * q - l)], dim=1).tolist()
    out = torch.empty(b, nc, 2, q, dtype=torch.int32)
    for r in range(b):
        for c in range(nc):
            for k in range(q):
                t, doc = c * q + k, ids[r][c * q + k]
                first = t
                while first > 0 and ids[r][first - 1] == doc:
                    first -= 1
                last = t
                while last + 1 < nc * q and ids[r][last + 1] == doc:
                    last += 1
                out[r, c, 0, k] = first - c * q if first >= c * q and first > 0 else -1
                out[r, c, 1, k] = min(last - c * q, q - 1)
    return out


@pytest.mark.parametrize("rows, q", [([[16, 1, 31, 16, 1]], 16), ([[3, 1, 1, 32], [37]], 16), ([[1] * 20], 16),
                                     ([[70, 1, 9]], 32)])
def test_doc_bounds_kernel_matches_the_definition(rows, q):
    from wonderful_matrices.ops.ssd import chunked_kernels as K

    seq_idx = torch.stack([torch.repeat_interleave(torch.arange(len(r)) * 3 + 1, torch.tensor(r)) for r in rows])
    b, l = seq_idx.shape
    nc = -(-l // q)
    docs = torch.full((b, nc, 2, q), -7, dtype=torch.int32)  # -7 is no valid bound: an unwritten entry fails
    K._doc_bounds_kernel[(b * nc,)](seq_idx, docs, l, nc, *seq_idx.stride(), Q=q)
    assert torch.equal(docs, _doc_bounds_reference(seq_idx, q))


# chunks of several tiles (16-row tiles, chunk 64): starts at a tile edge (16, 48), at a chunk edge (64), inside a
# tile (17, 214, 215, 220), documents of length 1, a 150-step document holding a chunk without any start (128..191)
# and reaching into the last, partial chunk; a one-document row beside it (with h, p = 2, 3 this draw leaves dA
# ill-conditioned in float32: the torch backend misses it by 1.4e-4 too)
PACKED_TILED = [
    (3, 4, 1, 4, 64, True, True, [[16, 1, 31, 16, 150, 1, 5, 30], [250]]),
    (2, 2, 2, 3, 64, False, False, [[64, 1, 62, 1, 20]]),
]


@pytest.mark.parametrize("case", PACKED_TILED, ids=_packed_id)
def test_triton_packed_with_several_tiles_a_chunk(case, monkeypatch):
    from wonderful_matrices.ops.ssd import chunked_kernels as K

    monkeypatch.setattr(K, "BLOCK_Q", 16)
    check_packed("triton", case)


@pytest.mark.parametrize("case", [PACKED[3]] + PACKED_TILED, ids=_packed_id)
@pytest.mark.parametrize("dcb_tile", [32], indirect=True, ids=["dcb32"])
def test_triton_packed_with_32_row_dcb_tiles(case, dcb_tile):
    """DCB_TILE = 32 under 64-row tiles (chunks 128 and 64): document starts inside 32-row tiles (steps 16, 17 and 48
    of a chunk; 7 in the first case's second chunk) and at a chunk's first and last step (64, 127)."""
    check_packed("triton", case)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_silu_activation_keeps_the_pre_activation(backend):
    """``x_activation="silu"`` equals SSD of ``silu(x)`` (output, final state, every gradient, float64 oracle); the
    Triton backend keeps the pre-activation ``x`` for its backward, never ``silu(x)``."""
    inputs = make_inputs(2, 37, 4, 3, 2, 5, True, True, dtype=torch.float32)
    gen = torch.Generator().manual_seed(3)
    gy, gs = torch.randn(2, 37, 4, 3, generator=gen), torch.randn(2, 4, 3, 5, generator=gen)
    saved = []

    def run(**kw):
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            return ssd(**kw, chunk_size=16, return_final_state=True, backend=backend, x_activation="silu")

    def oracle(x, **kw):
        return _run_naive(x=torch.nn.functional.silu(x), **kw)

    y, final, grads = _forward_backward(run, inputs, gy, gs)
    ry, rfinal, rgrads = _forward_backward(oracle, {k: (v.double() if v is not None else None)
                                                    for k, v in inputs.items()}, gy, gs)
    assert rel_err(y, ry) < 1e-5 and rel_err(final, rfinal) < 1e-5
    for name, grad in grads.items():
        assert rel_err(grad, rgrads[name]) < 1e-4, name
    if backend == "triton":
        activated = torch.nn.functional.silu(inputs["x"])
        same_shape = [t for t in saved if t.shape == activated.shape]
        assert same_shape and not any(torch.equal(t, activated) for t in same_shape)
        assert any(torch.equal(t, inputs["x"]) for t in same_shape)
    with pytest.raises(ValueError, match="x_activation"):
        ssd(**inputs, backend=backend, x_activation="gelu")


def compiled_backward_graph(**options) -> torch.fx.GraphModule:
    """The backward graph AOTAutograd traces (what ``torch.compile`` hands Inductor) for the sum of
    ``ssd(..., backend="triton", **options)``'s output, on small float32 inputs."""
    from torch._functorch.aot_autograd import aot_module_simplified

    graphs = []

    def capture(gm, _):
        graphs.append(gm)
        return gm

    def backend(gm, example_inputs):
        return aot_module_simplified(gm, example_inputs, fw_compiler=lambda g, _: g, bw_compiler=capture)

    inputs = make_inputs(1, 32, 2, 4, 1, 4, True, True, dtype=torch.float32)
    inputs["x"].requires_grad_()
    torch._dynamo.reset()
    run = torch.compile(lambda **kw: ssd(**kw, chunk_size=16, backend="triton", **options), backend=backend,
                        fullgraph=True)
    out = run(**inputs)
    (out[0].sum() + out[1].sum() if isinstance(out, tuple) else out.sum()).backward()
    return graphs[-1]


def test_silu_derivative_is_a_graph_node_outside_the_operator():
    """Under ``torch.compile`` the backward graph applies SiLU's derivative to the ``ssd_backward`` operator's ``dx``
    as an ``aten.silu_backward`` node of its own, which Inductor fuses into the kernel that reads ``dx`` (the layer's
    in_proj gradient), rather than inside the opaque operator as a pass of its own."""
    nodes = list(compiled_backward_graph(x_activation="silu").graph.nodes)
    backward_op = next(n for n in nodes if n.target == torch.ops.wonderful_matrices.ssd_backward.default)
    derivative = [n for n in nodes if n.target == torch.ops.aten.silu_backward.default]
    assert len(derivative) == 1 and derivative[0].args[0].args[0] is backward_op  # getitem(op, 0): the op's dx


@pytest.mark.parametrize("final_state", [False, True])
def test_final_state_gradient_only_when_the_state_is_returned(final_state):
    """Without ``return_final_state`` the compiled backward passes no final-state gradient (None) to the operator,
    not a zero tensor it would read; with it, the gradient it gets."""
    nodes = list(compiled_backward_graph(return_final_state=final_state).graph.nodes)
    backward_op = next(n for n in nodes if n.target == torch.ops.wonderful_matrices.ssd_backward.default)
    assert (backward_op.args[1] is None) != final_state


def test_silu_is_a_forward_graph_node_whose_output_is_not_kept():
    """Under ``torch.compile`` the forward graph computes ``silu(x)`` as an ``aten.silu`` node feeding the
    ``ssd_forward`` operator (Inductor fuses it into the kernel that produces ``x``), and does not keep its output
    for the backward, which recomputes it from ``x``."""
    from conftest import kept_for_backward

    inputs = make_inputs(1, 32, 2, 4, 1, 4, True, True, dtype=torch.float32)
    graphs = []
    kept = kept_for_backward(lambda x: ssd(**{**inputs, "x": x}, chunk_size=16, backend="triton",
                                           x_activation="silu").sum(), inputs["x"].clone().requires_grad_(),
                             graphs=graphs)
    activations = [n for n in graphs[0].graph.nodes if n.target == torch.ops.aten.silu.default]
    assert len(activations) == 1
    assert [u.target for u in activations[0].users] == [torch.ops.wonderful_matrices.ssd_forward.default]
    assert not any(k is activations[0] for k in kept)


def test_silu_activation_packed():
    """``x_activation="silu"`` with packed documents (chunk 16, documents starting inside and at chunks) on the
    Triton kernels (the activation and its gradient applied inside the operator): output, final state and every
    gradient against the documents run alone on ``silu(x)`` in float64."""
    case = (4, 3, 2, 6, 16, True, True, [[5, 16, 19], [1, 31, 8]])
    inputs, seq_idx, rows = packed_inputs(case)
    gen = torch.Generator().manual_seed(5)
    gy = torch.randn(*inputs["x"].shape, generator=gen, dtype=torch.float64)
    gs = torch.randn(*inputs["initial_state"].shape, generator=gen, dtype=torch.float64)
    ry, rs, rgrads = packed_forward_backward(
        lambda x, **kw: separate(rows, torch.nn.functional.silu(x), **kw), inputs, gy, gs)
    run = lambda **kw: ssd(**kw, chunk_size=16, return_final_state=True, seq_idx=seq_idx,  # noqa: E731
                           backend="triton", x_activation="silu")
    y, fs, grads = packed_forward_backward(run, {k: v.float() for k, v in inputs.items()}, gy, gs)
    assert rel_err(y, ry) < 1e-5 and rel_err(fs, rs) < 1e-5
    for name, grad in rgrads.items():
        assert rel_err(grads[name], grad) < (1e-4 if name == "A" else 2e-5), name
