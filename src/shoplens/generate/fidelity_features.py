"""Features of real and generated images for the fidelity checks.

:class:`ImageTower` wraps one of shoplens's OWN trained image models (not Inception) as
the feature extractor of FID, precision / recall and memorisation, and as the classifier
of conditional accuracy. Real features are cached under ``$SHOPLENS_HOME/cache/fidelity``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from shoplens.errors import InvalidInputError, NotFoundError

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def to_array(images: Sequence[Image.Image]) -> np.ndarray:
    """PIL images (all one size) -> uint8 (N, H, W, 3) RGB."""
    return np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])


def _rgb(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) grayscale or (N, H, W, 3) -> (N, H, W, 3)."""
    return np.repeat(images[..., None], 3, axis=-1) if images.ndim == 3 else images


def pixel_vectors(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W[, 3]) -> (N, H*W) float32 grayscale in [0, 1] (the pixel view)."""
    gray = images.astype(np.float32).mean(axis=-1) if images.ndim == 4 else images
    return np.ascontiguousarray(gray.reshape(len(images), -1) / 255.0, dtype=np.float32)


class ImageTower:
    """A shoplens image model as feature extractor (and classifier, when it has a head).

    For a ``trained:DIR`` model the features are its unnormalised ``encode_image`` output
    (a classifier's penultimate tower features; a CLIP model's image embedding) and a
    classifier's logits come from the same forward pass; other encoder specs give their
    L2-normalised embeddings.
    """

    def __init__(self, spec: str, batch_size: int = 256) -> None:
        from shoplens.models.trained import TrainedEncoder
        from shoplens.registry import get_encoder

        self.spec = spec
        self.encoder = get_encoder(spec)
        self.batch_size = batch_size
        self.trained = isinstance(self.encoder, TrainedEncoder)
        self.classes: tuple[str, ...] = tuple(getattr(self.encoder, "classes", ()) or ())
        self.can_classify = bool(self.classes) and (
            callable(getattr(self.encoder, "classify_images", None))
        )

    def identity(self) -> str:
        """The weights' sha256 for a trained model folder, else the spec."""
        from shoplens.models.io import read_model_meta

        if self.trained and self.spec.startswith("trained:"):
            try:
                return str(read_model_meta(self.spec.split(":", 1)[1])["weights_sha256"])
            except (KeyError, NotFoundError, InvalidInputError):
                pass
        return self.spec

    def _tensor(self, batch: np.ndarray) -> Any:
        import torch

        from shoplens.data.transforms import image_to_tensor

        size = int(self.encoder.image_size)  # type: ignore[attr-defined]
        rgb = _rgb(batch)
        if rgb.shape[1:3] == (size, size):
            x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2)  # (B, 3, S, S)
        else:
            x = torch.stack([image_to_tensor(Image.fromarray(a), size) for a in rgb])
        return x.float().div(255.0).to(self.encoder.model.device)  # type: ignore[attr-defined]

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 (N, H, W[, 3]) -> features (N, D) float32 and logits (N, C) or None."""
        feats, logits = [], []
        for i in range(0, len(images), self.batch_size):
            f, lg = self._batch(images[i : i + self.batch_size])
            feats.append(f)
            if lg is not None:
                logits.append(lg)
        dim = int(self.encoder.dim)
        out_f = np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)
        return out_f.astype(np.float32), (np.concatenate(logits) if logits else None)

    def _batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if not self.trained:
            pil = [Image.fromarray(a) for a in _rgb(batch)]
            f = self.encoder.encode_images(pil)
            cls = getattr(self.encoder, "classify_images", None)
            return f, (np.asarray(cls(pil)) if self.can_classify and cls else None)
        import torch

        model = self.encoder.model  # type: ignore[attr-defined]
        with torch.inference_mode():
            x = self._tensor(batch)
            if getattr(model, "family", "") == "classifier":
                out = model(x)
                return out["features"].float().numpy(), out["logits"].float().numpy()
            f = model.encode_image(x, normalize=False).float().numpy()
        if self.can_classify:
            return f, np.asarray(
                self.encoder.classify_images(  # type: ignore[attr-defined]
                    [Image.fromarray(a) for a in _rgb(batch)]
                )
            )
        return f, None

    def labels(self, logits: np.ndarray | None) -> list[str]:
        """Argmax class names of (N, C) logits."""
        if logits is None or not self.can_classify:
            raise InvalidInputError(f"{self.spec!r} has no category head: it cannot classify")
        return [self.classes[i] for i in np.asarray(logits).argmax(axis=1)]


def real_features(
    tower: ImageTower, images: np.ndarray, say: Say = _quiet
) -> tuple[np.ndarray, np.ndarray | None]:
    """Features (N, D) and logits (N, C) or None of real images, cached in
    ``$SHOPLENS_HOME/cache/fidelity`` (keyed by the tower's weights and the images)."""
    from shoplens.config import atomic_write, cache_dir

    h = hashlib.sha256(tower.identity().encode())
    h.update(str(images.shape).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    path = cache_dir() / "fidelity" / f"real-{h.hexdigest()[:24]}.npz"
    if path.is_file():
        with np.load(path) as cached:
            if cached["features"].shape[0] == len(images):
                logits = cached["logits"] if "logits" in cached.files else None
                return cached["features"], logits
    t0 = time.perf_counter()
    feats, logits = tower(images)
    with atomic_write(path) as f:
        if logits is None:
            np.savez(f, features=feats)
        else:
            np.savez(f, features=feats, logits=logits)
    say(f"features of {len(images)} real images ({time.perf_counter() - t0:.0f}s, cached)")
    return feats, logits
