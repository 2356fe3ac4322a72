"""Manifest -> validated product records for the Spark pipeline, and the shard function.

CSV / TSV / JSON lines / JSON arrays / image folders are read by
:func:`shoplens.data.manifest.read_manifest`, exactly as ``shoplens ingest`` reads them
(same columns, same per-row checks, same line numbers). Parquet manifests (``.parquet``)
use the same columns and the same per-row validation: ``sku``, ``title``, ``category``,
``image`` (case-insensitive), an optional struct/map column ``attributes``, and any other
column as an attribute. The records are parsed on the driver (one pass, like ingest) and
staged as Parquet, from which the Spark jobs read their shards.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoplens.data.manifest import (
    Manifest,
    ManifestRow,
    RowError,
    _Builder,
    check_manifest_file,
    read_manifest,
)
from shoplens.data.manifest_readers import REQUIRED_COLUMNS, _json_record
from shoplens.errors import InvalidInputError, NotFoundError

PARQUET_SUFFIXES = (".parquet", ".pq")
#: Columns of a staged record (one valid manifest row), in order.
RECORD_COLUMNS = ("line", "sku", "title", "category", "image", "attributes", "shard")


def shard_of(sku: str, shards: int) -> int:
    """Shard of a product: the first 8 bytes of sha1(sku, UTF-8) as a big-endian integer,
    modulo ``shards``. Stable across processes, machines and Python versions."""
    digest = hashlib.sha1(sku.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


@dataclass
class Records:
    """Validated manifest rows and the rows refused while reading the manifest."""

    rows: list[ManifestRow]
    errors: list[RowError]
    root: Path
    kind: str
    fingerprint: str
    path: str  # the manifest, absolute


def read_records(path: str | Path, *, allow_outside_root: bool = False) -> Records:
    """Read and validate a manifest (see module docs) and fingerprint it.

    Raises:
        NotFoundError: no such file or folder.
        InvalidInputError: the manifest as a whole is unusable.
    """
    p = Path(path)
    if p.suffix.lower() in PARQUET_SUFFIXES:
        manifest = read_parquet_manifest(p, allow_outside_root=allow_outside_root)
    else:
        manifest = read_manifest(p, allow_outside_root=allow_outside_root)
    return Records(
        manifest.rows,
        manifest.errors,
        manifest.root,
        manifest.source,
        fingerprint(p),
        os.path.abspath(p),
    )


def read_parquet_manifest(path: Path, *, allow_outside_root: bool = False) -> Manifest:
    """Read a Parquet manifest with the validation of :func:`read_manifest`.

    Row numbers (1-based, in file order) stand in for line numbers.
    """
    import pyarrow.parquet as pq

    _check_file(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise InvalidInputError(f"cannot read Parquet manifest {str(path)!r}: {exc}") from None
    names = pf.schema_arrow.names
    lowered = {n.lower(): n for n in names}
    missing = [c for c in REQUIRED_COLUMNS if c not in lowered]
    if missing:
        raise InvalidInputError(
            f"manifest {str(path)!r} is missing required column(s) {', '.join(missing)} "
            f"(found: {', '.join(names) or 'none'})"
        )
    rename = {lowered[c]: c for c in REQUIRED_COLUMNS}
    root = Path(os.path.abspath(path)).parent
    builder = _Builder(root, allow_outside_root)
    line = 0
    for batch in pf.iter_batches(batch_size=8192):
        for raw in batch.to_pylist():
            line += 1
            obj = {rename.get(k, k): _plain(v) for k, v in raw.items()}
            _json_record(builder, line, obj)
    if builder.records == 0:
        raise InvalidInputError(f"manifest {str(path)!r} has no products")
    return Manifest(builder.rows, builder.errors, root, "parquet")


def _plain(value: Any) -> Any:
    """An Arrow value as JSON-like data: map columns (lists of (key, value) pairs) become
    dicts, dates, decimals and other scalars become their text."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, list) and value and all(isinstance(x, tuple) for x in value):
        return {str(k): _plain(v) for k, v in value}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return str(value)


def _check_file(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise NotFoundError(f"manifest not found: {str(path)!r}") from None
    check_manifest_file(path, st)


def fingerprint(path: Path) -> str:
    """``sha256:...`` of a manifest file's bytes; for a folder of images, of every file's
    relative path, size and modification time (the images themselves are not hashed)."""
    h = hashlib.sha256()
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                full = Path(dirpath) / name
                st = full.stat()
                rel = full.relative_to(path).as_posix()
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return f"sha256:{h.hexdigest()}"


def records_table(rows: Iterable[ManifestRow], shards: int) -> Any:
    """Valid rows as an Arrow table with :data:`RECORD_COLUMNS` (attributes as JSON)."""
    import pyarrow as pa

    rows = list(rows)
    return pa.table(
        {
            "line": pa.array([r.line for r in rows], pa.int64()),
            "sku": pa.array([r.sku for r in rows], pa.string()),
            "title": pa.array([r.title for r in rows], pa.string()),
            "category": pa.array([r.category for r in rows], pa.string()),
            "image": pa.array([r.image for r in rows], pa.string()),
            "attributes": pa.array([attributes_json(r.attributes) for r in rows], pa.string()),
            "shard": pa.array([shard_of(r.sku, shards) for r in rows], pa.int32()),
        }
    )


def attributes_json(attributes: dict[str, str]) -> str:
    """Attributes as the catalogue stores them: a JSON object with sorted keys."""
    return json.dumps(attributes, sort_keys=True, ensure_ascii=False)


def rejects_table(errors: Iterable[tuple[int, str | None, str | None, str, str]]) -> Any:
    """(line, sku, image, reason, stage) tuples as an Arrow table (the rejects schema)."""
    import pyarrow as pa

    items = list(errors)
    return pa.table(
        {
            "line": pa.array([e[0] for e in items], pa.int64()),
            "sku": pa.array([e[1] for e in items], pa.string()),
            "image": pa.array([e[2] for e in items], pa.string()),
            "reason": pa.array([e[3] for e in items], pa.string()),
            "stage": pa.array([e[4] for e in items], pa.string()),
        }
    )
