"""The index protocol: ``add(ids, vectors)``, ``search(vectors, k)``, ``save``, ``load``.

Scores are inner products (cosine for L2-normalised vectors), higher is better. Results
are padded with id -1 and score -inf when fewer than k vectors qualify.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from shoplens.errors import InvalidInputError

HNSW_THRESHOLD = 100_000  # catalogues at least this large default to HNSW


@runtime_checkable
class VectorIndex(Protocol):
    dim: int

    @property
    def ntotal(self) -> int: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """ids: (N,) int64, vectors: (N, dim) float32."""

    def search(
        self, vectors: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """vectors: (Q, dim) -> scores (Q, k) float32, ids (Q, k) int64."""
        ...

    def save(self, path: Path) -> None: ...


@runtime_checkable
class MetadataIndex(VectorIndex, Protocol):
    """An index that stores each product's category and attributes beside its vector and
    filters on them itself (Milvus): ``search(..., categories=, attributes=)``."""

    def upsert(
        self,
        ids: np.ndarray,
        vectors: np.ndarray,
        categories: Sequence[str] | None = None,
        attributes: Sequence[Mapping[str, str]] | None = None,
    ) -> None: ...

    def delete(self, ids: np.ndarray) -> int: ...

    def count(
        self, categories: Sequence[str] | None = None, attributes: Mapping[str, str] | None = None
    ) -> int: ...


def check_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Validate (N, dim) vectors and return them as contiguous float32."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[1] != dim:
        raise InvalidInputError(f"expected vectors of shape (N, {dim}), got {v.shape}")
    if not np.isfinite(v).all():
        raise InvalidInputError("vectors contain NaN or infinite values")
    return np.ascontiguousarray(v)


def empty_results(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """What a search of ``n`` queries returns before anything is found: (n, k) float32
    scores of -inf and (n, k) int64 ids of -1 (the padding every index uses)."""
    return np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)


def default_factory(n: int) -> str:
    """Exact search for small catalogues, HNSW above :data:`HNSW_THRESHOLD`."""
    return "Flat" if n < HNSW_THRESHOLD else "HNSW32"


def make_index(dim: int, factory: str = "Flat") -> VectorIndex:
    """``"exact"`` for the numpy reference, ``"milvus"`` (or ``"milvus:FLAT"``) for Milvus at
    ``$SHOPLENS_INDEX_URI``, ``"sharded:N:FACTORY"`` for N FAISS shards, anything else is a
    FAISS factory string."""
    from shoplens.index.exact import ExactIndex
    from shoplens.index.faiss_index import FaissIndex

    if factory == "exact":
        return ExactIndex(dim)
    if factory == "milvus" or factory.startswith("milvus:"):
        from shoplens.index.milvus import from_factory

        return from_factory(dim, factory)
    if factory.startswith("sharded:"):
        from shoplens.index.sharded import ShardedIndex, parse_factory

        n_shards, inner = parse_factory(factory)
        return ShardedIndex(dim, inner, n_shards)
    return FaissIndex(dim, factory)


def load_index(path: Path) -> VectorIndex:
    """Load an index saved by ``save`` (its kind is in ``index.json``)."""
    from shoplens.index.exact import ExactIndex
    from shoplens.index.faiss_index import FaissIndex

    meta = json.loads((path / "index.json").read_text())
    if meta["kind"] == "exact":
        return ExactIndex.load(path)
    if meta["kind"] == "milvus":
        from shoplens.index.milvus import MilvusIndex

        return MilvusIndex.load(path)
    if meta["kind"] == "sharded":
        from shoplens.index.sharded import ShardedIndex

        return ShardedIndex.load(path)
    return FaissIndex.load(path)


def drop_index_data(path: Path) -> None:
    """Free what the index saved at ``path`` keeps outside its folder (a collection on a
    Milvus server) before the folder is deleted."""
    try:
        kind = json.loads((path / "index.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):  # no index there, or not one of ours
        return
    if kind == "milvus":
        from shoplens.index.milvus import drop_saved

        drop_saved(path)
