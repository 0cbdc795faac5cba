"""Validation metrics: loss, perplexity, bits per byte, and the unigram baseline they are compared to."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..data.packing import PackedRows, document_position_ids
from .distributed import DistInfo, all_reduce_sum


@torch.no_grad()
def evaluate(model: torch.nn.Module, rows: PackedRows, batch_size: int, info: DistInfo,
             max_rows: int | None = None, byte_lengths: torch.Tensor | None = None,
             autocast_dtype: torch.dtype | None = None, eos: int | None = None, whole_batches: bool = False) -> dict:
    """Next-token loss of ``model`` on the validation rows (each row predicts its tokens 1..seq_len-1).

    With ``eos`` the rows are packed documents (:func:`document_position_ids`): each document is scored alone and
    a token right after an EOS (a document's first) is not scored.

    ``byte_lengths`` ``(vocab,)``: UTF-8 bytes per token id, for bits per byte. Rows are shared out by
    rank and the sums reduced, so every rank gets the same result. ``whole_batches``: a last batch of fewer rows is
    filled up to ``batch_size`` with copies of its first row, which are not scored, so every call has one shape (a
    ``torch.compile``-d model then compiles one evaluation graph, not a second one for the remainder). Returns
    ``{"loss", "perplexity", "bits_per_byte", "tokens"}`` (loss in nats per token).
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # nll, tokens, bytes
    for batch in _every_rank_alike(rows, batch_size, max_rows, info):
        ids = batch.to(info.device)
        real = ids.shape[0]
        if real == 0:  # this rank's rows are done, the others' not: an unscored call (under FSDP every forward is
            ids = torch.from_numpy(rows.row(0))[None].to(info.device)  # a collective the other ranks wait in)
        if whole_batches and real < batch_size:
            ids = torch.cat([ids, ids[:1].expand(batch_size - real, -1)])
        positions = document_position_ids(ids, eos) if eos is not None else None
        with torch.autocast(info.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(input_ids=ids, position_ids=positions).logits[:real]
        ids, positions = ids[:real], None if positions is None else positions[:real]
        targets = ids[:, 1:]
        scored = positions[:, 1:] > 0 if positions is not None else torch.ones_like(targets, dtype=torch.bool)
        nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                              reduction="none")
        sums[0] += (nll * scored.reshape(-1)).sum().item()
        sums[1] += scored.sum().item()
        if byte_lengths is not None:
            sums[2] += byte_lengths[targets[scored].cpu()].sum().item()
    model.train(was_training)
    nll, tokens, nbytes = all_reduce_sum(sums, info).tolist()
    loss = nll / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
            "bits_per_byte": nll / math.log(2) / nbytes if nbytes > 0 else float("nan"), "tokens": int(tokens)}


def _every_rank_alike(rows: PackedRows, batch_size: int, max_rows: int | None, info: DistInfo):
    """This rank's evaluation batches (rows ``rank::world_size``), then empty ``(0, seq_len)`` batches until it has
    yielded as many as rank 0, which holds the most rows: every rank makes the same number of forward calls."""
    count = rows.num_rows if max_rows is None else min(rows.num_rows, max_rows)
    most = math.ceil(math.ceil(count / info.world_size) / batch_size)  # rank 0's batches
    made = 0
    for batch in rows.eval_batches(batch_size, max_rows, info.rank, info.world_size):
        made += 1
        yield batch
    for _ in range(most - made):
        yield torch.zeros(0, rows.seq_len, dtype=torch.long)


def unigram_perplexity(train_tokens: np.ndarray, rows: PackedRows, vocab_size: int,
                       max_rows: int | None = None, eos: int | None = None) -> float:
    """Perplexity of the add-one-smoothed unigram distribution of ``train_tokens`` on the same
    validation targets ``evaluate`` scores with the same ``eos`` (the baseline a language model must beat)."""
    counts = np.bincount(np.asarray(train_tokens), minlength=vocab_size).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    count = rows.num_rows if max_rows is None else min(rows.num_rows, max_rows)
    targets = [rows.row(i) for i in range(count)]
    if eos is not None:  # a token right after an EOS starts a document: not scored
        targets = [row[1:][row[:-1] != eos] for row in targets]
    else:
        targets = [row[1:] for row in targets]
    targets = np.concatenate(targets)
    return float(math.exp(-log_p[targets].mean()))
