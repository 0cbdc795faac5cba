"""Multi-process training on one engine: torchrun detection, process group, DDP / FSDP2 wrapping.

Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) the process group uses NCCL on CUDA and
gloo on CPU. Rank 0 alone logs and writes files; data is sharded by rank in ``data.packing``.
Full (unsharded) model and optimizer states for checkpoints go through
``torch.distributed.checkpoint.state_dict``, so DDP, FSDP2 and a plain module share one code path.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from ..errors import UserError


@dataclass
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its host, its ``device``."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on the rank that logs and saves."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one member is running."""
        return self.world_size > 1


def resolve_device(name: str | None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU; otherwise the named device (checked)."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: got {name!r}, expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device: got {name!r}, expected auto, cpu, cuda or cuda:N")
    return device


def init_distributed(device_name: str | None = None) -> DistInfo:
    """Start the process group when launched by torchrun; return this process's ``DistInfo``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(0, 0, 1, resolve_device(device_name))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return DistInfo(rank, local_rank, world_size, device)


def shutdown(info: DistInfo, wait: bool = True) -> None:
    """Tear the process group down (no-op for one process); ``wait``: after every rank has arrived. A rank leaving
    on an error does not wait: the others may be inside a collective that it will never join, and they end with a
    connection error once it is gone (torchrun then stops them all) instead of waiting forever."""
    if info.distributed and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank."""
    if info.distributed:
        dist.barrier()


def all_reduce_sum_in_place(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``values`` over ranks where they are (on the GPU with NCCL: queued on the stream, no host
    synchronisation); returns ``values`` (unchanged for one process)."""
    if info.distributed:
        dist.all_reduce(values)
    return values


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a float64 tensor over ranks (returns a new tensor; unchanged for one process)."""
    values = values.detach().to(torch.float64).clone()
    if info.distributed:
        moved = values.to(info.device)
        dist.all_reduce(moved)
        values = moved.cpu()
    return values


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj, info: DistInfo) -> list | None:
    """Every rank's ``obj``, as a list on rank 0 (``None`` elsewhere)."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def wrap_model(model: torch.nn.Module, info: DistInfo, fsdp: bool) -> torch.nn.Module:
    """DDP (default) or FSDP2 (``fsdp=True``: each block in ``model._no_split_modules``, then the root).

    Returns the module to call; for one process, ``model`` itself.
    """
    if not info.distributed:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        block_names = set(getattr(model, "_no_split_modules", None) or [])
        for module in model.modules():
            if type(module).__name__ in block_names:
                fully_shard(module)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The underlying HF model of a DDP wrapper (FSDP2 modules are the model itself)."""
    if hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.module
    return model


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded model weights on CPU (every rank must call; complete on rank 0).

    A weight shared by several names (tied embeddings) appears once, under its first name, as
    ``named_parameters`` lists it (gathered FSDP shards no longer share storage, so this is done here).
    """
    state = get_model_state_dict(model, options=_FULL)
    first_name = {}
    for name, param in unwrap(model).named_parameters(remove_duplicate=False):
        if id(param) in first_name:
            state.pop(name, None)
        else:
            first_name[id(param)] = name
    return state


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Unsharded optimizer state keyed by parameter names, on CPU (every rank must call)."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a state made by ``full_optimizer_state`` into this rank's (possibly sharded) optimizer."""
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of every weight's bytes in name order (full weights; every rank must call)."""
    h = hashlib.sha256()
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))  # on every rank
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
