"""MQAR's bounded-window diagnostics: accuracy by key distance, and the keys each DMA window keeps."""
import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from wonderful_matrices.bench import mqar as bench_mqar
from wonderful_matrices.bench import mqar_probe
from wonderful_matrices.data.mqar import IGNORE_INDEX, mqar

T, PAIRS, VOCAB, W = 64, 4, 32, 8


def _queries(inputs, labels):
    """(row, position, key position) of every labelled query, by a plain scan of the kv section."""
    out = []
    for r in range(inputs.shape[0]):
        for p in range(inputs.shape[1]):
            if labels[r, p] != IGNORE_INDEX:
                j = next(j for j in range(0, 2 * PAIRS, 2) if inputs[r, j] == inputs[r, p])
                out.append((r, p, j))
    return out


class WindowOracle(nn.Module):
    """A fake MQAR model that answers a query exactly when ``answers(d)`` holds for its key distance ``d`` (and
    predicts token 0, never a value, elsewhere): the model interface ``labelled_logits`` uses."""

    def __init__(self, answers):
        super().__init__()
        self.answers = answers
        self.lm_head = nn.Linear(VOCAB, VOCAB, bias=False)
        with torch.no_grad():
            self.lm_head.weight.copy_(10 * torch.eye(VOCAB))
        self.model = self._hidden

    def _hidden(self, input_ids, use_cache=False):
        hidden = torch.zeros(*input_ids.shape, VOCAB)
        hidden[..., 0] = 1.0
        for r in range(input_ids.shape[0]):
            for p in range(2 * PAIRS, input_ids.shape[1]):
                for j in range(0, 2 * PAIRS, 2):
                    if input_ids[r, j] == input_ids[r, p] and self.answers(p - j):
                        hidden[r, p] = 0.0
                        hidden[r, p, input_ids[r, j + 1]] = 1.0
        return SimpleNamespace(last_hidden_state=hidden)


@pytest.mark.parametrize("answers, expected", [
    (lambda d: d < W, [1.0, 0.0, 0.0]),
    (lambda d: W <= d <= 2 * W - 1, [0.0, 1.0, 0.0]),  # the value (d - 1 back) within 2w - 1 tokens
    (lambda d: d >= 2 * W, [0.0, 0.0, 1.0]),
])
def test_accuracy_by_distance_is_right_exactly_on_the_bin_a_predictor_answers(answers, expected):
    train, test = mqar(64, T, PAIRS, VOCAB, seed=1), mqar(32, T, PAIRS, VOCAB, seed=2)
    queries = _queries(*test)
    counts = [sum(d < W for d in ds), sum(W <= d < 2 * W for d in ds), sum(d >= 2 * W for d in ds)] \
        if (ds := [p - j for _, p, j in queries]) else None
    assert all(c > 0 for c in counts)  # every bin is exercised
    result = bench_mqar.train_and_evaluate(WindowOracle(answers), train, test, lr=1e-9, steps=1, batch_size=8,
                                           device=torch.device("cpu"), window=W, num_kv_pairs=PAIRS)
    bins = result["accuracy_by_distance"]
    assert [b["bin"] for b in bins] == list(mqar_probe.DISTANCE_BINS)
    assert [b["accuracy"] for b in bins] == expected
    assert [b["queries"] for b in bins] == counts
    assert [b["share"] for b in bins] == [round(c / len(queries), 4) for c in counts]
    assert result["accuracy"] == pytest.approx(sum(c for c, e in zip(counts, expected) if e) / len(queries))
    assert result["mask_keeps"] is None  # no windowed DMA layer


def test_query_distances_follow_the_rows():
    inputs, labels = mqar(16, T, PAIRS, VOCAB, seed=3)
    expected = [p - j for _, p, j in _queries(inputs, labels)]
    assert mqar_probe.query_distances(inputs, labels, PAIRS).tolist() == expected
    with pytest.raises(ValueError, match="inputs"):
        mqar_probe.query_distances(inputs, labels, 1)  # the other keys are not in a 1-pair kv section
    with pytest.raises(ValueError, match="window"):
        mqar_probe.distance_bins(torch.tensor([3]), 0)


def _kept_by_weights(model, inputs):
    """Per windowed DMA layer, (b, l, l) bool: query i keeps key j, from the dense attention weights."""
    kept, handles = [], []
    for layer in mqar_probe.windowed_dma_layers(model):
        def hook(module, args, kwargs, layer=layer):
            kept.append(layer.attention_weights(args[0], kwargs.get("position_ids", args[1] if len(args) > 1
                                                                       else None))[:, 0] > 0)
        handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    with torch.no_grad():
        model(input_ids=inputs)
    for h in handles:
        h.remove()
    return kept


def test_kept_keys_match_the_dense_attention_weights_of_a_random_model():
    inputs, labels = mqar(6, T, PAIRS, VOCAB, seed=4)
    model = bench_mqar.build_model("hyb1-w5", 16, VOCAB, 8, torch.device("cpu"), seed=0).eval()
    with torch.no_grad():  # a spread-out bias: the window keeps far keys for some queries
        for layer in mqar_probe.windowed_dma_layers(model):
            layer.A_log.fill_(2.0)
    kept = _kept_by_weights(model, inputs)
    with mqar_probe.KeptKeysProbe(model, PAIRS) as probe, torch.no_grad():
        model(input_ids=inputs)
        probe.update(inputs, labels)
    got = probe.summary(5)
    assert [g["layer"] for g in got] == [1, 3, 5, 7]
    queries = _queries(inputs, labels)
    for g, k in zip(got, kept):
        keys = [float(k[r, p, 0:2 * PAIRS:2].float().mean()) for r, p, _ in queries]
        values = [float(k[r, p, 1:2 * PAIRS:2].float().mean()) for r, p, _ in queries]
        pairs = [float(k[r, p, j] & k[r, p, j + 1]) for r, p, j in queries]
        assert g["kv_keys_kept"] == round(sum(keys) / len(keys), 4)
        assert g["kv_values_kept"] == round(sum(values) / len(values), 4)
        assert g["own_key_kept"] == round(sum(float(k[r, p, j]) for r, p, j in queries) / len(queries), 4)
        assert g["own_value_kept"] == round(sum(float(k[r, p, j + 1]) for r, p, j in queries) / len(queries), 4)
        assert g["own_pair_kept"] == round(sum(pairs) / len(pairs), 4)
    assert any(g["kv_keys_kept"] + g["kv_values_kept"] > 0 for g in got)  # not the sliding window's nothing


@pytest.mark.parametrize("window, preferred, expected", [
    (2 * PAIRS, range(2 * PAIRS), (1.0, 1.0, 1.0, 1.0, 1.0)),      # the whole kv section
    (PAIRS, range(1, 2 * PAIRS, 2), (0.0, 1.0, 0.0, 1.0, 0.0)),    # its values only
    (PAIRS, range(0), None),  # all equal: the latest w keys (a sliding window), counted below
])
def test_kept_keys_of_a_bias_that_prefers_known_positions(window, preferred, expected):
    inputs, labels = mqar(8, T, PAIRS, VOCAB, seed=5)
    model = bench_mqar.build_model(f"dma-w{window}", 16, VOCAB, 8, torch.device("cpu"), seed=0).eval()
    preferred = torch.tensor(list(preferred), dtype=torch.long)
    for layer in mqar_probe.windowed_dma_layers(model):
        def key_bias(value_states):
            bias = torch.full((*value_states.shape[:-1], 1), -1.0)
            bias[:, preferred] = 0.0
            return bias
        layer.key_bias = key_bias
    with mqar_probe.KeptKeysProbe(model, PAIRS) as probe, torch.no_grad():
        for start in (0, 4):  # two batches: the means run over both
            model(input_ids=inputs[start:start + 4])
            probe.update(inputs[start:start + 4], labels[start:start + 4])
    q = _queries(inputs, labels)
    in_bin = [[p - j < window for _, p, j in q], [window <= p - j < 2 * window for _, p, j in q],
              [p - j >= 2 * window for _, p, j in q]]
    if expected is None:  # query p keeps j exactly when p - w < j <= p
        kept = [[p - window < j for j in range(2 * PAIRS)] for _, p, _ in q]
        expected = tuple(round(sum(x) / len(x), 4) for x in (
            [sum(k[0::2]) / PAIRS for k in kept], [sum(k[1::2]) / PAIRS for k in kept],
            [k[j] for k, (_, _, j) in zip(kept, q)], [k[j + 1] for k, (_, _, j) in zip(kept, q)],
            [k[j] and k[j + 1] for k, (_, _, j) in zip(kept, q)]))
        assert 0 < expected[1] < 1  # some queries sit close enough to the kv section
        # the pair is kept exactly when the key is within the window (d < w)
        by_distance = [1.0 if any(in_bin[0]) else None, 0.0 if any(in_bin[1]) else None,
                       0.0 if any(in_bin[2]) else None]
    else:
        by_distance = [expected[4] if any(sel) else None for sel in in_bin]
    for layer in probe.summary(window):
        got = tuple(layer[k] for k in ("kv_keys_kept", "kv_values_kept", "own_key_kept", "own_value_kept",
                                       "own_pair_kept"))
        assert got == expected
        assert layer["own_pair_kept_by_distance"] == by_distance


def test_update_without_a_forward_is_refused():
    inputs, labels = mqar(2, T, PAIRS, VOCAB, seed=6)
    model = bench_mqar.build_model("dma-w4", 16, VOCAB, 8, torch.device("cpu"), seed=0)
    with mqar_probe.KeptKeysProbe(model, PAIRS) as probe, pytest.raises(ValueError, match="update"):
        probe.update(inputs, labels)


def test_rows_carry_the_diagnostics_and_old_results_still_merge(tmp_path):
    out = tmp_path / "new"
    rows = bench_mqar.run(out, quick=True, cells=((T, PAIRS, 16),), steps=2, vocab_size=VOCAB, batch_size=4,
                          num_test=8, learning_rates=(1e-2,), mixers="attn,dma-w4,swa-w4,ssd-s4")
    by = {r["mixer"]: r for r in rows}
    assert by["attn"]["accuracy_by_distance"] is None and by["attn"]["mask_keeps"] is None
    for m in ("dma-w4", "swa-w4", "ssd-s4"):
        bins = by[m]["accuracy_by_distance"]
        assert sum(b["queries"] for b in bins) == 8 * PAIRS
        assert sum(b["queries"] * b["accuracy"] for b in bins if b["queries"]) == pytest.approx(
            by[m]["accuracy"] * 8 * PAIRS)
    assert [m["layer"] for m in by["dma-w4"]["mask_keeps"]] == [0, 1]
    assert by["swa-w4"]["mask_keeps"] is None and by["ssd-s4"]["mask_keeps"] is None
    md = (out / "results.md").read_text()
    assert "| by_distance | mask_keeps |" in md and " %) | L0 " in md
    # a results.json of before these fields merges, alone or with a new one (whose better run's fields are kept)
    data = json.loads((out / "results.json").read_text())
    for r in data["rows"]:
        del r["accuracy_by_distance"], r["mask_keeps"]
        r["lr_accuracy"] = {"2.15e-03": r["accuracy"]}
        r["best_lr"] = 2.15e-3
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.json").write_text(json.dumps(data))
    only_old = bench_mqar.merge_results(tmp_path / "m1", [old])
    assert all(r.get("accuracy_by_distance") is None for r in only_old)
    assert [r["accuracy"] for r in only_old] == [r["accuracy"] for r in data["rows"]]
    for r in data["rows"]:  # the old runs all failed: the new ones are the best
        r["lr_accuracy"], r["accuracy"], r["best_lr"] = {"2.15e-03": None}, None, None
    (old / "results.json").write_text(json.dumps(data))
    merged = {r["mixer"]: r for r in bench_mqar.merge_results(tmp_path / "m", [old, out])}
    assert merged["dma-w4"]["accuracy_by_distance"] == by["dma-w4"]["accuracy_by_distance"]
    assert merged["dma-w4"]["mask_keeps"] == by["dma-w4"]["mask_keeps"]
