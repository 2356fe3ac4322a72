"""Image tower configs by ``type`` and the factory that builds them."""

from __future__ import annotations

from typing import Union

from shoplens.errors import InvalidInputError
from shoplens.models.cnn import CNNConfig, CNNTower
from shoplens.models.common import ImageTower
from shoplens.models.effnet import EffNetConfig, EffNetTower
from shoplens.models.vit import ViTConfig, ViTTower

# ``Union`` (not ``|``) so the alias also works at run time on Python 3.10.
ImageTowerConfig = Union[CNNConfig, ViTConfig, EffNetConfig]  # noqa: UP007

_TOWERS: dict[type, type[ImageTower]] = {
    CNNConfig: CNNTower,
    ViTConfig: ViTTower,
    EffNetConfig: EffNetTower,
}


def build_image_tower(cfg: ImageTowerConfig) -> ImageTower:
    """The tower for a config: ``cnn``, ``vit`` or ``effnet-lite0``."""
    cls = _TOWERS.get(type(cfg))
    if cls is None:
        raise InvalidInputError(f"unknown image tower config {type(cfg).__name__}")
    return cls(cfg)
