"""Time each launch of the Triton expert mixture and the product-key top-k at cheems-base's CDMoE shape on one GPU,
with the bytes each moves and its floor (docs/kernels_experts.md).

    PYTHONPATH=src python scripts/experts_kernel_times.py [--shape cheems-base|target] [--tokens T] [--repeats 20]

One layer call (``--shape cheems-base``, the default): T = 32768 tokens, d = 768, N = 2304 experts (48²), 4 heads ×
top-8 (M = 32), retrieval dim 64, bf16 tables and activations, float32 gates, as training under autocast passes them.
``--shape target``: bench.cdmoe_target's layer at a million experts, T = 8192, d = 1024, N = 2^20 (1024²), 8 heads ×
top-16 (M = 128); the tables do not fit in L2, so every gathered row comes from HBM (no dense mixture there: it would
compute T × N products). Prints per part (the top-k's forward and backward in each kind) the median time over
``--repeats`` calls (CUDA events, after a warm-up that also runs the autotuners) and the gathered bytes per
millisecond. Then the dense mixture (cheems-base's training path) forward + backward under
``torch.compile``, with its coefficient matrices built by :class:`~wonderful_matrices.ops.expert_mixture.dense.IdRuns`
(sort, scan, scatter, which Inductor fuses; CUDA only). CPU plumbing check: ``TRITON_INTERPRET=1 ... --tokens 64
--repeats 1`` (float32, CPU).
"""
import argparse
import statistics

import torch

from wonderful_matrices.ops.expert_mixture import dense
from wonderful_matrices.ops.expert_mixture import row_kernels as rk
from wonderful_matrices.ops.product_key import topk_kernels as tk
from wonderful_matrices.ops.triton_utils import interpreting

HALF = 32  # retrieval dim 64: two halves of 32
SHAPES = {  # tokens, width d, sub-keys per half (N = keys²), heads, top-k per head
    "cheems-base": (32768, 768, 48, 4, 8),
    "target": (8192, 1024, 1024, 8, 16),
}


def timed(fn, repeats: int, cuda: bool) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` calls (after one warm-up call)."""
    fn()
    if not cuda:
        return float("nan")
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def topk_forward_as(kind: str, query, keys, top_k: int):
    """``topk_forward`` with the forward ``kind`` (``tk.FORWARDS``), whatever ``FORWARD`` says."""
    with tk.kinds(forward=kind):
        return tk.topk_forward(query, keys, top_k)


def topk_backward_as(kind: str, query, keys, ids, grad):
    """``topk_backward`` with the small-table backward ``kind`` (``tk.SMALL_TABLE_BACKWARDS``)."""
    with tk.kinds(small_table_backward=kind):
        return tk.topk_backward(query, keys, ids, grad)


def dense_mixture_step(x, ids, gates, down, up, grad_y):
    """One forward + backward of the dense mixture (the inputs are leaves; their gradients are overwritten)."""
    for t in (x, gates, down, up):
        t.grad = None
    dense.expert_mixture(x, ids, gates, down, up).backward(grad_y)


def dense_mixture_time(x, ids, gates, down, up, grad_y, repeats: int, cuda: bool) -> float:
    """Median ms of :func:`dense_mixture_step` compiled (coefficient matrices from IdRuns)."""
    x, gates, down, up = (t.detach().clone().requires_grad_() for t in (x, gates, down, up))
    torch._dynamo.reset()
    step = torch.compile(dense_mixture_step)
    try:
        return timed(lambda: step(x, ids, gates, down, up, grad_y), repeats, cuda)
    finally:
        torch._dynamo.reset()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cheems-base")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per layer call (default: the shape's)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not interpreting()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    T, D, KEYS, HEADS, TOP_K = SHAPES[args.shape]
    T = args.tokens or T
    N, M = KEYS * KEYS, HEADS * TOP_K
    # the top-k backwards to time, and the one the library takes (tables past SMALL_TABLE_KEYS: always atomic)
    small_table = KEYS <= tk.SMALL_TABLE_KEYS
    backwards = tk.SMALL_TABLE_BACKWARDS if small_table else ("atomic",)
    backward = tk.SMALL_TABLE_BACKWARD if small_table else "atomic"
    forward = tk.forward_kind(KEYS)
    x = torch.randn(T, D, device=device, dtype=dtype)
    grad_y = torch.randn(T, D, device=device, dtype=dtype)
    down, up = (torch.randn(N, D, device=device, dtype=dtype) * D ** -0.5 for _ in range(2))
    query = torch.randn(T, HEADS, 2, HALF, device=device, dtype=dtype)
    keys = torch.randn(HEADS, 2, KEYS, HALF, device=device, dtype=dtype)
    scores, ids = tk.topk_forward(query, keys, TOP_K)
    gates = scores.softmax(-1).reshape(T, M).contiguous()
    ids = ids.reshape(T, M).contiguous()
    s, coef = rk.row_dots(x, down, ids, rk.FORWARD, 0, gates=gates)
    grad_s, _ = rk.row_dots(grad_y, up, ids, rk.BACKWARD, 0, gates=gates, s=s)
    by_expert = rk.sort_by_expert(ids, N)
    rows = T * M * D * x.element_size()  # bytes of the gathered rows of one pass
    parts = [
        *((f"topk fwd {kind}", lambda kind=kind: topk_forward_as(kind, query, keys, TOP_K),
           query.numel() * query.element_size()) for kind in tk.FORWARDS),
        *((f"topk bwd {kind}", lambda kind=kind: topk_backward_as(kind, query, keys, ids.view(T, HEADS, TOP_K), scores),
           query.numel() * query.element_size() * 2) for kind in backwards),
        ("row_dots forward", lambda: rk.row_dots(x, down, ids, rk.FORWARD, 0, gates=gates), rows),
        ("row_sum forward", lambda: rk.row_sum(coef, up, ids), rows),
        ("row_dots backward", lambda: rk.row_dots(grad_y, up, ids, rk.BACKWARD, 0, gates=gates, s=s), rows),
        ("row_sum backward", lambda: rk.row_sum(grad_s, down, ids), rows),
        ("sort_by_expert", lambda: rk.sort_by_expert(ids, N), ids.numel() * 16),
        ("table_grad down", lambda: rk.table_grad(grad_s, x, M, down, by_expert), rows),
        ("table_grad up", lambda: rk.table_grad(coef, grad_y, M, up, by_expert), rows),
        ("table_grad pair", lambda: rk.table_grad_pair(grad_s, x, coef, grad_y, M, down, by_expert), 2 * rows),
    ]
    # the launches the library's layer call does not take: the top-k kinds it does not pick, and the two one-table
    # gradients (the mixture's backward writes both in one paired launch; timed for comparison)
    not_taken = {f"topk fwd {kind}" for kind in tk.FORWARDS if kind != forward}
    not_taken |= {f"topk bwd {kind}" for kind in backwards if kind != backward}
    not_taken |= {"table_grad down", "table_grad up"}
    print(f"{device} {torch.cuda.get_device_name() if cuda else ''}, {dtype}, T {T}, d {D}, N {N}, M {M}, "
          f"table_grad SPLIT {rk.step_split(T * M, N, D)} (pair {rk.step_split(T * M, N, D, tables=2)})")
    total = 0.0
    for name, fn, moved in parts:
        ms = timed(fn, args.repeats, cuda)
        if name not in not_taken:
            total += ms
        print(f"{name:<18} {ms:8.3f} ms  {moved / 1e9:7.3f} GB main traffic  {moved / ms / 1e9:7.2f} TB/s")
    print(f"{'sum':<18} {total:8.3f} ms per layer call (top-k: {forward}, {backward}); x 12 layers = "
          f"{12 * total:.1f} ms per step")
    for key, config in getattr(rk._table_grad_kernel, "cache", {}).items():  # the autotuner's pick per (N, D, ...)
        print(f"table_grad config for key {key}: {config}")
    if not cuda or args.shape != "cheems-base":  # no CPU times (see timed); the dense mixture is cheems-base's path
        return
    ms = dense_mixture_time(x, ids.view(T, HEADS, TOP_K), gates.view(T, HEADS, TOP_K), down, up, grad_y,
                            args.repeats, cuda)
    print(f"{'dense mixture fwd+bwd, IdRuns':<32} {ms:8.3f} ms (compiled; x 12 layers = {12 * ms:.1f} ms per step)")


if __name__ == "__main__":
    main()
