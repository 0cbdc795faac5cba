"""Training tokens/s of preset variants side by side in one process, each against the first variant's rate.

    PYTHONPATH=src python scripts/train_throughput.py --out OUT \\
        --variants llama-base cheems-base cheems-base:cdmoe_backend=dense cheems-base:cdmoe_backend=triton

A variant is ``PRESET[:KEY=VALUE[,KEY=VALUE...]]`` (config overrides of :func:`wonderful_matrices.models.presets.get`;
values are parsed as int, float, bool or None where they look like one, else kept as text). Each runs
:func:`wonderful_matrices.bench.lm.training_throughput` (forward + backward + AdamW on random tokens, bf16 autocast on
CUDA, two warm-up steps, the median of ``--steps``), eager; with ``--compiled`` also compiled, with
``--compiled-only`` only compiled; with ``--graphed`` every step is replayed from a CUDA graph (the host's launches
then do not limit it; the rows say whether it was recorded, ``graphed``, and if not why, ``graph_error``). Writes
``results.json`` / ``results.md`` into ``--out`` after every row, so a run cut by a time limit keeps what it measured.
A variant may be listed more than once (``--variants cheems-base llama-base cheems-base llama-base``): the rows then
show how much one process's timings move (on CUDA with the GPU's mean SM clock and peak temperature beside them).
"""
from __future__ import annotations

import argparse
import contextlib

import torch

from wonderful_matrices.bench.common import one_line, write_results
from wonderful_matrices.bench.lm import training_throughput
from wonderful_matrices.models import presets


def parse_value(text: str):
    """``"16"`` -> 16, ``"1e-3"`` -> 0.001, ``"true"`` -> True, ``"none"`` -> None, anything else the text."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
    return text


def parse_variant(spec: str) -> tuple[str, dict]:
    """``"cheems-base:cdmoe_backend=dense"`` -> ``("cheems-base", {"cdmoe_backend": "dense"})``; ValueError for a
    malformed override or an unknown preset."""
    name, _, overrides = spec.partition(":")
    if name not in presets.names():
        raise ValueError(f"variant {spec!r}: preset {name!r} is not allowed: one of {presets.names()}")
    fields = {}
    for item in filter(None, overrides.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"variant {spec!r}: override {item!r} is not allowed: KEY=VALUE")
        fields[key] = parse_value(value)
    return name, fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["llama-base", "cheems-base"])
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=32768, help="tokens per step (rows = tokens // seq-len)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the two warm-ups")
    parser.add_argument("--compiled", action="store_true", help="also time each variant under torch.compile")
    parser.add_argument("--compiled-only", action="store_true", help="time each variant under torch.compile only")
    parser.add_argument("--graphed", action="store_true", help="replay each training step from a CUDA graph")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    try:
        variants = [(spec, *parse_variant(spec)) for spec in args.variants]
    except ValueError as error:
        parser.error(str(error))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    meta = {"device": str(device), "autocast": "bf16" if device.type == "cuda" else "off (float32)",
            "step": f"{args.tokens // args.seq_len} x {args.seq_len} tokens, median of {args.steps} after 2 warm-ups"}
    rows, reference = [], None
    for spec, name, fields in variants:
        for compiled in (True,) if args.compiled_only else (False, True) if args.compiled else (False,):
            row = {"variant": spec, "compiled": compiled, "seq_len": args.seq_len}
            try:
                config = presets.get(name, use_cache=False, **fields)
                row.update(training_throughput(config, args.seq_len, args.tokens, device, steps=args.steps,
                                               compiled=compiled, graphed=args.graphed))
            except Exception as error:  # noqa: BLE001 - a variant that fails is a row of the report
                row.update({"tokens_per_s": None, "peak_memory_gb": None, "steady_peak_memory_gb": None,
                            "error": one_line(error)})
            rate = row.get("tokens_per_s")
            reference = reference or rate
            row["vs_first"] = rate / reference if rate and reference else None
            rows.append(row)
            print(row, flush=True)
            write_results(args.out, "train_throughput", rows, meta,
                          columns=["variant", "compiled", *(["graphed"] if args.graphed else []), "seq_len",
                                   "tokens_per_s", "vs_first", "peak_memory_gb", "steady_peak_memory_gb",
                                   "sm_clock_mhz", "gpu_temp_max_c", "error",
                                   *(["graph_error"] if args.graphed else [])])


if __name__ == "__main__":
    main()
