"""Retrieval and classification metrics, written out by hand (checked against scikit-learn).

Embeddings are rows of float arrays compared by inner product (cosine for the
L2-normalised vectors every shoplens encoder returns). Ranked lists are best first.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from shoplens.errors import InvalidInputError


def _check_k(k: int) -> int:
    if not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"k must be a positive integer, got {k!r}")
    return k


def _check_lists(a: Sequence[object], b: Sequence[object], what: str) -> None:
    if len(a) != len(b):
        raise InvalidInputError(f"{what}: {len(a)} queries but {len(b)} ranked lists")
    if not a:
        raise InvalidInputError(f"{what}: no queries")


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column positions of the k largest scores per row, best first. (Q, N) -> (Q, k)."""
    k = min(_check_k(k), scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (Q, k), unordered
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def vote(neighbour_labels: np.ndarray) -> np.ndarray:
    """Majority label per row of (Q, k) integer labels ordered nearest first.

    A tie between labels goes to the one whose first occurrence is nearest.
    """
    q, k = neighbour_labels.shape
    n_labels = int(neighbour_labels.max(initial=0)) + 1
    rows = np.repeat(np.arange(q), k)
    counts = np.zeros((q, n_labels), dtype=np.int64)  # (Q, L)
    np.add.at(counts, (rows, neighbour_labels.reshape(-1)), 1)
    count_at = np.take_along_axis(counts, neighbour_labels, axis=1)  # (Q, k)
    first_best = np.argmax(count_at, axis=1)  # first position holding a top count
    return neighbour_labels[np.arange(q), first_best]


def knn_predict(
    query_emb: np.ndarray,
    gallery_emb: np.ndarray,
    gallery_labels: Sequence[Hashable] | np.ndarray,
    k: int = 5,
    batch: int = 1024,
) -> np.ndarray:
    """k-NN majority-vote labels for each query (inner-product neighbours), in batches.

    Args:
        query_emb: (Q, D) query embeddings.
        gallery_emb: (N, D) gallery embeddings.
        gallery_labels: (N,) labels of the gallery rows (any hashable values).
        k: neighbours that vote; ties go to the label of the nearest tied neighbour.
        batch: queries scored at once, bounding memory to batch * N scores.

    Returns:
        (Q,) predicted labels, of the same kind as ``gallery_labels``.
    """
    _check_k(k)
    q = np.asarray(query_emb, dtype=np.float32)
    g = np.asarray(gallery_emb, dtype=np.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise InvalidInputError(f"embedding shapes do not match: {q.shape} vs {g.shape}")
    if len(gallery_labels) != g.shape[0] or g.shape[0] == 0:
        raise InvalidInputError("need one label per gallery row and a non-empty gallery")
    classes, codes = np.unique(np.asarray(gallery_labels), return_inverse=True)
    codes = codes.reshape(-1)
    out = np.empty(q.shape[0], dtype=np.int64)
    for start in range(0, q.shape[0], max(1, int(batch))):
        scores = q[start : start + batch] @ g.T  # (B, N)
        nearest = top_k(scores, k)  # (B, k)
        out[start : start + batch] = vote(codes[nearest])
    return np.asarray(classes[out])


def knn_accuracy(
    query_emb: np.ndarray,
    query_labels: Sequence[Hashable] | np.ndarray,
    gallery_emb: np.ndarray,
    gallery_labels: Sequence[Hashable] | np.ndarray,
    k: int = 5,
    batch: int = 1024,
) -> float:
    """Share of queries whose k-NN majority vote (see :func:`knn_predict`) is their label."""
    if len(query_labels) != len(query_emb) or len(query_labels) == 0:
        raise InvalidInputError("need one label per query and at least one query")
    pred = knn_predict(query_emb, gallery_emb, gallery_labels, k=k, batch=batch)
    return float(np.mean(pred == np.asarray(query_labels)))


def precision_at_k(
    relevant: Sequence[set[Hashable]], retrieved: Sequence[Sequence[Hashable]], k: int
) -> float:
    """Mean over queries of (relevant items among the first k retrieved) / k.

    Fewer than k retrieved items count as misses.
    """
    _check_k(k)
    _check_lists(relevant, retrieved, "precision_at_k")
    return float(
        np.mean(
            [
                sum(r in rel for r in ret[:k]) / k
                for rel, ret in zip(relevant, retrieved, strict=True)
            ]
        )
    )


def recall_at_k(
    relevant: Sequence[set[Hashable]], retrieved: Sequence[Sequence[Hashable]], k: int
) -> float:
    """Mean over queries of (distinct relevant items in the first k) / (relevant items).

    Queries with no relevant item are left out. With one relevant item per query this is
    :func:`hit_rate_at_k`.
    """
    _check_k(k)
    _check_lists(relevant, retrieved, "recall_at_k")
    per_query = [
        len(rel & set(ret[:k])) / len(rel)
        for rel, ret in zip(relevant, retrieved, strict=True)
        if rel
    ]
    if not per_query:
        raise InvalidInputError("recall_at_k: no query has a relevant item")
    return float(np.mean(per_query))


def hit_rate_at_k(
    targets: Sequence[Hashable], retrieved: Sequence[Sequence[Hashable]], k: int
) -> float:
    """Share of single-target queries whose target is among the first k retrieved."""
    _check_k(k)
    _check_lists(targets, retrieved, "hit_rate_at_k")
    return float(np.mean([t in ret[:k] for t, ret in zip(targets, retrieved, strict=True)]))
