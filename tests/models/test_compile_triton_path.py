"""``torch.compile`` of a training step on the GPU's path: every op that has a Triton backend takes it (the Triton
RMSNorm and gated RMSNorm, SSD, DMA windowed attention and selection, product-key top-k, expert mixture), here on the
CPU under TRITON_INTERPRET=1. Their launches are custom ops while Dynamo traces
(``ops.triton_utils.opaque_to_compile``), so the forward is one graph, and the compiled step (its fake shapes and
dtypes included) computes what the eager one does.

As in test_dma_triton.py, ``test_interpreted_in_a_subprocess`` reruns this file with the interpreter on.
"""
import sys

import pytest
import torch
from test_compile import _step

from conftest import interpreted_only, interpreter_child_test, rel_err
from wonderful_matrices.bench.lm_common import lm_loss
from wonderful_matrices.models import CheemsForCausalLM, presets
from wonderful_matrices.ops import common

pytest.importorskip("triton")

# about a minute on two CPU cores (the interpreter runs every kernel of the eager and the compiled step)
test_interpreted_in_a_subprocess = pytest.mark.slow(interpreter_child_test(__file__))


@pytest.fixture
def triton_everywhere(monkeypatch):
    """``backend="auto"`` picks Triton wherever an op has it, as on a GPU (in every op module the model imported)."""
    original = common.resolve_backend

    def prefer_triton(backend, available, device, auto_order):
        if backend == "auto" and "triton" in tuple(available) and "triton" in tuple(auto_order):
            return "triton"
        return original(backend, available, device, auto_order)

    for name, module in list(sys.modules.items()):
        if name.startswith("wonderful_matrices.ops") and getattr(module, "resolve_backend", None) is original:
            monkeypatch.setattr(module, "resolve_backend", prefer_triton)


@interpreted_only
def test_triton_path_compiles_to_one_graph_and_equals_eager(triton_everywhere):
    """cheems-tiny has every one of them (SSD layers with the gated norm, DMA layers with keep_window 8 < 20 tokens:
    the windowed kernels, CDMoE layers). fullgraph=True raises on a graph break."""
    torch.manual_seed(0)
    config = presets.get("cheems-tiny", use_cache=False, ssd_backend="triton", cdmoe_backend="triton")
    model = CheemsForCausalLM(config).train()
    rows = torch.randint(0, model.config.vocab_size, (1, 21))
    loss, grads = _step(model, rows)
    torch._dynamo.reset()
    compiled = torch.compile(lm_loss, dynamic=False, backend="aot_eager", fullgraph=True)
    c_loss, c_grads = _step(model, rows, compiled)
    assert rel_err(c_loss, loss) < 1e-6
    assert c_grads.keys() == grads.keys()
    for name, grad in grads.items():  # the same kernels on the same inputs: equal up to the order of additions
        assert not torch.isnan(c_grads[name]).any() and rel_err(c_grads[name], grad) < 1e-5, name
