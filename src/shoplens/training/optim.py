"""AdamW with sensible weight-decay groups, and the learning-rate schedules.

Schedules are ``torch.optim.lr_scheduler`` objects stepped once per optimizer step:
``cosine`` and ``constant`` are a :class:`~torch.optim.lr_scheduler.LambdaLR` over
:func:`lr_factor` (linear warm-up, then cosine decay to ``min_lr_ratio`` or flat),
``onecycle`` is :class:`~torch.optim.lr_scheduler.OneCycleLR`.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from shoplens.training.config import Schedule, TrainConfig

ONECYCLE_DEFAULT_WARMUP = 0.3  # torch's pct_start, used when no warm-up is configured
ONECYCLE_DIV_FACTOR = 25.0  # torch's default: the warm-up starts at lr / 25


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Two AdamW groups: decayed matrices/kernels, and undecayed everything else.

    Biases, norm scales and other parameters with fewer than 2 dimensions get no weight
    decay, nor do names listed by ``model.no_weight_decay()`` (the timm convention for
    position embeddings and class tokens).
    """
    skip = set(getattr(model, "no_weight_decay", lambda: ())())
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name in skip or name.rsplit(".", 1)[-1] in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with ``cfg.lr``, ``cfg.betas``, ``cfg.weight_decay``."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)


def lr_factor(step: int, *, total: int, warmup: int, min_ratio: float, schedule: Schedule) -> float:
    """Multiplier of the base lr at ``step``: linear warm-up, then cosine or constant."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> LRScheduler:
    """The lr schedule of ``cfg.schedule`` spanning ``total_steps`` optimizer steps."""
    warmup = cfg.warmup(total_steps)
    if cfg.schedule == "onecycle":
        pct_start = warmup / total_steps if warmup else ONECYCLE_DEFAULT_WARMUP
        final_div = 1.0 / (ONECYCLE_DIV_FACTOR * cfg.min_lr_ratio) if cfg.min_lr_ratio else 1e4
        return OneCycleLR(
            optimizer,
            max_lr=cfg.lr,
            total_steps=total_steps,
            pct_start=pct_start,
            div_factor=ONECYCLE_DIV_FACTOR,
            final_div_factor=final_div,
        )
    factor = partial(
        lr_factor,
        total=total_steps,
        warmup=warmup,
        min_ratio=cfg.min_lr_ratio,
        schedule=cfg.schedule,
    )
    return LambdaLR(optimizer, factor)
