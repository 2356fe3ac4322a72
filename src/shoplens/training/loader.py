"""Data feeding for the loop: a resumable, seeded DataLoader and batch helpers.

The order of an epoch is a pure function of ``(seed, epoch)`` (``DistributedSampler``,
also with one process), so a resumed run can skip straight to its position in the epoch
without loading the skipped batches. Worker seeds come from the loader's generator,
re-seeded every epoch; torch seeds ``torch``, ``random`` and ``numpy`` in each worker.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from shoplens.errors import InvalidInputError
from shoplens.training.config import TrainConfig
from shoplens.training.distributed import DistInfo


class ResumableSampler(Sampler[int]):
    """A ``DistributedSampler`` (shuffled, seeded) that can start mid-epoch."""

    def __init__(self, dataset: Dataset[Any], info: DistInfo, seed: int) -> None:
        self.inner: DistributedSampler[Any] = DistributedSampler(
            dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed
        )
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        """Shuffle for ``epoch`` and drop its first ``skip`` samples."""
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.skip, None)

    def __len__(self) -> int:
        return len(self.inner) - self.skip


def build_loader(
    data: Dataset[Any] | DataLoader[Any],
    cfg: TrainConfig,
    info: DistInfo,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader[Any]:
    """The DataLoader the loop iterates: ``data`` itself if it is one, else a seeded one."""
    if isinstance(data, DataLoader):
        if info.world_size > 1 and not isinstance(data.sampler, DistributedSampler):
            raise InvalidInputError(
                "under DDP pass a Dataset (the loop shards it) or a DataLoader with a "
                "DistributedSampler"
            )
        return data
    if not hasattr(data, "__len__"):
        raise InvalidInputError(
            "train_data must be a map-style Dataset with a length, or a DataLoader"
        )
    return DataLoader(
        data,
        batch_size=cfg.batch_size,
        sampler=ResumableSampler(data, info, cfg.seed),
        num_workers=cfg.num_workers,
        drop_last=cfg.drop_last,
        pin_memory=info.device.type == "cuda",
        generator=torch.Generator(),
        collate_fn=collate_fn,
    )


def epoch_batches(loader: DataLoader[Any], epoch: int, skip: int, seed: int) -> Iterator[Any]:
    """Batches of ``epoch``, after its first ``skip`` batches."""
    sampler = loader.sampler
    if isinstance(sampler, ResumableSampler):
        sampler.set_position(epoch, skip * (loader.batch_size or 1))
        skip = 0
    elif hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(seed + epoch)
    _set_dataset_epoch(loader.dataset, epoch)
    return itertools.islice(iter(loader), skip, None)


def _set_dataset_epoch(dataset: Any, epoch: int) -> None:
    """Call ``set_epoch`` of the dataset (or of the one a ``Subset`` wraps), when it has one:
    e.g. fresh text phrasings each epoch."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    if callable(getattr(dataset, "set_epoch", None)):
        dataset.set_epoch(epoch)


def to_device(
    batch: Any, device: torch.device, memory_format: torch.memory_format | None = None
) -> Any:
    """``batch`` with every tensor (in dicts, lists, tuples) moved to ``device``; 4-d
    tensors (images) also converted to ``memory_format`` when given (e.g. channels_last)."""
    if isinstance(batch, Tensor):
        out = batch.to(device, non_blocking=True)
        if memory_format is not None and out.ndim == 4:
            out = out.contiguous(memory_format=memory_format)
        return out
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, memory_format) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(to_device(v, device, memory_format) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, memory_format) for v in batch)
    return batch


def batch_len(batch: Any) -> int:
    """Number of samples in ``batch``: the first dimension of its first tensor (else 0)."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        return next((n for n in map(batch_len, batch) if n), 0)
    return 0
