"""Training losses: contrastive (InfoNCE, SigLIP) and classification (CE, multi-label BCE)."""

from shoplens.losses.classification import accuracy, classification_loss, multilabel_loss
from shoplens.losses.contrastive import (
    InfoNCELoss,
    SigLIPLoss,
    groups_from_texts,
    info_nce,
    positive_mask,
    siglip_loss,
)

__all__ = [
    "InfoNCELoss",
    "SigLIPLoss",
    "accuracy",
    "classification_loss",
    "groups_from_texts",
    "info_nce",
    "multilabel_loss",
    "positive_mask",
    "siglip_loss",
]
