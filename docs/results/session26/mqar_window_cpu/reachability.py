"""How far back each MQAR query's key (and value) sits, against a window w (issue #15, item 2(b)).

For every labelled (query) position q of the benchmark's test rows, the key it queries sits at 2i and its value at
2i + 1 (the i-th pair of the context). A query position q with window w keeps the keys j in (q - w, q] (sliding
window, query itself included). Printed per (T, pairs) and window: the fraction of queries whose key lies in the last
w tokens (q - key < w), the same for the value token (q - (key + 1) < w), and the fraction whose value lies within
2w - 1 tokens (the receptive field of two stacked windows of w): an upper bound on what 2-layer SWA could reach.
Uses the same generator and seed rule as ``wonderful_matrices.bench.mqar.run`` (test rows: cell_data_seed + 1).
"""
import sys

import numpy as np

from wonderful_matrices.bench.mqar import KV_PAIRS, cell_data_seed
from wonderful_matrices.data.mqar import IGNORE_INDEX, mqar

WINDOWS = (8, 16, 32, 64, 128)
for T in (int(t) for t in (sys.argv[1:] or (128, 256, 512))):
    kv = KV_PAIRS[T]
    inputs, labels = (t.numpy() for t in mqar(1000, T, kv, 256, seed=cell_data_seed(0, T, kv) + 1))
    r, q = np.nonzero(labels != IGNORE_INDEX)
    # the key's position: where inputs[r, :2kv:2] equals the queried token
    ctx = inputs[:, 0:2 * kv:2]
    pair = np.argmax(ctx[r] == inputs[r, q][:, None], axis=1)
    assert (ctx[r, pair] == inputs[r, q]).all()
    key_pos = 2 * pair
    dist = q - key_pos  # tokens back from the query to its key
    print(f"T={T} pairs={kv} queries={len(q)}: key distance min {dist.min()} median {int(np.median(dist))} "
          f"mean {dist.mean():.1f} max {dist.max()}; query position median {int(np.median(q))}")
    for w in WINDOWS:
        if w >= T:
            continue
        print(f"  w={w:4d}: key within last w tokens {np.mean(dist < w):.4f}; value within last w "
              f"{np.mean(dist - 1 < w):.4f}; value within 2w-1 (two stacked windows) {np.mean(dist - 1 < 2 * w - 1):.4f}")
