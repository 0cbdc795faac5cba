"""Audit Q1: the MQAR generator against a reference written from the definition (Zoology's MQAR), and the
overlap between a cell's training and test rows.

Run from the repository root: ``OMP_NUM_THREADS=1 PYTHONPATH=src python docs/results/session27/audit_mqar/q1_data.py``
(log: q1_data.log beside this file).
"""
import collections
import time

import numpy as np
import torch

torch.set_num_threads(1)

from wonderful_matrices.bench.mqar import KV_PAIRS, cell_data_seed  # noqa: E402
from wonderful_matrices.data.mqar import IGNORE_INDEX, mqar  # noqa: E402


def check_rows(inputs, labels, n, vocab):
    """The structural rules of an MQAR row, checked row by row in plain Python; returns a list of violations."""
    half = vocab // 2
    T = inputs.shape[1]
    bad = []
    for r in range(inputs.shape[0]):
        x, y = inputs[r].tolist(), labels[r].tolist()
        keys, vals = x[0:2 * n:2], x[1:2 * n:2]
        if not all(1 <= k < half for k in keys):
            bad.append((r, "key range"))
        if not all(half <= v < vocab for v in vals):
            bad.append((r, "value range"))
        if len(set(keys)) != n or len(set(vals)) != n:
            bad.append((r, "not distinct"))
        mapping = dict(zip(keys, vals))
        labelled = [t for t in range(T) if y[t] != IGNORE_INDEX]
        if any(t < 2 * n or (t - 2 * n) % 2 for t in labelled):
            bad.append((r, "label outside even offsets of the query region"))
        if len(labelled) != n:
            bad.append((r, f"{len(labelled)} labels"))
        if sorted(x[t] for t in labelled) != sorted(keys):
            bad.append((r, "queried keys are not each key once"))
        # Zoology's alignment: the label at t is the value of the key read at t (no shift)
        if any(y[t] != mapping.get(x[t]) for t in labelled):
            bad.append((r, "label is not the value of inputs[t]"))
        if any(not (0 <= v < vocab) for v in x):
            bad.append((r, "token out of vocabulary"))
    return bad


def reference_gaps(rng, rows, space, n, a):
    """Gaps drawn one at a time, each with probability proportional to a*(g+1)**(a-1) among those not drawn yet
    (sequential weighted sampling without replacement, the definition), in draw order."""
    w = a * np.arange(1, space + 1, dtype=np.float64) ** (a - 1)
    out = np.empty((rows, n), dtype=np.int64)
    for r in range(rows):
        p = w.copy()
        for i in range(n):
            g = rng.choice(space, p=p / p.sum())
            out[r, i] = g
            p[g] = 0.0
    return out


def legacy_choice_gaps(seed, rows, space, n, a):
    """Gaps drawn as Zoology draws them: numpy's legacy ``np.random.choice(space, n, replace=False, p=...)``."""
    p = a * np.arange(1, space + 1, dtype=np.float64) ** (a - 1)
    p /= p.sum()
    rs = np.random.RandomState(seed)
    return np.stack([rs.choice(space, size=n, replace=False, p=p) for _ in range(rows)])


def library_gaps(inputs, labels, n):
    """(rows, n) gaps of the library's rows, in context (key) order: gap of key i = (query position - 2n) / 2."""
    rows = inputs.shape[0]
    out = np.empty((rows, n), dtype=np.int64)
    for r in range(rows):
        x, y = inputs[r].tolist(), labels[r].tolist()
        pos = {x[t]: t for t in range(2 * n, len(x)) if y[t] != IGNORE_INDEX}
        out[r] = [(pos[k] - 2 * n) // 2 for k in x[0:2 * n:2]]
    return out


def tv(a, b):
    return 0.5 * float(np.abs(a - b).sum())


def inclusion(gaps, space):
    return np.bincount(gaps.ravel(), minlength=space) / gaps.shape[0]


def main():
    t0 = time.time()
    print("== 1a. structure (every row checked in plain Python)")
    for (T, n, V, rows) in ((64, 4, 256, 2000), (128, 8, 256, 1000), (256, 16, 8192, 500), (1024, 128, 8192, 100),
                            (2048, 256, 8192, 50), (37, 9, 40, 300)):
        x, y = mqar(rows, T, n, V, seed=11, block_rows=64)
        bad = check_rows(x, y, n, V)
        print(f"T={T} n={n} V={V} rows={rows}: violations={len(bad)} {bad[:3]}")

    print("== 1b. gap distribution: library vs the definition (sequential weighted sampling) vs numpy legacy choice")
    for (T, n, rows) in ((64, 4, 20000), (256, 16, 4000), (1024, 128, 400)):
        space = (T - 2 * n) // 2
        x, y = mqar(rows, T, n, 8192, seed=5)
        lib = library_gaps(x, y, n)
        ref = reference_gaps(np.random.default_rng(6), rows, space, n, 0.01)
        leg = legacy_choice_gaps(7, rows, space, n, 0.01)
        ref2 = reference_gaps(np.random.default_rng(8), rows, space, n, 0.01)
        il, ir, ig, ir2 = (inclusion(g, space) / n for g in (lib, ref, leg, ref2))
        # correlation of a key's context index with its gap: the draw order decides which key gets which gap
        def first_last(g):
            return float(g[:, 0].mean()), float(g[:, -1].mean())
        print(f"T={T} n={n} space={space} rows={rows}: TV(inclusion) lib-ref={tv(il, ir):.4f} "
              f"ref-ref'={tv(ir2, ir):.4f} legacy-ref={tv(ig, ir):.4f}; mean gap lib={lib.mean():.2f} "
              f"ref={ref.mean():.2f} legacy={leg.mean():.2f} (uniform gaps: {(space - 1) / 2:.2f}); mean gap of key 0 "
              f"/ key n-1: lib={first_last(lib)} ref={first_last(ref)} legacy={first_last(leg)}")
        dist = (2 * n + 2 * lib) - 2 * np.arange(n)[None, :]  # key position 2i -> query position 2n + 2g
        print(f"   key->query distance (library): median {np.median(dist):.0f}, 10%/90% "
              f"{np.percentile(dist, 10):.0f}/{np.percentile(dist, 90):.0f} of T={T}")

    print("== 1c. filler tokens of the query region (random_non_queries): uniform over [0, V)?")
    V = 256
    x, y = mqar(4000, 128, 8, V, seed=9)
    region = x[:, 16:]
    filler = region[(y[:, 16:] == IGNORE_INDEX)].numpy()
    counts = np.bincount(filler, minlength=V)
    exp = filler.size / V
    chi2 = float(((counts - exp) ** 2 / exp).sum())
    print(f"filler tokens {filler.size}, chi2={chi2:.1f} on {V - 1} dof (mean {V - 1}, sd {np.sqrt(2 * (V - 1)):.1f}); "
          f"odd offsets all filler: {bool((y[:, 17::2] == IGNORE_INDEX).all())}")
    x0, y0 = mqar(50, 128, 8, V, seed=9, random_non_queries=False)
    print(f"random_non_queries=False: unlabelled query-region tokens all 0: "
          f"{bool((x0[:, 16:][y0[:, 16:] == IGNORE_INDEX] == 0).all())}")

    print("== 1d. determinism and block independence")
    a = mqar(300, 128, 8, 256, seed=3, block_rows=1024)
    b = mqar(300, 128, 8, 256, seed=3, block_rows=1024)
    print(f"same seed equal: {torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])}")

    print("== 1e. train/test overlap of the bench's cells (num_train=20000, test 1000, seed 0, V=8192)")
    for (T, V, num_test) in ((1024, 8192, 1000), (2048, 8192, 1000), (256, 8192, 1000), (64, 256, 256),
                             (128, 256, 256)):
        n = KV_PAIRS[T]
        s = cell_data_seed(0, T, n)
        tr = mqar(20000, T, n, V, seed=s)
        te = mqar(num_test, T, n, V, seed=s + 1)
        fresh = mqar(num_test, T, n, V, seed=987654321)   # an independent draw: the chance level
        overlap(tr, te, fresh, n, V, T)
    print(f"done in {time.time() - t0:.0f} s")


def overlap(tr, te, fresh, n, V, T):
    half = V // 2
    trx = tr[0].numpy()
    # pair counts of the training rows: key -> Counter(value)
    pairs = trx[:, 0:2 * n].reshape(-1, n, 2).reshape(-1, 2)
    code = pairs[:, 0] * V + pairs[:, 1]
    seen = set(code.tolist())
    per_key = collections.defaultdict(collections.Counter)
    for k, v in pairs.tolist():
        per_key[k][v] += 1
    majority = {k: c.most_common(1)[0][0] for k, c in per_key.items()}
    train_rows = {tuple(r) for r in trx.tolist()}
    train_maps = {frozenset(zip(r[0:2 * n:2], r[1:2 * n:2])) for r in trx.tolist()}
    out = []
    for name, (x, y) in (("test", te), ("fresh", fresh)):
        xs = x.numpy()
        tp = xs[:, 0:2 * n].reshape(-1, n, 2).reshape(-1, 2)
        frac_pairs = float(np.mean([(k * V + v) in seen for k, v in tp.tolist()]))
        dup_rows = sum(tuple(r) in train_rows for r in xs.tolist())
        dup_maps = sum(frozenset(zip(r[0:2 * n:2], r[1:2 * n:2])) in train_maps for r in xs.tolist())
        # a memoriser: at each labelled position, predict the value the training rows paired most often with the key
        m = (y != IGNORE_INDEX).numpy()
        keys, labels = xs[m], y.numpy()[m]
        mem_acc = float(np.mean([majority.get(k, -1) == v for k, v in zip(keys.tolist(), labels.tolist())]))
        out.append(f"{name}: pairs seen in train {frac_pairs:.4f}, rows identical to a train row {dup_rows}, "
                   f"rows whose whole mapping is a train row's {dup_maps}, memoriser accuracy {mem_acc:.4f}")
    npairs = len(pairs)
    chance = 1 - (1 - 1 / ((half - 1) * (V - half))) ** npairs
    print(f"T={T} n={n} V={V}: train rows {trx.shape[0]} ({npairs} pairs, {len(seen)} distinct); "
          f"expected fraction of a random pair seen (independent rows) {chance:.4f}; chance of the memoriser "
          f"~1/{V - half} = {1 / (V - half):.4f}")
    for line in out:
        print("   " + line)


if __name__ == "__main__":
    main()
