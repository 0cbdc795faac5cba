"""Audit Q3: what every mixer of a cell is given by ``bench.mqar.run`` — steps, batch, the training rows and their
order, the learning-rate schedule — recorded from inside the real training step; and how the learning-rate sweep
with "skip once solved" and the time budget decide which runs happen and what the table shows.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=src python docs/results/session27/audit_mqar/q3_fairness.py`` (log beside it).
"""
import hashlib
import json
import tempfile
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

from wonderful_matrices.bench import mqar as bench  # noqa: E402

RECORD: list[dict] = []
_real_training_step = bench.training_step
_real_build_model = bench.build_model


def digest(*tensors):
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def recording_training_step(model, lr, per_row, device, weight_decay=0.1):
    """The bench's own optimizer and step, wrapped so that every call records the batch it trains on and the
    learning rate the optimizer holds at that moment."""
    opt, step = _real_training_step(model, lr, per_row, device, weight_decay)
    rec = {"mixer": model._audit_mixer, "peak_lr": lr, "batches": [], "lrs": [], "wd": weight_decay,
           "betas": opt.param_groups[0]["betas"], "params": sum(p.numel() for p in model.parameters())}
    RECORD.append(rec)

    class Step:
        def __getattr__(self, name):
            return getattr(step, name)

        def __call__(self, x, y):
            rec["batches"].append(digest(x, y))
            rec["lrs"].append(float(opt.param_groups[0]["lr"]))
            return step(x, y)

    return opt, Step()


def recording_build_model(mixer, width, vocab, state, device, seed, tie_embeddings=False):
    model = _real_build_model(mixer, width, vocab, state, device, seed=seed, tie_embeddings=tie_embeddings)
    model._audit_mixer = mixer
    return model


def main():
    t0 = time.time()
    bench.training_step = recording_training_step
    bench.build_model = recording_build_model
    mixers = "attn,ssd,dma,dma-w8,swa-w8,ssd-s8,hyb3-w8"
    with tempfile.TemporaryDirectory() as out:
        rows = bench.run(out, steps=25, cells="64:32", mixers=mixers, learning_rates="1e-2,2.15e-3",
                         vocab_size=64, batch_size=16, num_test=40, state_size=8)
        meta = json.loads((Path(out) / "results.json").read_text())["meta"]
    print("== 3a. what each (mixer, lr) run was given (one cell T=64 width 32, 25 steps, batch 16, 2 rates)")
    by_lr = {}
    for rec in RECORD:
        key = rec["peak_lr"]
        by_lr.setdefault(key, []).append(rec)
        print(f"{rec['mixer']:9s} lr {rec['peak_lr']:.2e}: steps {len(rec['batches'])}, batches "
              f"{digest(torch.tensor([int(b, 16) for b in rec['batches']]))}, lr schedule "
              f"{digest(torch.tensor(rec['lrs']))} (first {rec['lrs'][0]:.2e}, peak {max(rec['lrs']):.2e}, last "
              f"{rec['lrs'][-1]:.2e}), betas {rec['betas']}, wd {rec['wd']}, params {rec['params']}")
    for lr, recs in by_lr.items():
        same_batches = len({tuple(r["batches"]) for r in recs}) == 1
        same_lrs = len({tuple(r["lrs"]) for r in recs}) == 1
        print(f"lr {lr:.2e}: {len(recs)} mixers; identical batch sequence: {same_batches}; identical lr "
              f"schedule: {same_lrs}")
    print("rows: " + "; ".join(f"{r['mixer']} steps={r['steps']} batch={r['batch']} lrs={list(r['lr_accuracy'])}"
                               for r in rows))
    print(f"meta lr_order={meta['lr_order']} budget_rule={meta['budget_rule']!r}")

    print("== 3b. skip once solved / budget: a fake training whose accuracy is set per (mixer, lr)")
    planned = {("dma", "1.00e-02"): 1.0, ("dma", "2.15e-03"): 1.0, ("attn", "1.00e-02"): 0.5,
               ("attn", "2.15e-03"): 0.7, ("attn", "4.64e-04"): 0.2, ("ssd", "1.00e-02"): 0.3,
               ("ssd", "2.15e-03"): 0.1, ("ssd", "4.64e-04"): 0.4, ("dma", "4.64e-04"): 0.9}
    calls = []

    def fake_train(model, train, test, lr, steps, batch, device, seed=0, weight_decay=0.1):
        calls.append((model._audit_mixer, lr, steps, batch, digest(*train), digest(*test)))
        return {"accuracy": planned[(model._audit_mixer, f"{lr:.2e}")], "final_loss": 0.0, "train_s": 0.0,
                "graphed": False}

    real_train = bench.train_and_evaluate
    bench.train_and_evaluate = fake_train
    with tempfile.TemporaryDirectory() as out:
        rows = bench.run(out, steps=30, cells="64:32", mixers="attn,ssd,dma",
                         learning_rates="4.64e-4,2.15e-3,1e-2", vocab_size=64, batch_size=16, num_test=40)
        md = (Path(out) / "results.md").read_text()
    for c in calls:
        print(f"run: {c[0]:5s} lr {c[1]:.2e} steps {c[2]} batch {c[3]} train {c[4]} test {c[5]}")
    for r in rows:
        print(f"row {r['mixer']}: accuracy {r['accuracy']} best_lr {r['best_lr']} lr_accuracy {r['lr_accuracy']}")
    print("results.md notes mention the skip:", "already solved" in md, "| best over the rates:",
          "best over the learning rates" in md)

    print("== 3c. budget mode: the step count comes from the sum of all mixers' step times (one number per cell)")
    bench.train_and_evaluate = fake_train
    calls.clear()
    with tempfile.TemporaryDirectory() as out:
        rows = bench.run(out, budget_s=3.0, cells="64:32", mixers="attn,ssd,dma",
                         learning_rates="4.64e-4,2.15e-3,1e-2", vocab_size=64, batch_size=16, num_test=40)
    print("steps per row:", {r["mixer"]: r["steps"] for r in rows}, "calibrated ms:",
          {r["mixer"]: r["calibrated_step_ms"] for r in rows}, "runs:", [(c[0], c[2]) for c in calls])

    print("== 3d. a learning rate listed twice (or two rates equal at the table's 3 digits): runs and row")
    seq = iter([0.3, 0.6, 0.5, 0.2])
    calls.clear()

    def fake_train2(model, train, test, lr, steps, batch, device, seed=0, weight_decay=0.1):
        calls.append((model._audit_mixer, lr))
        return {"accuracy": next(seq), "final_loss": 0.0, "train_s": 0.0, "graphed": False}

    bench.train_and_evaluate = fake_train2
    with tempfile.TemporaryDirectory() as out:
        try:
            rows = bench.run(out, steps=30, cells="64:32", mixers="attn,ssd", learning_rates="1e-2,1.0004e-2",
                             vocab_size=64, batch_size=16, num_test=40)
            print("runs:", calls)
            for r in rows:
                print(f"row {r['mixer']}: accuracy {r['accuracy']} lr_accuracy {r['lr_accuracy']}")
        except ValueError as exc:
            print(f"refused: {exc}")
    bench.train_and_evaluate = real_train
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
