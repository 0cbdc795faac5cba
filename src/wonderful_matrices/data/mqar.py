"""Multi-query associative recall (MQAR), generated the Zoology way (Arora et al., 2023).

Each row is ``k1 v1 k2 v2 ... kN vN`` (keys drawn without replacement from the lower half of the vocabulary,
values without replacement from the upper half) followed by a query region in which the keys come back at gaps
drawn from a power law ``p(g) ∝ a·g^(a−1)`` (``a = 0.01``: nearly ``1/g``, so early slots of the query region are
the likeliest; the gaps go to the keys in draw order, so earlier keys tend to come back earlier, as in Zoology).
Every other position of the query region holds a random token (Zoology's ``random_non_queries``).

Labels are already aligned with the inputs (Zoology's convention, *not* Hugging Face's shifted one):
``labels[t]`` is the token to predict after reading ``inputs[:t + 1]``. It is the value of key
``inputs[t]`` where ``inputs[t]`` is a re-inserted (queried) key, and ``-100`` everywhere else. The
accuracy of a model is the fraction of labelled positions where ``argmax logits[t] == labels[t]``.

Generation is vectorised over rows (numpy, in blocks of rows to bound memory) and fully determined by
``seed``.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import require

IGNORE_INDEX = -100


def _sample_without_replacement(rng: np.random.Generator, rows: int, population: int, k: int,
                                log_weights: np.ndarray | None = None) -> np.ndarray:
    """(rows, k) indices in ``[0, population)``, distinct within a row; weighted by ``exp(log_weights)``
    (Gumbel top-k, which is exactly sequential weighted sampling without replacement) or uniform."""
    if log_weights is None:   # float32 keys: ties are rare and only break order, never distinctness
        scores = rng.random((rows, population), dtype=np.float32)
    else:
        scores = -(log_weights[None, :] + rng.gumbel(size=(rows, population)))
    top = np.argpartition(scores, k - 1, axis=1)[:, :k]
    # argpartition leaves the k winners unordered; order them by score so the draw order is the sampling order
    order = np.argsort(np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def mqar(num_examples: int, seq_len: int, num_kv_pairs: int, vocab_size: int, power_a: float = 0.01,
         seed: int = 0, random_non_queries: bool = True, block_rows: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """MQAR rows ``(inputs, labels)``, both LongTensors of shape ``(num_examples, seq_len)``.

    Keys come from ``[1, vocab_size // 2)``, values from ``[vocab_size // 2, vocab_size)``; the first
    ``2 * num_kv_pairs`` tokens are the key-value pairs; queried keys sit at even offsets ``2g`` of the query
    region (``g`` distinct, ``P(g) ∝ power_a · (g + 1)^(power_a − 1)`` for ``g < (seq_len − 2N) // 2``).
    ``labels[t]`` is the value of the queried key ``inputs[t]`` and ``-100`` elsewhere (see the module
    docstring). Unqueried positions of the query region hold uniform random tokens when
    ``random_non_queries`` (else 0). Deterministic in ``seed``; ``block_rows`` only bounds memory.
    """
    for name, value in (("num_examples", num_examples), ("seq_len", seq_len), ("num_kv_pairs", num_kv_pairs),
                        ("vocab_size", vocab_size), ("block_rows", block_rows)):
        require(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1, name, value,
                "an integer >= 1")
    require(seq_len >= 4 * num_kv_pairs, "seq_len", seq_len,
            f">= 4 * num_kv_pairs = {4 * num_kv_pairs} (2N context tokens plus room for N queries at even gaps)")
    half = vocab_size // 2
    require(half - 1 >= num_kv_pairs and vocab_size - half >= num_kv_pairs, "vocab_size", vocab_size,
            f">= {2 * num_kv_pairs + 2} so that num_kv_pairs={num_kv_pairs} distinct keys fit in [1, vocab_size//2) "
            f"and distinct values in [vocab_size//2, vocab_size)")
    require(0 < power_a <= 1, "power_a", power_a, "in (0, 1]")

    n, T = int(num_kv_pairs), int(seq_len)
    context = 2 * n
    space = (T - context) // 2
    log_gap_weights = np.log(power_a) + (power_a - 1.0) * np.log(np.arange(1, space + 1, dtype=np.float64))
    rng = np.random.default_rng(seed)
    inputs = np.empty((num_examples, T), dtype=np.int64)
    labels = np.full((num_examples, T), IGNORE_INDEX, dtype=np.int64)
    for start in range(0, num_examples, block_rows):
        rows = min(block_rows, num_examples - start)
        keys = 1 + _sample_without_replacement(rng, rows, half - 1, n)                   # (rows, n)
        values = half + _sample_without_replacement(rng, rows, vocab_size - half, n)     # (rows, n)
        gaps = _sample_without_replacement(rng, rows, space, n, log_gap_weights)         # (rows, n)
        filler = rng.integers(0, vocab_size, size=(rows, T)) if random_non_queries else \
            np.zeros((rows, T), dtype=np.int64)
        block = inputs[start:start + rows]
        block[:] = filler
        block[:, 0:context:2] = keys
        block[:, 1:context:2] = values
        query_pos = context + 2 * gaps                                                    # (rows, n)
        row_idx = np.arange(rows)[:, None]
        block[row_idx, query_pos] = keys
        labels[start + row_idx, query_pos] = values
    return torch.from_numpy(inputs), torch.from_numpy(labels)


def mqar_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, counted) over labelled positions: logits (b, l, V) aligned with labels (b, l)."""
    require(logits.shape[:2] == labels.shape, "labels.shape", tuple(labels.shape),
            f"the logits' (batch, seq) = {tuple(logits.shape[:2])}")
    mask = labels != IGNORE_INDEX
    correct = (logits.argmax(-1) == labels) & mask
    return int(correct.sum()), int(mask.sum())
