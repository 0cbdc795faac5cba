"""Q2: the training loss of a packed batch (what `train_lm` differentiates: `training_loss`, inside `trusted_values`)
against an independent reference, for every tiny preset: loss AND gradients.

Reference: each row (l + 1 tokens) is cut into segments after every EOS; every segment runs through the model ALONE
(no position_ids, no packing); the targets are the segment's next tokens within the row, except the token after an
EOS (a document's first token is not scored); the loss is the mean over all scored targets of the batch. The packed
loss and its gradients must equal it (no token attends, convolves or carries state across an EOS, in the forward or
the backward).
Usage: PYTHONPATH=src python q2_training_loss_reference.py
"""
import sys

import numpy as np
import torch
import torch.nn.functional as F

from wonderful_matrices.bench.lm_common import training_loss
from wonderful_matrices.models import CheemsForCausalLM, presets

EOS, VOCAB = 0, 64


def reference_loss(model, rows: torch.Tensor) -> torch.Tensor:
    total, count = 0.0, 0
    for row in rows:
        inputs, targets = row[:-1], row[1:]
        start = 0
        for j in range(len(inputs)):
            if int(inputs[j]) == EOS or j == len(inputs) - 1:
                seg = slice(start, j + 1)
                logits = model(input_ids=inputs[seg][None], use_cache=False).logits[0].double()
                keep = inputs[seg] != EOS  # the target after an EOS is a document's first token
                total = total + F.cross_entropy(logits[keep], targets[seg][keep], reduction="sum")
                count += int(keep.sum())
                start = j + 1
    return total / count


def main() -> int:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = torch.from_numpy(rng.integers(1, VOCAB, (3, 41)))
    for r, cuts in enumerate(([5, 6, 20], [], [0, 39, 40])):  # EOS inside, none, at the first and the last places
        rows[r, cuts] = EOS
    failures = 0
    for family in ("cheems", "doge", "llama", "mamba2", "jamba"):
        config = presets.get(f"{family}-tiny", vocab_size=VOCAB, use_cache=False, keep_window=4)
        torch.manual_seed(0)
        model = CheemsForCausalLM(config).train()
        for p in model.parameters():  # larger weights than the initialisation's, so that context matters
            p.data.mul_(3)
        got = training_loss(model, rows, torch.device("cpu"), eos=EOS)
        got.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        ref = reference_loss(model, rows)
        ref.backward()
        rel = abs(float(got) - float(ref)) / float(ref)
        grad_rel = max(float((g - p.grad).norm() / p.grad.norm().clamp_min(1e-30))
                       for g, p in zip(grads, model.parameters()) if p.grad is not None and p.grad.norm() > 0)
        ok = rel < 1e-5 and grad_rel < 1e-4
        failures += not ok
        print(f"{family:7s} loss {float(got):.6f} ref {float(ref):.6f} rel {rel:.1e}, worst gradient rel {grad_rel:.1e}"
              f" {'OK' if ok else 'MISMATCH'}", flush=True)
    print("failures:", failures)
    return int(failures > 0)


if __name__ == "__main__":
    sys.exit(main())
