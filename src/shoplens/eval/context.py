"""What the evaluation tasks share: labelled data, the model, options, cached embeddings.

:class:`EvalData` holds test images with labels (the queries), an optional labelled
gallery (the train split) and optional per-image captions; :class:`EvalContext` adds the
encoder and/or classifier and computes each embedding once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import numpy as np
from PIL import Image

from shoplens import progress
from shoplens.errors import InvalidInputError
from shoplens.models.base import Encoder, l2_normalize

Classifier = Callable[[Sequence[Image.Image]], np.ndarray]  # images -> logits (N, C)
DEFAULT_TEMPLATES = ("a photo of a {c}", "{c}", "a product photo of {c}")
EMBED_BATCH = 256


class Item(NamedTuple):
    """A test image as the near-duplicate part names it."""

    sku: str
    title: str
    category: str


def apply_in_batches(
    fn: Callable[[Sequence[Image.Image]], np.ndarray],
    images: Sequence[Image.Image],
    what: str,
    batch: int = EMBED_BATCH,
) -> list[np.ndarray]:
    """``fn`` on consecutive batches of images, with a progress bar: (B, D) float32 each."""
    out = []
    with progress.task(what, len(images)) as advance:
        for s in range(0, len(images), batch):
            chunk = list(images[s : s + batch])
            out.append(np.asarray(fn(chunk), dtype=np.float32))
            advance(len(chunk))
    return out


def embed_images(encoder: Encoder, images: Sequence[Image.Image], what: str) -> np.ndarray:
    """Embed images batch by batch with a progress bar. Returns (N, D) float32."""
    parts = apply_in_batches(encoder.encode_images, images, what)
    return np.concatenate([np.zeros((0, encoder.dim), np.float32), *parts])


def check_classes(names: Iterable[str], classes: Sequence[str], what: str) -> tuple[str, ...]:
    """``names`` as a tuple after checking each is one of ``classes``."""
    out = tuple(names)
    unknown = [n for n in out if n not in classes]
    if unknown:
        raise InvalidInputError(
            f"unknown class {unknown[0]!r} in {what}; known classes: {', '.join(classes)}"
        )
    return out


@dataclass
class EvalData:
    """Labelled test images, an optional labelled gallery (train split) and captions.

    ``test_labels`` / ``train_labels`` are indices into ``classes``. ``captions`` (one text
    per test image) enable per-item caption retrieval. ``texts_from_labels``: the only texts
    are built from class names (as for Fashion-MNIST), so text metrics are in-domain.
    """

    classes: tuple[str, ...]
    test_images: Sequence[Image.Image]
    test_labels: np.ndarray
    train_images: Sequence[Image.Image] = ()
    train_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    captions: Sequence[str] | None = None
    name: str = "custom"
    texts_from_labels: bool = True

    def __post_init__(self) -> None:
        self.test_labels = self._labels(self.test_labels, self.test_images, "test")
        self.train_labels = self._labels(self.train_labels, self.train_images, "train")
        if not len(self.test_images):
            raise InvalidInputError(f"data {self.name!r} has no test images")
        if self.captions is not None and len(self.captions) != len(self.test_images):
            raise InvalidInputError(
                f"{len(self.captions)} captions for {len(self.test_images)} test images"
            )

    def _labels(self, labels: np.ndarray, images: Sequence[Image.Image], split: str) -> np.ndarray:
        arr = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(arr) != len(images):
            raise InvalidInputError(f"{split}: {len(images)} images but {len(arr)} labels")
        if len(arr) and (arr.min() < 0 or arr.max() >= len(self.classes)):
            raise InvalidInputError(
                f"{split} labels must be class indices 0..{len(self.classes) - 1}"
            )
        return arr

    def test_items(self) -> list[Item]:
        """sku, title and category of each test image."""
        return [
            Item(f"{self.name}-test-{n:05d}", f"{self.classes[c]} ({self.name} test photo)",
                 self.classes[c])
            for n, c in enumerate(self.test_labels)
        ]  # fmt: skip


class EvalContext:
    """What the tasks share: data, model, options and embeddings computed once."""

    def __init__(
        self,
        data: EvalData,
        encoder: Encoder | None = None,
        classifier: Classifier | None = None,
        *,
        held_out: Sequence[str] = (),
        seed: int = 0,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        n_aug: int = 1000,
        dedupe_base: int = 2000,
        dedupe_copies: int = 200,
    ) -> None:
        if encoder is None and classifier is None:
            raise InvalidInputError("give an encoder, a classifier or both")
        if not templates or any("{c}" not in t for t in templates):
            raise InvalidInputError(f"every prompt template needs a '{{c}}': {list(templates)}")
        if n_aug < 1 or dedupe_base < 2 or dedupe_copies < 1:
            raise InvalidInputError("n_aug and dedupe_copies must be >= 1 and dedupe_base >= 2")
        self.data, self.encoder, self.classifier = data, encoder, classifier
        self.held_out = check_classes(held_out, data.classes, "held-out classes")
        self.seed, self.templates = seed, tuple(templates)
        self.n_aug, self.dedupe_base, self.dedupe_copies = n_aug, dedupe_base, dedupe_copies
        self._class_emb: dict[tuple[str, ...], np.ndarray] = {}

    @property
    def encodes_images(self) -> bool:
        return self.encoder is not None and "image" in self.encoder.modalities

    @property
    def shared_space(self) -> bool:
        return self.encoder is not None and self.encoder.shared_space

    def require_encoder(self) -> Encoder:
        """The encoder, or a clear error when only a classifier was given."""
        if self.encoder is None:
            raise InvalidInputError("this task needs an encoder")
        return self.encoder

    @cached_property
    def test_emb(self) -> np.ndarray:
        """(N_test, D) test image embeddings."""
        return embed_images(self.require_encoder(), self.data.test_images, "embed test images")

    @cached_property
    def train_emb(self) -> np.ndarray:
        """(N_train, D) train (gallery) image embeddings."""
        return embed_images(self.require_encoder(), self.data.train_images, "embed train images")

    def prompts(self, classes: Sequence[str]) -> list[str]:
        """Every template for every class, class-major: (C * T,) texts."""
        return [t.replace("{c}", c) for c in classes for t in self.templates]

    def class_emb(self, classes: Sequence[str]) -> np.ndarray:
        """Prompt-ensemble class embeddings: mean of the template embeddings, L2. (C, D)."""
        key = tuple(classes)
        if key not in self._class_emb:
            emb = self.require_encoder().encode_texts(self.prompts(key))  # (C * T, D)
            mean = np.asarray(emb, np.float32).reshape(len(key), len(self.templates), -1).mean(1)
            self._class_emb[key] = l2_normalize(mean)  # (C, D)
        return self._class_emb[key]
