"""Compile the SSD Triton kernels for sm_90 without a GPU and print each one's resource report.

    PYTHONPATH=src python scripts/ssd_compile_report.py [KERNEL ...] [--configs 8,2 4,3 ...] [--float32]
        [--shape paper|cheems|B,L,H,P,N,CHUNK] [--dcb-tile 32|64]

Uses ``triton.compile`` with an explicit ``GPUTarget("cuda", 90, 32)`` at the constexprs the library picks for a
shape (``--shape``: the benchmark's, chunk 256, 64-row tiles, p = 64, n = 128, by default; ``cheems`` is
cheems-base's SSD layer, p = 128; bf16), unit strides passed as the constant 1 and other integers / pointers marked
divisible by 16 (what Triton's launcher specializes for contiguous inputs of these sizes), then reads registers
and stack (spill) bytes with ``cuobjdump -res-usage`` and counts wgmma (HGMMA) and local-memory instructions in
the ``nvdisasm`` listing. Default configs are those the library launches (``CONFIG``, ``CONFIG_WIDE`` where the
head-dim tile is wider than 64).
"""
import argparse
import inspect
import os
import tempfile

import torch
import triton.language as tl
from sm90_report import compile_sm90, resources
from ssd_packed_report import SHAPES

from wonderful_matrices.ops.ssd import chunked_kernels as K
from wonderful_matrices.ops.triton_utils import pow2_at_least

CONFIG_NAME = {"_cumsum_kernel": "cumsum", "_cb_kernel": "cb", "_chunk_state_kernel": "chunk_state",
               "_state_pass_kernel": "state_pass", "_output_kernel": "output",
               "_state_pass_bwd_kernel": "state_pass_bwd",
               "_dx2_kernel": "dx2", "_dcb_kernel": "dcb",
               "_dc2_kernel": "dc2", "_db2_kernel": "db2", "_dcum_kernel": "dcum"}
UNIT_STRIDES = ("s_x_p", "s_dy_p", "s_dx_p", "s_y_p", "s_v_p", "s_b_n", "s_c_n", "s_w_n", "s_dt_h")
HALF_POINTERS = ("x_ptr", "B_ptr", "C_ptr", "dy_ptr", "dx_ptr", "y_ptr", "v_ptr", "w_ptr")
NOT_DIVISIBLE = ("L", "H", "G", "NSPLIT", "HSPLIT", "NBN", "OFFSET")


def constexprs(float32: bool, shape: tuple, bp: int | None = None) -> dict:
    """Each kernel's constexprs at ``shape`` (batch, length, heads, head dim, state, chunk; one group) as
    ``chunked_kernels._Plan`` picks them; ``bp`` replaces the head-dim tile of the kernels that take one."""
    b, l, h, p, n, chunk = shape
    dtype = torch.float32 if float32 else torch.bfloat16
    pl = K._Plan(torch.empty(b, l, h, p, dtype=dtype, device="meta"),
                 torch.empty(b, l, 1, n, dtype=dtype, device="meta"), chunk)
    dt, prec, split = (tl.float32, "ieee", False) if float32 else (tl.bfloat16, "tf32", True)
    mm = dict(DT=dt, PREC=prec, UPCAST=False)
    q, bq, bn = pl.q, pl.bq, pl.bn
    tile = dict(Q=q, BQ=bq, BP=bp or pl.bp, BN=bn, **mm)
    return {
        "_cumsum_kernel": dict(Q=q, BLOCK_H=min(16, pow2_at_least(h))),
        "_cb_kernel": dict(Q=q, BQ=bq, BN=bn, **mm),
        "_chunk_state_kernel": dict(tile, BP=bp or pl.bp_state, SPLIT=split and "chunk_state" in K.SPLIT_SITES,
                                    FORWARD=True),
        "_state_pass_kernel": dict(Q=q, BLOCK=pl.state_block, HAS_INIT=False),
        "_output_kernel": dict(**tile, HAS_D=True),
        "_state_pass_bwd_kernel": dict(Q=q, BLOCK=pl.state_block, HAS_DFINAL=True),
        "_dx2_kernel": dict(**tile, BNK=min(bn, 64), SPLIT=split and "dx" in K.SPLIT_SITES, HAS_D=True),
        "_dcb_kernel": dict(Q=q, BQ=pl.dcb_bq, BP=bp or pl.bp, HPP=pl.dcb_hpp, OUT_BQ=bq, **mm),
        "_dc2_kernel": dict(Q=q, BQ=bq, BP=bp or pl.bp, BN=max(16, min(bn, K.DC2_COLUMNS)), HPP=pl.bc_hpp,
                            SPLIT=split and "dc" in K.SPLIT_SITES, **mm),
        "_db2_kernel": dict(**tile, BPK=pl.bp_state, HPP=pl.bc_hpp),
        "_dcum_kernel": dict(Q=q),
    }


def launch_config(name: str, const: dict) -> tuple[int, int]:
    """(num_warps, num_stages) the library launches kernel ``name`` with at constexprs ``const``."""
    key = CONFIG_NAME[name]
    return K.CONFIG_WIDE[key] if key in K.CONFIG_WIDE and const.get("BP", 0) > 64 else K.CONFIG[key]


def report(name: str, const: dict, warps: int, stages: int, float32: bool, tmp: str) -> str:
    fn = getattr(K, name)
    params = list(inspect.signature(fn.fn).parameters)
    if "HAS_SEQ" in params:  # one row, no packed documents (the benchmark's case)
        const = dict(const, HAS_SEQ=False)
    half = "*fp32" if float32 else "*bf16"
    sig, consts, attrs = {}, {}, {}
    for i, p in enumerate(params):
        if p in const or p in UNIT_STRIDES:
            sig[p] = "constexpr"
            consts[(i,)] = const.get(p, 1)
            continue
        sig[p] = (half if p in HALF_POINTERS else "*fp32") if p.endswith("_ptr") else "i32"
        if p not in NOT_DIVISIBLE:
            attrs[(i,)] = [["tt.divisibility", 16]]
    r = resources(compile_sm90(fn, sig, consts, attrs, warps, stages), os.path.join(tmp, f"{name}.cubin"))
    return (f"{name:<24} w{warps}s{stages}  regs {r['regs']:>4}  stack {r['stack']:>5}  "
            f"smem {r['smem']:>6}  HGMMA {r['HGMMA']:>3}  LDL {r['LDL']:>4}  STL {r['STL']:>4}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kernels", nargs="*", default=list(CONFIG_NAME))
    parser.add_argument("--configs", nargs="*", default=None, help="warps,stages pairs (default: CONFIG)")
    parser.add_argument("--float32", action="store_true", help="float32 inputs (ieee products) instead of bf16")
    parser.add_argument("--bp", type=int, default=None, help="head-dim tile BP of the kernels that take one")
    parser.add_argument("--shape", default="paper",
                        help=f"{' or '.join(SHAPES)} or batch,length,heads,head_dim,state,chunk")
    parser.add_argument("--dcb-tile", type=int, default=None, help="DCB_TILE (32 or 64; default: the module's)")
    args = parser.parse_args()
    if args.dcb_tile is not None:
        K.DCB_TILE = args.dcb_tile
    shape = tuple(int(v) for v in SHAPES.get(args.shape, args.shape).split(","))
    table = constexprs(args.float32, shape, args.bp)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.kernels:
            configs = ([tuple(int(v) for v in c.split(",")) for c in args.configs] if args.configs
                       else [launch_config(name, table[name])])
            for warps, stages in configs:
                print(report(name, table[name], warps, stages, args.float32, tmp), flush=True)


if __name__ == "__main__":
    main()
