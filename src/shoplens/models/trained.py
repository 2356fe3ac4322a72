"""``trained:DIR`` — a model shoplens trained and saved (:mod:`shoplens.models.io`) as an
:class:`~shoplens.models.base.Encoder`.

A CLIP-style model encodes images and texts into one space; a classifier (or any model
with only ``encode_image``) encodes images. Preprocessing matches training: RGB, short
side resized to the model's ``image_size`` and centre-cropped
(:func:`~shoplens.data.transforms.image_to_tensor`), 0..1 floats; the model's own towers
then apply grayscale / normalisation as they did in training. Torch is imported when an
encoder is created, not with this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from shoplens.errors import InvalidInputError, NotFoundError
from shoplens.models.base import Encoder, Modality
from shoplens.models.encoders import encode_in_batches, encode_texts_once
from shoplens.registry import register_adapter

PREFIX = "trained"


class TrainedEncoder(Encoder):
    """Image encoder over a loaded model with ``encode_image`` (e.g. a classifier)."""

    modalities: ClassVar[frozenset[Modality]] = frozenset({"image"})

    def __init__(self, model: Any, name: str, *, batch_size: int = 64) -> None:
        if not callable(getattr(model, "encode_image", None)):
            raise InvalidInputError(
                f"model {getattr(model, 'model_name', '?')!r} cannot encode images "
                "(no encode_image); save a classifier or a CLIP-style model"
            )
        self.model = model.eval()
        self.name = name
        self.dim = int(model.embed_dim)
        self.image_size = int(model.image_size)
        self.batch_size = batch_size

    def _preprocess(self, images: Sequence[Image.Image]) -> Any:
        import torch

        from shoplens.data.transforms import image_to_tensor, to_float

        batch = torch.stack([image_to_tensor(im, self.image_size) for im in images])
        return to_float(batch).to(self.model.device)  # (B, 3, S, S) in [0, 1]

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed images -> (N, dim) float32, L2-normalised."""

        def encode(chunk: Sequence[Image.Image]) -> Any:
            return self.model.encode_image(self._preprocess(chunk))

        return encode_in_batches(list(images), self.batch_size, self.dim, encode)


class TrainedCLIPEncoder(TrainedEncoder):
    """Image and text encoder over a loaded CLIP-style model (one shared space)."""

    modalities: ClassVar[frozenset[Modality]] = frozenset({"image", "text"})

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts -> (N, dim) float32, L2-normalised; each distinct text once."""
        return encode_texts_once(texts, self.batch_size, self.dim, self.model.encode_text)


def load_trained_encoder(
    path: str | Path, *, name: str | None = None, batch_size: int = 64
) -> TrainedEncoder:
    """The right encoder class for the model saved in ``path``."""
    from shoplens.models.io import load_model

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise NotFoundError(f"trained model folder not found: {folder}")
    model = load_model(folder)
    cls = TrainedCLIPEncoder if callable(getattr(model, "encode_text", None)) else TrainedEncoder
    return cls(model, name or f"{PREFIX}:{path}", batch_size=batch_size)


@register_adapter(PREFIX)
def _trained(arg: str) -> Encoder:
    return load_trained_encoder(arg)


__all__ = ["TrainedCLIPEncoder", "TrainedEncoder", "load_trained_encoder"]
