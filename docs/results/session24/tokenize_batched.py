"""Old (one document per encode_batch) against new (batched) tokenization: same bytes, time."""
import itertools, sys, time, types
import numpy as np

from wonderful_matrices.data import packing
from wonderful_matrices.data.corpora import load_corpus
from wonderful_matrices.data.tokenizer import eos_id, load_tokenizer, train_bpe

corpus = load_corpus("python-source")
docs = list(itertools.islice(corpus.split("train"), int(sys.argv[1])))
print(len(docs), "documents", sum(map(len, docs)) / 1e6, "M chars", flush=True)
tok = train_bpe(iter(docs[:300]), 4096, "/tmp/tokbench/tok")
dtype = np.dtype("uint16")

def old(docs):
    eos = eos_id(tok); backend = tok.backend_tokenizer; out = []
    for doc in docs:
        for enc in backend.encode_batch(list(packing._pieces(doc)), add_special_tokens=False):
            out.append(np.asarray(enc.ids, dtype=dtype))
        out.append(np.asarray([eos], dtype=dtype))
    return np.concatenate(out)

t = time.perf_counter(); a = old(docs); t_old = time.perf_counter() - t
t = time.perf_counter(); b = np.concatenate(list(packing._token_batches(iter(docs), tok, dtype))); t_new = time.perf_counter() - t
print(f"tokens {len(a)}; identical: {np.array_equal(a, b)}; one document per call {t_old:.1f} s, batched {t_new:.1f} s "
      f"({t_old / t_new:.2f}x) on {__import__('os').cpu_count()} cores", flush=True)
