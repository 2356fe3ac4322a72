"""Classification losses: single-label cross-entropy (label smoothing) and masked
multi-label binary cross-entropy (attributes a product may or may not have)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shoplens.errors import InvalidInputError

IGNORE = -1  # label of a row without a category (left out of loss and accuracy)


def _check_labels(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise InvalidInputError(
            f"expected logits (B, C) and labels (B,), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    valid = labels[labels != IGNORE]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= logits.shape[1]):
        bad = int(valid.max()) if int(valid.max()) >= logits.shape[1] else int(valid.min())
        raise InvalidInputError(
            f"label {bad} is out of range for {logits.shape[1]} classes (0..{logits.shape[1] - 1}"
            f", or {IGNORE} for none)"
        )


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy of (B, C) logits vs (B,) labels; rows labelled -1 are skipped."""
    _check_labels(logits, labels)
    if not 0.0 <= label_smoothing < 1.0:
        raise InvalidInputError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if bool((labels == IGNORE).all()):
        return logits.sum() * 0.0  # keeps the graph; nothing to learn from this batch
    return F.cross_entropy(
        logits, labels.long(), label_smoothing=label_smoothing, ignore_index=IGNORE
    )


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy over rows with a label (a scalar tensor; 0 when none)."""
    _check_labels(logits, labels)
    keep = labels != IGNORE
    hits = (logits.argmax(dim=1) == labels) & keep
    return hits.sum().float() / keep.sum().clamp(min=1).float()


def multilabel_loss(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean BCE of (B, A) logits vs 0/1 targets over entries where ``mask`` (B, A) is 1."""
    if logits.shape != targets.shape or (mask is not None and mask.shape != logits.shape):
        shapes = [tuple(t.shape) for t in (logits, targets) + ((mask,) if mask is not None else ())]
        raise InvalidInputError(f"multi-label loss: shapes must match, got {shapes}")
    per_entry = F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none")
    if mask is None:
        return per_entry.mean()
    weights = mask.to(per_entry.dtype)
    return (per_entry * weights).sum() / weights.sum().clamp(min=1.0)
