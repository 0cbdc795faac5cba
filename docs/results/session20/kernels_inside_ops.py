"""GPU time of the kernels launched inside each of the library's custom operators, per step, from a torch.profiler
Chrome trace (bench.profile's trace-*.json.gz): each kernel is matched to its launch (the runtime event with the same
correlation id) and the launch to the innermost ``wonderful_matrices::`` CPU operator around it on the same thread.

    python docs/results/session20/kernels_inside_ops.py call3_h100/p16/trace-cheems-base-compiled.json.gz 3

(3: the steps the trace holds). Session 20 used it to attribute 6.65 ms per step to the sub-key marginals operators.
"""
import collections
import gzip
import json
import sys


def main(path: str, steps: int, rows: int = 45) -> None:
    events = json.load(gzip.open(path))["traceEvents"]
    complete = [e for e in events if e.get("ph") == "X"]
    ops = collections.defaultdict(list)
    for e in complete:
        if e.get("cat") == "cpu_op" and e["name"].startswith("wonderful_matrices::"):
            ops[e["tid"]].append(e)
    kernels = {e["args"].get("correlation"): e for e in complete if e.get("cat") == "kernel"}
    total = collections.Counter()
    for launch in complete:
        if launch.get("cat") != "cuda_runtime" or "aunch" not in launch["name"]:
            continue
        kernel = kernels.get(launch["args"].get("correlation"))
        around = [o for o in ops[launch["tid"]] if o["ts"] <= launch["ts"] <= o["ts"] + o["dur"]]
        if kernel and around:
            total[(min(around, key=lambda o: o["dur"])["name"], kernel["name"][:60])] += kernel["dur"]
    for (op, kernel), us in total.most_common(rows):
        print(f"{us / steps / 1000:7.3f} ms  {op:45s} {kernel}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
