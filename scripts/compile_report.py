"""torch.compile of a training step, preset by preset: the graph breaks of its forward and the training tokens/s
eager against compiled, side by side in one process.

    PYTHONPATH=src python scripts/compile_report.py --out OUT            # GPU: cheems-base, llama-base at 8 x 4096
    PYTHONPATH=src python scripts/compile_report.py --presets cheems-tiny,llama-tiny --seq-len 64 --tokens 128 \\
        --out OUT                                                         # CPU, minutes (Inductor compiles slowly)

Graph breaks: ``torch._dynamo.explain`` of the bench's training forward (:func:`wonderful_matrices.bench.lm_common.
lm_loss`, bf16 autocast on CUDA as in training), with each break's reason and source line. Throughput:
:func:`wonderful_matrices.bench.lm.training_throughput` (forward + backward + AdamW, two warm-up steps that include
the compilation, then the median of ``--steps``) with ``compiled=False`` and ``True``; a preset that fails to compile
gets its error (one line). Writes ``results.json`` / ``results.md`` into ``--out``.
"""
from __future__ import annotations

import argparse
import time

import torch

from wonderful_matrices.bench.common import one_line, write_results
from wonderful_matrices.bench.lm import training_throughput
from wonderful_matrices.bench.lm_common import lm_loss, training_autocast
from wonderful_matrices.models import CheemsForCausalLM, presets
from wonderful_matrices.ops.common import trusted_values


def graph_breaks(config, seq_len: int, batch: int, device: torch.device) -> dict:
    """``{"graphs", "graph_breaks", "break_reasons": ["file:line: reason", ...]}`` of one training forward."""
    torch.manual_seed(0)
    model = CheemsForCausalLM(config).to(device).train()
    rows = torch.randint(0, config.vocab_size, (batch, seq_len + 1), device=device)

    def forward(rows):
        with trusted_values(), training_autocast(device):
            return lm_loss(model, rows)

    torch._dynamo.reset()
    explained = torch._dynamo.explain(forward)(rows)
    reasons = []
    for b in explained.break_reasons:
        frame = b.user_stack[-1] if b.user_stack else None
        where = f"{frame.filename.split('/src/')[-1]}:{frame.lineno}" if frame else "?"
        reasons.append(f"{where}: {b.reason.splitlines()[0][:200]}")
    model = None  # free the memory before the throughput runs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"graphs": explained.graph_count, "graph_breaks": explained.graph_break_count,
            "break_reasons": sorted(set(reasons))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="cheems-base,llama-base")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=32768, help="tokens per step (rows = tokens // seq-len)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the two warm-ups")
    parser.add_argument("--explain-rows", type=int, default=1, help="rows of the explained forward")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = []
    for name in args.presets.split(","):
        config = presets.get(name, use_cache=False)
        row = {"preset": name, "seq_len": args.seq_len, "tokens_per_step": args.tokens}
        try:
            row.update(graph_breaks(config, args.seq_len, args.explain_rows, device))
        except Exception as error:  # noqa: BLE001 - a preset whose trace fails is a row of the report
            row["explain_error"] = one_line(error)
        for compiled in (False, True):
            start = time.perf_counter()
            t = training_throughput(config, args.seq_len, args.tokens, device, steps=args.steps, compiled=compiled)
            prefix = "compiled_" if compiled else "eager_"
            row.update({prefix + "tokens_per_s": t["tokens_per_s"], prefix + "peak_gb": t["peak_memory_gb"],
                        prefix + "error": t["error"], prefix + "wall_s": round(time.perf_counter() - start, 1)})
        eager, comp = row["eager_tokens_per_s"], row["compiled_tokens_per_s"]
        row["compiled_vs_eager"] = comp / eager if eager and comp else None
        rows.append(row)
        print(row, flush=True)
    meta = {"device": str(device), "autocast": "bf16" if device.type == "cuda" else "off (float32)",
            "compile": "torch.compile(lm_loss, dynamic=False), default mode; AdamW eager",
            "step": f"{args.tokens // args.seq_len} x {args.seq_len} tokens, median of {args.steps} after 2 warm-ups"}
    print(write_results(args.out, "compile", rows, meta,
                        columns=["preset", "graphs", "graph_breaks", "eager_tokens_per_s", "compiled_tokens_per_s",
                                 "compiled_vs_eager", "eager_peak_gb", "compiled_peak_gb", "compiled_error"]))


if __name__ == "__main__":
    main()
