"""``hf-clip:PATH`` — a CLIP / SigLIP model saved with transformers ``save_pretrained``.

The folder holds ``config.json`` + weights and the processor files (tokenizer and image
processor). Loaded with ``local_files_only=True``; embeddings come from
``get_image_features`` / ``get_text_features`` and are L2-normalised.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from shoplens.adapters.open_clip_adapter import describe_error
from shoplens.errors import InvalidInputError, NotFoundError
from shoplens.models.base import Encoder, Modality
from shoplens.models.encoders import (
    encode_in_batches,
    encode_texts_once,
    quiet_hf_progress,
    set_offline_env,
    to_rgb,
)
from shoplens.registry import register_adapter

if TYPE_CHECKING:
    import torch

PREFIX = "hf-clip"


def features_tensor(out: Any) -> torch.Tensor:
    """The (B, D) embedding from a ``get_*_features`` result of any transformers version.

    Older versions return a tensor; 5.x returns a ``BaseModelOutputWithPooling`` whose
    ``pooler_output`` holds the projected embedding (or a tuple with ``return_dict=False``).
    """
    import torch

    if isinstance(out, torch.Tensor):
        return out
    for attr in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(out, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, (tuple, list)):
        for value in out:
            if isinstance(value, torch.Tensor) and value.ndim == 2:
                return value
    raise InvalidInputError(f"cannot find embeddings in model output of type {type(out).__name__}")


def _load_processors(path: Path) -> tuple[Any, Any]:
    """(tokenizer, image_processor) from a folder: AutoProcessor first, then the Auto* pair."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    tokenizer = image_processor = None
    try:
        processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
        tokenizer = getattr(processor, "tokenizer", None)
        image_processor = getattr(processor, "image_processor", None)
    except Exception:
        pass  # fall back to loading the two parts separately
    errors = []
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as e:
            errors.append(f"tokenizer: {describe_error(e)}")
    if image_processor is None:
        try:
            image_processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
        except Exception as e:
            errors.append(f"image processor: {describe_error(e)}")
    if tokenizer is None or image_processor is None:
        raise InvalidInputError(f"cannot load the processor files in {path}: {'; '.join(errors)}")
    return tokenizer, image_processor


class HFClipEncoder(Encoder):
    """A transformers CLIP-style model (shared image/text space) from a local folder."""

    modalities: ClassVar[frozenset[Modality]] = frozenset({"image", "text"})

    def __init__(self, path: str, *, batch_size: int = 64) -> None:
        set_offline_env()
        import torch
        from transformers import AutoModel

        self.name = f"{PREFIX}:{path}"
        self.batch_size = batch_size
        self._torch = torch
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise NotFoundError(f"hf-clip model folder not found: {folder}")
        if not (folder / "config.json").is_file():
            raise NotFoundError(
                f"{folder} has no config.json (expected a transformers save_pretrained folder)"
            )
        try:
            with quiet_hf_progress():
                model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:
            raise InvalidInputError(
                f"cannot load a model from {folder}: {describe_error(e)}"
            ) from e
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            kind = getattr(model.config, "model_type", type(model).__name__)
            raise InvalidInputError(
                f"model in {folder} ({kind}) is not a CLIP/SigLIP-style image-text model"
            )
        self.model = model.float().eval()
        self.tokenizer, self.image_processor = _load_processors(folder)
        model_type = str(getattr(model.config, "model_type", ""))
        text_cfg = getattr(model.config, "text_config", None)
        self.max_length = int(getattr(text_cfg, "max_position_embeddings", 77) or 77)
        # SigLIP was trained on texts padded to the full length; CLIP uses an EOS token.
        self.padding: str | bool = "max_length" if "siglip" in model_type else True
        self.dim = int(self.encode_images([Image.new("RGB", (8, 8))]).shape[1])

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed images -> (N, dim) float32, L2-normalised."""

        def encode(chunk: Sequence[Image.Image]) -> Any:
            batch = self.image_processor(images=[to_rgb(im) for im in chunk], return_tensors="pt")
            pixels = batch["pixel_values"].float()  # (B, 3, H, W)
            return features_tensor(self.model.get_image_features(pixel_values=pixels))  # (B, D)

        return encode_in_batches(list(images), self.batch_size, getattr(self, "dim", 0), encode)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts -> (N, dim) float32, L2-normalised."""

        def encode(chunk: list[str]) -> Any:
            tok = self.tokenizer(
                chunk,
                padding=self.padding,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            kwargs = {"input_ids": tok["input_ids"]}  # (B, L)
            if "attention_mask" in tok:
                kwargs["attention_mask"] = tok["attention_mask"]
            return features_tensor(self.model.get_text_features(**kwargs))  # (B, D)

        return encode_texts_once(texts, self.batch_size, self.dim, encode)


@register_adapter(PREFIX)
def _hf_clip(arg: str) -> Encoder:
    return HFClipEncoder(arg)


__all__ = ["HFClipEncoder", "features_tensor"]
