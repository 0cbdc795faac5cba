"""The training loop (nanoGPT-style: set up, step, finish) and the single entry point for models.

``train(TrainConfig(...))`` runs three phases:

* :func:`setup` — rank 0 checks everything the run needs (the run folder and its record, the resume rule of
  :mod:`.resume`, the model config, the corpus, the tokenizer, that both splits hold a row) and only then
  writes the run's files (``tokenizer/``, ``run_config.json``); then every rank loads the data, builds the
  model (or loads the newest complete checkpoint, with optimizer, scheduler, RNG and step — the data order is
  a function of the step, so a resumed run continues exactly where an uninterrupted one would be), the AdamW
  optimizer and the learning-rate schedule;
* :func:`train_steps` — optimizer steps of ``grad_accum`` micro-batches with clipping, bf16 autocast on CUDA,
  a log record every ``log_interval`` steps, evaluation every ``eval_interval`` and a checkpoint every
  ``save_interval`` steps and at the end;
* :func:`finish` — ``summary.json`` and the loss plot.

Rank 0 writes ``metrics.jsonl``, TensorBoard logs and the plot through :mod:`.metrics`. A full disk or an
unwritable folder ends the run with a one-line ``UserError``; the newest complete checkpoint stays loadable.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import atomic_write_text
from ..data.corpora import Corpus, load_corpus
from ..data.packing import PackedRows, document_position_ids, tokenize_split
from ..data.tokenizer import (
    MIN_BPE_VOCAB,
    check_fits,
    eos_id,
    load_tokenizer,
    save_tokenizer,
    token_byte_lengths,
    tokenizer_hash,
    train_bpe,
)
from ..errors import UserError
from ..ops.common import trusted_values
from . import checkpoint as ckpt
from .distributed import (
    DistInfo,
    all_reduce_sum,
    all_reduce_sum_in_place,
    barrier,
    broadcast_object,
    full_model_state,
    full_optimizer_state,
    gather_objects,
    init_distributed,
    load_full_optimizer_state,
    shutdown,
    weights_fingerprint,
    wrap_model,
)
from .evaluate import evaluate
from .graph_step import GraphedTrainStep
from .metrics import MetricsLog, plot_losses
from .optim import adamw, apply_gradients, make_capturable, own_options
from .resume import plan_schedule, read_run_config, write_run_config
from .schedule import SCHEDULES, lr_multiplier


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
        except Exception as e:  # noqa: BLE001 - whatever transformers raises, the fix is the same
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

    ``warmup``/``decay`` are fractions of ``max_steps`` (the warm-up's length in steps is fixed at the first
    start; see :mod:`.resume`); ``batch_size`` is rows per micro-batch per rank.
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
    cuda_graph: bool = False  # record the whole step once as a CUDA graph and replay it (one CUDA process)
    fsdp: bool = False
    device: str = "auto"
    threads: int | None = None
    validation_fraction: float = 0.05
    cache_dir: str | None = None
    progress: bool = True
    document_mask: bool = True  # rows are packed documents: positions restart after each EOS (data/packing.py)

    def check(self) -> None:
        """Raise ``UserError`` for values that cannot work (before anything is read or written)."""
        if not str(self.out).strip():
            raise UserError("--out: got an empty path, expected a folder")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads: got {self.threads}, expected an integer >= 1")
        for name in ("max_steps", "batch_size", "grad_accum", "eval_interval", "save_interval", "keep_last",
                     "log_interval", "eval_rows"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')}: got {getattr(self, name)}, expected an integer >= 1")
        if self.seq_len < 2:
            raise UserError(f"--seq-len: got {self.seq_len}, expected an integer >= 2")
        if not 0 <= self.seed < 2**63:
            raise UserError(f"--seed: got {self.seed}, expected an integer in [0, 2**63)")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr: got {self.lr}, expected a positive number")
        if self.schedule not in SCHEDULES:
            raise UserError(f"--schedule: got {self.schedule!r}, expected one of {', '.join(SCHEDULES)}")
        for name in ("warmup", "decay", "min_lr_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"--{name.replace('_', '-')}: got {getattr(self, name)}, expected a number in [0, 1]")
        for name in ("weight_decay", "clip"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise UserError(f"--{name.replace('_', '-')}: got {getattr(self, name)}, expected a number >= 0"
                                + (" (0: off)" if name == "clip" else ""))
        if self.cuda_graph and self.fsdp:
            raise UserError("--cuda-graph: not with --fsdp (a recorded step runs in one process; drop one of them)")
        if not 0.0 < self.validation_fraction < 1.0:
            raise UserError(f"--validation-fraction: got {self.validation_fraction}, expected a number in (0, 1)")

    def run_facts(self) -> dict:
        """The settings a resumed run must share with the run it continues (its data depend on them)."""
        preset = self.preset if isinstance(self.preset, str) else f"config:{type(self.preset).__name__}"
        return {"preset": preset, "data": self.data, "tokenizer": self.tokenizer, "seq_len": self.seq_len,
                "batch_size": self.batch_size, "grad_accum": self.grad_accum, "seed": self.seed}


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) the run in ``cfg.out``; returns the summary also written to ``summary.json``."""
    cfg.check()  # before normpath, which turns an empty --out into "."
    cfg = dataclasses.replace(cfg, out=os.path.normpath(cfg.out),
                              cache_dir=os.path.normpath(cfg.cache_dir) if cfg.cache_dir else None)
    info = init_distributed(cfg.device)
    run, finished = None, False
    try:
        _check_cuda_graph(cfg, info)
        run = setup(cfg, info)
        last_eval = train_steps(run, cfg, info)
        summary = finish(run, cfg, info, last_eval)
        finished = True
        return summary
    except OSError as e:
        where = e.filename or cfg.out
        if e.errno == errno.ENOSPC:
            error = UserError(f"no space left on the device writing {where}; free space and re-run the same command "
                              "(it resumes from the newest complete checkpoint)")
        else:
            error = UserError(f"cannot use {where} ({e.strerror or e}); check the path and its permissions")
        error.rank_local = info.rank != 0  # the CLI prints rank 0's errors, and another rank's own ones
        raise error from None
    finally:
        # the wrapped model (FSDP's device mesh) holds the process group: release it before the group is torn down
        # rather than at interpreter exit, where a gloo group's background threads can abort the process
        run = None
        if info.distributed:
            gc.collect()
        shutdown(info, wait=finished)


# -------------------------------------------------------------------------------------------------- setup
@dataclass
class Run:
    """A run being trained: what :func:`setup` builds and :func:`train_steps` advances (``step``)."""

    run_dir: Path
    corpus: Corpus
    tokenizer: object
    plan: dict
    model: torch.nn.Module
    wrapped: torch.nn.Module
    forward: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    train_rows: PackedRows
    val_rows: PackedRows
    byte_lengths: torch.Tensor
    autocast_dtype: torch.dtype | None
    tokens_per_step: int
    eos: int
    corpus_manifest: dict | None
    log: MetricsLog
    step: int
    started: float
    graph_step: GraphedTrainStep | None = None  # --cuda-graph: the recorded step (None: steps run eagerly)


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def _on_rank0(info: DistInfo, fn):
    """``fn()`` on rank 0 (None elsewhere). When it raises, rank 0 raises its exception and every other rank a
    ``UserError`` with its message, so no rank waits for the others (an ``OSError`` — a bad --out, a full disk —
    becomes train's one-line error on rank 0)."""
    result, error = None, None
    if info.is_main:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - whatever it is, the other ranks must hear of it
            error = e
    message = broadcast_object(None if error is None else str(error) or type(error).__name__, info)
    if error is not None:
        raise error
    if message is not None:
        raise UserError(f"rank 0 stopped the run: {message}")
    return result


def _prepare_run_folder(cfg: TrainConfig, run_dir: Path, cache_dir: Path,
                        world_size: int = 1) -> tuple[Corpus, str | None, dict]:
    """Rank 0: check everything the run needs, then write its files. Returns the corpus, the checkpoint to
    resume from (or None) and the learning-rate plan.

    Nothing is written before the last check has passed, apart from the token cache (keyed by content, it
    never makes a folder unusable); when that check fails, a run folder this call created is removed again.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file; give a folder (new, or holding a run to resume)")
    created = not run_dir.exists()
    previous = read_run_config(run_dir)
    resume_from = ckpt.latest_checkpoint(run_dir, warn=_warn)
    if resume_from is not None:
        saved = json.loads((resume_from / ckpt.MANIFEST).read_text())
        if cfg.max_steps < saved["step"]:
            raise UserError(f"--max-steps: got {cfg.max_steps}, but the run in {run_dir} is at step {saved['step']} "
                            f"({resume_from.name}); pass at least {saved['step']}, or another --out")
        trained_by = saved["meta"].get("world_size", world_size)
        if trained_by != world_size:  # the rows each rank reads, and the batch, depend on it
            raise UserError(f"the run in {run_dir} was trained by {trained_by} process(es) ({resume_from.name}), this "
                            f"one has {world_size}: its data order and batch depend on that; resume with "
                            f"{trained_by}, or pass another --out")
        if previous is None:  # the record was lost: the checkpoint's manifest holds the facts the data depend on
            previous = {"facts": {k: saved["meta"][k] for k in cfg.run_facts() if k in saved["meta"]}, "config": {}}
    plan = plan_schedule(cfg, previous, resuming=resume_from is not None, say=_warn)
    lr_multiplier(cfg.schedule, plan["max_steps"], plan["warmup_steps"], plan["decay_steps"], cfg.min_lr_ratio)
    corpus = load_corpus(cfg.data, cfg.validation_fraction)
    vocab_size = model_config(resume_from if resume_from else cfg.preset).vocab_size
    tok_dir = run_dir / "tokenizer"
    if tok_dir.exists():
        tokenizer = load_tokenizer(tok_dir)
    elif cfg.tokenizer:
        tokenizer = load_tokenizer(cfg.tokenizer)
    else:
        if vocab_size < MIN_BPE_VOCAB:
            raise UserError(f"--preset: the model's vocab_size is {vocab_size}, too small for the byte-level BPE "
                            f"tokenizer wm train would train (at least {MIN_BPE_VOCAB}); pass --tokenizer, or a "
                            "model with a larger vocabulary")
        _warn(f"training a byte-level BPE tokenizer ({vocab_size} tokens) on {corpus.name}")
        tokenizer = train_bpe(corpus.train, vocab_size)
    check_fits(tokenizer, vocab_size)
    eos_id(tokenizer)
    try:
        for split in ("train", "validation"):
            PackedRows(tokenize_split(corpus, split, tokenizer, cache_dir), cfg.seq_len)
    except BaseException:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    run_dir.mkdir(parents=True, exist_ok=True)
    if not tok_dir.exists():
        save_tokenizer(tokenizer, tok_dir)
    write_run_config(run_dir, cfg, plan)
    return corpus, str(resume_from) if resume_from else None, plan


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def setup(cfg: TrainConfig, info: DistInfo) -> Run:
    """Check and prepare the run folder (rank 0), then load data, model, optimizer and schedule on every rank."""
    started = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.out)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else run_dir / "cache"
    prepared = _on_rank0(info, lambda: _prepare_run_folder(cfg, run_dir, cache_dir, info.world_size))
    resume_from, plan = broadcast_object(prepared[1:] if info.is_main else None, info)
    resume_from = Path(resume_from) if resume_from else None

    # data and tokenizer (rank 0 has written the tokenizer and the token files)
    corpus = prepared[0] if info.is_main else load_corpus(cfg.data, cfg.validation_fraction)
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    train_rows = PackedRows(tokenize_split(corpus, "train", tokenizer, cache_dir), cfg.seq_len)
    val_rows = PackedRows(tokenize_split(corpus, "validation", tokenizer, cache_dir), cfg.seq_len)
    config = model_config(resume_from if resume_from else cfg.preset)
    byte_lengths = torch.tensor(token_byte_lengths(tokenizer) + [0] * (config.vocab_size - len(tokenizer)))
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
    wrapped = wrap_model(model, info, cfg.fsdp)
    optimizer = adamw(wrapped, cfg.lr, cfg.weight_decay)
    multiplier = lr_multiplier(cfg.schedule, plan["max_steps"], plan["warmup_steps"], plan["decay_steps"],
                               cfg.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    step = 0
    if resume_from:
        state = ckpt.load_trainer_state(resume_from)
        with own_options(optimizer):  # run as this process runs it (fused, capturable), not as the saving one did
            load_full_optimizer_state(wrapped, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):  # the plan's rate (re-planned or not)
            group["lr"] = base_lr * multiplier(step)
        rng = state["rng"]
        if len(rng) == info.world_size:
            _set_rng_state(rng[info.rank])
    log = MetricsLog(run_dir, info.is_main, step)
    if resume_from:
        log.say(f"resuming from {resume_from} (step {step})")
        before = json.loads((resume_from / ckpt.MANIFEST).read_text())["meta"]
        if before.get("corpus") != corpus.fingerprint or before.get("tokenizer_hash") != tokenizer_hash(tokenizer):
            log.say(f"warning: the corpus or tokenizer changed since {resume_from.name} was saved; "
                    "training continues on the new data")
    autocast_dtype = torch.bfloat16 if info.device.type == "cuda" else None
    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * info.world_size
    n_params = sum(p.numel() for p in model.parameters())
    log.say(f"model {type(model).__name__}: {n_params / 1e6:.2f}M parameters on {info.device} x{info.world_size}; "
            f"{len(train_rows.tokens):,} training tokens, {tokens_per_step:,} tokens/step")
    if corpus_manifest is not None:
        log.say(f"corpus {corpus.name}: {corpus_manifest['files']:,} files, {corpus_manifest['bytes']:,} bytes, "
                f"content sha256 {corpus_manifest['content_sha256'][:16]}")
    run = Run(run_dir, corpus, tokenizer, plan, model, wrapped, torch.compile(wrapped) if cfg.compile else wrapped,
              optimizer, scheduler, train_rows, val_rows, byte_lengths, autocast_dtype, tokens_per_step, eos,
              corpus_manifest, log, step, started)
    if cfg.cuda_graph:
        run.graph_step = _graphed_step(run, cfg, info)
    return run


# ---------------------------------------------------------------------------------------------- the steps
def _step_batches(run: Run, cfg: TrainConfig, info: DistInfo) -> torch.Tensor:
    """This rank's ``grad_accum`` micro-batches of the step, ``(grad_accum, batch_size, seq_len)`` on the device (the
    host-to-device copy does not wait for the GPU)."""
    return torch.stack([run.train_rows.train_batch(run.step, cfg.batch_size, cfg.grad_accum, micro, cfg.seed,
                                                   info.rank, info.world_size) for micro in range(cfg.grad_accum)]
                       ).to(info.device, non_blocking=True)


def _micro_batch_weights(batches: torch.Tensor, run: Run, cfg: TrainConfig, info: DistInfo) -> torch.Tensor:
    """batches (m, b, l) -> (m,) float32 on their device: each micro-batch's share of the targets the whole step
    scores, on every rank, times the world size. Weighting each micro-batch's mean loss by it gives the mean loss
    over every scored target of the step, as one process with the whole batch computes it (DDP and FSDP then
    average the ranks' gradients): with packed documents a row scores fewer targets the more documents start in
    it, so plain means of the micro-batches' means weighed their targets unequally. Device ops and one all-reduce,
    no host synchronisation."""
    m, b, length = batches.shape
    if cfg.document_mask:  # a document's first token (position 0) is not a target, as in _step_loss's loss
        scored = document_position_ids(batches.reshape(m * b, length), run.eos)[:, 1:] > 0
        counts = scored.reshape(m, -1).sum(1).float()
    else:
        counts = torch.full((m,), float(b * (length - 1)), device=batches.device)
    total = all_reduce_sum_in_place(counts.sum(), info)
    return counts * info.world_size / total.clamp(min=1.0)


def _forward_backward(run: Run, cfg: TrainConfig, info: DistInfo) -> torch.Tensor:
    """Gradients of one optimizer step (``grad_accum`` micro-batches, each weighted by its share of the step's
    targets: :func:`_micro_batch_weights`; synchronised across ranks on the last); returns this rank's share of the
    step's mean loss times the world size (a device tensor; summed over ranks and divided by the world size: the
    step's mean loss). No host synchronisation: the token ids were checked against the model's vocabulary where
    the data entered (:func:`_prepare_run_folder`), so the model runs inside ``trusted_values()``."""
    ddp = hasattr(run.wrapped, "no_sync")
    batches = _step_batches(run, cfg, info)
    weights = _micro_batch_weights(batches, run, cfg, info)
    loss_sum = torch.zeros((), device=info.device)
    for micro in range(cfg.grad_accum):
        last = micro == cfg.grad_accum - 1
        if cfg.fsdp and info.distributed:
            run.wrapped.set_requires_gradient_sync(last)
        with run.wrapped.no_sync() if ddp and not last else contextlib.nullcontext(), trusted_values():
            loss = _step_loss(run, cfg, batches[micro]) * weights[micro]
            loss.backward()
        loss_sum += loss.detach()
    return loss_sum


def _step_loss(run: Run, cfg: TrainConfig, batch: torch.Tensor) -> torch.Tensor:
    """The mean next-token loss of one micro-batch (b, seq_len) of token ids, as every training step computes it."""
    with torch.autocast(batch.device.type, dtype=run.autocast_dtype, enabled=run.autocast_dtype is not None):
        positions = document_position_ids(batch, run.eos) if cfg.document_mask else None
        return run.forward(input_ids=batch, position_ids=positions, labels=batch).loss


def _check_cuda_graph(cfg: TrainConfig, info: DistInfo) -> None:
    """``UserError`` for ``--cuda-graph`` where a step cannot be recorded (before anything is written)."""
    if cfg.cuda_graph and (info.device.type != "cuda" or info.distributed):
        raise UserError(f"--cuda-graph: needs one process on a CUDA device (this run has {info.world_size} on "
                        f"{info.device}); drop --cuda-graph")


def _graphed_step(run: Run, cfg: TrainConfig, info: DistInfo) -> GraphedTrainStep:
    """``--cuda-graph``: the whole optimizer step — ``grad_accum`` micro-batches, clipping, AdamW — recorded once as a
    CUDA graph after three eager steps and replayed at every later step, so the host launches one graph instead of
    every kernel of the step (:mod:`.graph_step`). The same arithmetic as the eager steps."""
    make_capturable(run.optimizer, info.device)
    # each micro-batch's loss weighted as in _forward_backward (the step divides by grad_accum: multiplied back)
    return GraphedTrainStep(lambda batch, weight: _step_loss(run, cfg, batch) * (weight * cfg.grad_accum),
                            run.wrapped.parameters(), run.optimizer, max_grad_norm=cfg.clip or None,
                            micro_batches=cfg.grad_accum)


def _graphed_forward_backward_update(run: Run, cfg: TrainConfig, info: DistInfo
                                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer step through ``run.graph_step`` and the scheduler's step; returns the step's mean loss and its
    gradient norm before clipping (device tensors of their own: the graph's buffers are overwritten next step)."""
    batches = _step_batches(run, cfg, info)
    with trusted_values():
        loss = run.graph_step(batches, _micro_batch_weights(batches, run, cfg, info)).clone()
    grad_norm = run.graph_step.grad_norm.clone() if run.graph_step.grad_norm is not None else None
    run.scheduler.step()
    if run.graph_step.steps == run.graph_step.warmup_steps + 1:  # the step that recorded the graph
        run.log.say(f"step {run.step + 1}: the training step is replayed from a CUDA graph from now on"
                    if run.graph_step.recorded else
                    f"step {run.step + 1}: the training step could not be recorded as a CUDA graph "
                    f"({run.graph_step.failed}); training goes on eagerly")
    return loss, grad_norm


def _graph_state(run: Run) -> str | None:
    """What ``--cuda-graph`` did: None (off), ``"recorded"`` (the steps replay a graph) or ``"eager: <why>"``."""
    if run.graph_step is None:
        return None
    return "recorded" if run.graph_step.recorded else f"eager: {run.graph_step.failed or 'not recorded yet'}"


def _evaluate(run: Run, cfg: TrainConfig, info: DistInfo) -> dict:
    return evaluate(run.forward, run.val_rows, cfg.batch_size, info, cfg.eval_rows, run.byte_lengths,
                    run.autocast_dtype, run.eos if cfg.document_mask else None, whole_batches=cfg.compile)


def save(run: Run, cfg: TrainConfig, info: DistInfo) -> None:
    """Checkpoint the run at its current step (every rank takes part; rank 0 writes)."""
    model_state = full_model_state(run.wrapped)
    optim_state = full_optimizer_state(run.wrapped, run.optimizer)
    rng = gather_objects(_rng_state(), info)
    if info.is_main:
        trainer_state = {"optimizer": optim_state, "scheduler": run.scheduler.state_dict(), "rng": rng,
                         "step": run.step}
        meta = {**cfg.run_facts(), "world_size": info.world_size, "tokens": run.step * run.tokens_per_step,
                "tokenizer_hash": tokenizer_hash(run.tokenizer), "corpus": run.corpus.fingerprint,
                "corpus_manifest": run.corpus_manifest, "schedule": run.plan}
        ckpt.save_checkpoint(run.run_dir, run.step, run.model, model_state, trainer_state, meta,
                             keep_last=cfg.keep_last, tokenizer=run.tokenizer)
    barrier(info)


def train_steps(run: Run, cfg: TrainConfig, info: DistInfo) -> dict | None:
    """Optimizer steps from ``run.step`` to ``cfg.max_steps`` with logging, evaluation and checkpoints;
    returns the last evaluation (None when no step was left)."""
    from tqdm import tqdm

    bar = tqdm(total=cfg.max_steps, initial=run.step, disable=not (info.is_main and cfg.progress), unit="step",
               dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
    run.model.train()
    # the steps' losses stay on the device until the host needs them (one synchronisation): where it logs, and
    # before an evaluation or a checkpoint (a diverged run must not save); the steps between queue their kernels
    # without waiting for the GPU
    pending, window, window_time = [], [], 0.0
    last_eval = None
    while run.step < cfg.max_steps:
        t0 = time.perf_counter()
        # the rate this step runs with, from the schedule on the host (under --cuda-graph the optimizer's is a device
        # tensor, and reading it would wait for the GPU)
        lr = float(run.scheduler.base_lrs[0]) * run.scheduler.lr_lambdas[0](run.scheduler.last_epoch)
        if run.graph_step is not None:
            loss, grad_norm = _graphed_forward_backward_update(run, cfg, info)
        else:
            loss = _forward_backward(run, cfg, info)
            grad_norm = apply_gradients(run.wrapped.parameters(), run.optimizer, run.scheduler, cfg.clip)
        run.step += 1
        step = run.step
        pending.append(loss)
        logging = step % cfg.log_interval == 0 or step == cfg.max_steps
        evaluating = step % cfg.eval_interval == 0 or step == cfg.max_steps
        saving = step % cfg.save_interval == 0 or step == cfg.max_steps
        if logging or evaluating or saving:
            values = torch.stack(pending).tolist()
            bad = next((i for i, value in enumerate(values) if not math.isfinite(value)), None)
            where = (f"the loss became {values[bad]} at step {step - len(values) + bad + 1}" if bad is not None
                     else f"the loss became non-finite on another rank by step {step}")
            _stop_if_diverged(bad is not None, where, run, info)
            window, pending = window + values, []
        # after the read above, so a window's time includes the GPU work its steps queued (not only their launches)
        window_time += time.perf_counter() - t0
        if logging:
            mean_loss = all_reduce_sum(torch.tensor([sum(window) / len(window)]), info).item() / info.world_size
            tok_s = len(window) * run.tokens_per_step / max(window_time, 1e-9)
            run.log.record("train", step, loss=mean_loss, lr=lr, tokens_per_s=tok_s,
                           grad_norm=float(grad_norm) if grad_norm is not None else None,
                           tokens=step * run.tokens_per_step, elapsed_s=time.perf_counter() - run.started)
            bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{tok_s:,.0f}", lr=f"{lr:.2e}", refresh=False)
            window, window_time = [], 0.0
        bar.update(1)
        if evaluating:
            last_eval = _evaluate(run, cfg, info)
            _stop_if_diverged(not math.isfinite(last_eval["loss"]), f"the validation loss became {last_eval['loss']} "
                              f"at step {step}", run, info)
            run.log.record("eval", step, **last_eval)
            run.log.say(f"step {step}: validation loss {last_eval['loss']:.4f}, "
                        f"perplexity {last_eval['perplexity']:.2f}")
        if saving:
            # the losses checked above were computed before this step's update: the weights about to be saved are not
            _stop_if_diverged(not _weights_finite(run.wrapped), f"the weights became non-finite at step {step}", run,
                              info)
            save(run, cfg, info)
    bar.close()
    return last_eval


def _stop_if_diverged(here: bool, what: str, run: Run, info: DistInfo) -> None:
    """``UserError`` on every rank when ``here`` is true on any (one collective in a distributed run), so that a
    divergence seen by one rank stops all of them rather than leaving the others waiting."""
    if info.distributed:
        here = all_reduce_sum(torch.tensor([float(here)]), info).item() > 0
    if here:
        raise UserError(f"{what}; lower --lr or raise --warmup and re-run with a new --out (checkpoints in "
                        f"{run.run_dir} stop before the divergence)")


def _weights_finite(model: torch.nn.Module) -> bool:
    """Whether this rank's parameters (its shards under FSDP) are all finite (one host read)."""
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    return bool(torch.isfinite(torch.nn.utils.get_total_norm([t.detach() for t in local if t.numel()])))


# ------------------------------------------------------------------------------------------------- finish
def finish(run: Run, cfg: TrainConfig, info: DistInfo, last_eval: dict | None) -> dict:
    """Write ``summary.json`` and ``loss.png`` (rank 0); returns the summary."""
    if last_eval is None:  # nothing left to train (the run was already complete): report where it stands
        last_eval = _evaluate(run, cfg, info)
    fingerprints = gather_objects(weights_fingerprint(run.wrapped), info) if info.distributed else None
    summary = {"rank": info.rank, "step": run.step, "max_steps": cfg.max_steps, "world_size": info.world_size,
               "parameters": sum(p.numel() for p in run.model.parameters()), "tokens": run.step * run.tokens_per_step,
               "validation": last_eval, "wall_s": time.perf_counter() - run.started, "device": str(info.device),
               "replica_fingerprints": fingerprints, "corpus_manifest": run.corpus_manifest,
               "cuda_graph": _graph_state(run)}
    if info.is_main:
        if fingerprints and len(set(fingerprints)) != 1:
            run.log.say("warning: the ranks ended with different weights")
        atomic_write_text(run.run_dir / "summary.json", json.dumps(summary, indent=1))
        plot = plot_losses(run.run_dir)
        run.log.say(f"done: step {run.step}; checkpoints and {plot.name if plot else 'no plot'} in {run.run_dir}")
    run.log.close()
    return summary
