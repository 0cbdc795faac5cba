"""Every SSD Triton kernel, forward and backward, compiled for sm_90 without a GPU with and without packed documents
(``seq_idx``), side by side.

    PYTHONPATH=src python scripts/ssd_packed_report.py [--shape paper|cheems|B,L,H,P,N,CHUNK] [--float32]
        [--config KERNEL=WARPS,STAGES]... [--dcb-tile 32|64] [KERNEL ...]

``forward_kernels`` and ``backward_kernels`` run on ``meta`` tensors at the benchmark's shape (``wm bench ssd
--packed``: bf16 x / B / C / dy, float32 dt, A and D, no initial or final state) with the kernel launches
intercepted (:func:`ssd_vs_mamba_report.captured_launches`), once without and once with a (b, l) int64 ``seq_idx``
(the dtype the benchmark and the model pass). Each launch is compiled as the GPU run specialises it
(:func:`sm90_report.launch_signature`) and reported: registers, stack (spill) bytes, SASS instructions in all and
per loop (the main loop of a tile kernel is the one with the matrix products), global loads (LDG) and
local-memory traffic (LDL / STL). A kernel that starts spilling or grows its loop with packing is where the packed
row's extra time goes. Kernels launched twice (``chunk_state`` forward and backward) are reported per launch.

Each row also gives the shared memory and the programs one SM holds (:func:`programs_per_sm`: the least of what the
registers, the shared memory and the warp slots allow, and which of them sets it): at 8 warps, 129 registers halve
the programs of 128. ``--shape cheems`` is cheems-base's SSD layer (``SHAPES``); ``--config`` compiles a kernel with
another launch setting than ``CONFIG``'s or ``CONFIG_WIDE``'s (what-ifs for tuning; the name is ``CONFIG``'s, e.g.
``dx2=4,2``); ``--dcb-tile`` compiles with another ``DCB_TILE`` (the dcb kernel's tile rows).
"""
from __future__ import annotations

import argparse
import os
import re
import tempfile

import torch
from sm90_report import compile_sm90, launch_signature, resources
from ssd_vs_mamba_report import captured_launches

from wonderful_matrices.ops.ssd import chunked_kernels as K

# batch, length, heads, head dim, state, chunk: the benchmark's (wm bench ssd / kernels: the paper's shape) and
# cheems-base's SSD layer (models/presets.py: 6 heads × 128, state 128, chunk 256, one group; scripts/gpu_ssd.py
# SSD_SHAPE=cheems)
SHAPES = {"paper": "8,4096,64,64,128,256", "cheems": "8,2048,6,128,128,256"}
# sm_90 per SM: registers (4 sub-partitions of 16384; a warp's registers are allocated in units of 256), shared
# memory (228 KB, of which a program may use 227 KB; 1 KB more is reserved per program), warps, programs
REGISTERS, SUBPARTITIONS, SMEM, SMEM_RESERVED, WARPS, PROGRAMS = 65536, 4, 228 * 1024, 1024, 64, 32


def programs_per_sm(regs: int, smem: int, warps: int) -> tuple[int, str]:
    """Programs of ``warps`` warps one sm_90 SM holds at ``regs`` registers a thread and ``smem`` bytes of shared
    memory a program, and the resource that sets it (``regs``, ``smem`` or ``warps``; ties name the first)."""
    per_warp = -(-regs * 32 // 256) * 256
    by = {"regs": (REGISTERS // SUBPARTITIONS // per_warp) * SUBPARTITIONS // warps,
          "smem": SMEM // (smem + SMEM_RESERVED), "warps": min(WARPS // warps, PROGRAMS)}
    limit = min(by, key=by.get)
    return by[limit], limit


def meta_inputs(b: int, l: int, h: int, p: int, n: int, half: torch.dtype) -> dict:
    """The benchmark's inputs on the meta device (one group of B / C, as the paper's shape)."""
    meta = dict(device="meta")
    return dict(x=torch.empty(b, l, h, p, dtype=half, **meta), dt=torch.empty(b, l, h, **meta),
                A=torch.empty(h, **meta), B=torch.empty(b, l, 1, n, dtype=half, **meta),
                C=torch.empty(b, l, 1, n, dtype=half, **meta), D=torch.empty(h, **meta))


def launches(inputs: dict, chunk: int, seq_idx: torch.Tensor | None) -> list[tuple[str, tuple]]:
    """``(label, (kernel, args, keywords, grid))`` of every launch of one forward and one backward."""
    x, dt, A, B, C, D = (inputs[k] for k in ("x", "dt", "A", "B", "C", "D"))
    with captured_launches() as fwd:
        y, cum, cb, states, plan = K.forward_kernels(x, dt, A, B, C, D, None, chunk, seq_idx=seq_idx)
    with captured_launches() as bwd:
        K.backward_kernels(torch.empty_like(y), None, x, dt, A, B, C, D, cum, cb, states, plan)
    out, seen = [], {}
    for part, captured in (("fwd", fwd), ("bwd", bwd)):
        for kernel, args, kw, grid in captured:
            name = kernel.__name__.strip("_").removesuffix("_kernel")
            seen[name] = seen.get(name, 0) + 1
            out.append((f"{part} {name}", (kernel, args, kw, grid)))
    return out


def compiled_resources(kernel, args: dict, kw: dict, tmp: str) -> dict:
    kw = dict(kw)
    warps, stages = kw.pop("num_warps"), kw.pop("num_stages")
    constants = dict(kw, **{k: v for k, v in args.items()
                            if v is None or isinstance(v, bool) or kernel.arg_names.index(k) in kernel.constexprs})
    sig, const, attrs = launch_signature(kernel, args, constants)
    r = resources(compile_sm90(kernel, sig, const, attrs, warps, stages), os.path.join(tmp, "k.cubin"))
    r["instructions"] = sum(1 for line in r["sass"].splitlines()
                            if re.match(r"^\s+/\*[0-9a-f]+\*/\s+\S", line) and ".byte" not in line)
    r["warps"], r["stages"] = warps, stages
    r["per_sm"] = programs_per_sm(r["regs"], r["smem"], warps)
    return r


def row(label: str, r: dict) -> str:
    loops = ",".join(str(s) for s in r["loops"]) or "-"
    ldg = r["LDG128"] + r["LDG64"] + r["LDG32"] + r["LDG16"]
    per_sm, limit = r["per_sm"]
    return (f"  {label:<9} w{r['warps']}s{r['stages']}  regs {r['regs']:>3}  stack {r['stack']:>4}  "
            f"smem {r['smem'] // 1024:>3} KB  per SM {per_sm:>2} ({limit:<5})  "
            f"LDL {r['LDL']:>3}  STL {r['STL']:>3}  SASS {r['instructions']:>5}  LDG {ldg:>3}  loops {loops}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kernels", nargs="*", help="labels to report, e.g. 'bwd dx2' or dx2 (default: all)")
    parser.add_argument("--shape", default="paper",
                        help=f"{' or '.join(SHAPES)} or batch,length,heads,head_dim,state,chunk")
    parser.add_argument("--float32", action="store_true", help="float32 inputs instead of bf16")
    parser.add_argument("--config", action="append", default=[], metavar="KERNEL=WARPS,STAGES",
                        help="a launch setting to compile instead of CONFIG's (what-if; repeatable), e.g. dx2=4,2")
    parser.add_argument("--dcb-tile", type=int, default=None, help="DCB_TILE (32 or 64; default: the module's)")
    args = parser.parse_args()
    if args.dcb_tile is not None:
        K.DCB_TILE = args.dcb_tile
    b, l, h, p, n, chunk = (int(v) for v in SHAPES.get(args.shape, args.shape).split(","))
    for item in args.config:
        name, setting = item.split("=")
        K.CONFIG[name] = tuple(int(v) for v in setting.split(","))
        K.CONFIG_WIDE.pop(name, None)
    inputs = meta_inputs(b, l, h, p, n, torch.float32 if args.float32 else torch.bfloat16)
    plain = launches(inputs, chunk, None)
    packed = dict(launches(inputs, chunk, torch.empty(b, l, dtype=torch.int64, device="meta")))
    print(f"shape: batch {b} x {l} tokens, {h} heads x p {p}, state {n}, chunk {chunk}; "
          f"{'float32' if args.float32 else 'bf16'} x / B / C; sm_90, triton {__import__('triton').__version__}")
    print("per launch: unpacked, then packed (seq_idx int64); loops = SASS instructions per loop, in program order")
    with tempfile.TemporaryDirectory() as tmp:
        for label, launch in plain:
            if args.kernels and not any(k == label or k == label.split()[1] for k in args.kernels):
                continue
            print(label, flush=True)
            print(row("unpacked", compiled_resources(*launch[:3], tmp)), flush=True)
            if label in packed:
                print(row("packed", compiled_resources(*packed[label][:3], tmp)), flush=True)
        for label in packed:
            if label not in dict(plain) and (not args.kernels or label.split()[1] in args.kernels):
                print(label + " (packed only)")
                print(row("packed", compiled_resources(*packed[label][:3], tmp)), flush=True)


if __name__ == "__main__":
    main()
