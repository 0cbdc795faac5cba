"""Audit Q2: ``bench.mqar.evaluate`` (the number in the table) against a direct count of argmax == label over the
labelled positions of full (b, l, V) logits, on (a) an oracle model with a known, planted accuracy, (b) a small
model trained a few hundred steps on CPU (a middling accuracy), with batch sizes that leave a remainder, and
(c) the bf16 autocast the CUDA runs evaluate under, emulated on CPU.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=src python docs/results/session27/audit_mqar/q2_accuracy.py`` (log beside it).
"""
import time

import torch
from torch import nn

torch.set_num_threads(1)

from wonderful_matrices.bench import mqar as bench  # noqa: E402
from wonderful_matrices.data.mqar import IGNORE_INDEX, mqar  # noqa: E402


def direct_count(full_logits, labels):
    """correct, counted from (b, l, V) logits: every position whose label is not -100, nothing else."""
    correct = counted = 0
    for r in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            if int(labels[r, t]) != IGNORE_INDEX:
                counted += 1
                correct += int(int(full_logits[r, t].argmax()) == int(labels[r, t]))
    return correct, counted


class Oracle(nn.Module):
    """Reads the value of key inputs[t] from the row's context and predicts it, except where (inputs[t] + t) % 3 == 0:
    there (a rule of the row's content, so it does not depend on how rows are batched) it predicts value + 1
    (wrong). It also puts a confident wrong guess at every unlabelled position, so
    counting one of those would show. ``model.model(input_ids).last_hidden_state`` / ``model.lm_head`` as the
    bench calls them."""

    def __init__(self, vocab, n):
        super().__init__()
        self.vocab, self.n = vocab, n
        self.lm_head = nn.Identity()
        outer = self

        class Inner(nn.Module):
            def forward(self, input_ids, use_cache=False):
                return type("O", (), {"last_hidden_state": outer.hidden(input_ids)})()

        self.model = Inner()

    def hidden(self, x):
        b, l = x.shape
        h = torch.zeros(b, l, self.vocab)
        for r in range(b):
            row = x[r].tolist()
            mapping = dict(zip(row[0:2 * self.n:2], row[1:2 * self.n:2]))
            for t in range(l):
                if t >= 2 * self.n and (t - 2 * self.n) % 2 == 0 and row[t] in mapping:
                    v = mapping[row[t]]
                    h[r, t, v if (row[t] + t) % 3 else (v + 1) % self.vocab] = 5.0
                else:
                    h[r, t, 0] = 5.0
        return h


def planted(x, y, n):
    """The oracle's accuracy from its rule: the fraction of labelled positions where (inputs[t] + t) % 3 != 0."""
    ok = tot = 0
    for r in range(y.shape[0]):
        for t in range(y.shape[1]):
            if int(y[r, t]) != IGNORE_INDEX:
                tot += 1
                ok += int((int(x[r, t]) + t) % 3 != 0)
    return ok / tot


def main():
    t0 = time.time()
    dev = torch.device("cpu")
    print("== 2a. oracle model with a planted accuracy")
    T, n, V = 64, 4, 64
    x, y = mqar(203, T, n, V, seed=1)
    model = Oracle(V, n)
    direct = direct_count(model.hidden(x), y)
    for batch in (64, 50, 203, 1000, 7):
        acc = bench.evaluate(model, (x, y), batch, dev)
        print(f"batch {batch:4d}: evaluate={acc:.6f} direct={direct[0]}/{direct[1]}={direct[0] / direct[1]:.6f} "
              f"planted={planted(x, y, n):.6f} equal={acc == direct[0] / direct[1]}")
    # the per_row=None path (rows with different label counts): drop one label of row 0
    y2 = y.clone()
    y2[0, (y2[0] != IGNORE_INDEX).nonzero()[0, 0]] = IGNORE_INDEX
    d2 = direct_count(model.hidden(x), y2)
    print(f"ragged labels (per_row None): evaluate={bench.evaluate(model, (x, y2), 64, dev):.6f} "
          f"direct={d2[0] / d2[1]:.6f}; labels_per_row={bench.labels_per_row(y2)}")
    # filler tokens that repeat a context key are unlabelled and must not count
    keyrep = sum(int(x[r, t]) in set(x[r, 0:2 * n:2].tolist()) and int(y[r, t]) == IGNORE_INDEX
                 for r in range(x.shape[0]) for t in range(2 * n, T))
    print(f"unlabelled query-region positions that repeat a context key: {keyrep} (not counted: the direct count "
          "above skips them and matches)")

    print("== 2b. a small model trained on CPU (attn, width 32, T=64, 4 pairs, V=64), evaluate vs direct count")
    tr = mqar(4000, T, n, V, seed=2)
    te = mqar(300, T, n, V, seed=3)
    for mixer in ("attn", "dma-w16", "ssd-s16"):
        m = bench.build_model(mixer, 32, V, 16, dev, seed=0)
        res = bench.train_and_evaluate(m, tr, te, 3e-3, 300, 32, dev)
        with torch.no_grad():
            m.eval()
            logits = m(input_ids=te[0]).logits
        c, k = direct_count(logits, te[1])
        accs = {b: bench.evaluate(m, te, b, dev) for b in (32, 64, 77, 300)}
        print(f"{mixer}: train_and_evaluate={res['accuracy']:.6f}, evaluate by batch {accs}, direct {c}/{k}="
              f"{c / k:.6f}, all equal: {all(a == c / k for a in accs.values()) and res['accuracy'] == c / k}")
        # bf16 autocast (what CUDA evaluates under), emulated on CPU: how many labelled argmaxes move
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            lb = m(input_ids=te[0]).logits
        cb, _ = direct_count(lb.float(), te[1])
        mask = te[1] != IGNORE_INDEX
        moved = int((lb.float().argmax(-1) != logits.argmax(-1))[mask].sum())
        print(f"   bf16 autocast (CPU): accuracy {cb / k:.6f} vs float32 {c / k:.6f}; labelled argmaxes that moved: "
              f"{moved} of {k}")
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
