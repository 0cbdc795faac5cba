"""Which sample indices (positions in the epoch's row stream) a run trains on when it is checkpointed at step 4
under one world size and resumed under another with the same flags (--batch-size 2 --grad-accum 1), as
data/packing.py's PackedRows.train_batch computes them."""
def samples(step, bs, ga, ws):
    per_step = bs * ga * ws
    return list(range(step * per_step, (step + 1) * per_step))
for before, after in ((2, 1), (1, 2)):
    seen = [s for st in range(4) for s in samples(st, 2, 1, before)]
    seen += [s for st in range(4, 12) for s in samples(st, 2, 1, after)]
    dup = sorted({s for s in seen if seen.count(s) > 1})
    skipped = sorted(set(range(max(seen) + 1)) - set(seen))
    print(f"world {before} -> {after}: {len(seen)} samples; repeated {dup}; never seen {skipped}")
