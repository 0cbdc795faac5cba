"""CDMoE against its targets (docs/design.md), with a breakdown of where the time goes.

Target case: CDMoE with 8 heads × top-16, 8192 tokens × width 1024, bf16, at N = 1024, 2^16 and 2^20 experts; the
backends side by side: ``torch`` (PyTorch mixture and top-k), ``triton`` (Triton mixture and the fused product-key
top-k kernel), ``triton+torch-topk`` (Triton mixture, PyTorch top-k: the path before the fused top-k) and ``dense``
(the mixture as matrix products over all N experts, fused top-k; timed up to ``DENSE_MAX_EXPERTS`` only, since at
2^20 every product would be 8192 × 2^20). For each (N, backend) and mode (``fwd`` under ``no_grad``; ``fwd+bwd``
= gradients of the input and every parameter) the parts are timed separately:

* ``layer``   — the whole CDMoE (shared SwiGLU + routing + mixture);
* ``routing`` — query projection + product-key top-k + softmax (``layer.query`` and ``layer.route``);
* ``topk``    — :func:`~wonderful_matrices.ops.product_key_topk` alone on a fixed query;
* ``mixture`` — :func:`~wonderful_matrices.ops.expert_mixture` alone on fixed ids and gates;
* ``shared``  — the shared SwiGLU.

Also timed at N = 1024 for the "≥ 10× faster than the loop MoE" target: the loop and grouped MoE (SwiGLU experts
of inner width 8 plus a shared SwiGLU of width d, as in ``bench.experts``) with top-8 and top-32 (activation
ratios 0.25 and 1), against CDMoE with 8 heads × top-1 and × top-4 (the same activated counts).
``quick``: 1024 tokens × width 256 in float32 at N = 1024 and 65536 (dense at 1024 only), no MoE rows, for CPU.
Run: ``python -m wonderful_matrices.bench.cdmoe_target --out DIR [--quick] [--backends triton,dense]
[--counts 1024,65536] [--no-moe]`` (the last three restrict what runs).
"""
from __future__ import annotations

import argparse
import gc
import time

import torch

from ..layers import CDMoE
from ..ops import expert_mixture, product_key_topk
from ..ops.common import require, triton_usable
from .common import markdown_table, synchronize, time_callable, write_results
from .experts import EXPERT_WIDTH, RETRIEVAL_DIM, build, measure

TARGET_HEADS, TARGET_TOP_K = 8, 16
PARTS = ("layer", "routing", "topk", "mixture", "shared")
MODES = ("fwd", "fwd+bwd")
TARGET_MS = 8.0  # docs/design.md: fwd+bwd at 2^20 experts
TARGET_GROWTH = 1.5  # docs/design.md: fwd+bwd at 2^20 over fwd+bwd at 1024
MOE_TOP_K = (8, 32)  # loop / grouped MoE at N = 1024 (ratios 0.25 and 1)
DENSE_MAX_EXPERTS = 2 ** 16  # the dense backend is timed up to this N (full size; 1024 in quick mode)


TORCH_TOPK = "triton+torch-topk"


class TorchRoutedCDMoE(CDMoE):
    """CDMoE whose product-key top-k always runs in PyTorch (the baseline of the fused top-k kernel)."""

    def route(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, ids = product_key_topk(query, self.keys.to(query.dtype), self.top_k, backend="torch")
        return scores.softmax(-1), ids


def part_callables(layer: CDMoE, x: torch.Tensor) -> dict:
    """Per part: (forward function, tensors whose gradients fwd+bwd computes)."""
    params = [p for p in layer.parameters() if p.requires_grad]
    with torch.no_grad():
        query = layer.query(x).detach()
        gates, ids = layer.route(query)
    query.requires_grad_(True)
    gates = gates.detach().requires_grad_(True)
    keys = layer.keys
    down, up = layer.down_embed.weight, layer.up_embed.weight
    shared_params = [p for name, p in layer.named_parameters() if name.split(".")[0] in ("gate_proj", "up_proj",
                                                                                          "down_proj")]
    route_params = [layer.queries.weight, keys]
    routing = "torch" if layer.backend == "torch" or isinstance(layer, TorchRoutedCDMoE) else "auto"  # as route
    return {
        "layer": (lambda: layer(x), [x] + params),
        "routing": (lambda: layer.route(layer.query(x))[0], [x] + route_params),
        "topk": (lambda: product_key_topk(query, keys.to(query.dtype), layer.top_k, backend=routing)[0],
                 [query, keys]),
        "mixture": (lambda: expert_mixture(x, ids, gates, down, up, activation=layer.activation,
                                           backend=layer.backend), [x, gates, down, up]),
        "shared": (lambda: layer.shared(x), [x] + shared_params),
    }


def time_part(fn, inputs, mode: str, device, reps: int) -> float:
    """Median ms of ``fn`` (fwd under no_grad) or of fn + gradients of ``inputs`` for a random upstream grad."""
    if mode == "fwd":
        def call():
            with torch.no_grad():
                fn()
    else:
        with torch.no_grad():
            grad_out = torch.randn_like(fn())

        def call():
            torch.autograd.grad(fn(), inputs, grad_out, allow_unused=True)
    call()  # warm-up: compiles and autotunes the kernels
    synchronize(device)
    return time_callable(call, device, warmup=1, reps=reps)


def run(out_dir, quick: bool = False, device=None, backends=None, counts=None, moe: bool = True) -> list[dict]:
    """Time the target case part by part (and the MoE baselines at N = 1024); write results.json / results.md.

    ``backends`` (default: every one usable on the device), ``counts`` (expert counts; default 1024, 2^16 and 2^20,
    quick 1024 and 65536) and ``moe=False`` (no MoE baseline rows) restrict what runs."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokens, width, dtype = (1024, 256, torch.float32) if quick else (8192, 1024, torch.bfloat16)
    counts = tuple(counts or ((1024, 65536) if quick else (1024, DENSE_MAX_EXPERTS, 2 ** 20)))
    dense_max = 1024 if quick else DENSE_MAX_EXPERTS
    reps = 3 if quick else 10
    usable = ["torch", "dense"] + ([TORCH_TOPK, "triton"] if device.type == "cuda" and triton_usable(device) else [])
    unknown = sorted(set(backends or ()) - set(usable))
    require(not unknown, "backends", unknown, f"names from {usable} (on {device.type})")
    backends = [b for b in usable if backends is None or b in backends]
    torch.manual_seed(0)
    rows: list[dict] = []
    started = time.perf_counter()
    x = torch.randn(tokens, width, device=device, dtype=dtype, requires_grad=True)

    def record(row):
        rows.append(row)
        print(f"N={row['N']:>7} {row['what']:<14} {row['backend']:<7} {row['part']:<8} {row['mode']:<7} "
              + (f"{row['time_ms']:9.3f} ms" if row["time_ms"] is not None else f"failed: {row['error']}"),
              flush=True)

    def cdmoe_rows(N: int, heads: int, top_k: int, parts) -> None:
        for backend in backends:
            if backend == "dense" and N > dense_max:
                continue
            what = f"cdmoe {heads}x{top_k}"
            try:
                with torch.device(device):
                    cls = TorchRoutedCDMoE if backend == TORCH_TOPK else CDMoE
                    layer = cls(width, width, N, num_heads=heads, top_k=top_k, retrieval_dim=RETRIEVAL_DIM,
                                backend="triton" if backend == TORCH_TOPK else backend).to(dtype)
                callables = part_callables(layer, x)
            except (RuntimeError, ValueError) as error:  # e.g. out of memory
                for part in parts:
                    for mode in MODES:
                        record(dict(N=N, what=what, backend=backend, part=part, mode=mode, time_ms=None,
                                    error=f"{type(error).__name__}: {str(error)[:200]}"))
                continue
            for part in parts:
                fn, inputs = callables[part]
                for mode in MODES:
                    try:
                        ms, error = time_part(fn, inputs, mode, device, reps), None
                    except (RuntimeError, ValueError) as exc:
                        ms, error = None, f"{type(exc).__name__}: {str(exc)[:200]}"
                    record(dict(N=N, what=what, backend=backend, part=part, mode=mode, time_ms=ms, error=error))
            del layer, callables
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    for N in counts:
        cdmoe_rows(N, TARGET_HEADS, TARGET_TOP_K, PARTS)
    if moe and not quick and 1024 in counts:
        for top_k in MOE_TOP_K:
            cdmoe_rows(1024, 8, top_k // 8, ("layer",))
            for impl in ("grouped_moe", "loop_moe"):
                with torch.device(device):
                    layer = build(impl, width, 1024, top_k).to(dtype)
                for mode in MODES:
                    result = measure(layer, x, mode, device, slow_limit=5.0, time_per_case=1.0)
                    ms, error = (None, result) if isinstance(result, str) else (result[0], None)
                    record(dict(N=1024, what=f"{impl} top-{top_k}", backend="-", part="layer", mode=mode,
                                time_ms=ms, error=error))
                del layer
                gc.collect()

    summary = summarise(rows, counts, judged=not quick and counts[-1] == 2 ** 20)
    meta = {"tokens": tokens, "width": width, "dtype": str(dtype), "device": str(device),
            "target": f"CDMoE {TARGET_HEADS} heads x top-{TARGET_TOP_K}, retrieval dim {RETRIEVAL_DIM}, shared "
                      f"SwiGLU width {width}; MoE experts SwiGLU width {EXPERT_WIDTH} + shared SwiGLU",
            "timing": f"median of {reps} calls after a warm-up (CUDA events on GPU)", "seed": 0,
            "wall_s": round(time.perf_counter() - started, 1), "summary": summary}
    notes = "## Targets\n\n" + markdown_table(summary)
    table = write_results(out_dir, "cdmoe_target", rows, meta,
                          columns=["N", "what", "backend", "part", "mode", "time_ms", "error"], notes=notes)
    print(table)
    print(notes)
    return rows


def summarise(rows: list[dict], counts, judged: bool = True) -> list[dict]:
    """The target checks per backend: fwd+bwd ms at the largest N (<= 8 ms), growth from N = 1024 (<= 1.5x), and
    loop MoE / CDMoE at N = 1024 for equal activated experts (>= 10x). ``met`` is None unless ``judged`` (the
    targets are for the full-size GPU case)."""
    t = {(r["N"], r["what"], r["backend"], r["part"], r["mode"]): r["time_ms"] for r in rows}
    target = f"cdmoe {TARGET_HEADS}x{TARGET_TOP_K}"
    out = []
    for backend in sorted({r["backend"] for r in rows if r["backend"] != "-"}):
        small = t.get((counts[0], target, backend, "layer", "fwd+bwd"))
        large = t.get((counts[-1], target, backend, "layer", "fwd+bwd"))
        out.append({"backend": backend, "check": f"fwd+bwd ms at N={counts[-1]} (target <= {TARGET_MS})",
                    "value": large, "met": None if large is None or not judged else large <= TARGET_MS})
        growth = large / small if large and small else None
        out.append({"backend": backend, "check": f"growth N={counts[0]} -> {counts[-1]} (target <= {TARGET_GROWTH})",
                    "value": growth, "met": None if growth is None or not judged else growth <= TARGET_GROWTH})
        for top_k in MOE_TOP_K:
            for mode in MODES:
                cd = t.get((1024, f"cdmoe 8x{top_k // 8}", backend, "layer", mode))
                for impl in ("loop_moe", "grouped_moe"):
                    moe = t.get((1024, f"{impl} top-{top_k}", "-", "layer", mode))
                    if cd and moe:
                        ratio = moe / cd
                        out.append({"backend": backend, "check": f"{impl}/cdmoe {mode}, N=1024, {top_k} active"
                                    + (" (target >= 10)" if impl == "loop_moe" else ""), "value": ratio,
                                    "met": (ratio >= 10.0) if impl == "loop_moe" else None})
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--quick", action="store_true", help="1024 tokens x 256 in float32 (CPU-sized)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--backends", default=None, help="comma-separated backends to time (default: all usable)")
    parser.add_argument("--counts", default=None, help="comma-separated expert counts (default: 1024,65536,1048576)")
    parser.add_argument("--no-moe", action="store_true", help="skip the loop / grouped MoE rows")
    args = parser.parse_args(argv)
    try:
        counts = [int(n) for n in args.counts.split(",")] if args.counts else None
    except ValueError:
        parser.error(f"--counts={args.counts!r}: comma-separated integers expected")
    try:
        run(args.out, quick=args.quick, device=args.device,
            backends=args.backends.split(",") if args.backends else None, counts=counts, moe=not args.no_moe)
    except ValueError as error:  # a bad --backends name
        parser.error(str(error))


if __name__ == "__main__":
    main()
