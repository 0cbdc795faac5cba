"""Experiment 3 `experts` (claim 3): expert retrieval time of state mixers side by side.

Layers, all at the same model width ``d``: loop MoE (the paper's "SEIMoE"), grouped MoE (sorted dispatch, grouped
GEMM on CUDA), PKM, PEER (both with the default backend: Triton kernels on CUDA), CDMoE with the torch backend of
the expert mixture and CDMoE with the triton backend (CUDA only; skipped elsewhere). For every number of experts
``N`` and activation ratio ``r``,
each token activates ``m = max(1, round(r·√N))`` experts:

* MoE: ``top_k = m`` routed SwiGLU experts of inner width ``EXPERT_WIDTH`` (8: the narrowest grouped-GEMM-aligned
  expert; CDMoE's experts are single neurons) plus a shared SwiGLU of inner width ``d``.
* CDMoE: ``heads × top_k = m`` with ``heads`` the largest divisor of ``m`` not above 8 (so 1024 experts at
  r = 0.25..1 are 8 heads × 1..4, and 2^20 experts are 8 heads × 32..128), retrieval dim 64, shared SwiGLU of
  inner width ``d`` (the same shared part as the MoE).
* PEER and PKM: the same heads, top-k and retrieval dim, no shared part (as in their papers).

Forward is timed under ``torch.no_grad()``; forward+backward computes the gradients of the input and every
parameter. Median of several calls (CUDA events on GPU), peak memory of one call (GPU), parameter counts.
Skipped (recorded with the reason): the loop MoE above 1024 experts or where one call takes more than 2 s; any
configuration whose estimated memory does not fit; off CUDA the grouped MoE above 1024 experts or where one call
takes more than 2 s (its CPU path is a per-expert loop). ``--quick`` runs N in {16, 256, 1024, 65536} at ratios
0.25 and 1, both MoEs up to 256 experts, with a 1 s limit per call and shorter timing. Also timed: CDMoE (both
backends) with 8 heads × top-16 (the target of docs/design.md) at N = 1024 and the largest N (rows with ratio "8x16").
Run: ``python -m wonderful_matrices.bench.experts --out DIR [--quick]``.
"""
from __future__ import annotations

import argparse
import gc
import math
import time
from pathlib import Path

import torch

from ..layers import PEER, PKM, CDMoE, MoE
from ..ops.common import triton_usable
from .common import markdown_table, peak_memory_bytes, synchronize, time_callable, write_results

EXPERT_COUNTS = (16, 64, 256, 1024, 4096, 16384, 65536, 2 ** 20)
QUICK_EXPERT_COUNTS = (16, 256, 1024, 65536)
RATIOS = (0.25, 0.5, 0.75, 1.0)
QUICK_RATIOS = (0.25, 1.0)
IMPLEMENTATIONS = ("loop_moe", "grouped_moe", "pkm", "peer", "cdmoe", "cdmoe_triton")
CDMOE_IMPLEMENTATIONS = ("cdmoe", "cdmoe_triton")
MODES = ("fwd", "fwd+bwd")
EXPERT_WIDTH = 8
RETRIEVAL_DIM = 64
MAX_HEADS = 8
TARGET_SPLIT = (8, 16)  # the target configuration of docs/design.md (heads, top_k), timed at N = 1024 and the largest N
TARGET_RATIO = "8x16"  # its `ratio` label in the rows
LOOP_MAX_EXPERTS = (1024, 256)  # full, quick: the loop MoE (and the grouped MoE off CUDA) run up to this N
SLOW_CALL_S = (2.0, 1.0)  # full, quick
TIME_PER_CASE_S = (0.25, 0.05)  # full, quick: timed calls per case ~ this budget / one call, within [3, 20]

# The paper's figure, N = 1024 experts (ms; docs/design.md), by activation ratio.
PAPER_N1024 = {
    "loop_moe": (593, 923, 1220, 1494),
    "pkm": (110, 190, 296, 441),
    "peer": (61, 110, 174, 240),
    "cdmoe": (54, 100, 148, 200),
}
LABELS = {"loop_moe": "loop MoE (SEIMoE)", "grouped_moe": "grouped MoE", "pkm": "PKM", "peer": "PEER",
          "cdmoe": "CDMoE (torch)", "cdmoe_triton": "CDMoE (triton)"}
PAPER_LABELS = {"loop_moe": "SEIMoE", "pkm": "PKM", "peer": "PEER", "cdmoe": "CDMoE"}


def split_heads(activated: int) -> tuple[int, int]:
    """Activated experts ``m`` -> (heads, top_k per head): heads = the largest divisor of m not above 8."""
    heads = max(h for h in range(1, MAX_HEADS + 1) if activated % h == 0)
    return heads, activated // heads


def build(impl: str, width: int, num_experts: int, activated: int, heads: int | None = None) -> torch.nn.Module:
    """The layer ``impl`` with ``num_experts`` experts, ``activated`` of them per token (float32, current device);
    product-key layers use ``heads`` heads (default :func:`split_heads`)."""
    heads, top_k = split_heads(activated) if heads is None else (heads, activated // heads)
    if impl in ("loop_moe", "grouped_moe"):
        return MoE(width, EXPERT_WIDTH, num_experts, activated, shared_intermediate_size=width,
                   implementation="loop" if impl == "loop_moe" else "grouped")
    if impl in CDMOE_IMPLEMENTATIONS:
        return CDMoE(width, width, num_experts, num_heads=heads, top_k=top_k, retrieval_dim=RETRIEVAL_DIM,
                     backend="triton" if impl == "cdmoe_triton" else "torch")
    if impl == "peer":
        return PEER(width, num_experts, num_heads=heads, top_k=top_k, key_dim=RETRIEVAL_DIM)
    return PKM(width, num_experts, num_heads=heads, top_k=top_k, key_dim=RETRIEVAL_DIM)


def parameter_count(impl: str, width: int, num_experts: int, activated: int, heads: int | None = None) -> int:
    """Parameters of the layer :func:`build` makes, without building it."""
    heads = split_heads(activated)[0] if heads is None else heads
    shared = 3 * width * width
    router = width * heads * RETRIEVAL_DIM + heads * 2 * math.isqrt(num_experts) * RETRIEVAL_DIM // 2
    if impl in ("loop_moe", "grouped_moe"):
        return width * num_experts + 3 * num_experts * EXPERT_WIDTH * width + shared
    if impl in CDMOE_IMPLEMENTATIONS:
        return shared + router + 2 * num_experts * width
    if impl == "peer":
        return router + 2 * num_experts * width
    return router + num_experts * width


def memory_estimate(impl: str, width: int, num_experts: int, activated: int, tokens: int, elem: int) -> int:
    """Rough upper estimate of the bytes forward+backward needs: weights, their gradients and a float32 copy
    made while building, plus the activations each layer keeps."""
    params = parameter_count(impl, width, num_experts, activated)
    weights = params * (2 * elem + 4)
    if impl in ("loop_moe", "grouped_moe"):
        acts = 4 * 4 * tokens * num_experts + 8 * tokens * activated * (width + 2 * EXPERT_WIDTH) * elem
    else:
        acts = 4 * 4 * tokens * 2 * math.isqrt(num_experts) * split_heads(activated)[0] + 16 * tokens * width * elem
    return weights + acts + 32 * tokens * activated


def memory_budget(device: torch.device) -> int:
    """Bytes a configuration may use: 85% of the free GPU memory, or 3 GB on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.85 * free)
    return 3 * 2 ** 30


def skip_reason(impl: str, num_experts: int, estimate: int, budget: int, device: torch.device,
                quick: bool = False) -> str | None:
    """Why a configuration is not run, or None."""
    limit = LOOP_MAX_EXPERTS[quick]
    if impl == "cdmoe_triton" and not (device.type == "cuda" and triton_usable(device)):
        return "the triton backend needs a CUDA device and triton"
    if impl == "loop_moe" and num_experts > limit:
        return f"loop MoE is run up to {limit} experts (one host sync per expert)"
    if impl == "grouped_moe" and device.type != "cuda" and num_experts > limit:
        return f"grouped MoE off CUDA is a per-expert segment loop; run up to {limit} experts"
    if estimate > budget:
        return f"needs ~{estimate / 2 ** 30:.1f} GiB, budget {budget / 2 ** 30:.1f} GiB"
    return None


def slow_limit(impl: str, device: torch.device, quick: bool) -> float | None:
    """Seconds one call may take before the case is skipped: the loop MoE always, the grouped MoE off CUDA."""
    if impl == "loop_moe" or (impl == "grouped_moe" and device.type != "cuda"):
        return SLOW_CALL_S[quick]
    return None


def _one_call_seconds(fn, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def measure(layer: torch.nn.Module, x: torch.Tensor, mode: str, device: torch.device, slow_limit: float | None,
            time_per_case: float = TIME_PER_CASE_S[0]):
    """Time one layer in one mode. Returns (median ms, peak bytes or None, reps) or a skip reason string."""
    params = [p for p in layer.parameters() if p.requires_grad]
    grad_out = torch.randn_like(x)

    if mode == "fwd":
        def fn():
            with torch.no_grad():
                layer(x)
    else:
        def fn():
            y = layer(x)
            torch.autograd.grad(y, [x] + params, grad_out, allow_unused=True)

    first = _one_call_seconds(fn, device)  # also the warm-up
    if slow_limit is not None and first > slow_limit:
        return f"one call took {first:.1f} s (> {slow_limit:.0f} s)"
    reps = int(min(20, max(3, time_per_case / max(first, 1e-6))))
    ms = time_callable(fn, device, warmup=1, reps=reps)
    peak = peak_memory_bytes(fn, device)
    return ms, peak, reps


def summarise(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Ratios loop/CDMoE and grouped/CDMoE per (N, ratio, mode, CDMoE backend); CDMoE growth from N = 1024 to the
    largest N (the ``cdmoe`` column names the CDMoE implementation: ``cdmoe`` torch, ``cdmoe_triton``)."""
    times = {(r["N"], r["ratio"], r["impl"], r["mode"]): r["time_ms"] for r in rows if r["time_ms"] is not None}
    ratios = []
    order = sorted(times.items(), key=lambda item: (item[0][0], str(item[0][1]), item[0][2:]))
    for (N, ratio, impl, mode), ms in order:
        if impl not in CDMOE_IMPLEMENTATIONS or ratio == TARGET_RATIO:
            continue
        loop, grouped = times.get((N, ratio, "loop_moe", mode)), times.get((N, ratio, "grouped_moe", mode))
        ratios.append({"N": N, "ratio": ratio, "mode": mode, "cdmoe": impl, "cdmoe_ms": ms,
                       "loop/cdmoe": loop / ms if loop else None, "grouped/cdmoe": grouped / ms if grouped else None})
    growth = []
    for cdmoe in CDMOE_IMPLEMENTATIONS:
        for ratio in RATIOS + (TARGET_RATIO,):
            for mode in MODES:
                measured = sorted(N for (N, r, impl, m) in times if impl == cdmoe and r == ratio and m == mode)
                if 1024 in measured and measured[-1] > 1024:
                    base, top = times[(1024, ratio, cdmoe, mode)], times[(measured[-1], ratio, cdmoe, mode)]
                    growth.append({"cdmoe": cdmoe, "ratio": ratio, "mode": mode, "cdmoe_ms_N1024": base,
                                   "largest_N": measured[-1], "cdmoe_ms_largest": top, "growth": top / base})
    return ratios, growth


def plot(rows: list[dict], path: Path, device_name: str) -> None:
    """Time against activation ratio (log y), one panel per N and mode, with the paper's N = 1024 curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted({r["N"] for r in rows})
    fig, axes = plt.subplots(len(MODES), len(counts), figsize=(3.2 * len(counts), 6.4), squeeze=False,
                             sharex=True)
    colors = dict(zip(IMPLEMENTATIONS, ("tab:red", "tab:purple", "tab:green", "tab:orange", "tab:blue",
                                           "tab:cyan")))
    for i, mode in enumerate(MODES):
        for j, N in enumerate(counts):
            ax = axes[i][j]
            for impl in IMPLEMENTATIONS:
                pts = sorted((r["ratio"], r["time_ms"]) for r in rows
                             if r["N"] == N and r["mode"] == mode and r["impl"] == impl and r["time_ms"] is not None
                             and r["ratio"] != TARGET_RATIO)
                if pts:
                    ax.plot(*zip(*pts), "o-", color=colors[impl], label=LABELS[impl])
                if N == 1024 and impl in PAPER_N1024:
                    ax.plot(RATIOS, PAPER_N1024[impl], "x:", color=colors[impl], alpha=0.6,
                            label=f"paper: {PAPER_LABELS[impl]}")
            ax.set_yscale("log")
            ax.set_title(f"N = {N}, {mode}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            if j == 0:
                ax.set_ylabel("time (ms)")
            if i == len(MODES) - 1:
                ax.set_xlabel("activation ratio")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8)
    fig.suptitle(f"Expert retrieval time ({device_name}); dotted: the paper's figure at N = 1024", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(out_dir, quick: bool = False, device=None, counts=None, ratios=None) -> list[dict]:
    """Run experiment 3 and write results.json, results.md and experts.png into ``out_dir``; return the rows.

    Full: 8192 tokens × width 1024 in bf16 (meant for one GPU). ``quick``: 1024 tokens × width 256 in float32.
    ``counts`` / ``ratios`` restrict the grid (default: all of docs/design.md's, or the quick subset).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokens, width, dtype = (1024, 256, torch.float32) if quick else (8192, 1024, torch.bfloat16)
    default_counts, default_ratios = (QUICK_EXPERT_COUNTS, QUICK_RATIOS) if quick else (EXPERT_COUNTS, RATIOS)
    counts, ratios = tuple(counts or default_counts), tuple(ratios or default_ratios)
    for n in counts:
        if math.isqrt(n) ** 2 != n:
            raise ValueError(f"counts={counts!r} is not allowed: every expert count must be a perfect square")
    elem = torch.finfo(dtype).bits // 8
    torch.manual_seed(0)
    rows: list[dict] = []
    started = time.perf_counter()

    def case(impl: str, N: int, ratio, activated: int, heads: int | None = None) -> None:
        """Build one layer, time both modes, append two rows."""
        retrieval = impl in ("pkm", "peer") + CDMOE_IMPLEMENTATIONS
        heads = (split_heads(activated)[0] if heads is None else heads) if retrieval else None
        base = {"N": N, "ratio": ratio, "activated": activated, "impl": impl, "heads": heads,
                "top_k": activated // heads if retrieval else activated,
                "params": parameter_count(impl, width, N, activated, heads)}
        estimate = memory_estimate(impl, width, N, activated, tokens, elem)
        reason = skip_reason(impl, N, estimate, memory_budget(device), device, quick)
        layer = x = None
        if reason is None:
            with torch.device(device):
                layer = build(impl, width, N, activated, heads).to(dtype)
            x = torch.randn(tokens, width, device=device, dtype=dtype, requires_grad=True)
        for mode in MODES:
            row = dict(base, mode=mode, time_ms=None, peak_mem_mb=None, reps=None, skipped=reason)
            if reason is None:
                try:
                    result = measure(layer, x, mode, device, slow_limit(impl, device, quick), TIME_PER_CASE_S[quick])
                except torch.cuda.OutOfMemoryError:
                    result = "out of GPU memory"
                if isinstance(result, str):
                    row["skipped"] = result
                else:
                    ms, peak, reps = result
                    row.update(time_ms=ms, reps=reps, peak_mem_mb=None if peak is None else peak / 2 ** 20)
            rows.append(row)
            print(f"N={N:>7} r={ratio!s:<5} {impl:<11} {mode:<7} "
                  + (f"{row['time_ms']:9.3f} ms" if row["time_ms"] is not None else f"skipped: {row['skipped']}"),
                  flush=True)
        del layer, x
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    for N in counts:
        for ratio in ratios:
            for impl in IMPLEMENTATIONS:
                case(impl, N, ratio, max(1, round(ratio * math.isqrt(N))))
    heads, top_k = TARGET_SPLIT
    for N in (1024, counts[-1]):  # docs/design.md's target: 8 heads × top-16 at 1024 and at the largest N
        for impl in CDMOE_IMPLEMENTATIONS:
            case(impl, N, TARGET_RATIO, heads * top_k, heads)
    versus_cdmoe, growth = summarise(rows)
    meta = {
        "tokens": tokens, "width": width, "dtype": str(dtype), "device": str(device),
        "expert_counts": list(counts), "ratios": list(ratios),
        "moe_expert": f"SwiGLU, inner width {EXPERT_WIDTH}; shared SwiGLU inner width {width}",
        "cdmoe": f"heads = largest divisor of m <= {MAX_HEADS}, top_k = m / heads, retrieval dim {RETRIEVAL_DIM}, "
                 f"shared SwiGLU inner width {width}",
        "pkm_peer": "same heads/top_k/retrieval dim as CDMoE, no shared part",
        "timing": f"median of 3..20 calls (~{TIME_PER_CASE_S[quick]} s per case) after one warm-up; fwd under "
                  f"no_grad; skip after one call > {SLOW_CALL_S[quick]} s (loop MoE; grouped MoE off CUDA)",
        "seed": 0, "wall_s": round(time.perf_counter() - started, 1),
        "target_case": f"CDMoE {TARGET_SPLIT[0]} heads x top-{TARGET_SPLIT[1]} at N = 1024 and {counts[-1]} "
                       f"(rows with ratio {TARGET_RATIO!r})",
        "ratios_vs_cdmoe": versus_cdmoe, "cdmoe_growth": growth,
    }
    notes = ("## Ratios to CDMoE\n\n" + markdown_table(versus_cdmoe)
             + "\n## CDMoE growth from N = 1024 to the largest N\n\n"
             + markdown_table(growth) + "\n## The paper's figure, N = 1024 (ms)\n\n"
             + markdown_table([{"ratio": r, **{PAPER_LABELS[k]: v[i] for k, v in PAPER_N1024.items()}}
                               for i, r in enumerate(RATIOS)]))
    columns = ["N", "ratio", "activated", "impl", "heads", "top_k", "mode", "time_ms", "peak_mem_mb", "params",
               "reps", "skipped"]
    table = write_results(out_dir, "experts", rows, meta, columns=columns, notes=notes)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    plot(rows, Path(out_dir) / "experts.png", device_name)
    print(table)
    print(notes)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--quick", action="store_true", help="1024 tokens × 256 in float32 (CPU-sized)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--counts", type=int, nargs="+", default=None,
                        help="expert counts to run (perfect squares; default: the full or quick list)")
    parser.add_argument("--ratios", type=float, nargs="+", default=None,
                        help="activation ratios to run (default: 0.25 0.5 0.75 1.0, or 0.25 1.0 with --quick)")
    args = parser.parse_args(argv)
    run(args.out, quick=args.quick, device=args.device, counts=args.counts, ratios=args.ratios)


if __name__ == "__main__":
    main()
