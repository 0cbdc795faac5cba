"""The ``wm`` command: train, eval, generate, info, bench.

Each subcommand is an ``add_<name>_arguments(parser)`` / ``run_<name>(args)`` pair registered in
``SUBCOMMANDS``; a new subcommand (such as ``bench``) is one more entry there. A ``UserError`` (bad path,
empty corpus, corrupted checkpoint, vocabulary mismatch...) prints one line and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from pathlib import Path

from .errors import UserError


# ------------------------------------------------------------------------------------------------- train
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from .train.loop import TrainConfig
    from .train.schedule import SCHEDULES

    d = TrainConfig(out="")
    p.add_argument("--preset", default=d.preset, help="preset name, or a config.json file/folder")
    p.add_argument("--data", default=d.data, help="'shakespeare', 'python-source', a text/.jsonl/.parquet file or "
                                                  "folder, or a Hugging Face dataset name")
    p.add_argument("--tokenizer", default=None,
                   help="HF tokenizer folder or tokenizer.json file (default: train a byte-level BPE)")
    p.add_argument("--out", required=True, help="run folder; re-running the same command resumes it (with a "
                   "larger --max-steps it trains on; changed optimisation flags are refused)")
    p.add_argument("--max-steps", type=int, default=d.max_steps, help="optimizer steps in all")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="rows per micro-batch per process")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help="tokens per row")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="final lr / peak lr")
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="learning-rate schedule")
    p.add_argument("--warmup", type=float, default=d.warmup,
                   help="warm-up fraction of the steps (its length in steps is fixed at the first start)")
    p.add_argument("--decay", type=float, default=d.decay, help="decay fraction of the steps (wsd)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay of matrices")
    p.add_argument("--clip", type=float, default=d.clip, help="gradient norm clip (0: off)")
    p.add_argument("--seed", type=int, default=d.seed, help="initial weights and data order")
    p.add_argument("--eval-interval", type=int, default=d.eval_interval, help="steps between evaluations")
    p.add_argument("--eval-rows", type=int, default=d.eval_rows, help="validation rows per evaluation")
    p.add_argument("--save-interval", type=int, default=d.save_interval, help="steps between checkpoints")
    p.add_argument("--keep-last", type=int, default=d.keep_last, help="checkpoints kept")
    p.add_argument("--log-interval", type=int, default=d.log_interval, help="steps between metrics records")
    p.add_argument("--validation-fraction", type=float, default=d.validation_fraction,
                   help="share of a local corpus held out for validation, in (0, 1)")
    p.add_argument("--cache-dir", default=None, help="token cache folder (default: OUT/cache)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--cuda-graph", action="store_true",
                   help="record the whole training step once as a CUDA graph and replay it (one CUDA process; "
                        "fewer host launches per step)")
    p.add_argument("--fsdp", action="store_true", help="shard with FSDP2 under torchrun (default: DDP)")
    _device_argument(p)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is steadier on a shared 2-core machine)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-document-mask", dest="document_mask", action="store_false",
                   help="let rows run across document boundaries (default: each document is modelled alone)")


def run_train(args: argparse.Namespace) -> int:
    from .train.loop import TrainConfig, train

    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    summary = train(TrainConfig(**fields, progress=not args.no_progress))
    if summary["validation"] and summary["rank"] == 0:
        v = summary["validation"]
        print(f"step {summary['step']}: validation perplexity {v['perplexity']:.2f} "
              f"(loss {v['loss']:.4f}, {v['bits_per_byte']:.3f} bits/byte) in {summary['wall_s']:.0f} s")
    return 0


# -------------------------------------------------------------------------------------------- run folders
def _run_folder(path: str):
    """(run folder, model folder) for a run folder (its newest complete checkpoint), one checkpoint folder, or
    a model folder made by ``save_pretrained`` (``config.json`` and weights, e.g. an exported checkpoint)."""
    from .train import checkpoint as ckpt

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file; give a run folder, a checkpoint folder or a save_pretrained folder")
    if not folder.is_dir():
        raise UserError(f"run folder {folder} not found; train one first with `wm train --out {folder}`")
    if (folder / ckpt.MANIFEST).exists():
        try:
            ckpt.verify_checkpoint(folder)
        except ckpt.CorruptCheckpoint as e:
            raise UserError(f"{e}; use another checkpoint of the run") from None
        return folder.parent, folder
    newest = ckpt.latest_checkpoint(folder, warn=lambda m: print(m, file=sys.stderr))
    if newest is None:
        if (folder / "config.json").exists():
            return folder, folder
        raise UserError(f"{folder} has no checkpoint; train first with `wm train --out {folder}`")
    return folder, newest


def _device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def _threads_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")


def _tokenizer_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", default=None, help="HF tokenizer folder or tokenizer.json file (default: the "
                   "checkpoint's own, else the run's)")


def _load_run(path: str, device_name: str, threads: int | None = None, tokenizer_path: str | None = None):
    import torch

    from .data.tokenizer import check_fits, load_tokenizer
    from .train import checkpoint as ckpt
    from .train.distributed import resolve_device
    from .train.resume import read_run_config

    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads: got {threads}, expected an integer >= 1")
        torch.set_num_threads(threads)
    run_dir, folder = _run_folder(path)
    if tokenizer_path is None:
        own = [f for f in (folder, run_dir / "tokenizer") if (f / "tokenizer.json").exists()]
        if not own:
            raise UserError(f"{folder} holds no tokenizer (nor does {run_dir / 'tokenizer'}); pass --tokenizer")
        tokenizer_path = own[0]
    tokenizer = load_tokenizer(tokenizer_path)
    device = resolve_device(device_name)
    model = ckpt.load_model(folder, device).eval()
    check_fits(tokenizer, model.config.vocab_size)
    bad = next((name for name, p in model.named_parameters() if not torch.isfinite(p).all()), None)
    if bad is not None:  # sampling from it fails deep in torch; scoring it gives NaN
        raise UserError(f"{folder}: the weights are not finite ({bad}, and perhaps others): the model it holds "
                        "diverged; use an earlier checkpoint")
    record = read_run_config(run_dir)
    return run_dir, folder, tokenizer, model, record["config"] if record else {}, device


# -------------------------------------------------------------------------------------------------- eval
def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder (newest complete checkpoint) or one checkpoint folder")
    p.add_argument("--data", default=None, help="corpus whose validation split to score (default: the run's)")
    p.add_argument("--batch-size", type=int, default=8, help="validation rows per forward pass")
    p.add_argument("--max-rows", type=int, default=None, help="score only the first N validation rows")
    _device_argument(p)
    _tokenizer_argument(p)
    _threads_argument(p)


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from .atomic import atomic_write_text
    from .data.corpora import load_corpus
    from .data.packing import PackedRows, tokenize_split
    from .data.tokenizer import eos_id, token_byte_lengths
    from .train import checkpoint as ckpt
    from .train.distributed import DistInfo
    from .train.evaluate import evaluate, unigram_perplexity

    if args.batch_size < 1:
        raise UserError(f"--batch-size: got {args.batch_size}, expected an integer >= 1")
    if args.max_rows is not None and args.max_rows < 1:
        raise UserError(f"--max-rows: got {args.max_rows}, expected an integer >= 1 (default: every row)")
    run_dir, folder, tokenizer, model, run_config, device = _load_run(args.run, args.device, args.threads,
                                                                      args.tokenizer)
    # A checkpoint or model folder outside a run: its manifest says what it trained on, and nothing is written
    # beside it (the tokenized corpus goes to the user's cache folder, the result only to the screen).
    in_run = bool(run_config)
    if not in_run and (folder / ckpt.MANIFEST).exists():
        run_config = json.loads((folder / ckpt.MANIFEST).read_text()).get("meta", {})
    data = args.data or run_config.get("data", "shakespeare")
    corpus = load_corpus(data, run_config.get("validation_fraction", 0.05))
    cache_dir = run_config.get("cache_dir") or (run_dir / "cache" if in_run else _user_cache_dir())
    seq_len = run_config.get("seq_len", 256)
    val_rows = PackedRows(tokenize_split(corpus, "validation", tokenizer, cache_dir), seq_len)
    vocab = model.config.vocab_size
    byte_lengths = torch.tensor(token_byte_lengths(tokenizer) + [0] * (vocab - len(tokenizer)))
    info = DistInfo(0, 0, 1, device)
    autocast = torch.bfloat16 if device.type == "cuda" else None
    eos = eos_id(tokenizer) if run_config.get("document_mask", True) else None
    result = evaluate(model, val_rows, args.batch_size, info, args.max_rows, byte_lengths, autocast, eos)
    result["unigram_perplexity"] = unigram_perplexity(tokenize_split(corpus, "train", tokenizer, cache_dir),
                                                      val_rows, vocab, args.max_rows, eos)
    result.update(checkpoint=folder.name, data=data, seq_len=seq_len)
    if in_run:
        atomic_write_text(run_dir / "eval.json", json.dumps(result, indent=1))
    print(f"{folder}: validation perplexity {result['perplexity']:.2f} (loss {result['loss']:.4f} nats/token, "
          f"{result['bits_per_byte']:.3f} bits/byte, {result['tokens']:,} tokens of {data} in rows of {seq_len}); "
          f"unigram baseline perplexity {result['unigram_perplexity']:.2f}")
    return 0


def _user_cache_dir() -> Path:
    """Where commands run outside a run folder keep tokenized corpora: ``$XDG_CACHE_HOME/wonderful_matrices``
    (default ``~/.cache/wonderful_matrices``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wonderful_matrices"


# ---------------------------------------------------------------------------------------------- generate
def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder (newest complete checkpoint) or one checkpoint folder")
    p.add_argument("--prompt", action="append", default=None,
                   help="text to continue; repeat it for several prompts, generated as one batch "
                        "(default: one sample from the start of a document)")
    p.add_argument("--prompts-file", default=None,
                   help="a text file of prompts, one per line (blank lines skipped), after any --prompt")
    p.add_argument("--batch-size", type=int, default=64, help="prompts generated at once (left-padded)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to sample")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: off)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    _device_argument(p)
    _tokenizer_argument(p)
    _threads_argument(p)


def _prompts(args: argparse.Namespace) -> list[str]:
    """The prompts of ``--prompt`` and ``--prompts-file``, in order; one empty prompt when neither is given."""
    prompts = list(args.prompt or [])
    if args.prompts_file is not None:
        path = Path(args.prompts_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            reason = getattr(e, "strerror", None) or e  # a UnicodeDecodeError has no strerror
            raise UserError(f"--prompts-file: cannot read {path} ({type(e).__name__}: {reason})") from None
        from_file = [line for line in lines if line.strip()]
        if not from_file:
            raise UserError(f"--prompts-file: {path} holds no prompt (every line is blank)")
        prompts += from_file
    for prompt in prompts:
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:  # bytes the command line could not decode, kept as surrogates by Python
            raise UserError(f"--prompt: {prompt!r} is not valid UTF-8 text") from None
    return prompts or [""]


def left_padded_batch(token_lists: list[list[int]], pad_id: int):
    """Token id lists -> (input_ids, attention_mask), each (len(token_lists), longest) long, padded on the left
    with ``pad_id`` (mask 0 there)."""
    import torch

    width = max(len(ids) for ids in token_lists)
    input_ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(token_lists), width, dtype=torch.long)
    for row, ids in enumerate(token_lists):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        mask[row, width - len(ids):] = 1
    return input_ids, mask


def generated_counts(new_tokens, eos: int) -> list[int]:
    """Tokens each row generated: new_tokens (b, n) -> per row, n or up to and including its first ``eos``
    (``generate`` pads finished rows with it)."""
    counts = []
    for row in new_tokens.tolist():
        counts.append(row.index(eos) + 1 if eos in row else len(row))
    return counts


def run_generate(args: argparse.Namespace) -> int:
    import time

    import torch

    from .bench.common import synchronize
    from .data.tokenizer import eos_id

    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens: got {args.max_new_tokens}, expected an integer >= 1")
    if args.batch_size < 1:
        raise UserError(f"--batch-size: got {args.batch_size}, expected an integer >= 1")
    if not args.greedy and not (args.temperature > 0 and math.isfinite(args.temperature)):
        raise UserError(f"--temperature: got {args.temperature}, expected a positive number (or --greedy)")
    if args.top_k < 0:
        raise UserError(f"--top-k: got {args.top_k}, expected an integer >= 0 (0: off)")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p: got {args.top_p}, expected a number in (0, 1]")
    prompts = _prompts(args)
    _, _, tokenizer, model, _, device = _load_run(args.run, args.device, args.threads, args.tokenizer)
    torch.manual_seed(args.seed)
    eos = eos_id(tokenizer)
    sampling = {} if args.greedy else {"temperature": args.temperature, "top_k": args.top_k or None,
                                       "top_p": args.top_p}
    texts, tokens, seconds = [], 0, 0.0
    for first in range(0, len(prompts), args.batch_size):
        batch = prompts[first:first + args.batch_size]
        # a prompt of no tokens (empty, or only what the tokenizer drops) starts a document: EOS alone
        token_lists = [tokenizer.encode(p, add_special_tokens=False) or [eos] for p in batch]
        input_ids, mask = (t.to(device) for t in left_padded_batch(token_lists, eos))
        synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids, attention_mask=mask, do_sample=not args.greedy,
                                 max_new_tokens=args.max_new_tokens, pad_token_id=eos, eos_token_id=eos, **sampling)
        synchronize(device)
        seconds += time.perf_counter() - start
        new = out[:, input_ids.shape[1]:].cpu()
        tokens += sum(generated_counts(new, eos))
        texts += [p + tokenizer.decode(row, skip_special_tokens=True) for p, row in zip(batch, new)]
    if len(texts) == 1:
        print(texts[0])
    else:
        for number, text in enumerate(texts, 1):
            print(f"--- sample {number}/{len(texts)}")
            print(text)
    print(f"{tokens} tokens for {len(texts)} prompt{'s' * (len(texts) > 1)} in {seconds:.2f} s "
          f"({tokens / max(seconds, 1e-9):.1f} tokens/s, batches of up to {args.batch_size})", file=sys.stderr)
    return 0


# -------------------------------------------------------------------------------------------------- info
def add_info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, help="a preset name, or 'all': print parameter counts")


def run_info(args: argparse.Namespace) -> int:
    import importlib.metadata as md
    import os

    import torch

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    print(f"python {platform.python_version()} ({platform.platform()})")
    for name in ("torch", "triton", "transformers", "tokenizers", "safetensors", "datasets"):
        print(f"{name} {version(name)}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"device cuda:{i}: {torch.cuda.get_device_name(i)}")
    print(f"device cpu: {os.cpu_count()} cores, {torch.get_num_threads()} torch threads")
    triton_ok = version("triton") != "not installed"
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    print("op backends: torch (usable everywhere); triton " +
          ("usable (CUDA)" if triton_ok and torch.cuda.is_available() else
           "usable (interpreter, TRITON_INTERPRET=1)" if triton_ok and interp else
           "installed but needs a CUDA GPU (or TRITON_INTERPRET=1 for tests)" if triton_ok else "not installed"))
    if args.preset:
        from .train.loop import build_model

        try:
            from .models import presets
        except ImportError:
            raise UserError("this build has no model presets (wonderful_matrices.models.presets)") from None
        names = presets.names() if args.preset == "all" else [args.preset]
        for name in names:
            if name not in presets.names():
                raise UserError(f"unknown preset {name!r}; choose one of: all, {', '.join(presets.names())}")
            with torch.device("meta"):
                model = build_model(name)
            count = sum(p.numel() for p in model.parameters())
            print(f"preset {name}: {count:,} parameters ({count / 1e6:.1f}M)")
    return 0


# ------------------------------------------------------------------------------------------------- bench
def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """``wm bench NAME [--quick] --out DIR ...``: the arguments of ``python -m wonderful_matrices.bench``."""
    from .bench.__main__ import add_arguments

    add_arguments(parser)


def run_bench(args: argparse.Namespace) -> int:
    """Run one experiment of the benchmark registry (``wonderful_matrices.bench.REGISTRY``)."""
    from .bench.__main__ import main_from_args

    return main_from_args(args, prog="wm bench: error")


# -------------------------------------------------------------------------------------------------- main
SUBCOMMANDS = {
    "train": ("train a model (re-running the same command resumes)", add_train_arguments, run_train),
    "eval": ("validation perplexity and bits per byte of a run", add_eval_arguments, run_eval),
    "generate": ("sample text from a run", add_generate_arguments, run_generate),
    "info": ("versions, devices, usable backends, preset sizes", add_info_arguments, run_info),
    "bench": ("run one of the paper's experiments or the kernel benchmarks", add_bench_arguments, run_bench),
}


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after a flag's help unless the default is None or False or the help names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The ``wm`` argument parser with one subparser per entry of ``SUBCOMMANDS``."""
    parser = argparse.ArgumentParser(prog="wm", description="Wonderful Matrices: train, evaluate, sample, benchmark")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in SUBCOMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text,
                                     formatter_class=_DefaultsHelpFormatter))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``wm``; returns the exit status (2 for a user error, with a one-line message)."""
    args = build_parser().parse_args(argv)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        return SUBCOMMANDS[args.command][2](args)
    except UserError as e:
        # under torchrun every rank raises the same error (or rank 0's, passed on): one rank says it
        if os.environ.get("RANK", "0") == "0" or getattr(e, "rank_local", False):
            print(f"wm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
