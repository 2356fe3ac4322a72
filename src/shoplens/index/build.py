"""Build the image index and the text index (dense text embeddings + BM25) of a catalogue."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shoplens import progress
from shoplens.catalog.store import Catalog, Product
from shoplens.index.base import make_index
from shoplens.index.store import (
    IndexBuild,
    _previous_cache,
    embed_products,
    text_key,
    write_build,
)
from shoplens.registry import get_encoder

DEFAULT_IMAGE_ENCODER = "effnet-lite0"
DEFAULT_TEXT_ENCODER = "minilm"


def text_index_name(text_encoder: str) -> str:
    return f"text-{text_encoder}"


def default_image_encoder(catalog: Catalog) -> str:
    """The catalogue's chosen encoder (set at ingest or by the last build), else the default."""
    return catalog.get_meta("default_encoder") or DEFAULT_IMAGE_ENCODER


def _embed_and_write(
    catalog: Catalog,
    name: str,
    products: list[Product],
    keys: list[str],
    encode: Callable[[list[Product]], np.ndarray],
    *,
    batch_size: int,
    factory: str | None,
    meta: dict[str, Any],
    extra_writer: Callable[[Path], None] | None = None,
) -> IndexBuild:
    """Embed products (reusing the previous build's vectors by key) and write a new build."""
    with progress.task(f"embed {meta['kind']}s ({meta['encoder']})", len(products)) as advance:
        emb = embed_products(
            products, keys, encode, _previous_cache(catalog, name), batch_size=batch_size,
            advance=advance,
        )  # fmt: skip
    ids = np.array([p.id for p in products], dtype=np.int64)
    return write_build(
        catalog, name, ids=ids, keys=keys, embeddings=emb, factory=factory, extra_meta=meta,
        extra_writer=extra_writer,
    )  # fmt: skip


def build_image_index(
    catalog: Catalog, encoder_spec: str | None = None, factory: str | None = None
) -> IndexBuild:
    """Embed every product image with ``encoder_spec`` and build its ANN index."""
    spec = encoder_spec or default_image_encoder(catalog)
    encoder = get_encoder(spec)
    if factory is not None:
        make_index(encoder.dim, factory)  # fail on a bad factory string before embedding
    products = list(catalog.iter_products())

    def encode(batch: list[Product]) -> np.ndarray:
        return encoder.encode_images([catalog.load_image(p) for p in batch])

    build = _embed_and_write(
        catalog, spec, products, [p.image_key for p in products], encode,
        batch_size=max(16, encoder.batch_size), factory=factory,
        meta={"encoder": spec, "kind": "image", "modalities": sorted(encoder.modalities)},
    )  # fmt: skip
    catalog.set_meta("default_encoder", spec)
    return build


def _write_bm25(texts: list[str]) -> Any:
    import bm25s

    tokens = bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)
    retriever = bm25s.BM25()
    retriever.index(tokens, show_progress=False)

    def writer(path: Path) -> None:
        retriever.save(str(path / "bm25"))

    return writer


def default_text_encoder(catalog: Catalog) -> str:
    return catalog.get_meta("text_encoder") or DEFAULT_TEXT_ENCODER


def build_text_index(
    catalog: Catalog, text_encoder: str = DEFAULT_TEXT_ENCODER, factory: str | None = None
) -> IndexBuild:
    """Embed every product's text (title, category, attributes) and build BM25 beside it."""
    encoder = get_encoder(text_encoder)
    name = text_index_name(text_encoder)
    products = list(catalog.iter_products())
    texts = [p.text for p in products]

    def encode(batch: list[Product]) -> np.ndarray:
        return encoder.encode_texts([p.text for p in batch])

    build = _embed_and_write(
        catalog, name, products, [text_key(t) for t in texts], encode,
        batch_size=256, factory=factory, meta={"encoder": text_encoder, "kind": "text"},
        extra_writer=_write_bm25(texts),
    )  # fmt: skip
    catalog.set_meta("text_encoder", text_encoder)
    return build


@dataclass
class BuildReport:
    catalog: str
    image: dict[str, Any]
    text: dict[str, Any] | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "catalog": self.catalog,
            "image": self.image,
            "text": self.text,
            "seconds": round(self.seconds, 2),
        }


def build_indexes(
    catalog: Catalog,
    encoder: str | None = None,
    factory: str | None = None,
    *,
    text: bool = True,
    text_encoder: str = DEFAULT_TEXT_ENCODER,
) -> BuildReport:
    """Build the image index and (unless ``text=False``) the text index."""
    import time

    t0 = time.time()
    img = build_image_index(catalog, encoder, factory)
    txt = build_text_index(catalog, text_encoder) if text else None
    keep = ("encoder", "factory", "count", "dim")
    return BuildReport(
        catalog=catalog.name,
        image={k: img.meta[k] for k in keep},
        text={k: txt.meta[k] for k in keep} if txt else None,
        seconds=time.time() - t0,
    )
