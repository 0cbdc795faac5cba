"""List entries a 64-query tile of the windowed DMA kernels loads at 16K, w = 2048, block 2048 (one row): before
session 22 the masked loop ran from the unmasked head to the tile's end (``ends - heads``); now over the carried
keys some query of the tile keeps, then the block's own keys (``alive - heads + ends - carried``).

    PYTHONPATH=src python docs/results/session22/audit/carried_entries_per_tile.py
"""
import torch

from wonderful_matrices.ops.dma.selection import carried_counts, live_keys_torch

torch.manual_seed(0)
L, w, B = 16384, 2048, 2048
for kind in ("randn", "zeros (sliding window)"):
    bias = torch.randn(1, L) if kind == "randn" else torch.zeros(1, L)
    drop, keys, ends = live_keys_torch(bias, L, w, B)
    counts = carried_counts(drop, keys, ends, L, B)
    heads, alive = counts[0, ..., 0].double(), counts[0, ..., 1].double()
    carried = counts[0, :, :1, 1].double()  # (blocks, 1): what the block's first query keeps
    e = ends[0].double()
    before, now = (e - heads).mean().item(), (alive - heads + e - carried).mean().item()
    print(f"{kind}: head {heads.mean().item():.0f}, masked entries per tile {before:.0f} before, {now:.0f} now "
          f"({100 * (before - now) / (heads.mean().item() + before):.0f}% of the entries loaded before)")
