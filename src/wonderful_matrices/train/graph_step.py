"""A whole training step — forward, backward, gradient clipping, optimizer step — replayed from a CUDA graph.

A small model (the 2-layer MQAR models, a tiny LM) launches a few hundred kernels per training step and each
launch costs the CPU ~10–25 µs, so its step time is set by the launches, not by the GPU. Recording the step once
as a CUDA graph and replaying it costs one launch per step. The step must then have fixed shapes and no host
synchronisation (the model's value checks are off during capture, see ``ops.common.value_checks_enabled``), and
the optimizer must keep its state on the GPU: ``torch.optim.Adam``/``AdamW`` with ``capturable=True`` and a
tensor learning rate, so that a schedule can change it between replays (:func:`set_learning_rate`).

    opt = torch.optim.AdamW(model.parameters(), lr=torch.tensor(1e-3, device="cuda"), capturable=True)
    step = GraphedTrainStep(lambda x, y: loss_fn(model(x), y), model.parameters(), opt, max_grad_norm=1.0)
    for x, y in batches:
        set_learning_rate(opt, schedule(i))
        loss = step(x, y)          # a 0-d tensor; read it when needed (reading waits for the GPU)

The first ``warmup_steps`` calls run eagerly on a side stream (lazy initialisations, Triton autotuning and the
optimizer's state happen there); the next call records the graph and replays it, and every later call copies its
inputs into the graph's input buffers and replays. Every call is one real training step, recorded or not. Off
CUDA, with ``use_graph=False`` or after a failed recording (``failed`` says why) every step runs eagerly.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable

import torch

_log = logging.getLogger(__name__)


def _signature(tensors) -> list[tuple]:
    return [(tuple(t.shape), t.dtype, t.device) for t in tensors]


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate to ``lr``, in place when it is a tensor (as a recorded graph
    reads it)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


class GraphedTrainStep:
    """``loss_fn(*inputs)`` -> 0-d loss, then backward, clipping and ``optimizer.step()``, as one CUDA graph.

    Args:
        loss_fn: builds the loss from the step's input tensors (autocast, if any, inside it).
        parameters: the parameters ``optimizer`` updates (gradients are clipped over them).
        optimizer: on CUDA, an optimizer created with ``capturable=True`` (and a tensor ``lr`` for schedules), or
            made so by :func:`.optim.make_capturable`.
        max_grad_norm: clip the global gradient norm to this (None: no clipping).
        warmup_steps: eager steps before the recording (>= 1).
        use_graph: record a graph when possible (default: when CUDA is available).
        micro_batches: gradient accumulation inside the step: every input's first dimension holds this many
            micro-batches, ``loss_fn`` runs on each in turn (its backward before the next one's forward, so one
            micro-batch's activations live at a time) and the gradients are those of the micro-batches' mean loss.
            None: ``loss_fn`` gets the inputs whole.

    ``__call__(*inputs)`` -> the step's loss (0-d tensor; with ``micro_batches``, the micro-batches' mean). Every call
    must pass tensors of the shapes, dtypes and device of the first; with a graph the returned loss is the graph's
    buffer, overwritten by the next step. ``grad_norm``: the last step's gradient norm before clipping (0-d tensor,
    likewise a buffer; None without ``max_grad_norm``).
    """

    def __init__(self, loss_fn: Callable[..., torch.Tensor], parameters: Iterable[torch.nn.Parameter],
                 optimizer: torch.optim.Optimizer, max_grad_norm: float | None = 1.0, warmup_steps: int = 3,
                 use_graph: bool | None = None, micro_batches: int | None = None):
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps={warmup_steps!r} is not allowed: must be >= 1")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm={max_grad_norm!r} is not allowed: must be > 0 or None")
        if micro_batches is not None and micro_batches < 1:
            raise ValueError(f"micro_batches={micro_batches!r} is not allowed: must be >= 1 or None")
        self.loss_fn, self.optimizer = loss_fn, optimizer
        self.parameters = [p for p in parameters if p.requires_grad]
        self.max_grad_norm, self.warmup_steps, self.micro_batches = max_grad_norm, warmup_steps, micro_batches
        self.use_graph = torch.cuda.is_available() if use_graph is None else bool(use_graph)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed: str | None = None
        self.steps = 0
        self._inputs: tuple[torch.Tensor, ...] | None = None
        self._recorded_signature: list | None = None
        self._loss: torch.Tensor | None = None
        self.grad_norm: torch.Tensor | None = None
        self._stream: torch.cuda.Stream | None = None

    @property
    def recorded(self) -> bool:
        """Whether steps now replay a CUDA graph."""
        return self.graph is not None

    def _step_body(self, *inputs: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        if self.micro_batches is None:
            loss = self.loss_fn(*inputs)
            loss.backward()
            loss = loss.detach()
        else:
            if any(len(t) != self.micro_batches for t in inputs):
                raise ValueError(f"inputs={_signature(inputs)} is not allowed: with micro_batches="
                                 f"{self.micro_batches} every input's first dimension must be {self.micro_batches}")
            loss = 0
            for i in range(self.micro_batches):
                part = self.loss_fn(*(t[i] for t in inputs)) / self.micro_batches
                part.backward()
                loss = loss + part.detach()
        if self.max_grad_norm is not None:
            self.grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
        self.optimizer.step()
        return loss

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        if self.graph is not None:
            if _signature(inputs) != self._recorded_signature:
                raise ValueError(f"inputs={_signature(inputs)} is not allowed: a recorded step takes "
                                 f"{self._recorded_signature}, the shapes, dtypes and device it was recorded with")
            for buffer, value in zip(self._inputs, inputs):
                buffer.copy_(value, non_blocking=True)
            self.graph.replay()
            return self._loss
        on_graph_device = self.use_graph and self.failed is None and all(t.is_cuda for t in inputs)
        if not on_graph_device:
            return self._step_body(*inputs)
        device = inputs[0].device
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        if self.steps <= self.warmup_steps:   # eager, on the stream the graph will be recorded on
            self._stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(self._stream):
                loss = self._step_body(*inputs)
            torch.cuda.current_stream(device).wait_stream(self._stream)
            return loss
        return self._record_and_replay(inputs, device)

    def _record_and_replay(self, inputs: tuple[torch.Tensor, ...], device: torch.device) -> torch.Tensor:
        self._inputs = tuple(t.clone() for t in inputs)
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        try:
            self.optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph, stream=self._stream):
                self._loss = self._step_body(*self._inputs)
        except Exception as error:  # noqa: BLE001 - any capture failure (e.g. an op that synchronises): train eagerly
            self.failed = f"{type(error).__name__}: {error}"
            self._inputs = self._loss = None
            _log.warning("training step not recorded as a CUDA graph (%s); running eagerly", self.failed)
            torch.cuda.synchronize(device)
            return self._step_body(*inputs)
        self.graph, self._recorded_signature = graph, _signature(self._inputs)
        graph.replay()   # recording does not run the step: this is the step of this call
        return self._loss
