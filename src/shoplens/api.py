"""The Python API in a few calls::

import shoplens

shoplens.ingest("catalog.csv", name="shop")          # or "fashion-mnist", or a folder
shoplens.build_index("shop")                          # effnet-lite0 + BM25/MiniLM text
engine = shoplens.open_search("shop")
engine.search(text="red dress", k=10)
engine.search(image=PIL.Image.open("photo.jpg"), k=10)
engine.similar("SKU-123", k=10)
"""

from __future__ import annotations

from pathlib import Path

from shoplens.catalog.ingest import IngestReport, ingest_fashion_mnist, ingest_manifest
from shoplens.catalog.store import Catalog
from shoplens.index.build import BuildReport, build_indexes
from shoplens.search.engine import SearchEngine


def ingest(source: str | Path, name: str | None = None, **options: object) -> IngestReport:
    """Ingest a manifest, a folder of images, or ``"fashion-mnist"`` (see ingest_manifest)."""
    if str(source) == "fashion-mnist":
        return ingest_fashion_mnist(name or "fashion-mnist", **options)  # type: ignore[arg-type]
    if name is None:
        from shoplens.errors import InvalidInputError

        raise InvalidInputError("name is required for a manifest or folder")
    return ingest_manifest(source, name, **options)  # type: ignore[arg-type]


def build_index(
    name: str,
    encoder: str | None = None,
    factory: str | None = None,
    *,
    text: bool = True,
    text_encoder: str = "minilm",
) -> BuildReport:
    """Embed catalogue ``name`` and build its image (and text) indexes."""
    with Catalog.open(name) as catalog:
        return build_indexes(catalog, encoder, factory, text=text, text_encoder=text_encoder)


def open_search(name: str, encoder: str | None = None) -> SearchEngine:
    """A search engine over catalogue ``name`` (its indexes must be built)."""
    return SearchEngine.open(name, encoder)
