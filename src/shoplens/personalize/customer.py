"""Customer embeddings pooled from the content embeddings of the items they interacted with.

An item's content vector is its image embedding, concatenated with its text embedding
scaled by ``text_weight`` when the item space has text (and ``use_text``), L2-normalised.
A customer's vector is the recency- and type-weighted mean of their history items' content
vectors (:func:`~shoplens.personalize.baselines.history_weights`), L2-normalised, so the
inner product with an item's content vector is a cosine. New items are served at once:
they have embeddings, no events are needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import faiss
import numpy as np

from shoplens.personalize.baselines import (
    SCORE_ROWS,
    _popularity,
    _prior,
    history_weights,
)
from shoplens.personalize.types import History, Interactions, ItemSpace, top_k_rows, unseen

MAX_GATHER = 1 << 24  # candidate-vector floats gathered at once by score_items


def _content_rows(
    items: ItemSpace, rows: np.ndarray, use_text: bool, text_weight: float
) -> np.ndarray:
    """(R, D') float32 unnormalised content vectors of the item indices ``rows``."""
    image = items.image[rows].astype(np.float32)
    if use_text and items.text is not None:
        return np.concatenate([image, text_weight * items.text[rows].astype(np.float32)], axis=1)
    return image


def item_vectors(items: ItemSpace, use_text: bool = True, text_weight: float = 0.5) -> np.ndarray:
    """(N, D') float32 L2-normalised content vector of every item."""
    v = _content_rows(items, np.arange(len(items)), use_text, text_weight)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.ascontiguousarray(v / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def pool_customer(
    histories: Sequence[History],
    items: ItemSpace,
    half_life_days: float = 14.0,
    use_text: bool = True,
    text_weight: float = 0.5,
) -> np.ndarray:
    """(B, D') float32 L2-normalised customer embeddings; zero rows for empty histories.

    D' = image dim (+ text dim when ``items.text`` exists and ``use_text``). The weights
    are :func:`history_weights` with the age measured from the history's last event.
    """
    dim = items.image.shape[1] + (items.text.shape[1] if use_text and items.text is not None else 0)
    return _pool(
        histories,
        lambda rows: _content_rows(items, rows, use_text, text_weight),
        dim,
        half_life_days,
    )


def _pool(
    histories: Sequence[History],
    rows_of: Callable[[np.ndarray], np.ndarray],
    dim: int,
    half_life_days: float,
) -> np.ndarray:
    """(B, dim) L2-normalised weighted means of ``rows_of(history items)`` (0 if empty)."""
    out = np.zeros((len(histories), dim), dtype=np.float32)
    for b, h in enumerate(histories):
        if len(h) == 0:
            continue
        w = history_weights(h, None, half_life_days)  # (L,)
        v = w @ rows_of(np.asarray(h.items, dtype=np.int64))  # (dim,)
        norm = float(np.linalg.norm(v))
        if norm > 0:
            out[b] = v / norm
    return out


class ContentRecommender:
    """Ranks items by cosine of the pooled customer embedding with each item's content vector.

    Exact search (faiss ``IndexFlatIP``, built in ``fit``). Cold items are ranked like any
    other. Customers are pooled from the stored (normalised) content vectors, which equals
    :func:`pool_customer` for L2-normalised image / text embeddings (the ItemSpace contract)
    without keeping the item space in the fitted object. An empty history has no embedding:
    it gets the training popularity ranking (type-weighted counts scaled to [0, 1])
    instead, in ``recommend`` and ``score_items``.
    """

    name = "customer-embedding"

    def __init__(
        self, half_life_days: float = 14.0, use_text: bool = True, text_weight: float = 0.5
    ) -> None:
        self.half_life_days = half_life_days
        self.use_text = use_text
        self.text_weight = text_weight
        self.n_items = 0
        self.vectors = np.zeros((0, 0), dtype=np.float32)  # (N, D') content vectors
        self.prior = np.zeros(0, dtype=np.float32)  # (N,) popularity in [0, 1]
        self._index: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_index"] = None  # faiss indexes do not pickle; rebuilt on first use
        return state

    def fit(self, train: Interactions, items: ItemSpace) -> None:
        self.n_items = len(items)
        self.vectors = item_vectors(items, self.use_text, self.text_weight)
        self.prior = _prior(_popularity(train, len(items), None))
        self._index = None
        self._faiss()

    def _faiss(self) -> Any:
        if self._index is None:  # filled before it is published: requests run in threads
            index = faiss.IndexFlatIP(self.vectors.shape[1])
            index.add(self.vectors)
            self._index = index
        return self._index

    def _fitted(self) -> None:
        if self.n_items == 0:
            raise RuntimeError("ContentRecommender is not fitted: call fit() first")

    def ann_vectors(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, D') content vectors (every item can be ranked), for ANN candidates."""
        self._fitted()
        return self.vectors, None

    def ann_queries(self, histories: Sequence[History]) -> np.ndarray:
        """(B, D') pooled customer embeddings (histories must not be empty)."""
        return self.customer_vectors(histories)

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n_items):
            raise ValueError(f"history item index out of range 0..{self.n_items - 1}")
        return self.vectors[rows]

    def customer_vectors(self, histories: Sequence[History]) -> np.ndarray:
        """(B, D') float32 pooled customer embeddings (zero rows for empty histories)."""
        self._fitted()
        return _pool(histories, self._rows, self.vectors.shape[1], self.half_life_days)

    def recommend(
        self, histories: Sequence[History], k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` items per history: ((B, k) int64, (B, k) float32 cosines), -1/-inf padded."""
        self._fitted()
        n = len(self.vectors)
        idx = np.full((len(histories), k), -1, dtype=np.int64)
        val = np.full((len(histories), k), -np.inf, dtype=np.float32)
        for s in range(0, len(histories), SCORE_ROWS):
            chunk = histories[s : s + SCORE_ROWS]
            seen = [np.unique(np.asarray(h.items, dtype=np.int64)) for h in chunk]
            q = self.customer_vectors(chunk)  # (b, D')
            empty = np.array([len(h) == 0 for h in chunk], dtype=bool)
            extra = max((len(x) for x in seen), default=0) if exclude_seen else 0
            depth = min(k + extra, n)
            full = np.flatnonzero(~empty)
            if len(full) and depth > 0:
                sims, found = self._faiss().search(q[full], depth)  # (f, depth)
                for row, r in enumerate(full):
                    keep = found[row] >= 0
                    if exclude_seen and len(seen[r]):
                        keep &= unseen(found[row], seen[r], n)
                    top, top_s = found[row][keep][:k], sims[row][keep][:k]
                    idx[s + r, : len(top)], val[s + r, : len(top)] = top, top_s
            for r in np.flatnonzero(empty):  # no embedding: popularity
                i, v = top_k_rows(self.prior[None, :], k, [seen[r]] if exclude_seen else None)
                idx[s + r], val[s + r] = i[0], v[0]
        return idx, val

    def score_items(
        self,
        histories: Sequence[History],
        candidates: np.ndarray,
        queries: np.ndarray | None = None,
    ) -> np.ndarray:
        """(B, C) float32 cosines of the candidate items (-1 -> nan; popularity if empty).

        ``queries``: this ``ann_queries(histories)`` when the caller has it already.
        """
        self._fitted()
        cand = np.asarray(candidates, dtype=np.int64)
        if cand.ndim != 2 or cand.shape[0] != len(histories):
            raise ValueError(f"candidates must be (B, C) with B={len(histories)}, got {cand.shape}")
        out = np.empty(cand.shape, dtype=np.float32)
        pad = cand < 0
        safe = np.where(pad, 0, cand)
        step = max(1, MAX_GATHER // max(1, cand.shape[1] * self.vectors.shape[1]))
        for s in range(0, len(histories), step):
            chunk = histories[s : s + step]
            q = self.customer_vectors(chunk) if queries is None else queries[s : s + len(chunk)]
            c = safe[s : s + len(chunk)]  # (b, C)
            out[s : s + len(chunk)] = np.einsum("bd,bcd->bc", q, self.vectors[c])
            for r, h in enumerate(chunk):
                if len(h) == 0:
                    out[s + r] = self.prior[c[r]]
        out[pad] = np.nan
        return out
