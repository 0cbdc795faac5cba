"""Session 17's two counts from the 4K compiled traces (results.md, "Session 17"): the scatter and zero-fill kernels
per step (this session's trace against session 11's), and the contexts of the (T, 768) float32-to-bf16 cast kernel.

    python docs/results/session17/trace_notes.py   (from the repository root)
"""
import collections
import gzip
import json

TRACES = {"session 11": "docs/results/session11_h100/call1/prof4k/trace-cheems-base-compiled.json.gz",
          "session 17": "docs/results/session17/call2_h100/prof4k/trace-cheems-base-compiled.json.gz"}
STEPS = 3


def kernels(path):
    events = [e for e in json.load(gzip.open(path))["traceEvents"] if e.get("cat") == "kernel"]
    return sorted(events, key=lambda e: e["ts"])


for label, path in TRACES.items():
    ms = sum(e["dur"] for e in kernels(path)
             if "scatter" in e["name"] or "zeros" in e["name"] or "fill" in e["name"].lower()) / STEPS / 1e3
    print(f"{label}: scatter / zeros / fill kernels {ms:.2f} ms per step")

events = kernels(TRACES["session 17"])
casts = [i for i, e in enumerate(events) if e["name"] == "triton_poi_fused__to_copy_view_1"]
print(f"session 17: triton_poi_fused__to_copy_view_1 {len(casts) / STEPS:.0f} calls per step, "
      f"{sum(events[i]['dur'] for i in casts) / STEPS / 1e3:.3f} ms; by the kernels around it (per step):")
around = collections.Counter((events[i - 1]["name"][:50], events[i + 1]["name"][:50]) for i in casts)
for (before, after), n in around.most_common():
    print(f"  {n / STEPS:4.0f}  after {before}  before {after}")
