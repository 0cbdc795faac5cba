"""Compiled training on packed documents (``wm train --compile``, ``train_lm(compiled=True)``): one training graph
whatever the documents' layout, one evaluation graph beside it, and the compiled step computes the eager one.

The document layout of a packed row (``position_ids`` restarting after each EOS, so ``seq_idx`` inside the model)
changes from batch to batch; a guard on tensor values, a Python branch on them or a shape taken from them would
compile the step again for every batch. The checks compile with ``aot_eager`` (Dynamo's graph and AOTAutograd's
joint forward and backward, where guards, graph breaks and tracing mistakes live; seconds instead of Inductor's
minutes on the CPU) and count the graphs Dynamo hands to that backend (:class:`CountingBackend`: a recompilation
adds one). Not Dynamo's global ``counters["stats"]["unique_graphs"]``: on the GPU the eager reference model's
FlexAttention calls compile graphs of their own (eager ``flex_attention`` runs itself through ``torch.compile``),
which that counter includes.
On a CUDA machine the same test also runs on the GPU's path (FlexAttention block masks, the Triton kernels; the
no-window DMA case there with Inductor, see ``FAMILIES``).
"""
import copy
import functools
import json

import numpy as np
import pytest
import torch
from wm_train_helpers import TINY_PRESET, one_thread, python_source_root, train_argv

from conftest import rel_err
from wonderful_matrices.data.packing import PackedRows, document_position_ids
from wonderful_matrices.models import CheemsForCausalLM, presets
from wonderful_matrices.ops.common import trusted_values
from wonderful_matrices.train.distributed import DistInfo
from wonderful_matrices.train.evaluate import evaluate

_one_thread = pytest.fixture(scope="module", autouse=True)(one_thread)

EOS = 1
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _packed_rows(step: int, vocab: int, rows: int = 3, length: int = 29) -> torch.Tensor:
    """(rows, length) token ids whose documents (EOS-closed) are laid out differently at every ``step``: row 0 holds
    one document at step 0 and more later, the others 1 to 4 documents with an EOS at random places (the last
    token included, at odd steps)."""
    g = torch.Generator().manual_seed(step)
    ids = torch.randint(2, vocab, (rows, length), generator=g)
    for r in range(rows):
        count = (step + r) % 4 if r == 0 else 1 + (step * 7 + r) % 4
        ids[r, torch.randperm(length - 1, generator=g)[:count]] = EOS
    if step % 2:
        ids[-1, -1] = EOS
    return ids


class CountingBackend:
    """A ``torch.compile`` backend that counts the graphs Dynamo hands it and compiles them with the backend
    ``name``: the graphs of the model compiled with it, and no one else's."""

    def __init__(self, name: str):
        self.compile = torch._dynamo.lookup_backend(name)
        self.graphs = 0

    def __call__(self, graph, example_inputs):
        self.graphs += 1
        return self.compile(graph, example_inputs)


def _train_step(forward, model, ids: torch.Tensor):
    """Loss and gradients of one packed training forward + backward as ``wm train`` runs it."""
    model.zero_grad(set_to_none=True)
    with trusted_values():
        loss = forward(input_ids=ids, position_ids=document_position_ids(ids, EOS), labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# (preset family, config overrides): cheems-tiny's DMA is windowed; without a window, on CUDA, DMA is FlexAttention
# with the bias a captured buffer of its score_mod, whose gradient only Inductor computes under compile: torch's
# dense Flex backward (what aot_eager runs) drops captured-buffer gradients in AOTAutograd's backward graph, whose
# inputs do not require grad ("Expected a proper Tensor but got None" on an H100, session 14; reproduced on the CPU
# with Flex's device check bypassed). That case compiles with Inductor, what `wm train --compile` uses.
FAMILIES = {"cheems": {}, "llama": {}, "cheems-no-window": {"keep_window": None}}


def _backend(family: str, device: str) -> str:
    return "inductor" if family == "cheems-no-window" and device == "cuda" else "aot_eager"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_packed_training_compiles_once_and_equals_eager(family, device):
    torch.manual_seed(0)
    preset = f"{family.split('-')[0]}-tiny"
    model = CheemsForCausalLM(presets.get(preset, use_cache=False, **FAMILIES[family])).to(device).train()
    eager = copy.deepcopy(model)
    torch._dynamo.reset()
    backend = CountingBackend(_backend(family, device))
    compiled = torch.compile(model, backend=backend, fullgraph=True)  # a graph break raises
    vocab = model.config.vocab_size
    val = PackedRows(torch.cat([_packed_rows(100 + s, vocab).flatten() for s in range(3)]).numpy(), 29)
    info = DistInfo(0, 0, 1, torch.device(device))
    batch_size = 4  # 9 validation rows: batches of 4, 4 and 1
    graphs = 1  # the training step's; evaluation adds one

    layouts = {tuple(document_position_ids(_packed_rows(step, vocab), EOS).flatten().tolist()) for step in range(7)}
    assert len(layouts) == 7, "every step has its own document layout"
    for step in range(7):
        ids = _packed_rows(step, vocab).to(device)
        loss, grads = _train_step(compiled, model, ids)
        eager_loss, eager_grads = _train_step(eager, eager, ids)
        assert rel_err(loss, eager_loss) < 1e-5
        assert grads.keys() == eager_grads.keys() and len(grads) == len(list(model.parameters()))
        flat = torch.cat([grads[n].double().flatten() for n in sorted(grads)])
        assert not flat.isnan().any()
        assert rel_err(flat, torch.cat([eager_grads[n].double().flatten() for n in sorted(grads)])) < 1e-5
        assert backend.graphs == graphs, f"step {step} compiled the training step again"
        if step in (2, 5):  # evaluation between training steps, its last batch partial, as wm train --compile runs it
            result = evaluate(compiled, val, batch_size, info, eos=EOS, whole_batches=True)
            expected = evaluate(eager, val, batch_size, info, eos=EOS)
            assert result["tokens"] == expected["tokens"] > 0
            assert abs(result["loss"] - expected["loss"]) < 1e-5 * expected["loss"]
            assert model.training, "evaluate restores training mode"
            graphs = 2
            assert backend.graphs == graphs, "evaluation compiles one graph of its own, once"
    assert backend.graphs == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("family", ["cheems", "llama"])
def test_reduce_overhead_compile_replays_cuda_graphs(family):
    """``torch.compile(model, mode="reduce-overhead")`` — how a user of HF Trainer (``torch_compile_mode``) or of their
    own loop gets CUDA graphs — records the packed training step's forward and backward as CUDA graphs (no op makes
    Inductor skip them: ``cudagraph_or_error`` turns a skip into an error) and trains as the eager model does."""
    from torch._inductor import config as inductor_config

    torch.manual_seed(0)
    model = CheemsForCausalLM(presets.get(f"{family}-tiny", use_cache=False)).cuda().train()
    eager = copy.deepcopy(model)
    torch._dynamo.reset()
    with inductor_config.patch({"triton.cudagraph_or_error": True}):
        compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
        for step in range(4):  # warm-up, recording, then replays
            ids = _packed_rows(step, model.config.vocab_size).cuda()
            loss, grads = _train_step(compiled, model, ids)
            eager_loss, eager_grads = _train_step(eager, eager, ids)
            assert rel_err(loss, eager_loss) < 1e-4
            flat = torch.cat([grads[n].double().flatten() for n in sorted(grads)])
            assert rel_err(flat, torch.cat([eager_grads[n].double().flatten() for n in sorted(grads)])) < 1e-4


def test_a_partial_last_batch_filled_is_scored_as_before():
    """``whole_batches`` only adds rows nobody scores: the same result as the eager evaluation of the partial batch."""
    torch.manual_seed(0)
    model = CheemsForCausalLM(presets.get("cheems-tiny", use_cache=False))
    val = PackedRows(np.concatenate([_packed_rows(s, model.config.vocab_size).numpy().ravel() for s in range(2)]), 29)
    info = DistInfo(0, 0, 1, torch.device("cpu"))
    plain = evaluate(model, val, 4, info, eos=EOS)  # 6 rows: 4 + 2
    filled = evaluate(model, val, 4, info, eos=EOS, whole_batches=True)
    assert filled["tokens"] == plain["tokens"] and abs(filled["loss"] - plain["loss"]) < 1e-6 * plain["loss"]


def test_wm_train_compile_on_python_source(tmp_path, monkeypatch):
    """``wm train --compile`` end to end on packed source files (many documents per row, a new layout every step),
    evaluating twice with a partial last batch: two graphs in all, and the run ends where the eager run does."""
    from wonderful_matrices.cli import main

    root = python_source_root(tmp_path)
    argv = functools.partial(train_argv, TINY_PRESET, f"python-source:{root}", max_steps=4, eval_interval=2,
                             eval_rows=6, save_interval=4, validation_fraction=0.2)
    assert main(argv(tmp_path / "eager")) == 0
    backend = CountingBackend("aot_eager")
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))
    torch._dynamo.reset()
    assert main(argv(tmp_path / "compiled") + ["--compile"]) == 0
    assert backend.graphs == 2, "one training graph and one evaluation graph"
    eager, compiled = (json.loads((tmp_path / run / "summary.json").read_text())["validation"]
                       for run in ("eager", "compiled"))
    assert compiled["tokens"] == eager["tokens"] > 0
    assert abs(compiled["loss"] - eager["loss"]) < 1e-4 * eager["loss"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("family", ["llama", "cheems", "cheems-no-window"])
def test_long_packed_rows_compiled_with_inductor_equal_eager_cuda(family):
    """Packed rows of lm-scale's length (2 × 2048 tokens, documents starting inside Flex's 128-token tiles and at
    their edges), compiled with Inductor — the compiler of ``wm train --compile`` and of lm-scale's compiled training
    — against the eager model: loss and every gradient, three document layouts. The tiny-row test above compiles
    llama with aot_eager (no code generation) and rows of one tile; this is where Inductor's code for the packed
    attention's block lists went wrong under torch 2.11 (docs/results.md, session 25)."""
    torch.manual_seed(0)
    preset = f"{family.split('-')[0]}-tiny"
    model = CheemsForCausalLM(presets.get(preset, use_cache=False, **FAMILIES[family])).cuda().train()
    eager = copy.deepcopy(model)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="inductor", fullgraph=True)
    vocab = model.config.vocab_size
    for eos_at in ([[127, 128, 1000], [5, 2047]], [[300, 301, 302], [1500]], [[], [129, 640, 1791]]):
        ids = torch.randint(2, vocab, (2, 2048), generator=torch.Generator().manual_seed(len(eos_at[0])))
        for r, places in enumerate(eos_at):
            ids[r, places] = EOS
        ids = ids.cuda()
        loss, grads = _train_step(compiled, model, ids)
        eager_loss, eager_grads = _train_step(eager, eager, ids)
        assert torch.isfinite(loss) and rel_err(loss, eager_loss) < 1e-4
        flat = torch.cat([grads[n].double().flatten() for n in sorted(grads)])
        assert torch.isfinite(flat).all()
        assert rel_err(flat, torch.cat([eager_grads[n].double().flatten() for n in sorted(grads)])) < 1e-4
