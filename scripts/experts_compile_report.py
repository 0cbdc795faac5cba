"""Compile the expert-mixture, product-key and CDMoE-decode Triton kernels for sm_90 without a GPU and print each
configuration's resources.

    PYTHONPATH=src python scripts/experts_compile_report.py [--kernels row_dots ...] [--dump DIR]

Every autotune configuration of every kernel of ``ops/expert_mixture/row_kernels.py`` (row dots with each epilogue, row
sum, table gradient with ``HI_LO`` on (bf16 rows) and off (fp16 and float32 rows)), ``ops/product_key/topk_kernels.py``
and ``ops/cdmoe/decode_kernels.py``, compiled with ``triton.compile`` for ``GPUTarget("cuda", 90, 32)`` at cheems-base's
CDMoE shape with the dtypes training passes (see :data:`SHAPE`: T = 32768 tokens per layer call, d = 768, N = 2304
experts = 48², 4 heads × top-8 = M = 32 selections per token, retrieval dim 64 = 2 × 32; bf16 tables and activations,
int64 ids, float32 gates and coefficients; the decoding kernels at one token), specialised as Triton's launcher does
(``sm90_report.launch_signature``: meta tensors, integers equal to 1 constant, multiples of 16 marked). Columns:
registers and stack (spill) bytes (``cuobjdump -res-usage``), shared memory, SASS counts of wgmma (HGMMA), mma.sync
(HMMA), cp.async (LDGSTS) and global loads by width (128/64/32/16 bits), FFMA, 64-bit address multiplies
(``IMAD.WIDE``), atomics (RED/ATOMG), local memory (LDL/STL), and the SASS instructions of each loop
(``sm90_report.loop_sizes``, program order). ``--dump DIR`` writes each compile's PTX and SASS there.
"""
import argparse
import os
import re
import tempfile

import torch
import triton
from sm90_report import compile_sm90, dump_asm, launch_signature, resources

from wonderful_matrices.ops.cdmoe import MAX_DECODE_TOKENS
from wonderful_matrices.ops.cdmoe import decode_kernels as dk
from wonderful_matrices.ops.expert_mixture import row_kernels as rk
from wonderful_matrices.ops.product_key import topk_kernels as tk

SHAPE = dict(T=32768, d=768, N=2304, n=48, H=4, k=8, M=32, dk=32, inner=1024)
SILU = rk.ACTIVATION_CODES["silu"]


def _meta(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, dtype=dtype, device="meta")


def cases():
    """``(kernel label, JITFunction, args, constants, [(config kwargs, warps, stages)])`` for every kernel variant at
    :data:`SHAPE`; ``args`` as the host code passes them (meta tensors)."""
    T, d, N, n, H, k, M, dkey, inner = (SHAPE[key] for key in ("T", "d", "N", "n", "H", "k", "M", "dk", "inner"))
    f32, i32, i64 = torch.float32, torch.int32, torch.int64
    configs = lambda kernel: [(c.kwargs, c.num_warps, c.num_stages) for c in kernel.configs]  # noqa: E731
    x, table, ids = _meta(T, d), _meta(N, d), _meta(T, M, dtype=i64)
    tm = _meta(T, M, dtype=f32)
    out = []
    # row dots: DOTS (PKM read's backward), FORWARD (s, coef), BACKWARD (grad_s, grad_gate); float32 gates
    for label, epilogue in (("row_dots/dots", rk.DOTS), ("row_dots/fwd", rk.FORWARD), ("row_dots/bwd", rk.BACKWARD)):
        args = dict(vec_ptr=x, table_ptr=table, ids_ptr=ids, gate_ptr=tm, s_ptr=tm, out_ptr=tm, aux_ptr=tm, M=M, D=d)
        out.append((label, rk._row_dots_kernel.fn, args, dict(EPILOGUE=epilogue, ACT=SILU),
                    configs(rk._row_dots_kernel)))
    # row sum: forward y = Σ coef·up[e], backward grad_x = Σ grad_s·down[e] (float32 weights, bf16 out)
    out.append(("row_sum", rk._row_sum_kernel.fn, dict(w_ptr=tm, table_ptr=table, ids_ptr=ids, out_ptr=x, M=M, D=d),
                {}, configs(rk._row_sum_kernel)))
    # table gradient: sort_by_expert's int32 sorted ids, int64 order and bounds; SPLIT from step_split; the mixture's
    # backward writes both tables' gradients in one launch (PAIRED), the PKM read one table's
    tiles = triton.cdiv(N, rk.BLOCK_E)
    for label, vec_dtype, paired in (("table_grad/bf16 hi_lo pair", torch.bfloat16, True),
                                     ("table_grad/bf16 hi_lo", torch.bfloat16, False),
                                     ("table_grad/fp16 tf32x3", torch.float16, False),
                                     ("table_grad/fp32 tf32x3", f32, False)):
        split = rk.step_split(T * M, N, d, tables=2 if paired else 1)
        vec, grad = _meta(T, d, dtype=vec_dtype), _meta(split, N, d, dtype=f32)
        args = dict(bounds_ptr=_meta(tiles + 1, dtype=i64), sorted_ptr=_meta(T * M, dtype=i32),
                    order_ptr=_meta(T * M, dtype=i64), w_ptr=tm, vec_ptr=vec, out_ptr=grad, w2_ptr=tm, vec2_ptr=vec,
                    out2_ptr=grad, N=N, M=M, D=d, SPLIT=split)
        out.append((label, rk._table_grad_kernel.fn, args,
                    dict(BLOCK_E=rk.BLOCK_E, BLOCK_R=rk.BLOCK_R, HI_LO=vec_dtype == torch.bfloat16, PAIRED=paired),
                    configs(rk._table_grad_kernel)))
    # product-key top-k: bf16 queries and sub-keys (autocast), float32 scores, int64 ids
    query, keys = _meta(T, H, 2, dkey), _meta(H, 2, n, dkey)
    topk_const = dict(K=k, K_PAD=tk._pad(k), DK_PAD=tk._pad(dkey, 16))
    picks = _meta(T, H, k, dtype=i64)
    out.append(("topk/fwd", tk._topk_forward_kernel.fn,
                dict(q_ptr=query, keys_ptr=keys, scores_ptr=_meta(T, H, k, dtype=f32), ids_ptr=picks,
                     T=T, H=H, N_KEYS=n, DK=dkey), dict(topk_const, PRECISION="tf32"),
                configs(tk._topk_forward_kernel)))
    backward = dict(q_ptr=query, keys_ptr=keys, ids_ptr=picks, grad_ptr=_meta(T, H, k, dtype=f32), dq_ptr=query,
                    dkeys_ptr=_meta(H, 2, n, dkey, dtype=f32), T=T, H=H, N_KEYS=n, DK=dkey)
    # topk_backward's two kernels at their block sizes: atomics per pick (√N > SMALL_TABLE_KEYS), summed per sub-key
    block_t = max(1, min(32, 4096 // (topk_const["K_PAD"] * topk_const["DK_PAD"])))
    out.append(("topk/bwd atomic", tk._topk_backward_kernel, backward, dict(topk_const, BLOCK_T=block_t),
                [({}, 4, 3)]))
    n_pad = tk._pad(n, 16)
    out.append(("topk/bwd reduced", tk._topk_backward_reduced_kernel, backward,
                dict(K=k, N_PAD=n_pad, DK_PAD=topk_const["DK_PAD"],
                     BLOCK_T=max(16, min(64, tk.REDUCED_TILE // n_pad))), [({}, 4, 3)]))
    # CDMoE decoding step, one token (batch-1 decoding), a bf16 model without biases
    t = 1
    xt = _meta(t, d)
    out.append(("decode/project", dk._project_kernel.fn,
                dict(x_ptr=xt, gate_w_ptr=_meta(inner, d), up_w_ptr=_meta(inner, d), query_w_ptr=_meta(H * 2 * dkey, d),
                     gate_b_ptr=xt, up_b_ptr=xt, h_ptr=_meta(t, inner), q_ptr=_meta(t, H * 2 * dkey), T=t, D=d,
                     INNER=inner, Q=H * 2 * dkey),
                dict(HAS_BIAS=False, ACT=SILU, PRECISION="tf32", BLOCK_T=MAX_DECODE_TOKENS),
                configs(dk._project_kernel)))
    out.append(("decode/route_mix", dk._route_mix_kernel.fn,
                dict(x_ptr=xt, q_ptr=_meta(t, H, 2, dkey), keys_ptr=keys, down_ptr=table, up_ptr=table,
                     out_ptr=_meta(t, H, d, dtype=f32), H=H, N_KEYS=n, DK=dkey, D=d),
                dict(K=k, K_PAD=max(2, k), DK_PAD=max(2, dkey), ACT=SILU), configs(dk._route_mix_kernel)))
    out.append(("decode/down", dk._down_kernel.fn,
                dict(h_ptr=_meta(t, inner), down_w_ptr=_meta(d, inner), down_b_ptr=xt,
                     private_ptr=_meta(t, H, d, dtype=f32), out_ptr=xt, T=t, D=d, INNER=inner, H=H),
                dict(HAS_BIAS=False, PRECISION="tf32", BLOCK_T=MAX_DECODE_TOKENS), configs(dk._down_kernel)))
    return out


def extra_counts(sass: str) -> dict:
    """FFMA, ``IMAD.WIDE`` (64-bit address arithmetic), atomics and 64-bit integer divisions (calls of the
    ``__internal`` division routine) in a SASS listing."""
    return dict(FFMA=len(re.findall(r"\bFFMA\b", sass)), WIDE=len(re.findall(r"\bIMAD\.WIDE\b", sass)),
                ATOM=len(re.findall(r"\b(RED|ATOMG|ATOM)\b", sass)),
                DIV64=len(re.findall(r"CALL\.REL.*__internal", sass)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", nargs="*", default=None, help="labels (prefixes) to compile; default all")
    parser.add_argument("--dump", default=None, help="folder for each compile's .ptx and .sass")
    args = parser.parse_args()
    print(f"sm_90, triton {triton.__version__}, cheems-base CDMoE: " + ", ".join(f"{k} {v}" for k, v in SHAPE.items())
          + f"; table_grad SPLIT {rk.step_split(SHAPE['T'] * SHAPE['M'], SHAPE['N'], SHAPE['d'])},"
          f" BLOCK_E {rk.BLOCK_E}, BLOCK_R {rk.BLOCK_R}")
    print(f"{'kernel':<23} {'config':<22} {'w':>2} {'s':>2} {'regs':>4} {'spill':>5} {'smem':>6} {'HGMMA':>5} "
          f"{'HMMA':>4} {'LDGSTS':>6} {'cp.async B':>10} {'LDG 128/64/32/16':>16} {'FFMA':>5} {'WIDE':>4} "
          f"{'ATOM':>4} {'LDL':>3} {'STL':>3}  loop instr")
    with tempfile.TemporaryDirectory() as tmp:
        for label, fn, values, constants, configs in cases():
            if args.kernels and not any(label.startswith(p) for p in args.kernels):
                continue
            # an argument the kernel declares constexpr (e.g. table_grad's M) is a constant of the compile
            values = dict(values)
            constants = dict(constants, **{fn.arg_names[i]: values.pop(fn.arg_names[i]) for i in fn.constexprs
                                           if fn.arg_names[i] in values})
            for kwargs, warps, stages in configs:
                compiled = compile_sm90(fn, *launch_signature(fn, values, dict(constants, **kwargs)), warps, stages)
                config = ",".join(f"{key}={value}" for key, value in kwargs.items()) or "-"
                tag = re.sub(r"[^A-Za-z0-9]+", "_", f"{label}-{config}-w{warps}s{stages}")
                r = resources(compiled, os.path.join(tmp, f"{tag}.cubin"))
                if args.dump:
                    dump_asm(compiled, r["sass"], args.dump, tag)
                x = extra_counts(r["sass"])
                loads = f"{r['LDG128']}/{r['LDG64']}/{r['LDG32']}/{r['LDG16']}"
                sizes = ",".join(map(str, r["cp_async_bytes"])) or "-"
                print(f"{label:<23} {config:<22} {warps:>2} {stages:>2} {r['regs']:>4} {r['stack']:>5} "
                      f"{r['smem']:>6} {r['HGMMA']:>5} {r['HMMA']:>4} {r['LDGSTS']:>6} {sizes:>10} {loads:>16} "
                      f"{x['FFMA']:>5} {x['WIDE']:>4} {x['ATOM']:>4} {r['LDL']:>3} {r['STL']:>3}  "
                      f"{'/'.join(map(str, r['loops'])) or '-'}", flush=True)


if __name__ == "__main__":
    main()
