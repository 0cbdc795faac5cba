"""``torch.compile`` of a training step (the CPU paths): no graph breaks in the blocks, and the compiled step computes
what the eager one does.

The gradient checks compile with the ``aot_eager`` backend (Dynamo's graph and AOTAutograd's joint forward/backward,
run by ATen): that is where graph breaks and tracing mistakes live, and it compiles in seconds; Inductor's code
generation on the CPU takes minutes per model (the ``slow`` test runs it for llama-tiny). The GPU path (Triton
kernels as custom ops while tracing) is checked under the interpreter in test_compile_triton_path.py.
"""
import copy

import pytest
import torch

from conftest import rel_err
from wonderful_matrices.bench.lm_common import lm_loss
from wonderful_matrices.models import CheemsForCausalLM, presets
from wonderful_matrices.ops.common import trusted_values

# Graph breaks of a training forward (lm_loss) per tiny preset on the CPU, at most; each remaining one is listed.
# jamba: MoE._segment_loop runs eagerly (torch.compiler.disable): it reads the per-expert segment sizes on the host,
# where the grouped GEMM is not usable (CPU, float32, pre-Hopper GPUs; a bf16 Hopper GPU takes the grouped GEMM,
# which reads none). One call per MoE layer (2), which torch 2.13's explain counts as 11 breaks (its frames).
MAX_GRAPH_BREAKS = {"cheems": 0, "llama": 0, "mamba2": 0, "doge": 0, "jamba": 11}


def _model(family: str, dtype=torch.float32) -> CheemsForCausalLM:
    torch.manual_seed(0)
    return CheemsForCausalLM(presets.get(f"{family}-tiny", use_cache=False)).to(dtype).train()


def _step(model, rows, loss_fn=lm_loss):
    """Loss and every parameter's gradient of one training forward + backward."""
    model.zero_grad(set_to_none=True)
    with trusted_values():
        loss = loss_fn(model, rows, None)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _compiled(backend: str):
    torch._dynamo.reset()
    return torch.compile(lm_loss, dynamic=False, backend=backend, fullgraph=True)


def _flat(grads: dict) -> torch.Tensor:
    return torch.cat([g.double().flatten() for _, g in sorted(grads.items())])


@pytest.mark.parametrize("family", ["cheems", "llama"])
def test_compiled_step_equals_eager(family):
    """fullgraph=True: the whole forward is one graph (a break would raise). In float64 the compiled step equals the
    eager one to rounding (per parameter); in float32 both the loss and the gradient match the float64 eager step as
    closely as float32 allows."""
    model = _model(family)
    rows = torch.randint(0, model.config.vocab_size, (2, 23))  # 22 tokens: odd, not a multiple of any chunk
    model64 = copy.deepcopy(model).double()
    loss64, grads64 = _step(model64, rows)
    c_loss64, c_grads64 = _step(model64, rows, _compiled("aot_eager"))
    assert rel_err(c_loss64, loss64) < 1e-12
    assert grads64.keys() == c_grads64.keys() and len(grads64) == len(list(model.parameters()))
    for name, grad in grads64.items():
        assert rel_err(c_grads64[name], grad) < 1e-10, name

    loss32, grads32 = _step(model, rows, _compiled("aot_eager"))
    assert loss32.dtype == torch.float32 and rel_err(loss32, loss64) < 1e-6
    assert not any(torch.isnan(g).any() for g in grads32.values())
    assert rel_err(_flat(grads32), _flat(grads64)) < 1e-5


@pytest.mark.parametrize("family", list(MAX_GRAPH_BREAKS))
def test_graph_breaks_of_the_training_forward(family):
    model = _model(family)
    rows = torch.randint(0, model.config.vocab_size, (2, 17))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda r: lm_loss(model, r))(rows)
    assert explained.graph_break_count <= MAX_GRAPH_BREAKS[family], [b.reason for b in explained.break_reasons]
    for reason in explained.break_reasons:  # the only ones left: the call of the MoE's eager segment loop
        assert "MoE._segment_loop" in reason.reason and reason.user_stack[-1].name == "_grouped", reason.reason


def test_new_routing_compiles_nothing_new():
    """jamba's segment sizes (data) stay out of the graphs: another batch, another routing, reuses them."""
    from torch._dynamo.utils import counters

    model = _model("jamba")
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(lm_loss, dynamic=False, backend="eager")
    for seed in range(3):
        rows = torch.randint(0, model.config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(seed))
        with trusted_values():
            compiled(model, rows, None).backward()
        if seed == 0:
            graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0 and counters["stats"]["unique_graphs"] == graphs


@pytest.mark.slow
def test_inductor_step_equals_eager_llama():
    """The default backend (Inductor's generated code), float32 against the float64 eager step."""
    model = _model("llama")
    rows = torch.randint(0, model.config.vocab_size, (2, 23))
    loss64, grads64 = _step(copy.deepcopy(model).double(), rows)
    loss32, grads32 = _step(model, rows, _compiled("inductor"))
    assert rel_err(loss32, loss64) < 1e-6 and rel_err(_flat(grads32), _flat(grads64)) < 1e-5


def test_training_throughput_compiled_and_a_failure_recorded(monkeypatch):
    from wonderful_matrices.bench import lm, lm_common

    config = presets.get("llama-tiny", use_cache=False)
    eager = lm.training_throughput(config, 16, 32, torch.device("cpu"), steps=1)
    assert eager["tokens_per_s"] > 0 and eager["error"] is None

    def fails():
        def broken(*args):
            raise RuntimeError("no backend\nsecond line")
        return broken

    monkeypatch.setattr(lm, "compiled_lm_loss", fails)
    failed = lm.training_throughput(config, 16, 32, torch.device("cpu"), steps=1, compiled=True)
    assert failed == {"tokens_per_s": None, "peak_memory_gb": None, "steady_peak_memory_gb": None,
                      "error": "RuntimeError: no backend"}
    monkeypatch.setattr(lm, "compiled_lm_loss", lambda: lm_common.compiled_lm_loss("aot_eager"))  # Inductor: slow
    compiled = lm.training_throughput(config, 16, 32, torch.device("cpu"), steps=1, compiled=True)
    assert compiled["tokens_per_s"] > 0 and compiled["error"] is None


def test_training_throughput_graphed_runs_its_steps_eagerly_off_cuda(monkeypatch):
    """``graphed=True`` times the steps of a GraphedTrainStep, with the eager or the compiled loss: off CUDA they run
    eagerly, and the result says that no graph was recorded and that nothing failed."""
    from wonderful_matrices.bench import lm, lm_common

    config = presets.get("llama-tiny", use_cache=False)
    monkeypatch.setattr(lm, "compiled_lm_loss", lambda: lm_common.compiled_lm_loss("aot_eager"))  # Inductor: slow
    for compiled in (False, True):
        result = lm.training_throughput(config, 16, 32, torch.device("cpu"), steps=1, compiled=compiled, graphed=True)
        assert result["tokens_per_s"] > 0 and result["error"] is None
        assert result["graphed"] is False and result["graph_error"] is None


def _op_counts(graph: torch.fx.GraphModule, ops) -> dict:
    return {op: sum(node.target is op for node in graph.graph.nodes) for op in ops}


@pytest.mark.parametrize("preset, options, tables", [
    ("llama-tiny", {}, 1),
    ("cheems-tiny", {}, 1),  # DMA's head dim = SSD's state size: one table
    ("cheems-tiny", {"ssd_state_size": 8, "mixer_types": ["ssd", "dma", "ssd", "dma"]}, 2)])
def test_compiled_step_builds_each_rotary_table_once(preset, options, tables):
    """Under torch.compile the model builds the cos/sin tables once per forward for each distinct rotary (dim, theta)
    (attention's or DMA's head dim, SSD's state size), not once per layer, as one opaque op whose outputs every layer
    reads; the backward reads them saved (never recomputes them, which Inductor would fold into every layer's
    gradient kernel). Counted in the graphs AOTAutograd hands its compilers, packed rows included."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    torch.manual_seed(0)
    model = CheemsForCausalLM(presets.get(preset, use_cache=False, **options)).train()
    ops = (torch.ops.wonderful_matrices.rotary_tables.default, torch.ops.aten.cos.default, torch.ops.aten.sin.default)
    counted = {}

    def recorder(name):
        def record(graph, example_inputs):
            counted[name] = list(_op_counts(graph, ops).values())
            return make_boxed_func(graph.forward)
        return record

    torch._dynamo.reset()
    backend = aot_autograd(fw_compiler=recorder("forward"), bw_compiler=recorder("backward"))
    compiled = torch.compile(lm_loss, dynamic=False, backend=backend, fullgraph=True)
    rows = torch.randint(2, model.config.vocab_size, (2, 17))
    rows[0, 6] = 1  # an EOS: packed documents, positions restarting
    with trusted_values():
        compiled(model, rows, 1).backward()
    torch._dynamo.reset()
    assert counted == {"forward": [tables, 0, 0], "backward": [0, 0, 0]}
