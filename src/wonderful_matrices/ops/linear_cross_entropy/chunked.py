"""Linear layer + cross-entropy over a vocabulary, in chunks of tokens: the ``(n, V)`` logits never exist at once.

Per chunk of ``c`` tokens the forward computes the logits in the compute dtype (the autocast dtype when autocast
is on, as the LM head's ``nn.Linear`` would), reads them in float32, and from them the loss (``logsumexp −
logit[target]``) and, when a gradient is wanted, the gradient of the loss with respect to the logits
(``softmax − one_hot(target)``, zero on ignored rows, divided by the counted tokens for ``"mean"``), from which the
chunk's hidden gradient (``(c, V) @ (V, d)``) and its share of the weight gradient (``(V, c) @ (c, d)``, added into
a float32 accumulator) follow at once. The backward only scales those by the upstream gradient. Peak extra memory:
one chunk of logits plus the two gradients, instead of ``n × V`` float32 logits and their gradient.

The loop over chunks is one custom operator (:func:`chunk_losses`), opaque to ``torch.compile``. Traced, the loop's
gradient work is needed only by the backward, so AOTAutograd's partitioner moved it there and kept every chunk's
float32 logits from the forward to the backward instead of the two gradients: 4.3 GB at 32768 tokens and a
32768-word vocabulary (docs/results.md, session 17), growing with the tokens per step. Inside the operator the
rows of a chunk go through one Triton kernel (the ``"triton"`` backend, ``row_kernels.py``: the loss, and the
gradient written over the logits in their dtype) or through the PyTorch code below (``"torch"``).
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from ..common import autocast_dtype

MIN_CHUNK, MAX_CHUNK = 1024, 8192
MAX_CHUNK_LOGITS = 1 << 28  # elements of one chunk's logits (512 MB in bf16)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def default_chunk_size(n: int, d: int, vocab: int) -> int:
    """Tokens per chunk: the power of two at or above ``4·d``, so that each chunk's logits (``c·V``) outweigh the
    float32 read-modify-write of the ``(V, d)`` weight gradient the chunk adds into (``8·V·d`` bytes) — with 1024
    tokens at width 768 those writes made the loss 1.4x slower than with 4096 (docs/results.md, session 18) —
    within [1024, 8192], its logits at most 2^28 elements, and at most ``n``."""
    size = 1 << (4 * d - 1).bit_length()
    cap = max(MIN_CHUNK, MAX_CHUNK_LOGITS // max(1, vocab))
    return max(1, min(n, max(MIN_CHUNK, min(MAX_CHUNK, size, cap))))


def logits_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype of the logits matrix product: autocast's when it is on for the device, else the inputs'."""
    return autocast_dtype(hidden.device) or torch.promote_types(hidden.dtype, weight.dtype)


def _losses_fake(hidden, weight, targets, weights, chunk_size, with_grad, fused_rows):
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    n = hidden.shape[0]
    if not with_grad:
        return hidden.new_empty(n, dtype=acc), hidden.new_empty(0), hidden.new_empty(0, dtype=acc)
    return hidden.new_empty(n, dtype=acc), torch.empty_like(hidden), weight.new_empty(weight.shape, dtype=acc)


@torch.library.custom_op("wonderful_matrices::chunked_cross_entropy", mutates_args=())
def chunk_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                 chunk_size: int, with_grad: bool, fused_rows: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The chunk loop: hidden (n, d) and weight (V, d) in the logits' dtype, targets (n,) int64 in ``[0, V)``,
    weights (n,) float32 (float64 for float64 inputs): each row's share of the loss, 0 for an ignored row ->
    (losses (n,) ``logsumexp - logit[target]``, 0 for ignored rows; with ``with_grad`` the loss's gradients
    ``grad_hidden (n, d)`` in hidden's dtype and ``grad_weight (V, d)`` float32 (float64), else empty tensors).
    ``fused_rows``: each chunk's rows through the Triton kernel (not float64), else PyTorch."""
    acc = weights.dtype
    n = hidden.shape[0]
    losses = torch.empty(n, dtype=acc, device=hidden.device)
    grad_h = torch.empty_like(hidden) if with_grad else hidden.new_empty(0)
    grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if with_grad else hidden.new_empty(0, dtype=acc)
    if fused_rows:
        from .row_kernels import cross_entropy_rows
    with torch.autocast(hidden.device.type, enabled=False):
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            h_c, t_c, w_c = hidden[start:end], targets[start:end], weights[start:end]
            logits = h_c @ weight.T
            if fused_rows:  # the loss, and the gradient written over the logits
                cross_entropy_rows(logits, t_c, w_c, with_grad, out=losses[start:end])
                grad_logits = logits
            else:
                logits = logits.to(acc)
                lse = torch.logsumexp(logits, dim=-1)
                losses[start:end] = torch.where(w_c != 0, lse - logits.gather(1, t_c[:, None]).squeeze(1), 0)
                if with_grad:
                    probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                    probs.scatter_add_(1, t_c[:, None], probs.new_full((end - start, 1), -1.0))
                    grad_logits = probs.mul_(w_c[:, None]).to(hidden.dtype)
            if with_grad:
                torch.mm(grad_logits, weight, out=grad_h[start:end])
                if hidden.is_cuda and hidden.dtype in HALF_DTYPES:  # accumulated in the product's epilogue
                    grad_w = torch.addmm(grad_w, grad_logits.T, h_c, out_dtype=acc)
                else:
                    grad_w += (grad_logits.T @ h_c).to(acc)
    return losses, grad_h, grad_w


chunk_losses.register_fake(_losses_fake)


@register_flop_formula(torch.ops.wonderful_matrices.chunked_cross_entropy)
def _chunk_losses_flops(hidden_shape, weight_shape, targets_shape, weights_shape, chunk_size, with_grad, fused_rows,
                        out_shape=None, **kwargs) -> int:
    """``FlopCounterMode`` sees the operator, not the products inside it: the logits ``2·n·V·d``, with the gradient
    the two products of the backward too (computed here, in the forward)."""
    (n, d), vocab = hidden_shape, weight_shape[0]
    return 2 * n * vocab * d * (3 if with_grad else 1)


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """(hidden (n, d), weight (V, d), targets (n,), ignore_index, chunk_size, mean, with_grad, fused_rows) -> scalar
    loss."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, chunk_size, mean, with_grad, fused_rows):
        compute = logits_dtype(hidden, weight)
        acc = torch.float64 if compute == torch.float64 else torch.float32
        valid = targets != ignore_index
        count = valid.sum()
        scale = 1.0 / count.clamp_min(1).to(acc) if mean else torch.ones((), dtype=acc, device=hidden.device)
        losses, grad_h, grad_w = chunk_losses(hidden.to(compute), weight.to(compute), torch.where(valid, targets, 0),
                                              valid.to(acc) * scale, chunk_size, with_grad, fused_rows)
        total = losses.sum()
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
        return grad_hidden, grad_weight, None, None, None, None, None, None
