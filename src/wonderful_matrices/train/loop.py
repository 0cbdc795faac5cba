"""The training loop (nanoGPT-style, one readable function) and the single entry point for models.

``train(TrainConfig(...))`` does, in order: start the process group when under torchrun; load the corpus;
train (or load) the tokenizer into ``<out>/tokenizer``; tokenize into the cached token files; build the
model with ``build_model`` (or load it from the newest complete checkpoint, which also restores optimizer,
scheduler, RNG and the step — the data order is a function of the step, so a resumed run continues
exactly where an uninterrupted one would be); then optimizer steps of ``grad_accum`` micro-batches with
AdamW, clipping, a learning-rate schedule, bf16 autocast on CUDA, evaluation every ``eval_interval`` steps,
and a checkpoint every ``save_interval`` steps and at the end. Rank 0 writes ``metrics.jsonl``,
TensorBoard logs (when ``tensorboard`` is installed), ``loss.png`` and ``summary.json``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import atomic_write_text
from ..data.corpora import load_corpus
from ..data.packing import PackedRows, document_position_ids, tokenize_split
from ..data.tokenizer import check_fits, eos_id, load_tokenizer, token_byte_lengths, tokenizer_hash, train_bpe
from ..errors import UserError
from . import checkpoint as ckpt
from .distributed import (DistInfo, all_reduce_sum, barrier, broadcast_object, full_model_state,
                          full_optimizer_state, gather_objects, init_distributed, load_full_optimizer_state,
                          shutdown, unwrap, weights_fingerprint, wrap_model)
from .evaluate import evaluate
from .schedule import lr_multiplier


# ------------------------------------------------------------------------------------------------- models
def model_config(preset_or_config):
    """A model configuration from a preset name, a ``config.json`` file or folder, or a config object."""
    from transformers import AutoConfig, PretrainedConfig

    import wonderful_matrices.models  # noqa: F401  (registers our configurations with the Auto API)

    if isinstance(preset_or_config, PretrainedConfig):
        return preset_or_config
    path = Path(str(preset_or_config))
    if path.exists():
        try:
            return AutoConfig.from_pretrained(path.parent if path.is_file() else path)
        except Exception as e:
            raise UserError(f"cannot read a model config from {path} ({type(e).__name__}); give a preset name "
                            "or a folder/config.json made by save_pretrained") from None
    from ..models import presets

    if preset_or_config not in presets.names():
        raise UserError(f"unknown preset {preset_or_config!r}; choose one of: {', '.join(presets.names())}")
    return presets.get(preset_or_config)


def build_model(preset_or_config):
    """A freshly initialised causal LM (float32) for a preset name, config file/folder or config object.

    This is the only place the training code creates a model.
    """
    from transformers import AutoModelForCausalLM

    import wonderful_matrices.models  # noqa: F401  (registers our model classes with the Auto API)

    return AutoModelForCausalLM.from_config(model_config(preset_or_config)).float()


# ------------------------------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    """Everything ``train`` needs; the command line maps one flag to each field.

    ``warmup``/``decay`` are fractions of ``max_steps``; ``batch_size`` is rows per micro-batch per rank.
    """

    out: str
    preset: object = "cheems-small"
    data: str = "shakespeare"
    tokenizer: str | None = None
    max_steps: int = 1000
    batch_size: int = 8
    seq_len: int = 256
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    schedule: str = "wsd"
    warmup: float = 0.05
    decay: float = 0.2
    weight_decay: float = 0.1
    clip: float = 1.0
    seed: int = 0
    eval_interval: int = 100
    eval_rows: int = 64
    save_interval: int = 100
    keep_last: int = 2
    log_interval: int = 10
    compile: bool = False
    fsdp: bool = False
    device: str = "auto"
    threads: int | None = None
    validation_fraction: float = 0.05
    cache_dir: str | None = None
    progress: bool = True
    document_mask: bool = True  # rows are packed documents: positions restart after each EOS (data/packing.py)

    def check(self) -> None:
        """Raise ``UserError`` for values that cannot work."""
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads: got {self.threads}, expected an integer >= 1")
        for name in ("max_steps", "batch_size", "grad_accum", "eval_interval", "save_interval", "keep_last",
                     "log_interval", "eval_rows"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')}: got {getattr(self, name)}, expected an integer >= 1")
        if self.seq_len < 2:
            raise UserError(f"--seq-len: got {self.seq_len}, expected an integer >= 2")
        if not self.lr > 0:
            raise UserError(f"--lr: got {self.lr}, expected a positive number")
        for name in ("warmup", "decay"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"--{name}: got {getattr(self, name)}, expected a fraction of the steps in [0, 1]")

    def run_facts(self) -> dict:
        """The settings a resumed run must share with the run it continues."""
        preset = self.preset if isinstance(self.preset, str) else f"config:{type(self.preset).__name__}"
        return {"preset": preset, "data": self.data, "tokenizer": self.tokenizer, "seq_len": self.seq_len,
                "batch_size": self.batch_size, "grad_accum": self.grad_accum, "seed": self.seed}


# ---------------------------------------------------------------------------------------------- utilities
class _Log:
    """Rank-0 output: messages, ``metrics.jsonl`` and TensorBoard."""

    def __init__(self, run_dir: Path, info: DistInfo, resume_step: int):
        self.main = info.is_main
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if not self.main:
            return
        if self.path.exists():  # drop records past the checkpoint we resume from (and a half-written line)
            kept = [json.dumps(r) for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1)
        except ImportError:
            self.tb = None

    def say(self, message: str) -> None:
        if self.main:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)

    def record(self, kind: str, step: int, **values) -> None:
        if not self.main:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (a line cut short by a killed process is skipped)."""
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def plot_losses(run_dir: Path) -> Path | None:
    """Draw train and validation loss from ``metrics.jsonl`` into ``loss.png``; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    records = read_metrics(path)
    train = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
    val = [(r["step"], r["loss"]) for r in records if r["kind"] == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train")
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = run_dir / "loss.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rank0_then_all(info: DistInfo, fn):
    """Run ``fn`` on rank 0; re-raise its ``UserError`` on every rank (so no rank hangs)."""
    error = None
    if info.is_main:
        try:
            fn()
        except UserError as e:
            error = str(e)
    error = broadcast_object(error, info)
    if error is not None:
        raise UserError(error)


def _check_run_config(run_dir: Path, cfg: TrainConfig, log: _Log | None = None) -> None:
    path = run_dir / "run_config.json"
    facts = cfg.run_facts()
    if path.exists():
        before = json.loads(path.read_text())
        for key, value in facts.items():
            if before.get("facts", {}).get(key) != value:
                raise UserError(f"{run_dir} holds a run with {key}={before['facts'].get(key)!r} (now {value!r}); "
                                "re-run the same command to resume, or pass another --out")
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "preset"}
    atomic_write_text(path, json.dumps({"facts": facts, "config": config}, indent=1, default=str))


# ------------------------------------------------------------------------------------------------- train
def train(cfg: TrainConfig) -> dict:
    """Train (or resume) the run in ``cfg.out``; returns the summary also written to ``summary.json``."""
    cfg.check()
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, info)
    finally:
        shutdown(info)


def _train(cfg: TrainConfig, info: DistInfo) -> dict:
    started = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.out)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else run_dir / "cache"

    def prepare():
        run_dir.mkdir(parents=True, exist_ok=True)
        _check_run_config(run_dir, cfg)

    _rank0_then_all(info, prepare)
    box = {}
    _rank0_then_all(info, lambda: box.update(path=ckpt.latest_checkpoint(run_dir, warn=lambda m: print(m, file=sys.stderr))))
    resume_from = broadcast_object(box.get("path"), info)

    # data and tokenizer
    corpus = load_corpus(cfg.data, cfg.validation_fraction)
    config = model_config(resume_from if resume_from else cfg.preset)
    vocab_size = config.vocab_size
    tok_dir = run_dir / "tokenizer"

    def make_tokenizer():
        if tok_dir.exists():
            return
        if cfg.tokenizer:
            tmp = run_dir / ".tmp-tokenizer"
            load_tokenizer(cfg.tokenizer).save_pretrained(tmp)
            os.replace(tmp, tok_dir)
        else:
            print(f"training a byte-level BPE tokenizer ({vocab_size} tokens) on {corpus.name}", file=sys.stderr)
            train_bpe(corpus.train, vocab_size, tok_dir)

    _rank0_then_all(info, make_tokenizer)
    tokenizer = load_tokenizer(tok_dir)
    check_fits(tokenizer, vocab_size)
    _rank0_then_all(info, lambda: [tokenize_split(corpus, s, tokenizer, cache_dir) for s in ("train", "validation")])
    train_rows = PackedRows(tokenize_split(corpus, "train", tokenizer, cache_dir), cfg.seq_len)
    val_rows = PackedRows(tokenize_split(corpus, "validation", tokenizer, cache_dir), cfg.seq_len)
    byte_lengths = torch.tensor(token_byte_lengths(tokenizer) + [0] * (vocab_size - len(tokenizer)))
    corpus_manifest = None if corpus.manifest is None else {
        **corpus.manifest, "train_tokens": len(train_rows.tokens), "validation_tokens": len(val_rows.tokens)}

    # model, optimizer, schedule (same seed on every rank: identical initial weights)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model = ckpt.load_model(resume_from) if resume_from else build_model(config)
    eos = eos_id(tokenizer)
    for holder in (model.config, model.generation_config):
        if holder is not None:
            holder.eos_token_id, holder.bos_token_id, holder.pad_token_id = eos, eos, eos
    model.to(info.device)
    model_name = type(model).__name__
    wrapped = wrap_model(model, info, cfg.fsdp)
    decay = [p for p in wrapped.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in wrapped.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)
    warmup_steps = int(round(cfg.warmup * cfg.max_steps))
    decay_steps = min(int(round(cfg.decay * cfg.max_steps)), cfg.max_steps - warmup_steps) if cfg.schedule == "wsd" else 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(cfg.schedule, cfg.max_steps, warmup_steps, decay_steps, cfg.min_lr_ratio))
    step = 0
    if resume_from:
        state = ckpt.load_trainer_state(resume_from)
        load_full_optimizer_state(wrapped, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        rng = state["rng"]
        if len(rng) == info.world_size:
            _set_rng_state(rng[info.rank])
    log = _Log(run_dir, info, step)
    if resume_from:
        log.say(f"resuming from {resume_from} (step {step})")
        before = json.loads((resume_from / ckpt.MANIFEST).read_text())["meta"]
        if before.get("corpus") != corpus.fingerprint or before.get("tokenizer_hash") != tokenizer_hash(tokenizer):
            log.say(f"warning: the corpus or tokenizer changed since {resume_from.name} was saved; "
                    "training continues on the new data")
    forward = torch.compile(wrapped) if cfg.compile else wrapped
    autocast_dtype = torch.bfloat16 if info.device.type == "cuda" else None
    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * info.world_size
    n_params = sum(p.numel() for p in model.parameters())
    log.say(f"model {model_name}: {n_params / 1e6:.2f}M parameters on {info.device} x{info.world_size}; "
            f"{len(train_rows.tokens):,} training tokens, {tokens_per_step:,} tokens/step")
    if corpus_manifest is not None:
        log.say(f"corpus {corpus.name}: {corpus_manifest['files']:,} files, {corpus_manifest['bytes']:,} bytes, "
                f"content sha256 {corpus_manifest['content_sha256'][:16]}")
    eval_eos = eos if cfg.document_mask else None

    def save(at_step: int) -> None:
        model_state = full_model_state(wrapped)
        optim_state = full_optimizer_state(wrapped, optimizer)
        rng = gather_objects(_rng_state(), info)
        if info.is_main:
            ckpt.save_checkpoint(run_dir, at_step, model, model_state,
                                 {"optimizer": optim_state, "scheduler": scheduler.state_dict(), "rng": rng,
                                  "step": at_step},
                                 {**cfg.run_facts(), "world_size": info.world_size, "tokens": at_step * tokens_per_step,
                                  "tokenizer_hash": tokenizer_hash(tokenizer), "corpus": corpus.fingerprint,
                                  "corpus_manifest": corpus_manifest},
                                 keep_last=cfg.keep_last)
        barrier(info)

    from tqdm import tqdm

    bar = tqdm(total=cfg.max_steps, initial=step, disable=not (info.is_main and cfg.progress), unit="step",
               dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
    model.train()
    window_loss, window_steps, window_time = 0.0, 0, 0.0
    last_eval = None
    ddp = hasattr(wrapped, "no_sync")
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=info.device)
        for micro in range(cfg.grad_accum):
            last = micro == cfg.grad_accum - 1
            batch = train_rows.train_batch(step, cfg.batch_size, cfg.grad_accum, micro, cfg.seed,
                                           info.rank, info.world_size).to(info.device)
            if cfg.fsdp and info.distributed:
                wrapped.set_requires_gradient_sync(last)
            sync = wrapped.no_sync() if ddp and not last else contextlib.nullcontext()
            with sync:
                with torch.autocast(info.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    positions = document_position_ids(batch, eos) if cfg.document_mask else None
                    loss = forward(input_ids=batch, position_ids=positions, labels=batch).loss / cfg.grad_accum
                loss.backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), cfg.clip) if cfg.clip > 0 else None
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_value = loss_sum.item()
        if not math.isfinite(loss_value):
            raise UserError(f"the loss became {loss_value} at step {step}; lower --lr or raise --warmup and re-run "
                            f"with a new --out (checkpoints in {run_dir} stop before the divergence)")
        window_loss += loss_value
        window_steps += 1
        window_time += time.perf_counter() - t0
        if step % cfg.log_interval == 0 or step == cfg.max_steps:
            mean_loss = all_reduce_sum(torch.tensor([window_loss / window_steps]), info).item() / info.world_size
            tok_s = window_steps * tokens_per_step / max(window_time, 1e-9)
            lr = scheduler.get_last_lr()[0]
            log.record("train", step, loss=mean_loss, lr=lr, tokens_per_s=tok_s,
                       grad_norm=float(grad_norm) if grad_norm is not None else None,
                       tokens=step * tokens_per_step, elapsed_s=time.perf_counter() - started)
            bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{tok_s:,.0f}", lr=f"{lr:.2e}", refresh=False)
            window_loss, window_steps, window_time = 0.0, 0, 0.0
        bar.update(1)
        if step % cfg.eval_interval == 0 or step == cfg.max_steps:
            last_eval = evaluate(forward, val_rows, cfg.batch_size, info, cfg.eval_rows, byte_lengths, autocast_dtype,
                                 eval_eos)
            log.record("eval", step, **last_eval)
            log.say(f"step {step}: validation loss {last_eval['loss']:.4f}, perplexity {last_eval['perplexity']:.2f}")
        if step % cfg.save_interval == 0 or step == cfg.max_steps:
            save(step)
    bar.close()
    if last_eval is None:  # nothing left to train (the run was already complete): report where it stands
        last_eval = evaluate(forward, val_rows, cfg.batch_size, info, cfg.eval_rows, byte_lengths, autocast_dtype,
                             eval_eos)
    fingerprints = gather_objects(weights_fingerprint(wrapped), info) if info.distributed else None
    summary = {"rank": info.rank, "step": step, "max_steps": cfg.max_steps, "world_size": info.world_size, "parameters": n_params,
               "tokens": step * tokens_per_step, "validation": last_eval, "wall_s": time.perf_counter() - started,
               "device": str(info.device), "replica_fingerprints": fingerprints, "corpus_manifest": corpus_manifest}
    if info.is_main:
        if fingerprints and len(set(fingerprints)) != 1:
            log.say("warning: the ranks ended with different weights")
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
        plot = plot_losses(run_dir)
        log.say(f"done: step {step}; checkpoints and {plot.name if plot else 'no plot'} in {run_dir}")
    log.close()
    return summary
