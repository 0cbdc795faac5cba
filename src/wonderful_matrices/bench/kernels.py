"""The fast paths against the best existing ones (docs/design.md, "Benchmarks"), in one run.

Runs the per-op benchmark modules that exist in this build into sub-folders of ``out_dir`` — ``ssd`` (ours
against the recurrence on CPU; on CUDA at the paper's shape, beside the ``mamba_ssm`` reference numbers of
docs/design.md, labelled as references), ``dma`` (against SDPA causal with the cuDNN backend and FlexAttention, and
the decode step with a bounded cache), ``experts`` (CDMoE against loop / grouped MoE, PKM, PEER) — and adds:

* ``cdmoe_mixture``: the expert mixture of CDMoE, ``wm.ops.expert_mixture`` (embedding-bag reductions, no
  gathered copy of expert rows) against the plain gather formulation (index the ``down``/``up`` tables,
  einsum), forward and forward+backward;
* ``mamba_ssm``: when ``mamba_ssm`` is importable on CUDA, its ``mamba_chunk_scan_combined`` timed beside our
  ``wm.ops.ssd`` on the same inputs (``mamba_ssm`` is a benchmark-only optional dependency).
* ``lm_loss``: the LM head and its loss at cheems-base's shape (32768 tokens, width 768, vocabulary 32768; bf16 on
  CUDA), ``wm.ops.linear_cross_entropy`` at several chunk sizes (and, on CUDA, with its rows in PyTorch rather than
  its Triton kernel) against ``F.cross_entropy`` of the whole float32 logits, eager and (on CUDA) under
  ``torch.compile``; forward, forward+backward and the forward+backward's peak memory above the inputs.

Writes the combined rows to ``results.json`` / ``results.md`` and each part's own files under its folder.
"""
from __future__ import annotations

import importlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..ops import expert_mixture, linear_cross_entropy, ssd
from .common import peak_memory_bytes, time_callable, write_results
from .ssd import CHEEMS_SHAPE, PAPER_SHAPE, make_inputs

PARTS = ("ssd", "dma", "experts")


def _fwd_bwd(fn, inputs):
    def call():
        out = fn()
        torch.autograd.grad(out.float().sum(), inputs)
    return call


def cdmoe_mixture_rows(quick: bool, device: torch.device, shape: tuple[int, int, int, int] | None = None,
                       experts: tuple[int, ...] | None = None) -> list[dict]:
    """``expert_mixture`` against the gather formulation for each expert count in ``experts``;
    ``shape`` = (tokens, width, heads, top-k)."""
    tokens, width, heads, k = shape or ((1024, 256, 4, 8) if quick else (8192, 1024, 8, 16))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for n in experts or ((1024, 16384) if quick else (1024, 65536, 1 << 20)):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(tokens, width, generator=gen).to(device, dtype).requires_grad_()
        down = (torch.randn(n, width, generator=gen) / width ** 0.5).to(device, dtype).requires_grad_()
        up = (torch.randn(n, width, generator=gen) / width ** 0.5).to(device, dtype).requires_grad_()
        ids = torch.randint(0, n, (tokens, heads, k), generator=gen).to(device)
        gates = torch.softmax(torch.randn(tokens, heads, k, generator=gen), -1).to(device, dtype).requires_grad_()

        def ours():
            return expert_mixture(x, ids, gates, down, up)

        def gather():
            d, u = down[ids], up[ids]                                      # (t, h, k, width) each
            act = torch.nn.functional.silu(torch.einsum("tw,thkw->thk", x, d))
            return torch.einsum("thk,thkw->tw", act * gates, u)

        inputs = (x, down, up, gates)
        reps = 3 if quick else 10
        for name, fn in (("expert_mixture (ours)", ours), ("gather + einsum", gather)):
            row = {"part": "cdmoe_mixture", "implementation": name, "experts": n, "tokens": tokens,
                   "width": width, "heads_x_topk": f"{heads}x{k}", "dtype": str(dtype).replace("torch.", "")}
            try:
                with torch.no_grad():
                    row["fwd_ms"] = time_callable(fn, device, warmup=1, reps=reps)
                row["fwd_bwd_ms"] = time_callable(_fwd_bwd(fn, inputs), device, warmup=1, reps=reps)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                row["note"] = "out of memory"
            rows.append(row)
    return rows


def mamba_ssm_rows(device: torch.device) -> list[dict]:
    """Ours against ``mamba_ssm``'s chunked scan on CUDA at the paper's and cheems-base's SSD shapes (bf16 x, B, C;
    float32 dt, A; no D), forward and forward+backward; each row carries ``over_mamba_ssm`` = its time over
    mamba_ssm's at the same shape. [] when mamba_ssm is not importable."""
    if device.type != "cuda":
        return []
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError:
        return []
    rows = []
    for shape_name, shape in (("paper", PAPER_SHAPE), ("cheems-base", CHEEMS_SHAPE)):
        inputs = make_inputs(shape, torch.bfloat16, device, requires_grad=True)
        x, dt, A, B, C = (inputs[name] for name in ("x", "dt", "A", "B", "C"))
        chunk = shape["chunk"]
        pair = []
        for name, fn in (("wm.ops.ssd", lambda: ssd(x, dt, A, B, C, chunk_size=chunk)),
                         ("mamba_ssm mamba_chunk_scan_combined",
                          lambda: mamba_chunk_scan_combined(x, dt, A, B, C, chunk))):
            with torch.no_grad():
                fwd = time_callable(fn, device, warmup=3, reps=20)
            pair.append({"part": "mamba_ssm", "implementation": name, "shape": shape_name,
                         "tokens": shape["batch"] * shape["length"], "heads": shape["heads"],
                         "head_dim": shape["head_dim"], "state": shape["state"], "chunk": chunk, "dtype": "bfloat16",
                         "fwd_ms": fwd, "fwd_bwd_ms": time_callable(_fwd_bwd(fn, (x, dt, A, B, C)), device,
                                                                    warmup=3, reps=20)})
        theirs = pair[1]
        for row in pair:
            row["over_mamba_ssm"] = {part: round(row[part] / theirs[part], 3) for part in ("fwd_ms", "fwd_bwd_ms")}
        rows += pair
    return rows


def lm_loss_rows(quick: bool, device: torch.device, shape: tuple[int, int, int] | None = None,
                 chunks: tuple[int | None, ...] = (None, 4096, 8192)) -> list[dict]:
    """The LM head + loss: ``linear_cross_entropy`` at each of ``chunks`` (None: its default) against
    ``F.cross_entropy`` of the whole float32 logits (eager, and compiled on CUDA); ``shape`` = (tokens, width,
    vocabulary)."""
    n, d, vocab = shape or ((2048, 64, 1024) if quick else (32768, 768, 32768))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, d, generator=gen).to(device, dtype).requires_grad_()
    weight = (torch.randn(vocab, d, generator=gen) / d ** 0.5).to(device, dtype).requires_grad_()
    targets = torch.randint(0, vocab, (n,), generator=gen).to(device)

    def whole_logits(h, w):
        return F.cross_entropy((h @ w.T).float(), targets)

    impls = [(f"linear_cross_entropy, chunk {c or 'default'}", c,
              lambda c=c: linear_cross_entropy(hidden, weight, targets, chunk_size=c)) for c in chunks]
    if device.type == "cuda":  # "auto" is the Triton rows there; the same loop with the rows in PyTorch
        impls.append(("linear_cross_entropy, PyTorch rows, chunk default", None,
                      lambda: linear_cross_entropy(hidden, weight, targets, backend="torch")))
    impls.append(("F.cross_entropy, whole float32 logits", None, lambda: whole_logits(hidden, weight)))
    if device.type == "cuda":
        compiled = torch.compile(whole_logits)
        impls.append(("F.cross_entropy, whole logits, torch.compile", None, lambda: compiled(hidden, weight)))
    reps = 3 if quick else 10
    rows = []
    for name, chunk, fn in impls:
        row = {"part": "lm_loss", "implementation": name, "tokens": n, "width": d, "vocab": vocab, "chunk": chunk,
               "dtype": str(dtype).replace("torch.", "")}
        try:
            with torch.no_grad():
                row["fwd_ms"] = time_callable(fn, device, warmup=1, reps=reps)
            step = _fwd_bwd(fn, (hidden, weight))
            row["fwd_bwd_ms"] = time_callable(step, device, warmup=1, reps=reps)
            peak = peak_memory_bytes(step, device)
            row["peak_mb"] = None if peak is None else round(peak / 2 ** 20, 1)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            row["note"] = "out of memory"
        rows.append(row)
    return rows


def run(out_dir, quick: bool = False, device=None, parts=PARTS, cdmoe_shape=None, cdmoe_experts=None,
        loss_shape=None) -> list[dict]:
    """Run the per-op benchmarks ``parts`` that exist into ``out_dir/<part>``, plus the CDMoE mixture, ``mamba_ssm``
    and LM-loss comparisons (``loss_shape``: see :func:`lm_loss_rows`); write ``results.json`` / ``results.md``
    (this module's own rows; each part's rows are in its folder and in the returned list); return all rows."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out_dir)
    start = time.perf_counter()
    rows, done = [], {}
    for part in parts:
        try:
            module = importlib.import_module(f"wonderful_matrices.bench.{part}")
        except ModuleNotFoundError as e:
            if e.name != f"wonderful_matrices.bench.{part}":
                raise
            done[part] = "not in this build"
            continue
        t0 = time.perf_counter()
        part_rows = module.run(out / part, quick=quick, device=device)
        done[part] = f"{len(part_rows)} rows in {time.perf_counter() - t0:.1f} s -> {part}/results.md"
        rows += [{"part": part, **r} for r in part_rows]
    own = cdmoe_mixture_rows(quick, device, cdmoe_shape, cdmoe_experts)
    mamba = mamba_ssm_rows(device)
    own += mamba + lm_loss_rows(quick, device, loss_shape)
    rows += own
    meta = {"quick": quick, "device": str(device), "parts": done,
            "mamba_ssm": "measured side by side" if mamba else
            "not importable here: compare the ssd part with the reference numbers of docs/design.md (labelled there)",
            "wall_s": round(time.perf_counter() - start, 1)}
    columns = ["part", "implementation", "shape", "experts", "tokens", "width", "heads_x_topk", "vocab", "chunk",
               "dtype", "fwd_ms", "fwd_bwd_ms", "peak_mb", "over_mamba_ssm", "note"]
    notes = "Per-part tables: " + ", ".join(f"{p}: {s}" for p, s in done.items())
    print(write_results(out, "kernels", own, meta, columns=columns, notes=notes))
    print(f"kernels: {len(rows)} rows in {meta['wall_s']} s -> {out}")
    return rows
