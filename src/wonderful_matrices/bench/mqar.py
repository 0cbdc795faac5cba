"""Claim 2: Dynamic Mask Attention solves multi-query associative recall (MQAR) where QCAttn and SSD fall behind.

Models: 2 layers, no FFN, one sequence mixer kind per model — ``"attn"`` (QCAttn, 1 head), ``"ssd"`` (state
128 in the full run; Mamba2's SSD: short conv, no RoPE; expand 2) and ``"dma"`` (1 head, all keys kept, the
learned mask decides) — all built as :class:`CheemsForCausalLM` from a :class:`CheemsConfig`. The full run ties
the input and output embeddings, as Zoology's models do (at vocabulary 8192 a tied width-64 attention model
reached 0.73 on (T=64, 4 pairs) in 1500 steps where an untied one reached 0.17); ``--quick`` (vocabulary 256)
unties them (there the untied one reached 1.00 in 500 steps, the tied one 0.30). Data: the Zoology generator
(:mod:`wonderful_matrices.data.mqar`). Training: AdamW (weight decay 0.1), linear warm-up then cosine decay, a
learning-rate sweep ``logspace(-4, -2, 4)``; the best test accuracy per cell is reported. The full run's batch
holds Zoology's 65536 tokens (at most 512 rows: 256 rows at T = 256, 32 at T = 2048); ``--quick`` uses 64 rows.
On CUDA every training step replays a CUDA graph (:class:`~wonderful_matrices.train.graph_step.GraphedTrainStep`):
these models are so small that an eager step is bound by kernel launches. Every mixer of a cell gets the same
budget: the same number of steps of the same batch size over the same training rows. The number of steps is
derived from ``budget_s`` (wall-clock seconds for the whole sweep, split evenly over the cells): the measured
step times of all mixers of a cell decide how many steps fit (or pass ``steps``). Learning rates run in order of
promise (nearest ``PROMISING_LR`` first), each for every mixer before the next, and one is skipped for a mixer that
already solved the cell (accuracy >= 0.999), since it cannot raise the best. With a time budget no run starts after 1.1x
the budget, and the result files are rewritten after every run, so a sweep cut short keeps what finished.

Bounded windows (issue #15, item 2(b); ``windows=(64, 128, 256)``): for each window ``w`` three more mixers run
beside the chosen ones, all holding the same bytes of state per layer and sequence while they decode:

* ``dma-w{w}``: DMA with ``keep_window = w``, the learned gate mask choosing which ``w`` keys each query keeps;
* ``swa-w{w}``: sliding-window attention over the last ``w`` keys: the same DMA layer with ``dma_mask_form="none"``
  (no ``dt_proj``, no ``A_log``: nothing is learned about which keys to keep) — with ties going to the later key,
  an all-zero bias and a window is exactly sliding-window attention (docs/design.md);
* ``ssd-s{n}``: SSD whose recurrent state holds as many elements as a ``w``-key K/V cache:
  ``ssd_num_heads · ssd_head_dim · n = 2 · w · num_kv_heads · head_dim`` (:func:`matching_state_size`; with these
  models' 1 KV head of ``head_dim = width`` and SSD's expand 2 this is ``n = w``).

The hybrid ratio (issue #15, item 4): ``hyb{r}-w{w}`` is an 8-layer model (:data:`HYBRID_LAYERS`) in groups of
``r`` SSD layers (state ``n = w``, as ``ssd-s``) then one DMA layer with ``keep_window = w`` (as ``dma-w``), the
last layer DMA: ``hyb7-w64`` is 7 SSD + 1 DMA, ``hyb3-w64`` 6 SSD + 2 DMA. Every layer holds the bytes of a ``w``-key
cache, so the ratio changes what the state is made of, not its size. (Four times the 2-layer models' layers: compare
the hybrids with each other.)

Each bounded-state row (``dma-w``, ``swa-w``, ``ssd-s``, ``hyb``) also carries, from the evaluation of its best
run, ``accuracy_by_distance``: the test accuracy split by how far back the queried key sits, against the window
``w`` (or state size): the key within ``w`` tokens, the value within ``2w − 1`` (two stacked windows reach it), the
value beyond (:func:`~.mqar_probe.accuracy_by_distance`); and the rows with a learned-mask window (``dma-w``,
``hyb``) ``mask_keeps``: per DMA layer, the share of the kv section's keys and values a query's window keeps and how
often it keeps the query's own pair (:class:`~.mqar_probe.KeptKeysProbe`: the layer's own bias and the op's own
selection, by forward hooks).

Every row carries ``keep_window`` and ``state_bytes`` (:func:`state_bytes`: per layer and sequence, elements
counted at 2 bytes as in bf16; attention without a window holds all ``T`` keys; SSD's count leaves out its short
convolution's 3-token buffer). "The same bytes" is the same number of state elements: the model's decoding cache
keeps SSD's state in float32, so an ``ssd-s`` layer really holds about twice the bytes of a ``dma-w`` one.

Outputs ``results.json`` / ``results.md`` (rows per cell and mixer, with the paper's number beside ours) and
``mqar.png`` (accuracy against width, one panel per sequence length, the paper's points dashed).
"""
from __future__ import annotations

import contextlib
import itertools
import math
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.mqar import IGNORE_INDEX, mqar
from ..train.graph_step import GraphedTrainStep, set_learning_rate
from ..train.schedule import lr_multiplier
from .common import synchronize, write_results
from .lm_common import training_autocast
from .mqar_probe import KeptKeysProbe, accuracy_by_distance, query_distances, windowed_dma_layers

# Paper (read from its MQAR figure; docs/design.md): (seq_len, width) -> accuracy per mixer.
PAPER = {
    (256, 64): {"based": 0.52, "attn": 0.68, "ssd": 0.55, "dma": 1.00},
    (256, 128): {"based": 0.82, "attn": 0.91, "ssd": 0.90, "dma": 1.00},
    (512, 128): {"based": 0.65, "attn": 0.73, "ssd": 0.72, "dma": 1.00},
    (1024, 128): {"based": 0.27, "attn": 0.61, "ssd": 0.60, "dma": 1.00},
    (2048, 128): {"based": 0.04, "attn": 0.19, "ssd": 0.13, "dma": 1.00},
    (2048, 256): {"based": 0.18, "attn": 0.36, "ssd": 0.32, "dma": 1.00},
}
MIXERS = ("attn", "ssd", "dma")
MIXER_NAMES = {"attn": "QCAttn", "ssd": "SSD", "dma": "DMA", "based": "Based"}
# the bounded-state mixers: name pattern -> display name; ``{}`` is the window (dma, swa) or the state size (ssd)
WINDOWED = {"dma-w": "DMA w={}", "swa-w": "SWA w={}", "ssd-s": "SSD n={}"}
HYBRID_LAYERS = 8  # layers of a hyb{r}-w{w} model
BYTES_PER_ELEMENT = 2  # state_bytes counts bf16 elements, the dtype the models train in on CUDA
# (seq_len, kv pairs) of docs/design.md; the paper's cells use the same lengths
KV_PAIRS = {64: 4, 128: 8, 256: 16, 512: 64, 1024: 128, 2048: 256}
LEARNING_RATES = tuple(float(x) for x in np.logspace(-4, -2, 4))
SOLVED = 0.999
# The sweep's rates run nearest this first: on the H200 (docs/results.md) 2.15e-3 and 1e-2 won every cell (1e-2 for
# attention and DMA beyond T = 256), 4.64e-4 none; this puts them first and second.
PROMISING_LR = 4.6e-3

# The default full grid: the paper's six cells (fits ~8 minutes on one H200 with the default budget).
PAPER_CELLS = tuple((t, KV_PAIRS[t], w) for (t, w) in PAPER)
# Every (length, width) of docs/design.md: 24 cells, for a larger budget.
ALL_CELLS = tuple((t, kv, w) for t, kv in KV_PAIRS.items() for w in (32, 64, 128, 256))
QUICK_CELLS = ((64, 4, 64), (128, 8, 64))
QUICK_STEPS = 500
QUICK_BATCH = 64
# Zoology's batches: 65536 tokens (512 rows at T = 128, 64 at T = 1024), at most 512 rows
TOKENS_PER_BATCH, MAX_BATCH_ROWS = 65536, 512


def full_batch_size(seq_len: int) -> int:
    """Rows per batch of the full run at sequence length ``seq_len`` (Zoology's token budget per batch)."""
    return max(1, min(MAX_BATCH_ROWS, TOKENS_PER_BATCH // seq_len))


def parse_cells(text: str) -> tuple[tuple[int, int, int], ...]:
    """``"256:64,2048:128"`` (sequence length : width, lengths from ``KV_PAIRS``) -> ((T, kv, width), ...)."""
    cells = []
    for item in text.split(","):
        try:
            t, w = (int(v) for v in item.split(":"))
        except ValueError:
            raise ValueError(f"cells={text!r} is not allowed: comma-separated seq_len:width pairs, e.g. "
                             "'256:64,2048:128'") from None
        if t not in KV_PAIRS or w < 1:
            raise ValueError(f"cells={text!r} is not allowed: seq_len in {sorted(KV_PAIRS)}, width >= 1")
        cells.append((t, KV_PAIRS[t], w))
    return tuple(cells)


_BOUNDED = re.compile(r"(dma-w|swa-w|ssd-s|hyb([1-9])-w)([1-9][0-9]*)")


def parse_mixer(mixer: str) -> tuple[str, int | None]:
    """``"attn"`` / ``"ssd"`` / ``"dma"`` -> (kind, None); ``"dma-w64"`` / ``"swa-w64"`` -> (kind, window 64);
    ``"ssd-s64"`` -> ("ssd", state size 64); ``"hyb3-w64"`` -> ("hyb", window 64) (its ratio:
    :func:`hybrid_ratio`). ``ValueError`` on any other name."""
    if mixer in MIXERS:
        return mixer, None
    match = _BOUNDED.fullmatch(mixer) if isinstance(mixer, str) else None
    if match is None:
        raise ValueError(f"mixer={mixer!r} is not allowed: one of {MIXERS} or dma-w<window>, swa-w<window>, "
                         "ssd-s<state size>, hyb<ratio 1-9>-w<window> with positive integers, e.g. dma-w64")
    # any other ratio leaves a short last group: hyb5 would be 6 SSD + 2 DMA, hyb3's layout under another name
    if match.group(2) is not None and HYBRID_LAYERS % (int(match.group(2)) + 1):
        raise ValueError(f"mixer={mixer!r} is not allowed: hyb<r> lays {HYBRID_LAYERS} layers out as groups of r SSD "
                         f"layers then one DMA layer, so r + 1 must divide {HYBRID_LAYERS} (r = 1, 3 or 7)")
    return match.group(1)[:3], int(match.group(3))


def hybrid_ratio(mixer: str) -> int | None:
    """SSD layers per DMA layer of a ``hyb{r}-w{w}`` mixer (``r``); None for the others."""
    match = _BOUNDED.fullmatch(mixer) if isinstance(mixer, str) else None
    return None if match is None or match.group(2) is None else int(match.group(2))


def mixer_name(mixer: str) -> str:
    """The display name of ``mixer`` in tables and plots: ``"dma-w64"`` -> ``"DMA w=64"``, ``"hyb3-w64"`` ->
    ``"SSD:DMA 3:1 w=64"``."""
    kind, size = parse_mixer(mixer)
    if kind == "hyb":
        return f"SSD:DMA {hybrid_ratio(mixer)}:1 w={size}"
    return MIXER_NAMES[kind] if size is None else WINDOWED[mixer[:5]].format(size)


def parse_windows(windows) -> tuple[int, ...]:
    """``"64,128,256"`` or a sequence of ints -> (64, 128, 256); ``ValueError`` unless every entry is an int >= 1."""
    items = windows.split(",") if isinstance(windows, str) else list(windows)
    try:
        values = tuple(int(v) for v in items if not isinstance(v, (bool, float)))
    except ValueError:
        values = ()
    if not items or len(values) != len(items) or not all(v >= 1 for v in values):
        raise ValueError(f"windows={windows!r} is not allowed: comma-separated ints >= 1, e.g. '64,128,256'")
    return values


def model_config(mixer: str, width: int, vocab_size: int, state_size: int = 128, tie_embeddings: bool = False):
    """The :class:`CheemsConfig` of a 2-layer, FFN-free MQAR model whose both layers are ``mixer`` (a name of
    :func:`parse_mixer`): ``dma-w{w}`` and ``swa-w{w}`` are DMA layers with ``keep_window = w`` (the latter with
    ``dma_mask_form="none"``: no learned mask, so each query keeps its ``w`` latest keys — sliding-window
    attention), ``ssd-s{n}`` SSD with state size ``n`` instead of ``state_size``; ``hyb{r}-w{w}`` has
    :data:`HYBRID_LAYERS` layers, ``r`` SSD (state ``w``: :func:`matching_state_size`) per DMA (window ``w``)."""
    from ..models import CheemsConfig
    from ..models.configuration import default_layer_types

    kind, size = parse_mixer(mixer)
    if kind == "hyb":
        layers = default_layer_types(HYBRID_LAYERS, hybrid_ratio(mixer) + 1, "dma", "ssd")
        state_size = matching_state_size(size, width)
    else:
        layers = ["dma" if kind == "swa" else kind] * 2
    ssd_head_dim = min(64, width)
    return CheemsConfig(
        vocab_size=vocab_size, hidden_size=width, num_hidden_layers=len(layers), mixer_types=layers,
        ffn_types=["none"] * len(layers), num_attention_heads=1, num_key_value_heads=1, head_dim=width,
        keep_window=size if kind in ("dma", "swa", "hyb") else None,
        dma_mask_form="none" if kind == "swa" else "gate", ssd_num_heads=2 * width // ssd_head_dim,
        ssd_head_dim=ssd_head_dim, ssd_state_size=size if kind == "ssd" and size else state_size,
        ssd_chunk_size=128, ssd_use_conv=True, ssd_use_rope=False, tie_word_embeddings=tie_embeddings,
        use_cache=False)


def matching_state_size(window: int, width: int) -> int:
    """The SSD state size ``n`` whose recurrent state holds as many elements per layer as a ``window``-key K/V
    cache of these models at ``width``: ``ssd_num_heads · ssd_head_dim · n = 2 · window · num_kv_heads ·
    head_dim`` (``n = window`` for every width: 1 KV head of ``head_dim = width``, SSD inner width ``2 · width``)."""
    attn, ssd = model_config("dma", width, 2), model_config("ssd", width, 2)
    cache = 2 * window * attn.num_key_value_heads * attn.head_dim
    inner = ssd.ssd_num_heads * ssd.ssd_head_dim
    if cache % inner:
        raise ValueError(f"window={window!r} is not allowed at width={width}: the cache of {cache} elements is not a "
                         f"multiple of SSD's {inner} heads x head_dim")
    return cache // inner


def window_mixers(windows) -> tuple[str, ...]:
    """The bounded-state mixers of each window: ``(64,)`` -> ``("dma-w64", "swa-w64", "ssd-s64")``."""
    return tuple(name for w in parse_windows(windows)
                 for name in (f"dma-w{w}", f"swa-w{w}", f"ssd-s{matching_state_size(w, 64)}"))


def state_bytes(mixer: str, seq_len: int, width: int, state_size: int = 128) -> int:
    """Bytes of decoding state per layer and sequence after ``seq_len`` tokens, 2 per element (bf16):
    K and V of ``min(seq_len, keep_window)`` keys (``2 · keys · num_kv_heads · head_dim``) for attention and DMA,
    ``ssd_num_heads · ssd_head_dim · n`` for SSD (its short convolution's 3-token buffer not counted); a hybrid's
    mean over its layers (rounded down). Elements at one rate for every kind: the model's decoding cache holds SSD's
    state in float32 (4 bytes per element) and K/V in the model's dtype."""
    cfg = model_config(mixer, width, 2, state_size)
    keys = seq_len if cfg.keep_window is None else min(seq_len, cfg.keep_window)
    per_kind = {"ssd": cfg.ssd_num_heads * cfg.ssd_head_dim * cfg.ssd_state_size,
                "dma": 2 * keys * cfg.num_key_value_heads * cfg.head_dim}
    per_kind["attn"] = per_kind["dma"]
    elements = sum(per_kind[layer] for layer in cfg.mixer_types) // len(cfg.mixer_types)
    return BYTES_PER_ELEMENT * elements


def build_model(mixer: str, width: int, vocab_size: int, state_size: int, device: torch.device, seed: int,
                tie_embeddings: bool = False):
    """A freshly initialised :class:`CheemsForCausalLM` (seeded) of :func:`model_config` on ``device``."""
    from ..models import CheemsForCausalLM

    torch.manual_seed(seed)
    return CheemsForCausalLM(model_config(mixer, width, vocab_size, state_size, tie_embeddings)).to(device)


def labels_per_row(labels: torch.Tensor) -> int | None:
    """The number of labelled positions of every row of ``labels (b, l)``, or None if rows differ (one sync)."""
    counts = (labels != IGNORE_INDEX).sum(1)
    low, high = (int(v) for v in counts.aminmax())
    return low if low == high else None


def labelled_logits(model, inputs: torch.Tensor, labels: torch.Tensor,
                    per_row: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(n, vocab)`` at the ``n`` labelled positions of ``labels (b, l)`` only, and their targets ``(n,)``,
    row by row in position order.

    Only about one position in eight of an MQAR row carries a label, so projecting just those hidden states
    through the LM head skips most of the (b, l, vocab) logits and their gradient. With ``per_row`` (every row has
    that many labels, as MQAR rows do) the positions come from a sort of fixed shape instead of a boolean
    selection, which would wait for the GPU once per step."""
    hidden = model.model(input_ids=inputs, use_cache=False).last_hidden_state
    if per_row is None:
        mask = labels != IGNORE_INDEX
        return model.lm_head(hidden[mask]), labels[mask]
    order = torch.argsort((labels == IGNORE_INDEX).to(torch.int8), dim=1, stable=True)[:, :per_row]
    picked = hidden.gather(1, order[..., None].expand(-1, -1, hidden.shape[-1]))
    return model.lm_head(picked).flatten(0, 1), labels.gather(1, order).flatten()


def _loss(model, inputs: torch.Tensor, labels: torch.Tensor, per_row: int | None = None) -> torch.Tensor:
    logits, targets = labelled_logits(model, inputs, labels, per_row)
    return F.cross_entropy(logits.float(), targets)


def training_step(model, lr: float, per_row: int | None, device: torch.device,
                  weight_decay: float = 0.1) -> tuple[torch.optim.Optimizer, GraphedTrainStep]:
    """``model``'s AdamW (betas (0.9, 0.98), ``weight_decay``) and its training step ``step(x, y) -> loss``:
    bf16 autocast on CUDA, gradients clipped to norm 1.0, replayed from a CUDA graph on CUDA (the optimizer
    then keeps its state and learning rate on the GPU: set the rate with ``set_learning_rate``)."""
    on_cuda = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=torch.tensor(lr, device=device) if on_cuda else lr,
                            weight_decay=weight_decay, betas=(0.9, 0.98), capturable=on_cuda)

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with training_autocast(device):
            return _loss(model, x, y, per_row)

    return opt, GraphedTrainStep(loss_fn, model.parameters(), opt, max_grad_norm=1.0, use_graph=on_cuda)


def train_and_evaluate(model, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                       lr: float, steps: int, batch_size: int, device: torch.device, seed: int = 0,
                       weight_decay: float = 0.1, window: int | None = None,
                       num_kv_pairs: int | None = None) -> dict:
    """Train ``model`` for ``steps`` steps on rows of ``train`` (cycled in a seeded order), return
    ``{"accuracy", "final_loss", "train_s", "graphed"}`` with the accuracy over every labelled position of
    ``test`` (``graphed``: whether the steps replayed a CUDA graph). With a ``window`` (and the rows'
    ``num_kv_pairs``) also ``"accuracy_by_distance"`` (:func:`~.mqar_probe.accuracy_by_distance` at that window)
    and ``"mask_keeps"`` (:meth:`~.mqar_probe.KeptKeysProbe.summary` of the model's windowed learned-mask DMA
    layers; None without one), both from the same evaluation pass."""
    if window is not None and num_kv_pairs is None:
        raise ValueError("num_kv_pairs=None is not allowed with a window: the rows' number of kv pairs")
    opt, step = training_step(model, lr, labels_per_row(train[1]), device, weight_decay)
    multiplier = lr_multiplier("cosine", steps, max(1, steps // 10), min_ratio=0.0)  # wm train's schedule
    gen = torch.Generator().manual_seed(seed)
    n = train[0].shape[0]
    order = torch.randperm(n, generator=gen).to(train[0].device)
    pos = 0
    model.train()
    t0 = time.perf_counter()
    loss = torch.zeros(())
    for i in range(steps):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=gen).to(train[0].device), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        x, y = train[0][idx].to(device, non_blocking=True), train[1][idx].to(device, non_blocking=True)
        set_learning_rate(opt, lr * multiplier(i))
        loss = step(x, y)
    synchronize(device)
    train_s = time.perf_counter() - t0
    result = {"final_loss": float(loss), "train_s": train_s, "graphed": step.recorded}
    if window is None:
        return dict(result, accuracy=evaluate(model, test, batch_size, device))
    probe = KeptKeysProbe(model, num_kv_pairs) if windowed_dma_layers(model) else None
    with probe or contextlib.nullcontext():
        correct = query_correct(model, test, batch_size, device, probe)
    distances = query_distances(test[0], test[1], num_kv_pairs).to(correct.device)
    return dict(result, accuracy=int(correct.sum()) / max(1, correct.numel()),
                accuracy_by_distance=accuracy_by_distance(distances, correct, window),
                mask_keeps=None if probe is None else probe.summary(window))


@torch.no_grad()
def evaluate(model, test: tuple[torch.Tensor, torch.Tensor], batch_size: int, device: torch.device) -> float:
    """Fraction of labelled positions of ``test`` whose argmax prediction is the label."""
    correct = query_correct(model, test, batch_size, device)
    return int(correct.sum()) / max(1, correct.numel())


@torch.no_grad()
def query_correct(model, test: tuple[torch.Tensor, torch.Tensor], batch_size: int, device: torch.device,
                  probe: KeptKeysProbe | None = None) -> torch.Tensor:
    """``(n,)`` bool: whether the argmax prediction at each of the ``n`` labelled positions of ``test (rows, l)``
    is its label (row by row, in position order). ``probe`` (open): updated after each batch's forward."""
    model.eval()
    per_row = labels_per_row(test[1])
    correct = []
    for start in range(0, test[0].shape[0], batch_size):
        x = test[0][start:start + batch_size].to(device)
        y = test[1][start:start + batch_size].to(device)
        with training_autocast(device):
            logits, targets = labelled_logits(model, x, y, per_row)
        if probe is not None:
            probe.update(x, y)
        correct.append(logits.argmax(-1) == targets)
    return torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)


def _step_seconds(mixer: str, width: int, vocab: int, state: int, tie_embeddings: bool, x: torch.Tensor,
                  y: torch.Tensor, device) -> float:
    """Measured seconds of one training step (median of 3, after the warm-up and, on CUDA, the graph's recording)
    on the MQAR batch ``x, y``."""
    model = build_model(mixer, width, vocab, state, device, seed=0, tie_embeddings=tie_embeddings)
    _, step = training_step(model, 1e-3, labels_per_row(y), device)
    samples = []
    for i in range(step.warmup_steps + 4):
        synchronize(device)
        t0 = time.perf_counter()
        step(x, y)
        synchronize(device)
        if i > step.warmup_steps:
            samples.append(time.perf_counter() - t0)
    return float(np.median(samples))


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["seq_len"] for r in rows})
    fig, axes = plt.subplots(1, len(lengths), figsize=(3.6 * len(lengths), 3.2), squeeze=False)
    colors = {"attn": "tab:blue", "ssd": "tab:orange", "dma": "tab:green", "swa": "tab:purple", "hyb": "tab:red",
              "based": "tab:gray"}
    mixers = sorted({r["mixer"] for r in rows}, key=_mixer_order)
    sizes = sorted({parse_mixer(m)[1] for m in mixers} - {None})
    # bounded-state mixers: the family's colour, one marker per window (or state size)
    markers = dict(zip(sizes, itertools.cycle("^vD<>ph*")))
    for ax, t in zip(axes[0], lengths):
        for mixer in mixers:
            kind, size = parse_mixer(mixer)
            pts = sorted((r["width"], r["accuracy"]) for r in rows
                         if r["seq_len"] == t and r["mixer"] == mixer and r["accuracy"] is not None)
            if pts:
                style = "o-" if size is None else markers[size] + ":"
                ax.plot(*zip(*pts), style, color=colors[kind], label=f"{mixer_name(mixer)} (ours)")
        for mixer in ("based",) + MIXERS:
            pts = sorted((w, v[mixer]) for (tt, w), v in PAPER.items() if tt == t)
            if pts:
                ax.plot(*zip(*pts), "s--", color=colors[mixer], mfc="none", alpha=0.7,
                        label=f"{MIXER_NAMES[mixer]} (paper)")
        kv = next(r["num_kv_pairs"] for r in rows if r["seq_len"] == t)
        ax.set_title(f"T = {t}, {kv} kv pairs")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("model width")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MQAR accuracy")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def lr_promise(lr: float | str) -> float:
    """Sort key of a learning rate in the sweep: its distance from ``PROMISING_LR`` in decades (smaller runs
    first; of two runs with the same accuracy the one run first is kept, in a sweep and in a merge alike)."""
    return abs(math.log10(float(lr)) - math.log10(PROMISING_LR))


DATA_SEED_RULE = "training rows cell_data_seed(seed, seq_len, kv), test rows that + 1"


def cell_data_seed(seed: int, seq_len: int, num_kv_pairs: int) -> int:
    """The seed of a cell's training rows (its test rows use this + 1): a function of the run's ``seed`` and the
    cell's shape alone, so a cell gets the same rows whichever other cells run beside it, in whatever order (cells
    of one shape at two widths share their rows). Even, and distinct for every ``seq_len < 2**22``,
    ``num_kv_pairs < 2**17``."""
    return (seed << 40) | (seq_len << 18) | (num_kv_pairs << 1)


def run(out_dir, quick: bool = False, device=None, budget_s: float | None = None, steps: int | None = None,
        cells=None, learning_rates=None, mixers=MIXERS, vocab_size: int | None = None,
        state_size: int | None = None, batch_size: int | None = None, num_test: int | None = None,
        seed: int = 0, tie_embeddings: bool | None = None, windows=None) -> list[dict]:
    """Run the MQAR sweep and write ``results.json``, ``results.md`` and ``mqar.png`` into ``out_dir``.

    ``quick``: vocab 256, state 16, untied embeddings, batch 64, cells ``QUICK_CELLS``, the two largest learning
    rates, ``QUICK_STEPS`` steps per run (fixed, so the result does not depend on the load of a CPU; ~5 minutes on
    2 idle cores) unless ``budget_s`` is given. Full: vocab 8192, state 128, tied embeddings, batches of
    :func:`full_batch_size` rows, the paper's six cells (``cells="all"`` for all 24), all four learning rates,
    steps derived from ``budget_s`` seconds in all (default 420, one H200). ``batch_size`` and
    ``tie_embeddings`` override those defaults.
    ``steps`` fixes the step count instead. ``cells`` may also be a string ``"256:64,2048:128"``, ``mixers``
    ``"attn,dma"`` and ``learning_rates`` ``"1e-3,2e-3"``: to split the sweep over processes, GPUs or calls,
    then :func:`merge_results` joins the parts. ``mixers`` may name bounded-state mixers (``"dma-w64"``,
    ``"swa-w64"``, ``"ssd-s64"``); ``windows`` (``"64,128,256"`` or ints) adds ``dma-w{w}``, ``swa-w{w}`` and
    ``ssd-s{n}`` (:func:`window_mixers`) for each window after ``mixers``. Returns one row per (cell, mixer).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if cells is None:
        cells = QUICK_CELLS if quick else PAPER_CELLS
    elif cells == "all":
        cells = ALL_CELLS
    elif isinstance(cells, str):
        cells = parse_cells(cells)
    if isinstance(mixers, str):
        mixers = tuple(m.strip() for m in mixers.split(","))
    mixers = tuple(mixers)
    if windows is not None:
        mixers += tuple(m for m in window_mixers(windows) if m not in mixers)
    if not mixers:
        raise ValueError(f"mixers={mixers!r} is not allowed: at least one mixer")
    for m in mixers:
        try:
            parse_mixer(m)
        except ValueError:
            raise ValueError(f"mixers={mixers!r} is not allowed: entries from {MIXERS} or dma-w<window>, "
                             "swa-w<window>, ssd-s<state size>, e.g. dma-w64") from None
    if isinstance(learning_rates, str):
        try:
            learning_rates = tuple(float(v) for v in learning_rates.split(","))
        except ValueError:
            raise ValueError(f"learning_rates={learning_rates!r} is not allowed: comma-separated numbers, "
                             "e.g. '1e-3,2e-3'") from None
    learning_rates = tuple(learning_rates or (LEARNING_RATES[2:] if quick else LEARNING_RATES))
    if not all(lr > 0 for lr in learning_rates):
        raise ValueError(f"learning_rates={learning_rates!r} is not allowed: every rate must be > 0")
    if len({f"{lr:.2e}" for lr in learning_rates}) < len(learning_rates):  # the key of a rate in lr_accuracy
        raise ValueError(f"learning_rates={learning_rates!r} is not allowed: rates distinct to 3 significant digits")
    if not (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0):
        raise ValueError(f"seed={seed!r} is not allowed: an int >= 0")
    # the caller's sizes are checked before defaults fill the ones left None (0 must not read as "default")
    for name, value in (("vocab_size", vocab_size), ("state_size", state_size), ("batch_size", batch_size),
                        ("num_test", num_test), ("budget_s", budget_s)):
        if value is not None and value <= 0:
            raise ValueError(f"{name}={value!r} is not allowed: must be > 0")
    vocab = vocab_size or (256 if quick else 8192)
    state = state_size or (16 if quick else 128)
    tie = (not quick) if tie_embeddings is None else bool(tie_embeddings)
    num_test = num_test or (256 if quick else 1000)
    if quick and steps is None and budget_s is None:
        steps = QUICK_STEPS
    budget_s = float(budget_s if budget_s is not None else 420)
    max_steps, min_steps = (600 if quick else 20000), 20
    num_train = 20_000
    # most promising learning rates first: later ones are skipped once a cell is solved
    sweep_order = sorted(learning_rates, key=lr_promise)

    start = time.perf_counter()
    # with a budget, no new run starts after this (the calibration can underestimate a shared GPU's step time)
    deadline = None if steps is not None else start + 1.1 * budget_s
    per_cell_s = budget_s / len(cells)
    meta = {
        "quick": quick, "device": str(device), "vocab_size": vocab, "ssd_state_size": state,
        "layers": f"2 (hyb<r>-w<w>: {HYBRID_LAYERS})",
        "ffn": "none", "batch_size": batch_size or (QUICK_BATCH if quick else "full_batch_size(seq_len)"),
        "tie_embeddings": tie, "cuda_graphs": device.type == "cuda", "test_rows": num_test,
        "learning_rates": list(learning_rates),
        "optimizer": "AdamW(betas=(0.9, 0.98), weight_decay=0.1), grad clip 1.0, 10% linear warm-up + cosine",
        "budget_s": None if steps is not None else budget_s, "seed": seed, "data_seed": DATA_SEED_RULE,
        "budget_rule": "per cell: the same steps x batch for every mixer and learning rate, derived from "
                       "budget_s and the measured step time of every mixer (or fixed by steps=); learning "
                       "rates in the order of lr_order, each for every mixer before the next; no run starts "
                       "after 1.1 x budget_s",
        "lr_order": [f"{lr:.2e}" for lr in sweep_order],
        "models": f"{'tied' if tie else 'untied'} embeddings; attn: 1 head, head_dim = width; dma: 1 head, "
                  "keep_window None, gate mask; ssd: Mamba2 SSD (conv 4, no RoPE), head_dim min(64, width), "
                  "expand 2, chunk 128; dma-w{w}: keep_window w, gate mask; swa-w{w}: the DMA layer with "
                  "dma_mask_form none (all-zero bias) and keep_window w (sliding-window attention, no mask "
                  "parameters); ssd-s{n}: SSD state n = 2 w num_kv_heads head_dim / (ssd_num_heads ssd_head_dim) = w; "
                  f"hyb{{r}}-w{{w}}: {HYBRID_LAYERS} layers, r ssd-s{{w}} layers per dma-w{{w}} layer, the last dma",
        "state_bytes": f"per layer and sequence at {BYTES_PER_ELEMENT} bytes per element: 2 min(T, keep_window) "
                       "num_kv_heads head_dim for attn/dma (K and V), ssd_num_heads ssd_head_dim n for SSD; a "
                       "hybrid's mean over its layers",
        "windows": None if windows is None else list(parse_windows(windows)),
        "train_rows_per_cell": num_train,
    }
    out = Path(out_dir)
    rows = []
    for seq_len, kv, width in cells:
        t_cell = time.perf_counter()
        batch = batch_size or (QUICK_BATCH if quick else full_batch_size(seq_len))
        # a fixed pool of training rows (cycled in epochs) and a separate test set, on the device
        train = mqar(num_train, seq_len, kv, vocab, seed=cell_data_seed(seed, seq_len, kv))
        test = mqar(num_test, seq_len, kv, vocab, seed=cell_data_seed(seed, seq_len, kv) + 1)
        train, test = tuple(t.to(device) for t in train), tuple(t.to(device) for t in test)
        if steps is not None:
            cell_steps, step_s = int(steps), {}
        else:
            step_s = {m: _step_seconds(m, width, vocab, state, tie, train[0][:batch], train[1][:batch], device)
                      for m in mixers}
            # the cell's share of the budget, after data and calibration, over every (mixer, lr) run at 1.15x
            # for evaluation
            left = per_cell_s - (time.perf_counter() - t_cell)
            cell_steps = int(left / (1.15 * len(learning_rates) * sum(step_s.values())))
            cell_steps = max(min_steps, min(max_steps, cell_steps))
        cell_rows = {}
        for mixer in mixers:
            cell_rows[mixer] = {
                "seq_len": seq_len, "num_kv_pairs": kv, "width": width, "mixer": mixer, "model": mixer_name(mixer),
                "keep_window": model_config(mixer, width, vocab, state).keep_window
                if parse_mixer(mixer)[0] != "ssd" else None,
                "state_bytes": state_bytes(mixer, seq_len, width, state),
                "accuracy": None, "paper": PAPER.get((seq_len, width), {}).get(mixer), "best_lr": None,
                "steps": cell_steps, "batch": batch, "examples_seen": cell_steps * batch,
                "epochs": round(cell_steps * batch / num_train, 2),
                "calibrated_step_ms": round(1e3 * step_s[mixer], 2) if step_s else None,
                "lr_accuracy": {}, "train_s": 0.0, "graphed": None, "accuracy_by_distance": None,
                "mask_keeps": None}
            rows.append(cell_rows[mixer])
        for lr in sweep_order:
            for mixer in mixers:
                row = cell_rows[mixer]
                if (row["accuracy"] or 0.0) >= SOLVED or (deadline is not None and time.perf_counter() > deadline):
                    continue
                model = build_model(mixer, width, vocab, state, device, seed=seed, tie_embeddings=tie)
                result = train_and_evaluate(model, train, test, lr, cell_steps, batch, device, seed=seed,
                                            window=parse_mixer(mixer)[1], num_kv_pairs=kv)
                del model
                row["lr_accuracy"][f"{lr:.2e}"] = round(result["accuracy"], 4)
                row["train_s"] = round(row["train_s"] + result["train_s"], 2)
                row["graphed"] = result["graphed"]
                if row["accuracy"] is None or result["accuracy"] > row["accuracy"]:
                    row["accuracy"], row["best_lr"] = result["accuracy"], lr
                    row["accuracy_by_distance"] = result.get("accuracy_by_distance")
                    row["mask_keeps"] = result.get("mask_keeps")
                print(f"T={seq_len:5d} kv={kv:4d} width={width:4d} {mixer_name(mixer):9s} lr {lr:.1e}: "
                      f"acc={result['accuracy']:.4f} (best {row['accuracy']:.4f}; paper {row['paper']}) "
                      f"steps={cell_steps} [{result['train_s']:.1f} s]", flush=True)
                # results so far, so that a run cut short still leaves every finished run on disk
                _write(out, rows, dict(meta, wall_s=round(time.perf_counter() - start, 1)))
        _plot(rows, out / "mqar.png")
    _write(out, rows, dict(meta, wall_s=round(time.perf_counter() - start, 1)))  # the final wall time
    total_s = time.perf_counter() - start
    print(f"mqar: {len(rows)} rows in {total_s:.1f} s -> {out}")
    return rows


def merge_results(out_dir, parts, mixed_budgets: bool = False) -> list[dict]:
    """Join the results of MQAR runs split by cell, mixer or learning rate (``parts``: folders holding a
    ``results.json`` each) into one ``results.json`` / ``results.md`` / ``mqar.png`` in ``out_dir``.

    Rows of the same (seq_len, width, mixer) are combined: their ``lr_accuracy`` entries united, the best accuracy
    kept (with the steps of its run), ``train_s`` summed. The parts must agree on vocabulary, state size, batch,
    tied embeddings and seed (``ValueError`` otherwise). A cell whose runs (a learning rate in two parts, or two
    mixers) had different step counts is an error too, unless ``mixed_budgets``: then every ``lr_accuracy`` key
    reads ``"lr@steps"`` and the best run is kept whatever its budget (the mixers of a cell may then have had
    different budgets: a best-found table, not a same-budget comparison). A learning rate run twice with the same
    budget keeps its better accuracy (the meta's ``repeated_runs`` names each such rate). Of two learning rates with
    the same best accuracy the one the sweep runs first (:func:`lr_promise`) is named ``best_lr``, as in one whole
    sweep."""
    import json

    parts = [Path(p) for p in parts]
    if not parts:
        raise ValueError("parts=[] is not allowed: at least one folder with a results.json")
    same = ("vocab_size", "ssd_state_size", "batch_size", "tie_embeddings", "seed", "data_seed", "test_rows")
    merged: dict[tuple, dict] = {}
    lr_steps: dict[tuple, dict] = {}  # per (cell, mixer): the steps each learning rate ran with
    lr_runs: dict[tuple, int] = {}  # per (cell, mixer, lr key): finished runs, one number in the table however many
    meta0 = None
    for part in parts:
        path = part / "results.json"
        if not path.exists():
            raise ValueError(f"parts={str(part)!r} is not allowed: it has no results.json")
        data = json.loads(path.read_text())
        if data.get("experiment") != "mqar":
            raise ValueError(f"parts={str(part)!r} is not allowed: its results are {data.get('experiment')!r}, "
                             "not mqar")
        meta = data["meta"]
        meta0 = meta0 or meta
        for key in same:
            if meta.get(key) != meta0.get(key):
                raise ValueError(f"parts={str(part)!r} is not allowed: its {key}={meta.get(key)!r} differs from "
                                 f"{meta0.get(key)!r} in {str(parts[0])!r}")
        for row in data["rows"]:
            key = (row["seq_len"], row["width"], row["mixer"])
            into = merged.setdefault(key, dict(row, lr_accuracy={}, accuracy=None, best_lr=None, train_s=0.0))
            steps_of = lr_steps.setdefault(key, {})
            for lr, acc in row["lr_accuracy"].items():
                if mixed_budgets:
                    lr = f"{lr}@{row['steps']}"
                elif steps_of.get(lr, row["steps"]) != row["steps"]:
                    raise ValueError(f"parts={str(part)!r} is not allowed: lr {lr} of cell {key} was also run "
                                     f"with {steps_of[lr]} steps, here with {row['steps']} (--mixed-budgets keeps "
                                     "both)")
                steps_of[lr] = row["steps"]
                lr_runs[key + (lr,)] = lr_runs.get(key + (lr,), 0) + 1
                earlier = into["lr_accuracy"].get(lr)  # the same lr and budget run twice: the better run, as accuracy
                into["lr_accuracy"][lr] = acc if earlier is None or (acc is not None and acc > earlier) else earlier
            into["train_s"] = round(into["train_s"] + row["train_s"], 2)
            if row["accuracy"] is not None and (into["accuracy"] is None or (row["accuracy"], -lr_promise(
                    row["best_lr"])) > (into["accuracy"], -lr_promise(into["best_lr"]))):
                into.update(accuracy=row["accuracy"], best_lr=row["best_lr"], steps=row["steps"],
                            examples_seen=row["examples_seen"], epochs=row["epochs"],
                            accuracy_by_distance=row.get("accuracy_by_distance"), mask_keeps=row.get("mask_keeps"))
    rows = sorted(merged.values(), key=lambda r: (r["seq_len"], r["width"], _mixer_order(r["mixer"])))
    if not mixed_budgets:  # a same-budget table: the mixers of a cell compared at one step count
        for cell in {(r["seq_len"], r["width"]) for r in rows}:
            budgets = {s for k, steps_of in lr_steps.items() if k[:2] == cell for s in steps_of.values()}
            if len(budgets) > 1:
                raise ValueError(f"parts={[str(p) for p in parts]!r} are not allowed together: cell {cell} was run "
                                 f"with {sorted(budgets)} steps (--mixed-budgets merges them as a best-found table)")
    meta = {k: v for k, v in meta0.items() if k not in ("wall_s", "budget_s", "lr_order")}
    meta["merged_from"] = [str(p) for p in parts]
    repeated = [f"T={t} width={w} {m} lr {lr}: {n} runs, the best kept"
                for (t, w, m, lr), n in lr_runs.items() if n > 1]
    if repeated:  # a best of several runs of one setting, which the table's one number would hide
        meta["repeated_runs"] = repeated
    if mixed_budgets:
        meta["mixed_budgets"] = "best run per cell and mixer whatever its steps: lr_accuracy keys are lr@steps"
    out = Path(out_dir)
    _write(out, rows, meta)
    _plot(rows, out / "mqar.png")
    return rows


def _mixer_order(mixer: str) -> tuple:
    """Sort key of a mixer in tables: attn, ssd, dma, then by window (or state), dma-w before swa-w before ssd-s
    before the hybrids (by ratio)."""
    kind, size = parse_mixer(mixer)
    if size is None:
        return (0, MIXERS.index(kind), 0, 0)
    return (1, size, ("dma", "swa", "ssd", "hyb").index(kind), hybrid_ratio(mixer) or 0)


def _write(out: Path, rows: list[dict], meta: dict) -> None:
    """results.json / results.md of the rows so far."""
    columns = ["seq_len", "num_kv_pairs", "width", "model", "mixer", "keep_window", "state_bytes", "accuracy",
               "paper", "best_lr", "steps", "batch", "lr_accuracy", "train_s", "by_distance", "mask_keeps"]
    notes = ("accuracy = fraction of labelled (query) positions predicted exactly, best over the learning rates "
             "run (lr_accuracy); paper = read from the paper's figure (docs/design.md), where it has that cell. A "
             "learning rate missing from lr_accuracy was not run: the cell was already solved (>= 0.999) or the "
             "time budget was spent (an empty accuracy: no run finished). keep_window = keys each query keeps "
             "(empty: all); state_bytes = decoding state elements per layer and sequence at 2 bytes each: "
             "2 min(T, keep_window) num_kv_heads head_dim for attention/DMA, ssd_num_heads ssd_head_dim n for SSD "
             "(ssd-s{n}: n = w, the elements of a w-key cache; the decoding cache keeps SSD's state in float32, "
             "twice these bytes). by_distance (bounded-state mixers, the best run; "
             "accuracy_by_distance in results.json): accuracy a / b / c (share of the queries in %) for the queried "
             "key d < w tokens back / d >= w with its value within 2w - 1 tokens (two stacked windows reach it) / "
             "the value beyond 2w - 1, w the window or SSD state size. mask_keeps (windowed DMA layers with a "
             "learned mask; mask_keeps in results.json): per layer L<i>, the mean fraction of the kv section's key "
             "positions / value positions a labelled query keeps in its window / the fraction of queries keeping "
             "their own pair's key and value.")
    write_results(out, "mqar", rows, meta, columns=columns, notes=notes,
                  formats={"by_distance": _by_distance_cell, "mask_keeps": _mask_keeps_cell})


def _by_distance_cell(row: dict) -> str:
    """``"0.968 / 0.665 / 0.114 (26 / 32 / 42 %)"`` from a row's ``accuracy_by_distance`` ('—' without one)."""
    bins = row.get("accuracy_by_distance")
    if not bins:
        return "—"
    acc = " / ".join("—" if b["accuracy"] is None else f"{b['accuracy']:.3f}" for b in bins)
    shares = " / ".join(f"{100 * b['share']:.0f}" for b in bins)
    return f"{acc} ({shares} %)"


def _mask_keeps_cell(row: dict) -> str:
    """``"L0 0.50/0.50/0.30; L1 ..."`` (kv keys / kv values / own pair kept per DMA layer) ('—' without one)."""
    layers = row.get("mask_keeps")
    if not layers:
        return "—"
    return "; ".join(f"L{m['layer']} {m['kv_keys_kept']:.2f}/{m['kv_values_kept']:.2f}/{m['own_pair_kept']:.2f}"
                     for m in layers)
