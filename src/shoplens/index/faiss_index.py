"""FAISS indexes chosen by factory string (``"Flat"``, ``"HNSW32"``, ``"IVF1024,PQ32"``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from shoplens.errors import InvalidInputError
from shoplens.index.base import check_vectors


class FaissIndex:
    """Inner-product FAISS index with int64 labels and optional id filtering."""

    def __init__(self, dim: int, factory: str = "Flat", *, ef_search: int = 128,
                 nprobe: int = 16) -> None:
        import faiss

        self.dim = dim
        self.factory = factory
        self.ef_search = ef_search
        self.nprobe = nprobe
        try:
            inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise InvalidInputError(
                f"invalid FAISS factory string {factory!r} (e.g. 'Flat', 'HNSW32', "
                f"'IVF256,PQ16'): {str(e).splitlines()[-1]}"
            ) from e
        self._index: Any = faiss.IndexIDMap2(inner)
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
        import faiss

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
        if allowed_ids is None:
            scores, ids = self._index.search(q, k)
        else:
            params, _sel = self._params(allowed_ids)  # keep the selector alive during search
            scores, ids = self._index.search(q, k, params=params)
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return scores, ids.astype(np.int64)

    def save(self, path: Path) -> None:
        import faiss

        path.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._index, str(path / "index.faiss"))
        meta = {"kind": "faiss", "dim": self.dim, "factory": self.factory,
                "ef_search": self.ef_search, "nprobe": self.nprobe}
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
        idx._index = faiss.read_index(str(path / "index.faiss"))
        idx._apply_params()
        return idx
