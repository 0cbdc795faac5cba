"""bench/mqar.py merge_results: budgets and best-lr bookkeeping, on parts derived from one real tiny run."""
import tempfile
import json, copy, shutil
from pathlib import Path
import torch
torch.set_num_threads(1)
from wonderful_matrices.bench import mqar as B

base = Path(tempfile.mkdtemp()); shutil.rmtree(base, ignore_errors=True)
B.run(base / "real", quick=True, device="cpu", steps=3, cells="64:16", mixers="attn,dma",
      learning_rates="1e-3,2e-3", num_test=8, batch_size=4)
real = json.loads((base / "real" / "results.json").read_text())
print("real rows:", [(r["mixer"], r["steps"], r["lr_accuracy"], r["accuracy"], r["best_lr"]) for r in real["rows"]])

def part(name, entries):
    """entries: list of (mixer, {lr: acc}, steps)"""
    d = copy.deepcopy(real)
    rows = []
    for mixer, lra, steps in entries:
        r = copy.deepcopy(next(x for x in real["rows"] if x["mixer"] == mixer))
        best = max(lra, key=lra.get)
        r.update(lr_accuracy=lra, accuracy=lra[best], best_lr=float(best), steps=steps, examples_seen=steps * 4)
        rows.append(r)
    d["rows"] = rows
    (base / name).mkdir(parents=True, exist_ok=True)
    (base / name / "results.json").write_text(json.dumps(d))
    return base / name

def merge(*names, mixed=False):
    try:
        rows = B.merge_results(base / "merged", [base / n for n in names], mixed_budgets=mixed)
        return [(r["mixer"], r["steps"], r["lr_accuracy"], r["accuracy"], r["best_lr"]) for r in rows]
    except ValueError as e:
        return f"ValueError: {e}"

part("A", [("attn", {"1.00e-03": 0.9}, 100)])
part("B", [("attn", {"2.00e-03": 0.5}, 200)])
part("C", [("attn", {"2.00e-03": 0.4}, 100)])
part("D", [("attn", {"1.00e-03": 0.6}, 100)])
part("E", [("dma", {"1.00e-03": 0.95}, 5000)])
part("F", [("attn", {"1.00e-03": 0.3}, 100)])
print("1. lr 2e-3 run with 200 steps (B) and with 100 steps (C): documented error ->", merge("A", "B", "C"))
print("2. lr 1e-3 run twice with 100 steps (A, D), lr 2e-3 with 200 (B): documented OK ->", merge("B", "A", "D"))
print("3. attn@100 steps and dma@5000 steps in one cell, no --mixed-budgets ->", merge("A", "E"))
print("4. lr 1e-3 twice at the same steps, 0.9 then 0.3 (A, F): accuracy vs lr_accuracy ->", merge("A", "F"))
part("G", [("attn", {"2.00e-03": 0.95}, 200)])
print("5. lr 1e-3 run twice with 100 steps (A, D) and lr 2e-3 with 200 steps (G, best): documented OK ->",
      merge("A", "G", "D"))
