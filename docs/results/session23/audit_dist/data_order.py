"""Data order across ranks: per step, rows of all ranks/micro-batches are disjoint sample indices; over two epochs,
every row is seen exactly once per epoch; and the global batch of each step equals the single-process one.
Also counts steps whose global batch holds one row twice (a step that straddles an epoch boundary)."""
import numpy as np
from wonderful_matrices.data.packing import PackedRows
tokens = np.arange(37 * 8, dtype=np.int64)  # 37 rows of 8 tokens; row i starts with token 8*i
rows = PackedRows(tokens, 8)
def ids(batch):
    return [int(r[0]) // 8 for r in batch]
bs, ga, ws = 2, 3, 2
per_step = bs * ga * ws
steps = (2 * rows.num_rows) // per_step
seen = []
for step in range(steps):
    glob = []
    for rank in range(ws):
        for micro in range(ga):
            glob += ids(rows.train_batch(step, bs, ga, micro, 0, rank, ws))
    single = ids(rows.train_batch(step, bs * ga * ws, 1, 0, 0, 0, 1))
    assert sorted(glob) == sorted(single), (step, glob, single)
    if len(set(glob)) != len(glob):
        print(f"step {step}: a row appears twice in one global batch: {glob}")
    seen += glob
e0, e1 = seen[:rows.num_rows], seen[rows.num_rows:2 * rows.num_rows]
print("epoch 0 covers all rows once:", sorted(e0) == list(range(rows.num_rows)))
print("epoch 1 rows seen so far unique:", len(set(e1)) == len(e1))
