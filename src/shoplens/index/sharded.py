"""Sharded FAISS: one index per shard, fan-out search on a thread pool, exact top-k merge.

The memory-lean single-machine option for big catalogues: shards are built one at a time
from the embedding files of a batch job, so only one shard's float vectors are in memory
while building, and may use product quantisation (``IVF1024,PQ32np``, or with an HNSW
coarse quantiser ``IVF1024_HNSW32,PQ32np``: 32 bytes of codes per vector instead of
4 x dim; ``np`` skips polysemous training, which only serves Hamming pre-filtering and is
slow). Each shard is a :class:`~shoplens.index.faiss_index.FaissIndex`; a search asks
every shard for its top k and merges them with ``faiss.merge_knn_results``, so sharded
exact search returns exactly what one exact index returns.

Shard sources (:meth:`ShardedIndex.from_dir`):

- Parquet partitioned by shard (Spark ``partitionBy("shard")``): ``shard=0/*.parquet``, ...
- one Parquet file per shard: ``*.parquet``;
- NumPy pairs per shard: ``NAME.ids.npy`` (N,) int64 and ``NAME.vectors.npy`` (N, D).

Parquet files hold an ``id`` integer column and an ``embedding`` list-of-float column, or
(the output of ``shoplens pipeline embed``) a ``sku`` column mapped to ids by the caller.
"""

from __future__ import annotations

import json
import os
import re
import weakref
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from shoplens.errors import InvalidInputError
from shoplens.index.base import check_vectors, empty_results
from shoplens.index.faiss_index import FaissIndex

Shard = tuple[np.ndarray, np.ndarray]  # ids (N,) int64, vectors (N, D) float32
_SHARD_DIR = re.compile(r"^shard=(\d+)$")


def parse_factory(spec: str) -> tuple[int, str]:
    """``"sharded:N:FACTORY"`` -> (N, FAISS factory string), e.g. ``sharded:4:IVF256,PQ16``."""
    parts = spec.split(":", 2)
    if len(parts) != 3 or parts[0] != "sharded" or not parts[1].isdigit() or int(parts[1]) < 1:
        raise InvalidInputError(
            f"invalid sharded index {spec!r}: use sharded:<shards>:<FAISS factory>, "
            "e.g. sharded:4:Flat or sharded:8:IVF1024,PQ32"
        )
    return int(parts[1]), parts[2] or "Flat"


def make_shard(dim: int, factory: str) -> FaissIndex:
    """An empty FAISS shard; refuses factories whose scores are not inner products."""
    import faiss

    shard = FaissIndex(dim, factory)
    if isinstance(faiss.downcast_index(shard._index.index), faiss.IndexHNSWPQ):
        # FAISS's HNSW-over-PQ returns L2 distances whatever the metric: shards' scores
        # could not be merged (and the scores would not be cosines)
        raise InvalidInputError(
            f"{factory!r} (HNSW over PQ codes) does not score by inner product in FAISS; "
            "for PQ with an HNSW coarse quantiser use e.g. 'IVF1024_HNSW32,PQ32np', "
            "or 'HNSW32_SQ8' for a graph over 8-bit codes"
        )
    return shard


def faiss_ids(shard: FaissIndex) -> np.ndarray:
    """The (N,) int64 ids stored in a shard."""
    import faiss

    return faiss.vector_to_array(shard._index.id_map).astype(np.int64)


def _read_parquet(files: list[Path], ids_by_sku: Mapping[str, int] | None = None) -> Shard:
    """ids (N,) and vectors (N, D) from the ``id`` (or, with ``ids_by_sku``, the ``sku``)
    and ``embedding`` columns of ``files``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    key = "id" if ids_by_sku is None else "sku"
    ids, vecs = [], []
    for f in files:
        try:
            table = pq.read_table(f, columns=[key, "embedding"])
        except (pa.ArrowInvalid, KeyError) as e:
            raise InvalidInputError(
                f"{f}: expected a Parquet file with columns '{key}' and 'embedding' ({e})"
            ) from e
        if table.num_rows == 0:
            continue
        emb = table.column("embedding").combine_chunks()
        if not pa.types.is_list(emb.type) and not pa.types.is_fixed_size_list(emb.type):
            raise InvalidInputError(f"{f}: column 'embedding' must be a list of floats")
        lengths = set(emb.value_lengths().to_numpy(zero_copy_only=False).tolist())
        if len(lengths) != 1 or emb.null_count:
            raise InvalidInputError(f"{f}: embeddings must all have the same length")
        flat = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        vecs.append(flat.reshape(table.num_rows, lengths.pop()))  # (n, D)
        if ids_by_sku is None:
            ids.append(table.column("id").to_numpy().astype(np.int64))
            continue
        skus = table.column("sku").to_pylist()
        missing = [k for k in skus if k not in ids_by_sku]
        if missing:
            raise InvalidInputError(
                f"{f}: {len(missing)} skus are not in the catalogue, e.g. {missing[0]!r}; "
                "load them first ('shoplens pipeline load')"
            )
        ids.append(np.array([ids_by_sku[k] for k in skus], dtype=np.int64))
    if not ids:
        return np.empty((0,), np.int64), np.empty((0, 0), np.float32)
    return np.concatenate(ids), np.concatenate(vecs)


def iter_shard_files(
    folder: Path, ids_by_sku: Mapping[str, int] | None = None
) -> Iterator[tuple[str, Shard]]:
    """(name, (ids, vectors)) per shard found in ``folder``, read lazily one at a time;
    ``ids_by_sku`` maps a ``sku`` column to product ids where the files have no ``id``."""
    if not folder.is_dir():
        raise InvalidInputError(f"shard folder {folder} does not exist")
    parts = sorted(
        (int(m.group(1)), d) for d in folder.iterdir() if (m := _SHARD_DIR.match(d.name))
    )
    if parts:
        for _, d in parts:
            yield d.name, _read_parquet(sorted(d.rglob("*.parquet")), ids_by_sku)
        return
    found = False
    for f in sorted(folder.glob("*.parquet")):
        found = True
        yield f.stem, _read_parquet([f], ids_by_sku)
    for f in sorted(folder.glob("*.ids.npy")):
        found = True
        name = f.name[: -len(".ids.npy")]
        vec_file = folder / f"{name}.vectors.npy"
        if not vec_file.is_file():
            raise InvalidInputError(f"{f} has no matching {vec_file.name}")
        yield name, (np.load(f).astype(np.int64), np.load(vec_file))
    if not found:
        raise InvalidInputError(
            f"no shards in {folder}: expected shard=N/ folders of Parquet, *.parquet files "
            "or NAME.ids.npy + NAME.vectors.npy pairs"
        )


class ShardedIndex:
    """Several FAISS indexes searched in parallel and merged exactly."""

    kind = "sharded"

    def __init__(
        self, dim: int, factory: str = "Flat", n_shards: int = 4, *, threads: int | None = None
    ) -> None:
        """``n_shards`` empty shards of FAISS ``factory``; :meth:`add` routes id % n_shards."""
        if not isinstance(n_shards, int) or n_shards < 1:
            raise InvalidInputError(f"n_shards must be a positive integer, got {n_shards!r}")
        self.dim = dim
        self.factory = factory
        self.shards: list[FaissIndex] = [make_shard(dim, factory) for _ in range(n_shards)]
        self.threads = threads or min(n_shards, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def from_shards(
        cls, shards: Iterable[Shard], factory: str = "Flat", *, threads: int | None = None
    ) -> ShardedIndex:
        """One FAISS index per (ids, vectors) shard, built one shard at a time."""
        built: list[FaissIndex] = []
        dim = -1
        for ids, vectors in shards:
            v = np.asarray(vectors, dtype=np.float32)
            if v.ndim != 2 or len(ids) != len(v):
                raise InvalidInputError(
                    f"a shard needs ids (N,) and vectors (N, D), got {np.shape(ids)} and {v.shape}"
                )
            if len(ids) == 0:
                continue
            dim = v.shape[1] if dim < 0 else dim
            shard = make_shard(dim, factory)
            shard.add(np.asarray(ids, dtype=np.int64), check_vectors(v, dim))
            built.append(shard)
        if not built:
            raise InvalidInputError("no vectors in the shards")
        all_ids = np.concatenate([faiss_ids(s) for s in built])
        if len(np.unique(all_ids)) != len(all_ids):
            raise InvalidInputError("the shards hold the same id more than once")
        idx = cls(dim, factory, 1, threads=threads)
        idx.shards = built
        idx.threads = threads or min(len(built), os.cpu_count() or 1)
        return idx

    @classmethod
    def from_dir(
        cls,
        folder: Path,
        factory: str = "Flat",
        *,
        ids_by_sku: Mapping[str, int] | None = None,
        threads: int | None = None,
    ) -> ShardedIndex:
        """Build from the shard files in ``folder`` (see the module docstring), e.g. the
        ``embeddings/`` of ``shoplens pipeline embed`` with ``ids_by_sku`` from the catalogue."""
        shards = (shard for _, shard in iter_shard_files(folder, ids_by_sku))
        return cls.from_shards(shards, factory, threads=threads)

    # ---- size -----------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return sum(s.ntotal for s in self.shards)

    @property
    def shard_sizes(self) -> list[int]:
        return [s.ntotal for s in self.shards]

    def memory_bytes(self) -> int:
        """Bytes of the serialised shards (codes or vectors, graph, id maps): what they
        take in memory once loaded, give or take allocator slack."""
        import faiss

        return sum(int(faiss.serialize_index(s._index).nbytes) for s in self.shards)

    @property
    def bytes_per_vector(self) -> float:
        return self.memory_bytes() / max(1, self.ntotal)

    # ---- writes ---------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors, each to shard ``id % n_shards``."""
        v = check_vectors(vectors, self.dim)  # (N, D)
        pk = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(pk) != len(v):
            raise InvalidInputError(f"got {len(pk)} ids for {len(v)} vectors")
        where = pk % len(self.shards)
        for s, shard in enumerate(self.shards):
            mask = where == s
            if mask.any():
                shard.add(pk[mask], v[mask])

    def delete(self, ids: np.ndarray) -> int:
        """Remove vectors by id from every shard (Flat, IVF and PQ shards; not HNSW).
        Returns how many were removed."""
        import faiss

        sel = faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64).reshape(-1))
        removed = 0
        for shard in self.shards:
            try:
                removed += int(shard._index.remove_ids(sel))
            except RuntimeError as e:
                raise InvalidInputError(
                    f"{self.factory} shards cannot delete vectors; rebuild the index instead"
                ) from e
            shard._label_cache = None  # its id list changed
        return removed

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace (or add) vectors by id."""
        v = check_vectors(vectors, self.dim)
        self.delete(ids)
        self.add(ids, v)

    # ---- search ---------------------------------------------------------------------
    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="shoplens-shard")
            weakref.finalize(self, self._pool.shutdown, wait=False)
        return self._pool

    def search(
        self, vectors: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """vectors (Q, dim) -> scores (Q, k) float32, ids (Q, k) int64 (padded -inf / -1)."""
        import faiss

        q = check_vectors(vectors, self.dim)  # (Q, D)
        if not isinstance(k, int) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        shards = [s for s in self.shards if s.ntotal > 0]  # an empty IVF shard is untrained
        if not shards:
            return empty_results(q.shape[0], k)
        if len(shards) == 1 or self.threads == 1:
            parts = [s.search(q, k, allowed_ids) for s in shards]
        else:
            parts = list(self._executor().map(lambda s: s.search(q, k, allowed_ids), shards))
        scores = np.stack([p[0] for p in parts])  # (S, Q, k)
        ids = np.stack([p[1] for p in parts])  # (S, Q, k)
        merged_s, merged_i = faiss.merge_knn_results(scores, ids, keep_max=True)
        merged_s = np.where(merged_i < 0, -np.inf, merged_s).astype(np.float32)
        return merged_s, merged_i.astype(np.int64)

    # ---- persistence ----------------------------------------------------------------
    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        for n, shard in enumerate(self.shards):
            shard.save(path / f"shard-{n:04d}")
        meta = {"kind": self.kind, "dim": self.dim, "factory": self.factory}
        meta["n_shards"] = len(self.shards)
        (path / "index.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: Path, *, threads: int | None = None) -> ShardedIndex:
        meta: dict[str, Any] = json.loads((path / "index.json").read_text())
        idx = cls(int(meta["dim"]), meta["factory"], 1, threads=threads)
        idx.shards = [FaissIndex.load(path / f"shard-{n:04d}") for n in range(meta["n_shards"])]
        idx.threads = threads or min(len(idx.shards), os.cpu_count() or 1)
        return idx
