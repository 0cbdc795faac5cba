"""The README's tables from the run folders' results.json (usage: python tables.py > tables.md, from this folder or
with the folder as the first argument)."""
import json
import sys
from pathlib import Path

here = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent)
runs = sorted(p.parent for p in here.glob("*/results.json"))
rows = []
for run in runs:
    data = json.loads((run / "results.json").read_text())
    for r in data["rows"]:
        rows.append(dict(r, run=run.name, seed=data["meta"]["seed"]))
rows.sort(key=lambda r: (r["run"], r["mixer"]))

print("## Overall\n")
print("| run | mixer | seed | steps | accuracy | train_s |")
print("|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['run']} | {r['mixer']} | {r['seed']} | {r['steps']} | {r['accuracy']:.4f} | {r['train_s']} |")

print("\n## Accuracy by distance of the queried key (share of the queries, count)\n")
names = [b["bin"] for b in rows[0]["accuracy_by_distance"]]
print("| run | mixer | " + " | ".join(names) + " |")
print("|---|---|" + "---|" * len(names))
for r in rows:
    cells = [f"{b['accuracy']:.4f} ({b['share']:.4f}, {b['queries']})" for b in r["accuracy_by_distance"]]
    print(f"| {r['run']} | {r['mixer']} | " + " | ".join(cells) + " |")

print("\n## What each DMA layer's learned window keeps at the labelled queries\n")
print("| run | mixer | layer | kv_keys_kept | kv_values_kept | own_key_kept | own_value_kept | own_pair_kept | "
      "own_pair_kept by bin (" + " / ".join(names) + ") |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    for m in r["mask_keeps"] or []:
        by = " / ".join("—" if v is None else f"{v:.4f}" for v in m["own_pair_kept_by_distance"])
        print(f"| {r['run']} | {r['mixer']} | {m['layer']} | {m['kv_keys_kept']:.4f} | {m['kv_values_kept']:.4f} | "
              f"{m['own_key_kept']:.4f} | {m['own_value_kept']:.4f} | {m['own_pair_kept']:.4f} | {by} |")
