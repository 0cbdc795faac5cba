"""The benches train with ``wm train``'s schedule and update step (one training path)."""
import numpy as np
import pytest
import torch

from wonderful_matrices.bench import lm_common
from wonderful_matrices.bench import mqar as bench_mqar
from wonderful_matrices.data.mqar import mqar
from wonderful_matrices.train.schedule import lr_multiplier


def _tiny_lm():
    from wonderful_matrices.models import presets
    from wonderful_matrices.train.loop import build_model

    torch.manual_seed(0)
    return build_model(presets.get("llama-tiny", vocab_size=64))


def test_train_lm_follows_the_cosine_schedule_of_wm_train(monkeypatch):
    rates = []
    real = lm_common.apply_gradients

    def recording(parameters, optimizer, scheduler=None, clip=None):
        rates.append(optimizer.param_groups[0]["lr"])
        return real(parameters, optimizer, scheduler, clip)

    monkeypatch.setattr(lm_common, "apply_gradients", recording)
    tokens = np.random.default_rng(0).integers(0, 64, size=400)
    steps, lr = 40, 1e-3
    lm_common.train_lm(_tiny_lm(), tokens, seq_len=8, batch=2, steps=steps, lr=lr, device=torch.device("cpu"))
    f = lr_multiplier("cosine", steps, max(1, steps // 20), min_ratio=0.1)
    assert rates == pytest.approx([lr * f(s) for s in range(steps)], rel=1e-12)
    assert rates[-1] == pytest.approx(0.1 * lr)  # the last step runs at the final rate


def test_mqar_follows_the_cosine_schedule_of_wm_train(monkeypatch):
    rates = []
    monkeypatch.setattr(bench_mqar, "set_learning_rate", lambda opt, value: rates.append(value))
    model = bench_mqar.build_model("attn", 16, 32, 8, torch.device("cpu"), seed=0)
    steps, lr = 20, 3e-3
    bench_mqar.train_and_evaluate(model, mqar(64, 32, 2, 32, seed=1), mqar(8, 32, 2, 32, seed=2), lr=lr,
                                  steps=steps, batch_size=8, device=torch.device("cpu"))
    f = lr_multiplier("cosine", steps, max(1, steps // 10), min_ratio=0.0)
    assert rates == pytest.approx([lr * f(s) for s in range(steps)], rel=1e-12)
