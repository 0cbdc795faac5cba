"""Compile the windowed DMA Triton kernels for sm_90 without a GPU and print each configuration's resources.

    PYTHONPATH=src python scripts/dma_compile_report.py [--kernels _fwd_kernel ...] [--gqa 1 4] [--length 16384]
        [--window 2048] [--heads 16] [--head-dim 128] [--configs M,N,W,S ...] [--dump DIR]

For every autotune configuration of ``QUERY_SIDE`` (forward, dq) and ``KEY_SIDE`` (dk/dv/dbias): ``triton.compile``
for ``GPUTarget("cuda", 90, 32)`` with the arguments of the benchmark's launch (by default B1, 16 query heads, head
dim 128, bf16, ``block_for(window)``; cheems-base's DMA layer: ``--heads 12 --head-dim 64 --gqa 3 --length 4096``;
meta tensors, specialised as Triton's launcher does: see ``sm90_report``), then
registers and stack (spill) bytes from ``cuobjdump -res-usage``, shared memory, and SASS counts: wgmma (HGMMA)
against mma.sync (HMMA), cp.async (LDGSTS, with the PTX copy sizes) and TMA (UTMALDG) loads, ordinary global loads
by width, local-memory instructions (LDL / STL), and the SASS instructions of each loop (``sm90_report.loop_sizes``;
forward and dq: the unmasked head's loop, then the masked tail's). ``--dump DIR`` writes each compile's PTX and SASS
there.
"""
import argparse
import os
import tempfile

import torch
import triton
from sm90_report import compile_sm90, dump_asm, launch_signature, resources

from wonderful_matrices.ops.dma import windowed_kernels as wk
from wonderful_matrices.ops.dma.selection import LIVE_TILE
from wonderful_matrices.ops.triton_utils import dot_block

KERNELS = {"_fwd_kernel": "QUERY_SIDE", "_dq_kernel": "QUERY_SIDE", "_dkv_kernel": "KEY_SIDE"}


def launch_args(length: int, window: int, hq: int, hkv: int, d: int = 128, dtype=torch.bfloat16) -> dict:
    """Every non-constexpr argument of the three kernels as ``windowed_forward`` / ``windowed_backward`` pass
    them at ``(b = 1, length, hq, d)`` queries and ``(1, length, hkv, d)`` keys (meta tensors)."""
    meta = dict(device="meta")
    block = wk.block_for(window)
    nb, width, n_tiles = length // block, window + block, block // LIVE_TILE
    q = torch.empty(1, length, hq, d, dtype=dtype, **meta)
    k = torch.empty(1, length, hkv, d, dtype=dtype, **meta)
    bias = torch.empty(1, length, hkv, dtype=torch.float32, **meta)
    i32 = dict(dtype=torch.int32, **meta)
    f32 = dict(dtype=torch.float32, **meta)
    args = dict(q_ptr=q, k_ptr=k, v_ptr=k, bias_ptr=bias, keys_ptr=torch.empty(hkv, nb, width, **i32),
                list_bias_ptr=torch.empty(hkv, nb, width, **f32), list_drop_ptr=torch.empty(hkv, nb, width, **i32),
                ends_ptr=torch.empty(hkv, nb, n_tiles, **i32), counts_ptr=torch.empty(hkv, nb, n_tiles, 2, **i32),
                drop_ptr=torch.empty(hkv, length, **i32),
                out_ptr=q, dq_ptr=q, do_ptr=q, lse_ptr=torch.empty(hq, length, **f32),
                delta_ptr=torch.empty(hq, length, **f32),
                dk_ptr=torch.empty(1, length, hkv, d, **f32), dv_ptr=torch.empty(1, length, hkv, d, **f32),
                dbias_ptr=torch.empty(1, length, hkv, **f32),
                lq=length, lk=length, hq=hq, hkv=hkv, nb=nb, width=width, n_tiles=n_tiles, scale=d ** -0.5)
    for prefix, t in (("sq", q), ("sk", k), ("sb", bias), ("so", q), ("sd", q), ("sg", q)):  # sg: dq's strides
        args.update({f"{prefix}{axis}": t.stride(n) for n, axis in enumerate("blh")})
    return args


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", nargs="*", default=list(KERNELS), choices=list(KERNELS))
    parser.add_argument("--gqa", type=int, nargs="*", default=[1, 4], help="query heads per KV head")
    parser.add_argument("--heads", type=int, default=16, help="query heads")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--window", type=int, default=2048)
    parser.add_argument("--configs", nargs="*", default=None,
                        help="BLOCK_M,BLOCK_N,warps,stages tuples instead of the kernels' autotune lists")
    parser.add_argument("--dump", default=None, help="folder for each compile's .ptx and .sass")
    args = parser.parse_args()
    block = wk.block_for(args.window)
    configs = None if args.configs is None else [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
        for m, n, w, s in (tuple(int(v) for v in c.split(",")) for c in args.configs)]
    print(f"sm_90, triton {triton.__version__}, bf16, B1 T{args.length} H{args.heads} D{args.head_dim}, "
          f"w {args.window}, block {block}")
    print(f"{'kernel':<12} {'GQA':>3} {'M':>4} {'N':>4} {'w':>2} {'s':>2} {'regs':>5} {'spill':>6} {'smem':>7} "
          f"{'HGMMA':>6} {'HMMA':>5} {'LDGSTS':>7} {'cp.async B':>10} {'TMA':>4} {'LDG 128/64/32/16':>17} "
          f"{'LDL':>4} {'STL':>4}  loop instr")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.kernels:
            fn = getattr(wk, name).fn  # the jit function under the autotuner
            for group in args.gqa:
                values = launch_args(args.length, args.window, args.heads, args.heads // group, args.head_dim)
                for config in configs or getattr(wk, KERNELS[name]):
                    constants = dict(BLOCK=block, TILE=LIVE_TILE, BLOCK_D=dot_block(args.head_dim),
                                     HEAD_DIM=args.head_dim, PRECISION=None, WIDE=False,
                                     **config.kwargs)
                    compiled = compile_sm90(fn, *launch_signature(fn, values, constants), config.num_warps,
                                            config.num_stages)
                    tag = f"{name}-g{group}-m{config.kwargs['BLOCK_M']}n{config.kwargs['BLOCK_N']}" \
                          f"w{config.num_warps}s{config.num_stages}"
                    r = resources(compiled, os.path.join(tmp, f"{tag}.cubin"))
                    if args.dump:
                        dump_asm(compiled, r["sass"], args.dump, tag)
                    loads = f"{r['LDG128']}/{r['LDG64']}/{r['LDG32']}/{r['LDG16']}"
                    sizes = ",".join(map(str, r["cp_async_bytes"])) or "-"
                    print(f"{name.strip('_').removesuffix('_kernel'):<12} {group:>3} {config.kwargs['BLOCK_M']:>4} "
                          f"{config.kwargs['BLOCK_N']:>4} {config.num_warps:>2} {config.num_stages:>2} "
                          f"{r['regs']:>5} {r['stack']:>6} {r['smem']:>7} {r['HGMMA']:>6} {r['HMMA']:>5} "
                          f"{r['LDGSTS']:>7} {sizes:>10} {r['UTMALDG']:>4} {loads:>17} {r['LDL']:>4} {r['STL']:>4}  "
                          f"{'/'.join(map(str, r['loops']))}",
                          flush=True)


if __name__ == "__main__":
    main()
