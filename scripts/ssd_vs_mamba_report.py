"""Our SSD forward kernels beside mamba_ssm's, compiled for sm_90 without a GPU, at the benchmark's shape.

    PYTHONPATH=src python scripts/ssd_vs_mamba_report.py [--shape B,L,H,P,N,CHUNK] [--mamba-configs first,cheap|all]
        [--block-q 128] [--config output=8,3 ...]

Both forward passes run on ``meta`` tensors with the kernel launches intercepted, so every kernel is specialised
from the arguments the real call passes (our ``forward_kernels``; mamba_ssm's ``_mamba_chunk_scan_combined_fwd``, as
``mamba_chunk_scan_combined(x, dt, A, B, C, chunk)`` of ``wm bench kernels`` calls it: bf16 x / B / C, float32 dt
and A, no D, no z). Each launch is compiled with :func:`sm90_report.compile_sm90` and reported: registers, stack
(spill) bytes, shared memory, wgmma (HGMMA) and mma.sync (HMMA) counts, SASS instructions per loop, programs in the
grid, and the DRAM bytes the kernel must move (each tensor it reads or writes counted once, as in
docs/kernels_ssd.md).

mamba_ssm's kernels are autotuned over a list of configs; the GPU picks by timing. Without a GPU this reports, per
kernel, the first config of its list (``first``) and the one mamba_ssm's own heuristic picks when autotuning is off
(deterministic mode: least ``Π BLOCK_SIZE_* × num_stages``, ``cheap``), or every config (``all``; a config over
the 227 KB of shared memory an sm_90 block may use cannot launch, and the autotuner skips it). ``--block-q`` and
``--config`` report our kernels with another tile height or launch setting (what-ifs for tuning, nothing saved).
mamba_ssm is a benchmark-only dependency read from ``.bench_deps`` of the main checkout (``--deps``); it needs
``einops`` importable. The script says so in one line and stops when either is missing.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager, nullcontext

import torch
from sm90_report import compile_sm90, launch_signature, resources
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction

from wonderful_matrices.ops.ssd import chunked_kernels as K


def default_deps() -> str:
    """``.bench_deps`` of the main checkout (the one holding the git directory; a worktree shares it)."""
    here = os.path.dirname(os.path.abspath(__file__))
    common = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=here,
                            capture_output=True, text=True).stdout.strip()
    return os.path.join(os.path.dirname(common) if common else os.path.dirname(here), ".bench_deps")


# pointer arguments each kernel reads or writes in DRAM, with how many times the whole tensor is moved at the floor
# (a fraction where only part of it is touched: the last cumulative sum of each chunk is 1/Q of ``cum``; the states
# a kernel writes or reads are NC of the NC + 1 slots, counted whole). Pointers the launch passes as placeholders
# (an absent initial state, D or seq_idx) are left out.
OURS_MOVES = {
    "_cumsum_kernel": {"dt_ptr": 1, "A_ptr": 1, "cum_ptr": 1},
    "_cb_kernel": {"B_ptr": 1, "C_ptr": 1, "cb_ptr": 1},
    "_chunk_state_kernel": {"v_ptr": 1, "w_ptr": 1, "dt_ptr": 1, "cum_ptr": 1, "out_ptr": 1},
    "_state_pass_kernel": {"st_ptr": 2, "cum_ptr": "1/Q"},
    "_output_kernel": {"x_ptr": 1, "dt_ptr": 1, "cum_ptr": 1, "C_ptr": 1, "cb_ptr": 1, "st_ptr": 1, "y_ptr": 1},
}
MAMBA_MOVES = {
    "_chunk_cumsum_fwd_kernel": {"dt_ptr": 1, "A_ptr": 1, "dt_out_ptr": 1, "dA_cumsum_ptr": 1},
    "_chunk_state_fwd_kernel": {"x_ptr": 1, "b_ptr": 1, "states_ptr": 1, "dt_ptr": 1, "dA_cumsum_ptr": 1},
    "_state_passing_fwd_kernel": {"states_ptr": 1, "out_ptr": 1, "final_states_ptr": 1, "dA_cs_ptr": "1/Q"},
    "_bmm_chunk_fwd_kernel": {"a_ptr": 1, "b_ptr": 1, "out_ptr": 1},
    "_chunk_scan_fwd_kernel": {"cb_ptr": 1, "x_ptr": 1, "out_ptr": 1, "dt_ptr": 1, "dA_cumsum_ptr": 1, "C_ptr": 1,
                               "prev_states_ptr": 1},
}
# our kernel that does the same step as each of mamba_ssm's (same row of the side-by-side table)
PAIRS = [("_cumsum_kernel", "_chunk_cumsum_fwd_kernel"), ("_chunk_state_kernel", "_chunk_state_fwd_kernel"),
         ("_state_pass_kernel", "_state_passing_fwd_kernel"), ("_cb_kernel", "_bmm_chunk_fwd_kernel"),
         ("_output_kernel", "_chunk_scan_fwd_kernel")]


@contextmanager
def captured_launches():
    """Within the block, ``kernel[grid](...)`` of a ``JITFunction`` or an ``Autotuner`` records
    ``(kernel, args by name, constexpr keywords, grid)`` in the yielded list instead of launching."""
    launches = []
    jit_run, tune_run, cuda_device = JITFunction.run, Autotuner.run, torch.cuda.device

    def record(kernel, fn, args, kwargs):
        grid = kwargs.pop("grid")
        kwargs.pop("warmup", None)
        launches.append((kernel, dict(zip(fn.arg_names, args)), kwargs, grid))

    JITFunction.run = lambda self, *args, **kwargs: record(self, self, args, kwargs)
    Autotuner.run = lambda self, *args, **kwargs: record(self, self.fn, args, kwargs)
    torch.cuda.device = lambda index: nullcontext()  # mamba_ssm's wrappers select the inputs' GPU (meta: none)
    try:
        yield launches
    finally:
        JITFunction.run, Autotuner.run, torch.cuda.device = jit_run, tune_run, cuda_device


def inputs(b: int, l: int, h: int, p: int, n: int) -> tuple:
    """The benchmark's inputs on the meta device: x (b, l, h, p), dt (b, l, h), A (h,), B, C (b, l, 1, n)."""
    meta = dict(device="meta")
    return (torch.empty(b, l, h, p, dtype=torch.bfloat16, **meta), torch.empty(b, l, h, **meta),
            torch.empty(h, **meta), torch.empty(b, l, 1, n, dtype=torch.bfloat16, **meta),
            torch.empty(b, l, 1, n, dtype=torch.bfloat16, **meta))


def program_count(grid, meta: dict) -> int:
    grid = grid(meta) if callable(grid) else grid
    count = 1
    for g in grid:
        count *= int(g)
    return count


def moved_bytes(args: dict, moves: dict, q: int) -> int:
    total = 0.0
    for name, times in moves.items():
        tensor = args[name]
        total += tensor.numel() * tensor.element_size() * (1 / q if times == "1/Q" else times)
    return int(total)


def report_row(label: str, fn, args: dict, constants: dict, warps: int, stages: int, programs: int, nbytes: int,
               tmp: str) -> str:
    constants = dict(constants, **{k: v for k, v in args.items()
                                   if v is None or isinstance(v, bool) or fn.arg_names.index(k) in fn.constexprs})
    sig, const, attrs = launch_signature(fn, args, constants)
    r = resources(compile_sm90(fn, sig, const, attrs, warps, stages), os.path.join(tmp, f"{fn.__name__}.cubin"))
    loops = ",".join(str(s) for s in r["loops"]) or "-"
    return (f"{label:<44} w{warps}s{stages}  regs {r['regs']:>3}  stack {r['stack']:>4}  "
            f"smem {r['smem'] // 1024:>4} KB  HGMMA {r['HGMMA']:>3}  HMMA {r['HMMA']:>3}  loops {loops:<12} "
            f"programs {programs:>7}  {nbytes / 1e9:6.3f} GB")


def mamba_configs(tuner, which: str) -> list:
    configs = list(tuner.configs)
    if which == "all":
        return configs
    cost = lambda c: (  # noqa: E731  (mamba_ssm's deterministic-mode choice)
        math.prod(v for k, v in c.kwargs.items() if k.startswith("BLOCK_SIZE_")) * (c.num_stages or 1))
    chosen = {"first": configs[0], "cheap": min(configs, key=cost)}
    names = which.split(",")
    out = []
    for name in names:
        if chosen[name] not in out:
            out.append(chosen[name])
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="8,4096,64,64,128,256", help="batch,length,heads,head_dim,state,chunk")
    parser.add_argument("--mamba-configs", default="first,cheap", help="first, cheap (comma-separated) or all")
    parser.add_argument("--block-q", type=int, default=K.BLOCK_Q, help="our tile rows BLOCK_Q (what-if)")
    parser.add_argument("--config", nargs="*", default=[], metavar="KERNEL=WARPS,STAGES",
                        help="our launch settings to try instead of CONFIG's (what-if), e.g. output=8,3")
    parser.add_argument("--deps", default=None,
                        help="folder holding mamba_ssm (default: the main checkout's .bench_deps)")
    args = parser.parse_args()
    b, l, h, p, n, chunk = (int(v) for v in args.shape.split(","))
    args.deps = args.deps or default_deps()
    sys.path.insert(0, args.deps)
    try:
        from mamba_ssm.ops.triton import ssd_combined
    except ImportError as error:
        print(f"mamba_ssm's SSD kernels not importable from {args.deps} ({error}): nothing to compare")
        return
    K.BLOCK_Q = args.block_q
    for item in args.config:
        name, setting = item.split("=")
        K.CONFIG[name] = tuple(int(v) for v in setting.split(","))
    x, dt, A, B, C = inputs(b, l, h, p, n)
    with captured_launches() as ours:
        K.forward_kernels(x, dt, A, B, C, None, None, chunk)
    with captured_launches() as theirs:
        ssd_combined._mamba_chunk_scan_combined_fwd(x, dt, A, B, C, chunk)
    ours = {k.__name__: (k, a, kw, g) for k, a, kw, g in ours}
    theirs = {k.fn.__name__: (k, a, kw, g) for k, a, kw, g in theirs}
    print(f"shape: batch {b} x {l} tokens, {h} heads x p {p}, state {n}, chunk {chunk}; bf16 x / B / C")
    with tempfile.TemporaryDirectory() as tmp:
        for our_name, their_name in PAIRS:
            kernel, a, kw, grid = ours[our_name]
            warps, stages = kw.pop("num_warps"), kw.pop("num_stages")
            print(report_row(f"ours   {our_name}", kernel, a, kw, warps, stages, program_count(grid, kw),
                             moved_bytes(a, OURS_MOVES[our_name], chunk), tmp), flush=True)
            tuner, a, kw, grid = theirs[their_name]
            for config in mamba_configs(tuner, args.mamba_configs):
                meta = dict(kw, **config.kwargs)
                label = "mamba  " + their_name + " " + ",".join(f"{k[len('BLOCK_SIZE_'):]}{v}"
                                                                  for k, v in config.kwargs.items())
                print(report_row(label, tuner.fn, a, meta, config.num_warps, config.num_stages,
                                 program_count(grid, meta), moved_bytes(a, MAMBA_MOVES[their_name], chunk), tmp),
                      flush=True)


if __name__ == "__main__":
    main()
