"""Baseline recommenders: popularity, item-kNN on co-visitation and on image embeddings, ALS.

Every recommender here follows :class:`~shoplens.personalize.types.Recommender` and adds

- ``score_all(histories) -> (B, N) float32``: a score for every item (-inf: cannot rank),
- ``score_items(histories, candidates) -> (B, C) float32``: the scores of the (B, C) int64
  candidate item indices (-1 = padding -> nan), for a downstream ranker.

Customers are scored from their :class:`~shoplens.personalize.types.History` alone, so a
customer never seen in training works the same as a known one. Events are weighted by
:func:`history_weights` (event type x recency, the age measured from the history's own last
event). Fitted objects pickle (faiss indexes are rebuilt on load).

Ties and empty histories: the kNN models and ALS add ``TIE_BREAK`` x (popularity / its max)
to every score, so items without evidence (e.g. every item for an empty history) are ordered
by popularity after the items with evidence. An empty history therefore gets the popularity
ranking, never an arbitrary one. The tie-break is 1e-6 of the range of a popularity score and
does not reorder items with real evidence.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp

from shoplens.personalize.types import (
    TYPE_WEIGHTS,
    History,
    Interactions,
    ItemSpace,
    top_k_rows,
    unseen,
)

DAY = 86_400.0
TIE_BREAK = 1e-6  # weight of the popularity tie-break added to kNN / ALS scores
SCORE_ROWS = 512  # histories scored at once: bounds memory to SCORE_ROWS x N floats
MAX_LAG = 50  # co-visitation pairs an event with at most this many later events


def history_weights(
    history: History, now: float | None, half_life_days: float | None
) -> np.ndarray:
    """(L,) float32 weight of each event: TYPE_WEIGHTS[type] * 0.5 ** (age_days / half_life).

    ``now`` None: ages are measured from the history's last event. ``half_life_days`` None:
    no recency decay. Events after ``now`` count as age 0.
    """
    w = TYPE_WEIGHTS[np.asarray(history.types, dtype=np.int64)].astype(np.float64)  # (L,)
    if half_life_days is None or len(history) == 0:
        return w.astype(np.float32)
    ts = np.asarray(history.timestamps, dtype=np.float64)
    ref = float(ts.max()) if now is None else float(now)
    age_days = np.maximum(ref - ts, 0.0) / DAY  # (L,)
    return (w * 0.5 ** (age_days / half_life_days)).astype(np.float32)


def _event_weights(
    types: np.ndarray, timestamps: np.ndarray, now: float, half_life_days: float | None
) -> np.ndarray:
    """Vectorised :func:`history_weights` of many events against one ``now``: (E,) float64."""
    w = TYPE_WEIGHTS[types].astype(np.float64)
    if half_life_days is None:
        return w
    return w * 0.5 ** (np.maximum(now - timestamps, 0.0) / DAY / half_life_days)


def history_matrix(
    histories: Sequence[History], n_items: int, half_life_days: float | None
) -> sp.csr_matrix:
    """(B, N) sparse customer x item weights: the :func:`history_weights` of each history
    (repeat events on an item summed)."""
    indptr = np.zeros(len(histories) + 1, dtype=np.int64)
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for b, h in enumerate(histories):
        if len(h):
            items = np.asarray(h.items, dtype=np.int64)
            if items.min() < 0 or items.max() >= n_items:
                raise ValueError(f"history item index out of range 0..{n_items - 1}")
            unique, inverse = np.unique(items, return_inverse=True)  # sorted columns
            cols.append(unique)
            vals.append(np.bincount(inverse, weights=history_weights(h, None, half_life_days)))
        indptr[b + 1] = indptr[b] + (len(cols[-1]) if len(h) else 0)
    if not cols:
        return sp.csr_matrix((len(histories), n_items), dtype=np.float32)
    data = np.concatenate(vals).astype(np.float32)
    # built from CSR arrays directly: COO -> CSR costs ~2x for one short history
    return sp.csr_matrix((data, np.concatenate(cols), indptr), shape=(len(histories), n_items))


def _popularity(train: Interactions, n_items: int, half_life_days: float | None) -> np.ndarray:
    """(N,) float32 type-weighted, recency-decayed event counts (age from the last event)."""
    if len(train) == 0:
        return np.zeros(n_items, dtype=np.float32)
    now = float(train.timestamps.max())
    w = _event_weights(train.types, train.timestamps, now, half_life_days)
    return np.bincount(train.items, weights=w, minlength=n_items)[:n_items].astype(np.float32)


def _prior(popularity: np.ndarray) -> np.ndarray:
    """(N,) float32 popularity scaled to [0, 1]."""
    top = float(popularity.max(initial=0.0))
    return (popularity / top if top > 0 else popularity).astype(np.float32)


def _exclusions(histories: Sequence[History]) -> list[np.ndarray]:
    return [np.asarray(h.items, dtype=np.int64) for h in histories]


def gather_scores(scores: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """(B, C) float32 ``scores[b, candidates[b, c]]``; nan where a candidate is -1."""
    cand = np.asarray(candidates, dtype=np.int64)
    if cand.ndim != 2 or cand.shape[0] != scores.shape[0]:
        raise ValueError(f"candidates must be (B, C) with B={scores.shape[0]}, got {cand.shape}")
    pad = cand < 0
    out = np.take_along_axis(scores, np.where(pad, 0, cand), axis=1).astype(np.float32)
    out[pad] = np.nan
    return out


class ScoringRecommender:
    """Shared machinery: subclasses implement ``_scores`` for a chunk of histories.

    A subclass whose scores are a sparse part plus a fixed per-item ``base`` also
    implements ``score_parts`` (and sets ``sparse_scores``): ``recommend`` and
    ``score_items`` then never build (B, N) dense rows (:func:`top_k_sparse`).
    """

    name: str = ""
    n_items: int = 0
    sparse_scores: bool = False  # score_parts() is implemented

    def _scores(self, histories: Sequence[History]) -> np.ndarray:
        """(B, N) float32 scores of every item for at most SCORE_ROWS histories."""
        raise NotImplementedError

    def score_parts(self, histories: Sequence[History]) -> tuple[sp.csr_matrix, np.ndarray]:
        """Scores as ((B, N) CSR part, (N,) float32 base): ``_scores`` = part + base."""
        raise NotImplementedError

    def base_order(self) -> np.ndarray:
        """(N,) items by descending ``base`` of :meth:`score_parts`."""
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if self.n_items == 0:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() first")

    def score_all(self, histories: Sequence[History]) -> np.ndarray:
        """(B, N) float32 scores of every item (-inf: the model cannot rank the item)."""
        self._check_fitted()
        if not histories:
            return np.zeros((0, self.n_items), dtype=np.float32)
        return np.concatenate(
            [
                self._scores(histories[s : s + SCORE_ROWS])
                for s in range(0, len(histories), SCORE_ROWS)
            ]
        )

    def recommend(
        self, histories: Sequence[History], k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` items per history: ((B, k) int64, (B, k) float32), padded with -1/-inf."""
        self._check_fitted()
        idx = np.full((len(histories), k), -1, dtype=np.int64)
        val = np.full((len(histories), k), -np.inf, dtype=np.float32)
        for s in range(0, len(histories), SCORE_ROWS):
            chunk = histories[s : s + SCORE_ROWS]
            exclude = _exclusions(chunk) if exclude_seen else None
            if self.sparse_scores:
                part, base = self.score_parts(chunk)
                i, v = top_k_sparse(part, base, self.base_order(), k, exclude)
            else:
                i, v = top_k_rows(self._scores(chunk), k, exclude)
            idx[s : s + len(chunk)], val[s : s + len(chunk)] = i, v
        return idx, val

    def score_items(self, histories: Sequence[History], candidates: np.ndarray) -> np.ndarray:
        """(B, C) float32 scores of the (B, C) candidate item indices (-1 -> nan)."""
        self._check_fitted()
        cand = np.asarray(candidates, dtype=np.int64)
        if cand.ndim != 2 or cand.shape[0] != len(histories):
            raise ValueError(f"candidates must be (B, C) with B={len(histories)}, got {cand.shape}")
        out = np.empty(cand.shape, dtype=np.float32)
        for s in range(0, len(histories), SCORE_ROWS):
            chunk = histories[s : s + SCORE_ROWS]
            c = cand[s : s + len(chunk)]
            if self.sparse_scores:
                out[s : s + len(chunk)] = gather_sparse(*self.score_parts(chunk), c)
            else:
                out[s : s + len(chunk)] = gather_scores(self._scores(chunk), c)
        return out


def _sparse_row(part: sp.csr_matrix, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Row ``r`` of a CSR matrix: (sorted unique columns, their float32 values)."""
    lo, hi = part.indptr[r], part.indptr[r + 1]
    cols = np.asarray(part.indices[lo:hi], np.int64)
    vals = np.asarray(part.data[lo:hi], np.float32)
    order = np.argsort(cols, kind="stable")
    return cols[order], vals[order]


def _add_sparse(items: np.ndarray, scores: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
    """``scores[i] += vals[j]`` where ``items[i] == cols[j]`` (cols sorted)."""
    if not len(cols):
        return
    at = np.clip(np.searchsorted(cols, items), 0, len(cols) - 1)
    hit = cols[at] == items
    scores[hit] += vals[at[hit]]


def top_k_sparse(
    part: sp.csr_matrix,
    base: np.ndarray,
    base_order: np.ndarray,
    k: int,
    exclude: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k_rows` of ``part.toarray() + base`` without the dense (B, N) rows.

    ``base_order``: the items by descending ``base``. A row's top ``k`` lies among its
    non-zero columns and the first ``k + len(exclude) + nnz`` items of ``base_order``:
    any other item scores ``base`` only, and at least ``k`` of those first items are
    neither excluded nor non-zero, each scoring at least as much.
    """
    b, n = part.shape
    idx = np.full((b, k), -1, dtype=np.int64)
    val = np.full((b, k), -np.inf, dtype=np.float32)
    for r in range(b):
        cols, vals = _sparse_row(part, r)
        seen = np.asarray(exclude[r], np.int64) if exclude is not None else np.empty(0, np.int64)
        pool = np.union1d(cols, base_order[: min(n, k + len(seen) + len(cols))])  # sorted
        if len(seen):
            pool = pool[unseen(pool, seen, n)]
        scores = base[pool].astype(np.float32)  # (P,)
        _add_sparse(pool, scores, cols, vals)
        ok = np.isfinite(scores)
        pool, scores = pool[ok], scores[ok]
        top = np.argsort(-scores, kind="stable")[:k]
        idx[r, : len(top)], val[r, : len(top)] = pool[top], scores[top]
    return idx, val


def gather_sparse(part: sp.csr_matrix, base: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """:func:`gather_scores` of ``part.toarray() + base`` without the dense rows."""
    cand = np.asarray(candidates, dtype=np.int64)
    if cand.ndim != 2 or cand.shape[0] != part.shape[0]:
        raise ValueError(f"candidates must be (B, C) with B={part.shape[0]}, got {cand.shape}")
    pad = cand < 0
    safe = np.where(pad, 0, cand)
    out = base[safe].astype(np.float32)  # (B, C)
    for r in range(len(cand)):
        _add_sparse(safe[r], out[r], *_sparse_row(part, r))
    out[pad] = np.nan
    return out


@functools.lru_cache(maxsize=1)
def _threadpools() -> Any:
    """One threadpoolctl controller: building one scans the loaded libraries (~10 ms)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@functools.lru_cache(maxsize=1)
def _blas_libraries() -> Any:
    """The BLAS libraries of :func:`_threadpools`."""
    return _threadpools().select(user_api="blas")


def one_blas_thread() -> Any:
    """Context manager: BLAS on one thread (implicit's per-row solves are tiny). Nothing
    to do where BLAS runs one thread already (a service sets that at start): checking
    costs ~2 us, a threadpoolctl limit and its undo ~20 us, per request."""
    blas = _blas_libraries()
    if all(lib.get_num_threads() == 1 for lib in blas.lib_controllers):
        return contextlib.nullcontext()
    return _threadpools().limit(limits=1, user_api="blas")


class Popularity(ScoringRecommender):
    """The most popular items, the same for everyone (the history is only used to exclude).

    Popularity = sum over train events of TYPE_WEIGHTS[type] * 0.5 ** (age / half-life), the
    age measured from the last train event; ``half_life_days`` None counts without decay.
    """

    name = "popularity"

    def __init__(self, half_life_days: float | None = 30.0) -> None:
        self.half_life_days = half_life_days
        self.scores = np.zeros(0, dtype=np.float32)  # (N,)

    def fit(self, train: Interactions, items: ItemSpace) -> None:
        self.n_items = len(items)
        self.scores = _popularity(train, self.n_items, self.half_life_days)
        self._order: np.ndarray | None = None  # the ranking, sorted on first use

    def _scores(self, histories: Sequence[History]) -> np.ndarray:
        return np.broadcast_to(self.scores, (len(histories), self.n_items)).copy()

    def recommend(
        self, histories: Sequence[History], k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """The same ranking for everyone minus their seen items (one sort, no (B, N) scores)."""
        self._check_fitted()
        order = getattr(self, "_order", None)
        if order is None or len(order) != self.n_items:  # builds pickled before the cache
            order = self._order = np.argsort(-self.scores, kind="stable")  # (N,) ties: low first
        idx = np.full((len(histories), k), -1, dtype=np.int64)
        val = np.full((len(histories), k), -np.inf, dtype=np.float32)
        for b, h in enumerate(histories):
            top = order[: k + (len(h) if exclude_seen else 0)]
            if exclude_seen and len(h):
                top = top[unseen(top, h.items, self.n_items)]
            top = top[:k]
            idx[b, : len(top)], val[b, : len(top)] = top, self.scores[top]
        return idx, val


class CoVisitation(ScoringRecommender):
    """Item-kNN on co-visitation: items a customer touches within ``window_hours`` of each other.

    Pair weight: sqrt(TYPE_WEIGHTS[a] * TYPE_WEIGHTS[b]) per pair of events of one customer
    on different items at most ``window_hours`` apart (each event paired with at most
    ``MAX_LAG`` later events), summed over customers into a symmetric co-occurrence matrix
    C; similarity = cosine-style C_ab / sqrt(deg_a * deg_b) (deg = row sums of C), keeping
    the ``max_neighbours`` best per item in ``sim`` (CSR (N, N)). A customer's score of
    item j = sum over history events e of history_weights[e] * sim[item_e, j] (+ the
    popularity tie-break).
    """

    name = "co-visitation"

    def __init__(
        self,
        window_hours: float = 24.0,
        max_neighbours: int = 100,
        half_life_days: float | None = 14.0,
    ) -> None:
        self.window_hours = window_hours
        self.max_neighbours = max_neighbours
        self.half_life_days = half_life_days
        self.sim = sp.csr_matrix((0, 0), dtype=np.float32)
        self.prior = np.zeros(0, dtype=np.float32)

    def fit(self, train: Interactions, items: ItemSpace) -> None:
        n = len(items)
        counts = _covisit_counts(train, n, self.window_hours * 3600.0)  # (N, N) symmetric
        deg = np.asarray(counts.sum(axis=1)).ravel()  # (N,)
        inv = np.zeros(n, dtype=np.float64)
        inv[deg > 0] = 1.0 / np.sqrt(deg[deg > 0])
        d = sp.diags(inv)
        self.sim = _top_per_row(sp.csr_matrix(d @ counts @ d), self.max_neighbours)
        self.prior = _prior(_popularity(train, n, None))
        self.n_items = n
        self.__dict__.pop("_tie", None)  # the tie-break of the previous fit

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_tie", None)  # derived from the prior, rebuilt on first use
        return state

    def neighbours(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most co-visited items of ``item``: ((<=k,) int64, (<=k,) float32)."""
        self._check_fitted()
        lo, hi = self.sim.indptr[item], self.sim.indptr[item + 1]
        idx = self.sim.indices[lo:hi].astype(np.int64)
        val = self.sim.data[lo:hi].astype(np.float32)
        order = np.argsort(-val, kind="stable")[:k]
        return idx[order], val[order]

    sparse_scores = True

    def _scores(self, histories: Sequence[History]) -> np.ndarray:
        part, base = self.score_parts(histories)
        return np.asarray(part.toarray(), dtype=np.float32) + base  # (B, N)

    def score_parts(self, histories: Sequence[History]) -> tuple[sp.csr_matrix, np.ndarray]:
        w = history_matrix(histories, self.n_items, self.half_life_days)  # (B, N)
        return sp.csr_matrix(w @ self.sim, dtype=np.float32), self._tie_break()[0]

    def base_order(self) -> np.ndarray:
        return self._tie_break()[1]

    def _tie_break(self) -> tuple[np.ndarray, np.ndarray]:
        """(N,) float32 popularity tie-break and the items by it, descending (once per fit)."""
        tie = self.__dict__.get("_tie")
        if tie is None:
            base = (TIE_BREAK * self.prior).astype(np.float32)
            tie = self.__dict__["_tie"] = (base, np.argsort(-base, kind="stable"))
        return tie  # type: ignore[no-any-return]


def _covisit_counts(train: Interactions, n_items: int, window_s: float) -> sp.csr_matrix:
    """(N, N) float64 symmetric co-visitation weights (zero diagonal)."""
    total = sp.csr_matrix((n_items, n_items), dtype=np.float64)
    c, it, ts = train.customers, train.items, train.timestamps
    w = np.sqrt(TYPE_WEIGHTS[train.types].astype(np.float64))  # (E,)
    for lag in range(1, min(len(it), MAX_LAG + 1)):
        ok = (c[lag:] == c[:-lag]) & (ts[lag:] - ts[:-lag] <= window_s)
        if not ok.any():
            break  # sorted by (customer, time): no pair at this lag -> none further away
        a, b = it[:-lag][ok], it[lag:][ok]
        v = (w[:-lag] * w[lag:])[ok]
        diff = a != b
        a, b, v = a[diff], b[diff], v[diff]
        pairs = sp.coo_matrix(
            (np.r_[v, v], (np.r_[a, b], np.r_[b, a])), shape=(n_items, n_items)
        ).tocsr()
        total = total + pairs
    return sp.csr_matrix(total)


def _top_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """The ``k`` largest stored values of each row of ``m`` (float32 CSR, same shape)."""
    m = sp.csr_matrix(m)
    m.eliminate_zeros()
    n_rows = m.shape[0]
    row = np.repeat(np.arange(n_rows), np.diff(m.indptr))  # (nnz,)
    order = np.lexsort((-m.data, row))  # by row, then value descending
    rank = np.arange(len(order)) - m.indptr[row[order]]
    keep = order[rank < k]
    return sp.csr_matrix(
        (m.data[keep].astype(np.float32), (row[keep], m.indices[keep])),
        shape=m.shape,
        dtype=np.float32,
    )


class ImageKNN(ScoringRecommender):
    """Item-kNN on image embeddings (exact inner product, faiss ``IndexFlatIP``).

    A customer's score of item j = sum over history events e of history_weights[e] *
    max(0, cos(item_e, j)) for the ``neighbours`` nearest items of item_e (+ the popularity
    tie-break). New items (no events) are ranked like any other: they have embeddings.
    Neighbour lists are searched the first time an item appears in a history and cached.
    """

    name = "image-knn"

    def __init__(self, half_life_days: float = 14.0, neighbours: int = 50) -> None:
        self.half_life_days = half_life_days
        self.n_neighbours = neighbours
        self.embeddings = np.zeros((0, 0), dtype=np.float32)
        self.prior = np.zeros(0, dtype=np.float32)
        self._index: Any = None
        self._nbr_idx = np.zeros((0, 0), dtype=np.int64)  # (N, K) cached neighbour lists
        self._nbr_sim = np.zeros((0, 0), dtype=np.float32)  # (N, K)
        self._have = np.zeros(0, dtype=bool)  # (N,) which rows of the cache are filled

    def fit(self, train: Interactions, items: ItemSpace) -> None:
        n = len(items)
        self.embeddings = np.ascontiguousarray(items.image, dtype=np.float32)
        self._index = None
        k = min(self.n_neighbours, max(n - 1, 0))
        self._nbr_idx = np.full((n, k), -1, dtype=np.int64)
        self._nbr_sim = np.zeros((n, k), dtype=np.float32)
        self._have = np.zeros(n, dtype=bool)
        self.prior = _prior(_popularity(train, n, None))
        self.n_items = n

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_index"] = None  # faiss indexes do not pickle; rebuilt on first use
        return state

    def _faiss(self) -> Any:
        if self._index is None:  # filled before it is published: requests run in threads
            index = faiss.IndexFlatIP(self.embeddings.shape[1])
            index.add(self.embeddings)
            self._index = index
        return self._index

    def _fill(self, items: np.ndarray) -> None:
        """Search and cache the neighbour lists of ``items`` not cached yet."""
        todo = items[~self._have[items]]
        k = self._nbr_idx.shape[1]
        if len(todo) == 0 or k == 0:
            self._have[todo] = True
            return
        sims, idx = self._faiss().search(self.embeddings[todo], k + 1)  # (U, k + 1)
        own = idx == todo[:, None]
        own[:, -1] |= ~own.any(axis=1)  # self not found (duplicate images): drop the last
        idx = idx[~own].reshape(len(todo), k)
        sims = sims[~own].reshape(len(todo), k)
        self._nbr_idx[todo] = idx
        self._nbr_sim[todo] = np.where(idx >= 0, np.maximum(sims, 0.0), 0.0)
        self._have[todo] = True

    def neighbours(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` (<= ``neighbours``) most similar images: ((<=k,) int64, (<=k,) float32)."""
        self._check_fitted()
        self._fill(np.array([item], dtype=np.int64))
        idx, sim = self._nbr_idx[item, :k], self._nbr_sim[item, :k]
        ok = idx >= 0
        return idx[ok].copy(), sim[ok].copy()

    def _scores(self, histories: Sequence[History]) -> np.ndarray:
        w = history_matrix(histories, self.n_items, self.half_life_days).tocsc()  # (B, N)
        used = np.flatnonzero(np.diff(w.indptr))  # items in any history of the chunk
        self._fill(used)
        k = self._nbr_idx.shape[1]
        idx, sim = self._nbr_idx[used], self._nbr_sim[used]  # (U, k)
        ok = idx >= 0
        rows = np.repeat(np.arange(len(used)), k).reshape(len(used), k)
        s = sp.csr_matrix(
            (sim[ok], (rows[ok], idx[ok])), shape=(len(used), self.n_items), dtype=np.float32
        )  # (U, N) neighbour similarities of the used items
        scores = np.asarray((w[:, used] @ s).toarray(), dtype=np.float32)  # (B, N)
        return scores + TIE_BREAK * self.prior


class ALS(ScoringRecommender):
    """Implicit-feedback matrix factorisation (``implicit``'s CPU ALS, Hu et al. 2008).

    Trained on the customer x item matrix of summed TYPE_WEIGHTS (no recency decay), the
    confidence being ``alpha`` x that weight. A history's user factors are solved from the
    item factors (implicit's ``recalculate_user``, the same least squares as training), so
    unseen customers work; an empty history gets zero factors (popularity tie-break only).
    Items without train events have no learned factors and score -inf: ALS cannot rank
    new items (the cold-start problem, shown as is).
    """

    name = "als"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        iterations: int = 15,
        alpha: float = 2.0,
        seed: int = 0,
        num_threads: int = 1,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.iterations = iterations
        self.alpha = alpha
        self.seed = seed
        self.num_threads = num_threads
        self.model: Any = None
        self.item_factors = np.zeros((0, factors), dtype=np.float32)  # (N, F)
        self.known = np.zeros(0, dtype=bool)  # (N,) items with train events
        self.prior = np.zeros(0, dtype=np.float32)

    def fit(self, train: Interactions, items: ItemSpace) -> None:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        n = len(items)
        n_customers = max(len(train.customer_ids), int(train.customers.max(initial=-1)) + 1)
        x = sp.coo_matrix(
            (TYPE_WEIGHTS[train.types], (train.customers, train.items)),
            shape=(n_customers, n),
            dtype=np.float32,
        ).tocsr()  # (U, N) summed type weights
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                num_threads=self.num_threads,
                random_state=self.seed,
            )
            model.fit(x, show_progress=False)
        model.user_factors = None  # training customers are re-solved from their histories
        self.model = model
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)
        self.known = np.bincount(train.items, minlength=n)[:n] > 0
        self.prior = _prior(_popularity(train, n, None))
        self.n_items = n

    def user_factors(self, histories: Sequence[History]) -> np.ndarray:
        """(B, F) float32 factors solved from each history (zeros for an empty history)."""
        self._check_fitted()
        x = history_matrix(histories, self.n_items, None)  # (B, N) summed type weights
        if len(histories) == 0:
            return np.zeros((0, self.item_factors.shape[1]), dtype=np.float32)
        with one_blas_thread():
            u = self.model.recalculate_user(np.arange(len(histories)), x)
        return np.asarray(u, dtype=np.float32).reshape(len(histories), -1)

    def ann_vectors(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, F) item factors and the (N,) items ALS can rank (for ANN candidates)."""
        return self.item_factors, self.known

    def ann_queries(self, histories: Sequence[History]) -> np.ndarray:
        """(B, F) query vectors whose inner products with the item factors rank items."""
        return self.user_factors(histories)

    def score_items(
        self,
        histories: Sequence[History],
        candidates: np.ndarray,
        queries: np.ndarray | None = None,
    ) -> np.ndarray:
        """(B, C) scores of the candidates (as ``score_all`` gives them, -1 -> nan),
        computed from the candidates' factors only (``queries``: this ``ann_queries(
        histories)`` when the caller has it already)."""
        self._check_fitted()
        cand = np.asarray(candidates, dtype=np.int64)
        if cand.ndim != 2 or cand.shape[0] != len(histories):
            raise ValueError(f"candidates must be (B, C) with B={len(histories)}, got {cand.shape}")
        safe = np.maximum(cand, 0)  # (B, C)
        u = self.user_factors(histories) if queries is None else queries  # (B, F)
        out = np.einsum("bcf,bf->bc", self.item_factors[safe], u).astype(np.float32)
        out += TIE_BREAK * self.prior[safe]
        out[~self.known[safe]] = -np.inf
        out[cand < 0] = np.nan
        return out

    def _scores(self, histories: Sequence[History]) -> np.ndarray:
        scores = self.user_factors(histories) @ self.item_factors.T  # (B, N)
        scores += TIE_BREAK * self.prior
        scores[:, ~self.known] = -np.inf
        return np.asarray(scores, dtype=np.float32)
