"""Composed queries ("like this image, but in the boot category"): a learned combiner
``f(image_emb, text_emb) -> query_emb`` over a frozen two-tower model (family ``combiner``).

Architecture as the Combiner of CLIP4Cir (Baldrati et al., 2022): both embeddings are
projected (Linear-ReLU-Dropout), concatenated, mixed by an MLP, and added to a gated
residual ``g * text + (1 - g) * image`` where the gate ``g`` is predicted from the
pair; the output is L2-normalised. It trains with InfoNCE on precomputed embeddings of
triplets (reference image, modifier text, target image), see :func:`build_triplets`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from shoplens.data.texts import modifier_text
from shoplens.errors import InvalidInputError
from shoplens.losses.contrastive import InfoNCELoss, positive_mask
from shoplens.models.common import RegisteredModel, check_positive
from shoplens.registry import register_model


@dataclass(frozen=True)
class CombinerConfig:
    """Sizes; ``base_model`` records which two-tower model's embeddings it combines."""

    embed_dim: int = 128
    projection_dim: int = 256
    hidden_dim: int = 512
    dropout: float = 0.1
    init_temperature: float = 0.07
    base_model: str = ""
    # "class": every target of the requested category is a positive (learns the category
    # change, keeps the style through the image residual); "target": only the same item.
    positives: Literal["class", "target"] = "class"


def _proj(in_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Dropout(dropout))


@register_model("combiner")
class Combiner(RegisteredModel):
    """``forward(image_emb (B, D), text_emb (B, D)) -> (B, D)`` normalised query."""

    family = "combiner"
    config_class = CombinerConfig

    def __init__(self, cfg: CombinerConfig) -> None:
        super().__init__(cfg)
        check_positive(
            "combiner",
            embed_dim=cfg.embed_dim,
            projection_dim=cfg.projection_dim,
            hidden_dim=cfg.hidden_dim,
        )
        d, p, h = cfg.embed_dim, cfg.projection_dim, cfg.hidden_dim
        self.embed_dim = d
        self.image_proj = _proj(d, p, cfg.dropout)
        self.text_proj = _proj(d, p, cfg.dropout)
        self.mix = nn.Sequential(_proj(2 * p, h, cfg.dropout), nn.Linear(h, d))
        self.gate = nn.Sequential(_proj(2 * p, h, cfg.dropout), nn.Linear(h, 1), nn.Sigmoid())
        self.loss_fn = InfoNCELoss(cfg.init_temperature, symmetric=False)

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Normalised (B, D) image and text embeddings -> normalised (B, D) query."""
        if image_emb.shape != text_emb.shape or image_emb.shape[-1] != self.embed_dim:
            raise InvalidInputError(
                f"combiner: expected two (B, {self.embed_dim}) embeddings, got "
                f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
            )
        pair = torch.cat([self.image_proj(image_emb), self.text_proj(text_emb)], dim=-1)  # (B, 2P)
        g = self.gate(pair)  # (B, 1)
        out = self.mix(pair) + g * text_emb + (1 - g) * image_emb  # (B, D)
        return F.normalize(out, dim=-1)

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Batch ``reference``, ``modifier``, ``target`` (B, D) [, ``target_id``,
        ``target_class`` (B,)].

        Rows with the same ``target_class`` (``positives="class"``) or ``target_id`` are
        positives of each other (not negatives).
        """
        query = self(batch["reference"], batch["modifier"])  # (B, D)
        target = F.normalize(batch["target"], dim=-1)  # (B, D)
        key = "target_class" if self.cfg.positives == "class" else "target_id"
        ids = batch.get(key, batch.get("target_id"))
        pos = positive_mask(ids) if ids is not None else None
        loss = self.loss_fn(query, target, pos)
        with torch.no_grad():
            top = (query @ target.T).argmax(dim=1)  # (B,)
            hit = top == torch.arange(len(top), device=top.device)
            if pos is not None:
                hit = pos[torch.arange(len(top), device=top.device), top]
        return {
            "loss": loss,
            "accuracy": hit.float().mean(),
            "logit_scale": self.loss_fn.scale.detach(),
        }


@dataclass(frozen=True)
class Triplet:
    """Indices into the embedding table: reference, target and the target's class."""

    reference: int
    target: int
    target_class: int


def build_triplets(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    per_reference: int = 1,
    k_nearest: int = 3,
    max_references: int | None = None,
    seed: int = 0,
) -> list[Triplet]:
    """Triplets (reference of class A, target of another class B).

    The target is drawn from the ``k_nearest`` class-B items closest to the reference
    (cosine on ``embeddings`` (N, D)): "the same style, in another category".
    """
    emb = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels)
    if emb.ndim != 2 or labels.shape != (emb.shape[0],):
        raise InvalidInputError(
            f"build_triplets: expected embeddings (N, D) and labels (N,), got "
            f"{emb.shape} and {labels.shape}"
        )
    check_positive("build_triplets", per_reference=per_reference, k_nearest=k_nearest)
    classes = np.unique(labels)
    if len(classes) < 2:
        raise InvalidInputError("build_triplets: needs at least two classes")
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    refs = np.arange(len(labels))
    if max_references is not None and max_references < len(refs):
        refs = np.sort(rng.choice(refs, size=max_references, replace=False))
    refs = np.repeat(refs, per_reference)  # (R,)
    target_cls = _other_classes(labels[refs], classes, rng)  # (R,)
    out: list[Triplet] = []
    for c in classes:
        rows = refs[target_cls == c]
        members = np.flatnonzero(labels == c)
        if not len(rows):
            continue
        sims = emb[rows] @ emb[members].T  # (r, M)
        k = min(k_nearest, len(members))
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (r, k)
        pick = top[np.arange(len(rows)), rng.integers(0, k, len(rows))]  # (r,)
        out += [Triplet(int(r), int(members[p]), int(c)) for r, p in zip(rows, pick, strict=True)]
    return sorted(out, key=lambda t: (t.reference, t.target))


def _other_classes(
    ref_cls: np.ndarray, classes: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """For each reference class, a uniformly drawn different class."""
    pos = np.searchsorted(classes, ref_cls)  # (R,)
    shift = rng.integers(1, len(classes), len(ref_cls))  # never 0: never the same class
    return classes[(pos + shift) % len(classes)]


class TripletDataset(Dataset[dict[str, Any]]):
    """Precomputed embeddings of triplets; items feed :meth:`Combiner.training_step`."""

    def __init__(
        self,
        image_emb: torch.Tensor,
        triplets: Sequence[Triplet],
        texts: Sequence[str],
        text_emb: torch.Tensor,
        text_index: Sequence[int],
    ) -> None:
        self.image_emb = image_emb  # (N, D)
        self.triplets = list(triplets)
        self.texts = list(texts)  # per triplet
        self.text_emb = text_emb  # (U, D) distinct modifier texts
        self.text_index = list(text_index)  # per triplet -> row of text_emb

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, i: int) -> dict[str, Any]:
        t = self.triplets[i]
        return {
            "reference": self.image_emb[t.reference],
            "modifier": self.text_emb[self.text_index[i]],
            "target": self.image_emb[t.target],
            "target_id": t.target,
            "target_class": t.target_class,
            "text": self.texts[i],
        }


def make_triplet_dataset(
    image_emb: torch.Tensor,
    labels: np.ndarray,
    class_names: Sequence[str],
    encode_text: Callable[[list[str]], torch.Tensor],
    *,
    seed: int = 0,
    **triplet_kwargs: Any,
) -> TripletDataset:
    """Triplets from image embeddings (N, D) + varied modifier texts ("in the boot category").

    ``encode_text`` is the frozen text tower (e.g. ``clip.encode_text``); each distinct
    modifier is encoded once. ``triplet_kwargs`` go to :func:`build_triplets`.
    """
    triplets = build_triplets(image_emb.cpu().numpy(), labels, seed=seed, **triplet_kwargs)
    rng = np.random.default_rng(seed + 1)
    texts = [modifier_text(class_names[t.target_class], rng) for t in triplets]
    unique = list(dict.fromkeys(texts))
    pos = {t: i for i, t in enumerate(unique)}
    with torch.no_grad():
        text_emb = F.normalize(encode_text(unique).float().cpu(), dim=-1)  # (U, D)
    return TripletDataset(image_emb.cpu(), triplets, texts, text_emb, [pos[t] for t in texts])


@torch.no_grad()
def embed_dataset(
    model: Any, dataset: Dataset[dict[str, Any]], batch_size: int = 256
) -> tuple[torch.Tensor, np.ndarray]:
    """``model.encode_image`` over a dataset of items -> (embeddings (N, D), labels (N,))."""
    was_training = model.training
    model.eval()
    embs, labels = [], []
    try:
        for batch in DataLoader(dataset, batch_size=batch_size):
            embs.append(model.encode_image(batch["image"].to(model.device)).cpu())
            labels.append(np.asarray(batch["label"]))
    finally:
        model.train(was_training)
    return torch.cat(embs), np.concatenate(labels)
