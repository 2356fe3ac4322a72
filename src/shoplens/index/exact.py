"""Exact inner-product search in numpy: the reference every ANN index is tested against."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shoplens.index.base import check_vectors, empty_results


class ExactIndex:
    """Brute-force inner product over all vectors."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._ids = np.empty((0,), dtype=np.int64)
        self._vecs = np.empty((0, dim), dtype=np.float32)

    @property
    def ntotal(self) -> int:
        return int(self._ids.shape[0])

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        v = check_vectors(vectors, self.dim)
        self._ids = np.concatenate([self._ids, np.asarray(ids, dtype=np.int64)])
        self._vecs = np.concatenate([self._vecs, v])

    def search(
        self, vectors: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        q = check_vectors(vectors, self.dim)  # (Q, D)
        scores = q @ self._vecs.T  # (Q, N)
        if allowed_ids is not None:
            scores[:, ~np.isin(self._ids, allowed_ids)] = -np.inf
        kk = min(k, self.ntotal)
        out_s, out_i = empty_results(q.shape[0], k)
        if kk == 0:
            return out_s, out_i
        top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]  # (Q, kk) unordered
        top_s = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_s, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        top_s = np.take_along_axis(top_s, order, axis=1)
        valid = np.isfinite(top_s)
        out_s[:, :kk] = np.where(valid, top_s, -np.inf)
        out_i[:, :kk] = np.where(valid, self._ids[top], -1)
        return out_s, out_i

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / "vectors.npy", self._vecs)
        np.save(path / "labels.npy", self._ids)
        (path / "index.json").write_text(json.dumps({"kind": "exact", "dim": self.dim}))

    @classmethod
    def load(cls, path: Path) -> ExactIndex:
        meta = json.loads((path / "index.json").read_text())
        idx = cls(int(meta["dim"]))
        idx._vecs = np.load(path / "vectors.npy")
        idx._ids = np.load(path / "labels.npy")
        return idx
