"""Index builds per catalogue and encoder, swapped in atomically.

Layout under ``catalogs/NAME/indexes/<slug>/``::

    builds/<build-id>/meta.json        encoder, factory, count, catalogue version, time
    builds/<build-id>/ids.npy          (N,) int64 product ids
    builds/<build-id>/keys.json        (N,) cache keys (image content hash or text hash)
    builds/<build-id>/embeddings.npy   (N, D) float32, L2-normalised
    builds/<build-id>/index/           the vector index (FAISS or exact)
    current -> builds/<build-id>       symlink, replaced atomically by os.replace

A build is written completely (and fsynced) before ``current`` points at it, so a reader
never sees a half-built index. Rebuilding reuses embeddings whose key is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shoplens.catalog.store import Catalog, Product, process_gone
from shoplens.config import fsync_dir
from shoplens.errors import NotReadyError
from shoplens.index.base import (
    MetadataIndex,
    VectorIndex,
    default_factory,
    drop_index_data,
    load_index,
    make_index,
)

KEEP_BUILDS = 2


def slug(spec: str) -> str:
    """Folder-safe name for an encoder spec (readable part + short hash when altered)."""
    safe = re.sub(r"[^A-Za-z0-9@._-]+", "_", spec)[:60]
    if safe == spec:
        return safe
    return f"{safe}-{hashlib.sha1(spec.encode()).hexdigest()[:8]}"


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


@dataclass
class IndexBuild:
    """A loaded build: ids, cache keys, embeddings and the searchable index."""

    path: Path
    meta: dict[str, Any]
    ids: np.ndarray  # (N,) int64
    keys: list[str]
    embeddings: np.ndarray  # (N, D) float32
    index: VectorIndex

    @property
    def encoder(self) -> str:
        return str(self.meta["encoder"])

    def vectors_for(self, ids: Sequence[int]) -> np.ndarray:
        """Stored embeddings of the given product ids. Returns (len(ids), D)."""
        pos = {int(i): n for n, i in enumerate(self.ids)}
        missing = [i for i in ids if int(i) not in pos]
        if missing:
            raise NotReadyError(
                f"products {missing[:3]} are not in the index; run 'shoplens index build'"
            )
        return self.embeddings[[pos[int(i)] for i in ids]]


def index_root(catalog: Catalog, name: str) -> Path:
    return catalog.root / "indexes" / slug(name)


def _write_npy(path: Path, arr: np.ndarray) -> None:
    with path.open("wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())


def read_meta(catalog: Catalog, name: str) -> dict[str, Any] | None:
    """Metadata of the current build of index ``name`` without loading it (None if absent)."""
    meta = index_root(catalog, name) / "current" / "meta.json"
    return json.loads(meta.read_text()) if meta.is_file() else None


def is_fresh(catalog: Catalog, name: str) -> bool:
    """True when index ``name`` exists and was built from the catalogue as it is now."""
    meta = read_meta(catalog, name)
    return meta is not None and meta.get("catalog_version") == catalog.version()


def load_build(catalog: Catalog, name: str) -> IndexBuild:
    """Load the current build of index ``name`` (an encoder spec or ``text-...``)."""
    current = index_root(catalog, name) / "current"
    if not current.exists():
        raise NotReadyError(
            f"no index for encoder {name!r} in catalogue {catalog.name!r}; run "
            f"'shoplens index build --catalog {catalog.name} --encoder {name}'"
        )
    path = current.resolve()
    meta = json.loads((path / "meta.json").read_text())
    return IndexBuild(
        path=path,
        meta=meta,
        ids=np.load(path / "ids.npy"),
        keys=json.loads((path / "keys.json").read_text()),
        embeddings=np.load(path / "embeddings.npy", mmap_mode="r"),
        index=load_index(path / "index"),
    )


def list_builds(catalog: Catalog) -> list[dict[str, Any]]:
    """Metadata of every current build in the catalogue."""
    out = []
    root = catalog.root / "indexes"
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        meta = d / "current" / "meta.json"
        if meta.is_file():
            out.append(json.loads(meta.read_text()))
    return out


def _previous_cache(catalog: Catalog, name: str) -> dict[str, np.ndarray]:
    try:
        old = load_build(catalog, name)
    except (NotReadyError, OSError, ValueError):
        return {}
    return {k: old.embeddings[i] for i, k in enumerate(old.keys)}


def _writer_gone(name: str) -> bool:
    """True when the process named in a temp entry ``.tmp-<build id>`` / ``.current-<build
    id>`` (build id ``DATE-TIME-PID-NS``) no longer runs on this machine."""
    pid = name.rsplit("-", 2)[-2] if name.count("-") >= 2 else ""
    return pid.isdigit() and process_gone(int(pid))


def remove_stale_temps(root: Path) -> list[Path]:
    """Delete what builds killed mid-way left under ``root`` (their process is gone).

    A killed build leaves ``builds/.tmp-<id>`` (up to a whole build of vectors) or a
    ``.current-<id>`` link, which no later build would ever remove. Returns what was removed.
    """
    temps = [*root.glob("builds/.tmp-*"), *root.glob(".current-*")]
    gone = [p for p in temps if _writer_gone(p.name)]
    for p in gone:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return gone


def publish_build(root: Path, write: Callable[[Path], dict[str, Any]], keep: int = 2) -> Path:
    """Write a complete build under ``root/builds/`` and point ``root/current`` at it.

    ``write(folder)`` fills a temp folder and returns its metadata (saved as meta.json);
    every file is fsynced, the folder renamed into place and ``current`` (a relative
    symlink) replaced atomically, so readers see the old build or the new one, never
    half of one. Older builds beyond ``keep`` are deleted, and so are temp folders of
    builds that were killed. Returns the new build's path.
    """
    builds = root / "builds"
    builds.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root)
    # Names sort in creation order (UTC second, then nanoseconds, then pid), so pruning
    # below keeps the newest builds even when several are published within one second.
    ns = time.time_ns()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(ns // 10**9))
    build_id = f"{stamp}-{ns % 10**9:09d}-{os.getpid()}"
    tmp = builds / f".tmp-{build_id}"
    tmp.mkdir()
    try:
        meta = write(tmp)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        for f in tmp.rglob("*"):
            if f.is_file():
                with f.open("rb") as fh:
                    os.fsync(fh.fileno())
        final = builds / build_id
        os.rename(tmp, final)
        link_tmp = root / f".current-{build_id}"
        os.symlink(Path("builds") / build_id, link_tmp)
        os.replace(link_tmp, root / "current")
        fsync_dir(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    done = sorted((d for d in builds.iterdir() if not d.name.startswith(".")), key=lambda d: d.name)
    for d in done[:-keep]:
        if d.name != final.name:
            drop_index_data(d / "index")  # e.g. its collection on a Milvus server
            shutil.rmtree(d, ignore_errors=True)
    return final


def write_build(
    catalog: Catalog,
    name: str,
    *,
    ids: np.ndarray,
    keys: list[str],
    embeddings: np.ndarray,
    factory: str | None,
    extra_meta: dict[str, Any],
    extra_writer: Callable[[Path], None] | None = None,
) -> IndexBuild:
    """Write a complete build, then point ``current`` at it atomically."""
    dim = int(embeddings.shape[1])
    factory = factory or default_factory(len(ids))

    def write(tmp: Path) -> dict[str, Any]:
        index = make_index(dim, factory)
        if len(ids) and isinstance(index, MetadataIndex):  # Milvus filters on these itself
            found = catalog.get_by_ids(ids.tolist())
            rows = [found.get(int(i)) for i in ids]
            cats = [p.category if p else "" for p in rows]
            index.upsert(ids, embeddings, cats, [p.attributes if p else {} for p in rows])
        elif len(ids):
            index.add(ids, embeddings)
        index.save(tmp / "index")
        _write_npy(tmp / "ids.npy", ids.astype(np.int64))
        _write_npy(tmp / "embeddings.npy", embeddings.astype(np.float32))
        (tmp / "keys.json").write_text(json.dumps(keys))
        if extra_writer is not None:
            extra_writer(tmp)
        return {
            "name": name,
            "catalog": catalog.name,
            "catalog_version": catalog.version(),
            "factory": factory,
            "dim": dim,
            "count": len(ids),
            "built_at": time.time(),
            **extra_meta,
        }

    publish_build(index_root(catalog, name), write, keep=KEEP_BUILDS)
    return load_build(catalog, name)


def embed_products(
    products: list[Product],
    keys: list[str],
    encode: Callable[[list[Product]], np.ndarray],
    cache: dict[str, np.ndarray],
    *,
    batch_size: int,
    advance: Callable[[int], None],
) -> np.ndarray:
    """Embed products in batches, reusing cached vectors by key. Returns (N, D)."""
    todo = [i for i, k in enumerate(keys) if k not in cache]
    # deduplicate identical keys (same image / same text) inside the work list
    first: dict[str, int] = {}
    unique = [i for i in todo if first.setdefault(keys[i], i) == i]
    fresh: dict[str, np.ndarray] = {}
    advance(len(products) - len(unique))
    for start in range(0, len(unique), batch_size):
        batch = unique[start : start + batch_size]
        vecs = encode([products[i] for i in batch])
        for i, v in zip(batch, vecs, strict=True):
            fresh[keys[i]] = v
        advance(len(batch))
    if not products:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([fresh[k] if k in fresh else cache[k] for k in keys]).astype(np.float32)
