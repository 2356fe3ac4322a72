"""Small Vision Transformer image tower.

Conv patch embedding, an optional class token, torchvision's pre-norm transformer
``Encoder`` (learned position embeddings, final LayerNorm), then the class token or the
mean of the patch tokens, and an optional linear head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torchvision.models.vision_transformer import Encoder

from shoplens.errors import InvalidInputError
from shoplens.models.common import ImageTower, ImageTowerBase, check_positive


@dataclass(frozen=True)
class ViTConfig(ImageTowerBase):
    """ViT: ``image_size`` must be a multiple of ``patch_size``."""

    type: Literal["vit"] = "vit"
    patch_size: int = 4
    width: int = 128
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    attention_dropout: float = 0.0
    pool: Literal["cls", "mean"] = "mean"


class ViTTower(ImageTower):
    """(B, 3, H, W) in [0, 1] -> (B, out_dim) (``width`` without a head)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__(cfg)
        check_positive(
            "vit", patch_size=cfg.patch_size, width=cfg.width, depth=cfg.depth, heads=cfg.heads
        )
        if cfg.image_size % cfg.patch_size:
            raise InvalidInputError(
                f"vit: image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}"
            )
        if cfg.width % cfg.heads:
            raise InvalidInputError(f"vit: width {cfg.width} is not divisible by heads {cfg.heads}")
        self.pool = cfg.pool
        grid = cfg.image_size // cfg.patch_size
        self.patch_embed = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width)) if cfg.pool == "cls" else None
        self.encoder = Encoder(
            seq_length=grid * grid + (cfg.pool == "cls"),
            num_layers=cfg.depth,
            num_heads=cfg.heads,
            hidden_dim=cfg.width,
            mlp_dim=max(1, round(cfg.width * cfg.mlp_ratio)),
            dropout=cfg.dropout,
            attention_dropout=cfg.attention_dropout,
        )
        self._finish(cfg.width)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised -> (B, width)."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, T, W)
        if self.cls_token is not None:
            cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # (B, 1, W)
            tokens = torch.cat([cls, tokens], dim=1)  # (B, 1 + T, W)
        out = self.encoder(tokens)  # (B, T', W)
        return out[:, 0] if self.cls_token is not None else out.mean(dim=1)  # (B, W)
