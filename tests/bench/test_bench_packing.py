"""The language-model benches train and evaluate on packed documents with ``wm train``'s convention: each document
modelled alone (positions restart after EOS), its first token not scored; ``--data python-source`` reaches them."""
import json

import pytest
import torch
import torch.nn.functional as F

from wonderful_matrices.bench import __main__ as bench_main
from wonderful_matrices.bench import lm, lm_common
from wonderful_matrices.data.packing import document_position_ids
from wonderful_matrices.models import presets
from wonderful_matrices.train.loop import build_model

EOS = 0


def _row(vocab, lengths, seed=3):
    """One row of documents of ``lengths`` tokens (ids in [1, vocab)), each closed by EOS, and the documents."""
    gen = torch.Generator().manual_seed(seed)
    docs = [torch.cat([torch.randint(1, vocab, (n,), generator=gen), torch.tensor([EOS])]) for n in lengths]
    return torch.cat(docs)[None], docs


def test_packed_inputs_restart_positions_and_skip_each_documents_first_token():
    rows = torch.tensor([[5, 6, EOS, 7, EOS, EOS, 8, 9], [1, 2, 3, 4, 5, 6, 7, 8]])
    inputs, positions, targets = lm_common.packed_inputs(rows, EOS)
    assert torch.equal(inputs, rows[:, :-1])
    assert torch.equal(positions, document_position_ids(rows, EOS)[:, :-1])
    assert positions[0].tolist() == [0, 1, 2, 0, 1, 0, 0]
    assert targets[0].tolist() == [6, EOS, -100, EOS, -100, -100, 9]
    assert torch.equal(targets[1], rows[1, 1:])
    plain = lm_common.packed_inputs(rows, None)
    assert plain[1] is None and torch.equal(plain[2], rows[:, 1:])


@pytest.mark.parametrize("name", ["cheems-tiny", "llama-tiny"])
@pytest.mark.parametrize("fused", [True, False])
def test_lm_loss_of_a_packed_row_is_the_mean_over_documents_alone(name, fused):
    torch.manual_seed(0)
    model = build_model(presets.get(name, vocab_size=64)).double()
    lm_common.set_fused(model, fused)
    # a document longer than a chunk (16) and than the DMA window (8), a one-token one, one ending the row mid-way
    rows, docs = _row(64, [21, 1, 9, 5])
    rows = rows[:, :-3]
    docs[-1] = docs[-1][:-3]
    loss = lm_common.lm_loss(model, rows, EOS)
    nll, count = 0.0, 0
    for doc in docs:
        if len(doc) < 2:
            continue
        logits = model(input_ids=doc[None, :-1], use_cache=False).logits
        nll = nll + F.cross_entropy(logits[0].double(), doc[1:], reduction="sum")
        count += len(doc) - 1
    expected = nll / count
    # float64 weights; the unfused loss takes float32 logits by design, so float32-level bounds
    tolerance = 1e-6
    assert float(abs(loss.detach() - expected.detach()) / expected.detach()) < tolerance
    loss.backward()
    got = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad()
    expected.backward()
    want = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert float((got - want).norm() / want.norm()) < 1e-5
    # without the convention the documents leak into each other: far outside the tolerance above (by how much
    # depends on the random weights: 1e-3 absolute held for some draws of a near-uniform tiny model, not others)
    unpacked = lm_common.lm_loss(model, rows, None).detach()
    assert float(abs(unpacked - expected.detach()) / expected.detach()) > 10 * tolerance


def test_perplexity_scores_the_same_targets_as_lm_loss():
    torch.manual_seed(0)
    model = build_model(presets.get("cheems-tiny", vocab_size=64))
    rows, _ = _row(64, [7, 3, 12, 2, 9, 6], seed=5)
    tokens = rows[0, :33].numpy()
    ppl = lm_common.perplexity(model, tokens, seq_len=16, batch=1, device=torch.device("cpu"), eos=EOS)
    chunks = [torch.from_numpy(tokens[i * 16:i * 16 + 17])[None] for i in range(2)]
    counts = [int((lm_common.packed_inputs(c, EOS)[2] != -100).sum()) for c in chunks]
    with torch.no_grad():
        losses = [float(lm_common.lm_loss(model, c, EOS)) for c in chunks]
    expected = sum(l * n for l, n in zip(losses, counts)) / sum(counts)
    assert ppl == pytest.approx(float(torch.tensor(expected).exp()), rel=1e-6)
    with pytest.raises(ValueError, match="seq_len"):
        lm_common.perplexity(model, tokens[:3], seq_len=16, batch=1, device=torch.device("cpu"), eos=EOS)


def test_lm_quick_path_on_python_source_records_the_manifest(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    for i in range(40):
        (root / f"m{i:02d}.py").write_text(f"def f{i}(x):\n    '''Scale x.'''\n    return x * {i} + {i * i}\n" * 3)
    out = tmp_path / "out"
    lm.run(out, quick=True, steps=2, families=("cheems",), contexts=(40,), size="tiny", vocab_size=300,
           seq_len=16, batch=2, data=f"python-source:{root}", eval_tokens=256, throughput_lengths=(16,))
    meta = json.loads((out / "results.json").read_text())["meta"]
    manifest = meta["corpus_manifest"]
    assert manifest["name"] == "python-source" and manifest["files"] == 40
    assert manifest["train_tokens"] > 0 and manifest["validation_tokens"] > 0 and len(manifest["content_sha256"]) == 64
    assert "packed documents" in meta["training"]


def test_bench_cli_passes_data_on(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(bench_main, "run_benchmark", lambda name, out, **kw: seen.update(kw, name=name))
    assert bench_main.main(["lm", "--quick", "--out", str(tmp_path), "--data", "python-source"]) == 0
    assert seen["name"] == "lm" and seen["data"] == "python-source"
