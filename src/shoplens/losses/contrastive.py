"""Contrastive losses for two-tower models, with several positives per row.

Batches of catalogue products repeat texts (many products share a category), so the
diagonal is not the only match: ``positives[i, j]`` marks every pair that belongs
together (same text, or same label). InfoNCE then uses *label-aware soft targets*
(multi-positive InfoNCE: the target distribution of row i is uniform over its positives,
as in UniCL); SigLIP labels every positive pair +1. Without the mask, SigLIP pushes an
image away from its own (duplicated) text, and InfoNCE pushes apart different phrasings
of the same label ("tee" / "t-shirt"). With one positive per row both reduce to the
usual CLIP / SigLIP losses. Embeddings must be L2-normalised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from shoplens.errors import InvalidInputError
from shoplens.models.encoders import dedupe


def positive_mask(groups: torch.Tensor) -> torch.Tensor:
    """(B,) group ids -> (B, B) bool, True where two rows share a group."""
    return groups.unsqueeze(0) == groups.unsqueeze(1)


def groups_from_texts(texts: Sequence[str], device: torch.device | None = None) -> torch.Tensor:
    """(B,) group ids: rows with identical text share an id."""
    _, idx = dedupe(list(texts))
    return torch.from_numpy(idx).to(device)


def _check(a: torch.Tensor, b: torch.Tensor, positives: torch.Tensor | None) -> torch.Tensor:
    """Validate shapes; default positives = the diagonal. Returns (B, M) bool."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise InvalidInputError(
            f"contrastive loss: expected (B, D) and (M, D) embeddings, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    if positives is None:
        if a.shape[0] != b.shape[0]:
            raise InvalidInputError("contrastive loss: give positives when B != M")
        return torch.eye(a.shape[0], dtype=torch.bool, device=a.device)
    if positives.shape != (a.shape[0], b.shape[0]):
        raise InvalidInputError(
            f"contrastive loss: positives must be {(a.shape[0], b.shape[0])}, "
            f"got {tuple(positives.shape)}"
        )
    return positives.bool()


def _similarities(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``scale * a @ b.T`` (B, M) in float32, also under bf16/fp16 autocast: logits up to
    ``scale`` = 100 need more precision than bf16's three significant digits."""
    with torch.autocast(device_type=a.device.type, enabled=False):
        return scale.float() * a.float() @ b.float().T


def info_nce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, M) logits against targets uniform over each row's positives."""
    counts = positives.sum(dim=1, keepdim=True)  # (B, 1)
    if bool((counts == 0).any()):
        raise InvalidInputError("info_nce: every row needs at least one positive")
    targets = positives.to(logits.dtype) / counts  # (B, M)
    return F.cross_entropy(logits, targets)


def siglip_loss(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Sigmoid loss: -sum log sigmoid(+-logit) over all (B, M) pairs, divided by B."""
    signs = positives.to(logits.dtype) * 2.0 - 1.0  # (B, M) +1 / -1
    return -F.logsigmoid(signs * logits).sum() / logits.shape[0]


class InfoNCELoss(nn.Module):
    """(Symmetric) InfoNCE with a learnable logit scale ``exp(t)``, clamped to ``max_scale``."""

    def __init__(
        self, init_temperature: float = 0.07, max_scale: float = 100.0, symmetric: bool = True
    ) -> None:
        super().__init__()
        if not (init_temperature > 0 and max_scale > 0):
            raise InvalidInputError(
                f"InfoNCE: init_temperature and max_scale must be > 0, got "
                f"{init_temperature}, {max_scale}"
            )
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_log_scale = math.log(max_scale)
        self.symmetric = symmetric

    @property
    def scale(self) -> torch.Tensor:
        """The clamped logit scale (1 / temperature), a scalar tensor."""
        return self.log_scale.clamp(max=self.max_log_scale).exp()

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, positives: torch.Tensor | None = None
    ) -> torch.Tensor:
        """a (B, D), b (M, D) normalised; positives (B, M) bool (default: diagonal)."""
        pos = _check(a, b, positives)
        logits = _similarities(a, b, self.scale)  # (B, M)
        loss = info_nce(logits, pos)
        if self.symmetric:
            loss = (loss + info_nce(logits.T, pos.T)) / 2
        return loss


class SigLIPLoss(nn.Module):
    """SigLIP sigmoid loss with learnable scale ``exp(t)`` (init 10) and bias (init -10)."""

    def __init__(self, init_scale: float = 10.0, init_bias: float = -10.0) -> None:
        super().__init__()
        if not init_scale > 0:
            raise InvalidInputError(f"SigLIP: init_scale must be > 0, got {init_scale}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, positives: torch.Tensor | None = None
    ) -> torch.Tensor:
        """a (B, D), b (M, D) normalised; positives (B, M) bool (default: diagonal)."""
        pos = _check(a, b, positives)
        logits = _similarities(a, b, self.scale) + self.bias.float()  # (B, M)
        return siglip_loss(logits, pos)
