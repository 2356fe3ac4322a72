"""What the CPU a model runs on can do safely and fast (checked once per process)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch
from torch import nn


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str | None, frozenset[str]]:
    """(model name, feature flags) of the first processor in /proc/cpuinfo (x86 "flags",
    Arm "Features"); (None, empty) where it cannot be read. All cores of a machine
    report the same."""
    model: str | None = None
    flags: frozenset[str] = frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model is None:
                model = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and not flags:
                flags = frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU with bf16, or a CPU
    with AVX512-BF16 or AMX (x86) or the BF16 extension (Arm). Elsewhere torch emulates
    bf16 matmuls and convolutions, measured ~100x slower than fp32 on an AVX2 EPYC."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return True  # e.g. MPS: autocast decides
    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        probe = getattr(torch.cpu, check, None)
        if probe is not None and probe():
            return True
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in cpu_info()[1]
    return False


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
