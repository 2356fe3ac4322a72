"""Shared fixtures: an isolated SHOPLENS_HOME and a tiny generated product catalogue.

The synthetic catalogue has 4 categories with distinct shapes and colours, 6 products
each (24 images of 32x32 px), plus attribute columns, written as PNGs and a CSV manifest.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CATEGORIES: dict[str, tuple[str, tuple[int, int, int]]] = {
    # category: (shape, colour)
    "Red circle": ("circle", (220, 30, 30)),
    "Blue square": ("square", (30, 60, 220)),
    "Green triangle": ("triangle", (30, 170, 60)),
    "Yellow stripes": ("stripes", (230, 200, 20)),
}
PER_CATEGORY = 6


def make_product_image(category: str, seed: int, size: int = 32) -> Image.Image:
    """A product photo for ``category``: its shape in its colour, jittered by ``seed``."""
    shape, colour = CATEGORIES[category]
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), (245, 245, 245))
    d = ImageDraw.Draw(img)
    off = int(rng.integers(-3, 4))
    m = 6 + off
    if shape == "circle":
        d.ellipse((m, m, size - m, size - m), fill=colour)
    elif shape == "square":
        d.rectangle((m, m, size - m, size - m), fill=colour)
    elif shape == "triangle":
        d.polygon([(size // 2, m), (m, size - m), (size - m, size - m)], fill=colour)
    else:
        for y in range(2 + off % 3, size, 6):
            d.rectangle((0, y, size, y + 2), fill=colour)
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_catalog(folder: Path, per_category: int = PER_CATEGORY) -> Path:
    """Write images and ``catalog.csv`` (sku,title,category,image,color,size) into folder."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for c_idx, category in enumerate(CATEGORIES):
        for i in range(per_category):
            sku = f"SKU-{c_idx}{i:02d}"
            path = folder / "img" / f"{sku}.png"
            make_product_image(category, seed=100 * c_idx + i).save(path)
            rows.append(
                {
                    "sku": sku,
                    "title": f"{category} product number {i}",
                    "category": category,
                    "image": f"img/{sku}.png",
                    "color": category.split()[0].lower(),
                    "size": "large" if i % 2 else "small",
                }
            )
    manifest = folder / "catalog.csv"
    with manifest.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; more threads spin when the CPU is shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test runs against a temporary SHOPLENS_HOME, never the user's."""
    home = tmp_path_factory.mktemp("shoplens-home")
    old = os.environ.get("SHOPLENS_HOME")
    os.environ["SHOPLENS_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("SHOPLENS_HOME", None)
    else:
        os.environ["SHOPLENS_HOME"] = old


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty SHOPLENS_HOME for one test."""
    path = tmp_path / "home"
    monkeypatch.setenv("SHOPLENS_HOME", str(path))
    return path


@pytest.fixture
def product_image() -> Callable[[str, int], Image.Image]:
    return make_product_image


@pytest.fixture
def catalog_dir(tmp_path: Path) -> Path:
    """A freshly written tiny catalogue folder; returns the manifest path."""
    return write_catalog(tmp_path / "src")


@pytest.fixture(scope="session")
def built_catalog(session_home: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Catalogue 'tiny' ingested and indexed with the test-tiny encoders (session-wide)."""
    from shoplens.catalog.ingest import ingest_manifest
    from shoplens.catalog.store import Catalog
    from shoplens.index.build import build_indexes

    manifest = write_catalog(tmp_path_factory.mktemp("tiny-src"))
    ingest_manifest(manifest, "tiny")
    with Catalog.open("tiny") as cat:
        build_indexes(cat, "test-tiny", text_encoder="test-tiny-text")
    return "tiny"
