"""``open_clip:ARCH:PATH`` — an OpenCLIP model (image + text in one space) from local files.

Accepted arguments (the part after ``open_clip:``):

* ``ARCH:FILE``  — a built-in (or ``open_clip.add_model_config``-registered) architecture
  and a checkpoint file (``.pt``/``.pth``/``.bin``/``.safetensors``).
* ``ARCH:DIR`` or ``DIR`` or ``local-dir:DIR`` — an HF-style OpenCLIP export
  (``open_clip_config.json`` + ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``),
  e.g. a downloaded Marqo-FashionSigLIP or FashionCLIP. ARCH is then informational only:
  the folder's config defines the model.
* ``hf-hub:ORG/REPO`` — passed through to open_clip (needs network; fails offline).
* ``ARCH:TAG`` — a known pretrained tag (e.g. ``ViT-B-32:openai``) is passed through too
  (open_clip downloads it, or uses its cache).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from shoplens.errors import InvalidInputError, NotFoundError
from shoplens.models.base import Encoder, Modality
from shoplens.models.encoders import (
    encode_in_batches,
    encode_texts_once,
    set_offline_env,
    to_rgb,
)
from shoplens.registry import register_adapter

PREFIX = "open_clip"
_HF_HUB = "hf-hub:"
_LOCAL_DIR = "local-dir:"
_CONFIG_FILE = "open_clip_config.json"


def _resolve(arg: str, open_clip: Any) -> tuple[str, str | None]:
    """``ARCH:PATH`` argument -> (open_clip model_name, pretrained) with path checks."""
    if arg.startswith(_HF_HUB):
        return arg, None
    if arg.startswith(_LOCAL_DIR):
        return _local_dir(Path(arg[len(_LOCAL_DIR) :])), None
    arch, sep, path_s = arg.partition(":")
    if not sep:
        if Path(arch).is_dir():
            return _local_dir(Path(arch)), None
        raise InvalidInputError(
            f"open_clip spec needs ARCH:PATH (or a model folder), got {arg!r}; "
            "e.g. open_clip:ViT-B-32:/models/clip.pt"
        )
    if not arch or not path_s:
        raise InvalidInputError(f"open_clip spec needs both ARCH and PATH, got {arg!r}")
    if arch.startswith(_HF_HUB) or path_s.startswith(_HF_HUB):
        raise InvalidInputError(f"use open_clip:hf-hub:ORG/REPO on its own, got {arg!r}")
    path = Path(path_s).expanduser()
    if path.is_dir():
        return _local_dir(path), None
    known = open_clip.list_models()
    if arch not in known:
        raise InvalidInputError(
            f"unknown open_clip architecture {arch!r} ({len(known)} known, "
            "see open_clip.list_models(); e.g. ViT-B-32, ViT-B-16-SigLIP)"
        )
    if path.is_file():
        return arch, str(path)
    if path_s in open_clip.list_pretrained_tags_by_model(arch):
        return arch, path_s  # a pretrained tag: open_clip resolves (downloads) it
    raise NotFoundError(f"open_clip checkpoint not found: {path}")


def _local_dir(path: Path) -> str:
    path = path.expanduser()
    if not path.is_dir():
        raise NotFoundError(f"open_clip model folder not found: {path}")
    if not (path / _CONFIG_FILE).is_file():
        raise NotFoundError(f"open_clip model folder {path} has no {_CONFIG_FILE}")
    return f"{_LOCAL_DIR}{path}"


class OpenClipEncoder(Encoder):
    """An OpenCLIP model wrapped as an :class:`Encoder` (shared image/text space)."""

    modalities: ClassVar[frozenset[Modality]] = frozenset({"image", "text"})

    def __init__(self, arg: str, *, batch_size: int = 64) -> None:
        import open_clip
        import torch

        self.name = f"{PREFIX}:{arg}"
        self.batch_size = batch_size
        self._torch = torch
        model_name, pretrained = _resolve(arg.strip(), open_clip)
        if not model_name.startswith(_HF_HUB):
            set_offline_env()
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device="cpu"
            )
            tokenizer = open_clip.get_tokenizer(model_name)
        except FileNotFoundError as e:
            raise NotFoundError(f"cannot load {self.name!r}: {e}") from e
        except Exception as e:
            hint = (
                " (from the Hugging Face Hub: offline?)" if model_name.startswith(_HF_HUB) else ""
            )
            raise InvalidInputError(f"cannot load {self.name!r}{hint}: {describe_error(e)}") from e
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.dim = int(self.encode_images([Image.new("RGB", (8, 8))]).shape[1])

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed images -> (N, dim) float32, L2-normalised."""

        def encode(chunk: Sequence[Image.Image]) -> Any:
            x = self._torch.stack([self.preprocess(to_rgb(im)) for im in chunk])  # (B,3,H,W)
            return self.model.encode_image(x)  # (B, D)

        return encode_in_batches(list(images), self.batch_size, getattr(self, "dim", 0), encode)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts -> (N, dim) float32, L2-normalised."""

        def encode(chunk: list[str]) -> Any:
            tokens = self.tokenizer(chunk)  # (B, context_length)
            return self.model.encode_text(tokens)  # (B, D)

        return encode_texts_once(texts, self.batch_size, self.dim, encode)


def describe_error(e: BaseException) -> str:
    """One line for a load error; ``load_state_dict`` mismatches are summarised as counts."""
    text = str(e).strip()
    if "Error(s) in loading state_dict" in text:
        counts = []
        for label, pattern in (
            ("missing", r"Missing key\(s\) in state_dict: (.*)"),
            ("unexpected", r"Unexpected key\(s\) in state_dict: (.*)"),
        ):
            m = re.search(pattern, text)
            if m:
                n_keys = len(re.findall(r'"[^"]+"', m.group(1)))
                counts.append(f"{n_keys} {label} keys")
        mismatched = len(re.findall(r"size mismatch for ", text))
        if mismatched:
            counts.append(f"{mismatched} keys with mismatched shapes")
        return "checkpoint does not match the architecture (" + ", ".join(counts) + ")"
    first = text.splitlines()[0][:300] if text else ""
    kind = type(e).__name__
    if type(e).__module__ not in ("builtins", "__main__"):
        kind = f"{type(e).__module__.split('.')[0]}.{kind}"  # e.g. struct.error, not error
    return f"{kind}: {first}" if first else kind


@register_adapter(PREFIX)
def _open_clip(arg: str) -> Encoder:
    return OpenClipEncoder(arg)


__all__ = ["OpenClipEncoder", "describe_error"]
