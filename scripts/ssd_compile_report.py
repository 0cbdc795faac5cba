"""Compile the SSD Triton kernels for sm_90 without a GPU and print each one's resource report.

    PYTHONPATH=src python scripts/ssd_compile_report.py [KERNEL ...] [--configs 8,2 4,3 ...] [--float32]

Uses ``triton.compile`` with an explicit ``GPUTarget("cuda", 90, 32)`` at the benchmark's constexprs (chunk 256,
64-row tiles, p = 64, n = 128, bf16), unit strides passed as the constant 1 and other integers / pointers marked
divisible by 16 (what Triton's launcher specializes for contiguous inputs of these sizes), then reads registers
and stack (spill) bytes with ``cuobjdump -res-usage`` and counts wgmma (HGMMA) and local-memory instructions in
the ``nvdisasm`` listing. Default configs are those of ``CONFIG``.
"""
import argparse
import inspect
import os
import tempfile

import triton.language as tl
from sm90_report import compile_sm90, resources

from wonderful_matrices.ops.ssd import chunked_kernels as K

CONFIG_NAME = {"_cumsum_kernel": "cumsum", "_cb_kernel": "cb", "_chunk_state_kernel": "chunk_state",
               "_state_pass_kernel": "state_pass", "_output_kernel": "output",
               "_state_pass_bwd_kernel": "state_pass_bwd",
               "_dx2_kernel": "dx2", "_dcb_kernel": "dcb",
               "_dc2_kernel": "dc2", "_db2_kernel": "db2", "_dcum_kernel": "dcum"}
UNIT_STRIDES = ("s_x_p", "s_dy_p", "s_dx_p", "s_y_p", "s_v_p", "s_b_n", "s_c_n", "s_w_n", "s_dt_h")
HALF_POINTERS = ("x_ptr", "B_ptr", "C_ptr", "dy_ptr", "dx_ptr", "y_ptr", "v_ptr", "w_ptr")
NOT_DIVISIBLE = ("L", "H", "G", "NSPLIT", "HSPLIT", "NBN", "OFFSET")


def constexprs(float32: bool, bp: int = 64) -> dict:
    dt, prec, split = (tl.float32, "ieee", False) if float32 else (tl.bfloat16, "tf32", True)
    mm = dict(DT=dt, PREC=prec, UPCAST=False)
    tile = dict(Q=256, BQ=64, BP=bp, BN=128, **mm)
    return {
        "_cumsum_kernel": dict(Q=256, BLOCK_H=16),
        "_cb_kernel": dict(Q=256, BQ=64, BN=128, **mm),
        "_chunk_state_kernel": dict(**tile, SPLIT=split and "chunk_state" in K.SPLIT_SITES, FORWARD=True),
        "_state_pass_kernel": dict(Q=256, BLOCK=1024, HAS_INIT=False),
        "_output_kernel": dict(**tile, HAS_D=True),
        "_state_pass_bwd_kernel": dict(Q=256, BLOCK=1024, HAS_DFINAL=True),
        "_dx2_kernel": dict(**tile, BNK=64, SPLIT=split and "dx" in K.SPLIT_SITES, HAS_D=True),
        "_dcb_kernel": dict(Q=256, BQ=64, BP=64, HPP=16, **mm),
        "_dc2_kernel": dict(Q=256, BQ=64, BP=64, BN=K.DC2_COLUMNS, HPP=8, SPLIT=split and "dc" in K.SPLIT_SITES, **mm),
        "_db2_kernel": dict(**tile, HPP=8),
        "_dcum_kernel": dict(Q=256),
    }


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
    parser.add_argument("--bp", type=int, default=64, help="head-dim tile BP of the kernels that take one")
    args = parser.parse_args()
    table = constexprs(args.float32, args.bp)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.kernels:
            configs = ([tuple(int(v) for v in c.split(",")) for c in args.configs] if args.configs
                       else [K.CONFIG[CONFIG_NAME[name]]])
            for warps, stages in configs:
                print(report(name, table[name], warps, stages, args.float32, tmp), flush=True)


if __name__ == "__main__":
    main()
