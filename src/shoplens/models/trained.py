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
from shoplens.models.base import Encoder, Modality, l2_normalize
from shoplens.models.encoders import encode_in_batches, encode_texts_once
from shoplens.registry import register_adapter

PREFIX = "trained"


class TrainedEncoder(Encoder):
    """Image encoder over a loaded model with ``encode_image`` (e.g. a classifier)."""

    modalities: ClassVar[frozenset[Modality]] = frozenset({"image"})

    can_compose = False

    def __init__(
        self,
        model: Any,
        name: str,
        *,
        batch_size: int = 64,
        held_out_classes: Sequence[str] = (),
    ) -> None:
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
        cfg = getattr(model, "cfg", None)
        self.classes: tuple[str, ...] = tuple(getattr(cfg, "class_names", None) or ())
        self.held_out_classes = tuple(held_out_classes)  # left out of training (zero-shot)
        self.tta = "flip" if getattr(cfg, "tta_flip", False) else None  # classifier head TTA
        self._category_head = self._head()
        if self._category_head is not None and self.classes:
            self.classify_images = self._classify  # the harness looks for this attribute

    def _head(self) -> Any:
        """The category head: a classifier's own, or a CLIP model's auxiliary one."""
        if getattr(self.model, "family", "") == "classifier":
            return lambda x: self.model(x)["logits"]
        aux = getattr(self.model, "aux_head", None)
        if aux is not None:
            return lambda x: aux(self.model.image_features(x))
        return None

    def _classify(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Category logits (N, len(classes)) from the model's head."""
        import torch

        head = self._category_head
        out = []
        with torch.no_grad():
            for i in range(0, len(images), self.batch_size):
                x = self._preprocess(images[i : i + self.batch_size])
                out.append(head(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

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
    """Image and text encoder over a loaded CLIP-style model (one shared space).

    With a trained combiner in ``DIR/combiner`` it also answers composed queries
    ("like this image, but in the boot category") with :meth:`compose`.
    """

    modalities: ClassVar[frozenset[Modality]] = frozenset({"image", "text"})

    def __init__(self, model: Any, name: str, *, combiner: Any = None, **kwargs: Any) -> None:
        super().__init__(model, name, **kwargs)
        self.combiner = combiner.eval() if combiner is not None else None
        self.can_compose = combiner is not None

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts -> (N, dim) float32, L2-normalised; each distinct text once."""
        return encode_texts_once(texts, self.batch_size, self.dim, self.model.encode_text)

    def compose(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        """Composed queries: image i modified by text i -> (N, dim), L2-normalised."""
        import torch

        if self.combiner is None:
            raise InvalidInputError(f"model {self.name!r} has no combiner for composed queries")
        if len(images) != len(texts):
            raise InvalidInputError("compose needs as many texts as images")
        with torch.no_grad():
            img = self.model.encode_image(self._preprocess(images))  # (N, D)
            txt = self.model.encode_text(list(texts))  # (N, D)
            q = self.combiner(img, txt)  # (N, D)
        return l2_normalize(q.float().cpu().numpy())


def load_trained_encoder(
    path: str | Path, *, name: str | None = None, batch_size: int = 64
) -> TrainedEncoder:
    """The right encoder class for the model saved in ``path``."""
    from shoplens.models.io import load_model

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise NotFoundError(f"trained model folder not found: {folder}")
    model = load_model(folder)
    held_out = _held_out_classes(folder / "config.yaml")
    spec = name or f"{PREFIX}:{path}"
    if not callable(getattr(model, "encode_text", None)):
        return TrainedEncoder(model, spec, batch_size=batch_size, held_out_classes=held_out)
    combiner = load_model(folder / "combiner") if (folder / "combiner").is_dir() else None
    return TrainedCLIPEncoder(
        model, spec, batch_size=batch_size, held_out_classes=held_out, combiner=combiner
    )


def _held_out_classes(run_config: Path) -> tuple[str, ...]:
    """``data.held_out`` of the training run's config saved beside the model, if any."""
    if not run_config.is_file():
        return ()
    import yaml

    try:
        data = yaml.safe_load(run_config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return ()
    held = (data.get("data") or {}).get("held_out") if isinstance(data, dict) else None
    return tuple(str(c) for c in held) if isinstance(held, list) else ()


@register_adapter(PREFIX)
def _trained(arg: str) -> Encoder:
    return load_trained_encoder(arg)


__all__ = ["TrainedCLIPEncoder", "TrainedEncoder", "load_trained_encoder"]
