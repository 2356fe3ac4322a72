"""Executor side of ``shoplens pipeline embed``: load, check, normalise and embed images.

:func:`embed_partition` is the ``mapInPandas`` function. It runs in Spark's Python
workers and does what ``shoplens ingest`` followed by ``shoplens index build`` does to one
product, with the same code: images are loaded like ingest loads them (local paths inside
the manifest folder, or URLs fetched concurrently with timeouts and retries), decoded
under the safety limits of :mod:`shoplens.data.images`, normalised by
:func:`~shoplens.data.images.encode_for_store` and embedded from the stored bytes (what
``Catalog.load_image`` gives the index build), so the embeddings equal the single-process
ones. The encoder is created once per Python worker and kept in :data:`_ENCODERS`, keyed
by its spec; Spark reuses workers across tasks.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoplens.data.manifest import ManifestRow

if TYPE_CHECKING:
    import pandas as pd

    from shoplens.models.base import Encoder

#: Output columns of :func:`embed_partition` (Spark DDL). ``reason`` is null for embedded
#: rows; a refused row has a reason and null image fields and embedding.
RESULT_SCHEMA = (
    "line long, sku string, title string, category string, attributes string, image string, "
    "image_key string, phash string, width int, height int, embedding array<float>, "
    "reason string"
)
RESULT_COLUMNS = [c.strip().split(" ")[0] for c in RESULT_SCHEMA.split(",")]

_ENCODERS: dict[str, Encoder] = {}


@dataclass(frozen=True)
class TaskConfig:
    """What every task needs; pickled to the workers with the function."""

    encoder: str
    batch_size: int
    root: str  # folder image paths are relative to (absolute)
    images_dir: str  # where normalised images are written (content-addressed)
    allow_outside_root: bool = False
    concurrency: int = 8
    timeout: float = 10.0
    retries: int = 2
    torch_threads: int = 1


def worker_encoder(spec: str, torch_threads: int, loads: Any = None) -> Encoder:
    """The worker's encoder for ``spec``, created on first use (then cached).

    Sets ``torch.set_num_threads(torch_threads)`` first, so N Spark cores use N cores
    rather than N times all of them. ``loads`` (a Spark accumulator) counts creations.
    """
    encoder = _ENCODERS.get(spec)
    if encoder is None:
        import torch

        from shoplens.registry import create_encoder

        torch.set_num_threads(max(1, torch_threads))
        encoder = create_encoder(spec)
        _ENCODERS[spec] = encoder
        if loads is not None:
            loads.add(1)
    return encoder


def write_image(images_dir: str, key: str, data: bytes) -> None:
    """Write normalised image bytes under their content key (atomic, idempotent)."""
    from shoplens.catalog.store import write_content_file

    write_content_file(Path(images_dir) / key[:2] / key, data)


def embed_partition(
    cfg: TaskConfig, loads: Any, batches: Iterator[pd.DataFrame]
) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` body: staged records in, :data:`RESULT_COLUMNS` rows out.

    Rows are processed in input order in chunks of ``cfg.batch_size`` (one encoder batch
    each), so the same partition always gives the same batches and the same bytes.
    """
    import warnings

    warnings.filterwarnings("ignore", message=".*pandas >= 3.0.0.*")
    chunk: list[ManifestRow] = []
    for pdf in batches:
        for rec in pdf.itertuples(index=False):
            attrs = json.loads(rec.attributes) if rec.attributes else {}
            chunk.append(
                ManifestRow(int(rec.line), rec.sku, rec.title, rec.category, rec.image, attrs)
            )
            if len(chunk) >= cfg.batch_size:
                yield embed_chunk(cfg, loads, chunk)
                chunk = []
    if chunk:
        yield embed_chunk(cfg, loads, chunk)


def embed_chunk(cfg: TaskConfig, loads: Any, rows: list[ManifestRow]) -> pd.DataFrame:
    """Load, check, normalise and embed one batch of rows (refused rows get a reason)."""
    import pandas as pd
    from PIL import Image

    from shoplens.catalog.ingest import _load_chunk, phash_hex
    from shoplens.data.images import encode_for_store
    from shoplens.errors import ShoplensError
    from shoplens.generate import PROVENANCE_KEY, is_generated

    loaded = _load_chunk(
        rows,
        Path(cfg.root),
        allow_outside_root=cfg.allow_outside_root,
        concurrency=cfg.concurrency,
        timeout=cfg.timeout,
        retries=cfg.retries,
    )
    out: list[dict[str, Any]] = []
    good: list[int] = []  # positions in ``out`` of rows to embed
    pixels: list[Image.Image] = []
    for row, img in zip(rows, loaded, strict=True):
        base = {
            "line": row.line,
            "sku": row.sku,
            "title": row.title,
            "category": row.category,
            "attributes": json.dumps(row.attributes, sort_keys=True, ensure_ascii=False),
            "image": row.image,
        }
        if not isinstance(img, ShoplensError) and is_generated(img):
            reason = (
                f"{row.image}: generated by shoplens (provenance chunk {PROVENANCE_KEY}); "
                "generated images are never ingested as products"
            )
            out.append({**base, "reason": reason})
            continue
        if isinstance(img, ShoplensError):
            out.append({**base, "reason": img.message})
            continue
        stored = encode_for_store(img)
        key = f"{stored.sha256}.{stored.ext}"
        write_image(cfg.images_dir, key, stored.data)
        with Image.open(io.BytesIO(stored.data)) as im:
            normalised = im.convert("RGB")  # what Catalog.load_image returns
        good.append(len(out))
        pixels.append(normalised)
        out.append(
            {
                **base,
                "image_key": key,
                "phash": phash_hex(normalised),
                "width": stored.width,
                "height": stored.height,
                "reason": None,
            }
        )
    if pixels:
        encoder = worker_encoder(cfg.encoder, cfg.torch_threads, loads)
        vectors = encoder.encode_images(pixels)  # (B, D) float32, L2-normalised
        for pos, vec in zip(good, vectors, strict=True):
            out[pos]["embedding"] = vec
    # object columns keep None as null (a float column would turn missing ints into NaN)
    return pd.DataFrame(
        {c: pd.Series([r.get(c) for r in out], dtype=object) for c in RESULT_COLUMNS}
    )
