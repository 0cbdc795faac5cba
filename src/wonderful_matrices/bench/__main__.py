"""``python -m wonderful_matrices.bench NAME [--quick] --out DIR [--device D] [--budget-s S] [--steps N]
[--cells ...] [--mixers ...] [--windows W,...] [--learning-rates ...] [--vocab-size V]
[--merge DIR ... [--mixed-budgets]] [--presets P,...] [--variants V,...] [--data CORPUS] [--threads N]``."""
from __future__ import annotations

import argparse
import sys

from . import names, run_benchmark


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark command's arguments (shared with ``wm bench``)."""
    parser.add_argument("name", choices=names(), help="experiment to run")
    parser.add_argument("--out", required=True, help="folder for results.json, results.md and the plot")
    parser.add_argument("--quick", action="store_true", help="CPU-sized version (minutes)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall-clock budget of the whole sweep in seconds (mqar)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per run instead of the default (mqar, position, lm)")
    parser.add_argument("--cells", default=None,
                        help="mqar: cells to run as seq_len:width pairs, e.g. 256:64,2048:128, or 'all'")
    parser.add_argument("--mixers", default=None,
                        help="mqar: mixers to train, e.g. attn,dma or dma-w64,swa-w64,ssd-s64 (default: attn,ssd,dma)")
    parser.add_argument("--windows", default=None,
                        help="mqar: bounded windows, e.g. 64,128,256: adds dma-w<w> (DMA, keep_window w), swa-w<w> "
                             "(sliding-window attention) and ssd-s<n> (SSD with the state bytes of a w-key cache) "
                             "per window")
    parser.add_argument("--learning-rates", default=None,
                        help="mqar: learning rates to sweep, e.g. 1e-3,2e-3 (default: logspace(-4, -2, 4))")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="mqar, lm: vocabulary size instead of the experiment's default")
    parser.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                        help="mqar: join the results in these folders (split runs) into --out instead of training")
    parser.add_argument("--mixed-budgets", action="store_true",
                        help="mqar --merge: keep the best run per cell and mixer even where the parts ran a learning "
                             "rate with different step counts")
    parser.add_argument("--presets", default=None,
                        help="profile, generate: presets to measure side by side, e.g. cheems-base,llama-base")
    parser.add_argument("--variants", default=None,
                        help="profile: fused (default), unfused (plain-PyTorch norms and loss), compiled (fused under "
                             "torch.compile) or a list, e.g. fused,compiled; "
                             "position: SSD variants, e.g. no_pe,rope,conv,data (default no_pe,rope,conv)")
    parser.add_argument("--data", default=None,
                        help="lm, position: corpus to train and evaluate on: 'shakespeare' (default), 'python-source' "
                             "or a local text/.jsonl/.parquet file or folder")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice; 1 is faster on a shared machine)")


def main_from_args(args: argparse.Namespace) -> int:
    """Run the benchmark the parsed ``args`` name; 2 with a message on a bad argument."""
    if args.threads is not None:
        if args.threads < 1:
            print(f"error: threads={args.threads!r} is not allowed: must be >= 1", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(args.threads)
    try:
        if args.merge:
            if args.name != "mqar":
                raise ValueError(f"merge={args.merge!r} is not allowed: only mqar results are merged")
            from .mqar import merge_results

            merge_results(args.out, args.merge, mixed_budgets=args.mixed_budgets)
            return 0
        run_benchmark(args.name, args.out, quick=args.quick, device=args.device, budget_s=args.budget_s,
                      steps=args.steps, cells=args.cells, mixers=args.mixers, windows=args.windows,
                      learning_rates=args.learning_rates,
                      vocab_size=args.vocab_size, presets=args.presets, variants=args.variants,
                      data=args.data)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m wonderful_matrices.bench``."""
    parser = argparse.ArgumentParser(prog="python -m wonderful_matrices.bench", description=__doc__)
    add_arguments(parser)
    return main_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
