"""The encoder contract every image / text / vision-language model follows.

``encode_images(list[PIL.Image]) -> float32 (N, D)`` and ``encode_texts(list[str]) ->
float32 (N, D)``, rows L2-normalised. ``name`` is the spec that recreates the encoder and
identifies its index; ``dim`` is D. An encoder that lacks a modality raises
``InvalidInputError`` for it and says so in ``modalities``.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
from PIL import Image

from shoplens.errors import InvalidInputError

Modality = Literal["image", "text"]


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation to float32. x: (N, D)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, eps), dtype=np.float32)


class Encoder(ABC):
    """Base class: subclasses override the modalities they support."""

    name: str
    dim: int
    modalities: ClassVar[frozenset[Modality]] = frozenset()
    batch_size: int = 64

    @property
    def shared_space(self) -> bool:
        """True when image and text embeddings are comparable (a CLIP-style model)."""
        return self.modalities == frozenset({"image", "text"})

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed RGB images. Returns (N, dim) float32, L2-normalised."""
        raise InvalidInputError(f"encoder {self.name!r} does not encode images")

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts. Returns (N, dim) float32, L2-normalised."""
        raise InvalidInputError(f"encoder {self.name!r} does not encode text")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"
