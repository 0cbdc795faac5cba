"""Reference levels for the mask_keeps columns: what a window keeps at the labelled queries of the test rows when
it is (a) sliding (the latest w keys: swa-w{w}, or DMA with an all-equal bias) or (b) w keys drawn uniformly from the
visible ones (expected values). No model: positions only. Test rows of the benchmark's cell T = 128, 8 pairs,
vocabulary 256 (cell_data_seed(seed, 128, 8) + 1, 256 rows), per seed.

usage: python reference_keeps.py > reference_keeps.txt
"""
import numpy as np

from wonderful_matrices.bench.mqar import cell_data_seed
from wonderful_matrices.data.mqar import IGNORE_INDEX, mqar

T, KV, VOCAB, NUM_TEST = 128, 8, 256, 256
print("window seed kind     kv_keys_kept kv_values_kept own_pair_kept")
for w in (8, 16):
    for seed in (0, 1, 2):
        x, y = (t.numpy() for t in mqar(NUM_TEST, T, KV, VOCAB, seed=cell_data_seed(seed, T, KV) + 1))
        r, p = np.nonzero(y != IGNORE_INDEX)
        j = 2 * np.argmax(x[r, 0:2 * KV:2] == x[r, p][:, None], axis=1)  # key position of each query
        keys, values = np.arange(0, 2 * KV, 2), np.arange(1, 2 * KV, 2)
        slide = lambda pos: (p[:, None] - w < pos) & (pos <= p[:, None])  # noqa: E731
        print(f"{w:6d} {seed:4d} sliding  {slide(keys).mean():12.4f} {slide(values).mean():14.4f} "
              f"{(slide(j[:, None]) & slide(j[:, None] + 1)).mean():13.4f}")
        chance = np.minimum(1.0, w / (p + 1))  # each visible key kept with probability w / (p + 1)
        pair = np.minimum(1.0, w * (w - 1) / ((p + 1) * p))
        print(f"{w:6d} {seed:4d} uniform  {chance.mean():12.4f} {chance.mean():14.4f} {pair.mean():13.4f}")
