"""How many iterations each loop of the windowed forward / dq kernels runs per query-tile program, from the real
selection (torch path, CPU), and — given compile reports — the SASS instructions a program issues in its loops.

Loop structures (``ops/dma/windowed_kernels.py``):

* before session 25's trimming: head (unmasked), carried keys (masked), the block's own keys (masked);
* after: head, carried keys (``p < drop_j`` only, bounded by the list), the block's own keys before the tile's
  first query in whole key tiles (``p < drop_j`` only, unbounded), the other own keys (masked).

    PYTHONPATH=src python docs/results/session25/fwdtrim/loop_work.py [--length 16384] [--window 2048] [--rows 2] \\
        [--reports BEFORE.txt AFTER.txt]

Biases: the DMA bench's ``-softplus(2·randn)`` (random) and all zero (a sliding window). ``--reports``: two
``scripts/dma_compile_report.py`` outputs (before, after) of the same shape; prints per configuration
Σ iterations × loop size, the instructions per program spent in the loops.
"""
import argparse
import re

import torch
import torch.nn.functional as F

from wonderful_matrices.ops.dma import windowed_kernels as wk

SHAPES = ((64, 64), (128, 64), (64, 128))


def tiles(lo: torch.Tensor, hi: torch.Tensor, n: int) -> torch.Tensor:
    return torch.clamp(hi - lo, min=0).add(n - 1).div(n, rounding_mode="floor")


def iterations(bias: torch.Tensor, length: int, window: int) -> dict:
    """(BLOCK_M, BLOCK_N) -> (before, after): average iterations of each loop per (query tile, row) program."""
    block = wk.block_for(window)
    drop, keys, ends, counts = wk.select(bias, length, window, block)
    rows = ends.shape[0]
    found = {}
    for bm, bn in SHAPES:
        before, after = torch.zeros(3), torch.zeros(4)
        for tile in range(length // bm):
            t, in_block = (tile * bm) // block, (tile * bm) % block
            first, last = in_block // 64, (in_block + bm) // 64 - 1
            c_end = ends[:, t, last].long()
            c_head = counts[:, t, last, 0].long() // bn * bn
            c_alive = counts[:, t, first, 1].long()
            c_own = counts[:, t, 0, 1].long()
            c_prev = ends[:, t, first - 1].long() if first > 0 else c_own
            c_split = c_own + (c_prev - c_own) // bn * bn
            zero = torch.zeros_like(c_head)
            before += torch.stack([tiles(zero, c_head, bn), tiles(c_head, c_alive, bn),
                                   tiles(c_own, c_end, bn)]).sum(1).float()
            after += torch.stack([tiles(zero, c_head, bn), tiles(c_head, c_alive, bn), tiles(c_own, c_split, bn),
                                  tiles(c_split, c_end, bn)]).sum(1).float()
        programs = rows * (length // bm)
        found[(bm, bn)] = (before / programs, after / programs)
    return found


def loop_sizes(path: str) -> dict:
    """(kernel, M, N, warps, stages) -> loop sizes, from a compile report (GQA 1 rows, or the first GQA)."""
    sizes, gqa = {}, None
    for line in open(path):
        fields = line.split()
        if len(fields) > 10 and fields[0] in ("fwd", "dq") and re.match(r"^[\d/]+$", fields[-1]):
            gqa = gqa or fields[1]
            if fields[1] == gqa:
                sizes[(fields[0], *map(int, fields[2:6]))] = [int(x) for x in fields[-1].split("/")]
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--window", type=int, default=2048)
    parser.add_argument("--rows", type=int, default=2, help="(batch, KV head) rows of biases")
    parser.add_argument("--reports", nargs=2, default=None, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    kinds = {"random": -F.softplus(torch.randn(1, args.length, args.rows, generator=g) * 2),
             "zero": torch.zeros(1, args.length, args.rows)}
    counts = {kind: iterations(bias, args.length, args.window) for kind, bias in kinds.items()}
    print(f"L {args.length}, w {args.window}, block {wk.block_for(args.window)}, {args.rows} rows; iterations per "
          f"program, before (head / carried / own) -> after (head / carried / own before the tile / other own)")
    for kind, found in counts.items():
        for (bm, bn), (before, after) in found.items():
            print(f"  {kind:>6} {bm:>3} x {bn:<3}  {' / '.join(f'{x:5.2f}' for x in before)}  ->  "
                  f"{' / '.join(f'{x:5.2f}' for x in after)}   masked share {before[1:].sum() / before.sum():.3f}")
    if args.reports:
        old, new = (loop_sizes(path) for path in args.reports)
        print("\nSASS instructions per program in the loops (Σ iterations × loop size), before -> after:")
        for config in new:
            if config not in old:
                continue
            name, bm, bn, warps, stages = config
            cells = []
            for kind, found in counts.items():
                before, after = found[(bm, bn)]
                a = float((before * torch.tensor(old[config], dtype=torch.float)).sum())
                b = float((after * torch.tensor(new[config], dtype=torch.float)).sum())
                cells.append(f"{kind} {a:7.0f} -> {b:7.0f} ({(b - a) / a:+.0%})")
            print(f"  {name:>3} {bm:>3} x {bn:<3} {warps}w {stages}s  " + "   ".join(cells))


if __name__ == "__main__":
    main()
