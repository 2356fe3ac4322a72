"""Torch datasets for training: Fashion-MNIST arrays and users' own catalogues.

Items are dicts ``{"image": (3, H, W) float in [0, 1], "label": int, "text": str,
"index": int}`` (catalogue items add ``"attributes"`` / ``"attribute_mask"`` (A,) floats
for multi-label heads). :class:`Collate` batches them (tensors stacked, texts as a list)
and can apply a :class:`~shoplens.data.transforms.BatchAugment`; :func:`batch_to` moves a
batch to a device. Texts are drawn by :class:`~shoplens.data.texts.ProductTexts` from
``(index, epoch)``: call ``set_epoch`` each epoch for fresh phrasings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from shoplens.data.fashion_mnist import CLASSES, load_fashion_mnist
from shoplens.data.texts import IGNORED_ATTRIBUTES, ProductTexts
from shoplens.data.transforms import BatchAugment, image_to_tensor, to_float
from shoplens.errors import InvalidInputError

Item = dict[str, Any]
Transform = Callable[[torch.Tensor], torch.Tensor]  # uint8 (3, H, W) -> float (3, S, S)
FMSplit = Literal["train", "val", "test"]


def resolve_classes(selected: Sequence[str | int], classes: Sequence[str]) -> list[int]:
    """Class names or indices -> sorted indices; unknown ones raise with the valid names."""
    out = set()
    for c in selected:
        if isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(classes):
            out.add(c)
        elif isinstance(c, str) and c in classes:
            out.add(list(classes).index(c))
        else:
            raise InvalidInputError(
                f"unknown class {c!r}; use a name ({', '.join(classes)}) or an index "
                f"0..{len(classes) - 1}"
            )
    return sorted(out)


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx): ``val_fraction`` of every class, seeded, sorted."""
    if not 0.0 <= val_fraction < 1.0:
        raise InvalidInputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        val.append(members[: round(len(members) * val_fraction)])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


class _TextsMixin:
    """``set_epoch`` + the per-item text draw shared by both datasets."""

    texts: ProductTexts | None
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw different phrasings in each epoch (deterministic per (seed, index, epoch))."""
        self.epoch = int(epoch)

    def _text(self, index: int, category: str, title: str = "", attrs: Any = None) -> str:
        if self.texts is None:
            return title or category
        return self.texts.sample(
            (index, self.epoch), category=category, title=title, attributes=attrs
        )


class FashionMNISTDataset(_TextsMixin, Dataset[Item]):
    """Fashion-MNIST images (N, 28, 28) uint8 + labels as training items.

    ``held_out`` classes are dropped (for zero-shot tests); ``only`` keeps just those
    classes. ``transform`` (e.g. :func:`~shoplens.data.transforms.sample_transform`)
    gets the uint8 (3, 28, 28) image; without one the item is the plain float image.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        held_out: Sequence[str | int] = (),
        only: Sequence[str | int] | None = None,
        transform: Transform | None = None,
        texts: ProductTexts | None = None,
        classes: Sequence[str] = CLASSES,
    ) -> None:
        images, labels = np.asarray(images), np.asarray(labels, np.int64)
        if images.ndim != 3 or images.dtype != np.uint8 or labels.shape != images.shape[:1]:
            raise InvalidInputError(
                f"expected uint8 images (N, H, W) and labels (N,), got {images.dtype} "
                f"{images.shape} and {labels.shape}"
            )
        self.classes = tuple(classes)
        keep = ~np.isin(labels, resolve_classes(held_out, classes))  # (N,) bool
        if only is not None:
            keep &= np.isin(labels, resolve_classes(only, classes))
        self.indices = np.flatnonzero(keep)  # rows of the given arrays
        self.images = torch.from_numpy(images[self.indices])  # (N', H, W) uint8
        self.labels = labels[self.indices]
        self.transform = transform
        self.texts = texts if texts is not None else ProductTexts()

    @classmethod
    def load(
        cls,
        split: FMSplit,
        *,
        val_fraction: float = 0.1,
        seed: int = 0,
        data_dir: Path | None = None,
        **kwargs: Any,
    ) -> FashionMNISTDataset:
        """``train`` / ``val`` (a stratified ``val_fraction`` of train, seeded) / ``test``."""
        if split not in ("train", "val", "test"):
            raise InvalidInputError(f"split must be 'train', 'val' or 'test', not {split!r}")
        data = load_fashion_mnist("test" if split == "test" else "train", data_dir)
        images, labels = data.images, data.labels
        if split != "test":
            train_idx, val_idx = stratified_split(labels, val_fraction, seed)
            rows = train_idx if split == "train" else val_idx
            images, labels = images[rows], labels[rows]
        return cls(images, labels, **kwargs)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Item:
        img = self.images[i].unsqueeze(0).expand(3, -1, -1)  # (3, H, W) uint8
        label = int(self.labels[i])
        image = self.transform(img) if self.transform else to_float(img)
        return {
            "image": image,
            "label": label,
            "text": self._text(int(self.indices[i]), self.classes[label]),
            "index": int(self.indices[i]),
        }


class CatalogDataset(_TextsMixin, Dataset[Item]):
    """Products of a shoplens ``Catalog`` (images + title / category / attributes).

    ``where`` filters by attributes (e.g. ``{"split": "train"}``); ``categories`` fixes
    the label order (default: the catalogue's, sorted). Attribute outputs are the
    ``key=value`` pairs of ``attribute_keys`` (default: all keys with at most
    ``max_values`` values); a product without a key gets mask 0 for that key's outputs.
    """

    def __init__(
        self,
        catalog: Any,
        *,
        image_size: int = 32,
        where: Mapping[str, str] | None = None,
        categories: Sequence[str] | None = None,
        attribute_keys: Sequence[str] | None = None,
        max_values: int = 50,
        transform: Transform | None = None,
        texts: ProductTexts | None = None,
    ) -> None:
        ids = catalog.filter_ids(attributes=dict(where)) if where else None
        products = (
            list(catalog.get_by_ids(ids).values())
            if ids is not None
            else list(catalog.iter_products())
        )
        if not products:
            raise InvalidInputError(f"catalogue {catalog.name!r} has no products matching {where}")
        self.products = sorted(products, key=lambda p: p.id)
        self.paths = [catalog.image_path(p.image_key) for p in self.products]
        self.classes = tuple(categories or sorted({p.category for p in self.products}))
        pos = {c: i for i, c in enumerate(self.classes)}
        self.labels = np.array([pos.get(p.category, -1) for p in self.products], np.int64)
        self.attribute_names = self._attribute_vocab(attribute_keys, max_values)
        self.image_size = image_size
        self.transform = transform
        self.texts = texts if texts is not None else ProductTexts()

    def _attribute_vocab(self, keys: Sequence[str] | None, max_values: int) -> tuple[str, ...]:
        values: dict[str, set[str]] = {}
        for p in self.products:
            for k, v in p.attributes.items():
                if k not in IGNORED_ATTRIBUTES:
                    values.setdefault(k, set()).add(str(v))
        if keys is None:
            keys = [k for k, vs in values.items() if len(vs) <= max_values]
        unknown = [k for k in keys if k not in values]
        if unknown:
            raise InvalidInputError(
                f"unknown attribute key(s) {unknown}; the catalogue has {sorted(values)}"
            )
        return tuple(f"{k}={v}" for k in sorted(keys) for v in sorted(values[k]))

    def __len__(self) -> int:
        return len(self.products)

    def _attributes(self, attrs: Mapping[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
        target = torch.zeros(len(self.attribute_names))  # (A,)
        mask = torch.zeros(len(self.attribute_names))  # (A,)
        for j, name in enumerate(self.attribute_names):
            key, _, value = name.partition("=")
            if key in attrs:
                mask[j] = 1.0
                target[j] = float(str(attrs[key]) == value)
        return target, mask

    def __getitem__(self, i: int) -> Item:
        p = self.products[i]
        with Image.open(self.paths[i]) as im:
            img = image_to_tensor(im, self.image_size)  # (3, S, S) uint8
        target, mask = self._attributes(p.attributes)
        return {
            "image": self.transform(img) if self.transform else to_float(img),
            "label": int(self.labels[i]),
            "text": self._text(p.id, p.category, p.title, p.attributes),
            "index": p.id,
            "attributes": target,
            "attribute_mask": mask,
        }


class Collate:
    """Batch items (``default_collate``: tensors stacked, strings listed), then augment."""

    def __init__(self, augment: BatchAugment | None = None) -> None:
        self.augment = augment

    def __call__(self, items: list[Item]) -> dict[str, Any]:
        if not items:
            raise InvalidInputError("cannot collate an empty batch")
        batch: dict[str, Any] = default_collate(items)
        if self.augment is not None:
            batch["image"] = self.augment(batch["image"])
        return batch


def batch_to(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Move every tensor of a batch to ``device`` (lists of texts stay as they are)."""
    dev = torch.device(device)
    return {
        k: v.to(dev, non_blocking=dev.type == "cuda") if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }
