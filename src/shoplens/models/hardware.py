"""What the CPU a model runs on can do safely and fast (checked once per process)."""

from __future__ import annotations

import functools

import torch
from torch import nn


@functools.lru_cache(maxsize=1)
def cpu_has_avx512() -> bool:
    """Whether torch runs its AVX-512 CPU kernels here."""
    probe = getattr(torch.cpu, "_is_avx512_supported", None)
    return bool(probe is not None and probe())


def channels_last_hazards(model: nn.Module) -> list[str]:
    """Convolutions of ``model`` whose channels-last backward corrupts memory on this CPU.

    oneDNN's AVX2 kernel for the weight gradient of a 1x1, stride-2 convolution with 2 to
    7 input channels writes past its buffers in channels-last (torch 2.14.1 on an
    AVX2-only AMD EPYC: "double free or corruption" aborts and segfaults in training,
    from a batch of 8). Empty on CPUs with AVX-512, which run other kernels.
    """
    if cpu_has_avx512():
        return []
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
        and m.kernel_size == (1, 1)
        and m.stride != (1, 1)
        and 1 < m.in_channels < 8
    ]
