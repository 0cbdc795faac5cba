"""Claim 4: Cheems against popular architectures (Doge, Llama, Mamba2, Jamba) at matched sizes.

Training: every preset of one size class (``-small`` with ``quick``, ``-base`` otherwise; vocabulary set to
the BPE trained on the corpus: the embedded Shakespeare by default, ``data="python-source"`` for a corpus large
enough to leave the over-fitting regime) gets the same data, tokenizer, schedule, learning rate and token budget
(:mod:`.lm_common`), in packed rows whose documents are modelled apart (positions restart after each EOS; a
document's first token is not scored). Reported: parameters, training tokens/s (steady state), peak CUDA memory,
validation perplexity at the training length (packed the same way), and the corpus' manifest where it has one.

Inference: decoding one token at a time (batch 1) after a context of ``C`` tokens, for ``C`` in 4K, 16K,
128K, 1M (256 and 1K with ``quick``). The cache at context ``C`` is made by a short real prefill followed by
growing every attention-like layer's key/value store to the length it would have after ``C`` tokens (``C``
for attention, ``min(C, keep_window)`` for DMA) with random keys/values; SSD and Mamba2 states have a fixed
size and are kept from the prefill. That times the decode step at the cache size a real ``C``-token context
would leave, without an O(C^2) prefill of a million tokens. Reported: decode tokens/s, cache bytes
computed from the config (keys/values and recurrent states; ``analytic``) and measured (``CheemsCache.nbytes``),
or ``does not fit`` when the analytic cache (twice, for the copy a growing cache makes) exceeds the free memory.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..train.graph_step import GraphedTrainStep
from ..train.optim import adamw, make_capturable
from .common import GpuSampler, one_line, synchronize, time_callable, write_results
from .decode_common import analytic_cache_bytes, decode_measurement
from .lm_common import compiled_lm_loss, corpus_tokens, optimizer_step, perplexity, set_fused, train_lm, training_loss
from .lm_scale import check_eval_lengths, run_label, run_model, run_one, run_settings, steps_for

FAMILIES = ("cheems", "doge", "llama", "mamba2", "jamba")
QUICK = dict(size="small", seq_len=128, batch=8, steps=30, lr=1e-3, contexts=(256, 1024), eval_tokens=16_384,
             decode_reps=5, throughput_lengths=(256, 1024), throughput_tokens=2048)
FULL = dict(size="base", seq_len=2048, batch=8, steps=200, lr=1e-3, contexts=(4096, 16384, 131072, 1048576),
            eval_tokens=None, decode_reps=20, throughput_lengths=(4096, 16384), throughput_tokens=32768)


def training_throughput(config, seq_len: int, tokens_per_step: int, device: torch.device, steps: int = 4,
                        fused: bool = True, compiled: bool = False, graphed: bool = False) -> dict:
    """Training tokens/s and peak memory of a fresh model of ``config`` on rows of ``seq_len`` random tokens
    (``tokens_per_step // seq_len`` rows, at least one): one step is forward, backward and AdamW, bf16 autocast on
    CUDA; two warm-up steps, then the median of ``steps`` timed ones. ``{"tokens_per_s", "peak_memory_gb",
    "steady_peak_memory_gb", "error"}``: the peak over every step, warm-up included (compilation and the kernels'
    first-call autotuning), and over the timed steps alone (what each later training step needs); all None when it
    runs out of memory or fails to compile (``error``: what happened, one line; None when it ran); on CUDA also
    the GPU's clock, temperature and power during the timed steps (:class:`.common.GpuSampler`). ``fused=False``:
    the plain-PyTorch norms and loss (:func:`.lm_common.set_fused`).
    ``compiled=True``: the loss under ``torch.compile`` (:func:`.lm_common.compiled_lm_loss`; default mode,
    ``dynamic=False``); the warm-up steps include the compilation.
    ``graphed=True``: the whole step (forward, backward, AdamW) replayed from a CUDA graph
    (:class:`~wonderful_matrices.train.graph_step.GraphedTrainStep`, a third warm-up step records it), so that the
    host's launches do not limit the step; the result then says ``graphed`` (whether it replayed) and
    ``graph_error`` (why not, None when it did). Off CUDA the steps run eagerly."""
    from ..models import CheemsForCausalLM

    batch = max(1, tokens_per_step // seq_len)
    torch.manual_seed(0)
    model = CheemsForCausalLM(config).to(device).train()
    set_fused(model, fused)
    cuda = device.type == "cuda"
    opt = adamw(model, 1e-4, 0.1)
    if graphed and cuda:
        make_capturable(opt, device)
    rows = torch.randint(0, config.vocab_size, (batch, seq_len + 1), device=device)
    loss_fn = compiled_lm_loss() if compiled else None
    result = {"tokens_per_s": None, "peak_memory_gb": None, "steady_peak_memory_gb": None, "error": None}
    graph_step = GraphedTrainStep(lambda r: training_loss(model, r, device, loss_fn), model.parameters(), opt,
                                  max_grad_norm=None, warmup_steps=2) if graphed else None
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        if graph_step is None:
            step, warmups = (lambda: optimizer_step(model, opt, rows, device, loss_fn=loss_fn)), 2
        else:  # its eager warm-up steps, then the one that records the graph
            step, warmups = (lambda: graph_step(rows)), graph_step.warmup_steps + 1
        for _ in range(warmups):
            step()
        synchronize(device)
        warm_peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        with GpuSampler(device) as gpu:
            ms = time_callable(step, device, warmup=0, reps=steps)
        steady = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
        result.update(tokens_per_s=batch * seq_len * 1e3 / ms, peak_memory_gb=max(warm_peak, steady) if cuda else None,
                      steady_peak_memory_gb=steady, **(gpu.summary() if cuda else {}))
        if graph_step is not None:
            result.update(graphed=graph_step.recorded, graph_error=graph_step.failed)
    except torch.OutOfMemoryError:
        result["error"] = "out of memory"
    except Exception as error:  # a preset that fails to compile is a result, not the end
        if not compiled:
            raise
        result["error"] = one_line(error)
    model = opt = loss_fn = graph_step = step = None  # free the memory (a graph's pool too) before the next one
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def run(out_dir, quick: bool = False, device=None, steps: int | None = None, families=FAMILIES,
        contexts=None, size: str | None = None, vocab_size: int | None = None, seq_len: int | None = None,
        batch: int | None = None, data: str = "shakespeare", cache_dir=None,
        eval_tokens: int | None = None, throughput_lengths=None, compiled: bool | None = None, seeds=None,
        train_tokens: int | None = None, eval_contexts=None, checkpoint_every: int = 500,
        compiled_training: bool = False, hybrid_ratio: int | None = None, graphed: bool | None = None,
        graphed_training: bool = False, lr: float | None = None) -> list[dict]:
    """Train and evaluate every available preset family, measure decoding; write ``results.json``,
    ``results.md`` and ``lm.png`` into ``out_dir``; return one row per (family, context).

    With ``seeds`` (run one model per seed) or ``train_tokens`` (the token budget; the steps follow from
    ``batch x seq_len``), each (family, seed) is a run of its own in ``out_dir/<preset>-seed<k>`` instead
    (:mod:`.lm_scale`: skipped when complete, resumed from its checkpoint, saved every ``checkpoint_every``
    steps; no decoding or throughput measurements, the analytic cache at the largest of ``contexts``);
    the rows of the runs are returned and :func:`.lm_scale.merge_results` tabulates them.
    ``eval_contexts``: lengths of validation rows scored besides the training length (``val_ppl@C``; in the
    per-run layout at most ``eval_tokens`` tokens, default 2M, the same targets at every length).

    ``quick``: ``-small`` presets, BPE 4096, 30 steps of 8 x 128 tokens, contexts 256 and 1K, training
    throughput at 256 and 1K tokens per row (CPU). Full: ``-base`` presets, BPE 32768, 200 steps of
    8 x 2048 tokens, contexts 4K..1M, training throughput at 4K and 16K tokens per row (one H200).
    ``steps``, ``contexts``, ``size`` (preset size), ``vocab_size``, ``seq_len``, ``batch``, ``eval_tokens``
    (validation tokens scored), ``throughput_lengths``, ``lr`` (the peak learning rate; 1e-3) override;
    ``compiled`` (default: on CUDA): the training
    throughput also under ``torch.compile`` (``compiled_tok_s@T``, ``compiled_peak_gb@T``; ``compile_error@T`` where
    it fails; off by default on the CPU, where Inductor takes minutes per model);
    ``graphed`` (default: with ``compiled`` on CUDA): the compiled step also replayed from a CUDA graph
    (``graphed_tok_s@T``, ``graphed_peak_gb@T``, ``graphed_vs_llama@T``; ``graph_error@T`` where it is not recorded):
    the throughput when the host's kernel launches do not limit the step, as ``wm train --compile --cuda-graph``
    trains;
    ``compiled_training``: every model trains under ``torch.compile`` (``train_lm(compiled=True)``; the throughput
    measurements keep following ``compiled``); ``graphed_training``: every training step is replayed from a CUDA graph
    (``train_lm(graphed=True)``, CUDA; with ``compiled_training``, the compiled step);
    ``hybrid_ratio``: recurrent layers per attention layer of the hybrid families (cheems, jamba; the presets
    have 7), their rows named ``<preset>-<r>to1`` (:func:`.lm_scale.run_label`); the other families run as usual;
    ``data``: the corpus (default the embedded Shakespeare); ``cache_dir``: tokenizer/token cache."""
    from ..models import CheemsForCausalLM, presets

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = dict(QUICK if quick else FULL)
    compiled = device.type == "cuda" if compiled is None else bool(compiled)
    graphed = compiled and device.type == "cuda" if graphed is None else bool(graphed)
    if steps is not None:
        cfg["steps"] = int(steps)
    if contexts is not None:
        cfg["contexts"] = tuple(contexts)
    if lr is not None and not (0 < lr < float("inf")):
        raise ValueError(f"lr={lr!r} is not allowed: a learning rate > 0, e.g. 3e-4")
    for key, value in (("size", size), ("seq_len", seq_len), ("batch", batch), ("eval_tokens", eval_tokens),
                       ("throughput_lengths", throughput_lengths), ("lr", lr)):
        if value is not None:
            cfg[key] = value
    if cfg["steps"] < 1:
        raise ValueError(f"steps={cfg['steps']!r} is not allowed: must be >= 1")
    if hybrid_ratio is not None and not presets.is_hybrid_ratio(hybrid_ratio):
        raise ValueError(f"hybrid_ratio={hybrid_ratio!r} is not allowed: an integer >= 1")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ValueError(f"families={list(families)!r} is not allowed: one or more of {list(FAMILIES)}")
    eval_contexts = tuple(eval_contexts or ())
    for name, values in (("seeds", seeds or ()), ("eval_contexts", eval_contexts)):
        bad = [v for v in values if not isinstance(v, int) or v < (0 if name == "seeds" else 1)]
        if bad:
            raise ValueError(f"{name}={list(values)!r} is not allowed: integers >= {0 if name == 'seeds' else 1}")
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={list(seeds)!r} is not allowed: each seed once")
    check_eval_lengths((cfg["seq_len"],) + eval_contexts)  # before training, not at its end
    per_run = seeds is not None or train_tokens is not None
    if per_run and train_tokens is not None:
        if steps is not None:
            raise ValueError(f"steps={steps!r} is not allowed with train_tokens={train_tokens!r}: give one budget")
        cfg["steps"] = steps_for(train_tokens, cfg["batch"], cfg["seq_len"])
    out = Path(out_dir)
    start = time.perf_counter()
    corpus = corpus_tokens(data, vocab_size or (4096 if quick else 32768), cache_dir or out / "cache")
    if per_run:
        settings = run_settings(corpus, cfg["seq_len"], cfg["batch"], cfg["steps"], cfg["lr"], eval_contexts,
                                2**21 if eval_tokens is None else eval_tokens,
                                cfg["contexts"] if contexts is not None else (max(cfg["contexts"]),), device)
        run_rows = [run_one(out, family, cfg["size"], seed, corpus, settings, device, checkpoint_every,
                            compiled=bool(compiled_training), hybrid_ratio=hybrid_ratio,
                            graphed=bool(graphed_training))
                       for family in families for seed in (seeds if seeds is not None else (0,))]
        print(f"lm: {len(run_rows)} runs in {time.perf_counter() - start:.1f} s -> {out}")
        return run_rows
    rows, training = [], []
    available = presets.names()
    for family in families:
        if f"{family}-{cfg['size']}" not in available:
            training.append({"preset": run_label(family, cfg["size"], hybrid_ratio),
                             "status": "preset not available in this build"})
            continue
        name, config = run_model(family, cfg["size"], hybrid_ratio, vocab_size=corpus.vocab_size, use_cache=False)
        torch.manual_seed(0)
        model = CheemsForCausalLM(config).to(device)
        params = sum(p.numel() for p in model.parameters())
        stats = train_lm(model, corpus.train, cfg["seq_len"], cfg["batch"], cfg["steps"], cfg["lr"], device,
                         eos=corpus.eos, compiled=bool(compiled_training), graphed=bool(graphed_training))
        ppl = perplexity(model, corpus.validation, cfg["seq_len"], cfg["batch"], device, cfg["eval_tokens"],
                         eos=corpus.eos)
        train_row = {"preset": name, "parameters": params, "train_tokens_per_s": stats["tokens_per_s"],
                     "peak_memory_gb": None if stats["peak_memory_bytes"] is None else
                     stats["peak_memory_bytes"] / 2**30, "val_ppl": ppl, "final_train_loss": stats["final_loss"],
                     "status": "ok"}
        for length in eval_contexts:
            train_row[f"val_ppl@{length}"] = perplexity(
                model, corpus.validation, length, max(1, cfg["batch"] * cfg["seq_len"] // length), device,
                cfg["eval_tokens"], eos=corpus.eos)
        model.eval()
        if device.type == "cuda":
            model.to(torch.bfloat16)
        for length in cfg["throughput_lengths"]:
            t = training_throughput(config, length, cfg["throughput_tokens"], device)
            train_row[f"train_tok_s@{length}"] = t["tokens_per_s"]
            train_row[f"peak_gb@{length}"] = t["peak_memory_gb"]
            if compiled:
                t = training_throughput(config, length, cfg["throughput_tokens"], device, compiled=True)
                train_row[f"compiled_tok_s@{length}"] = t["tokens_per_s"]
                train_row[f"compiled_peak_gb@{length}"] = t["peak_memory_gb"]
                if t["error"] is not None:
                    train_row[f"compile_error@{length}"] = t["error"]
            if graphed:
                t = training_throughput(config, length, cfg["throughput_tokens"], device, compiled=compiled,
                                        graphed=True)
                recorded = t["error"] is None and t.get("graphed")
                train_row[f"graphed_tok_s@{length}"] = t["tokens_per_s"] if recorded else None
                train_row[f"graphed_peak_gb@{length}"] = t["peak_memory_gb"] if recorded else None
                if not recorded:
                    train_row[f"graph_error@{length}"] = t["error"] or t.get("graph_error") or "not recorded"
        training.append(train_row)
        print(f"{name:14s} params={params / 1e6:.1f}M train {stats['tokens_per_s']:.0f} tok/s ppl={ppl:.2f} " +
              " ".join(f"@{n}: {train_row[f'train_tok_s@{n}'] or 0:.0f} tok/s"
                       + (f" (compiled {train_row[f'compiled_tok_s@{n}'] or 0:.0f})" if compiled else "")
                       + (f" (graphed {train_row[f'graphed_tok_s@{n}'] or 0:.0f})" if graphed else "")
                       for n in cfg["throughput_lengths"]),
              flush=True)
        config.use_cache = True
        for context in cfg["contexts"]:
            try:
                d = decode_measurement(model, config, context, device, cfg["decode_reps"])
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                d = {"context": context, "cache_bytes_analytic": analytic_cache_bytes(config, context, 2),
                     "decode_tokens_per_s": None, "cache_bytes_measured": None, "status": "does not fit (OOM)"}
            rows.append({**{k: v for k, v in train_row.items() if k not in ("status", "final_train_loss")}, **d})
            print(f"  context {context:8d}: {d['status']}, cache {d['cache_bytes_analytic'] / 2**20:.2f} MiB, "
                  f"decode {d['decode_tokens_per_s'] or 0:.1f} tok/s"
                  + (f", graphed {d['decode_graph_tokens_per_s'] or 0:.1f} tok/s ({d['graph']})"
                     if "graph" in d else ""),
                  flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    _add_ratios_to_llama(rows, cfg["size"], cfg["throughput_lengths"])
    total_s = time.perf_counter() - start
    meta = {"quick": quick, "device": str(device), "corpus": corpus.name, "corpus_manifest": corpus.manifest,
            "size_class": cfg["size"],
            "training": f"{cfg['steps']} steps x {cfg['batch']} rows x {cfg['seq_len']} tokens = "
                        f"{cfg['steps'] * cfg['batch'] * cfg['seq_len']:,} tokens per model, lr {cfg['lr']}, "
                        "AdamW(0.9, 0.95) wd 0.1, clip 1, 5% warm-up + cosine to 10%"
                        + (", bf16 autocast" if device.type == "cuda" else ", float32")
                        + (", forward and backward under torch.compile" if compiled_training else "")
                        + (", each step replayed from a CUDA graph" if graphed_training else "")
                        + "; packed documents (positions restart after EOS, a document's first token not scored)",
            "decode": "batch 1, one token per step, cache grown to the context with random keys/values "
                      "(see the module docstring); " + ("bf16 weights" if device.type == "cuda" else "float32"),
            "throughput": f"train_tok_s@T: forward + backward + AdamW on {cfg['throughput_tokens']} random tokens per "
                          "step in rows of T tokens (a fresh model; median of 4 steps after 2 warm-ups); "
                          "vs_llama@T: that throughput over the same-size Llama preset's"
                          + ("; compiled_tok_s@T: the same with the forward and backward under torch.compile "
                             "(default mode, static shapes; the warm-ups compile)" if compiled else "")
                          + ("; graphed_tok_s@T: the same" + (" compiled" if compiled else "") + " step replayed "
                             "from a CUDA graph (forward, backward and AdamW recorded once after 2 warm-ups)"
                             if graphed else ""),
            "contexts": list(cfg["contexts"]), "wall_s": round(total_s, 1)}
    if eval_contexts:
        meta["eval_contexts"] = (f"val_ppl@C: validation perplexity in rows of C tokens (packed the same way; at most "
                                 f"{cfg['eval_tokens'] or 'all the'} validation tokens, floored to whole rows)")
    lengths = cfg["throughput_lengths"]
    columns = ["preset", "parameters", "train_tokens_per_s", "peak_memory_gb", "val_ppl"] + \
        [f"val_ppl@{n}" for n in eval_contexts] + \
        [f"train_tok_s@{n}" for n in lengths] + [f"vs_llama@{n}" for n in lengths] + \
        ([f"compiled_tok_s@{n}" for n in lengths] + [f"compiled_vs_llama@{n}" for n in lengths] if compiled else []) + \
        ([f"graphed_tok_s@{n}" for n in lengths] + [f"graphed_vs_llama@{n}" for n in lengths] if graphed else []) + \
        ["context", "decode_tokens_per_s", "decode_graph_tokens_per_s", "cache_bytes_analytic", "cache_bytes_measured",
         "cache_vs_llama", "status"]
    missing = [t["preset"] for t in training if t["status"] != "ok"]
    notes = "Not run (preset missing in this build): " + ", ".join(missing) if missing else ""
    write_results(out, "lm", rows, meta, columns=columns, notes=notes)
    if rows:
        _plot(rows, out / "lm.png")
    print(f"lm: {len(rows)} rows in {total_s:.1f} s -> {out}")
    return rows


def _add_ratios_to_llama(rows: list[dict], size: str, lengths) -> None:
    """Add ``vs_llama@T`` (training tokens/s over the Llama preset's at length T; ``compiled_vs_llama@T`` and
    ``graphed_vs_llama@T`` the same compiled and graphed, where measured) and ``cache_vs_llama`` (cache bytes over
    Llama's at the same context) to every row, None where Llama was not run or did not fit."""
    llama = {r["context"]: r for r in rows if r["preset"] == f"llama-{size}"}
    for r in rows:
        ref = llama.get(r["context"])
        for n in lengths:
            mine, base = r.get(f"train_tok_s@{n}"), ref and ref.get(f"train_tok_s@{n}")
            r[f"vs_llama@{n}"] = mine / base if mine and base else None
            for kind in ("compiled", "graphed"):
                if f"{kind}_tok_s@{n}" in r:
                    mine, base = r[f"{kind}_tok_s@{n}"], ref and ref.get(f"{kind}_tok_s@{n}")
                    r[f"{kind}_vs_llama@{n}"] = mine / base if mine and base else None
        r["cache_vs_llama"] = r["cache_bytes_analytic"] / ref["cache_bytes_analytic"] if ref else None


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for preset in dict.fromkeys(r["preset"] for r in rows):
        pts = [r for r in rows if r["preset"] == preset]
        axes[0].plot([r["context"] for r in pts], [r["cache_bytes_analytic"] / 2**20 for r in pts], "o-", label=preset)
        ok = [r for r in pts if r["decode_tokens_per_s"]]
        line, = axes[1].plot([r["context"] for r in ok], [r["decode_tokens_per_s"] for r in ok], "o-", label=preset)
        graphed = [r for r in pts if r.get("decode_graph_tokens_per_s")]
        if graphed:
            axes[1].plot([r["context"] for r in graphed], [r["decode_graph_tokens_per_s"] for r in graphed], "s--",
                         color=line.get_color(), label=f"{preset} (CUDA graph)")
    for ax, label in zip(axes, ("cache (MiB, analytic)", "decode tokens/s (batch 1)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context tokens")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
