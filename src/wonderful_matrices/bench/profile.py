"""Where the time of a training step goes: torch.profiler tables of presets side by side.

Each preset gets a fresh model and the training step of ``wm bench lm`` (:func:`.lm_common.optimizer_step`:
forward under bf16 autocast on CUDA, backward, clipping, AdamW) on rows of random tokens; two warm-up steps,
then ``steps`` timed ones without the profiler and ``steps`` profiled ones. Reported per preset and variant: the
step's wall time unprofiled (``wall_ms_per_step``), GPU time per step (the sum of the kernels' device time) and
their ratio (``gpu_busy``: near 1 the GPU sets the pace; well below 1 the host's launches do), kernel launches per
step, CPU time per step; the operators (``aten::mul``, autograd Functions, ...) by their
self time and the GPU kernels by device time, each with calls per step and share of the step; on the GPU also the
operators by host (self CPU) time; a side-by-side table
of the operators whose time differs most between the first two profiled models; and one Chrome trace per model
(``trace-<preset>-<variant>.json.gz``, open in Perfetto or ``chrome://tracing``).

Variants: ``"fused"`` is the model as it trains by default (Triton RMSNorm with the residual add, chunked LM-head
loss); ``"unfused"`` runs the same model with the plain-PyTorch norms and the loss from full float32 logits;
``"compiled"`` is ``"fused"`` with the forward and backward under ``torch.compile`` (default mode, static shapes;
compiled during the warm-up steps; a preset that fails to compile gets a row with its ``error``).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from ..train.optim import adamw
from .common import markdown_table, one_line, synchronize, write_results
from .lm_common import compiled_lm_loss, optimizer_step, set_fused

QUICK = dict(presets=("cheems-tiny", "llama-tiny"), seq_len=64, batch=2, steps=2, top=15)
FULL = dict(presets=("cheems-base", "llama-base"), seq_len=4096, batch=8, steps=3, top=30)
VARIANTS = ("fused", "unfused", "compiled")


def _tables(prof, steps: int, on_gpu: bool) -> tuple[dict, list[dict], list[dict]]:
    """(totals, operators, kernels) per step from a finished profile."""
    events = prof.key_averages()
    kernels, operators = [], []
    for e in events:
        is_kernel = on_gpu and e.device_type == torch.autograd.DeviceType.CUDA
        row = {"name": e.key, "calls": e.count / steps, "gpu_ms": e.self_device_time_total / 1e3 / steps,
               "cpu_ms": e.self_cpu_time_total / 1e3 / steps}
        (kernels if is_kernel else operators).append(row)
    gpu_total = sum(r["gpu_ms"] for r in kernels)
    cpu_total = sum(r["cpu_ms"] for r in operators)
    key, total = ("gpu_ms", gpu_total) if on_gpu else ("cpu_ms", cpu_total)
    for rows in (kernels, operators):
        rows.sort(key=lambda r: -r[key])
        for r in rows:
            r["share"] = r[key] / total if total else 0.0
    totals = {"gpu_ms_per_step": gpu_total if on_gpu else None,
              "kernel_launches_per_step": sum(r["calls"] for r in kernels) if on_gpu else None,
              "cpu_ms_per_step": cpu_total}
    return totals, operators, kernels


def profile_training(config, seq_len: int, batch: int, steps: int, device: torch.device, fused: bool = True,
                     trace_path: str | Path | None = None, compiled: bool = False) -> dict:
    """Profile ``steps`` training steps of a fresh model of ``config`` on ``batch`` rows of ``seq_len`` random
    tokens; ``{"totals", "operators", "kernels"}`` (per step; see the module docstring). Writes the Chrome trace to
    ``trace_path`` when given. ``compiled``: the loss under ``torch.compile`` (compiled in the warm-up steps)."""
    from ..models import CheemsForCausalLM

    torch.manual_seed(0)
    model = CheemsForCausalLM(config).to(device).train()
    set_fused(model, fused)
    opt = adamw(model, 1e-4, 0.1)
    rows = torch.randint(0, config.vocab_size, (batch, seq_len + 1), device=device)
    loss_fn = compiled_lm_loss() if compiled else None
    for _ in range(2):
        optimizer_step(model, opt, rows, device, clip=1.0, loss_fn=loss_fn)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        optimizer_step(model, opt, rows, device, clip=1.0, loss_fn=loss_fn)
    synchronize(device)
    unprofiled_ms = (time.perf_counter() - start) * 1e3 / steps
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            optimizer_step(model, opt, rows, device, clip=1.0, loss_fn=loss_fn)
        synchronize(device)
    wall_ms = (time.perf_counter() - start) * 1e3 / steps
    if trace_path is not None:
        prof.export_chrome_trace(str(trace_path))
    totals, operators, kernels = _tables(prof, steps, on_gpu)
    totals["wall_ms_per_step"] = unprofiled_ms
    totals["gpu_busy"] = totals["gpu_ms_per_step"] / unprofiled_ms if on_gpu else None
    totals["wall_ms_per_step_profiled"] = wall_ms
    del model, opt, loss_fn
    if on_gpu:
        torch.cuda.empty_cache()
    return {"totals": totals, "operators": operators, "kernels": kernels}


def side_by_side(first: list[dict], second: list[dict], key: str, top: int) -> list[dict]:
    """The ``top`` operators whose per-step ``key`` time differs most between two operator tables."""
    a = {r["name"]: r for r in first}
    b = {r["name"]: r for r in second}
    rows = []
    for name in set(a) | set(b):
        ra, rb = a.get(name, {}), b.get(name, {})
        ta, tb = ra.get(key, 0.0), rb.get(key, 0.0)
        rows.append({"name": name, "calls_a": ra.get("calls", 0.0), "ms_a": ta, "calls_b": rb.get("calls", 0.0),
                     "ms_b": tb, "difference_ms": ta - tb})
    rows.sort(key=lambda r: -abs(r["difference_ms"]))
    return rows[:top]


def _parse_list(value, allowed: tuple | None, name: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",")) if isinstance(value, str) else tuple(value)
    if not items or (allowed is not None and any(v not in allowed for v in items)):
        raise ValueError(f"{name}={value!r} is not allowed: a non-empty list of {allowed or 'preset names'}")
    return items


def run(out_dir, quick: bool = False, device=None, presets=None, steps: int | None = None,
        seq_len: int | None = None, batch: int | None = None, variants=("fused",),
        top: int | None = None) -> list[dict]:
    """Profile the training step of each of ``presets`` (default ``cheems-base,llama-base``; ``quick``:
    ``cheems-tiny,llama-tiny``, 2 × 64 tokens, CPU) in each of ``variants`` (``"fused"``, ``"unfused"``,
    ``"compiled"``); write
    ``results.json`` (every operator and kernel), ``results.md`` (the top ``top`` of each, and the side-by-side
    table) and the Chrome traces into ``out_dir``; return one summary row per (preset, variant)."""
    from ..models import presets as preset_registry

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = dict(QUICK if quick else FULL)
    for key, value in (("steps", steps), ("seq_len", seq_len), ("batch", batch), ("top", top)):
        if value is not None:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}={value!r} is not allowed: an int >= 1")
            cfg[key] = value
    names = _parse_list(presets if presets is not None else cfg["presets"], None, "presets")
    for name in names:
        if name not in preset_registry.names():
            raise ValueError(f"presets={name!r} is not allowed: one of {preset_registry.names()}")
    variants = _parse_list(variants, VARIANTS, "variants")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary, details = [], {}
    for name in names:
        config = preset_registry.get(name, use_cache=False)
        for variant in variants:
            label = f"{name} {variant}"
            try:
                result = profile_training(config, cfg["seq_len"], cfg["batch"], cfg["steps"], device,
                                          fused=variant != "unfused", compiled=variant == "compiled",
                                          trace_path=out / f"trace-{name}-{variant}.json.gz")
            except Exception as error:  # a preset that fails to compile is a row, not the end
                if variant != "compiled":
                    raise
                summary.append({"preset": name, "variant": variant, "error": one_line(error)})
                print(f"{label}: {summary[-1]['error']}", flush=True)
                continue
            details[label] = result
            summary.append({"preset": name, "variant": variant, **result["totals"]})
            print(f"{label}: {result['totals']}", flush=True)
    key = "gpu_ms" if device.type == "cuda" else "cpu_ms"
    labels = list(details)
    notes = []
    if len(labels) >= 2:
        diff = side_by_side(details[labels[0]]["operators"], details[labels[1]]["operators"], key, cfg["top"])
        notes.append(f"## Operators, {labels[0]} (a) against {labels[1]} (b): {key} per step\n\n"
                     + markdown_table(diff))
    for label, result in details.items():
        for table in ("operators", "kernels"):
            if result[table]:
                notes.append(f"## {label}: top {cfg['top']} {table} per step (share of {key})\n\n"
                             + markdown_table(result[table][:cfg["top"]],
                                              ["name", "calls", "gpu_ms", "cpu_ms", "share"]))
        if device.type == "cuda":  # where the host's time goes (the launches' own cost is under the cuda* rows)
            by_host = sorted(result["operators"], key=lambda r: -r["cpu_ms"])[:cfg["top"]]
            notes.append(f"## {label}: top {cfg['top']} operators by host time per step (self CPU ms)\n\n"
                         + markdown_table(by_host, ["name", "calls", "cpu_ms", "gpu_ms"]))
    meta = {"seq_len": cfg["seq_len"], "batch": cfg["batch"], "steps_profiled": cfg["steps"],
            "device": str(device), "autocast": "bf16" if device.type == "cuda" else "off (float32)",
            "optimizer": "AdamW (fused on CUDA; train.optim.adamw), clip 1.0",
            "tables": {label: {"operators": r["operators"], "kernels": r["kernels"]} for label, r in details.items()}}
    columns = list(dict.fromkeys(key for row in summary for key in row))  # an error row has its own column
    table = write_results(out, "profile", summary, meta, columns=columns, notes="\n".join(notes))
    print(table)
    return summary


__all__ = ["run", "profile_training", "side_by_side"]
