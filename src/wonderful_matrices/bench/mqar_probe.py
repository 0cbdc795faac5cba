"""What a bounded-window MQAR model gets right, by distance, and which keys its DMA windows keep (issue #15, 2(b)).

Accuracy by distance. Each labelled query of an MQAR row (:mod:`wonderful_matrices.data.mqar`) asks for the value
of one key of the row's kv section; its distance ``d`` is the number of tokens from the query back to that key (the
value sits ``d − 1`` back). For a window ``w`` (``keep_window``, or the SSD state size matched to it) the queries
fall in three bins (:data:`DISTANCE_BINS`): ``d < w`` (the key inside one window of the query), ``d >= w`` with
the value within ``2w − 1`` tokens (``d − 1 < 2w − 1``: two stacked sliding windows reach it, one alone does not),
and the value beyond ``2w − 1`` (no 2-layer sliding-window model reaches it: a query there is answered only by a
mask that keeps far keys, a recurrent state, or a guess).

Kept keys. :class:`KeptKeysProbe` records, by forward hooks on each windowed DMA layer's ``v_proj``, the bias the
layer computes from those value states (the layer's own :meth:`key_bias`), and from it the keys the window keeps
with the op's own selection (:func:`~wonderful_matrices.ops.dma.selection.live_keys`: query position ``p`` keeps
key ``j`` exactly when ``j <= p < drop_j``). At each labelled query it counts the kv section's key and value
positions kept, and whether the query's own pair is kept.
"""
from __future__ import annotations

import torch

from ..data.mqar import IGNORE_INDEX
from ..errors import require
from ..layers.dma import DynamicMaskAttention
from ..ops.dma.selection import default_block, live_keys

DISTANCE_BINS = ("d < w", "w <= d, value within 2w-1", "value beyond 2w-1")


def query_distances(inputs: torch.Tensor, labels: torch.Tensor, num_kv_pairs: int) -> torch.Tensor:
    """``inputs, labels (b, l)`` MQAR rows of ``num_kv_pairs`` pairs -> ``(n,)`` long: for each of the ``n``
    labelled positions (row by row, in position order: the order of ``labelled_logits``) the tokens from it back
    to its key in the kv section (the key at ``2·pair``, its value at ``2·pair + 1``)."""
    rows, pos = (labels != IGNORE_INDEX).nonzero(as_tuple=True)
    match = inputs[rows, : 2 * num_kv_pairs : 2] == inputs[rows, pos][:, None]  # (n, pairs)
    require(bool(match.any(1).all()), "inputs", "rows with a query whose token is no key of the kv section",
            f"MQAR rows of num_kv_pairs={num_kv_pairs}")
    return pos - 2 * match.int().argmax(1)


def distance_bins(distances: torch.Tensor, window: int) -> list[tuple[str, torch.Tensor]]:
    """``distances (n,)`` -> ``[(name, mask (n,) bool)]`` of :data:`DISTANCE_BINS` for window ``window``."""
    require(isinstance(window, int) and window >= 1, "window", window, "an int >= 1")
    value = distances - 1  # tokens back to the value
    return list(zip(DISTANCE_BINS, (distances < window, (distances >= window) & (value < 2 * window - 1),
                                    value >= 2 * window - 1)))


def accuracy_by_distance(distances: torch.Tensor, correct: torch.Tensor, window: int) -> list[dict]:
    """``distances (n,)`` of :func:`query_distances`, ``correct (n,)`` bool -> one dict per bin of
    :func:`distance_bins`: ``{"bin", "queries", "share", "accuracy"}`` (share of the ``n`` queries; accuracy None
    for an empty bin; both to 4 digits)."""
    require(distances.shape == correct.shape, "correct.shape", tuple(correct.shape), f"{tuple(distances.shape)}")
    n = max(1, distances.numel())
    out = []
    for name, sel in distance_bins(distances, window):
        count = int(sel.sum())
        acc = round(float(correct[sel].float().mean()), 4) if count else None
        out.append({"bin": name, "queries": count, "share": round(count / n, 4), "accuracy": acc})
    return out


def windowed_dma_layers(model) -> list[DynamicMaskAttention]:
    """The DMA layers of ``model`` with a window and a learned mask (``mask_form != "none"``), in module order."""
    return [m for m in model.modules()
            if isinstance(m, DynamicMaskAttention) and m.keep_window is not None and m.mask_form != "none"]


class KeptKeysProbe:
    """Which kv-section keys each windowed, learned-mask DMA layer of ``model`` keeps at MQAR's labelled queries.

    A context manager: while open, a forward hook on each such layer's ``v_proj`` stores the layer's bias
    ``key_bias(v) (b, l, hkv)`` of that forward. After each forward of a batch call :meth:`update` with the batch's
    rows; :meth:`summary` gives the means over all queries so far. The model's outputs are untouched.
    """

    def __init__(self, model, num_kv_pairs: int):
        require(isinstance(num_kv_pairs, int) and num_kv_pairs >= 1, "num_kv_pairs", num_kv_pairs, "an int >= 1")
        self.layers = windowed_dma_layers(model)
        self.num_kv_pairs = num_kv_pairs
        self._bias: dict[int, torch.Tensor] = {}
        self._handles: list = []
        # per layer, (n, 5) per query, averaged over KV heads: kv keys kept, kv values kept, own key, value, pair
        self._stats: list[list[torch.Tensor]] = [[] for _ in self.layers]
        self._distances: list[torch.Tensor] = []

    def __enter__(self) -> KeptKeysProbe:
        for i, layer in enumerate(self.layers):
            def hook(module, args, output, i=i, layer=layer):
                self._bias[i] = layer.key_bias(output).detach()
            self._handles.append(layer.v_proj.register_forward_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @torch.no_grad()
    def update(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """Count the keys kept at the labelled positions of ``inputs, labels (b, l)``, the rows of the forward
        that just ran (each layer's stored bias is used once)."""
        require(len(self._bias) == len(self.layers), "update", "a call without a forward of every layer before it",
                "one call after each forward of the model")
        pairs = self.num_kv_pairs
        distances = query_distances(inputs, labels, pairs)
        rows, pos = (labels != IGNORE_INDEX).nonzero(as_tuple=True)
        pair = (pos - distances) // 2
        kv = torch.arange(2 * pairs, device=inputs.device)
        for i, layer in enumerate(self.layers):
            bias = self._bias.pop(i)
            b, l, hkv = bias.shape
            w, block = layer.keep_window, default_block(layer.keep_window)
            drop = live_keys(bias.permute(0, 2, 1).reshape(b * hkv, l), l, w, block, tile=block)[0]
            drop = drop.view(b, hkv, l)[rows][..., : 2 * pairs].long()  # (n, hkv, 2 pairs)
            kept = (kv <= pos[:, None])[:, None] & (pos[:, None, None] < drop)  # (n, hkv, 2 pairs)
            own = kept.gather(2, torch.stack([2 * pair, 2 * pair + 1], 1)[:, None].expand(-1, hkv, -1)).float()
            kept = kept.float()
            self._stats[i].append(torch.stack([kept[..., 0::2].mean(-1), kept[..., 1::2].mean(-1), own[..., 0],
                                               own[..., 1], own[..., 0] * own[..., 1]], -1).mean(1).cpu())
        self._distances.append(distances.cpu())

    def summary(self, window: int) -> list[dict]:
        """One dict per layer: ``layer`` (its ``layer_idx``), ``kv_keys_kept`` / ``kv_values_kept`` (mean fraction
        of the kv section's key / value positions a labelled query keeps), ``own_key_kept`` / ``own_value_kept`` /
        ``own_pair_kept`` (fraction of queries keeping their own pair's key / value / both), and
        ``own_pair_kept_by_distance`` (the last per bin of :func:`distance_bins` at ``window``; None for an empty
        bin). With several KV heads each counts as the fraction of heads keeping it. 4 digits."""
        distances = torch.cat(self._distances) if self._distances else torch.zeros(0, dtype=torch.long)
        bins = distance_bins(distances, window)
        out = []
        for layer, stats in zip(self.layers, self._stats):
            s = torch.cat(stats) if stats else torch.zeros(0, 5)
            out.append({"layer": layer.layer_idx, "kv_keys_kept": _mean(s[:, 0]), "kv_values_kept": _mean(s[:, 1]),
                        "own_key_kept": _mean(s[:, 2]), "own_value_kept": _mean(s[:, 3]),
                        "own_pair_kept": _mean(s[:, 4]),
                        "own_pair_kept_by_distance": [_mean(s[sel, 4]) for _, sel in bins]})
        return out


def _mean(x: torch.Tensor) -> float | None:
    return round(float(x.mean()), 4) if x.numel() else None
