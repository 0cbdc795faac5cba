"""HF's packed-without-padding path: ``DataCollatorWithFlattening`` rows (position_ids restarting at 0, labels -100 at
each document's first token) give the loss of the documents run separately, through the model and a Trainer step."""
import pytest
import torch
from transformers import DataCollatorWithFlattening

import wonderful_matrices as wm

LENGTHS = [7, 1, 19, 12, 5]  # tiny presets: SSD chunk 16, so documents cross chunk edges


def _setup(name):
    torch.manual_seed(0)
    cfg = wm.presets.get(name)
    model = wm.CheemsForCausalLM(cfg).float()
    gen = torch.Generator().manual_seed(3)
    docs = [torch.randint(0, cfg.vocab_size, (n,), generator=gen).tolist() for n in LENGTHS]
    return model, docs


def _separate_loss(model, docs):
    """The mean next-token loss over every document's own tokens, each document run alone."""
    total, count = 0.0, 0
    for doc in docs:
        if len(doc) > 1:
            ids = torch.tensor([doc])
            total += model(input_ids=ids, labels=ids).loss.item() * (len(doc) - 1)
            count += len(doc) - 1
    return total / count


@pytest.mark.parametrize("name", ["llama-tiny", "mamba2-tiny"])
def test_flattened_batch_loss_equals_documents_alone(name):
    model, docs = _setup(name)
    model.eval()
    batch = DataCollatorWithFlattening()([{"input_ids": d} for d in docs])
    packed = model(**batch).loss.item()
    assert abs(packed - _separate_loss(model, docs)) < 1e-5 * packed


def test_trainer_step_with_the_flattening_collator(tmp_path):
    pytest.importorskip("accelerate")  # HF Trainer needs it
    from transformers import Trainer, TrainingArguments

    model, docs = _setup("llama-tiny")
    expected = _separate_loss(model.eval(), docs)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=len(docs), max_steps=1,
                             learning_rate=0.0, report_to=[], use_cpu=True, logging_steps=1, save_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=[{"input_ids": d} for d in docs],
                      data_collator=DataCollatorWithFlattening())
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape == (1, sum(LENGTHS)) and "position_ids" in batch
    result = trainer.train()
    assert abs(result.training_loss - expected) < 1e-5 * expected
