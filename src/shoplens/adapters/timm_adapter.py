"""``timm:NAME:PATH`` — a timm image model (pooled features, no classifier) from a checkpoint.

``timm.create_model(NAME, pretrained=False, num_classes=0)`` then the state dict in PATH
(``.safetensors`` or a torch ``.pth``/``.pt``/``.bin``; ``state_dict``/``model`` wrappers and
``module.`` prefixes are unwrapped, classifier-head weights ignored). Preprocessing comes
from the model's pretrained config (``resolve_data_config`` + ``create_transform``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from shoplens.adapters.open_clip_adapter import describe_error
from shoplens.errors import InvalidInputError, NotFoundError
from shoplens.models.base import Encoder, Modality
from shoplens.models.encoders import encode_in_batches, to_rgb
from shoplens.registry import register_adapter

PREFIX = "timm"
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
_PREFIXES = ("module.", "_orig_mod.")


def load_state_dict_file(path: Path) -> dict[str, Any]:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict (CPU)."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise InvalidInputError(f"cannot read checkpoint {path}: {describe_error(e)}") from e
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}}
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InvalidInputError(f"checkpoint {path} does not hold a state dict of tensors")
    state: dict[str, Any] = {}
    for key, value in obj.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        state[key] = value
    return state


def _head_prefixes(model: Any) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    heads = cfg.get("classifier") or ("fc", "head", "classifier")
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    return tuple(h + "." for h in heads)


def fit_state_dict(model: Any, state: dict[str, Any], what: str) -> dict[str, Any]:
    """Check ``state`` against ``model`` (drop unused classifier-head keys) or raise."""
    expected = model.state_dict()
    heads = _head_prefixes(model)
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(heads)}
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        example = (missing + unexpected + mismatched)[0]
        raise InvalidInputError(
            f"{what} does not match the architecture: {len(missing)} missing, "
            f"{len(unexpected)} unexpected and {len(mismatched)} shape-mismatched keys "
            f"(of {len(expected)}; e.g. {example!r}); wrong model name or checkpoint?"
        )
    return state


class TimmEncoder(Encoder):
    """A timm backbone's pooled features as an image :class:`Encoder`."""

    modalities: ClassVar[frozenset[Modality]] = frozenset({"image"})

    def __init__(self, arg: str, *, batch_size: int = 64) -> None:
        import timm
        import torch
        from timm.data import create_transform, resolve_data_config

        self.name = f"{PREFIX}:{arg}"
        self.batch_size = batch_size
        self._torch = torch
        model_name, sep, path_s = arg.partition(":")
        if not sep or not model_name or not path_s:
            raise InvalidInputError(
                f"timm spec needs NAME:PATH, got {arg!r}; e.g. timm:resnet50:/models/resnet50.pth"
            )
        if not timm.is_model(model_name):
            raise InvalidInputError(
                f"unknown timm model {model_name!r} (see timm.list_models(); e.g. resnet50)"
            )
        path = Path(path_s).expanduser()
        if not path.is_file():
            raise NotFoundError(f"timm checkpoint not found: {path}")
        try:
            model = timm.create_model(model_name, pretrained=False, num_classes=0)
        except Exception as e:
            raise InvalidInputError(f"cannot build timm model {model_name!r}: {e}") from e
        state = fit_state_dict(model, load_state_dict_file(path), f"checkpoint {path}")
        try:
            model.load_state_dict(state, strict=False)
        except Exception as e:
            raise InvalidInputError(f"cannot load {path} into {model_name}: {e}") from e
        self.model = model.eval()
        self.data_config = resolve_data_config({}, model=model)
        self.transform = create_transform(**self.data_config, is_training=False)
        self.dim = int(self.encode_images([Image.new("RGB", (8, 8))]).shape[1])

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed images -> (N, dim) float32, L2-normalised."""

        def encode(chunk: Sequence[Image.Image]) -> Any:
            x = self._torch.stack([self.transform(to_rgb(im)) for im in chunk])  # (B,3,H,W)
            feats = self.model(x)  # (B, D) pooled, num_classes=0
            return feats.reshape(feats.shape[0], -1)

        return encode_in_batches(list(images), self.batch_size, getattr(self, "dim", 0), encode)


@register_adapter(PREFIX)
def _timm(arg: str) -> Encoder:
    return TimmEncoder(arg)


__all__ = ["TimmEncoder", "fit_state_dict", "load_state_dict_file"]
