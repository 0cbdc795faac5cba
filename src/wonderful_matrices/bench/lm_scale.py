"""Claim 4 at scale: one folder per (preset family, seed), so the runs can be spread over time-limited calls and
processes, and a merge of the folders into one table (issue #15 item 1).

A run (:func:`run_one`) trains one preset (a hybrid optionally with another ``hybrid_ratio`` of recurrent to
attention layers than its 7 : 1, labelled ``<preset>-<r>to1``) for a token budget (``steps = ceil(train_tokens /
(batch x seq_len))``, the training of :func:`.lm_common.train_lm`: same data order, schedule and optimizer for every
preset; the seed sets the initial weights and the data order) and writes ``<out>/<preset>-seed<k>/results.json``
with one row: parameters, steps and tokens trained, training tokens/s (steady state, in the process that finished the
training) and peak CUDA memory, validation perplexity at the training length and at every evaluation context,
and the analytic decoding cache (:func:`.decode_common.analytic_cache_bytes`, bf16 keys/values) at each cache
context (1M tokens by default). Decoding speed is not measured here (``wm bench lm`` without ``--seeds`` /
``--train-tokens`` does).

Perplexity at several contexts: the same prefix of the validation tokens (``eval_tokens``, cut to a multiple of
the longest context) is scored in consecutive rows of each length, so every length scores the same targets; as in
training, documents are modelled apart (positions restart after each EOS), so a row longer than the training
length only adds context within documents longer than it: ``scored_beyond@C`` counts the targets predicted from
more of their document than the training length — the tokens that test length extrapolation.

Idempotent: a folder holding a ``results.json`` with the same settings is skipped; one with other settings is an
error. A run cut during training resumes from ``checkpoint.pt`` (model, optimizer, scheduler, step; saved every
``checkpoint_every`` steps and at the end of the training, deleted once the results are written); a run cut
during the evaluation evaluates its final checkpoint without training again. A context whose evaluation runs out
of memory is recorded as such (``val_ppl@C`` None, ``eval_error@C``).

:func:`merge_results` joins run folders into one ``results.json`` / ``results.md``: a row per preset with the mean
over its seeds and the spread (max - min), then the per-seed rows; runs of a different corpus, tokenizer or
training setting are refused. Every row names the GPU its run trained on (``device``, from the run's
``results.json``): the runs of one table may come from calls on different machines, and a throughput is a
measurement of one device (a preset whose seeds ran on different ones gets no mean ``train_tokens_per_s``).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from ..atomic import atomic_file
from .common import write_results
from .decode_common import analytic_cache_bytes
from .lm_common import TokenizedCorpus, scored_perplexity, train_lm

EXPERIMENT = "lm-run"
CHECKPOINT = "checkpoint.pt"
# settings every merged run must share (the meta of each run's results.json)
SHARED = ("corpus", "corpus_fingerprint", "corpus_content_sha256", "tokenizer_sha256", "vocab_size", "seq_len",
          "batch", "steps", "train_tokens", "lr", "eval_contexts", "eval_tokens", "cache_contexts", "precision")


def run_folder(out: Path, preset: str, seed: int) -> Path:
    """The folder of the run of ``preset`` with ``seed`` under ``out``."""
    return Path(out) / f"{preset}-seed{seed}"


def run_settings(corpus: TokenizedCorpus, seq_len: int, batch: int, steps: int, lr: float, eval_contexts,
                 eval_tokens: int, cache_contexts, device: torch.device) -> dict:
    """What identifies a run's setting apart from its preset and seed (the keys of :data:`SHARED`; ``precision``
    from the ``device`` it trains on: bf16 autocast on CUDA, float32 elsewhere)."""
    return {"corpus": corpus.name, "corpus_fingerprint": corpus.fingerprint,
            "corpus_content_sha256": (corpus.manifest or {}).get("content_sha256"),
            "tokenizer_sha256": corpus.tokenizer_sha256, "vocab_size": corpus.vocab_size, "seq_len": seq_len,
            "batch": batch, "steps": steps, "train_tokens": steps * batch * seq_len, "lr": lr,
            "eval_contexts": list(eval_contexts), "eval_tokens": eval_tokens, "cache_contexts": list(cache_contexts),
            "precision": "bf16 autocast" if device.type == "cuda" else "float32"}


def steps_for(train_tokens: int, batch: int, seq_len: int) -> int:
    """Optimizer steps of ``batch`` rows of ``seq_len`` tokens that train on at least ``train_tokens`` tokens."""
    if train_tokens < 1:
        raise ValueError(f"train_tokens={train_tokens!r} is not allowed: must be >= 1")
    return math.ceil(train_tokens / (batch * seq_len))


def check_eval_lengths(lengths) -> None:
    """ValueError unless every length (the training length and the evaluation contexts) divides the longest: rows
    of each then tile one prefix of the validation tokens, so every length scores the same targets."""
    longest = max(lengths)
    if any(longest % n for n in lengths):
        raise ValueError(f"eval_contexts={sorted(lengths)!r} is not allowed (with the training length): every length "
                         f"must divide the longest ({longest}), so that each scores the same targets")


def eval_prefix(eval_tokens: int | None, validation_tokens: int, lengths) -> int:
    """Validation tokens scored at every length: ``eval_tokens`` (None: all) cut to a multiple of the longest
    length, plus the one token the last row's last target needs. ``ValueError`` when not one row of the longest
    length fits, or from :func:`check_eval_lengths`."""
    check_eval_lengths(lengths)
    longest = max(lengths)
    usable = min(validation_tokens, eval_tokens + 1 if eval_tokens is not None else validation_tokens)
    if usable - 1 < longest:
        raise ValueError(f"eval_contexts={list(lengths)!r} is not allowed: the longest needs {longest + 1} "
                         f"validation tokens, {usable} are available (the split or --eval-tokens)")
    return (usable - 1) // longest * longest + 1


def run_label(family: str, size: str, hybrid_ratio: int | None = None) -> str:
    """The name of a run's model: the preset (``cheems-base``), with ``-<r>to1`` where a hybrid family gets a
    ``hybrid_ratio`` other than the presets' (``cheems-base-3to1``); other families ignore ``hybrid_ratio``."""
    from ..models import presets

    preset = f"{family}-{size}"
    if hybrid_ratio is None or family not in presets.HYBRIDS or hybrid_ratio == presets.DEFAULT_HYBRID_RATIO:
        return preset
    return f"{preset}-{hybrid_ratio}to1"


def run_model(family: str, size: str, hybrid_ratio: int | None = None, **overrides):
    """A run's label (:func:`run_label`) and its model's config: the preset with ``overrides``, laid out with
    ``hybrid_ratio`` where that changes it."""
    from ..models import presets

    label = run_label(family, size, hybrid_ratio)
    ratio = {"hybrid_ratio": hybrid_ratio} if label != f"{family}-{size}" else {}
    return label, presets.get(f"{family}-{size}", **ratio, **overrides)


def run_one(out: Path, family: str, size: str, seed: int, corpus: TokenizedCorpus, settings: dict,
            device: torch.device, checkpoint_every: int = 500, compiled: bool = False,
            hybrid_ratio: int | None = None, graphed: bool = False) -> dict:
    """Train and evaluate ``{family}-{size}`` with ``seed`` into its folder under ``out`` unless it holds the
    results of these ``settings`` already (:func:`run_settings`); return the run's row. ``compiled``: the training
    runs under ``torch.compile`` (``train_lm(compiled=True)``; the row's ``compiled_training`` says which way its
    ``train_tokens_per_s`` was measured — False, with the compiler's ``compile_error``, where compiling failed and the
    run trained eagerly); the evaluation is eager either way. ``graphed``: each step replayed from a CUDA graph
    (``train_lm(graphed=True)``; the row's ``graphed_training`` says whether it replayed, ``graph_error`` why not).
    ``hybrid_ratio``: recurrent layers
    per attention layer of the hybrid families (:func:`run_label`; the row's ``mixers`` counts the layers)."""
    from ..models import CheemsForCausalLM

    preset, config = run_model(family, size, hybrid_ratio, vocab_size=corpus.vocab_size, use_cache=False)
    folder = run_folder(out, preset, seed)
    done = _read_run(folder)
    if done is not None:
        _check_same(done[0], {**settings, "preset": preset, "seed": seed}, folder)
        print(f"{folder.name}: complete, skipped", flush=True)
        return done[1]
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = CheemsForCausalLM(config).to(device)
    params = sum(p.numel() for p in model.parameters())
    seq_len, batch, steps = settings["seq_len"], settings["batch"], settings["steps"]
    start = time.perf_counter()
    stats = train_lm(model, corpus.train, seq_len, batch, steps, settings["lr"], device, seed=seed, eos=corpus.eos,
                     checkpoint=folder / CHECKPOINT, checkpoint_every=checkpoint_every,
                     facts={**settings, "preset": preset, "seed": seed}, compiled=compiled, graphed=graphed)
    kinds = list(dict.fromkeys(config.mixer_types))
    mixers = " + ".join(f"{config.mixer_types.count(k)} {k}" for k in kinds)
    row = {"preset": preset, "family": family, "seed": seed, "mixers": mixers, "parameters": params, "steps": steps,
           "train_tokens": steps * batch * seq_len, "train_tokens_per_s": stats["tokens_per_s"],
           "peak_memory_gb": None if stats["peak_memory_bytes"] is None else stats["peak_memory_bytes"] / 2**30,
           "final_train_loss": stats["final_loss"], "resumed_at_step": stats["resumed_at"],
           "compiled_training": stats.get("compiled", compiled), "compile_error": stats.get("compile_error"),
           "graphed_training": stats.get("graphed", False), "graph_error": stats.get("graph_error"),
           "diverged_at_step": stats["diverged_at"], "train_losses": [round(v, 4) for v in stats["losses"]]}
    lengths = sorted({seq_len, *settings["eval_contexts"]})
    prefix = eval_prefix(settings["eval_tokens"], len(corpus.validation), lengths)
    tokens_per_forward = batch * seq_len
    for length in lengths:
        if stats["diverged_at"] is not None:  # a model with non-finite weights: nothing to evaluate
            row.update({f"val_ppl@{length}": None, f"scored@{length}": None, f"scored_beyond@{length}": None,
                        f"eval_error@{length}": f"training diverged at step {stats['diverged_at']}"})
            continue
        try:
            p = scored_perplexity(model, corpus.validation, length, max(1, tokens_per_forward // length), device,
                                  max_tokens=prefix, eos=corpus.eos, long_after=seq_len)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            p = {"ppl": None, "scored": None, "scored_beyond": None}
            row[f"eval_error@{length}"] = "out of memory"
        row.update({f"val_ppl@{length}": p["ppl"], f"scored@{length}": p["scored"],
                    f"scored_beyond@{length}": p["scored_beyond"]})
    for context in settings["cache_contexts"]:
        row[f"cache_bytes@{context}"] = analytic_cache_bytes(config, context, 2)
    row["wall_s"] = round(time.perf_counter() - start, 1)
    meta = {**settings, "preset": preset, "seed": seed, "device": str(device),
            "corpus_manifest": corpus.manifest,
            "training": f"{steps} steps x {batch} rows x {seq_len} tokens = {steps * batch * seq_len:,} tokens, "
                        f"lr {settings['lr']}, AdamW(0.9, 0.95) wd 0.1, clip 1, 5% warm-up + cosine to 10%"
                        + (", bf16 autocast" if device.type == "cuda" else ", float32")
                        + (", forward and backward under torch.compile" if compiled else "")
                        + (", each step replayed from a CUDA graph" if graphed else "")
                        + "; packed documents (positions restart after EOS, a document's first token not scored)",
            "evaluation": f"the first {prefix - 1:,} validation tokens' targets in rows of each length (batches of "
                          f"about {tokens_per_forward} tokens); scored@C: targets scored, scored_beyond@C: those "
                          f"predicted from more than {seq_len} tokens of their document (the training length)"}
    columns = ["preset", "seed", "mixers", "parameters", "steps", "train_tokens", "train_tokens_per_s",
               "compiled_training", "graphed_training", "peak_memory_gb", "final_train_loss", "diverged_at_step"] + \
        [f"val_ppl@{n}" for n in lengths] + \
        [f"cache_bytes@{c}" for c in settings["cache_contexts"]]
    write_results(folder, EXPERIMENT, [row], meta, columns=columns)
    (folder / CHECKPOINT).unlink(missing_ok=True)
    print(f"{folder.name}: {params / 1e6:.1f}M params, {steps} steps, {stats['tokens_per_s']:.0f} tok/s, "
          + (f"diverged at step {stats['diverged_at']}" if stats["diverged_at"] is not None else
             ", ".join(f"ppl@{n} {row[f'val_ppl@{n}'] or float('nan'):.3f}" for n in lengths)), flush=True)
    return row


def _read_run(folder: Path, argument: str = "out") -> tuple[dict, dict, dict] | None:
    """The meta, row and environment (:func:`.common.environment`: the device it ran on) of the run in ``folder``
    (None: not complete); ``ValueError`` naming ``argument`` when the folder holds another experiment's results."""
    path = folder / "results.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if data.get("experiment") != EXPERIMENT:
        raise ValueError(f"{argument}={str(folder)!r} is not allowed: it holds {data.get('experiment')!r} results, "
                         f"not one {EXPERIMENT!r} run of wm bench lm --seeds/--train-tokens")
    return data["meta"], data["rows"][0], data.get("environment") or {}


def _check_same(meta: dict, expected: dict, folder: Path) -> None:
    """``ValueError`` naming the first setting in which the run in ``folder`` differs from ``expected``."""
    for key, value in expected.items():
        if meta.get(key) != value:
            raise ValueError(f"out={str(folder.parent)!r} is not allowed: {folder.name} holds a run with "
                             f"{key}={meta.get(key)!r}, this one has {value!r}; pass another --out")


def _run_folders(parts) -> list[Path]:
    """The run folders named by ``parts``: each a run folder (with a results.json) or a folder of them."""
    folders = []
    for part in map(Path, parts):
        if (part / "results.json").exists():
            folders.append(part)
            continue
        inner = sorted(p for p in part.glob("*/results.json")) if part.is_dir() else []
        if not inner:
            raise ValueError(f"merge={str(part)!r} is not allowed: it holds no results.json, nor folders with one")
        folders += [p.parent for p in inner]
    return folders


def merge_results(out_dir, parts) -> list[dict]:
    """Join the runs in ``parts`` (run folders, or folders of run folders, e.g. the ``--out`` of
    ``wm bench lm --seeds``) into one ``results.json`` / ``results.md`` in ``out_dir``; return the rows: per preset
    the mean over its seeds (``val_ppl@C``, ``train_tokens_per_s``; ``val_ppl@C_spread``: max - min; peak memory:
    the largest; ``compiled_training``, ``graphed_training``, ``device``: the seeds' common one, ``"mixed"`` where they
    differ — mixed devices leave ``train_tokens_per_s`` None), cache bytes and their ratio to Llama's, then one row
    per run (with its ``device``). ``ValueError`` when a run was trained on another corpus or
    tokenizer, or with other settings (:data:`SHARED`), or a (preset, seed) twice."""
    folders = _run_folders(parts)
    runs, meta0, first = {}, None, None
    for folder in folders:
        meta, row, environment = _read_run(folder, "merge")
        row = dict(row, device=environment.get("device"))  # where its train_tokens_per_s was measured
        if meta0 is None:
            meta0, first = meta, folder
        for key in SHARED:
            if meta.get(key) != meta0.get(key):
                raise ValueError(f"merge={str(folder)!r} is not allowed: its {key}={meta.get(key)!r} differs from "
                                 f"{meta0.get(key)!r} in {str(first)!r}")
        key = (meta["preset"], meta["seed"])
        if key in runs:
            raise ValueError(f"merge={str(folder)!r} is not allowed: {key[0]} seed {key[1]} is also in "
                             f"{str(runs[key][0])!r}")
        runs[key] = (folder, row)
    lengths = sorted({meta0["seq_len"], *meta0["eval_contexts"]})
    caches = meta0["cache_contexts"]
    order = {f: i for i, f in enumerate(("cheems", "llama", "doge", "mamba2", "jamba"))}
    presets = sorted({p for p, _ in runs}, key=lambda p: (order.get(p.split("-", 1)[0], len(order)), p))
    summary, per_seed = [], []
    for preset in presets:
        rows = [runs[k][1] for k in sorted(runs) if k[0] == preset]
        s = {"preset": preset, "runs": f"mean of {len(rows)}", "seeds": " ".join(str(r["seed"]) for r in rows),
             "mixers": rows[0].get("mixers"), "parameters": rows[0]["parameters"], "steps": rows[0]["steps"],
             "train_tokens": rows[0]["train_tokens"]}
        for n in lengths:
            vals = [r[f"val_ppl@{n}"] for r in rows]
            complete = None not in vals  # a context that ran out of memory in one seed has no mean
            s[f"val_ppl@{n}"] = sum(vals) / len(vals) if complete else None
            s[f"val_ppl@{n}_spread"] = max(vals) - min(vals) if complete and len(vals) > 1 else None
            s[f"scored@{n}"] = next((r[f"scored@{n}"] for r in rows if r[f"scored@{n}"] is not None), None)
            s[f"scored_beyond@{n}"] = next((r[f"scored_beyond@{n}"] for r in rows
                                           if r[f"scored_beyond@{n}"] is not None), None)
        devices = {r["device"] for r in rows}
        s["device"] = devices.pop() if len(devices) == 1 else "mixed"
        # a mean of throughputs measured on different GPUs is no one's throughput
        s["train_tokens_per_s"] = sum(r["train_tokens_per_s"] for r in rows) / len(rows) \
            if s["device"] != "mixed" else None
        for mode in ("compiled_training", "graphed_training"):
            modes = {r.get(mode, False) for r in rows}
            s[mode] = modes.pop() if len(modes) == 1 else "mixed"
        diverged = [f"seed {r['seed']} at step {r['diverged_at_step']}" for r in rows if r.get("diverged_at_step")]
        s["diverged_at_step"] = "; ".join(diverged) or None
        peaks = [r["peak_memory_gb"] for r in rows if r["peak_memory_gb"] is not None]
        s["peak_memory_gb"] = max(peaks) if peaks else None
        for c in caches:
            s[f"cache_bytes@{c}"] = rows[0][f"cache_bytes@{c}"]
        summary.append(s)
        per_seed += [dict(r, runs=f"seed {r['seed']}") for r in rows]
    llama = next((s for s in summary if s["preset"].startswith("llama-")), None)
    for r in summary + per_seed:
        for c in caches:
            base = llama and llama[f"cache_bytes@{c}"]
            r[f"cache_vs_llama@{c}"] = r[f"cache_bytes@{c}"] / base if base else None
    rows = summary + per_seed
    meta = {k: meta0[k] for k in SHARED} | {"training": meta0["training"], "evaluation": meta0["evaluation"],
                                           "corpus_manifest": meta0.get("corpus_manifest"),
                                           "merged_from": [str(f) for f in folders],
                                           "devices": sorted({str(r["device"]) for r in per_seed})}
    columns = ["preset", "runs", "device", "mixers", "parameters", "steps", "train_tokens"] + \
        [c for n in lengths for c in (f"val_ppl@{n}", f"val_ppl@{n}_spread")] + \
        ["train_tokens_per_s", "compiled_training", "graphed_training", "peak_memory_gb", "diverged_at_step"] + \
        [c for n in caches for c in (f"cache_bytes@{n}", f"cache_vs_llama@{n}")]
    counts = ", ".join(f"{n}: {r[f'scored@{n}']:,} scored, {r[f'scored_beyond@{n}']:,} with > "
                       f"{meta0['seq_len']} tokens of context" for n in lengths
                       for r in [next((s for s in summary if s[f"scored@{n}"] is not None), None)] if r)
    notes = ("Rows 'mean of n' average the seeds (val_ppl@C_spread: max - min over them; peak memory: the largest); "
             "rows 'seed k' are single runs. val_ppl@C: validation perplexity in rows of C tokens, the same "
             f"targets at every C ({counts}); cache_bytes@C: analytic decoding cache after C tokens, bf16 "
             "keys/values, float32 states. device: the GPU each run trained on (the merge's own machine is the "
             "header's); a preset whose seeds ran on different devices has no mean train_tokens_per_s"
             + (f". Runs of this table ran on {len(meta['devices'])} devices ({', '.join(meta['devices'])}): compare "
                "throughputs and peak memory only between rows of one device." if len(meta["devices"]) > 1 else "."))
    write_results(Path(out_dir), "lm-scale", rows, meta, columns=columns, notes=notes)
    plot_training_curves(per_seed, Path(out_dir) / "loss.png")
    print(f"lm merge: {len(runs)} runs of {len(presets)} presets -> {out_dir}")
    return rows


def plot_training_curves(rows: list[dict], path: Path, window: int = 20) -> None:
    """The training loss of every run in ``rows`` (their ``train_losses``; a moving mean over ``window`` steps, fewer
    for shorter runs; a diverged run's line ends where its loss stops being finite) against the tokens trained, one
    line per (preset, seed), into ``path``. Runs without losses are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        losses = row.get("train_losses") or []
        w = min(window, len(losses))
        if not w:
            continue
        tokens_per_step = row["train_tokens"] / row["steps"]
        means = [sum(losses[i:i + w]) / w for i in range(len(losses) - w + 1)]
        ax.plot([(i + w) * tokens_per_step / 1e6 for i in range(len(means))], means,
                label=f"{row['preset']} seed {row['seed']}", linewidth=1)
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel(f"training loss (mean of up to {window} steps)")
    if ax.lines:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(path, "wb") as f:  # a merge cut while plotting keeps the previous plot
        fig.savefig(f, dpi=120, format="png")
    plt.close(fig)
