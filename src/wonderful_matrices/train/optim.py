"""The optimizer and the update step every training path shares (``wm train``, the language-model benches).

AdamW (fused on CUDA) with weight decay on matrices (parameters of two or more dimensions) and none on vectors
(norm scales, biases, ``A_log``, ``dt_bias``); an update is: clip the gradient norm, optimizer step, scheduler
step, clear the gradients.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch


def adamw(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95),
          eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters: ``weight_decay`` on those with ``ndim >= 2``, 0 on the rest.
    PyTorch's fused implementation where every parameter is a plain CUDA tensor (a few kernels per step instead of
    the default's multi-tensor passes; the same update); the default elsewhere (the CPU, FSDP2's sharded DTensors).
    :func:`make_capturable` lets its step be recorded in a CUDA graph."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = bool(params) and all(p.is_cuda and type(p.data) is torch.Tensor for p in params)
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
                              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                             lr=lr, betas=betas, eps=eps, fused=fused or None)


def apply_gradients(parameters: Iterable[torch.Tensor], optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    clip: float | None = None) -> torch.Tensor | None:
    """Clip the gradients of ``parameters`` to norm ``clip`` (None or 0: no clipping), step ``optimizer`` and
    ``scheduler``, clear the gradients. Returns the gradient norm before clipping (a 0-d tensor; None without
    clipping)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, clip) if clip else None
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Let ``optimizer`` (Adam / AdamW) be recorded in a CUDA graph from now on, whatever it was created or loaded
    with: ``capturable`` on, each group's learning rate a 0-d tensor on ``device`` (a scheduler fills it in place
    between replays, as :func:`.graph_step.set_learning_rate` does) and its step counts on ``device``."""
    for group in optimizer.param_groups:
        group["capturable"] = True
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
    for state in optimizer.state.values():
        if "step" in state:
            state["step"] = state["step"].to(device=device, dtype=torch.float32)


@contextlib.contextmanager
def own_options(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """``with own_options(opt): opt.load_state_dict(saved)`` — the loaded state keeps how this process runs the
    optimizer (``fused``, ``foreach``, ``capturable`` and a float learning rate where it had one), not how the saving
    process ran it: a state saved by a CUDA-graph run (capturable, device learning rate) loads into an eager run on
    any device, and the other way round (then :func:`make_capturable`)."""
    chosen = [({k: group.get(k) for k in ("fused", "foreach", "capturable")}, isinstance(group["lr"], torch.Tensor))
              for group in optimizer.param_groups]
    yield
    for group, (options, tensor_lr) in zip(optimizer.param_groups, chosen):
        group.update(options)
        if not tensor_lr and isinstance(group["lr"], torch.Tensor):
            group["lr"] = float(group["lr"])
