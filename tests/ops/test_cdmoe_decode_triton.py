"""The CDMoE decoding step in three Triton launches (ops/cdmoe, used by the ``CDMoE`` layer for a few tokens without
autograd) against the layer's torch path in float64 (its oracle), on the CPU under TRITON_INTERPRET=1 (float32).
Compiled CUDA cases (float32/bf16/fp16) are in test_experts_cuda.py, the sm_90 compilation in
test_cdmoe_decode_compile.py.

``test_interpreted_in_a_subprocess`` reruns this file in a child process with ``TRITON_INTERPRET=1``; the
interpreted tests run there.
"""
import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import wonderful_matrices as wm
from conftest import INTERPRETED, interpreted_only, interpreter_child_test, rel_err
from wonderful_matrices.layers import CDMoE
from wonderful_matrices.ops.cdmoe import MAX_DECODE_TOKENS, decode_step

pytest.importorskip("triton")

test_interpreted_in_a_subprocess = interpreter_child_test(__file__)

# hidden, inner, N, H, k, retrieval_dim, activation, bias, leading dims of the input: one token; odd sizes
# everywhere (d_r/2 = 5); √N = 20 sub-keys (more than one sub-key block of 16) with d_r/2 = 3 and several
# channel blocks; cheems-tiny's shape; the full 16-token block with k = √N; k = 17 (a padded register set of 32);
# √N = 100 (seven sub-key blocks, later ones rarely entering the kept set)
CASES = [
    (12, 20, 36, 2, 3, 8, "silu", False, (1,)),
    (37, 45, 49, 3, 5, 10, "gelu", True, (3, 1)),
    (40, 24, 400, 1, 7, 6, "silu", True, (2, 1)),
    (64, 128, 64, 2, 4, 16, "relu", False, (4, 1)),
    (24, 33, 25, 3, 5, 4, "silu", False, (2, 8)),
    (20, 17, 1024, 2, 17, 8, "gelu", False, (1, 1)),
    (16, 8, 10000, 1, 3, 4, "silu", False, (2, 1)),
]


def _layers(d, inner, n, H, k, dr, activation, bias):
    """(fused float32 layer, float32 torch-path layer, float64 torch-path layer) with the same random weights."""
    ref = CDMoE(d, inner, n, num_heads=H, top_k=k, retrieval_dim=dr, activation=activation, bias=bias,
                backend="torch").eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))  # nonzero biases
    fused = copy.deepcopy(ref)
    fused.backend = "triton"
    return fused, ref, copy.deepcopy(ref).double()


@interpreted_only
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_fused_layer_matches_the_torch_path(case):
    *sizes, lead = case
    fused, ref, oracle = _layers(*sizes)
    x = torch.randn(*lead, sizes[0])
    with torch.no_grad():
        assert fused._fused_decode_tensors(x) is not None
        y = fused(x)
        y_ref, y_oracle = ref(x), oracle(x.double())
    assert y.shape == x.shape and y.dtype == torch.float32 and torch.isfinite(y).all()
    assert rel_err(y, y_oracle) < 1e-5
    assert rel_err(y, y_ref) < 1e-5
    assert fused.aux_loss is None


@interpreted_only
def test_fused_layer_with_peaked_gates():
    """Large query weights: gates near one-hot (the softmax's max subtraction), large pre-activations."""
    fused, _, oracle = _layers(16, 24, 81, 3, 4, 6, "silu", False)
    with torch.no_grad():
        for layer in (fused, oracle):
            layer.queries.weight.mul_(20.0)
            layer.down_embed.weight.mul_(8.0)
    x = torch.randn(3, 1, 16)
    with torch.no_grad():
        assert rel_err(fused(x), oracle(x.double())) < 1e-5


@interpreted_only
def test_decoding_is_three_launches_and_nothing_else(monkeypatch):
    """The layer's fused call is three Triton launches; besides them only allocations (and views) reach ATen."""
    from triton.runtime import interpreter

    launches, ops = [], []
    call = interpreter.GridExecutor.__call__

    def counted(self, *args, **kwargs):
        launches.append(self.fn.__name__)
        counting.paused = True
        try:
            return call(self, *args, **kwargs)
        finally:
            counting.paused = False

    class Ops(TorchDispatchMode):
        paused = False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not self.paused and not func.is_view:
                ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    counting = Ops()
    monkeypatch.setattr(interpreter.GridExecutor, "__call__", counted)
    fused, _, _ = _layers(32, 48, 64, 2, 4, 8, "silu", True)
    x = torch.randn(2, 1, 32)
    with torch.no_grad():
        fused(x)  # the autotuner's first call
        launches.clear()
        with counting:
            fused(x)
    assert launches == ["_project_kernel", "_route_mix_kernel", "_down_kernel"]
    assert set(ops) <= {"full", "empty"}, ops  # poisoned outputs (empty on a GPU)


@interpreted_only
def test_the_torch_path_where_the_fused_step_does_not_apply():
    fused, ref, _ = _layers(12, 20, 36, 2, 3, 8, "silu", False)
    many = torch.randn(MAX_DECODE_TOKENS + 1, 12)
    few = torch.randn(2, 1, 12)
    with torch.no_grad():
        assert fused._fused_decode_tensors(many) is None  # more tokens than one block
        assert rel_err(fused(many), ref(many)) < 1e-5
    assert fused._fused_decode_tensors(few) is None  # autograd: the torch path, differentiable
    leaf = few.clone().requires_grad_()
    fused(leaf).sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    for backend in ("torch", "dense"):
        other = copy.deepcopy(fused)
        other.backend = backend
        with torch.no_grad():
            assert other._fused_decode_tensors(few) is None
    trained = CDMoE(12, 20, 36, num_heads=2, top_k=3, retrieval_dim=8, balance_loss_weight=0.1, backend="triton")
    with torch.no_grad():
        assert trained._fused_decode_tensors(few) is None  # training mode with a balance loss: the loss is computed
        trained(few)
        assert trained.aux_loss is not None
        trained.eval()
        assert trained._fused_decode_tensors(few) is not None
    mixed = copy.deepcopy(fused)
    mixed.keys.data = mixed.keys.data.double()
    with torch.no_grad():
        assert mixed._fused_decode_tensors(few) is None  # parameters in another dtype than the input
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert fused._fused_decode_tensors(few) is None


@interpreted_only
def test_greedy_tokens_of_cheems_tiny_unchanged():
    """A left-padded batch (the CUDA test of every tiny preset is in test_models_cuda.py)."""
    torch.manual_seed(0)
    fused = wm.CheemsForCausalLM(wm.presets.get("cheems-tiny", cdmoe_backend="triton", ssd_backend="torch",
                                                dma_decode_backend="torch")).eval()
    plain = wm.CheemsForCausalLM(wm.presets.get("cheems-tiny", cdmoe_backend="torch", ssd_backend="torch",
                                                dma_decode_backend="torch")).eval()
    plain.load_state_dict(fused.state_dict())
    ids = torch.randint(1, fused.config.vocab_size, (2, 4))
    mask = torch.ones_like(ids)
    mask[1, :1] = 0
    kw = dict(attention_mask=mask, max_new_tokens=3, pad_token_id=0, do_sample=False)
    with torch.no_grad():
        assert torch.equal(fused.generate(ids, **kw), plain.generate(ids, **kw))


@pytest.mark.skipif(INTERPRETED, reason="the CPU without the interpreter")
def test_arguments_checked():
    d, inner, H, n, dk = 8, 6, 2, 4, 3
    args = dict(x=torch.randn(2, d), gate_w=torch.randn(inner, d), up_w=torch.randn(inner, d),
                down_w=torch.randn(d, inner), query_w=torch.randn(H * 2 * dk, d), keys=torch.randn(H, 2, n, dk),
                down_table=torch.randn(n * n, d), up_table=torch.randn(n * n, d), top_k=2)
    bad = [
        (dict(x=torch.randn(MAX_DECODE_TOKENS + 1, d)), "x.shape"),
        (dict(x=torch.randn(2, d).double()), "x.dtype"),
        (dict(down_w=torch.randn(inner, d)), "down_w.shape"),
        (dict(query_w=torch.randn(H * dk, d)), "query_w.shape"),
        (dict(up_table=torch.randn(n * n, d).half()), "up_table.dtype"),
        (dict(top_k=n + 1), "top_k"),
        (dict(gate_b=torch.randn(inner)), "biases"),
        (dict(activation="tanh"), "activation"),
        ({}, "x.device"),  # no CUDA, no interpreter here
    ]
    for change, name in bad:
        with pytest.raises(ValueError, match=name):
            decode_step(**{**args, **change})
    layer = CDMoE(d, inner, n * n, num_heads=H, top_k=2, retrieval_dim=2 * dk, backend="triton").eval()
    with torch.no_grad(), pytest.raises(ValueError, match="backend"):
        layer(torch.randn(1, 1, d))
