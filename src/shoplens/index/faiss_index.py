"""FAISS indexes chosen by factory string (``"Flat"``, ``"HNSW32"``, ``"IVF1024,PQ32"``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from shoplens.errors import InvalidInputError
from shoplens.index.base import check_vectors, empty_results

BRUTE_FORCE_MAX = 4096  # filters allowing at most this many ids (or 5 %) are searched exactly
# Exact (Flat) search of this many queries at once scores every vector in one matrix
# product: FAISS scans the vectors once per query below its BLAS threshold and its BLAS
# path (OpenBLAS, blocks of 1,024 vectors) costs about four single scans here, while one
# torch (MKL) product reads them once. Measured on 70k x 128 vectors, one thread
# (docs/BENCHMARKS.md, "Cost per query by batch size"): 1.4-2.1 ms per query at 3-6
# queries against 3.1-3.6 ms either FAISS way; at 8 and more FAISS's BLAS path is as fast.
GEMM_QUERIES = range(2, 8)


class FaissIndex:
    """Inner-product FAISS index with int64 labels and optional id filtering."""

    def __init__(
        self,
        dim: int,
        factory: str = "Flat",
        *,
        ef_search: int = 64,
        nprobe: int = 16,
        ef_construction: int = 200,
    ) -> None:
        """``ef_construction`` (HNSW build effort) and ``ef_search`` were chosen with
        benchmarks/bench_ann.py: recall@10 0.998 at 105x exact QPS on 1M vectors."""
        import faiss

        self.dim = dim
        self.factory = factory
        self.ef_search = ef_search
        self.nprobe = nprobe
        self.ef_construction = ef_construction
        try:
            inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            reason = str(e).strip().splitlines()[-1].rsplit(": ", 1)[-1]
            raise InvalidInputError(
                f"invalid FAISS factory string {factory!r} ({reason}); examples: 'Flat', "
                "'HNSW32', 'IVF1024,PQ32', or 'exact'"
            ) from e
        if hasattr(inner, "hnsw"):
            inner.hnsw.efConstruction = ef_construction  # before any add
        self._index: Any = faiss.IndexIDMap2(inner)
        self._label_cache: np.ndarray | None = None
        self._apply_params()

    def set_params(self, *, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Change the search settings (HNSW ``efSearch``, IVF ``nprobe``) of a built index."""
        for name, value in (("ef_search", ef_search), ("nprobe", nprobe)):
            if value is not None:
                if not isinstance(value, int) or value < 1:
                    raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
                setattr(self, name, value)
        self._apply_params()

    def _apply_params(self) -> None:
        import faiss

        inner = faiss.downcast_index(self._index.index)
        if hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = self.ef_search
        if hasattr(inner, "nprobe"):
            inner.nprobe = self.nprobe

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        v = check_vectors(vectors, self.dim)
        if not self._index.is_trained:
            self._index.train(v)
        self._index.add_with_ids(v, np.ascontiguousarray(ids, dtype=np.int64))

    def _params(self, allowed_ids: np.ndarray) -> Any:
        import faiss as faiss_module

        faiss: Any = faiss_module  # the bundled stubs lack the SearchParameters constructors

        sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))
        inner = faiss.downcast_index(self._index.index)
        if hasattr(inner, "hnsw"):
            params: Any = faiss.SearchParametersHNSW(sel=sel, efSearch=self.ef_search)
        elif hasattr(inner, "nprobe"):
            params = faiss.SearchParametersIVF(sel=sel, nprobe=self.nprobe)
        else:
            params = faiss.SearchParameters(sel=sel)
        return params, sel

    def search(
        self, vectors: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        q = check_vectors(vectors, self.dim)  # (Q, D)
        if allowed_ids is None and len(q) in GEMM_QUERIES and k >= 1:
            xb = self._flat_vectors()
            if xb is not None:
                return self._search_gemm(q, k, xb)
        if allowed_ids is None:
            scores, ids = self._index.search(q, k)
        elif len(allowed_ids) <= max(BRUTE_FORCE_MAX, self.ntotal // 20):
            # Selective filter: graph / IVF search with a selector can miss allowed items,
            # so score the allowed vectors exactly (what vector databases do too).
            return self._search_subset(q, k, allowed_ids)
        else:
            params, _sel = self._params(allowed_ids)  # keep the selector alive during search
            scores, ids = self._index.search(q, k, params=params)
        if (ids < 0).any():  # fewer than k results: padding gets the lowest score
            scores = np.where(ids < 0, -np.inf, scores)
        return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)

    def _flat_vectors(self) -> np.ndarray | None:
        """(N, D) view (no copy) of an exact inner-product index's vectors; else None."""
        import faiss

        inner: Any = faiss.downcast_index(self._index.index)
        flat = isinstance(inner, faiss.IndexFlat)  # IndexFlatIP is one
        if not flat or inner.metric_type != faiss.METRIC_INNER_PRODUCT or inner.ntotal == 0:
            return None
        n, d = int(inner.ntotal), int(inner.d)
        return faiss.rev_swig_ptr(inner.get_xb(), n * d).reshape(n, d)

    def _search_gemm(self, q: np.ndarray, k: int, xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact search as one matrix product and a top-k: the vectors are read once for
        all Q queries (FAISS's scan reads them once per query). Same results as FAISS up
        to float rounding (the order of near-equal scores may differ)."""
        import torch

        kk = min(k, len(xb))
        with torch.inference_mode():
            scores = torch.from_numpy(xb) @ torch.from_numpy(q).T  # (N, Q)
            top_s, top_i = torch.topk(scores, kk, dim=0)  # (kk, Q) each, best first
        out_s, out_i = empty_results(len(q), k)
        out_s[:, :kk] = top_s.T.numpy()
        out_i[:, :kk] = self._labels()[top_i.T.numpy()]
        return out_s, out_i

    def _labels(self) -> np.ndarray:
        import faiss

        if self._label_cache is None or len(self._label_cache) != self.ntotal:
            self._label_cache = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        return self._label_cache

    def _search_subset(
        self, q: np.ndarray, k: int, allowed_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact search over the stored vectors of ``allowed_ids`` (those present)."""
        present = np.unique(np.asarray(allowed_ids, dtype=np.int64))
        present = present[np.isin(present, self._labels())]
        out_s, out_i = empty_results(q.shape[0], k)
        if present.size == 0:
            return out_s, out_i
        vecs = np.vstack([self._index.reconstruct(int(i)) for i in present])  # (M, D)
        scores = q @ vecs.T  # (Q, M)
        kk = min(k, present.size)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
        out_s[:, :kk] = np.take_along_axis(scores, order, axis=1)
        out_i[:, :kk] = present[order]
        return out_s, out_i

    def save(self, path: Path) -> None:
        import faiss

        path.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._index, str(path / "index.faiss"))
        meta = {
            "kind": "faiss",
            "dim": self.dim,
            "factory": self.factory,
            "ef_search": self.ef_search,
            "nprobe": self.nprobe,
            "ef_construction": self.ef_construction,
        }
        (path / "index.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: Path) -> FaissIndex:
        import faiss

        meta = json.loads((path / "index.json").read_text())
        idx = cls.__new__(cls)
        idx.dim = int(meta["dim"])
        idx.factory = meta["factory"]
        idx.ef_search = int(meta.get("ef_search", 128))
        idx.nprobe = int(meta.get("nprobe", 16))
        idx.ef_construction = int(meta.get("ef_construction", 40))  # FAISS's default
        idx._index = faiss.read_index(str(path / "index.faiss"))
        idx._label_cache = None
        idx._apply_params()
        return idx
