"""SSD benchmark: the chunked torch backend against the per-step recurrence (CPU) and against the reference
timings of docs/design.md at the paper's shape (CUDA).

* CPU (or ``quick=True``): batch 1, 8 heads × 64, state 64, 1 group, chunk 64, float32, lengths 256 / 1024 /
  4096 (256 / 1024 with ``quick``): forward of ``backend="naive"`` and ``"torch"``, forward+backward of
  ``"torch"``, and the relative error between the two.
* CUDA (full): batch 8 × 4096 tokens (32768), 64 heads × 64, state 128, 1 group, chunk 256, bf16: forward and
  forward+backward of the triton backend and of the torch backend, eager and under ``torch.compile`` (if it
  compiles), with peak memory and each output's relative error against the first row (triton);
  beside them the reference numbers of docs/design.md (``mamba_ssm`` Triton kernels 1.14 / 5.17 ms, the
  pure-PyTorch minimal SSD ~18 ms forward), labelled "reference (docs/design.md)", not measured here.

* ``packed=True`` (``--packed``): the cost of packed documents — the same backend at the same shape (the paper's
  on CUDA, with the triton backend; ``CPU_SHAPE`` at 1024 tokens with the torch backend on the CPU), forward and
  forward+backward, without ``seq_idx`` and with ``seq_idx`` marking documents of random lengths (1 to 1024
  tokens, so boundaries fall inside chunks and on their edges), side by side with the overhead in percent, in
  wall time and (CUDA) GPU busy time.

``python -m wonderful_matrices.bench.ssd --out DIR [--quick] [--packed] [--device cpu|cuda]``
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..ops import ssd
from ..ops.common import triton_usable
from .common import device_time_ms, peak_memory_bytes, time_callable, write_results

REFERENCE = [  # docs/design.md, reference timings on an H200 (bf16, torch 2.11, triton 3.6)
    {"implementation": "mamba_ssm Triton kernels", "fwd_ms": 1.14, "fwd_bwd_ms": 5.17},
    {"implementation": "pure-PyTorch minimal SSD (fp32)", "fwd_ms": 18.0, "fwd_bwd_ms": None},
]
PAPER_SHAPE = dict(batch=8, length=4096, heads=64, head_dim=64, state=128, groups=1, chunk=256)
# cheems-base's SSD layer (presets.py "base") at its 8 × 4096-token training step
CHEEMS_SHAPE = dict(batch=8, length=4096, heads=6, head_dim=128, state=128, groups=1, chunk=256)
CPU_SHAPE = dict(batch=1, heads=8, head_dim=64, state=64, groups=1, chunk=64)

COLUMNS = ["implementation", "source", "device", "dtype", "batch", "length", "heads", "head_dim", "state",
           "groups", "chunk", "documents", "fwd_ms", "fwd_bwd_ms", "fwd_gpu_ms", "fwd_bwd_gpu_ms", "fwd_overhead_pct",
           "fwd_bwd_overhead_pct", "fwd_gpu_overhead_pct", "fwd_bwd_gpu_overhead_pct", "naive_over_torch", "rel_err",
           "peak_mem_mib", "note"]


def make_inputs(shape: dict, dtype: torch.dtype, device: torch.device, requires_grad: bool = False) -> dict:
    """Random SSD inputs of ``shape`` (dt > 0 from a softplus, A < 0)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    b, l, h, p = shape["batch"], shape["length"], shape["heads"], shape["head_dim"]
    g, n = shape["groups"], shape["state"]

    def rnd(*size, scale=1.0):
        return (torch.randn(*size, generator=gen) * scale).to(device=device, dtype=dtype)

    inputs = dict(x=rnd(b, l, h, p), dt=torch.nn.functional.softplus(rnd(b, l, h) - 2.0).float(),
                  A=-torch.exp(torch.randn(h, generator=gen)).to(device), B=rnd(b, l, g, n, scale=n ** -0.5),
                  C=rnd(b, l, g, n, scale=n ** -0.5), D=torch.randn(h, generator=gen).to(device))
    if requires_grad:
        for t in inputs.values():
            t.requires_grad_(True)
    return inputs


def _fwd_bwd(fn, inputs: dict):
    leaves = [t for t in inputs.values() if t.requires_grad]
    y = fn(**inputs)
    grad_out = torch.ones_like(y)

    def step():
        out = fn(**inputs)
        return torch.autograd.grad(out, leaves, grad_out)
    return step


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def cpu_rows(device: torch.device, lengths: tuple[int, ...], reps: int = 5) -> list[dict]:
    """naive vs torch forward (and torch forward+backward) at ``CPU_SHAPE`` for each length."""
    rows = []
    for length in lengths:
        shape = {**CPU_SHAPE, "length": length}
        inputs = make_inputs(shape, torch.float32, device)
        chunk = shape["chunk"]
        naive_ms = time_callable(lambda: ssd(**inputs, backend="naive"), device, warmup=1, reps=reps)
        torch_ms = time_callable(lambda: ssd(**inputs, chunk_size=chunk, backend="torch"), device, warmup=2, reps=reps)
        err = _rel_err(ssd(**inputs, chunk_size=chunk), ssd(**{k: v.double() for k, v in inputs.items()},
                                                             backend="naive"))
        grads = make_inputs(shape, torch.float32, device, requires_grad=True)
        torch_bwd_ms = time_callable(_fwd_bwd(lambda **kw: ssd(**kw, chunk_size=chunk), grads), device,
                                     warmup=1, reps=reps)
        common = dict(source="measured", device=str(device), dtype="float32", **shape)
        rows.append(dict(implementation="naive (per-step recurrence)", fwd_ms=naive_ms, **common))
        rows.append(dict(implementation="torch (chunked)", fwd_ms=torch_ms, fwd_bwd_ms=torch_bwd_ms,
                         naive_over_torch=naive_ms / torch_ms, rel_err=err, **common))
    return rows


def paper_rows(device: torch.device, shape: dict = PAPER_SHAPE, dtype: torch.dtype = torch.bfloat16,
               try_compile: bool = True) -> list[dict]:
    """The triton backend (on CUDA), the torch backend (eager and compiled) at ``shape``, then the docs/design.md
    reference rows."""
    chunk = shape["chunk"]
    name_of_device = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    common = dict(device=name_of_device, dtype=str(dtype).replace("torch.", ""), **shape)
    rows = []

    def eager(**kw):
        return ssd(**kw, chunk_size=chunk, backend="torch")

    variants = [("torch (chunked), eager", eager)]
    if device.type == "cuda" and triton_usable(device):
        variants.insert(0, ("triton", lambda **kw: ssd(**kw, chunk_size=chunk, backend="triton")))
    if try_compile:
        try:
            compiled = torch.compile(eager)
            probe = make_inputs(shape, dtype, device, requires_grad=True)
            _fwd_bwd(compiled, probe)()  # compile forward and backward once, outside the timing
            del probe
            variants.append(("torch (chunked), torch.compile", compiled))
        except Exception as exc:  # noqa: BLE001 - reported, not hidden: the row says why there is no compiled number
            rows.append(dict(implementation="torch (chunked), torch.compile", source="measured",
                             note=f"did not compile: {type(exc).__name__}: {str(exc)[:200]}", **common))
    reference_y = None
    for name, fn in variants:
        inputs = make_inputs(shape, dtype, device)
        with torch.no_grad():
            y = fn(**inputs)
            reference_y = y if reference_y is None else reference_y
            err = None if reference_y is y else _rel_err(y, reference_y)
            fwd_ms = time_callable(lambda: fn(**inputs), device, warmup=3, reps=20)
        grads = make_inputs(shape, dtype, device, requires_grad=True)
        step = _fwd_bwd(fn, grads)
        fwd_bwd_ms = time_callable(step, device, warmup=3, reps=20)
        peak = peak_memory_bytes(step, device)
        rows.append(dict(implementation=name, source="measured", fwd_ms=fwd_ms, fwd_bwd_ms=fwd_bwd_ms,
                         rel_err=err, peak_mem_mib=peak / 2 ** 20 if peak is not None else None,
                         note=f"rel_err against {variants[0][0]}" if reference_y is not y else "", **common))
        grads = step = inputs = None  # free before the next variant allocates
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for ref in REFERENCE:
        rows.append(dict(source="reference (docs/design.md)",
                         note="H200, bf16, torch 2.11, triton 3.6; not measured here",
                         **{**common, "device": "H200 (docs/design.md)"}, **ref))
    return rows


def document_ids(batch: int, length: int, max_document: int, device: torch.device) -> torch.Tensor:
    """(batch, length) long seq_idx of documents with lengths drawn uniformly from 1..max_document (fixed seed)."""
    gen = torch.Generator(device="cpu").manual_seed(1)
    rows = []
    for _ in range(batch):
        lengths = torch.randint(1, max_document + 1, (length,), generator=gen)
        rows.append(torch.repeat_interleave(torch.arange(length), lengths)[:length])
    return torch.stack(rows).to(device)


def packed_rows(device: torch.device, shape: dict, dtype: torch.dtype, backend: str, max_document: int = 1024,
                reps: int = 20) -> list[dict]:
    """``backend`` at ``shape`` without and with ``seq_idx`` (documents of 1..``max_document`` tokens): forward and
    forward+backward times (wall, and on CUDA GPU busy time: ``common.device_time_ms``), the packed row's overhead
    in percent of each, and the packed output's error against the torch backend given the same ``seq_idx``."""
    chunk = shape["chunk"]
    seq_idx = document_ids(shape["batch"], shape["length"], max_document, device)
    documents = int((seq_idx[:, -1] - seq_idx[:, 0] + 1).sum())
    name_of_device = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    common = dict(source="measured", device=name_of_device, dtype=str(dtype).replace("torch.", ""), **shape)
    rows = []
    for label, ids in (("unpacked", None), ("packed (seq_idx)", seq_idx)):
        def fn(**kw):
            return ssd(**kw, chunk_size=chunk, seq_idx=ids, backend=backend)

        inputs = make_inputs(shape, dtype, device)
        with torch.no_grad():
            fwd_ms = time_callable(lambda: fn(**inputs), device, warmup=3, reps=reps)
            err = None
            if ids is not None:
                reference = ssd(**inputs, chunk_size=chunk, seq_idx=ids, backend="torch")
                err = _rel_err(fn(**inputs), reference)
            fwd_gpu_ms = device_time_ms(lambda: fn(**inputs), device)
        grads = make_inputs(shape, dtype, device, requires_grad=True)
        fwd_bwd_ms = time_callable(_fwd_bwd(fn, grads), device, warmup=3, reps=reps)
        row = dict(implementation=f"{backend}, {label}", documents=documents if ids is not None else shape["batch"],
                   fwd_ms=fwd_ms, fwd_bwd_ms=fwd_bwd_ms, fwd_gpu_ms=fwd_gpu_ms,
                   fwd_bwd_gpu_ms=device_time_ms(_fwd_bwd(fn, grads), device), rel_err=err, **common)
        if ids is not None:
            base = rows[0]
            for time in ("fwd", "fwd_bwd", "fwd_gpu", "fwd_bwd_gpu"):
                if row[f"{time}_ms"] and base[f"{time}_ms"]:
                    row[f"{time}_overhead_pct"] = 100.0 * (row[f"{time}_ms"] / base[f"{time}_ms"] - 1.0)
            row["note"] = "rel_err against the torch backend with the same seq_idx"
        rows.append(row)
        inputs = grads = None  # free before the next case allocates
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _plot(rows: list[dict], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if any(r["source"] == "reference (docs/design.md)" for r in rows):
        labels = [f"{r['implementation']}\n[{r['source']}]" for r in rows if r.get("fwd_ms") is not None]
        kept = [r for r in rows if r.get("fwd_ms") is not None]
        xs = range(len(kept))
        ax.bar([x - 0.2 for x in xs], [r["fwd_ms"] for r in kept], width=0.4, label="forward")
        ax.bar([x + 0.2 for x in xs], [r.get("fwd_bwd_ms") or 0 for r in kept], width=0.4, label="forward+backward")
        ax.set_xticks(list(xs), labels, fontsize=7)
        ax.set_yscale("log")
        ax.set_title("SSD, 32768 tokens, 64 heads x 64, state 128, bf16")
    else:
        for name in dict.fromkeys(r["implementation"] for r in rows):
            sel = [r for r in rows if r["implementation"] == name]
            ax.plot([r["length"] for r in sel], [r["fwd_ms"] for r in sel], "o-", label=f"{name}, forward")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_title("SSD on CPU, 8 heads x 64, state 64, float32")
    ax.set_ylabel("ms (median)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "ssd.png", dpi=120)
    plt.close(fig)


def run(out_dir, quick: bool = False, device=None, packed: bool = False) -> list[dict]:
    """Time the SSD implementations side by side; write results.json / results.md / ssd.png into ``out_dir``.

    Returns the rows (one dict per implementation and shape). ``device`` defaults to CUDA when available;
    the paper-scale shape runs only on CUDA without ``quick``. ``packed``: the packed-documents comparison
    instead (see the module docstring; no plot).
    """
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if packed:
        if device.type == "cuda" and not quick:
            rows = packed_rows(device, PAPER_SHAPE, torch.bfloat16, "triton")
        else:
            rows = packed_rows(device, {**CPU_SHAPE, "length": 1024}, torch.float32, "torch", reps=3)
        meta = {"quick": quick, "device": str(device), "packed": True,
                "method": "median of CUDA-event (GPU) or perf_counter (CPU) timings after warm-up; fwd_bwd = forward "
                          "plus autograd.grad w.r.t. every input; documents of 1..1024 tokens (seed 1)"}
        table = write_results(out, "ssd", rows, meta, columns=COLUMNS)
        print(table)
        return rows
    if device.type == "cuda" and not quick:
        rows = paper_rows(device)
    else:
        rows = cpu_rows(device, (256, 1024) if quick else (256, 1024, 4096), reps=3 if quick else 5)
    meta = {"quick": quick, "device": str(device),
            "method": "median of CUDA-event (GPU) or perf_counter (CPU) timings after warm-up; fwd_bwd = forward "
                      "plus autograd.grad w.r.t. every input"}
    table = write_results(out, "ssd", rows, meta, columns=COLUMNS)
    _plot(rows, out)
    print(table)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--quick", action="store_true", help="CPU-sized run (a couple of minutes)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--packed", action="store_true", help="time packed documents (seq_idx) against unpacked rows")
    args = parser.parse_args(argv)
    run(args.out, quick=args.quick, device=args.device, packed=args.packed)


if __name__ == "__main__":
    main()
