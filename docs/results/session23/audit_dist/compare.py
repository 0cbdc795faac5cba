"""compare.py RUN_A RUN_B: per-step train losses (metrics.jsonl) and final weights (latest checkpoint)."""
import json, sys
from pathlib import Path
import torch
from safetensors.torch import load_file
from wonderful_matrices.train import checkpoint as ckpt

def losses(run):
    out = {}
    for line in (Path(run) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("kind", r.get("split")) == "train" or "tokens_per_s" in r:
            out[r["step"]] = r["loss"]
    return out

a, b = sys.argv[1], sys.argv[2]
la, lb = losses(a), losses(b)
worst = 0.0
for s in sorted(set(la) | set(lb)):
    x, y = la.get(s), lb.get(s)
    rel = abs(x - y) / abs(y) if x is not None and y is not None else float("nan")
    worst = max(worst, rel) if rel == rel else worst
    print(f"  step {s}: {x} vs {y}  rel {rel:.2e}")
wa = load_file(ckpt.latest_checkpoint(a) / "model.safetensors")
wb = load_file(ckpt.latest_checkpoint(b) / "model.safetensors")
assert wa.keys() == wb.keys(), (set(wa) ^ set(wb))
wrel = max(((wa[k] - wb[k]).norm() / wb[k].norm().clamp_min(1e-30)).item() for k in wa)
print(f"{a} vs {b}: worst loss rel {worst:.2e}; worst weight rel (per tensor) {wrel:.2e}; "
      f"ckpt {ckpt.latest_checkpoint(a).name} / {ckpt.latest_checkpoint(b).name}")
