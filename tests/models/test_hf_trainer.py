"""The HF ``Trainer`` end to end on a tiny preset, on CPU: train, save, resume, evaluate."""
import pytest
import torch

import wonderful_matrices as wm
from conftest import rel_err

pytest.importorskip("accelerate", reason="the HF Trainer needs accelerate (in requirements.lock)")
from transformers import Trainer, TrainerCallback, TrainingArguments


class Rows(torch.utils.data.Dataset):
    def __init__(self, n, length, vocab, seed):
        self.ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class StopAt(TrainerCallback):
    """Ends training after ``step`` steps, as an interruption would (the schedule still plans for max_steps)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step


def trainer(out, max_steps=6, callbacks=()):
    torch.manual_seed(0)
    model = wm.CheemsForCausalLM(wm.presets.get("cheems-tiny"))
    args = TrainingArguments(output_dir=str(out), max_steps=max_steps, save_steps=2, per_device_train_batch_size=4,
                             per_device_eval_batch_size=4, learning_rate=3e-3, logging_steps=1, report_to=[],
                             use_cpu=True, seed=0, dataloader_num_workers=0, save_only_model=False)
    vocab = model.config.vocab_size
    return Trainer(model=model, args=args, train_dataset=Rows(32, 16, vocab, 1), eval_dataset=Rows(8, 16, vocab, 2),
                   callbacks=list(callbacks))


def test_trainer_trains_saves_resumes_and_evaluates(tmp_path):
    straight = trainer(tmp_path / "straight")
    straight.train()

    interrupted = trainer(tmp_path / "resumed", callbacks=[StopAt(4)])
    interrupted.train()
    assert interrupted.state.global_step == 4
    assert (tmp_path / "resumed" / "checkpoint-4" / "model.safetensors").exists()
    resumed = trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 6
    for (name, a), b in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert rel_err(b.detach(), a.detach()) < 1e-5, name

    metrics = resumed.evaluate()
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))
    assert rel_err(torch.tensor(metrics["eval_loss"]), torch.tensor(straight.evaluate()["eval_loss"])) < 1e-5


def test_label_smoothing_scores_the_next_token():
    # the Trainer's label smoother shifts the labels only for the class names transformers lists as causal LMs: before
    # the package listed CheemsForCausalLM it scored every token against itself
    torch.manual_seed(0)
    model = wm.CheemsForCausalLM(wm.presets.get("cheems-tiny")).eval()
    args = TrainingArguments(output_dir="unused", label_smoothing_factor=0.1, report_to=[], use_cpu=True)
    x = torch.randint(0, model.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = Trainer(model=model, args=args).compute_loss(model, {"input_ids": x, "labels": x.clone()})
        logits = model(x).logits
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten(), label_smoothing=0.1)
    assert rel_err(loss, expected) < 1e-6


def _one_sgd_step(out, batch, accumulation):
    torch.manual_seed(0)
    model = wm.CheemsForCausalLM(wm.presets.get("cheems-tiny"))
    args = TrainingArguments(output_dir=str(out), max_steps=1, per_device_train_batch_size=batch,
                             gradient_accumulation_steps=accumulation, learning_rate=1.0, optim="sgd",
                             lr_scheduler_type="constant", max_grad_norm=0, report_to=[], use_cpu=True,
                             save_strategy="no", seed=0, dataloader_num_workers=0)
    Trainer(model=model, args=args, train_dataset=Rows(8, 16, model.config.vocab_size, 1)).train()
    return torch.cat([p.detach().flatten() for p in model.parameters()]), model


def test_gradient_accumulation_counts_the_balance_loss_once_per_step(tmp_path):
    # one step of 8 rows against 2 accumulated micro-batches of 4: the cross-entropy is the same sum either way; the
    # balance loss of each half differs a little from the whole batch's (it is not a sum over tokens), but it was
    # added once per micro-batch, twice in all (parameters 1.8% apart, now 0.06%)
    whole, model = _one_sgd_step(tmp_path / "whole", 8, 1)
    accumulated, _ = _one_sgd_step(tmp_path / "accumulated", 4, 2)
    assert rel_err(accumulated, whole) < 3e-3
    # the rule itself: this call's share of num_items_in_batch targets
    x = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(5))
    model.train()
    plain = model(x, labels=x)
    scaled = model(x, labels=x, num_items_in_batch=torch.tensor(3 * 2 * 11))
    ce = plain.loss - plain.aux_loss
    assert rel_err(scaled.loss, ce / 3 + plain.aux_loss / 3) < 1e-6
