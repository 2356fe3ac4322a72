"""Copy detection: a self-supervised instance embedding (family ``copydetect``).

SimCLR / SSCD-style: each catalogue image and an altered copy of it (crop, blur, JPEG,
noise, brightness; :data:`~shoplens.data.transforms.AUGMENT_PRESETS` ``"copy"``) are a
positive pair, every other image in the batch a negative (InfoNCE). Class labels are not
used, so the embedding tells products of the same category apart: what near-duplicate
detection and "find the original of this photo" need, where category-trained towers
collapse a class into one cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from shoplens.data.transforms import BatchAugment, augment_preset
from shoplens.losses.contrastive import InfoNCELoss
from shoplens.models.cnn import CNNConfig
from shoplens.models.common import ProjectionKind, RegisteredModel, check_positive, projection
from shoplens.models.towers import ImageTowerConfig, build_image_tower
from shoplens.registry import register_model


@dataclass(frozen=True)
class CopyDetectConfig:
    """Image tower, projection to ``embed_dim``, the altered-copy preset, temperature."""

    image_tower: ImageTowerConfig = field(default_factory=CNNConfig)
    embed_dim: int = 128
    projection: ProjectionKind = "mlp"
    projection_hidden: int = 256
    augment: str = "copy"
    init_temperature: float = 0.1
    max_logit_scale: float = 100.0


@register_model("copydetect")
class CopyDetector(RegisteredModel):
    """``encode_image(x) -> (B, embed_dim)``; ``training_step`` makes its own altered copies."""

    family = "copydetect"
    config_class = CopyDetectConfig

    def __init__(self, cfg: CopyDetectConfig) -> None:
        super().__init__(cfg)
        check_positive("copydetect", embed_dim=cfg.embed_dim)
        augment_preset(cfg.augment)  # fail fast on an unknown preset
        self.embed_dim = cfg.embed_dim
        self.image_tower = build_image_tower(cfg.image_tower)
        self.image_size = self.image_tower.image_size
        self.proj = projection(
            self.image_tower.out_dim, cfg.embed_dim, cfg.projection, cfg.projection_hidden
        )
        self.loss_fn = InfoNCELoss(cfg.init_temperature, cfg.max_logit_scale)
        self.alter = BatchAugment(augment_preset(cfg.augment))  # global torch RNG: resumable

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, embed_dim)."""
        emb = self.proj(self.image_tower(images))
        return F.normalize(emb, dim=-1) if normalize else emb

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Batch ``image`` (B, 3, H, W) of clean images -> InfoNCE of image vs altered copy."""
        clean = batch["image"]
        with torch.no_grad(), torch.autocast(clean.device.type, enabled=False):
            altered = self.alter(clean.float().cpu()).to(clean.device)  # (B, 3, H, W)
        a = self.encode_image(clean)  # (B, D)
        b = self.encode_image(altered)  # (B, D)
        loss = self.loss_fn(a, b)
        with torch.no_grad():
            top1 = (b @ a.T).argmax(1)  # (B,) which original each copy finds
            acc = (top1 == torch.arange(len(top1), device=top1.device)).float().mean()
        return {"loss": loss, "copy_accuracy": acc, "logit_scale": self.loss_fn.scale.detach()}
