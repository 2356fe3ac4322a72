"""Load the output of ``shoplens pipeline embed`` into a catalogue and its vector index.

Products are upserted by sku (as ``shoplens ingest`` does, one transaction) with their
normalised images, and the image index of the run's encoder is written through
:func:`shoplens.index.store.write_build` (FAISS by default), so ``shoplens search`` and the
service use it like an index from ``shoplens index build``. The index keys vectors by
image, like ``index build``: a later ``index build`` with the same encoder reuses them,
and catalogue products the run did not embed are embedded here (or reused from the
current build).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shoplens import progress
from shoplens.catalog.store import Catalog, Product, ProductRecord
from shoplens.errors import InvalidInputError, NotFoundError, NotReadyError
from shoplens.pipeline.layout import FORMAT, Layout


@dataclass
class LoadReport:
    """What :func:`load_output` did."""

    catalog: str
    encoder: str
    added: int
    updated: int
    unchanged: int
    vectors: int  # rows of the run loaded
    embedded_here: int  # catalogue products the run did not cover, embedded now
    index: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_output(out: str | Path) -> tuple[dict[str, Any], Any]:
    """``(_manifest.json, Arrow table of every committed shard)`` of a finished run.

    The table has the embeddings' columns and ``shard`` (int32), in shard order.

    Raises:
        NotFoundError: ``out`` is not a pipeline output.
        NotReadyError: the run has not finished (resume it with the same command).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    layout = Layout(out)
    if not layout.run_json.is_file():
        raise NotFoundError(f"{layout.out} is not an output of 'shoplens pipeline embed'")
    if not layout.manifest_json.is_file():
        raise NotReadyError(
            f"the pipeline run in {layout.out} has not finished; run the same "
            "'shoplens pipeline embed' command again to resume it"
        )
    meta = json.loads(layout.manifest_json.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise InvalidInputError(f"{layout.out}: unknown output format {meta.get('format')!r}")
    tables = []
    for k, info in sorted(layout.committed(int(meta["shards"])).items()):
        folder = layout.shard_dir(layout.embeddings, k)
        for name in info["files"]["embeddings"]:
            t = pq.read_table(folder / name)
            tables.append(t.append_column("shard", pa.array([k] * t.num_rows, pa.int32())))
    if len(tables) < 1 or sum(t.num_rows for t in tables) != meta["rows"]["embedded"]:
        raise NotReadyError(f"{layout.out}: shards are missing; run the pipeline again")
    return meta, pa.concat_tables(tables)


def vectors_of(table: Any, dim: int) -> np.ndarray:
    """The ``embedding`` column as a (N, dim) float32 array."""
    flat = table.column("embedding").combine_chunks().flatten().to_numpy()
    if flat.size != table.num_rows * dim:
        raise InvalidInputError(f"embeddings are not all {dim}-d")
    return np.ascontiguousarray(flat.reshape(table.num_rows, dim), dtype=np.float32)


def load_output(out: str | Path, catalog: str, *, factory: str | None = None) -> LoadReport:
    """Upsert a finished run's products into ``catalog`` and build its image index."""
    from shoplens.index.store import _previous_cache, embed_products, write_build

    started = time.time()
    meta, table = read_output(out)
    layout = Layout(out)
    spec, dim = str(meta["encoder"]), int(meta["dim"])
    vectors = vectors_of(table, dim)  # (N, D)
    rows = table.drop_columns(["embedding"]).to_pylist()
    cat = Catalog.create(catalog)
    try:
        records = []
        with progress.task(f"load {len(rows)} products into {catalog}", len(rows)) as advance:
            for r in rows:
                key = r["image_key"]
                sha, _, ext = key.partition(".")
                cat.put_image((layout.images / key[:2] / key).read_bytes(), sha, ext)
                records.append(
                    ProductRecord(
                        r["sku"],
                        r["title"],
                        r["category"],
                        key,
                        json.loads(r["attributes"]),
                        r["image"],
                        r["phash"],
                        r["width"],
                        r["height"],
                    )
                )
                advance(1)
        with cat.transaction() as conn:
            counts = cat.upsert_in(conn, records)
            cat.record_ingest(conn, f"spark-pipeline:{layout.out}", started, counts, 0)
        products = list(cat.iter_products())
        keys = [p.image_key for p in products]
        cache = _previous_cache(cat, spec)
        cache.update({r["image_key"]: vectors[i] for i, r in enumerate(rows)})
        todo = {k for k in keys if k not in cache}

        def encode(batch: list[Product]) -> np.ndarray:
            from shoplens.registry import get_encoder

            encoder = get_encoder(spec)
            return encoder.encode_images([cat.load_image(p) for p in batch])

        with progress.task(f"index {len(products)} products ({spec})", len(products)) as adv:
            emb = embed_products(products, keys, encode, cache, batch_size=64, advance=adv)
        build = write_build(
            cat,
            spec,
            ids=np.array([p.id for p in products], dtype=np.int64),
            keys=keys,
            embeddings=emb,
            factory=factory,
            extra_meta={
                "encoder": spec,
                "kind": "image",
                "modalities": meta["modalities"],
                "source": f"spark-pipeline:{layout.out}",
            },
        )
        cat.set_meta("default_encoder", spec)
        index = {k: build.meta[k] for k in ("encoder", "factory", "count", "dim")}
        return LoadReport(
            catalog,
            spec,
            counts.added,
            counts.updated,
            counts.unchanged,
            len(rows),
            len(todo),
            index,
            time.time() - started,
        )
    finally:
        cat.close()
