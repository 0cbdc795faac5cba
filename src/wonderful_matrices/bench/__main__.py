"""``python -m wonderful_matrices.bench NAME [--quick] --out DIR [--device D] [--budget-s S] [--steps N]
[--cells ...] [--mixers ...] [--windows W,...] [--learning-rates ...] [--vocab-size V]
[--seed S] [--merge DIR ... [--mixed-budgets]] [--presets P,...] [--variants V,...] [--data CORPUS] [--threads N]
[--families F ...] [--seeds S ...] [--train-tokens N] [--eval-contexts C ...] [--eval-tokens N]
[--compiled-training] [--graphed-training]``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UserError
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
                        help="mqar, lm: join the results in these folders (split runs; for lm the run folders of "
                             "--seeds/--train-tokens or folders holding them) into --out instead of training")
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
    parser.add_argument("--families", nargs="+", default=None, metavar="F",
                        help="lm: preset families to run, e.g. cheems llama (default: cheems doge llama mamba2 jamba)")
    parser.add_argument("--seed", type=int, default=None, metavar="S",
                        help="mqar: seed of the models' initialisation, the training order and the cells' rows "
                             "(default 0)")
    parser.add_argument("--seeds", nargs="+", default=None, metavar="S",
                        help="lm: one run per seed, each in its own folder <preset>-seed<S> under --out (skipped "
                             "when complete, resumed from its checkpoint); merge them with --merge")
    parser.add_argument("--train-tokens", default=None, metavar="N",
                        help="lm: training tokens per model (steps = ceil(N / (batch x seq_len))); implies one "
                             "folder per run as --seeds does (seed 0 unless --seeds)")
    parser.add_argument("--eval-contexts", nargs="+", default=None, metavar="C",
                        help="lm: validation perplexity also in rows of these lengths, e.g. 2048 8192 32768")
    parser.add_argument("--eval-tokens", default=None, metavar="N",
                        help="lm: validation tokens scored at every length (default: all; 2097152 with --seeds or "
                             "--train-tokens)")
    parser.add_argument("--compiled-training", action="store_true",
                        help="lm: train every model with its forward and backward under torch.compile (the "
                             "optimizer eager); train_tokens_per_s then measures the compiled training")
    parser.add_argument("--graphed-training", action="store_true",
                        help="lm: replay every training step from a CUDA graph (with --compiled-training, the compiled "
                             "step); train_tokens_per_s then measures the graphed training")
    parser.add_argument("--lr", default=None, metavar="LR",
                        help="lm: the peak learning rate of every model's training (default 1e-3; 5%% warm-up, "
                             "cosine decay to 10%%)")
    parser.add_argument("--hybrid-ratio", default=None, metavar="R",
                        help="lm: recurrent layers per attention layer of the hybrid families (cheems, jamba; the "
                             "presets have 7), e.g. 3 for 3:1; their runs are named <preset>-<R>to1")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice; 1 is faster on a shared machine)")


def _integers(name: str, values, minimum: int) -> tuple[int, ...] | None:
    """Flag ``name``'s values (space- or comma-separated) as integers >= ``minimum``; None when not given."""
    if values is None:
        return None
    items = [v for value in ([values] if isinstance(values, str) else values) for v in value.split(",") if v]
    try:
        numbers = tuple(int(float(v)) if "e" in v.lower() else int(v) for v in items)
    except (ValueError, OverflowError):
        numbers = ()
    if not numbers or any(n < minimum for n in numbers):
        raise ValueError(f"{name}={' '.join(items)!r} is not allowed: integers >= {minimum}")
    return numbers


def _lm_options(args: argparse.Namespace) -> dict:
    """The options of the lm-only flags (ValueError on a bad value)."""
    train_tokens = _integers("train-tokens", args.train_tokens, 1)
    eval_tokens = _integers("eval-tokens", args.eval_tokens, 2)
    if train_tokens is not None and len(train_tokens) != 1 or eval_tokens is not None and len(eval_tokens) != 1:
        raise ValueError(f"train-tokens={args.train_tokens!r}, eval-tokens={args.eval_tokens!r}: one number each")
    families = None if args.families is None else tuple(f for v in args.families for f in v.split(",") if f)
    return {"families": families, "seeds": _integers("seeds", args.seeds, 0),
            "train_tokens": train_tokens and train_tokens[0], "eval_tokens": eval_tokens and eval_tokens[0],
            "eval_contexts": _integers("eval-contexts", args.eval_contexts, 1),
            "compiled_training": args.compiled_training or None,
            "graphed_training": args.graphed_training or None,
            "hybrid_ratio": (_integers("hybrid-ratio", args.hybrid_ratio, 1) or (None,))[0],
            "lr": _learning_rate(args.lr)}


def _learning_rate(value: str | None) -> float | None:
    """``--lr`` as a number (None when not given); its range is the experiment's check."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"lr={value!r} is not allowed: a number, e.g. 3e-4") from None


def main_from_args(args: argparse.Namespace, prog: str = "error") -> int:
    """Run the benchmark the parsed ``args`` name; 2 with a one-line message (after ``prog``) on a bad argument."""
    if args.threads is not None:
        if args.threads < 1:
            print(f"{prog}: threads={args.threads!r} is not allowed: must be >= 1", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(args.threads)
    try:
        from ..train.distributed import resolve_device

        resolve_device(args.device)  # a device this machine has, before any work
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise ValueError(f"out={args.out!r} is not allowed: it is a file; give a folder")
        if args.merge:
            if args.name == "lm":
                from .lm_scale import merge_results as merge_lm

                merge_lm(args.out, args.merge)
                return 0
            if args.name != "mqar":
                raise ValueError(f"merge={args.merge!r} is not allowed: only mqar and lm results are merged")
            from .mqar import merge_results

            merge_results(args.out, args.merge, mixed_budgets=args.mixed_budgets)
            return 0
        run_benchmark(args.name, args.out, quick=args.quick, device=args.device, budget_s=args.budget_s,
                      steps=args.steps, cells=args.cells, mixers=args.mixers, windows=args.windows,
                      learning_rates=args.learning_rates, seed=args.seed,
                      vocab_size=args.vocab_size, presets=args.presets, variants=args.variants,
                      data=args.data, **_lm_options(args))
    except (ValueError, UserError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m wonderful_matrices.bench``."""
    parser = argparse.ArgumentParser(prog="python -m wonderful_matrices.bench", description=__doc__)
    add_arguments(parser)
    return main_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
