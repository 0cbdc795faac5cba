"""What the language-model experiments (``position``, ``lm``) share: one corpus and tokenizer, one compact
training loop, one perplexity evaluation.

The corpus is the embedded Shakespeare corpus of :mod:`wonderful_matrices.data` (its fixed validation split)
unless another is given (``"python-source"``, a local file or folder), tokenized with a byte-level BPE trained on
the training split and cached under ``cache_dir``; its documents are concatenated, each closed by EOS.

Training draws ``batch`` rows of ``seq_len + 1`` tokens per step from the training tokens the way ``wm train``
does (:class:`~wonderful_matrices.data.packing.PackedRows`: non-overlapping rows, a seeded permutation per
epoch), with ``wm train``'s optimizer, update step and schedule (:mod:`wonderful_matrices.train.optim`: AdamW
(0.9, 0.95), weight decay 0.1 on matrices, clipping 1.0; :mod:`wonderful_matrices.train.schedule`: 5% linear
warm-up then cosine decay to 10%), bf16 autocast on CUDA. Evaluation cuts the validation tokens into consecutive
rows of a given length, so the same tokens are scored at every evaluation length.

Documents in a row (given the EOS id, as :func:`corpus_tokens` does): rows follow ``wm train``'s packing
convention (:func:`~wonderful_matrices.data.packing.document_position_ids`): positions restart at a row's first
token and after every EOS, so the model keeps the documents apart, and a document's first token (the one after
an EOS) is not scored — in training and in evaluation alike.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..atomic import atomic_file
from ..data.packing import PackedRows, document_position_ids
from ..models.modeling import causal_lm_loss, causal_lm_loss_from_hidden
from ..ops.common import trusted_values
from ..train.graph_step import GraphedTrainStep
from ..train.optim import adamw, apply_gradients, make_capturable, own_options
from ..train.schedule import lr_multiplier
from .common import one_line, synchronize


@dataclass
class TokenizedCorpus:
    """Training and validation token ids (1-D int64 numpy arrays, documents closed by ``eos``), the tokenizer's
    vocabulary size and EOS id, the corpus manifest with the token counts (None for corpora without one), the
    corpus' content fingerprint and the SHA-256 of the tokenizer's ``tokenizer.json`` (what identifies the text
    and the tokenization of a run)."""

    train: np.ndarray
    validation: np.ndarray
    vocab_size: int
    name: str
    eos: int
    manifest: dict | None = None
    fingerprint: str = ""
    tokenizer_sha256: str = ""


def corpus_tokens(data: str, vocab_size: int, cache_dir: str | Path) -> TokenizedCorpus:
    """Corpus ``data`` (``"shakespeare"``, the embedded corpus, ``"python-source"`` or a local file/folder; see
    :func:`wonderful_matrices.data.corpora.load_corpus`) tokenized by a BPE of ``vocab_size`` tokens trained on
    its training split (trained once per ``cache_dir``, then loaded)."""
    from ..data.corpora import load_corpus
    from ..data.packing import tokenize_split
    from ..data.tokenizer import eos_id, load_tokenizer, train_bpe

    cache_dir = Path(cache_dir)
    corpus = load_corpus(data)
    tok_dir = cache_dir / f"tokenizer-{corpus.fingerprint[:12]}-{vocab_size}"
    tokenizer = load_tokenizer(tok_dir) if (tok_dir / "tokenizer.json").exists() else \
        train_bpe(corpus.split("train"), vocab_size, tok_dir)
    train = np.asarray(tokenize_split(corpus, "train", tokenizer, cache_dir), dtype=np.int64)
    val = np.asarray(tokenize_split(corpus, "validation", tokenizer, cache_dir), dtype=np.int64)
    name = data if data in ("shakespeare", "python-source") else Path(data).name
    manifest = None if corpus.manifest is None else {**corpus.manifest, "train_tokens": len(train),
                                                     "validation_tokens": len(val)}
    return TokenizedCorpus(train, val, len(tokenizer), f"{name} (BPE {len(tokenizer)})", eos_id(tokenizer), manifest,
                           corpus.fingerprint, hashlib.sha256((tok_dir / "tokenizer.json").read_bytes()).hexdigest())


def training_autocast(device: torch.device):
    """bf16 autocast on CUDA; a disabled autocast (float32) elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else \
        torch.autocast("cpu", enabled=False)


def set_fused(model, fused: bool) -> None:
    """Switch ``model`` between its fused paths (the RMSNorm and gated RMSNorm kernels where available, the gated
    MLPs' product kernels, the chunked LM-head loss; the default) and plain PyTorch (norms and MLPs by formula, loss
    from full float32 logits): the unfused baseline."""
    from ..layers import GatedMLP, GatedRMSNorm, RMSNorm

    model.config.fused_loss = fused
    for module in model.modules():
        if isinstance(module, (RMSNorm, GatedRMSNorm, GatedMLP)):
            module.backend = "auto" if fused else "torch"


def packed_inputs(rows: torch.Tensor, eos: int | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """rows (b, l + 1) token ids -> ``(inputs, position_ids, targets)``: inputs ``rows[:, :-1]`` (b, l); with an
    ``eos`` id the rows are packed documents: position_ids (b, l) restart at 0 at the row's start and after every
    EOS (:func:`~wonderful_matrices.data.packing.document_position_ids`), and targets ``rows[:, 1:]`` (b, l) hold
    ``-100`` (not scored) at each document's first token; without, position_ids is None and every target counts."""
    inputs, targets = rows[:, :-1], rows[:, 1:]
    if eos is None:
        return inputs, None, targets
    positions = document_position_ids(rows, eos)
    return inputs, positions[:, :-1], targets.masked_fill(positions[:, 1:] == 0, -100)


def lm_loss(model, rows: torch.Tensor, eos: int | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy of ``rows`` (b, l + 1) over the targets :func:`packed_inputs` scores (all of
    ``rows[:, 1:]`` without ``eos``; with it, each document modelled alone and its first token not scored).

    With ``model.config.fused_loss`` (the default) computed from the final hidden states by
    ``wm.ops.linear_cross_entropy`` (no ``(b, l, V)`` float32 logits), else from the logits in float32."""
    return _next_token_loss(model, *packed_inputs(rows, eos))


def _next_token_loss(model, inputs: torch.Tensor, positions: torch.Tensor | None,
                     targets: torch.Tensor) -> torch.Tensor:
    """:func:`lm_loss` of the parts :func:`packed_inputs` gives, by the model's own loss functions (without the
    FFN layers' auxiliary losses)."""
    if model.config.fused_loss:
        hidden = model.model(input_ids=inputs, position_ids=positions, use_cache=False).last_hidden_state
        return causal_lm_loss_from_hidden(hidden, model.lm_head.weight, targets)
    logits = model(input_ids=inputs, position_ids=positions, use_cache=False).logits
    return causal_lm_loss(logits, targets)


def compiled_lm_loss(backend: str = "inductor") -> Callable:
    """:func:`lm_loss` under ``torch.compile`` (default mode, static shapes, ``backend``), for ``optimizer_step``'s
    ``loss_fn``: the forward and its backward compiled, the optimizer eager. Dynamo's caches are reset first, so each
    model gets its own graphs rather than counting as a recompilation of the previous one's."""
    torch._dynamo.reset()
    return torch.compile(lm_loss, dynamic=False, backend=backend)


def training_loss(model, rows: torch.Tensor, device: torch.device, loss_fn: Callable | None = None,
                  eos: int | None = None) -> torch.Tensor:
    """The loss :func:`optimizer_step` differentiates: ``loss_fn`` (default :func:`lm_loss`) of ``rows (b, l + 1)``
    under :func:`training_autocast`, with no check reading a tensor's values (``trusted_values``; ``rows`` are ids
    of the model's vocabulary), so no host synchronisation: what a recorded CUDA graph needs."""
    with trusted_values(), training_autocast(device):
        return (loss_fn or lm_loss)(model, rows, eos)


def optimizer_step(model, opt, rows: torch.Tensor, device: torch.device, clip: float | None = None,
                   scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                   eos: int | None = None, loss_fn: Callable | None = None) -> torch.Tensor:
    """One training step on ``rows (b, l + 1)`` (packed documents with ``eos``: :func:`lm_loss`, or ``loss_fn``
    with its arguments, e.g. :func:`compiled_lm_loss`): forward under :func:`training_autocast`, backward, then
    ``wm train``'s update (:func:`~wonderful_matrices.train.optim.apply_gradients`: clipping to norm ``clip``
    (None: none), ``opt.step()``, ``scheduler.step()``, gradients cleared). Returns the loss (a device tensor).
    No host synchronisation: ``rows`` are ids of the model's vocabulary (the tokenizer's or drawn in range), so the
    step runs inside ``trusted_values()``, where no check reads a tensor's values."""
    with trusted_values():
        loss = training_loss(model, rows, device, loss_fn, eos)
        loss.backward()
    apply_gradients(model.parameters(), opt, scheduler, clip)
    return loss


def train_lm(model, tokens: np.ndarray, seq_len: int, batch: int, steps: int, lr: float, device: torch.device,
             seed: int = 0, weight_decay: float = 0.1, eos: int | None = None, checkpoint: Path | None = None,
             checkpoint_every: int = 0, facts: dict | None = None, compiled: bool = False,
             graphed: bool = False) -> dict:
    """Train ``model`` on rows of ``seq_len + 1`` of ``tokens`` (1-D; see the module docstring; packed documents
    with ``eos``); return ``{"final_loss", "tokens_per_s", "peak_memory_bytes", "train_s", "resumed_at",
    "compiled", "compile_error", "graphed", "graph_error", "losses", "diverged_at", "steps_run"}``
    (throughput over the steps this call ran after its first two, which compile/warm up; with ``graphed``, after its
    first four, the last of which records the graph).

    ``compiled``: the forward and backward run under ``torch.compile`` (:func:`compiled_lm_loss`, compiled in this
    call's first step; the optimizer stays eager); the rows' document layout changes from batch to batch without a
    recompilation. The weights, optimizer state and checkpoints are those of the eager training, so a run may
    resume compiled from an eager checkpoint and the other way round. When the compiler fails on that first step
    (before any update), the training goes on eagerly from the same step: ``"compiled"`` is then False and
    ``"compile_error"`` the compiler's error in one line (None otherwise) — a long, time-limited run is not lost to a
    compiler bug (session 19 lost a GPU call to one).

    ``graphed`` (CUDA): every step — forward, backward, clipping and AdamW — is replayed from a CUDA graph recorded
    after three eager steps (:class:`~wonderful_matrices.train.graph_step.GraphedTrainStep`, as ``wm train
    --cuda-graph``), so that the host's kernel launches do not set the pace; the same arithmetic, weights and
    checkpoints as the eager steps (resume either way). ``"graphed"``: whether the steps replayed a graph;
    ``"graph_error"``: why not, where the recording failed (the training then goes on eagerly). Off CUDA the steps
    run eagerly.

    ``checkpoint`` (a file path) with ``checkpoint_every > 0``: model, optimizer, scheduler, RNG states, the step and
    the losses so far are saved there (atomically) after every ``checkpoint_every`` steps and after the last one
    (then with the returned statistics), together with ``facts`` (what identifies the run); the time spent saving
    is not counted in ``tokens_per_s``.

    Every step's loss stays on the device until a checkpoint or the end reads them (no synchronisation between):
    ``"losses"`` is the list of every step's training loss. A loss that is not finite ends the training at the next
    checkpoint instead of saving one (a diverged model is not saved, and a long run stops early): ``"diverged_at"``
    is its step (1-based; None when every loss was finite), ``"steps_run"`` the steps taken.

    When the checkpoint file exists at the start, training resumes from it (``resumed_at``: its
    step; 0 for a fresh start) — the batches are a function of the step, so the resumed run sees the data an
    uninterrupted one would; a checkpoint of the last step returns its statistics without training. ``ValueError``
    when its facts differ from ``facts``."""
    if len(tokens) < seq_len + 1:
        raise ValueError(f"seq_len={seq_len} is not allowed: the corpus has only {len(tokens)} training tokens")
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every={checkpoint_every!r} is not allowed: must be >= 0")
    saving = checkpoint is not None and checkpoint_every > 0
    opt = adamw(model, lr, weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier("cosine", steps, max(1, steps // 20), min_ratio=0.1))
    data = PackedRows(tokens, seq_len + 1)
    start_step, losses = 0, torch.full((steps,), float("nan"), device=device)
    if checkpoint is not None and checkpoint.exists():
        start_step, finished, earlier = _load_training_state(checkpoint, model, opt, sched, facts, device)
        if finished is not None:
            return finished
        losses[:start_step] = earlier
    loss_fn = compiled_lm_loss() if compiled else None
    compile_error = None
    graph_step = None
    if graphed:
        if device.type == "cuda":
            make_capturable(opt, device)
        # the loss reads loss_fn when called: the eager fallback below applies to the recorded step too
        graph_step = GraphedTrainStep(lambda rows: training_loss(model, rows, device, loss_fn, eos), model.parameters(),
                                      opt, max_grad_norm=1.0, use_graph=device.type == "cuda")

    def train_step(rows: torch.Tensor) -> torch.Tensor:
        if graph_step is None:
            return optimizer_step(model, opt, rows, device, clip=1.0, scheduler=sched, eos=eos, loss_fn=loss_fn)
        loss = graph_step(rows)
        sched.step()
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    t_start = t_steady = time.perf_counter()
    loss_value, save_s, diverged_at, steps_run = float("nan"), 0.0, None, start_step
    warm = min(start_step + (graph_step.warmup_steps + 1 if graph_step is not None else 2), steps - 1)
    for step in range(start_step, steps):
        if step == warm:
            synchronize(device)
            t_steady = time.perf_counter()
        rows = data.train_batch(step, batch, grad_accum=1, micro=0, seed=seed).to(device, non_blocking=True)
        try:
            loss = train_step(rows)
        except torch._dynamo.exc.TorchDynamoException as error:  # Inductor's errors are such exceptions too
            if loss_fn is None or step != start_step:
                raise
            compile_error = one_line(error)
            print(f"compiled training: the compiler failed ({compile_error}); training eagerly", flush=True)
            loss_fn = None
            opt.zero_grad(set_to_none=True)
            loss = train_step(rows)
        losses[step] = loss.detach()  # a copy on the device: a graphed step's loss is a buffer the next overwrites
        steps_run = step + 1
        if step == steps - 1:
            loss_value = float(loss.detach())
        elif saving and (step + 1) % checkpoint_every == 0:
            synchronize(device)
            t_save = time.perf_counter()
            diverged_at = _first_non_finite(losses[:step + 1])
            if diverged_at is not None:
                break
            _save_training_state(checkpoint, model, opt, sched, step + 1, facts, losses=losses[:step + 1])
            save_s += time.perf_counter() - t_save if step >= warm else 0.0
    synchronize(device)
    end = time.perf_counter()
    curve = losses[:steps_run].tolist()
    diverged_at = _first_non_finite(losses[:steps_run])
    steady_steps = max(steps_run - max(warm, start_step), 1)
    stats = {"final_loss": loss_value,
             "tokens_per_s": steady_steps * batch * seq_len / max(end - t_steady - save_s, 1e-9),
             "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
             "train_s": end - t_start, "resumed_at": start_step, "compiled": loss_fn is not None,
             "compile_error": compile_error, "graphed": graph_step is not None and graph_step.recorded,
             "graph_error": graph_step.failed if graph_step is not None else None,
             "losses": curve, "diverged_at": diverged_at, "steps_run": steps_run}
    if saving and diverged_at is None:
        _save_training_state(checkpoint, model, opt, sched, steps, facts, stats, losses=losses)
    return stats


def _first_non_finite(losses: torch.Tensor) -> int | None:
    """The 1-based step of the first loss in ``losses`` (steps) that is not finite, or None (one host read)."""
    bad = (~torch.isfinite(losses)).nonzero()
    return int(bad[0]) + 1 if len(bad) else None


def _save_training_state(path: Path, model, opt, sched, step: int, facts: dict | None,
                         stats: dict | None = None, losses: torch.Tensor | None = None) -> None:
    """Everything :func:`train_lm` needs to continue after ``step`` steps (``losses``: the losses of those steps;
    ``stats``: its result, once the training is complete), written whole or not at all."""
    state = {"step": step, "facts": facts, "stats": stats, "losses": None if losses is None else losses.cpu(),
             "model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "cpu_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    with atomic_file(path, "wb") as f:
        torch.save(state, f)


def _load_training_state(path: Path, model, opt, sched, facts: dict | None,
                         device: torch.device) -> tuple[int, dict | None, torch.Tensor]:
    """Load the state :func:`_save_training_state` wrote into ``model``, ``opt`` and ``sched``; return its step,
    the statistics of the finished training (None while it is not) and the losses of its steps (NaN where the
    checkpoint has none)."""
    # on the CPU: the RNG states must stay there, and the model's and optimizer's load_state_dict copy the rest onto
    # the parameters' device
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["facts"] != facts:
        changed = next(k for k in sorted(set(state["facts"] or {}) | set(facts or {}))
                       if (state["facts"] or {}).get(k) != (facts or {}).get(k))
        raise ValueError(f"checkpoint={str(path)!r} is not allowed: it holds a run with {changed}="
                         f"{(state['facts'] or {}).get(changed)!r}, this run has {(facts or {}).get(changed)!r}; "
                         "delete it or pass another --out")
    model.load_state_dict(state["model"])
    with own_options(opt):  # as this run runs it (eager or graphed), not as the saving one did
        opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["cpu_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    step = int(state["step"])
    losses = state.get("losses")
    return step, state["stats"], torch.full((step,), float("nan")) if losses is None else losses[:step]


@torch.no_grad()
def perplexity(model, tokens: np.ndarray, seq_len: int, batch: int, device: torch.device,
               max_tokens: int | None = None, eos: int | None = None) -> float:
    """exp(mean next-token loss) over consecutive rows of ``seq_len + 1`` tokens (overlapping by one) of
    ``tokens`` (at most ``max_tokens`` of them, cut to whole rows: lengths compared on the same targets need a
    ``max_tokens`` of one plus a multiple of each, :func:`.lm_scale.eval_prefix`); with ``eos`` the rows are
    packed documents (:func:`lm_loss`), and the mean runs over the scored targets."""
    return scored_perplexity(model, tokens, seq_len, batch, device, max_tokens, eos)["ppl"]


@torch.no_grad()
def scored_perplexity(model, tokens: np.ndarray, seq_len: int, batch: int, device: torch.device,
                      max_tokens: int | None = None, eos: int | None = None, long_after: int | None = None) -> dict:
    """:func:`perplexity` with its counts: ``{"ppl", "scored", "rows"}`` — the targets scored and the rows of
    ``seq_len`` they were cut into; with ``long_after`` also ``"scored_beyond"``: the scored targets predicted at a
    position id ``>= long_after``, i.e. from more than ``long_after`` tokens of their document (a model trained on
    rows of ``long_after`` tokens never predicted from that many)."""
    usable = len(tokens) if max_tokens is None else min(len(tokens), max_tokens)
    n_rows = (usable - 1) // seq_len
    if n_rows < 1:
        raise ValueError(f"seq_len={seq_len} is not allowed: the validation split has only {usable} tokens")
    data = torch.from_numpy(np.asarray(tokens[:n_rows * seq_len + 1], dtype=np.int64))
    idx = torch.arange(n_rows)[:, None] * seq_len + torch.arange(seq_len + 1)
    rows = data[idx]
    model.eval()
    total, count, beyond = 0.0, 0, 0
    for start in range(0, n_rows, batch):
        inputs, positions, targets = packed_inputs(rows[start:start + batch].to(device), eos)
        scored = int((targets != -100).sum())
        if scored == 0:
            continue
        if long_after is not None:
            where = positions if positions is not None else torch.arange(seq_len, device=device).expand_as(targets)
            beyond += int(((where >= long_after) & (targets != -100)).sum())
        with training_autocast(device):
            loss = _next_token_loss(model, inputs, positions, targets)
        total += float(loss) * scored
        count += scored
    if count == 0:
        raise ValueError(f"seq_len={seq_len} is not allowed: the validation rows hold no scored token (every "
                         "token follows an EOS)")
    result = {"ppl": math.exp(total / count), "scored": count, "rows": n_rows}
    if long_after is not None:
        result["scored_beyond"] = beyond
    return result
