"""DDP in a few explicit lines: process group from torchrun's environment, rank-0 duties.

Launch any training entry point with ``torchrun --nproc_per_node=N -m MODULE ...``:
:func:`init_from_env` reads ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR``
and joins the group (NCCL on CUDA, Gloo on CPU). Without torchrun everything is a no-op
and the world is one process. Only rank 0 logs, checkpoints and tracks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from shoplens.errors import InvalidInputError

StepFn = Callable[[Any], dict[str, Tensor]]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the world size and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs, checkpoints and tracks."""
        return self.rank == 0


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available (this process's GPU under DDP), else CPU."""
    if preference not in ("auto", "cpu", "cuda"):
        raise InvalidInputError(f"device {preference!r} is not one of 'auto', 'cpu', 'cuda'")
    if preference == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("device='cuda' but no CUDA GPU is available; use 'auto' or 'cpu'")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_from_env(device: str = "auto") -> DistInfo:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (idempotent); else one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = resolve_device(device, local_rank)
    if world_size == 1 and not dist.is_initialized():
        return DistInfo(device=torch_device)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch_device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), torch_device)


def cleanup() -> None:
    """Leave the process group (call once at the end of a torchrun entry point)."""
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def session(device: str = "auto") -> Iterator[DistInfo]:
    """``with session() as info:`` joins the group (under torchrun) and always leaves it."""
    try:
        yield init_from_env(device)
    finally:
        cleanup()


class _TrainingStep(nn.Module):
    """Routes ``forward`` to ``model.training_step`` so DDP sees the call it hooks into."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> dict[str, Tensor]:
        return self.model.training_step(batch)  # type: ignore[no-any-return,operator]


def wrap_model(model: nn.Module, info: DistInfo) -> StepFn:
    """The callable computing ``model.training_step(batch)``; DDP-synchronised if world > 1.

    DDP broadcasts rank 0's weights when it wraps the model, so all ranks start equal.
    Parameters a step may leave unused (an auxiliary head without labels in the batch, a
    locked tower, a projection not on the loss path) are allowed.
    """
    if info.world_size == 1:
        return model.training_step  # type: ignore[return-value]
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(
        _TrainingStep(model), device_ids=device_ids, find_unused_parameters=True
    )


def sync_gradients(step_fn: StepFn, sync: bool) -> AbstractContextManager[Any]:
    """Context for one micro-batch: skips the gradient all-reduce unless ``sync`` is True."""
    if isinstance(step_fn, DistributedDataParallel) and not sync:
        return step_fn.no_sync()
    return nullcontext()


def mean_over_ranks(t: Tensor, info: DistInfo) -> Tensor:
    """Average ``t`` across ranks (in place under DDP); ``t`` itself on one process."""
    if info.world_size > 1:
        dist.all_reduce(t)
        t /= info.world_size
    return t


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, indexed by rank (a collective: all ranks must call it)."""
    if info.world_size == 1:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
