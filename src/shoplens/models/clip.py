"""CLIP-style two-tower model: image tower + text tower, projected to one L2-normalised
space of ``embed_dim`` and trained contrastively (family ``clip``).

* ``loss``: ``infonce`` (symmetric, learnable logit scale clamped to ``max_logit_scale``)
  or ``siglip`` (sigmoid loss, learnable scale and bias), see :mod:`shoplens.losses`.
* Duplicate texts: pairs that belong together are *positives*, not negatives
  (multi-positive InfoNCE with label-aware soft targets; SigLIP +1 labels).
  ``positives="label"`` joins rows with the same ``label`` (rows without one, -1, fall
  back to identical text); ``positives="text"`` joins identical texts only.
* ``lock_image`` (LiT): the image tower is frozen and kept in eval mode; only the text
  side, both projections (and the aux head) train. Its features are cached per distinct
  input image (content hash) when ``cache_locked_image`` is set, so repeated,
  un-augmented images are encoded once.
* ``num_classes > 0`` adds an auxiliary category head on the image features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from shoplens.errors import InvalidInputError
from shoplens.losses.classification import accuracy, classification_loss
from shoplens.losses.contrastive import (
    InfoNCELoss,
    SigLIPLoss,
    groups_from_texts,
    positive_mask,
)
from shoplens.models.cnn import CNNConfig
from shoplens.models.common import (
    FeatureCache,
    ProjectionKind,
    RegisteredModel,
    check_positive,
    freeze,
    projection,
    tensor_keys,
)
from shoplens.models.text import TextTowerConfig, TinyTextConfig, build_text_tower
from shoplens.models.towers import ImageTowerConfig, build_image_tower
from shoplens.registry import register_model


@dataclass(frozen=True)
class CLIPConfig:
    """Two towers, projections to ``embed_dim``, contrastive loss, optional LiT / aux head."""

    image_tower: ImageTowerConfig = field(default_factory=CNNConfig)
    text_tower: TextTowerConfig = field(default_factory=TinyTextConfig)
    embed_dim: int = 128
    image_projection: ProjectionKind = "linear"
    text_projection: ProjectionKind = "linear"
    projection_hidden: int = 0
    loss: Literal["infonce", "siglip"] = "infonce"
    positives: Literal["label", "text"] = "label"
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    siglip_init_scale: float = 10.0
    siglip_init_bias: float = -10.0
    lock_image: bool = False
    cache_locked_image: bool = True
    image_cache_size: int = 100_000
    num_classes: int = 0
    class_names: tuple[str, ...] = ()
    aux_weight: float = 0.5
    label_smoothing: float = 0.1


def _loss_module(cfg: CLIPConfig) -> InfoNCELoss | SigLIPLoss:
    if cfg.loss == "siglip":
        return SigLIPLoss(cfg.siglip_init_scale, cfg.siglip_init_bias)
    return InfoNCELoss(cfg.init_temperature, cfg.max_logit_scale)


@register_model("clip")
class CLIPModel(RegisteredModel):
    """``encode_image(x) -> (B, D)``, ``encode_text(list[str]) -> (B, D)``, training_step."""

    family = "clip"
    config_class = CLIPConfig

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__(cfg)
        check_positive("clip", embed_dim=cfg.embed_dim)
        if cfg.class_names and len(cfg.class_names) != cfg.num_classes:
            raise InvalidInputError(
                f"clip: {len(cfg.class_names)} class_names given for num_classes={cfg.num_classes}"
            )
        self.embed_dim = cfg.embed_dim
        self.image_tower = build_image_tower(cfg.image_tower)
        self.text_tower = build_text_tower(cfg.text_tower)
        hidden = cfg.projection_hidden
        self.image_proj = projection(
            self.image_tower.out_dim, cfg.embed_dim, cfg.image_projection, hidden
        )
        self.text_proj = projection(
            self.text_tower.out_dim, cfg.embed_dim, cfg.text_projection, hidden
        )
        self.loss_fn: InfoNCELoss | SigLIPLoss = _loss_module(cfg)
        self.aux_head = (
            nn.Linear(self.image_tower.out_dim, cfg.num_classes) if cfg.num_classes else None
        )
        self.image_size = self.image_tower.image_size
        self.locked = cfg.lock_image
        self.image_cache = FeatureCache(cfg.image_cache_size if cfg.cache_locked_image else 0)
        if self.locked:
            freeze(self.image_tower)

    def train(self, mode: bool = True) -> CLIPModel:
        """Switch modes; a locked image tower always stays in eval."""
        super().train(mode)
        if self.locked:
            self.image_tower.eval()
        return self

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> tower features (B, F); no grad (and cached) when locked."""
        if not self.locked:
            return self.image_tower(images)
        if self.image_cache.max_items == 0:
            with torch.no_grad():
                return self.image_tower(images)

        def compute(missing: list[int]) -> torch.Tensor:
            with torch.no_grad():
                return self.image_tower(images[missing])

        return self.image_cache.lookup(tensor_keys(images), compute, images.device)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, embed_dim)."""
        emb = self.image_proj(self.image_features(images))
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        """B texts -> (B, embed_dim)."""
        emb = self.text_proj(self.text_tower(texts))
        return F.normalize(emb, dim=-1) if normalize else emb

    def forward(self, images: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised image (B, D) and text (B, D) embeddings."""
        return self.encode_image(images), self.encode_text(texts)

    def positives(self, batch: dict[str, Any]) -> torch.Tensor:
        """(B, B) bool: same label (``positives="label"``) or identical text."""
        groups = groups_from_texts(batch["text"], batch["image"].device)  # (B,)
        labels = batch.get("label")
        if self.cfg.positives == "label" and labels is not None:
            offset = int(labels.max()) + 1 if labels.numel() else 0
            groups = torch.where(labels >= 0, labels, groups + offset)
        return positive_mask(groups)

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Batch ``image`` (B, 3, H, W), ``text`` (B,) [, ``label`` (B,)] -> losses."""
        feats = self.image_features(batch["image"])  # (B, F)
        img = F.normalize(self.image_proj(feats), dim=-1)  # (B, D)
        txt = self.encode_text(batch["text"])  # (B, D)
        pos = self.positives(batch)  # (B, B)
        loss = self.loss_fn(img, txt, pos)
        with torch.no_grad():
            top = (img @ txt.T).argmax(dim=1)  # (B,)
            retrieval_acc = pos[torch.arange(len(top), device=top.device), top].float().mean()
        result = {
            "contrastive": loss.detach(),
            "accuracy": retrieval_acc,
            "logit_scale": self.loss_fn.scale.detach(),
        }
        if self.aux_head is not None and "label" in batch:
            logits = self.aux_head(feats)
            ce = classification_loss(logits, batch["label"], self.cfg.label_smoothing)
            loss = loss + self.cfg.aux_weight * ce
            result["aux_ce"] = ce.detach()
            result["aux_accuracy"] = accuracy(logits.detach(), batch["label"])
        result["loss"] = loss
        return result
