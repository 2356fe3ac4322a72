"""Catalogue store: product metadata in SQLite or PostgreSQL, normalised images beside it.

Layout under ``SHOPLENS_HOME/catalogs/NAME/``::

    catalog.sqlite          products, ingests, meta (WAL mode; SQLite only)
    images/ab/abcdef...png  content-addressed normalised images (sha256 of the bytes)
    indexes/                embeddings and ANN indexes (see shoplens.index.store)
    rejects/                one JSONL file per ingest with the rows that were refused

With ``SHOPLENS_DATABASE_URL`` set, the tables live in PostgreSQL instead, in a schema
named like the catalogue (see :mod:`shoplens.db.migrate`); images and indexes stay in the
folder, so several machines need it on a shared filesystem.

Every product keeps a stable integer ``id`` (the SQLite rowid or PostgreSQL identity, kept
across upserts), which is also its label in vector indexes. A write is one transaction:
readers see the old catalogue or the new one, never half of an ingest.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoplens.config import check_name, database_url, shoplens_home
from shoplens.db import dialects
from shoplens.db.adapter import Connection, SqliteConnection
from shoplens.errors import InvalidInputError, NotFoundError

#: Products kept in memory per open catalogue before the cache starts over.
PRODUCT_CACHE_SIZE = 200_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    id INTEGER PRIMARY KEY,
    sku TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    category TEXT NOT NULL,
    attributes TEXT NOT NULL DEFAULT '{}',
    image_key TEXT NOT NULL,
    image_source TEXT NOT NULL DEFAULT '',
    phash TEXT NOT NULL DEFAULT '',
    width INTEGER NOT NULL DEFAULT 0,
    height INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS products_category ON products(category);
CREATE TABLE IF NOT EXISTS ingests (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    added INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    unchanged INTEGER NOT NULL,
    rejected INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class ProductRecord:
    """A product ready to be stored (its image already normalised and written)."""

    sku: str
    title: str
    category: str
    image_key: str
    attributes: dict[str, str] = field(default_factory=dict)
    image_source: str = ""
    phash: str = ""
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class Product:
    """A stored product."""

    id: int
    sku: str
    title: str
    category: str
    attributes: dict[str, str]
    image_key: str
    image_source: str
    phash: str
    width: int
    height: int

    @property
    def text(self) -> str:
        """Searchable product text: title, category and attribute values."""
        attrs = " ".join(f"{k} {v}" for k, v in sorted(self.attributes.items()) if k != "split")
        return " ".join(p for p in (self.title, self.category, attrs) if p)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sku": self.sku,
            "title": self.title,
            "category": self.category,
            "attributes": dict(self.attributes),
            "width": self.width,
            "height": self.height,
        }


@dataclass(frozen=True)
class UpsertCounts:
    added: int = 0
    updated: int = 0
    unchanged: int = 0


def catalogs_root() -> Path:
    return shoplens_home() / "catalogs"


def list_catalogs() -> list[str]:
    url = database_url()
    if url is not None:
        from shoplens.db.migrate import list_postgres_catalogs

        return list_postgres_catalogs(url)
    root = catalogs_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "catalog.sqlite").is_file())


def process_gone(pid: int) -> bool:
    """True when no process ``pid`` runs on this machine (POSIX; False when unsure)."""
    if os.name != "posix" or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return True
    except OSError:  # exists, but belongs to another user
        return False
    return False


def write_content_file(path: Path, data: bytes) -> None:
    """Write ``data`` to the content-addressed ``path`` unless it exists: through a temp
    file in the same folder and a rename, so readers never see half an image (the temp
    name carries the pid: :func:`remove_stale_image_temps` clears a killed writer's)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{os.getpid()}-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_image_temps(images_dir: Path) -> list[Path]:
    """Delete ``.tmp-<pid>-*`` image files whose writer was killed before its rename."""
    gone = []
    for p in images_dir.glob("*/.tmp-*"):
        pid = p.name.split("-")[1]
        if pid.isdigit() and process_gone(int(pid)):
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def _row_to_product(row: Any) -> Product:
    return Product(
        id=row["id"],
        sku=row["sku"],
        title=row["title"],
        category=row["category"],
        attributes=json.loads(row["attributes"]),
        image_key=row["image_key"],
        image_source=row["image_source"],
        phash=row["phash"],
        width=row["width"],
        height=row["height"],
    )


class Catalog:
    """One named catalogue. Thread-safe; open with :meth:`open` or :meth:`create`."""

    def __init__(self, root: Path, *, must_exist: bool = False) -> None:
        self.root = root
        self.name = root.name
        self.db_path = root / "catalog.sqlite"
        self.images_dir = root / "images"
        self._images_root = str(self.images_dir)
        self._lock = threading.RLock()
        self._conn: Connection
        url = database_url()
        if url is None:
            if must_exist and not self.db_path.is_file():
                raise _unknown(self.name)
            raw = sqlite3.connect(self.db_path, check_same_thread=False, timeout=30.0)
            raw.row_factory = sqlite3.Row
            raw.execute("PRAGMA journal_mode=WAL")
            raw.execute("PRAGMA synchronous=NORMAL")
            raw.executescript(SCHEMA)
            self._conn = SqliteConnection(raw)
        else:
            from shoplens.db.migrate import open_postgres

            conn = open_postgres(url, self.name, must_exist=must_exist)
            if conn is None:
                raise _unknown(self.name)
            self._conn = conn
        # Products read by id, kept until any connection writes them (checked per read with
        # dialects.products_stamp: SQLite's PRAGMA data_version and total_changes, or a
        # stamp a PostgreSQL trigger keeps): search pages re-read the same products often.
        self._cache: dict[int, Product] = {}
        self._by_sku: dict[str, Product] = {}  # the same cache by sku (Catalog.get)
        self._cache_stamp: tuple[int, int] = (-1, -1)

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``: where the tables are."""
        return self._conn.dialect

    # ---- opening -------------------------------------------------------------------
    @classmethod
    def open(cls, name: str) -> Catalog:
        """Open an existing catalogue (NotFoundError lists the ones that exist)."""
        return cls(catalogs_root() / check_name(name), must_exist=True)

    @classmethod
    def create(cls, name: str) -> Catalog:
        """Open a catalogue for writing, creating an empty one if needed (and removing temp
        files of image writes that were killed)."""
        root = catalogs_root() / check_name(name)
        (root / "images").mkdir(parents=True, exist_ok=True)
        remove_stale_image_temps(root / "images")
        return cls(root)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- images ----------------------------------------------------------------------
    def image_path(self, image_key: str) -> Path:
        return self.images_dir / image_key[:2] / image_key

    def put_image(self, data: bytes, sha256: str, ext: str) -> str:
        """Write image bytes under their content hash (atomic, idempotent); return the key."""
        key = f"{sha256}.{ext}"
        write_content_file(self.image_path(key), data)
        return key

    def load_image(self, product: Product) -> Any:
        """The stored image of a product as an RGB PIL image."""
        from PIL import Image

        with Image.open(self.image_path(product.image_key)) as im:
            return im.convert("RGB")

    # ---- writes ----------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One atomic write: everything inside commits together or not at all. Writers of a
        catalogue take turns (SQLite's write lock; a table lock on ``products`` in
        PostgreSQL), so an upsert's read-then-write by sku never races another's."""
        with self._lock, self._conn.transaction(lock="products") as conn:
            yield conn

    @staticmethod
    def upsert_in(conn: Connection, records: Iterable[ProductRecord]) -> UpsertCounts:
        """Insert or update products by sku inside an open transaction."""
        added = updated = unchanged = 0
        now = time.time()
        for r in records:
            attrs = json.dumps(r.attributes, sort_keys=True, ensure_ascii=False)
            old = conn.execute(
                "SELECT title, category, attributes, image_key, image_source FROM products "
                "WHERE sku = ?",
                (r.sku,),
            ).fetchone()
            values = (r.title, r.category, attrs, r.image_key, r.image_source, r.phash,
                      r.width, r.height)  # fmt: skip
            if old is None:
                conn.execute(
                    "INSERT INTO products (title, category, attributes, image_key, image_source, "
                    "phash, width, height, sku, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*values, r.sku, now, now),
                )
                added += 1
            elif tuple(old) == values[:5]:
                unchanged += 1
            else:
                conn.execute(
                    "UPDATE products SET title=?, category=?, attributes=?, image_key=?, "
                    "image_source=?, phash=?, width=?, height=?, updated_at=? WHERE sku=?",
                    (*values, now, r.sku),
                )
                updated += 1
        return UpsertCounts(added, updated, unchanged)

    def upsert(self, records: Iterable[ProductRecord]) -> UpsertCounts:
        """Insert or update products by sku, atomically."""
        with self.transaction() as conn:
            return self.upsert_in(conn, records)

    def record_ingest(
        self,
        conn: Connection,
        source: str,
        started: float,
        counts: UpsertCounts,
        rejected: int,
    ) -> None:
        conn.execute(
            "INSERT INTO ingests (source, started_at, finished_at, added, updated, unchanged, "
            "rejected) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                source,
                started,
                time.time(),
                counts.added,
                counts.updated,
                counts.unchanged,
                rejected,
            ),
        )
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('version', ?) ON CONFLICT(key) DO UPDATE "
            "SET value = excluded.value",
            (str(time.time_ns()),),
        )

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                "SET value = excluded.value",
                (key, value),
            )

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    # ---- reads -----------------------------------------------------------------------
    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM products").fetchone()[0])

    def _fresh_cache(self) -> dict[int, Product]:
        """The product cache, emptied first when products changed since it was filled
        (call with ``self._lock`` held)."""
        stamp = dialects.products_stamp(self._conn)
        if stamp != self._cache_stamp or len(self._cache) > PRODUCT_CACHE_SIZE:
            self._cache.clear()
            self._by_sku.clear()
            self._cache_stamp = stamp
        return self._cache

    def get(self, sku: str) -> Product:
        with self._lock:
            cache = self._fresh_cache()
            p = self._by_sku.get(sku)
            if p is not None:
                return p
            row = self._conn.execute("SELECT * FROM products WHERE sku = ?", (sku,)).fetchone()
            if row is None:
                raise NotFoundError(f"unknown sku {sku!r} in catalogue {self.name!r}")
            p = cache.setdefault(row["id"], _row_to_product(row))
            self._by_sku[sku] = p
            return p

    def get_by_ids(self, ids: Sequence[int]) -> dict[int, Product]:
        """Products by internal id (missing ids are left out)."""
        out: dict[int, Product] = {}
        with self._lock:
            cache = self._fresh_cache()
            missing = []
            for i in ids:
                p = cache.get(int(i))
                if p is None:
                    missing.append(int(i))
                else:
                    out[p.id] = p
            for start in range(0, len(missing), 900):
                where, params = dialects.member_of(
                    self._conn, "id", missing[start : start + 900], "bigint"
                )
                for row in self._conn.execute(f"SELECT * FROM products WHERE {where}", params):
                    out[row["id"]] = cache[row["id"]] = _row_to_product(row)
        return out

    def image_file(self, image_key: str) -> str:
        """:meth:`image_path` as a string, without pathlib's cost (hot search path)."""
        return f"{self._images_root}{os.sep}{image_key[:2]}{os.sep}{image_key}"

    def iter_products(self, batch_size: int = 2000) -> Iterator[Product]:
        """All products in id order, fetched in batches."""
        last = -1
        while True:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT * FROM products WHERE id > ? ORDER BY id LIMIT ?", (last, batch_size)
                ).fetchall()
            if not rows:
                return
            for row in rows:
                yield _row_to_product(row)
            last = rows[-1]["id"]

    def categories(self) -> dict[str, int]:
        """Category name -> product count."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT category, COUNT(*) FROM products GROUP BY category ORDER BY category"
            ).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def filter_ids(
        self, categories: Sequence[str] | None = None, attributes: dict[str, str] | None = None
    ) -> list[int] | None:
        """Ids matching all filters (None when there is no filter)."""
        if not categories and not attributes:
            return None
        clauses: list[str] = []
        params: list[Any] = []
        if categories:
            clause, values = dialects.member_of(self._conn, "category", categories, "text")
            clauses.append(clause)
            params.extend(values)
        for key, value in (attributes or {}).items():
            if not key.replace("_", "").replace("-", "").replace(" ", "").isalnum():
                raise InvalidInputError(f"invalid attribute name {key!r}")
            clause, values = dialects.json_text_equals(self._conn, "attributes", key)
            clauses.append(clause)
            params.extend([*values, value])
        with self._lock:
            rows = self._conn.execute(
                f"SELECT id FROM products WHERE {' AND '.join(clauses)}", params
            ).fetchall()
        return [int(r[0]) for r in rows]

    def version(self) -> str:
        """Changes whenever an ingest commits (used to detect stale indexes)."""
        return self.get_meta("version", "0") or "0"

    def delete(self) -> None:
        """Remove the whole catalogue: its folder, and its schema in PostgreSQL."""
        if self.dialect == "postgresql":
            from shoplens.db.adapter import PgConnection
            from shoplens.db.migrate import drop_postgres_catalog

            with self._lock:
                assert isinstance(self._conn, PgConnection)
                drop_postgres_catalog(self._conn)
        self.close()
        shutil.rmtree(self.root, ignore_errors=self.dialect == "postgresql")

    def reader(self) -> Connection:
        """A new read-only connection to the catalogue's tables (close it when done)."""
        if isinstance(self._conn, SqliteConnection):
            uri = f"{self.db_path.resolve().as_uri()}?mode=ro"
            raw = sqlite3.connect(uri, uri=True, timeout=30.0, check_same_thread=False)
            raw.execute("PRAGMA busy_timeout=30000")
            return SqliteConnection(raw)
        from shoplens.db.adapter import PgConnection

        assert isinstance(self._conn, PgConnection)
        conn = PgConnection(self._conn.params, self._conn.schema)
        conn.execute("SET default_transaction_read_only = on")
        return conn


def _unknown(name: str) -> NotFoundError:
    known = ", ".join(list_catalogs()) or "none yet; run 'shoplens ingest'"
    return NotFoundError(f"unknown catalogue {name!r} (known: {known})")
