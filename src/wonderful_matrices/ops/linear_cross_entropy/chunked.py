"""Linear layer + cross-entropy over a vocabulary, in chunks of tokens: the ``(n, V)`` logits never exist at once.

Per chunk of ``c`` tokens the forward computes the logits in the compute dtype (the autocast dtype when autocast
is on, as the LM head's ``nn.Linear`` would), takes them to float32, and from them the loss (``logsumexp −
logit[target]``) and, when a gradient is wanted, the gradient of the loss with respect to the logits
(``softmax − one_hot(target)``, zero on ignored rows, divided by the counted tokens for ``"mean"``), from which the
chunk's hidden gradient (``(c, V) @ (V, d)``) and its share of the weight gradient (``(V, c) @ (c, d)``, added into
a float32 accumulator) follow at once. The backward only scales those by the upstream gradient. Peak extra memory:
one chunk of float32 logits plus the two gradients, instead of ``n × V`` float32 logits and their gradient.
"""
from __future__ import annotations

import torch

MIN_CHUNK, MAX_CHUNK = 1024, 8192


def default_chunk_size(n: int, d: int, vocab: int) -> int:
    """Tokens per chunk: a power of two near ``n·d / V`` (a chunk of logits about the size of the hidden states),
    within [1024, 8192], at most ``n``."""
    target = max(1, -(-n * d // vocab))
    size = 1 << (target - 1).bit_length()
    return max(1, min(n, max(MIN_CHUNK, min(MAX_CHUNK, size))))


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype of the logits matrix product: autocast's when it is on for the device, else the inputs'."""
    device = hidden.device.type
    if device in ("cuda", "cpu") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, weight.dtype)


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """(hidden (n, d), weight (V, d), targets (n,), ignore_index, chunk_size, mean, with_grad) -> scalar loss."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, chunk_size, mean, with_grad):
        compute = _compute_dtype(hidden, weight)
        acc = torch.float64 if compute == torch.float64 else torch.float32
        h, w = hidden.to(compute), weight.to(compute)
        n = h.shape[0]
        valid = targets != ignore_index
        count = valid.sum()
        scale = 1.0 / count.clamp_min(1).to(acc) if mean else torch.ones((), dtype=acc, device=h.device)
        total = torch.zeros((), dtype=acc, device=h.device)
        grad_h = torch.empty_like(h) if with_grad else None
        grad_w = torch.zeros(w.shape, dtype=acc, device=w.device) if with_grad else None
        with torch.autocast(h.device.type, enabled=False):
            for start in range(0, n, chunk_size):
                end = min(start + chunk_size, n)
                h_c, keep = h[start:end], valid[start:end]
                t_c = torch.where(keep, targets[start:end], 0)
                logits = (h_c @ w.T).to(acc)
                lse = torch.logsumexp(logits, dim=-1)
                picked = logits.gather(1, t_c[:, None]).squeeze(1)
                total += torch.where(keep, lse - picked, 0).sum()
                if with_grad:
                    probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                    probs.scatter_add_(1, t_c[:, None], -keep.to(acc)[:, None])
                    probs.mul_((keep.to(acc) * scale)[:, None])
                    grad_logits = probs.to(compute)
                    torch.mm(grad_logits, w, out=grad_h[start:end])
                    grad_w += (grad_logits.T @ h_c).to(acc)
        loss = total / count.to(acc) if mean else total
        if with_grad:
            ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        grad_hidden = (grad_h.to(grad_loss.dtype) * grad_loss).to(h_dtype) if ctx.needs_input_grad[0] else None
        grad_weight = (grad_w * grad_loss).to(w_dtype) if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None, None, None, None, None
