"""GPU ms per step by kernel kind, then the 60 largest kernels, from a torch.profiler Chrome trace (session 11's
#17 table):  python trace_kinds.py TRACE.json.gz [STEPS=3]"""
import collections
import gzip
import json
import re
import sys

events = json.load(gzip.open(sys.argv[1]))["traceEvents"]
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 3


def kind(name: str) -> str:
    if re.search(r"nvjet|gemm|cutlass|xmma", name):
        return "matrix products"
    if "cudnn" in name and ("sdpa" in name or "fusion" in name):
        return "cuDNN attention"
    if name.startswith("triton_"):
        return "Inductor"
    if name.startswith("_"):
        return "our Triton: " + name
    return "other ATen"


totals, kernels, calls = collections.Counter(), collections.Counter(), collections.Counter()
for e in events:
    if e.get("cat") == "kernel":
        totals[kind(e["name"])] += e["dur"]
        kernels[e["name"][:120]] += e["dur"]
        calls[e["name"][:120]] += 1
for name, us in totals.most_common():
    print(f"{us / 1e3 / steps:8.2f} ms  {name}")
print("largest kernels: ms per step, calls per step, name")
for name, us in kernels.most_common(60):
    print(f"{us / 1e3 / steps:8.3f} ms {calls[name] / steps:6.0f}  {name}")
