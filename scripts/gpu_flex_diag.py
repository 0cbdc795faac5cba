"""Why ``test_dma_packed_cuda[None-*]`` fails on CUDA (issue #14): the packed no-window case (FlexAttention,
``ops/dma/biased_causal.py``) taken apart, one line per check, and a json of every number.

    PYTHONPATH=src python scripts/gpu_flex_diag.py [--out flex_diag.json] [--budget 100] [--only TEXT]...

The case is the test's: two rows of l = 300 (row 0 packs documents of 100, 1, 10 and 189 tokens, row 1 is one
document), 8 query heads on 2 KV heads of 64, bias ``randn · 3`` and, "pad", ``bias[0, 101:104] = -inf`` (the
third document starts with three padding keys, so its first query sees only padding). The float64 oracle (the
naive backend, on the same device) runs once per padding variant; every check compares a piece of it, output and
the gradients of q, k, v and bias under the same random upstream gradient, by ``‖a − b‖ / ‖b‖``:

- ``packed-b2``: both rows at once with ``seq_idx`` (a batch-2 block mask; the failing call);
- ``row0-b1`` / ``row1-b1``: each row alone with ``seq_idx`` (batch-1 block masks);
- ``row1-nodocs``: row 1 without ``seq_idx`` (the unpacked path, which passes its own test);
- ``doc100`` / ``doc10`` / ``doc189``: row 0's documents alone, no ``seq_idx`` (queries shorter than one 128-tile:
  Inductor's flex-decoding kernel for the forward unless ``FORCE_FULL_KERNEL``);
- each under ``compiled`` (Inductor, what the op runs) or ``eager`` (FlexAttention's reference path), ``pad`` or
  ``nopad``, float32 or bf16, and with one of ``biased_causal``'s candidate switches on (``FORCE_FULL_KERNEL``,
  ``ROWS_ONE_BY_ONE``, ``PAD_TO_TILES``) or none (``default``);
- ``test-body``: ``tests/ops/test_dma_cuda.py::test_dma_packed_cuda(dtype, None)`` itself, called in this process;
  an error names the test's failing line.

A line reads ``NAME STATUS out E q E k E v E bias E nan N SECONDS``; STATUS is ``ok`` (finite, output within the
CUDA suite's tolerance, 1e-4 float32 / 2e-2 bf16, gradients within twice it), ``BAD`` (a bound or a NaN missed) or
``ERROR`` (the exception, one line; the traceback is in the json). Checks run in order of importance and stop
starting once ``--budget`` seconds have passed (the rest are listed as skipped); ``--only`` keeps the checks whose
name contains one of the given texts. After a CUDA error that poisons the context (an illegal address) the
remaining checks are skipped and say so. The json is rewritten after every check, so a cut run keeps what it did.

Without CUDA the script runs its reduced form: float32, eager, forward only (FlexAttention has no CPU backward).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

import wonderful_matrices as wm
from wonderful_matrices.ops.dma import biased_causal

LENGTHS = [[100, 1, 10, 189], [300]]
B, L, HQ, HKV, D = 2, 300, 8, 2, 64
SWITCHES = ("FORCE_FULL_KERNEL", "ROWS_ONE_BY_ONE", "PAD_TO_TILES")
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
# name -> (rows, first, end, with seq_idx)
PIECES = {"packed-b2": (slice(0, 2), 0, L, True), "row0-b1": (slice(0, 1), 0, L, True),
          "row1-b1": (slice(1, 2), 0, L, True), "row1-nodocs": (slice(1, 2), 0, L, False),
          "doc100": (slice(0, 1), 0, 100, False), "doc10": (slice(0, 1), 101, 111, False),
          "doc189": (slice(0, 1), 111, L, False)}
ALL = tuple(PIECES)
SHORT = ("doc100", "doc10", "doc189")


def plan(cuda: bool) -> list[tuple]:
    """The checks in order of importance: ``(piece, dtype, mode, padding, switch)``, or ``("test-body", dtype)``."""
    if not cuda:
        checks = [(p, torch.float32, "eager", pad, "default") for pad in ("pad", "nopad") for p in ALL]
        return checks + [(p, torch.float32, "eager", "pad", s) for s in SWITCHES for p in ALL]
    f32, bf16 = torch.float32, torch.bfloat16
    checks = [(p, f32, "compiled", "pad", "default") for p in ALL]
    checks += [("test-body", f32)]
    checks += [(p, f32, "compiled", "pad", "FORCE_FULL_KERNEL") for p in ("packed-b2",) + SHORT]
    checks += [("packed-b2", f32, "compiled", "pad", "ROWS_ONE_BY_ONE")]
    checks += [(p, f32, "compiled", "pad", "PAD_TO_TILES") for p in ("packed-b2", "doc100", "doc10")]
    checks += [(p, f32, "eager", "pad", "default") for p in ("packed-b2", "row0-b1") + SHORT]
    checks += [(p, f32, "compiled", "nopad", "default") for p in ("packed-b2", "row0-b1", "doc10")]
    checks += [(p, bf16, "compiled", "pad", "default") for p in ("packed-b2", "row0-b1") + SHORT]
    checks += [("test-body", bf16)]
    checks += [("packed-b2", bf16, "compiled", "pad", s) for s in SWITCHES]
    checks += [(p, bf16, "compiled", "pad", "FORCE_FULL_KERNEL") for p in ("doc100", "doc10")]
    checks += [(p, bf16, "eager", "pad", "default") for p in ("packed-b2", "doc10")]
    checks += [(p, f32, "eager", "pad", "default") for p in ("row1-b1", "row1-nodocs")]
    return checks


def check_name(check: tuple) -> str:
    if check[0] == "test-body":
        return f"test-body {str(check[1])[6:]}"
    piece, dtype, mode, padding, switch = check
    return f"{piece} {str(dtype)[6:]} {mode} {padding} {switch}"


def case(padding: str, device: torch.device):
    """The test's inputs (float32 q, k, v; float32 bias), ``seq_idx`` and the upstream gradient (float64)."""
    gen = torch.Generator().manual_seed(14)
    q, k, v = (torch.randn(B, L, h, D, generator=gen) for h in (HQ, HKV, HKV))
    bias = torch.randn(B, L, HKV, generator=gen) * 3
    if padding == "pad":
        bias[0, 101:104] = float("-inf")
    weight = torch.randn(B, L, HQ, D, generator=gen, dtype=torch.float64)
    seq_idx = torch.stack([torch.cat([torch.full((n,), i) for i, n in enumerate(row)]) for row in LENGTHS])
    return [t.to(device) for t in (q, k, v, bias)], seq_idx.to(device), weight.to(device)


def oracle(inputs, seq_idx, weight, grad: bool):
    """The naive float64 backend on the packed rows -> (out, [dq, dk, dv, dbias]) (grads None without ``grad``)."""
    leaves = [t.double().requires_grad_(grad) for t in inputs]
    out = wm.ops.dynamic_mask_attention(*leaves, seq_idx=seq_idx, backend="naive")
    if not grad:
        return out.detach(), [None] * 4
    (out * weight).sum().backward()
    return out.detach(), [t.grad for t in leaves]


@contextlib.contextmanager
def switched(name: str):
    """``biased_causal``'s switch ``name`` on inside the block (``"default"``: none)."""
    if name == "default":
        yield
        return
    before = getattr(biased_causal, name)
    setattr(biased_causal, name, True)
    try:
        yield
    finally:
        setattr(biased_causal, name, before)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64 (same shapes, same device)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def run_piece(check, inputs, seq_idx, weight, ref, grad: bool) -> dict:
    """One decomposed check -> its record (errors against the oracle's slice, NaN counts, status)."""
    piece, dtype, mode, padding, switch = check
    rows, first, end = PIECES[piece][:3]
    docs = seq_idx[rows, first:end] if PIECES[piece][3] else None
    leaves = [t[rows, first:end].to(dtype).detach().clone().requires_grad_(grad) for t in inputs[:3]]
    leaves.append(inputs[3][rows, first:end].detach().clone().requires_grad_(grad))  # float32, as in the test
    with switched(switch), torch.set_grad_enabled(grad):
        out = biased_causal.dynamic_mask_attention_biased_causal(*leaves, D ** -0.5, docs, compiled=mode == "compiled")
        if grad:
            (out.double() * weight[rows, first:end]).sum().backward()
    ref_out, ref_grads = ref
    record = {"out": rel_err(out.detach(), ref_out[rows, first:end]), "nan": {"out": int(out.isnan().sum())}}
    ok = record["out"] < TOL[dtype]
    if grad:
        for name, leaf, r in zip(("q", "k", "v", "bias"), leaves, ref_grads):
            record[name] = rel_err(leaf.grad, r[rows, first:end])
            record["nan"][name] = int(leaf.grad.isnan().sum())
            ok = ok and record[name] < 2 * TOL[dtype]
    ok = ok and not any(record["nan"].values())
    record["status"] = "ok" if ok else "BAD"
    return record


def run_test_body(dtype) -> dict:
    """``test_dma_packed_cuda(dtype, None)`` called here; a failure names the test's line."""
    tests = Path(__file__).resolve().parents[1] / "tests"
    for path in (tests, tests / "ops"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    import test_dma_cuda

    torch.manual_seed(0)
    try:
        test_dma_cuda.test_dma_packed_cuda(dtype, None)
    except AssertionError as error:
        frame = [f for f in traceback.extract_tb(error.__traceback__) if f.filename.endswith("test_dma_cuda.py")][-1]
        return {"status": "BAD", "error": f"line {frame.lineno}: {frame.line} {error}".strip(),
                "traceback": traceback.format_exc()}
    return {"status": "ok"}


def line(name: str, record: dict) -> str:
    """The printed line of a check's record."""
    text = f"{name:<50} {record['status']:<6}"
    if "error" in record:
        return f"{text} {record['error']}"[:400]
    if "out" in record:
        text += f" out {record['out']:.1e}"
        for g in ("q", "k", "v", "bias"):
            if g in record:
                text += f" {g} {record[g]:.1e}"
        text += f" nan {sum(record['nan'].values())}"
    return f"{text} {record['seconds']:5.1f}s"


def main(argv=None) -> int:
    """Run the plan (or the ``--only`` part of it), print a line per check and the failing ones, write the json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="flex_diag.json", help="json written after every check")
    parser.add_argument("--budget", type=float, default=100.0, help="seconds after which no check starts")
    parser.add_argument("--only", action="append", default=[], help="keep checks whose name contains this text")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile")  # eager on purpose
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    report = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if cuda else "cpu",
              "reduced": not cuda, "switch_defaults": {s: getattr(biased_causal, s) for s in SWITCHES}, "checks": []}
    out_path = Path(args.out)
    print(f"torch {torch.__version__} on {report['device']}{'' if cuda else ' (reduced: eager forward only)'}",
          flush=True)
    start = time.perf_counter()
    cases, refs = {}, {}
    stop_reason = None
    for check in plan(cuda):
        name = check_name(check)
        if args.only and not any(text in name for text in args.only):
            continue
        record = {"name": name}
        if stop_reason is None and time.perf_counter() - start > args.budget:
            stop_reason = f"skipped (budget of {args.budget:.0f} s spent)"
        if stop_reason is not None:
            record["status"] = stop_reason
            report["checks"].append(record)
            print(f"{name:<50} {stop_reason}", flush=True)
            continue
        began = time.perf_counter()
        try:
            if check[0] == "test-body":
                record.update(run_test_body(check[1]))
            else:
                padding = check[3]
                if padding not in cases:
                    cases[padding] = case(padding, device)
                    refs[padding] = oracle(*cases[padding], grad=cuda)
                record.update(run_piece(check, *cases[padding], refs[padding], grad=cuda))
            if cuda:
                torch.cuda.synchronize()  # an asynchronous kernel error belongs to this check
        except Exception as error:  # noqa: BLE001 - every failure is a finding: record it and go on
            message = " ".join(str(error).split())
            record.update(status="ERROR", error=f"{type(error).__name__}: {message}", traceback=traceback.format_exc())
            if cuda and ("CUDA error" in message or "illegal" in message):
                stop_reason = f"skipped (CUDA context lost in: {name})"
        record["seconds"] = time.perf_counter() - began
        report["checks"].append(record)
        print(line(name, record), flush=True)
        out_path.write_text(json.dumps(report, indent=1))
    failing = [r["name"] for r in report["checks"] if r["status"] in ("BAD", "ERROR")]
    print(f"failing: {', '.join(failing) if failing else 'none'}", flush=True)
    out_path.write_text(json.dumps(report, indent=1))
    print(f"wrote {out_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
