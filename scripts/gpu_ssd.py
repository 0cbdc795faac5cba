"""Stages of scripts/gpu_ssd.sh (one process each, so a crash or a timeout loses one stage only).

    python scripts/gpu_ssd.py triton   OUT.json   # triton fwd / fwd+bwd at the paper's shape + per-kernel times
    python scripts/gpu_ssd.py torch    OUT.json   # torch backend, eager
    python scripts/gpu_ssd.py compiled OUT.json   # torch backend under torch.compile
    python scripts/gpu_ssd.py mamba    OUT.json   # mamba_ssm's kernels, if importable (benchmark only)
    python scripts/gpu_ssd.py profile  OUT.json   # torch.profiler table of the eager torch backend
    python scripts/gpu_ssd.py table    DIR        # the side-by-side table from DIR/*.json

Shape: batch 8 × 4096 tokens, 64 heads × 64, state 128, 1 group, chunk 256; x, B, C bf16, dt/A/D float32.
Times are medians of CUDA-event timings after warm-up (wonderful_matrices.bench.common.time_callable).
"""
import json
import statistics
import sys
from pathlib import Path

import torch

from wonderful_matrices.bench.common import peak_memory_bytes, time_callable
from wonderful_matrices.bench.ssd import PAPER_SHAPE, make_inputs
from wonderful_matrices.ops import ssd

DEV = torch.device("cuda")
CHUNK = PAPER_SHAPE["chunk"]


def _inputs(requires_grad=False):
    return make_inputs(PAPER_SHAPE, torch.bfloat16, DEV, requires_grad=requires_grad)


def _time_op(fn, name):
    """fwd and fwd+bwd (autograd.grad w.r.t. every input) of ``fn(**inputs)``, and peak memory of fwd+bwd."""
    inputs = _inputs()
    with torch.no_grad():
        fwd = time_callable(lambda: fn(**inputs), DEV, warmup=3, reps=30)
    grads = _inputs(requires_grad=True)
    leaves = list(grads.values())
    gy = torch.randn_like(fn(**grads))

    def step():
        return torch.autograd.grad(fn(**grads), leaves, gy)
    fwd_bwd = time_callable(step, DEV, warmup=3, reps=30)
    peak = peak_memory_bytes(step, DEV)
    return {"implementation": name, "fwd_ms": fwd, "fwd_bwd_ms": fwd_bwd, "peak_gb": peak / 1e9}


class _KernelTimer:
    """timer(name, fn) for forward_kernels / backward_kernels: CUDA events around each launch."""

    def __init__(self):
        self.samples = {}
        self.pending = []

    def __call__(self, name, fn):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        self.pending.append((name, start, end))

    def collect(self):
        torch.cuda.synchronize()
        for name, start, end in self.pending:
            self.samples.setdefault(name, []).append(start.elapsed_time(end))
        self.pending.clear()

    def medians(self):
        return {k: statistics.median(v) for k, v in self.samples.items()}


def stage_triton():
    from wonderful_matrices.ops.ssd import triton as kernels

    row = _time_op(lambda **kw: ssd(**kw, chunk_size=CHUNK, backend="triton"), "triton")
    inp = _inputs()
    x, dt, A, B, C, D = (inp[k] for k in ("x", "dt", "A", "B", "C", "D"))
    dy = torch.randn_like(x)
    dfinal = torch.randn(x.shape[0], x.shape[2], x.shape[3], B.shape[3], device=DEV)
    timer = _KernelTimer()
    for rep in range(13):
        y, cum, cb, states, plan = kernels.forward_kernels(x, dt, A, B, C, D, None, CHUNK, timer=timer)
        kernels.backward_kernels(dy, dfinal, x, dt, A, B, C, D, cum, cb, states, plan, timer=timer)
        timer.collect()
        if rep < 3:  # warm-up (compilation) samples are dropped
            timer.samples.clear()
    row["kernels_ms"] = timer.medians()
    row["config"] = {k: list(v) for k, v in kernels.CONFIG.items()}
    row["plan"] = {k: getattr(plan, k) for k in ("q", "nc", "bq", "bp", "bn", "hpp", "nsplit", "state_block")}
    # accuracy at the benchmark shape against the float32 torch backend on the same bf16 inputs
    with torch.no_grad():
        ref = ssd(**{k: v.float() for k, v in inp.items()}, chunk_size=CHUNK, backend="torch")
        out = ssd(**inp, chunk_size=CHUNK, backend="triton").float()
    row["rel_err_vs_torch_fp32"] = ((out - ref).norm() / ref.norm()).item()
    return row


def stage_torch():
    return _time_op(lambda **kw: ssd(**kw, chunk_size=CHUNK, backend="torch"), "torch eager")


def stage_profile():
    """Which operations dominate the torch backend's eager fwd+bwd (torch.profiler, top 15 by CUDA time)."""
    from torch.profiler import ProfilerActivity, profile

    grads = _inputs(requires_grad=True)
    leaves = list(grads.values())

    def step():
        y = ssd(**grads, chunk_size=CHUNK, backend="torch")
        return torch.autograd.grad(y, leaves, torch.ones_like(y))
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    text = prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=60)
    print(text)
    return {"implementation": "torch eager profile", "note": "see the log for the op table", "profile": text}


def stage_compiled():
    compiled = torch.compile(lambda **kw: ssd(**kw, chunk_size=CHUNK, backend="torch"))
    return _time_op(compiled, "torch compiled")


def stage_mamba():
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as exc:  # optional, benchmark only
        return {"implementation": "mamba_ssm", "note": f"not importable: {type(exc).__name__}: {exc}"[:200]}

    def fn(x, dt, A, B, C, D):
        return mamba_chunk_scan_combined(x, dt, A, B, C, CHUNK, D=D)
    return _time_op(fn, "mamba_ssm")


def table(directory: Path) -> str:
    rows = []
    for path in sorted(directory.glob("*.json")):
        row = json.loads(path.read_text())
        if "profile" not in row:
            rows.append(row)
    lines = []
    triton_row = next((r for r in rows if r.get("implementation") == "triton" and "kernels_ms" in r), None)
    if triton_row:
        lines.append(f"triton plan {triton_row['plan']}  rel_err vs torch fp32: {triton_row['rel_err_vs_torch_fp32']:.2e}")
        lines.append(f"{'kernel':<18}{'ms':>9}")
        for name, ms in triton_row["kernels_ms"].items():
            lines.append(f"{name:<18}{ms:>9.3f}")
        fwd = sum(v for k, v in triton_row["kernels_ms"].items()
                  if k in ("cumsum", "cb", "chunk_state", "state_pass", "output"))
        lines.append(f"{'sum forward':<18}{fwd:>9.3f}")
        lines.append(f"{'sum all':<18}{sum(triton_row['kernels_ms'].values()):>9.3f}")
        lines.append("")
    ref = {"implementation": "mamba_ssm (PAPER.md)", "fwd_ms": 1.14, "fwd_bwd_ms": 5.17}
    lines.append(f"SSD b8 x l4096, h64 x p64, n128, g1, chunk 256, bf16 (H200)")
    lines.append(f"{'implementation':<24}{'fwd ms':>9}{'fwd+bwd ms':>12}{'peak GB':>9}{'fwd+bwd / mamba':>17}  note")
    done = {r.get("implementation") for r in rows}
    for name in ("triton", "torch eager", "torch compiled", "mamba_ssm"):
        if name not in done:
            rows.append({"implementation": name, "note": "stage failed or timed out: see the log"})
    for r in rows + [ref]:
        f, fb, pk = r.get("fwd_ms"), r.get("fwd_bwd_ms"), r.get("peak_gb")
        ratio = f"{fb / 5.17:.2f}" if fb else "-"
        lines.append(f"{r['implementation']:<24}{f if f is None else round(f, 3)!s:>9}"
                     f"{fb if fb is None else round(fb, 3)!s:>12}{pk if pk is None else round(pk, 2)!s:>9}"
                     f"{ratio:>17}  {r.get('note', '')}")
    return "\n".join(lines)


def main():
    stage, target = sys.argv[1], Path(sys.argv[2])
    if stage == "table":
        print(table(target))
        return
    row = {"triton": stage_triton, "torch": stage_torch, "compiled": stage_compiled, "mamba": stage_mamba,
           "profile": stage_profile}[stage]()
    target.write_text(json.dumps(row, indent=1))
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
