"""Approximate candidate retrieval for serving: an inverted-file index per retriever.

The recommenders' exact candidate step scores every item of the catalogue for each
customer (three (N, d) scans per request: the pooled content embedding, ALS factors and
the sequential model's item table). On large catalogues the service swaps those scans
for FAISS IVF indexes over the same item vectors (inner product): a query visits
``nprobe`` of ``nlist`` cells, so it reads a few percent of the items. The candidates'
scores (the ranker's features) are still computed exactly, only *which* items become
candidates is approximate; ``recall_vs_exact`` measures how many of the exact top
candidates the index finds.

Offline evaluation keeps the exact scans (``FusedRanker`` without ANN).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import faiss
import numpy as np

from shoplens.personalize.types import unseen

#: Catalogues with at least this many items get ANN candidates in the service.
ANN_MIN_ITEMS = 20_000
TRAIN_SAMPLE = 40_000  # items used to train the coarse quantiser


class ItemANN:
    """IVF-Flat (inner product) over item vectors, with seen-item exclusion.

    Args:
        vectors: (N, d) item vectors of one retriever; row i is item index i.
        valid: (N,) bool, items the retriever can rank (others never returned).
        nlist: cells (default ~2 sqrt(N)); nprobe: cells visited per query.
    """

    def __init__(
        self,
        vectors: np.ndarray,
        valid: np.ndarray | None = None,
        *,
        nlist: int | None = None,
        nprobe: int = 32,
        seed: int = 0,
    ) -> None:
        x = np.ascontiguousarray(vectors, dtype=np.float32)  # (N, d)
        keep = np.flatnonzero(valid) if valid is not None else np.arange(len(x))
        d = x.shape[1]
        nlist = nlist or max(1, min(4096, int(2 * np.sqrt(max(len(keep), 1)))))
        nlist = min(nlist, max(1, len(keep)))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = keep if len(keep) <= TRAIN_SAMPLE else rng.choice(keep, TRAIN_SAMPLE, False)
        index.cp.seed = seed
        index.train(x[np.sort(sample)])
        index.add_with_ids(x[keep], keep.astype(np.int64))
        index.nprobe = min(nprobe, nlist)
        self.index = index
        self.n_items = len(x)
        self.dim = d
        self._quantizer = quantizer  # the IVF index does not own it

    @property
    def nprobe(self) -> int:
        return int(self.index.nprobe)

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` items per query, seen items left out: ((B, k) int64 -1 padded, (B, k)
        float32 inner products -inf padded)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)  # (B, d)
        b = len(q)
        idx = np.full((b, k), -1, np.int64)
        val = np.full((b, k), -np.inf, np.float32)
        if b == 0 or k <= 0:
            return idx, val
        extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        depth = min(k + extra, self.index.ntotal)
        if depth <= 0:
            return idx, val
        sims, found = self.index.search(q, depth)  # (B, depth)
        for r in range(b):
            ok = found[r] >= 0
            if exclude is not None and len(exclude[r]):
                ok &= unseen(found[r], exclude[r], self.n_items)
            top, top_s = found[r][ok][:k], sims[r][ok][:k]
            idx[r, : len(top)], val[r, : len(top)] = top, top_s
        return idx, val


def recall_vs_exact(ann: ItemANN, vectors: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Share of the exact top ``k`` (by inner product) that ``ann`` returns, over queries."""
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :k]  # (Q, k)
    got, _ = ann.search(queries, k)
    return float(np.mean([len(set(e) & set(g)) / k for e, g in zip(exact, got, strict=True)]))


class LazyANN:
    """Builds :class:`ItemANN` indexes in a background thread; ``get`` returns None until
    they are ready, so a service starts at once and answers exactly meanwhile."""

    def __init__(self, build: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> None:
        self._specs = build
        self._ready: dict[str, ItemANN] | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="shoplens-ann", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._ready = {name: ItemANN(v, m) for name, (v, m) in self._specs.items()}
        except Exception as e:  # exact answers stay available
            self.error = f"{type(e).__name__}: {e}"

    @property
    def state(self) -> str:
        """ "building", "ready" or "failed" (then exact scans answer)."""
        if self._ready is not None:
            return "ready"
        return "failed" if self.error is not None else "building"

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return self._ready is not None

    def get(self, name: str) -> ItemANN | None:
        ready = self._ready
        return None if ready is None else ready.get(name)
