"""GraphedTrainStep: the step it runs is forward + backward + clipping + optimizer step; on CUDA the recorded graph
replays the same training as eager steps (the CUDA tests skip without a GPU)."""
import json

import pytest
import torch

from wonderful_matrices.bench import mqar as bench_mqar
from wonderful_matrices.data.mqar import mqar
from wonderful_matrices.train.graph_step import GraphedTrainStep, set_learning_rate

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _plain_steps(model, batches, lr, max_norm):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        opt.step()
        losses.append(loss.item())
    return losses


def test_eager_step_is_forward_backward_clip_and_optimizer_step():
    torch.manual_seed(0)
    batches = [(torch.randn(8, 5), torch.randn(8, 3)) for _ in range(6)]
    ref_model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    model.load_state_dict(ref_model.state_dict())
    ref = _plain_steps(ref_model, batches, 1e-2, 0.05)   # a small norm: clipping is active
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step = GraphedTrainStep(lambda x, y: torch.nn.functional.mse_loss(model(x), y), model.parameters(), opt,
                            max_grad_norm=0.05)
    losses = [float(step(x, y)) for x, y in batches]
    assert losses == pytest.approx(ref, rel=1e-6)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert not step.recorded and step.steps == 6


def test_micro_batches_accumulate_the_mean_loss_gradient_and_report_the_norm():
    # 3 micro-batches of 4 rows inside one step = one batch of 12 rows (mean losses of equal-sized parts)
    torch.manual_seed(0)
    batches = [(torch.randn(3, 4, 5), torch.randn(3, 4, 3)) for _ in range(4)]
    ref_model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    model.load_state_dict(ref_model.state_dict())
    ref = _plain_steps(ref_model, [(x.flatten(0, 1), y.flatten(0, 1)) for x, y in batches], 1e-2, 0.05)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step = GraphedTrainStep(lambda x, y: torch.nn.functional.mse_loss(model(x), y), model.parameters(), opt,
                            max_grad_norm=0.05, micro_batches=3)
    losses, norms = [], []
    for x, y in batches:
        losses.append(float(step(x, y)))
        norms.append(float(step.grad_norm))
    assert losses == pytest.approx(ref, rel=1e-5)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert all(n > 0.05 for n in norms)  # the norm before clipping (clipping was active)
    with pytest.raises(ValueError, match="first dimension must be 3"):
        step(torch.randn(2, 4, 5), torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="micro_batches"):
        GraphedTrainStep(lambda x: x.sum(), model.parameters(), opt, micro_batches=0)


def test_set_learning_rate_sets_floats_and_tensors_in_place():
    w = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([w], lr=1e-3)
    set_learning_rate(opt, 5e-4)
    assert opt.param_groups[0]["lr"] == 5e-4
    lr = torch.tensor(1e-3)
    opt = torch.optim.AdamW([w], lr=lr)
    set_learning_rate(opt, 2e-4)
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(2e-4)


def test_bad_arguments_are_refused():
    w = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([w], lr=0.1)
    with pytest.raises(ValueError, match="warmup_steps"):
        GraphedTrainStep(lambda: w.sum(), [w], opt, warmup_steps=0)
    with pytest.raises(ValueError, match="max_grad_norm"):
        GraphedTrainStep(lambda: w.sum(), [w], opt, max_grad_norm=0.0)


@cuda
@pytest.mark.parametrize("mixer", bench_mqar.MIXERS)
def test_graphed_mqar_training_replays_the_eager_steps(mixer):
    # the same MQAR model trained 12 steps eagerly and from a recorded graph (3 eager warm-up steps, then replays):
    # the losses and the final parameters agree (bf16 autocast: up to the order of float sums)
    device = torch.device("cuda")
    inputs, labels = (t.to(device) for t in mqar(12 * 16, 64, 4, 512, seed=3))
    per_row = bench_mqar.labels_per_row(labels)
    runs = []
    for graphed in (False, True):
        model = bench_mqar.build_model(mixer, 64, 512, 16, device, seed=0, tie_embeddings=True)
        opt, step = bench_mqar.training_step(model, 3e-3, per_row, device)
        step.use_graph = graphed
        losses = []
        for i in range(12):
            set_learning_rate(opt, 3e-3 * (i + 1) / 12)
            losses.append(float(step(inputs[16 * i:16 * (i + 1)], labels[16 * i:16 * (i + 1)])))
        assert step.recorded == graphed and step.failed is None
        runs.append((losses, [p.detach().float().clone() for p in model.parameters()]))
    (eager_losses, eager_params), (graph_losses, graph_params) = runs
    assert graph_losses == pytest.approx(eager_losses, rel=2e-2)
    for p, q in zip(graph_params, eager_params):
        assert (p - q).norm() <= 2e-2 * q.norm() + 1e-4


@cuda
def test_graph_reads_the_learning_rate_at_each_replay():
    w = torch.nn.Parameter(torch.ones(4, device="cuda"))
    opt = torch.optim.AdamW([w], lr=torch.tensor(0.1, device="cuda"), weight_decay=0.0, capturable=True)
    step = GraphedTrainStep(lambda x: (w * x).sum(), [w], opt, max_grad_norm=None, warmup_steps=1)
    x = torch.ones(4, device="cuda")
    step(x)
    step(x)       # recorded and replayed
    assert step.recorded
    before = w.detach().clone()
    set_learning_rate(opt, 0.0)
    step(x)
    torch.testing.assert_close(w.detach(), before)
    set_learning_rate(opt, 0.1)
    step(x)
    assert torch.all(w.detach() < before - 0.05)


@cuda
def test_recorded_step_refuses_other_shapes():
    w = torch.nn.Parameter(torch.ones(4, device="cuda"))
    opt = torch.optim.AdamW([w], lr=torch.tensor(0.1, device="cuda"), capturable=True)
    step = GraphedTrainStep(lambda x: (w * x).sum(), [w], opt, warmup_steps=1)
    for _ in range(2):
        step(torch.ones(3, 4, device="cuda"))
    assert step.recorded
    with pytest.raises(ValueError, match="inputs"):
        step(torch.ones(1, 4, device="cuda"))   # would broadcast silently into the recorded buffer


@cuda
def test_wm_train_cuda_graph_records_the_step_and_trains_as_eager(tmp_path):
    # `wm train --cuda-graph` (gradient accumulation, clipping, the schedule, packed documents) against the same run
    # without it: the step is recorded (summary) and the two runs agree up to the order of float sums
    from safetensors.torch import load_file
    from wm_train_helpers import TINY_PRESET, corpus_file

    from wonderful_matrices.train import checkpoint as ckpt
    from wonderful_matrices.train.loop import TrainConfig, train

    data = corpus_file(tmp_path)
    runs = {}
    for graphed in (False, True):
        out = tmp_path / f"graph-{graphed}"
        summary = train(TrainConfig(out=str(out), preset=TINY_PRESET, data=data, max_steps=10, batch_size=4,
                                    seq_len=64, grad_accum=2, lr=3e-3, warmup=0.2, eval_interval=10, save_interval=5,
                                    log_interval=1, device="cuda", cuda_graph=graphed, progress=False))
        assert summary["cuda_graph"] == ("recorded" if graphed else None)
        losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
                  if json.loads(line)["kind"] == "train"]
        runs[graphed] = losses, load_file(ckpt.latest_checkpoint(out) / "model.safetensors")
    (eager_losses, eager), (graph_losses, graphed_weights) = runs[False], runs[True]
    assert graph_losses == pytest.approx(eager_losses, rel=2e-2)
    flat = lambda w: torch.cat([w[k].flatten().float() for k in sorted(w)])  # noqa: E731
    assert (flat(graphed_weights) - flat(eager)).norm() <= 2e-2 * flat(eager).norm()


@cuda
def test_graphed_lm_training_resumes_on_cuda(tmp_path, monkeypatch):
    """``train_lm(graphed=True)`` (lm-scale's training) cut after 3 of 8 steps and resumed from its step-2 checkpoint
    on the GPU trains as an uninterrupted run (session 23: the resume failed on CUDA, the checkpoint's CPU RNG state
    having been loaded onto the GPU)."""
    import numpy as np

    from conftest import cut_after_three_steps
    from wonderful_matrices.bench import lm_common
    from wonderful_matrices.models import CheemsForCausalLM, presets

    config = presets.get("cheems-tiny", vocab_size=64, use_cache=False)
    tokens = np.random.default_rng(0).integers(0, 64, 4000).astype(np.int64)  # id 0 as EOS: packed documents
    train = dict(tokens=tokens, seq_len=32, batch=4, steps=8, lr=1e-3, device=torch.device("cuda"), seed=3, eos=0,
                 graphed=True)

    def fresh():
        torch.manual_seed(3)
        return CheemsForCausalLM(config).cuda()

    reference = fresh()
    whole = lm_common.train_lm(reference, **train)
    saving = dict(checkpoint=tmp_path / "checkpoint.pt", checkpoint_every=2, facts={"run": 1})
    cut_after_three_steps(monkeypatch, lambda: lm_common.train_lm(fresh(), **train, **saving))
    resumed = fresh()
    stats = lm_common.train_lm(resumed, **train, **saving)
    assert stats["resumed_at"] == 2 and stats["graphed"] and stats["diverged_at"] is None
    assert stats["losses"] == pytest.approx(whole["losses"], rel=2e-2)
    for p, q in zip(resumed.parameters(), reference.parameters()):
        assert (p - q).float().norm() <= 2e-2 * q.float().norm() + 1e-4



def test_make_capturable_turns_a_loaded_optimizer_into_a_recordable_one():
    # what `wm train --cuda-graph` does to its AdamW after creating or resuming it: capturable, a tensor learning rate
    # that a scheduler then fills in place, float32 step counts on the device (here the CPU stands in for it)
    from wonderful_matrices.train.optim import make_capturable

    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=1e-3)
    w.grad = torch.ones(3)
    opt.step()
    opt.load_state_dict(opt.state_dict())  # as after a resume
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)
    make_capturable(opt, torch.device("cpu"))
    group = opt.param_groups[0]
    assert group["capturable"] and isinstance(group["lr"], torch.Tensor) and float(group["lr"]) == pytest.approx(1e-3)
    assert opt.state[w]["step"].dtype == torch.float32 and float(opt.state[w]["step"]) == 1
    lr = group["lr"]
    sched.step()
    assert group["lr"] is lr and float(lr) == pytest.approx(5e-4)  # filled in place: what a recorded graph reads


def test_own_options_keep_this_process_way_of_running_a_loaded_optimizer():
    # a state saved by a CUDA-graph run (capturable, tensor learning rate) loads into an eager optimizer as an eager
    # one, and an eager state into a capturable one as a capturable one
    from wonderful_matrices.train.optim import own_options

    w = torch.nn.Parameter(torch.ones(3))
    graphed = torch.optim.AdamW([w], lr=torch.tensor(1e-3), capturable=True)
    saved = graphed.state_dict()
    plain = torch.optim.AdamW([w], lr=1e-3)
    with own_options(plain):
        plain.load_state_dict(saved)
    group = plain.param_groups[0]
    assert group["capturable"] is False and isinstance(group["lr"], float) and group["lr"] == pytest.approx(1e-3)
    lr = torch.tensor(2e-3)
    recordable = torch.optim.AdamW([w], lr=lr, capturable=True)
    with own_options(recordable):
        recordable.load_state_dict(torch.optim.AdamW([w], lr=1e-3).state_dict())
    assert recordable.param_groups[0]["capturable"] is True
