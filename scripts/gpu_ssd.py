"""Stages of scripts/gpu_ssd.sh (one process each, so a crash or a timeout loses one stage only).

    python scripts/gpu_ssd.py triton   OUT.json   # triton fwd / fwd+bwd at the paper's shape + per-kernel times
    python scripts/gpu_ssd.py torch    OUT.json   # torch backend, eager
    python scripts/gpu_ssd.py compiled OUT.json   # torch backend under torch.compile
    python scripts/gpu_ssd.py mamba    OUT.json   # mamba_ssm's kernels, if importable (benchmark only)
    python scripts/gpu_ssd.py gap      OUT.json   # forward against mamba_ssm's, kernel by kernel (no D, as wm bench)
    python scripts/gpu_ssd.py packed   OUT.json   # per-kernel times without and with seq_idx (wm bench ssd --packed's)
    python scripts/gpu_ssd.py profile  OUT.json   # torch.profiler table of the eager torch backend
    python scripts/gpu_ssd.py dcb_ab   OUT.json   # dcb on 64- vs 32-row tiles (DCB_TILE), both shapes, one process
    python scripts/gpu_ssd.py table    DIR        # the side-by-side table from DIR/*.json

Shape: batch 8 × 4096 tokens, 64 heads × 64, state 128, 1 group, chunk 256; x, B, C bf16, dt/A/D float32.
``SSD_SHAPE=cheems`` times cheems-base's SSD layer instead (bench/ssd.py ``CHEEMS_SHAPE``): batch 8 × 4096 tokens,
6 heads × 128, state 128.
Times are medians of CUDA-event timings after warm-up (wonderful_matrices.bench.common.time_callable).
"""
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from wonderful_matrices.bench.common import peak_memory_bytes, time_callable
from wonderful_matrices.bench.ssd import CHEEMS_SHAPE, PAPER_SHAPE, make_inputs
from wonderful_matrices.ops import ssd

DEV = torch.device("cuda")
SHAPES = {"paper": PAPER_SHAPE, "cheems": CHEEMS_SHAPE}
SHAPE = SHAPES[os.environ.get("SSD_SHAPE", "paper")]
CHUNK = SHAPE["chunk"]


def _inputs(requires_grad=False):
    return make_inputs(SHAPE, torch.bfloat16, DEV, requires_grad=requires_grad)


def _time_op(fn, name):
    """fwd and fwd+bwd (autograd.grad w.r.t. every input) of ``fn(**inputs)``, and peak memory of fwd+bwd."""
    inputs = _inputs()
    with torch.no_grad():
        fwd = time_callable(lambda: fn(**inputs), DEV, warmup=3, reps=30)
    grads = _inputs(requires_grad=True)
    leaves = list(grads.values())
    gy = torch.randn_like(fn(**grads))

    def step():
        return torch.autograd.grad(fn(**grads), leaves, gy)
    fwd_bwd = time_callable(step, DEV, warmup=3, reps=30)
    peak = peak_memory_bytes(step, DEV)
    return {"implementation": name, "fwd_ms": fwd, "fwd_bwd_ms": fwd_bwd, "peak_gb": peak / 1e9}


class _KernelTimer:
    """timer(name, fn) for forward_kernels / backward_kernels: CUDA events around each launch."""

    def __init__(self):
        self.samples = {}
        self.pending = []

    def __call__(self, name, fn):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        self.pending.append((name, start, end))

    def collect(self):
        torch.cuda.synchronize()
        for name, start, end in self.pending:
            self.samples.setdefault(name, []).append(start.elapsed_time(end))
        self.pending.clear()

    def medians(self):
        return {k: statistics.median(v) for k, v in self.samples.items()}


MATMUL_KERNELS = ("cb", "chunk_state", "output", "dx2", "dcb", "dc2", "db2")
SWEEP = [(8, 3), (4, 2), (8, 2), (4, 3)]  # (num_warps, num_stages) tried on every matmul kernel at once


def _kernel_times(kernels, reps=10, seq_idx=None):
    """Median ms of each kernel launch (forward and backward kernels), with packed documents if ``seq_idx``."""
    inp = _inputs()
    x, dt, A, B, C, D = (inp[k] for k in ("x", "dt", "A", "B", "C", "D"))
    dy = torch.randn_like(x)
    dfinal = torch.randn(x.shape[0], x.shape[2], x.shape[3], B.shape[3], device=DEV)
    timer = _KernelTimer()
    for rep in range(reps + 3):
        y, cum, cb, states, plan = kernels.forward_kernels(x, dt, A, B, C, D, None, CHUNK, timer=timer,
                                                           seq_idx=seq_idx)
        kernels.backward_kernels(dy, dfinal, x, dt, A, B, C, D, cum, cb, states, plan, timer=timer)
        timer.collect()
        if rep < 3:  # warm-up (compilation) samples are dropped
            timer.samples.clear()
    return timer.medians(), plan


def _grad_errors():
    """Relative error of y and of every gradient against the float32 torch backend on the same (bf16) inputs."""
    inp = _inputs()
    gy = torch.randn_like(inp["x"], dtype=torch.float32)

    def grads(inputs, backend):
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
        y = ssd(**leaves, chunk_size=CHUNK, backend=backend)
        (y.float() * gy).sum().backward()
        return {"y": y.detach().float(), **{k: v.grad.float() for k, v in leaves.items()}}

    ref = grads({k: v.float() for k, v in inp.items()}, "torch")
    got = grads(inp, "triton")
    out = {"triton": {k: ((got[k] - ref[k]).norm() / ref[k].norm()).item() for k in ref}}
    del ref
    torch.cuda.empty_cache()
    return out


def stage_triton(save):
    """fwd / fwd+bwd of the triton backend, per-kernel times, accuracy of
    every gradient against the float32 torch backend, then a sweep of launch configs (progress is printed as it
    goes: a timeout loses only what had not finished)."""
    from wonderful_matrices.ops.ssd import chunked_kernels as kernels

    t0 = time.perf_counter()
    result = {"implementation": "triton", "variants": {}, "config": {k: list(v) for k, v in kernels.CONFIG.items()},
              "config_wide": {k: list(v) for k, v in kernels.CONFIG_WIDE.items()}}
    for variant in ("triton",):
        row = _time_op(lambda **kw: ssd(**kw, chunk_size=CHUNK, backend="triton"), variant)
        row["kernels_ms"], plan = _kernel_times(kernels)
        result["variants"][variant] = row
        save(result)
        print(f"[{time.perf_counter() - t0:5.1f}s] {variant}: fwd {row['fwd_ms']:.3f} fwd+bwd {row['fwd_bwd_ms']:.3f} "
              f"kernels {json.dumps({k: round(v, 3) for k, v in row['kernels_ms'].items()})}", flush=True)
    result["plan"] = {k: getattr(plan, k) for k in ("q", "nc", "bq", "bp", "bn", "state_block",
                                                     "dcb_bq", "dcb_hpp", "dcb_nsplit")}
    result["rel_err_vs_torch_fp32"] = _grad_errors()
    save(result)
    print(f"[{time.perf_counter() - t0:5.1f}s] rel err vs torch fp32: {json.dumps(result['rel_err_vs_torch_fp32'])}",
          flush=True)
    saved = dict(kernels.CONFIG)
    sweep = {}
    budget = float(os.environ.get("T_SWEEP", "50"))
    for cfg in SWEEP:
        if time.perf_counter() - t0 > budget:
            print(f"sweep stopped before {cfg}: over {budget:.0f} s", flush=True)
            break
        for name in MATMUL_KERNELS:
            kernels.CONFIG[name] = cfg
        times, _ = _kernel_times(kernels, reps=5)
        for name, ms in times.items():
            if name in MATMUL_KERNELS:
                sweep.setdefault(name, {})[f"w{cfg[0]}s{cfg[1]}"] = ms
        print(f"[{time.perf_counter() - t0:5.1f}s] sweep w{cfg[0]}s{cfg[1]}: "
              f"{json.dumps({k: round(v.get(f'w{cfg[0]}s{cfg[1]}', -1), 3) for k, v in sweep.items()})}", flush=True)
        kernels.CONFIG.update(saved)
        result["sweep_ms"] = sweep
        save(result)
    return result


def stage_packed():
    """Per-kernel median ms without and with the benchmark's packed documents (1..1024 tokens, seed 1), and the
    difference: where the packed row's extra time goes."""
    from wonderful_matrices.bench.ssd import document_ids
    from wonderful_matrices.ops.ssd import chunked_kernels as kernels

    plain, _ = _kernel_times(kernels)
    packed, _ = _kernel_times(kernels, seq_idx=document_ids(SHAPE["batch"], SHAPE["length"], 1024, DEV))
    rows = {name: {"unpacked_ms": plain.get(name), "packed_ms": ms,
                   "extra_ms": ms - plain[name] if name in plain else ms} for name, ms in packed.items()}
    for name, r in rows.items():
        print(f"{name:<16} unpacked {r['unpacked_ms'] or 0:7.3f}  packed {r['packed_ms']:7.3f}  "
              f"extra {r['extra_ms']:+7.3f} ms", flush=True)
    return {"implementation": "triton kernels, unpacked vs packed", "kernels": rows,
            "total_extra_ms": sum(r["extra_ms"] for r in rows.values())}


# (DCB_TILE, dcb launch setting or None for CONFIG's) timed by stage_dcb_ab; the first is the library's default
DCB_AB = [(64, None), (32, None), (32, (4, 2)), (32, (8, 3))]
DCB_AB_REPEATS = 2  # rounds over the settings (interleaved, so that drift of the clocks hits every setting alike)


def stage_dcb_ab():
    """The dcb kernel on 64- against 32-row tiles (``chunked_kernels.DCB_TILE``), the 32-row one also under other
    launch settings, at the paper's and cheems-base's shape in this one process (SSD_SHAPE is ignored). Per setting:
    the medians of the dcb launch, of the closing reductions ("reduce": the dcum kernel, which sums one row / column
    part per dcb tile, and dA / dD) and of the backward kernels in all; the whole fwd and fwd+bwd through ``ssd()``
    (fwd does not depend on the setting: a control for drift); every gradient's error against the float32 torch
    backend. Each setting is timed DCB_AB_REPEATS times in rounds; the rows keep the fastest round."""
    from wonderful_matrices.ops.ssd import chunked_kernels as kernels

    global SHAPE, CHUNK
    saved_shape, saved_tile, saved_config = SHAPE, kernels.DCB_TILE, kernels.CONFIG["dcb"]
    bwd_names = ("chunk_state_bwd", "state_pass_bwd", "dx2", "dcb", "dc2", "db2", "partials", "reduce")
    result = {"implementation": "dcb_ab", "default": {"DCB_TILE": saved_tile, "dcb": list(saved_config)},
              "shapes": {}}
    try:
        for shape_name in ("paper", "cheems"):
            SHAPE, CHUNK = SHAPES[shape_name], SHAPES[shape_name]["chunk"]
            rows = result["shapes"].setdefault(shape_name, {})
            for round_ in range(DCB_AB_REPEATS):
                for tile, config in DCB_AB:
                    kernels.DCB_TILE, kernels.CONFIG["dcb"] = tile, config or saved_config
                    name = f"tile{tile} w{kernels.CONFIG['dcb'][0]}s{kernels.CONFIG['dcb'][1]}"
                    row = _time_op(lambda **kw: ssd(**kw, chunk_size=CHUNK, backend="triton"), name)
                    times, _ = _kernel_times(kernels)
                    row.update(dcb_tile=tile, dcb_config=list(kernels.CONFIG["dcb"]), dcb_ms=times["dcb"],
                               reduce_ms=times["reduce"], bwd_kernels_ms=sum(times.get(k, 0.0) for k in bwd_names))
                    if round_ == 0:
                        row["rel_err_vs_torch_fp32"] = _grad_errors()["triton"]
                    best = rows.get(name)
                    if best is not None:
                        row["rel_err_vs_torch_fp32"] = best["rel_err_vs_torch_fp32"]
                        row = {k: (min(v, best[k]) if k.endswith("_ms") else v) for k, v in row.items()}
                    rows[name] = row
                    print(f"[{shape_name} round {round_}] {name}: dcb {times['dcb']:.3f} ms  reduce (dcum) "
                          f"{times['reduce']:.3f}  bwd kernels {row['bwd_kernels_ms']:.3f}  "
                          f"fwd {row['fwd_ms']:.3f}  fwd+bwd {row['fwd_bwd_ms']:.3f}", flush=True)
                    kernels.DCB_TILE, kernels.CONFIG["dcb"] = saved_tile, saved_config
    finally:
        SHAPE, CHUNK = saved_shape, saved_shape["chunk"]
        kernels.DCB_TILE, kernels.CONFIG["dcb"] = saved_tile, saved_config
    print("\n".join(_dcb_ab_lines(result)), flush=True)
    return result


def _dcb_ab_lines(row: dict) -> list[str]:
    """The dcb_ab table, and a verdict: a 32-row setting replaces the default only if its fwd+bwd is at least 2%
    faster at both shapes (the best such setting by the slower of its two ratios)."""
    lines = [f"dcb A/B (default DCB_TILE {row['default']['DCB_TILE']}, dcb launch {row['default']['dcb']}; ms, best of "
             f"{DCB_AB_REPEATS} rounds)"]
    ratios, settings = {}, {}
    for shape_name, rows in row["shapes"].items():
        base = rows[next(iter(rows))]
        lines.append(f"{shape_name:<8}{'setting':<14}{'dcb':>8}{'reduce':>8}{'bwd krn':>9}{'fwd':>8}{'fwd+bwd':>9}"
                     f"{'vs default':>11}  max grad rel err vs torch fp32")
        for name, r in rows.items():
            ratio = r["fwd_bwd_ms"] / base["fwd_bwd_ms"]
            ratios.setdefault(name, []).append(ratio)
            settings[name] = (r["dcb_tile"], tuple(r["dcb_config"]))
            err = max(r.get("rel_err_vs_torch_fp32", {}).values(), default=float("nan"))
            lines.append(f"{'':<8}{name:<14}{r['dcb_ms']:>8.3f}{r['reduce_ms']:>8.3f}"
                         f"{r['bwd_kernels_ms']:>9.3f}{r['fwd_ms']:>8.3f}{r['fwd_bwd_ms']:>9.3f}{ratio:>11.3f}  "
                         f"{err:.1e}")
    default = next(iter(ratios), None)
    wins = {k: max(v) for k, v in ratios.items() if k != default and len(v) == len(row["shapes"]) and max(v) <= 0.98}
    if wins:
        name = min(wins, key=wins.get)
        tile, cfg = settings[name]
        lines.append(f"VERDICT dcb: DCB_TILE = {tile}, CONFIG['dcb'] = {cfg} (fwd+bwd x{wins[name]:.3f} or better at "
                     f"both shapes)")
    else:
        lines.append("VERDICT dcb: keep the default (no 32-row setting is 2% faster at both shapes)")
    return lines + [""]


def stage_torch():
    return _time_op(lambda **kw: ssd(**kw, chunk_size=CHUNK, backend="torch"), "torch eager")


def stage_profile():
    """Which operations dominate the torch backend's eager fwd+bwd (torch.profiler, top 15 by CUDA time)."""
    from torch.profiler import ProfilerActivity, profile

    grads = _inputs(requires_grad=True)
    leaves = list(grads.values())

    def step():
        y = ssd(**grads, chunk_size=CHUNK, backend="torch")
        return torch.autograd.grad(y, leaves, torch.ones_like(y))
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    text = prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=60)
    print(text)
    return {"implementation": "torch eager profile", "note": "see the log for the op table", "profile": text}


def stage_compiled():
    compiled = torch.compile(lambda **kw: ssd(**kw, chunk_size=CHUNK, backend="torch"))
    return _time_op(compiled, "torch compiled")


def stage_mamba():
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as exc:  # noqa: BLE001 - optional, benchmark only: record the failure
        return {"implementation": "mamba_ssm", "note": f"not importable: {type(exc).__name__}: {exc}"[:200]}

    def fn(x, dt, A, B, C, D):
        return mamba_chunk_scan_combined(x, dt, A, B, C, CHUNK, D=D)
    return _time_op(fn, "mamba_ssm")


def stage_gap():
    """Forward against mamba_ssm's, split (docs/kernels_ssd.md, "Against mamba_ssm at the paper's shape"): each of the
    five kernels of both (medians of CUDA events around each launch; mamba_ssm's autotuned configs as it chose them),
    and the whole forward of ours through ``ssd()`` as ``wm bench kernels`` calls it, inside ``trusted_values()`` (no
    value check, no device synchronisation), and the kernels alone, beside ``mamba_chunk_scan_combined``. No D."""
    try:
        from mamba_ssm.ops.triton import ssd_bmm, ssd_chunk_scan, ssd_chunk_state, ssd_state_passing
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as exc:  # noqa: BLE001 - optional, benchmark only: record the failure
        return {"implementation": "gap", "note": f"mamba_ssm not importable: {type(exc).__name__}: {exc}"[:200]}
    from wonderful_matrices.ops.common import trusted_values
    from wonderful_matrices.ops.ssd import chunked_kernels as kernels

    inp = _inputs()
    x, dt, A, B, C = (inp[k] for k in ("x", "dt", "A", "B", "C"))

    def theirs(timer):
        cum, dt_out = timer("cumsum", lambda: ssd_chunk_state._chunk_cumsum_fwd(dt, A, CHUNK))
        states = timer("chunk_state", lambda: ssd_chunk_state._chunk_state_fwd(B, x, dt_out, cum, states_in_fp32=True))
        flat = states.flatten(-2)
        passed, _ = timer("state_pass", lambda: ssd_state_passing._state_passing_fwd(flat, cum[:, :, :, -1],
                                                                                      out_dtype=C.dtype))
        cb = timer("cb", lambda: ssd_bmm._bmm_chunk_fwd(C, B, CHUNK, output_dtype=torch.float32))
        timer("output", lambda: ssd_chunk_scan._chunk_scan_fwd(cb, x, dt_out, cum, C, passed.view_as(states)))

    per_kernel = {}
    for name, run in (("ours", lambda timer: kernels.forward_kernels(x, dt, A, B, C, None, None, CHUNK, timer=timer)),
                      ("mamba_ssm", theirs)):
        timer = _ReturningTimer()
        for rep in range(13):
            with torch.no_grad():
                run(timer)
            timer.collect()
            if rep < 3:
                timer.samples.clear()
        per_kernel[name] = timer.medians()
    configs = {kernel.fn.__name__: str(kernel.best_config) for kernel in (
        ssd_chunk_state._chunk_cumsum_fwd_kernel, ssd_chunk_state._chunk_state_fwd_kernel,
        ssd_state_passing._state_passing_fwd_kernel, ssd_bmm._bmm_chunk_fwd_kernel,
        ssd_chunk_scan._chunk_scan_fwd_kernel) if getattr(kernel, "best_config", None) is not None}

    def trusted():
        with trusted_values():
            return ssd(x, dt, A, B, C, chunk_size=CHUNK)
    whole = {}
    for name, fn in (("ours ssd() as wm bench", lambda: ssd(x, dt, A, B, C, chunk_size=CHUNK)),
                     ("ours ssd() in trusted_values", trusted),
                     ("ours forward_kernels", lambda: kernels.forward_kernels(x, dt, A, B, C, None, None, CHUNK)),
                     ("mamba_chunk_scan_combined", lambda: mamba_chunk_scan_combined(x, dt, A, B, C, CHUNK))):
        with torch.no_grad():
            whole[name] = time_callable(fn, DEV, warmup=3, reps=30)
    return {"implementation": "gap", "kernels_ms": per_kernel, "whole_fwd_ms": whole, "mamba_configs": configs}


class _ReturningTimer(_KernelTimer):
    """_KernelTimer whose ``timer(name, fn)`` returns ``fn()`` (mamba_ssm's host functions return their outputs)."""

    def __call__(self, name, fn):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        self.pending.append((name, start, end))
        return out


def _gap_lines(row: dict) -> list[str]:
    if "kernels_ms" not in row:
        return [f"gap: {row.get('note')}", ""]
    ours, theirs = row["kernels_ms"]["ours"], row["kernels_ms"]["mamba_ssm"]
    lines = ["forward against mamba_ssm, no D (ms)", f"{'kernel':<14}{'ours':>8}{'mamba':>8}{'ratio':>7}"]
    for name in ("cumsum", "cb", "chunk_state", "state_pass", "output"):
        lines.append(f"{name:<14}{ours.get(name, float('nan')):>8.3f}{theirs.get(name, float('nan')):>8.3f}"
                     f"{ours.get(name, float('nan')) / theirs.get(name, float('nan')):>7.2f}")
    lines.append(f"{'sum':<14}{sum(ours.values()):>8.3f}{sum(theirs.values()):>8.3f}"
                 f"{sum(ours.values()) / sum(theirs.values()):>7.2f}")
    lines += [f"whole forward, {k}: {v:.3f} ms" for k, v in row["whole_fwd_ms"].items()]
    lines += [f"mamba_ssm config {k}: {v}" for k, v in row.get("mamba_configs", {}).items()]
    return lines + [""]


def _triton_lines(tr: dict) -> list[str]:
    lines = [f"triton plan {tr.get('plan')}"]
    variants = tr.get("variants", {})
    names = []
    for row in variants.values():
        names += [k for k in row.get("kernels_ms", {}) if k not in names]
    lines.append(f"{'kernel (ms)':<18}" + "".join(f"{v:>10}" for v in variants))
    for name in names:
        lines.append(f"{name:<18}" + "".join(
            f"{row['kernels_ms'][name]:>10.3f}" if name in row.get("kernels_ms", {}) else f"{'-':>10}"
            for row in variants.values()))
    fwd_names = ("cumsum", "cb", "chunk_state", "state_pass", "output")
    lines.append(f"{'sum forward':<18}" + "".join(
        f"{sum(v for k, v in row.get('kernels_ms', {}).items() if k in fwd_names):>10.3f}"
        for row in variants.values()))
    lines.append(f"{'sum all':<18}" + "".join(
        f"{sum(row.get('kernels_ms', {}).values()):>10.3f}" for row in variants.values()))
    for variant, errs in tr.get("rel_err_vs_torch_fp32", {}).items():
        lines.append(f"rel err vs torch fp32, {variant}: " + " ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    sweep = tr.get("sweep_ms", {})
    if sweep:
        cfgs = sorted({c for v in sweep.values() for c in v})
        lines.append(f"{'sweep (ms)':<18}" + "".join(f"{c:>9}" for c in cfgs) + "   best   (CONFIG now)")
        for name, by_cfg in sweep.items():
            best = min(by_cfg, key=by_cfg.get)
            lines.append(f"{name:<18}" + "".join(f"{by_cfg[c]:>9.3f}" if c in by_cfg else f"{'-':>9}" for c in cfgs)
                         + f"   {best:<6} ({tr['config'].get(name)})")
    now = variants.get("triton", {}).get("kernels_ms", {})
    better = {}
    for name, by_cfg in sweep.items():
        best = min(by_cfg, key=by_cfg.get)
        if name in now and by_cfg[best] < 0.95 * now[name]:
            warps, stages = best[1:].split("s")
            better[name] = (int(warps), int(stages))
    if sweep:
        lines.append("VERDICT CONFIG: " + (", ".join(f'"{k}": {v}' for k, v in better.items())
                                           if better else "keep (no swept config beats the default by 5%)"))
    lines.append("")
    return lines


def table(directory: Path) -> str:
    rows = []
    lines = []
    for path in sorted(directory.glob("*.json")):
        row = json.loads(path.read_text())
        if "profile" in row:
            continue
        if row.get("implementation") == "gap":
            lines += _gap_lines(row)
            continue
        if row.get("implementation") == "dcb_ab":
            lines += _dcb_ab_lines(row)
            continue
        if "variants" in row:
            lines += _triton_lines(row)
            rows += list(row["variants"].values())
        else:
            rows.append(row)
    ref = {"implementation": "mamba_ssm (docs/design.md)", "fwd_ms": 1.14, "fwd_bwd_ms": 5.17}
    lines.append("SSD b8 x l4096, h64 x p64, n128, g1, chunk 256, bf16 (H200)")
    lines.append(f"{'implementation':<24}{'fwd ms':>9}{'fwd+bwd ms':>12}{'peak GB':>9}{'fwd+bwd / mamba':>17}  note")
    if not any(r.get("implementation", "").startswith("triton") for r in rows):
        rows.append({"implementation": "triton", "note": "stage failed or timed out: see the log"})
    for r in rows + [ref]:
        f, fb, pk = r.get("fwd_ms"), r.get("fwd_bwd_ms"), r.get("peak_gb")
        ratio = f"{fb / 5.17:.2f}" if fb else "-"
        lines.append(f"{r['implementation']:<24}{f if f is None else round(f, 3)!s:>9}"
                     f"{fb if fb is None else round(fb, 3)!s:>12}{pk if pk is None else round(pk, 2)!s:>9}"
                     f"{ratio:>17}  {r.get('note', '')}")
    return "\n".join(lines)


def main():
    stage, target = sys.argv[1], Path(sys.argv[2])
    if stage == "table":
        print(table(target))
        return
    if stage == "triton":  # saves after each phase: a timeout keeps what had finished
        stage_triton(lambda result: target.write_text(json.dumps(result, indent=1)))
        return
    row = {"torch": stage_torch, "compiled": stage_compiled, "mamba": stage_mamba, "profile": stage_profile,
           "gap": stage_gap, "packed": stage_packed, "dcb_ab": stage_dcb_ab}[stage]()
    target.write_text(json.dumps(row, indent=1))
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
