"""Ingest catalogue sources into a :class:`~shoplens.catalog.store.Catalog`.

Images are loaded (local paths or URLs, concurrently, with timeouts and retries), decoded
under safety limits, normalised and written content-addressed; the metadata of all good
rows is then upserted in one transaction. Bad rows are reported with their line numbers
and written to ``rejects/<time>.jsonl``; good rows are kept unless ``strict``.
"""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from shoplens import progress
from shoplens.catalog.store import Catalog, ProductRecord, UpsertCounts
from shoplens.data.images import decode_image, encode_for_store, fetch_many, load_image_ref
from shoplens.data.manifest import ManifestRow, RowError, read_manifest
from shoplens.errors import ImageError, InvalidInputError, ShoplensError
from shoplens.generate import PROVENANCE_KEY, is_generated

CHUNK = 256


@dataclass
class IngestReport:
    """What an ingest did; ``rejected`` lists refused rows with line numbers."""

    catalog: str
    source: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[RowError] = field(default_factory=list)
    rejects_file: str | None = None
    seconds: float = 0.0
    total: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rejected"] = [asdict(e) for e in self.rejected]
        return d


def phash_hex(img: Image.Image) -> str:
    """64-bit perceptual hash (DCT) as 16 hex characters."""
    import imagehash

    return str(imagehash.phash(img))


def store_image(catalog: Catalog, img: Image.Image) -> tuple[str, str, int, int]:
    """Normalise and store an image; return (image_key, phash, width, height)."""
    stored = encode_for_store(img)
    key = catalog.put_image(stored.data, stored.sha256, stored.ext)
    with Image.open(io.BytesIO(stored.data)) as normalised:
        ph = phash_hex(normalised.convert("RGB"))
    return key, ph, stored.width, stored.height


def _is_url(ref: str) -> bool:
    return ref.lower().startswith(("http://", "https://"))


def _load_chunk(
    rows: list[ManifestRow],
    root: Path,
    *,
    allow_outside_root: bool,
    concurrency: int,
    timeout: float,
    retries: int,
) -> list[Image.Image | ShoplensError]:
    """Load one chunk of images; URLs are downloaded concurrently."""
    out: list[Image.Image | ShoplensError] = [InvalidInputError("not loaded")] * len(rows)
    url_pos = [i for i, r in enumerate(rows) if _is_url(r.image)]
    if url_pos:
        fetched = fetch_many(
            [rows[i].image for i in url_pos],
            concurrency=concurrency,
            timeout=timeout,
            retries=retries,
        )
        for i, res in zip(url_pos, fetched, strict=True):
            if isinstance(res, ShoplensError):
                out[i] = res
            else:
                try:
                    out[i] = decode_image(res, source=rows[i].image)
                except ShoplensError as e:
                    out[i] = e

    def load_local(i: int) -> None:
        try:
            out[i] = load_image_ref(rows[i].image, root=root, allow_outside_root=allow_outside_root)
        except ShoplensError as e:
            out[i] = e

    local = [i for i in range(len(rows)) if i not in set(url_pos)]
    with ThreadPoolExecutor(max_workers=max(1, min(4, concurrency))) as pool:
        list(pool.map(load_local, local))
    return out


def _first_errors(errors: list[RowError], n: int = 3) -> str:
    return "; ".join(f"line {e.line}: {e.message}" for e in errors[:n])


def _write_rejects(catalog: Catalog, errors: list[RowError]) -> str | None:
    if not errors:
        return None
    folder = catalog.root / "rejects"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 1_000_000:06d}.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for e in errors:
            f.write(json.dumps(asdict(e), ensure_ascii=False) + "\n")
    return str(path)


def ingest_manifest(
    source: str | Path,
    name: str,
    *,
    strict: bool = False,
    allow_outside_root: bool = False,
    concurrency: int = 8,
    timeout: float = 10.0,
    retries: int = 2,
) -> IngestReport:
    """Ingest a CSV / JSONL / JSON manifest or a folder of images into catalogue ``name``."""
    started = time.time()
    manifest = read_manifest(source, allow_outside_root=allow_outside_root)
    errors = list(manifest.errors)
    if strict and errors:
        raise InvalidInputError(
            f"{len(errors)} bad row(s) in {source} (--strict, nothing stored): "
            + _first_errors(errors)
        )
    catalog = Catalog.create(name)
    records: list[ProductRecord] = []
    with progress.task(f"ingest {Path(source).name}", len(manifest.rows)) as advance:
        for start in range(0, len(manifest.rows), CHUNK):
            rows = manifest.rows[start : start + CHUNK]
            images = _load_chunk(
                rows,
                manifest.root,
                allow_outside_root=allow_outside_root,
                concurrency=concurrency,
                timeout=timeout,
                retries=retries,
            )
            for row, img in zip(rows, images, strict=True):
                if not isinstance(img, ShoplensError) and is_generated(img):
                    img = ImageError(
                        f"{row.image}: generated by shoplens (provenance chunk "
                        f"{PROVENANCE_KEY}); generated images are never ingested as products"
                    )
                if isinstance(img, ShoplensError):
                    errors.append(RowError(row.line, row.sku, img.message))
                    continue
                key, ph, w, h = store_image(catalog, img)
                records.append(
                    ProductRecord(
                        row.sku,
                        row.title,
                        row.category,
                        key,
                        dict(row.attributes),
                        row.image,
                        ph,
                        w,
                        h,
                    )
                )
            advance(len(rows))
    errors.sort(key=lambda e: e.line)
    if strict and errors:
        raise InvalidInputError(
            f"{len(errors)} bad row(s) in {source} (--strict, nothing stored): "
            + _first_errors(errors)
        )
    if not records:
        raise InvalidInputError(
            f"no valid products in {source}; {len(errors)} row(s) rejected: "
            + _first_errors(errors)
        )
    return _commit(catalog, str(source), records, errors, started)


def _commit(
    catalog: Catalog,
    source: str,
    records: list[ProductRecord],
    errors: list[RowError],
    started: float,
) -> IngestReport:
    with catalog.transaction() as conn:
        counts: UpsertCounts = catalog.upsert_in(conn, records)
        catalog.record_ingest(conn, source, started, counts, len(errors))
    report = IngestReport(
        catalog=catalog.name,
        source=source,
        added=counts.added,
        updated=counts.updated,
        unchanged=counts.unchanged,
        rejected=errors,
        rejects_file=_write_rejects(catalog, errors),
        seconds=time.time() - started,
        total=catalog.count(),
    )
    catalog.close()
    return report


def ingest_fashion_mnist(
    name: str = "fashion-mnist", *, data_dir: Path | None = None, limit: int | None = None
) -> IngestReport:
    """Ingest all 70,000 Fashion-MNIST products (train then test; split kept as attribute).

    sku ``fm-train-00042`` / ``fm-test-00042`` (split and index: stable), title ``"Ankle boot
    (Fashion-MNIST train photo)"``, category the class name. The sku, not the title, tells
    products apart, so MiniLM embeds 20 distinct texts, not 70,000.
    ``limit`` keeps the first N of each split (tests).
    """
    from shoplens.data.fashion_mnist import CLASSES, load_fashion_mnist

    started = time.time()
    catalog = Catalog.create(name)
    splits = [load_fashion_mnist("train", data_dir), load_fashion_mnist("test", data_dir)]
    total = sum(min(len(s), limit or len(s)) for s in splits)
    records: list[ProductRecord] = []
    with progress.task("ingest fashion-mnist", total) as advance:
        for ds in splits:
            n = min(len(ds), limit or len(ds))
            for i in range(n):
                label = int(ds.labels[i])
                img = Image.fromarray(ds.images[i], mode="L").convert("RGB")
                key, ph, w, h = store_image(catalog, img)
                records.append(
                    ProductRecord(
                        sku=f"fm-{ds.split}-{i:05d}",
                        title=f"{CLASSES[label]} (Fashion-MNIST {ds.split} photo)",
                        category=CLASSES[label],
                        image_key=key,
                        attributes={"split": ds.split, "source": "fashion-mnist"},
                        image_source=f"fashion-mnist:{ds.split}:{i}",
                        phash=ph,
                        width=w,
                        height=h,
                    )
                )
                if i % 1000 == 999:
                    advance(1000)
            advance(n % 1000)
    catalog.set_meta("default_encoder", "effnet-lite0@64")
    return _commit(catalog, "fashion-mnist", records, [], started)
