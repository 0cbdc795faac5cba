"""The MQAR generator: labels are exactly the values of the queried keys, rows are seeded, arguments checked."""
import numpy as np
import pytest
import torch

from wonderful_matrices.data.mqar import IGNORE_INDEX, mqar, mqar_accuracy


def _check_rows(inputs, labels, seq_len, n, vocab):
    half = vocab // 2
    assert inputs.shape == labels.shape == (inputs.shape[0], seq_len)
    assert inputs.dtype == labels.dtype == torch.long
    assert int(inputs.min()) >= 0 and int(inputs.max()) < vocab
    for row_in, row_lab in zip(inputs.tolist(), labels.tolist()):
        keys, values = row_in[0:2 * n:2], row_in[1:2 * n:2]
        assert len(set(keys)) == n and all(1 <= k < half for k in keys)
        assert len(set(values)) == n and all(half <= v < vocab for v in values)
        pair = dict(zip(keys, values))
        labelled = [t for t, lab in enumerate(row_lab) if lab != IGNORE_INDEX]
        # one label per key, each in the query region at an even offset, on a re-inserted key, equal to its value
        assert len(labelled) == n
        assert sorted(row_in[t] for t in labelled) == sorted(keys)
        for t in labelled:
            assert t >= 2 * n and (t - 2 * n) % 2 == 0
            assert row_lab[t] == pair[row_in[t]]
        # the context and every other position carry no label
        assert all(row_lab[t] == IGNORE_INDEX for t in range(2 * n))


@pytest.mark.parametrize("seq_len,n,vocab", [(64, 4, 256), (33, 8, 20), (128, 16, 8192)])
def test_labels_are_values_of_queried_keys(seq_len, n, vocab):
    inputs, labels = mqar(37, seq_len, n, vocab, seed=3, block_rows=8)
    _check_rows(inputs, labels, seq_len, n, vocab)


def test_labels_exact_on_a_tight_row():
    # seq_len = 4N leaves exactly N query slots: every slot is a query, in some order
    inputs, labels = mqar(5, 16, 4, 12, seed=0)
    _check_rows(inputs, labels, 16, 4, 12)
    assert ((labels[:, 8::2] != IGNORE_INDEX).all())
    assert ((labels[:, 9::2] == IGNORE_INDEX).all())


def test_reproducible_per_seed():
    a = mqar(50, 64, 4, 256, seed=7)
    b = mqar(50, 64, 4, 256, seed=7)
    c = mqar(50, 64, 4, 256, seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_gaps_follow_a_decreasing_power_law():
    # one query per row: P(gap g) ∝ (g + 1)^(a − 1) ≈ 1/(g + 1) for a = 0.01, over 127 possible gaps
    _, labels = mqar(4000, 256, 1, 64, seed=1)
    pos = (labels != IGNORE_INDEX).nonzero()[:, 1] - 2
    counts = np.bincount((pos // 2).numpy(), minlength=127)
    assert counts.sum() == 4000
    expected = np.arange(1, 128, dtype=np.float64) ** -0.99
    expected = 4000 * expected / expected.sum()
    assert abs(counts[0] - expected[0]) < 4 * np.sqrt(expected[0])       # ~739 rows at gap 0
    assert abs(counts[:8].sum() - expected[:8].sum()) < 4 * np.sqrt(expected[:8].sum())
    assert abs(counts[64:].sum() - expected[64:].sum()) < 4 * np.sqrt(expected[64:].sum())


def test_no_random_filler():
    inputs, labels = mqar(3, 64, 4, 256, seed=0, random_non_queries=False)
    region = inputs[:, 8:]
    assert ((region == 0) | (labels[:, 8:] != IGNORE_INDEX)).all()


@pytest.mark.parametrize("kwargs,argument", [
    (dict(seq_len=15, num_kv_pairs=4, vocab_size=256), "seq_len"),
    (dict(seq_len=64, num_kv_pairs=4, vocab_size=9), "vocab_size"),
    (dict(seq_len=64, num_kv_pairs=0, vocab_size=256), "num_kv_pairs"),
    (dict(seq_len=64, num_kv_pairs=4, vocab_size=256, power_a=0.0), "power_a"),
])
def test_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        mqar(4, **kwargs)


def test_accuracy_counts_only_labelled_positions():
    inputs, labels = mqar(6, 32, 4, 64, seed=2)
    perfect = torch.nn.functional.one_hot(labels.clamp(min=0), 64).float()
    assert mqar_accuracy(perfect, labels) == (24, 24)
    wrong = torch.roll(perfect, 1, dims=-1)
    assert mqar_accuracy(wrong, labels) == (0, 24)
