"""Claim 1: RoPE inside SSD ("unified position encoding") lowers the perplexity of a QCAttn + SSD hybrid.

One hybrid LM (7 SSD layers : 1 causal attention layer, the attention last; SwiGLU MLP in every block), in
variants that differ only in how the SSD layers see position (the first three run by default):

* ``no_pe``:   SSD without any position encoding (RoPE only in the attention layer),
* ``rope``:    SSD with RoPE on B and C (the unified variant),
* ``conv``:    SSD with Mamba2's short causal convolution instead (no RoPE),
* ``data``:    SSD with data-dependent rotary on B and C (Mamba-3 style, ``ssd_rope="data"``; no conv).

Every variant is trained on the same corpus (the embedded Shakespeare corpus, BPE), the same token budget,
schedule and seeds (:mod:`.lm_common`), then scored on the validation split at the training length and at
2x and 4x of it. Reported per variant: perplexity mean and spread (min..max) over seeds, and the relative
difference ``(ppl_other - ppl_rope) / ppl_other`` that the paper's "> 4% lower perplexity" refers to.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .common import write_results
from .lm_common import corpus_tokens, perplexity, train_lm
from .lm_scale import eval_prefix

VARIANTS = {"no_pe": dict(ssd_use_rope=False, ssd_use_conv=False),
            "rope": dict(ssd_use_rope=True, ssd_use_conv=False),
            "conv": dict(ssd_use_rope=False, ssd_use_conv=True),
            "data": dict(ssd_rope="data", ssd_use_conv=False)}
VARIANT_NAMES = {"no_pe": "SSD without PE", "rope": "SSD + RoPE (unified)", "conv": "SSD + short conv",
                 "data": "SSD + data-dependent rotary"}
DEFAULT_VARIANTS = ("no_pe", "rope", "conv")
EVAL_FACTORS = (1, 2, 4)

QUICK = dict(vocab_size=512, hidden_size=128, num_hidden_layers=8, heads=2, ssd_heads=2, head_dim=64,
             state=32, intermediate_size=256, seq_len=128, batch=16, steps=150, lr=2e-3, seeds=1,
             eval_tokens=24_000)
FULL = dict(vocab_size=4096, hidden_size=512, num_hidden_layers=8, heads=8, ssd_heads=8, head_dim=64,
            state=64, intermediate_size=1536, seq_len=512, batch=16, steps=600, lr=1e-3, seeds=3,
            eval_tokens=None)


def hybrid_config(variant: str, size: dict, vocab_size: int):
    """The :class:`CheemsConfig` of the 7 SSD : 1 attention hybrid in ``variant`` (a key of ``VARIANTS``)."""
    from ..models import CheemsConfig
    from ..models.configuration import default_layer_types

    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not allowed: one of {tuple(VARIANTS)}")
    n = size["num_hidden_layers"]
    return CheemsConfig(
        vocab_size=vocab_size, hidden_size=size["hidden_size"], num_hidden_layers=n,
        mixer_types=default_layer_types(n, 8, "attn", "ssd"), ffn_types=["mlp"] * n,
        intermediate_size=size["intermediate_size"], num_attention_heads=size["heads"],
        num_key_value_heads=size["heads"], head_dim=size["head_dim"], ssd_num_heads=size["ssd_heads"],
        ssd_head_dim=size["head_dim"], ssd_state_size=size["state"], ssd_chunk_size=128, use_cache=False,
        **VARIANTS[variant])


def _plot(summary: list[dict], seq_len: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for s in summary:
        xs = [seq_len * f for f in EVAL_FACTORS]
        mean = [s[f"ppl@{f}x"] for f in EVAL_FACTORS]
        lo = [s[f"ppl@{f}x_min"] for f in EVAL_FACTORS]
        hi = [s[f"ppl@{f}x_max"] for f in EVAL_FACTORS]
        ax.plot(xs, mean, "o-", label=s["variant_name"])
        ax.fill_between(xs, lo, hi, alpha=0.2)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"evaluation length (trained at {seq_len})")
    ax.set_ylabel("validation perplexity")
    ax.set_title("7 SSD : 1 attention hybrid, position encoding of SSD")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(out_dir, quick: bool = False, device=None, steps: int | None = None, seeds: int | None = None,
        size: dict | None = None, data: str = "shakespeare", cache_dir=None,
        variants=DEFAULT_VARIANTS) -> list[dict]:
    """Train each of ``variants`` (keys of ``VARIANTS``, a sequence or a comma-separated string; ``"rope"``, the
    reference of the gains, among them) per seed, evaluate at 1x/2x/4x the training length, write ``results.json``,
    ``results.md`` and ``position.png`` into ``out_dir``; return the per-variant summary rows.

    ``quick``: width 128, 8 layers, BPE 512, 150 steps of 16 x 128 tokens, 1 seed (CPU, minutes). Full:
    width 512, 8 layers, BPE 4096, 600 steps of 16 x 512 tokens (4.9M tokens: about 3.4 epochs of the
    1.46M training tokens of Shakespeare; more only overfits), 3 seeds (one H200). ``steps``, ``seeds``
    and ``size`` (keys of ``QUICK``/``FULL``) override; ``data`` is the corpus (default the embedded
    Shakespeare), ``cache_dir`` where its tokenizer and tokens are cached (default ``out_dir/cache``).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = dict(QUICK if quick else FULL)
    cfg.update(size or {})
    if steps is not None:
        cfg["steps"] = int(steps)
    if seeds is not None:
        cfg["seeds"] = int(seeds)
    names = tuple(v.strip() for v in variants.split(",")) if isinstance(variants, str) else tuple(variants)
    if not names or "rope" not in names or any(v not in VARIANTS for v in names) or len(set(names)) < len(names):
        raise ValueError(f"variants={variants!r} is not allowed: distinct names from {tuple(VARIANTS)}, "
                         "'rope' among them (the reference of the gains)")
    for name in ("steps", "seeds", "seq_len", "batch"):
        if cfg[name] < 1:
            raise ValueError(f"{name}={cfg[name]!r} is not allowed: must be >= 1")
    out = Path(out_dir)
    start = time.perf_counter()
    corpus = corpus_tokens(data, cfg["vocab_size"], cache_dir or out / "cache")
    # one prefix of the validation tokens, a whole number of the longest rows: every length scores the same targets
    prefix = eval_prefix(cfg["eval_tokens"], len(corpus.validation), [cfg["seq_len"] * f for f in EVAL_FACTORS])
    from ..models import CheemsForCausalLM

    per_run = []
    for seed in range(cfg["seeds"]):
        for variant in names:
            torch.manual_seed(seed)
            model = CheemsForCausalLM(hybrid_config(variant, cfg, corpus.vocab_size)).to(device)
            stats = train_lm(model, corpus.train, cfg["seq_len"], cfg["batch"], cfg["steps"], cfg["lr"], device,
                             seed=seed)
            row = {"variant": variant, "seed": seed, "final_train_loss": stats["final_loss"],
                   "train_s": round(stats["train_s"], 1)}
            for f in EVAL_FACTORS:
                row[f"ppl@{f}x"] = perplexity(model, corpus.validation, cfg["seq_len"] * f,
                                              max(1, cfg["batch"] // f), device, prefix)
            per_run.append(row)
            print(f"seed {seed} {VARIANT_NAMES[variant]:22s} " +
                  " ".join(f"ppl@{f}x={row[f'ppl@{f}x']:.3f}" for f in EVAL_FACTORS) +
                  f" [{row['train_s']} s]", flush=True)
            del model

    summary = []
    for variant in names:
        runs = [r for r in per_run if r["variant"] == variant]
        s = {"variant": variant, "variant_name": VARIANT_NAMES[variant], "runs": f"mean of {len(runs)}"}
        for f in EVAL_FACTORS:
            vals = np.array([r[f"ppl@{f}x"] for r in runs])
            s[f"ppl@{f}x"], s[f"ppl@{f}x_min"], s[f"ppl@{f}x_max"] = float(vals.mean()), float(vals.min()), \
                float(vals.max())
        s["spread"] = " / ".join(f"{s[f'ppl@{f}x_min']:.3f}..{s[f'ppl@{f}x_max']:.3f}" for f in EVAL_FACTORS)
        summary.append(s)
    # the relative gain of the unified variant: of the means, and per seed
    for group in [summary] + [[r for r in per_run if r["seed"] == seed] for seed in range(cfg["seeds"])]:
        rope = next(s for s in group if s["variant"] == "rope")
        for s in group:
            for f in EVAL_FACTORS:
                s[f"rope_gain@{f}x_%"] = 100.0 * (s[f"ppl@{f}x"] - rope[f"ppl@{f}x"]) / s[f"ppl@{f}x"]
    for r in per_run:
        r.update(variant_name=VARIANT_NAMES[r["variant"]], runs=f"seed {r['seed']}")
    total_s = time.perf_counter() - start
    meta = {"quick": quick, "device": str(device), "corpus": corpus.name,
            "train_tokens_in_corpus": int(len(corpus.train)), "validation_tokens": int(len(corpus.validation)),
            "eval_tokens": prefix - 1,  # the targets offered at every length (the same at 1x, 2x, 4x)
            "model": f"{cfg['num_hidden_layers']} layers (7 SSD : 1 attn), width {cfg['hidden_size']}, "
                     f"SSD {cfg['ssd_heads']}x{cfg['head_dim']} state {cfg['state']}, attn {cfg['heads']} heads, "
                     f"SwiGLU {cfg['intermediate_size']}",
            "training": f"{cfg['steps']} steps x {cfg['batch']} rows x {cfg['seq_len']} tokens = "
                        f"{cfg['steps'] * cfg['batch'] * cfg['seq_len']:,} tokens per run, lr {cfg['lr']}, "
                        "AdamW(0.9, 0.95) wd 0.1, clip 1, 5% warm-up + cosine to 10%",
            "seeds": cfg["seeds"], "wall_s": round(total_s, 1),
            "paper_claim": "> 4% lower perplexity with RoPE in SSD (rope_gain > 4)"}
    columns = ["variant_name", "runs"] + [f"ppl@{f}x" for f in EVAL_FACTORS] + ["spread"] + \
        [f"rope_gain@{f}x_%" for f in EVAL_FACTORS]
    notes = (f"Rows 'mean of n' summarise the seeds; rows 'seed k' are single runs. "
             f"ppl@kx: validation perplexity at k x the training length {cfg['seq_len']}; "
             "spread: min..max over seeds; rope_gain: (ppl_variant - ppl_rope) / ppl_variant in percent "
             "(positive = the unified RoPE variant is better; the paper claims > 4%).")
    write_results(out, "position", summary + per_run, meta, columns=columns, notes=notes)
    _plot(summary, cfg["seq_len"], out / "position.png")
    print(f"position: {len(per_run)} runs in {total_s:.1f} s -> {out}")
    return summary
