"""Accuracy by key distance of bounded-window MQAR models (issue #15, item 2(b)): retrains the benchmark's runs
exactly (same seed, data, steps, learning rate: `wonderful_matrices.bench.mqar.run`'s code path, deterministic on
one CPU thread; the overall accuracy printed must equal the benchmark's) and splits the test accuracy by how far
back the queried key sits: d < w (key inside a w-window), w <= d and value within 2w - 1 (reachable only through two
stacked windows), value beyond 2w - 1 (out of reach of 2-layer sliding-window attention).

usage: python by_distance.py MIXER[:LR] ...   (cell T = 128, 8 pairs, width 64, the --quick settings, 1200 steps)
"""
import sys

import numpy as np
import torch

from wonderful_matrices.bench.mqar import (LEARNING_RATES, build_model, cell_data_seed, parse_mixer,
                                           train_and_evaluate)
from wonderful_matrices.data.mqar import IGNORE_INDEX, mqar

torch.set_num_threads(1)
T, KV, WIDTH, VOCAB, STATE, STEPS, BATCH, SEED, NUM_TEST = 128, 8, 64, 256, 16, 1200, 64, 0, 256
dev = torch.device("cpu")
train = mqar(20_000, T, KV, VOCAB, seed=cell_data_seed(SEED, T, KV))
test = mqar(NUM_TEST, T, KV, VOCAB, seed=cell_data_seed(SEED, T, KV) + 1)
x, y = test
r, q = np.nonzero((y != IGNORE_INDEX).numpy())
ctx = x[:, 0:2 * KV:2].numpy()
pair = np.argmax(ctx[r] == x.numpy()[r, q][:, None], axis=1)
dist = q - 2 * pair  # tokens back from the query to its key
for arg in sys.argv[1:]:
    mixer, _, lr = arg.partition(":")
    lr = float(lr) if lr else float(LEARNING_RATES[2])
    w = parse_mixer(mixer)[1]
    model = build_model(mixer, WIDTH, VOCAB, STATE, dev, seed=SEED)
    result = train_and_evaluate(model, train, test, lr, STEPS, BATCH, dev, seed=SEED)
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(input_ids=x[i:i + 64]).logits.argmax(-1) for i in range(0, len(x), 64)])
    ok = (pred.numpy()[r, q] == y.numpy()[r, q])
    print(f"{mixer} lr {lr:.2e}: accuracy {ok.mean():.4f} (benchmark code path: {result['accuracy']:.4f}), "
          f"{len(ok)} queries", flush=True)
    bins = [("d < w", dist < w), ("w <= d, value within 2w-1", (dist >= w) & (dist - 1 < 2 * w - 1)),
            ("value beyond 2w-1", dist - 1 >= 2 * w - 1)] if w else [("all", dist >= 0)]
    for name, sel in bins:
        print(f"  {name:28s}: {sel.mean():.3f} of queries, accuracy {ok[sel].mean() if sel.any() else float('nan'):.4f}")
