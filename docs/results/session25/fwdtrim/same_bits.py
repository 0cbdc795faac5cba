"""Whether two versions of the windowed DMA kernels give the same bits: outputs and the gradients of q, k, v and the
bias on six cases (GQA, lq < lk, -inf padding, ties, a zero bias, biases around -5000), under the interpreter.

    TRITON_INTERPRET=1 PYTHONPATH=OLD/src python same_bits.py --save old.pt
    TRITON_INTERPRET=1 PYTHONPATH=src python same_bits.py --save new.pt
    python same_bits.py --compare old.pt new.pt
"""
import argparse

import torch

CASES = [  # (b, lq, lk, hq, hkv, d, w, block, bias)
    (1, 150, 150, 4, 2, 16, 7, 128, "randn"), (2, 70, 70, 2, 1, 8, 1, 128, "ties"),
    (1, 100, 130, 2, 2, 32, 20, 128, "ties"), (1, 260, 300, 2, 1, 16, 65, 256, "randn"),
    (1, 140, 140, 1, 1, 16, 3, 128, "zero"), (1, 300, 300, 2, 1, 16, 130, 128, "big"),
]


def run() -> dict:
    from wonderful_matrices.ops.dma import windowed_kernels as wk

    results = {}
    for n, (b, lq, lk, hq, hkv, d, w, block, kind) in enumerate(CASES):
        torch.manual_seed(n)
        q, k, v = torch.randn(b, lq, hq, d), torch.randn(b, lk, hkv, d), torch.randn(b, lk, hkv, d)
        bias = {"randn": lambda: torch.randn(b, lk, hkv) * 2,
                "ties": lambda: torch.randint(-2, 2, (b, lk, hkv)).float(),
                "zero": lambda: torch.zeros(b, lk, hkv), "big": lambda: torch.randn(b, lk, hkv) * 1e3 - 5e3}[kind]()
        bias[0, :3] = float("-inf")
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, bias)]
        out = wk.dynamic_mask_attention_triton(*leaves, w, d ** -0.5, block)
        (out * torch.randn_like(out)).sum().backward()
        results[n] = [out.detach()] + [t.grad for t in leaves]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", default=None)
    parser.add_argument("--compare", nargs=2, default=None)
    args = parser.parse_args()
    if args.save:
        torch.save(run(), args.save)
    if args.compare:
        old, new = (torch.load(path) for path in args.compare)
        for n, case in enumerate(CASES):
            same = [torch.equal(a, b) for a, b in zip(old[n], new[n])]
            print(f"{case}: out, dq, dk, dv, dbias bit for bit equal: {same}")


if __name__ == "__main__":
    main()
