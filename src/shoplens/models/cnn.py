"""Small ResNet-style CNN image tower for small product photos (28-64 px).

A 3x3 stem, then one stage per entry of ``widths`` made of ``depths[i]`` torchvision
``BasicBlock`` s (the first block of every stage after the first halves the resolution),
global average pooling, dropout and an optional linear head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1

from shoplens.errors import InvalidInputError
from shoplens.models.common import ImageTower, ImageTowerBase, check_positive
from shoplens.models.hardware import channels_last_hazards


@dataclass(frozen=True)
class CNNConfig(ImageTowerBase):
    """ResNet-style tower: ``widths`` channels per stage, ``depths`` blocks per stage."""

    type: Literal["cnn"] = "cnn"
    widths: tuple[int, ...] = (32, 64, 128)
    depths: tuple[int, ...] = (1, 1, 1)
    stem_stride: int = 1
    dropout: float = 0.0
    channels_last: bool = True


def _stage(in_ch: int, out_ch: int, depth: int, stride: int) -> nn.Sequential:
    """``depth`` BasicBlocks; the first one changes width/resolution via a 1x1 shortcut."""
    down = None
    if stride != 1 or in_ch != out_ch:
        down = nn.Sequential(conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))
    blocks = [BasicBlock(in_ch, out_ch, stride, down)]
    blocks += [BasicBlock(out_ch, out_ch) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


class CNNTower(ImageTower):
    """(B, 3, H, W) in [0, 1] -> (B, out_dim) (``widths[-1]`` without a head)."""

    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__(cfg)
        if not cfg.widths or len(cfg.widths) != len(cfg.depths):
            raise InvalidInputError(
                f"cnn: widths and depths need the same non-zero length, got "
                f"{list(cfg.widths)} and {list(cfg.depths)}"
            )
        check_positive("cnn", stem_stride=cfg.stem_stride, **_named(cfg.widths, cfg.depths))
        if not 0.0 <= cfg.dropout < 1.0:
            raise InvalidInputError(f"cnn: dropout must be in [0, 1), got {cfg.dropout}")
        w0 = cfg.widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(3, w0, 3, stride=cfg.stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(w0),
            nn.ReLU(inplace=True),
        )
        stages, in_ch = [], w0
        for i, (width, depth) in enumerate(zip(cfg.widths, cfg.depths, strict=True)):
            stages.append(_stage(in_ch, width, depth, stride=1 if i == 0 else 2))
            in_ch = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(cfg.dropout))
        self._finish(in_ch)
        # faster oneDNN convolutions on CPU, where its kernels are sound (see hardware)
        self.channels_last = cfg.channels_last and not channels_last_hazards(self)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised -> (B, widths[-1])."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.pool(self.stages(self.stem(x)))  # (B, C)


def _named(widths: tuple[int, ...], depths: tuple[int, ...]) -> dict[str, int]:
    return {
        **{f"widths[{i}]": w for i, w in enumerate(widths)},
        **{f"depths[{i}]": d for i, d in enumerate(depths)},
    }
