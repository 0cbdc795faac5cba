"""Q2/Q3: `scored_perplexity` against an independent per-target reference, every tiny preset, several contexts.

Reference (written from the definitions, not from the library's packing code): over a prefix of P tokens, target
``i`` (1 <= i < P) is scored iff token ``i - 1`` is not EOS (a document's first token is not predicted from the
previous document); its context is the tokens ``[start, i)`` with ``start = max(row start of i - 1, first token of
i - 1's document)``, rows being ``[r C, (r + 1) C)``. The model runs on each such context ALONE (no position_ids,
no packing: positions 0..), and the log-probability of token ``i`` is read from float64 log-softmax of the logits.
One forward per (row, document) segment gives all of its targets. ``scored_beyond`` is recomputed as the
targets with ``i - 1 - start >= long_after``.

The tiny model is first trained a few steps on the packed stream (so that its predictions depend on context), then
compared at the training length 16 and at 32 and 64; the batch size of the evaluation is varied too.
Usage: PYTHONPATH=src python q3_reference_perplexity.py
"""
import math
import sys

import numpy as np
import torch

from wonderful_matrices.bench.lm_common import scored_perplexity, train_lm
from wonderful_matrices.models import CheemsForCausalLM, presets

EOS, VOCAB, TRAIN_LEN = 0, 64, 16


def stream(n_docs: int, seed: int) -> np.ndarray:
    """Documents of 3..90 tokens (a Markov chain: next = prev + 1..3 mod 63, so context helps), each closed by EOS."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_docs):
        n = int(rng.integers(3, 90))
        doc = [int(rng.integers(1, VOCAB))]
        for _ in range(n - 1):
            doc.append(1 + (doc[-1] - 1 + int(rng.integers(1, 4))) % (VOCAB - 1))
        out += doc + [EOS]
    return np.asarray(out, dtype=np.int64)


@torch.no_grad()
def reference(model, tokens: np.ndarray, context: int, prefix: int, long_after: int) -> dict:
    model.eval()
    t = torch.from_numpy(tokens[:prefix])
    nll, scored, beyond = 0.0, 0, 0
    doc_start = 0
    segments = {}  # start -> its targets
    for i in range(1, prefix):
        j = i - 1  # the input that predicts target i
        if j > 0 and int(t[j - 1]) == EOS:
            doc_start = j
        if int(t[j]) == EOS:
            continue  # target i is a document's first token: not scored
        start = max((j // context) * context, doc_start)
        segments.setdefault(start, []).append(i)
    for start, targets in segments.items():
        end = targets[-1]  # inputs [start, end)
        logits = model(input_ids=t[start:end][None], use_cache=False).logits[0].double()
        logp = logits.log_softmax(-1)
        for i in targets:
            nll -= float(logp[i - 1 - start, t[i]])
            scored += 1
            beyond += (i - 1 - start) >= long_after
    return {"ppl": math.exp(nll / scored), "scored": scored, "scored_beyond": beyond}


def main() -> int:
    torch.set_num_threads(1)
    train, val = stream(400, 0), stream(80, 1)
    prefix = (len(val) - 1) // 64 * 64 + 1
    failures = 0
    for family in ("cheems", "doge", "llama", "mamba2", "jamba"):
        config = presets.get(f"{family}-tiny", vocab_size=VOCAB, use_cache=False)
        torch.manual_seed(0)
        model = CheemsForCausalLM(config)
        train_lm(model, train, TRAIN_LEN, 4, 40, 3e-3, torch.device("cpu"), seed=0, eos=EOS)
        for context in (16, 32, 64):
            ref = reference(model, val, context, prefix, TRAIN_LEN)
            for batch in (1, 3):
                got = scored_perplexity(model, val, context, batch, torch.device("cpu"), max_tokens=prefix, eos=EOS,
                                        long_after=TRAIN_LEN)
                rel = abs(got["ppl"] - ref["ppl"]) / ref["ppl"]
                ok = rel < 1e-5 and got["scored"] == ref["scored"] and got["scored_beyond"] == ref["scored_beyond"]
                failures += not ok
                print(f"{family:7s} C={context:3d} batch={batch}: ppl {got['ppl']:.6f} ref {ref['ppl']:.6f} "
                      f"(rel {rel:.1e}) scored {got['scored']}/{ref['scored']} beyond {got['scored_beyond']}/"
                      f"{ref['scored_beyond']} {'OK' if ok else 'MISMATCH'}", flush=True)
    print("failures:", failures)
    return int(failures > 0)


if __name__ == "__main__":
    sys.exit(main())
