"""Packed rows (HF's convention: position_ids restart at 0 where a document starts, or an explicit seq_idx): for
every preset a packed row gives each document exactly the logits, loss and gradients it gets alone."""
import pytest
import torch

import wonderful_matrices as wm
from conftest import rel_err
from wonderful_matrices.models import CheemsCache
from wonderful_matrices.models.modeling import document_positions, packed_document_ids

# document starts inside a chunk and at a chunk edge (tiny presets: chunk 16), a one-token document, documents
# longer than the DMA window (8); the second row holds one document
ROWS = [[5, 1, 10, 9], [25]]
TINY = [name for name in wm.presets.names() if name.endswith("-tiny")]


def _model(name):
    torch.manual_seed(0)
    cfg = wm.presets.get(name)
    model = wm.CheemsForCausalLM(cfg).float().eval()
    return model, cfg


def _documents(vocab, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randint(0, vocab, (n,), generator=gen) for n in row] for row in ROWS]


def _packed(docs):
    ids = torch.stack([torch.cat(row) for row in docs])
    positions = torch.stack([torch.cat([torch.arange(len(d)) for d in row]) for row in docs])
    return ids, positions


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("name", TINY)
def test_packed_row_equals_each_document_alone(name):
    model, cfg = _model(name)
    docs = _documents(cfg.vocab_size)
    ids, positions = _packed(docs)
    weights = torch.randn(*ids.shape, cfg.vocab_size)

    model.zero_grad()
    packed = model(input_ids=ids, position_ids=positions).logits
    (packed * weights).sum().backward()
    packed_grads = _grads(model)

    model.zero_grad()
    alone = []
    for i, row in enumerate(docs):
        start, parts = 0, []
        for doc in row:
            logits = model(input_ids=doc[None]).logits
            (logits * weights[i:i + 1, start:start + len(doc)]).sum().backward()
            parts.append(logits.detach())
            start += len(doc)
        alone.append(torch.cat(parts, dim=1))
    alone = torch.cat(alone)
    assert rel_err(packed.detach(), alone) < 1e-5
    assert rel_err(packed_grads, _grads(model)) < 1e-5

    # an explicit seq_idx (positions derived from it) gives the same logits
    seq_idx = packed_document_ids(positions, None, None, 0)
    assert torch.equal(document_positions(seq_idx), positions)
    explicit = model(input_ids=ids, seq_idx=seq_idx).logits
    assert rel_err(explicit.detach(), alone) < 1e-5


@pytest.mark.parametrize("name", ["llama-tiny", "mamba2-tiny"])
def test_packed_loss_scores_no_document_start(name):
    """The loss of a packed row is the mean over every document's own next-token predictions: a document's first
    token is never scored against the previous document."""
    model, cfg = _model(name)
    docs = _documents(cfg.vocab_size, seed=2)
    ids, positions = _packed(docs)
    loss = model(input_ids=ids, position_ids=positions, labels=ids).loss
    total, count = 0.0, 0
    for row in docs:
        for doc in row:
            if len(doc) > 1:
                out = model(input_ids=doc[None], labels=doc[None])
                total += out.loss.item() * (len(doc) - 1)
                count += len(doc) - 1
    assert abs(loss.item() - total / count) < 1e-5 * abs(total / count)
    # the same documents given as an explicit seq_idx: the same loss
    explicit = model(input_ids=ids, seq_idx=packed_document_ids(positions, None, None, 0), labels=ids).loss
    assert abs(explicit.item() - total / count) < 1e-5 * abs(total / count)


def test_left_padding_is_not_read_as_documents():
    """Positions of padding restart nothing: a left-padded row stays one document (what generate passes)."""
    positions = torch.tensor([[1, 1, 0, 1, 2], [0, 1, 2, 3, 4]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert packed_document_ids(positions, mask, None, 0) is None
    assert packed_document_ids(torch.tensor([[0, 1, 0, 1, 2]]), None, None, 0).tolist() == [[0, 0, 1, 1, 1]]
    assert packed_document_ids(torch.tensor([[0, 1, 0, 1, 2]]), None, None, past=3) is None


def test_padding_inside_a_row_is_not_read_as_documents():
    """generate gives padding position 0 wherever it sits: a row whose padding is inside it (a batch continued after
    one row stopped early) or at its right stays one document; a real position-0 token after a real one starts one."""
    positions = torch.tensor([[0, 1, 2, 0, 0, 3, 4], [0, 1, 2, 3, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0, 0, 1, 1], [1, 1, 1, 1, 0, 0, 0]])
    assert packed_document_ids(positions, mask, None, 0) is None
    packed = packed_document_ids(torch.tensor([[0, 1, 0, 0, 1]]), torch.tensor([[1, 1, 0, 1, 1]]), None, 0)
    assert packed is None  # the position-0 token after the gap continues the row's document


@pytest.mark.parametrize("name", ["cheems-tiny", "llama-tiny"])
def test_generate_with_padding_inside_the_prompt_equals_the_prompt_without_it(name):
    model, cfg = _model(name)
    torch.manual_seed(4)
    ids = torch.randint(1, cfg.vocab_size, (1, 10))
    mask = torch.ones_like(ids)
    mask[0, 4:6] = 0
    with torch.no_grad():
        expected = model.generate(ids[:, mask[0].bool()], max_new_tokens=5, do_sample=False, pad_token_id=0)[:, 8:]
        for use_cache in (True, False):
            out = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0,
                                 use_cache=use_cache)
            assert torch.equal(out[:, 10:], expected), use_cache


def test_packed_rows_refuse_a_cache():
    model, cfg = _model("llama-tiny")
    ids = torch.randint(0, cfg.vocab_size, (1, 6))
    positions = torch.tensor([[0, 1, 2, 0, 1, 2]])
    out = model(input_ids=ids, position_ids=positions, use_cache=True)
    assert out.past_key_values is None  # packed rows build no cache
    with pytest.raises(ValueError, match="past_key_values"):
        model(input_ids=ids, position_ids=positions, past_key_values=CheemsCache(cfg))
    with pytest.raises(ValueError, match="seq_idx"):
        model(input_ids=ids, seq_idx=torch.zeros(1, 5, dtype=torch.long) + torch.arange(5))
