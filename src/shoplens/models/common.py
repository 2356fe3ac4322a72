"""Pieces shared by shoplens's own models: image input handling, projection heads,
feature caches and the ``model_name`` / ``model_config`` contract.

Every image tower takes ``(B, 3, H, W)`` float images in ``[0, 1]`` (any H, W) and does
its own preprocessing (optional grayscale, resize to ``image_size``, mean/std
normalisation), so datasets, training and inference cannot disagree about it.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2.functional import rgb_to_grayscale

from shoplens.errors import InvalidInputError

# Fashion-MNIST pixel statistics (train split, 0..1 scale).
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530


@dataclass(frozen=True)
class ImageTowerBase:
    """Fields every image tower config has: input handling and the output size.

    The tower converts to ``grayscale`` first (when set), resizes to ``image_size`` and
    normalises with ``mean`` / ``std`` (per RGB channel, on 0..1 pixels). ``out_dim``:
    a final linear layer to that size; ``None`` returns the pooled features.
    """

    image_size: int = 28
    grayscale: bool = False
    mean: tuple[float, float, float] = (FASHION_MNIST_MEAN,) * 3
    std: tuple[float, float, float] = (FASHION_MNIST_STD,) * 3
    out_dim: int | None = None


def check_positive(where: str, **values: int | float) -> None:
    """Raise ``InvalidInputError`` naming the first value that is not > 0."""
    for key, value in values.items():
        if not value > 0:
            raise InvalidInputError(f"{where}: {key} must be > 0, got {value!r}")


def check_images(x: torch.Tensor, where: str) -> None:
    """A float batch ``(B, 3, H, W)``, else ``InvalidInputError`` with the shape found."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InvalidInputError(f"{where}: expected images of shape (B, 3, H, W), got {got}")
    if not x.is_floating_point():
        raise InvalidInputError(f"{where}: expected float images in [0, 1], got {x.dtype}")


class ImagePreprocess(nn.Module):
    """``[0, 1]`` images -> (optional grayscale) -> resize -> ``(x - mean) / std``."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, spec: ImageTowerBase) -> None:
        super().__init__()
        check_positive("image tower", image_size=spec.image_size, std=min(spec.std))
        self.image_size = spec.image_size
        self.grayscale = spec.grayscale
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, S, S) normalised."""
        if self.grayscale:
            x = rgb_to_grayscale(x, num_output_channels=3)
        if x.shape[-2:] != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std


class ImageTower(nn.Module):
    """Base image tower: ``forward(x (B, 3, H, W) in [0, 1]) -> (B, out_dim)``.

    Subclasses build their body, set ``feature_dim`` and implement
    :meth:`forward_features` on preprocessed input, then call :meth:`_finish`.
    """

    feature_dim: int
    out_dim: int

    def __init__(self, cfg: ImageTowerBase) -> None:
        super().__init__()
        if cfg.out_dim is not None:
            check_positive(f"{type(self).__name__}", out_dim=cfg.out_dim)
        self.preprocess = ImagePreprocess(cfg)
        self.image_size = cfg.image_size
        self._out_dim = cfg.out_dim

    def _finish(self, feature_dim: int) -> None:
        """Add the output head once the body's feature size is known."""
        self.feature_dim = feature_dim
        self.out_dim = self._out_dim or feature_dim
        self.head: nn.Module = (
            nn.Linear(feature_dim, self._out_dim) if self._out_dim else nn.Identity()
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed (B, 3, S, S) -> pooled (B, feature_dim)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, out_dim)."""
        check_images(x, type(self).__name__)
        return self.head(self.forward_features(self.preprocess(x)))


ProjectionKind = Literal["linear", "mlp", "none"]


def projection(in_dim: int, out_dim: int, kind: ProjectionKind, hidden: int = 0) -> nn.Module:
    """``linear``: one layer; ``mlp``: Linear-GELU-Linear (``hidden`` or ``2 * out_dim``)."""
    if kind == "none":
        if in_dim != out_dim:
            raise InvalidInputError(
                f"projection 'none' needs equal dims, got {in_dim} -> {out_dim}; use 'linear'"
            )
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        hidden = hidden or 2 * out_dim
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
    raise InvalidInputError(f"projection must be 'linear', 'mlp' or 'none', got {kind!r}")


def freeze(module: nn.Module) -> nn.Module:
    """Stop gradients for all parameters and keep the module (and its BatchNorm) in eval."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


class FeatureCache:
    """A bounded, thread-safe LRU cache ``key -> (D,) CPU tensor`` for frozen towers."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max(0, int(max_items))
        self._data: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def lookup(
        self,
        keys: Sequence[Hashable],
        compute: Callable[[list[int]], torch.Tensor],
        device: torch.device,
    ) -> torch.Tensor:
        """Features for ``keys`` (B,) -> (B, D); ``compute(positions) -> (M, D)`` is called
        with the first position of each distinct key not in the cache."""
        with self._lock:
            found = {k: self._touch(k) for k in keys if k in self._data}
        first = {k: i for i, k in reversed(list(enumerate(keys))) if k not in found}
        missing = sorted(first.values())
        fresh: dict[Hashable, torch.Tensor] = {}
        if missing:
            new = compute(missing).detach().float().cpu()  # (M, D)
            fresh = {keys[i]: row for i, row in zip(missing, new, strict=True)}
        with self._lock:
            self.hits += len(keys) - len(missing)
            self.misses += len(missing)
            for k, row in fresh.items():
                self._put(k, row)
        found.update(fresh)
        return torch.stack([found[k] for k in keys]).to(device)  # (B, D)

    def _touch(self, key: Hashable) -> torch.Tensor:
        self._data.move_to_end(key)
        return self._data[key]

    def _put(self, key: Hashable, value: torch.Tensor) -> None:
        if self.max_items == 0:
            return
        self._data[key] = value
        while len(self._data) > self.max_items:
            self._data.popitem(last=False)


def tensor_keys(x: torch.Tensor) -> list[str]:
    """Content hashes of the rows of ``x`` (B, ...): equal images get equal keys."""
    flat = x.detach().to("cpu", torch.float32).contiguous().reshape(x.shape[0], -1)  # (B, N)
    arr = flat.numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in arr]


class RegisteredModel(nn.Module):
    """Base of registered families: ``model_name`` and JSON-able ``model_config``.

    ``shoplens.registry.build_model`` sets both; a family built by hand gets its family
    name and the dataclass config.
    """

    family: str = ""
    model_name: str
    model_config: dict[str, Any]
    embed_dim: int

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        from shoplens.config import config_to_dict

        self.cfg = cfg
        self.model_name = self.family
        self.model_config = {"family": self.family, **config_to_dict(cfg)}

    @property
    def device(self) -> torch.device:
        """Device of the first parameter (CPU for a model without parameters)."""
        return next((p.device for p in self.parameters()), torch.device("cpu"))
