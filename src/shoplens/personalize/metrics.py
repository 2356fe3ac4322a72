"""Top-k recommendation metrics with binary relevance (checked against ranx in the tests).

``ranked`` is a (B, k) array of item indices per customer, best first, padded with -1;
``relevant`` holds each customer's relevant item indices (duplicates are ignored). Every
metric returns one value per row; average them for the dataset figure. The definitions are
ranx's: recall@k = hits / |rel|, AP@k = sum of precision@r over the hit ranks r <= k / |rel|,
precision@k = hits / k (missing slots count as misses), nDCG@k with the ideal DCG of
min(|rel|, k) hits. Rows without a relevant item have no defined recall, AP or nDCG: they
raise ``ValueError`` (drop them before calling).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _check(ranked: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> np.ndarray:
    """The ranked lists as a (B, >=0) int64 array, after checking shapes and ``k``."""
    r = np.asarray(ranked)
    if r.ndim != 2:
        raise ValueError(f"ranked must be a (B, k) array, got shape {r.shape}")
    if len(relevant) != r.shape[0]:
        raise ValueError(f"{r.shape[0]} ranked rows but {len(relevant)} relevant sets")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return r.astype(np.int64, copy=False)


def _hits(
    ranked: np.ndarray, relevant: Sequence[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(B, k) bool hit matrix of the first k columns and (B,) number of relevant items."""
    r = _check(ranked, relevant, k)[:, :k]  # (B, <=k)
    rel = [np.unique(np.asarray(x, dtype=np.int64)) for x in relevant]
    n_rel = np.array([len(x) for x in rel], dtype=np.int64)  # (B,)
    if (n_rel == 0).any():
        raise ValueError(f"{int((n_rel == 0).sum())} row(s) have no relevant item; drop them first")
    b = r.shape[0]
    hits = np.zeros((b, k), dtype=bool)
    if b == 0 or r.shape[1] == 0:
        return hits, n_rel
    rel_flat = np.concatenate(rel)
    width = int(max(rel_flat.max(), r.max(), 0)) + 1
    rel_keys = np.repeat(np.arange(b, dtype=np.int64), n_rel) * width + rel_flat  # (sum |rel|,)
    ranked_keys = np.arange(b, dtype=np.int64)[:, None] * width + r  # (B, <=k)
    hits[:, : r.shape[1]] = np.isin(ranked_keys, rel_keys) & (r >= 0)
    return hits, n_rel


def hit_matrix(ranked: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> np.ndarray:
    """(B, k) bool: whether the item at each of the first k ranks is relevant."""
    return _hits(ranked, relevant, k)[0]


def precision_at_k(ranked: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> np.ndarray:
    """(B,) relevant items among the first k / k."""
    hits, _ = _hits(ranked, relevant, k)
    return np.asarray(hits.sum(axis=1) / k, dtype=np.float64)


def recall_at_k(ranked: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> np.ndarray:
    """(B,) relevant items among the first k / relevant items (ranx ``recall@k``)."""
    hits, n_rel = _hits(ranked, relevant, k)
    return np.asarray(hits.sum(axis=1) / n_rel, dtype=np.float64)


def hit_rate_at_k(ranked: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> np.ndarray:
    """(B,) 1.0 where at least one relevant item is among the first k, else 0.0."""
    hits, _ = _hits(ranked, relevant, k)
    return np.asarray(hits.any(axis=1), dtype=np.float64)


def ndcg_at_k(ranked: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> np.ndarray:
    """(B,) binary nDCG@k: DCG of the hits / DCG of min(|rel|, k) hits at the top."""
    hits, n_rel = _hits(ranked, relevant, k)
    discount = 1.0 / np.log2(np.arange(2, k + 2))  # (k,)
    dcg = np.asarray(hits @ discount)  # (B,)
    ideal = np.cumsum(discount)[np.minimum(n_rel, k) - 1]  # (B,)
    return np.asarray(dcg / ideal, dtype=np.float64)


def map_at_k(ranked: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> np.ndarray:
    """(B,) AP@k: sum over hit ranks r <= k of precision@r, divided by |rel| (as ranx).

    Note the divisor is all relevant items, not min(|rel|, k) (Kaggle's MAP@k), so a row
    with more than k relevant items cannot reach 1.
    """
    hits, n_rel = _hits(ranked, relevant, k)
    prec = np.cumsum(hits, axis=1) / np.arange(1, k + 1)  # (B, k) precision@r
    return np.asarray((prec * hits).sum(axis=1) / n_rel, dtype=np.float64)


def coverage(ranked: np.ndarray, n_items: int) -> float:
    """Share of the ``n_items`` catalogue items that appear in at least one ranked list."""
    if n_items < 1:
        raise ValueError("coverage needs n_items >= 1")
    r = np.asarray(ranked)
    shown = np.unique(r[(r >= 0) & (r < n_items)])
    return float(len(shown) / n_items)
