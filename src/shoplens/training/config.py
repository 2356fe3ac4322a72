"""``TrainConfig``: every knob of the training loop, typed and checked on creation.

Load it like any shoplens config (defaults <- YAML <- ``train.lr=3e-4`` overrides) with
:func:`shoplens.config.load_config`; a bad value fails here with the allowed range.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from shoplens.errors import InvalidInputError

RECIPES = Path(__file__).parent / "recipes"  # the built-in YAML recipes


def list_recipes() -> list[str]:
    """Names of the built-in YAML recipes (``shoplens train --config NAME``)."""
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


Schedule = Literal["cosine", "onecycle", "constant"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["fp32", "bf16"]


@dataclass
class TrainConfig:
    """Hyper-parameters and run settings of :func:`shoplens.training.fit`.

    A *step* is one optimizer update, i.e. ``accum_steps`` micro-batches of ``batch_size``
    samples (per process under DDP).
    """

    epochs: int = 10
    max_steps: int | None = None  # stop after this many steps (the schedule spans them)
    max_minutes: float | None = None  # wall-clock budget: stop cleanly (checkpoint, model)
    batch_size: int = 64
    drop_last: bool = False  # drop the last, smaller batch of each epoch
    lr: float = 1e-3
    weight_decay: float = 0.05  # AdamW; never applied to biases, norms, 1-d parameters
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0  # linear warm-up; when 0, warmup_ratio * total steps
    warmup_ratio: float = 0.0
    schedule: Schedule = "cosine"
    min_lr_ratio: float = 0.0  # final lr = lr * min_lr_ratio (cosine, onecycle)
    grad_clip: float | None = 1.0  # max global gradient norm; None = off
    accum_steps: int = 1  # micro-batches per optimizer step
    ema_decay: float | None = None  # exponential moving average of the weights; None = off
    seed: int = 0
    num_workers: int = 0  # DataLoader worker processes
    log_every: int = 50  # steps between logged training metrics
    eval_every_epochs: int = 1  # eval_fn runs every N epochs and at the end
    checkpoint_every_steps: int | None = None  # plus one at every epoch end
    device: Device = "auto"
    precision: Precision = "fp32"  # bf16 = autocast to bfloat16 (no loss scaling needed)
    channels_last: bool = False  # NHWC images and conv weights (faster with bf16 on CPU)
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower)

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "accum_steps", "log_every", "eval_every_epochs"):
            _check_range(key, getattr(self, key), low=1)
        for key in ("max_steps", "checkpoint_every_steps"):
            if getattr(self, key) is not None:
                _check_range(key, getattr(self, key), low=1)
        if self.max_minutes is not None:
            _check_range("max_minutes", self.max_minutes, low=0.0, low_open=True)
        _check_range("warmup_steps", self.warmup_steps, low=0)
        _check_range("num_workers", self.num_workers, low=0)
        _check_range("lr", self.lr, low=0.0, low_open=True)
        _check_range("weight_decay", self.weight_decay, low=0.0)
        _check_range("warmup_ratio", self.warmup_ratio, low=0.0, high=1.0, high_open=True)
        _check_range("min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)
        for i, beta in enumerate(self.betas):
            _check_range(f"betas[{i}]", beta, low=0.0, high=1.0, high_open=True)
        if self.grad_clip is not None:
            _check_range("grad_clip", self.grad_clip, low=0.0, low_open=True)
        if self.ema_decay is not None:
            _check_range(
                "ema_decay",
                self.ema_decay,
                low=0.0,
                high=1.0,
                low_open=True,
                high_open=True,
            )
        for key, kind in (("schedule", Schedule), ("device", Device), ("precision", Precision)):
            value = getattr(self, key)
            if value not in get_args(kind):
                choices = ", ".join(repr(c) for c in get_args(kind))
                raise InvalidInputError(f"train.{key}: {value!r} is not one of {choices}")

    def warmup(self, total_steps: int) -> int:
        """Warm-up length in steps: ``warmup_steps``, else ``warmup_ratio`` of the run."""
        steps = self.warmup_steps or round(self.warmup_ratio * total_steps)
        return min(steps, total_steps)


def _check_range(
    key: str,
    value: float,
    *,
    low: float,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    too_low = value <= low if low_open else value < low
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        upper = "inf)" if high is None else f"{high}{right}"
        raise InvalidInputError(f"train.{key}: {value!r} is out of range {left}{low}, {upper}")
