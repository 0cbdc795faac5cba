"""A training step reads no device value on the host: every tiny preset, on the CPU, through the benches' step,
the model with ``config.value_checks=False`` (what an HF Trainer user sets), ``wm train``'s loop and the HF Trainer.

A host synchronisation is counted where the CPU would wait for a GPU: an ATen op that copies a value to the host
(``_local_scalar_dense``: ``.item()``, ``int()``, ``bool()`` …), ``Tensor.tolist``, and the ops whose output shape
depends on values (``nonzero``, ``masked_select``, ``unique``, boolean-mask indexing). AdamW's step counters are
host tensors on a GPU too (not capturable), so reading them is not counted.
"""
from __future__ import annotations

import collections
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import wonderful_matrices as wm
from wonderful_matrices.bench.lm_common import optimizer_step
from wonderful_matrices.data.packing import document_position_ids
from wonderful_matrices.train.optim import adamw, apply_gradients

TINY = [name for name in wm.presets.names() if name.endswith("-tiny")]
DATA_DEPENDENT = {"nonzero", "masked_select", "_unique", "_unique2", "unique_dim", "unique_consecutive"}


class HostReads(TorchDispatchMode):
    """Records each host synchronisation (see the module docstring) with the package lines that issued it."""

    def __init__(self, host_tensors=()):
        super().__init__()
        self.host = {t.data_ptr() for t in host_tensors}
        self.sites = collections.Counter()
        self.when = []  # (``stamp()``, site) of each read
        self.stamp = lambda: None

    def record(self, what: str) -> None:
        frames = [f"{f.filename.rsplit('wonderful_matrices/', 1)[-1]}:{f.lineno} {f.name}"
                  for f in traceback.extract_stack()[:-3] if "wonderful_matrices" in f.filename]
        site = (what, " <- ".join(reversed(frames[-3:])))
        self.sites[site] += 1
        self.when.append((self.stamp(), site))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name == "_local_scalar_dense" and args[0].data_ptr() not in self.host:
            self.record(name)
        elif name in DATA_DEPENDENT:
            self.record(name)
        elif name in ("index", "index_put", "index_put_") and any(
                isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1] if i is not None):
            self.record(name + " (boolean mask)")
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._tolist = torch.Tensor.tolist
        mode = self

        def tolist(t):
            mode.record("tolist")
            return mode._tolist(t)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)


def step_counters(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [state["step"] for state in opt.state.values() if "step" in state]


@pytest.fixture(autouse=True)
def grouped_gemm_as_on_cuda(monkeypatch):
    """The MoE layers take the grouped-GEMM path CUDA takes (torch's grouped GEMM runs on the CPU too); the loop
    over experts without it (CPU, GPUs before Hopper, float32) reads the expert counts to split the rows."""
    from wonderful_matrices.layers import moe

    monkeypatch.setattr(moe, "grouped_gemm_usable", lambda x, weight: True)


def tiny_model(name: str, **overrides) -> wm.CheemsForCausalLM:
    torch.manual_seed(0)
    return wm.CheemsForCausalLM(wm.presets.get(name, **overrides)).train()


def rows_with_documents(vocab: int) -> torch.Tensor:
    rows = torch.randint(1, vocab, (2, 25), generator=torch.Generator().manual_seed(1))
    rows[0, 7] = rows[1, 15] = 0  # EOS (id 0): two documents per row
    return rows


@pytest.mark.parametrize("eos", [None, 0], ids=["one-document", "packed"])
@pytest.mark.parametrize("name", TINY)
def test_bench_training_step_reads_nothing_on_the_host(name, eos):
    model = tiny_model(name)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rows = rows_with_documents(model.config.vocab_size)
    optimizer_step(model, opt, rows, torch.device("cpu"), clip=1.0, eos=eos)  # AdamW's state exists
    with HostReads(step_counters(opt)) as reads:
        loss = optimizer_step(model, opt, rows, torch.device("cpu"), clip=1.0, eos=eos)
    assert not reads.sites, dict(reads.sites)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name", TINY)
def test_forward_with_value_checks_off_reads_nothing_on_the_host(name):
    """The HF path (labels, packed rows by position ids, the fused loss, the auxiliary losses) with
    ``config.value_checks=False``; with the default, the same call checks its token ids and says which."""
    model = tiny_model(name, value_checks=False)
    opt = adamw(model, 1e-3, 0.1)
    rows = rows_with_documents(model.config.vocab_size)
    positions = document_position_ids(rows, 0)
    for step in range(2):  # the second with AdamW's state in place
        with HostReads(step_counters(opt)) as reads:
            loss = model(input_ids=rows, position_ids=positions, labels=rows).loss
            loss.backward()
            apply_gradients(model.parameters(), opt, None, clip=1.0)
        assert step == 0 or not reads.sites, dict(reads.sites)
    model.config.value_checks = True
    bad = rows.clone()
    bad[1, 3] = model.config.vocab_size
    with pytest.raises(ValueError, match="input_ids"):
        model(input_ids=bad, labels=rows)


def test_default_checks_still_reject_bad_labels_and_seq_idx():
    model = tiny_model("cheems-tiny")
    rows = rows_with_documents(model.config.vocab_size)
    labels = rows.clone()
    labels[0, 5] = model.config.vocab_size + 3
    with pytest.raises(ValueError, match=rf"labels=\[{model.config.vocab_size + 3}, ...\] is not allowed"):
        model(input_ids=rows, labels=labels)
    with pytest.raises(ValueError, match="seq_idx"):
        model(input_ids=rows, seq_idx=torch.tensor([[0] * 12 + [1] * 13, [1] * 12 + [0] * 13]))


def _wm_train_reads(tmp_path, monkeypatch, update: str, optimizer_of, **overrides) -> tuple[HostReads, int]:
    """Four ``wm train`` steps of the tiny preset (logged, evaluated and saved at the fourth) with ``loop``'s function
    ``update`` (the step's update; ``optimizer_of(*its arguments)`` its optimizer) counted: returns the host reads,
    each stamped with the number of updates done before it, and the updates."""
    from train.wm_train_helpers import TINY_PRESET, corpus_file
    from wonderful_matrices.train import loop

    reads = HostReads()
    steps = {"updates": 0}
    real = getattr(loop, update)

    def counted_update(*args, **kwargs):
        result = real(*args, **kwargs)
        reads.host |= {t.data_ptr() for t in step_counters(optimizer_of(*args))}
        steps["updates"] += 1
        return result

    monkeypatch.setattr(loop, update, counted_update)
    reads.stamp = lambda: steps["updates"]
    cfg = loop.TrainConfig(out=str(tmp_path / "run"), preset=TINY_PRESET, data=corpus_file(tmp_path), max_steps=4,
                           batch_size=2, seq_len=32, eval_interval=4, eval_rows=4, save_interval=4, log_interval=4,
                           device="cpu", progress=False, **overrides)
    with reads:
        loop.train(cfg)
    return reads, steps["updates"]


def test_wm_train_reads_the_device_only_where_it_logs_evaluates_or_saves(tmp_path, monkeypatch):
    """Four steps logged, evaluated and saved at the fourth: from the first update (which creates AdamW's
    counters) on, every host read of the loop comes after the fourth step's update (each step's loss included)."""
    reads, updates = _wm_train_reads(tmp_path, monkeypatch, "apply_gradients", lambda parameters, opt, *rest: opt)
    during_steps = collections.Counter(site for stamp, site in reads.when if 1 <= stamp < 4)
    assert updates == 4 and not during_steps, dict(during_steps)
    assert any(stamp == 4 for stamp, _ in reads.when)  # the losses are read once the steps are done


def test_wm_train_cuda_graph_step_reads_nothing_on_the_host(tmp_path, monkeypatch):
    """The same for ``--cuda-graph``'s step (its body runs eagerly on the CPU): a host read inside it would make the
    recording fail on a GPU."""
    from wonderful_matrices.train import loop

    monkeypatch.setattr(loop, "_check_cuda_graph", lambda cfg, info: None)
    monkeypatch.setattr(loop, "make_capturable", lambda optimizer, device: None)
    reads, updates = _wm_train_reads(tmp_path, monkeypatch, "_graphed_forward_backward_update",
                                     lambda run, *rest: run.optimizer, grad_accum=2, cuda_graph=True)
    during_steps = collections.Counter(site for stamp, site in reads.when if 1 <= stamp < 4)
    assert updates == 4 and not during_steps, dict(during_steps)


def test_hf_trainer_step_reads_nothing_on_the_host_in_the_model(tmp_path):
    """With ``config.value_checks=False`` the model's part of a Trainer step (forward, loss, backward) reads no
    value; the Trainer's own bookkeeping (its NaN filter, logging) is the Trainer's."""
    pytest.importorskip("accelerate", reason="the HF Trainer needs accelerate (in requirements.lock)")
    from transformers import Trainer, TrainingArguments

    model = tiny_model("cheems-tiny", value_checks=False)
    rows = rows_with_documents(model.config.vocab_size)
    data = [{"input_ids": row, "labels": row} for row in rows.repeat(4, 1)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, report_to=[],
                             use_cpu=True, seed=0, dataloader_num_workers=0, save_strategy="no", logging_steps=10,
                             logging_nan_inf_filter=False)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    with HostReads() as reads:
        trainer.train()
    in_model = {site: n for site, n in reads.sites.items() if site[1]}
    assert not in_model, in_model
