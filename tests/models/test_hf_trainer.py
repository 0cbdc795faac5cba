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
