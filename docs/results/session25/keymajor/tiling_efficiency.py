"""How much of the key-major dk/dv kernel's work is kept pairs, per tiling (CPU, no GPU; issue #13, session 25).

At lq = lk = 16384, w = 2048, for random biases (the DMA bench's ``-softplus(2·randn)``, ``ROWS`` independent rows)
and for all-zero biases (sliding-window attention): ``drop`` from ``live_keys_torch`` (the Triton selection's
oracle), the keys ordered by ``windowed_key_kernels.key_order`` with span S, cut into tiles of KEY_TILE keys, and
``tile_work`` counts the (key, query) pairs each tile's loop visits — KEY_TILE × its query range rounded out to
whole query tiles of BLOCK_M — against the kept ones, ``Σ (drop_j − j)⁺``. Also the query-tile iterations that run
the unmasked body, and, for reference, the pairs the list path's ``_dkv_kernel`` visits (per block of
``block_for(w)`` queries and list tile of KEY_TILE entries: KEY_TILE × its rounded query range), per query head.
Last, the same efficiency at other windows (two random rows, BLOCK_M 64), to see whether the best S follows w.

    PYTHONPATH=src python docs/results/session25/keymajor/tiling_efficiency.py > tiling_efficiency.log
"""
import torch
import torch.nn.functional as F

from wonderful_matrices.ops.dma.selection import live_keys_torch
from wonderful_matrices.ops.dma.windowed_kernels import block_for
from wonderful_matrices.ops.dma.windowed_key_kernels import key_order, tile_work

L, W, ROWS = 16384, 2048, 4
KEY_TILES = (32, 64, 128)
SPANS = (128, 256, 512, 1024, 2048, 4096)
OTHER_WINDOWS = (256, 512, 1024, 4096, 8192)
BLOCK_MS = (64, 128)


def list_path_work(drop, keys, ends, lq, block, key_tile, block_m):
    """Pairs ``_dkv_kernel`` visits: per (block, list tile of ``key_tile`` entries) ``key_tile`` × the query tiles of
    ``block_m`` from its first live query (rounded down) to its last, as its loop runs them."""
    n, lk = drop.shape
    nb, width = keys.shape[1:]
    tiles = -(-width // key_tile)
    pad = tiles * key_tile - width
    j = F.pad(keys.long(), (0, pad))
    listed = F.pad(torch.arange(width).expand(n, nb, width) < ends[..., -1:], (0, pad))
    p0 = (lk - lq + torch.arange(nb) * block)[None, :, None]
    first = (j - p0).clamp_min(0)
    last = (drop.long().gather(1, j.view(n, -1)).view(n, nb, -1) - p0).clamp_max(block)
    live = listed & (last > first)
    first, last, live = (t.view(n, nb, tiles, key_tile) for t in (first, last, live))
    lo = torch.where(live, first, block).amin(-1) // block_m * block_m
    hi = torch.where(live, last, 0).amax(-1)
    steps = (-(-(hi - lo) // block_m)).clamp_min(0)
    return int(steps.sum()) * block_m * key_tile


def main():
    g = torch.Generator().manual_seed(0)
    biases = {"random": -F.softplus(torch.randn(ROWS, L, generator=g) * 2), "zero (sliding window)": torch.zeros(1, L)}
    block = block_for(W)
    print(f"lq = lk = {L}, w = {W}; per query head; efficiency = kept pairs / visited pairs; unmasked = share of "
          f"the query-tile iterations that run the unmasked body; list path: _dkv_kernel over block_for(w) = {block}")
    for name, bias in biases.items():
        drop, keys, ends = live_keys_torch(bias, L, W, block)
        n = drop.shape[0]
        kept = tile_work(drop, L, key_order(drop, L, L), 64, 64)["kept"]
        print(f"\n## {name} biases ({n} rows): kept pairs per row {kept / n:,.0f} "
              f"({kept / n / (L * (L + 1) / 2):.3f} of causal)")
        print(f"{'BLOCK_M':>7} {'KEY_TILE':>8} {'S':>5} {'visited/row':>13} {'efficiency':>10} {'unmasked':>8}")
        for block_m in BLOCK_MS:
            for key_tile in KEY_TILES:
                for span in (key_tile,) + tuple(s for s in SPANS if s > key_tile):
                    work = tile_work(drop, L, key_order(drop, L, span), key_tile, block_m)
                    print(f"{block_m:>7} {key_tile:>8} {span:>5} {work['visited'] / n:>13,.0f} "
                          f"{work['kept'] / work['visited']:>10.3f} {work['unmasked'] / work['query_tiles']:>8.3f}")
                visited = list_path_work(drop, keys, ends, L, block, key_tile, block_m)
                print(f"{block_m:>7} {key_tile:>8} {'list':>5} {visited / n:>13,.0f} {kept / visited:>10.3f} "
                      f"{'-':>8}")
    print("\n## other windows: efficiency (KEY_TILE 64 / 128), random biases, 2 rows, BLOCK_M 64")
    print(f"{'w':>5} " + " ".join(f"{'S ' + str(s):>11}" for s in SPANS) + f" {'list':>11}")
    for w in OTHER_WINDOWS:
        block = block_for(w)
        drop, keys, ends = live_keys_torch(biases["random"][:2], L, w, block)
        cells = []
        for span in SPANS + (None,):
            pair = []
            for key_tile in (64, 128):
                if span is None:
                    kept = tile_work(drop, L, key_order(drop, L, L), key_tile, 64)["kept"]
                    pair.append(kept / list_path_work(drop, keys, ends, L, block, key_tile, 64))
                    continue
                work = tile_work(drop, L, key_order(drop, L, span), key_tile, 64)
                pair.append(work["kept"] / work["visited"])
            cells.append(f"{pair[0]:.3f}/{pair[1]:.3f}")
        print(f"{w:>5} " + " ".join(f"{c:>11}" for c in cells))


if __name__ == "__main__":
    main()
