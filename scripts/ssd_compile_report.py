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
import subprocess
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

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
    compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                              target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))
    path = os.path.join(tmp, f"{name}.cubin")
    with open(path, "wb") as f:
        f.write(compiled.asm["cubin"])
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    res = subprocess.run([os.path.join(tools, "cuobjdump"), "-res-usage", path], capture_output=True, text=True).stdout
    fields = dict(f.split(":") for line in res.splitlines() if "REG:" in line for f in line.split() if ":" in f)
    sass = subprocess.run([os.path.join(tools, "nvdisasm"), path], capture_output=True, text=True).stdout
    return (f"{name:<24} w{warps}s{stages}  regs {fields.get('REG'):>4}  stack {fields.get('STACK'):>5}  "
            f"smem {compiled.metadata.shared:>6}  HGMMA {sass.count('HGMMA'):>3}  LDL {sass.count('LDL'):>4}  "
            f"STL {sass.count('STL'):>4}")


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
