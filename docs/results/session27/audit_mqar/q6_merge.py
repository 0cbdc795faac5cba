"""Audit Q6: ``merge_results`` (what it refuses, what it keeps) and whether results.md and mqar.png show what the
rows say. Parts come from ``bench.mqar.run`` with the training replaced by planted accuracies (the merge only reads
results.json), so every expected number is known.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=src python docs/results/session27/audit_mqar/q6_merge.py`` (log beside it).
"""
import json
import tempfile
import time
from pathlib import Path

import matplotlib
import torch

torch.set_num_threads(1)
matplotlib.use("Agg")
import matplotlib.axes  # noqa: E402

from wonderful_matrices.bench import mqar as bench  # noqa: E402

ACC = {}   # (mixer, lr string, steps) -> planted accuracy


def fake_train(model, train, test, lr, steps, batch, device, seed=0, weight_decay=0.1):
    return {"accuracy": ACC[(model._m, f"{lr:.2e}", steps)], "final_loss": 0.0, "train_s": 1.0, "graphed": False}


_build = bench.build_model


def build(mixer, *a, **k):
    m = _build(mixer, *a, **k)
    m._m = mixer
    return m


def part(root, name, mixers, lrs, steps=20, **kw):
    out = Path(root) / name
    args = dict(steps=steps, cells="64:32", mixers=mixers, learning_rates=lrs, vocab_size=64, batch_size=8,
                num_test=16)
    args.update(kw)
    bench.run(out, **args)
    return out


def table_rows(md):
    """The rows of the markdown table as dicts (header line: '| seq_len | ...')."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def main():
    t0 = time.time()
    bench.train_and_evaluate = fake_train
    bench.build_model = build
    for m, vals in {"attn": (0.40, 0.55, 0.30), "dma": (1.0, 0.95, 0.90), "ssd-s8": (0.20, 0.25, 0.10),
                    "dma-w8": (0.70, 0.80, 0.60)}.items():
        for lr, v in zip(("1.00e-02", "2.15e-03", "4.64e-04"), vals):
            ACC[(m, lr, 20)] = v
            ACC[(m, lr, 40)] = min(1.0, v + 0.05)
    with tempfile.TemporaryDirectory() as root:
        a = part(root, "a", "attn,dma", "1e-2")
        b = part(root, "b", "attn,dma,ssd-s8,dma-w8", "2.15e-3,4.64e-4")
        c = part(root, "c", "ssd-s8,dma-w8", "1e-2")
        print("== 6a. a clean merge of three parts (one cell, 4 mixers, 3 rates split over the parts)")
        rows = bench.merge_results(Path(root) / "m", [a, b, c])
        for r in rows:
            print(f"{r['mixer']}: accuracy {r['accuracy']} best_lr {r['best_lr']} steps {r['steps']} "
                  f"lr_accuracy {r['lr_accuracy']} train_s {r['train_s']}")
        md = (Path(root) / "m" / "results.md").read_text()
        tab = table_rows(md)
        ok = all(float(t["accuracy"]) == r["accuracy"] and t["mixer"] == r["mixer"] and int(t["steps"]) == r["steps"]
                 and float(t["best_lr"]) == r["best_lr"] for t, r in zip(tab, rows)) and len(tab) == len(rows)
        print(f"results.md table agrees with the rows (mixer, accuracy, best_lr, steps): {ok}")
        # the plot: record every Axes.plot call of _plot
        calls = []
        real_plot = matplotlib.axes.Axes.plot

        def rec(self, *args, **kw):
            calls.append((kw.get("label"), [list(x) for x in args[:2]]))
            return real_plot(self, *args, **kw)

        matplotlib.axes.Axes.plot = rec
        bench._plot(rows, Path(root) / "p.png")
        matplotlib.axes.Axes.plot = real_plot
        ours = {lab: pts for lab, pts in calls if lab and "(ours)" in lab}
        want = {f"{bench.mixer_name(r['mixer'])} (ours)": [[r["width"]], [r["accuracy"]]] for r in rows}
        print(f"plot points (ours) == rows: {ours == want}; paper series plotted: "
              f"{sorted(lab for lab, _ in calls if lab and '(paper)' in lab)} (T=64 has no paper cell)")

        print("== 6b. refusals: each part differs from part a (tied embeddings: the full run's default) in one setting")
        variants = {"vocab_size": dict(vocab_size=128), "ssd_state_size": dict(state_size=8),
                    "batch_size": dict(batch_size=4), "tie_embeddings": dict(tie_embeddings=False),
                    "seed": dict(seed=1), "test_rows": dict(num_test=8)}
        for key, kw in variants.items():
            p = part(root, f"x_{key}", "ssd-s8", "1e-2", **kw)
            try:
                bench.merge_results(Path(root) / "mx", [a, p])
                print(f"{key}: MERGED (not refused)")
            except ValueError as exc:
                print(f"{key}: refused: {str(exc)[:150]}")
        d = part(root, "d", "ssd-s8", "1e-2", steps=40)
        try:
            bench.merge_results(Path(root) / "mx", [a, d])
            print("steps 20 vs 40 in one cell: MERGED (not refused)")
        except ValueError as exc:
            print(f"steps 20 vs 40 in one cell: refused: {str(exc)[:160]}")
        rows = bench.merge_results(Path(root) / "mm", [a, d], mixed_budgets=True)
        print("mixed_budgets: " + "; ".join(f"{r['mixer']} {r['lr_accuracy']} steps {r['steps']}" for r in rows))
        mdm = (Path(root) / "mm" / "results.md").read_text()
        print(f"   results.md states mixed budgets: {'mixed_budgets' in mdm}")

        print("== 6c. settings merge_results does NOT compare (a part whose meta differs only there is merged)")
        base = json.loads((a / "results.json").read_text())
        compared = {"vocab_size", "ssd_state_size", "batch_size", "tie_embeddings", "seed", "data_seed", "test_rows"}
        for key in sorted(set(base["meta"]) - compared):
            alt = Path(root) / f"meta_{key}"
            alt.mkdir()
            data = json.loads((c / "results.json").read_text())
            data["meta"][key] = "ALTERED"
            (alt / "results.json").write_text(json.dumps(data))
            try:
                bench.merge_results(Path(root) / "mx", [a, alt])
                print(f"{key}: merged")
            except ValueError as exc:
                print(f"{key}: refused ({str(exc)[:80]})")

        print("== 6d. the same (mixer, lr, steps) in two parts: what the merged row shows")
        ACC[("attn", "1.00e-02", 20)] = 0.62   # a second, luckier run of attn at 1e-2
        a2 = part(root, "a2", "attn", "1e-2")
        rows = bench.merge_results(Path(root) / "dup", [a, a2, b, c])
        r = next(r for r in rows if r["mixer"] == "attn")
        md = (Path(root) / "dup" / "results.md").read_text()
        meta = json.loads((Path(root) / "dup" / "results.json").read_text())["meta"]
        print(f"attn merged from 2 runs at lr 1e-2 (0.40 and 0.62): lr_accuracy {r['lr_accuracy']}, accuracy "
              f"{r['accuracy']}, train_s {r['train_s']} (one run = 1.0 s per rate)")
        print(f"   anything in results.md/meta saying lr 1e-2 of attn ran twice: "
              f"{'twice' in md or 'repeated' in md or any('repeat' in k for k in meta)} (meta repeated_runs: "
              f"{meta.get('repeated_runs')})")
    print("== 6e. the plot of a paper cell (T=256, width 64): our points and the paper's, as drawn")
    for m, v in {"attn": 0.81, "ssd": 0.33, "dma": 0.97}.items():
        ACC[(m, "1.00e-02", 20)] = v
    with tempfile.TemporaryDirectory() as root:
        p = part(root, "paper", "attn,ssd,dma", "1e-2", cells="256:64")
        rows = bench.merge_results(Path(root) / "pm", [p])
        calls = []
        real_plot = matplotlib.axes.Axes.plot

        def rec2(self, *args, **kw):
            calls.append((kw.get("label"), [list(x) for x in args[:2]]))
            return real_plot(self, *args, **kw)

        matplotlib.axes.Axes.plot = rec2
        bench._plot(rows, Path(root) / "p.png")
        matplotlib.axes.Axes.plot = real_plot
        for lab, pts in calls:
            print(f"{lab}: x {pts[0]} y {pts[1]}")
        print("rows:", [(r["mixer"], r["accuracy"], r["paper"]) for r in rows])
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
