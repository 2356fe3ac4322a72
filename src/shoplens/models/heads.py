"""Image classifier: an image tower with a category head (softmax) and an optional
attribute head (multi-label sigmoid, one output per ``key=value`` attribute).

Registered as the ``classifier`` family (configs ``resnet-small``, ``vit-small``,
``effnet-lite0-ft``). The tower output is the retrieval embedding (``encode_image``).
``tta_flip``: in eval mode the head's logits are the mean over the image and its mirror
image (test-time augmentation; training, features and ``encode_image`` are unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shoplens.errors import InvalidInputError
from shoplens.losses.classification import accuracy, classification_loss, multilabel_loss
from shoplens.models.cnn import CNNConfig
from shoplens.models.common import RegisteredModel, check_positive
from shoplens.models.towers import ImageTowerConfig, build_image_tower
from shoplens.registry import register_model


@dataclass(frozen=True)
class ClassifierConfig:
    """``num_classes`` categories (names optional); ``attribute_names`` sigmoid outputs."""

    image_tower: ImageTowerConfig = field(default_factory=CNNConfig)
    num_classes: int = 10
    class_names: tuple[str, ...] = ()
    attribute_names: tuple[str, ...] = ()
    label_smoothing: float = 0.1
    attribute_weight: float = 1.0
    head_dropout: float = 0.0
    tta_flip: bool = False  # eval-mode logits: mean over the image and its mirror


class ClassifierHeads(nn.Module):
    """(B, D) features -> category logits (B, C) and attribute logits (B, A) or None."""

    def __init__(
        self, in_dim: int, num_classes: int, num_attributes: int = 0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.category = nn.Linear(in_dim, num_classes)
        self.attributes = nn.Linear(in_dim, num_attributes) if num_attributes else None

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.dropout(feats)
        attrs = self.attributes(h) if self.attributes is not None else None
        return self.category(h), attrs


def _check_config(cfg: ClassifierConfig) -> None:
    check_positive("classifier", num_classes=cfg.num_classes)
    if cfg.class_names and len(cfg.class_names) != cfg.num_classes:
        raise InvalidInputError(
            f"classifier: {len(cfg.class_names)} class_names given for num_classes="
            f"{cfg.num_classes}"
        )
    if not 0.0 <= cfg.head_dropout < 1.0:
        raise InvalidInputError(
            f"classifier: head_dropout must be in [0, 1), got {cfg.head_dropout}"
        )


@register_model("classifier")
class ImageClassifier(RegisteredModel):
    """Image tower + heads; ``training_step`` returns loss, accuracy and their parts."""

    family = "classifier"
    config_class = ClassifierConfig

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__(cfg)
        _check_config(cfg)
        self.image_tower = build_image_tower(cfg.image_tower)
        self.heads = ClassifierHeads(
            self.image_tower.out_dim, cfg.num_classes, len(cfg.attribute_names), cfg.head_dropout
        )
        self.embed_dim = self.image_tower.out_dim
        self.image_size = self.image_tower.image_size

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        """(B, 3, H, W) -> {"features": (B, D), "logits": (B, C), "attribute_logits": ...}."""
        feats = self.image_tower(images)  # (B, D)
        logits, attr_logits = self.heads(feats)
        if self.cfg.tta_flip and not self.training:
            mirror, mirror_attr = self.heads(self.image_tower(images.flip(-1)))
            logits = (logits + mirror) / 2  # (B, C)
            if attr_logits is not None and mirror_attr is not None:
                attr_logits = (attr_logits + mirror_attr) / 2  # (B, A)
        return {"features": feats, "logits": logits, "attribute_logits": attr_logits}

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, D) retrieval embeddings."""
        feats = self.image_tower(images)
        return F.normalize(feats, dim=-1) if normalize else feats

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Batch ``image``, ``label`` [, ``attributes``, ``attribute_mask``] -> losses."""
        out = self(batch["image"])
        labels = batch["label"]
        ce = classification_loss(out["logits"], labels, self.cfg.label_smoothing)
        result = {"ce": ce.detach(), "accuracy": accuracy(out["logits"].detach(), labels)}
        loss = ce
        if out["attribute_logits"] is not None and "attributes" in batch:
            bce = multilabel_loss(
                out["attribute_logits"], batch["attributes"], batch.get("attribute_mask")
            )
            loss = loss + self.cfg.attribute_weight * bce
            result["attribute_bce"] = bce.detach()
        result["loss"] = loss
        return result
