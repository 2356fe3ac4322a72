"""Retrieval and classification metrics, numpy-vectorised (checked against scikit-learn, ranx).

Embeddings are rows of float arrays compared by inner product (cosine for the
L2-normalised vectors every shoplens encoder returns). Ranked lists are best first.
Similarities are computed in query batches, so a 10k x 60k comparison never holds the
whole score matrix.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import numpy as np

from shoplens.errors import InvalidInputError

MAX_SCORES = 1 << 21  # query x gallery scores held at once by the ranking metrics


def _check_k(k: int) -> int:
    if not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"k must be a positive integer, got {k!r}")
    return k


def _check_lists(a: Sequence[object], b: Sequence[object], what: str) -> None:
    if len(a) != len(b):
        raise InvalidInputError(f"{what}: {len(a)} queries but {len(b)} ranked lists")
    if not a:
        raise InvalidInputError(f"{what}: no queries")


def _pair(query_emb: np.ndarray, gallery_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Q, D) and (N, D) float32 arrays with the same D, or a clear error."""
    q = np.asarray(query_emb, dtype=np.float32)
    g = np.asarray(gallery_emb, dtype=np.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise InvalidInputError(f"embedding shapes do not match: {q.shape} vs {g.shape}")
    return q, g


def score_batches(
    queries: np.ndarray, gallery: np.ndarray, batch: int, *, exclude_self: bool = False
) -> Iterator[tuple[int, np.ndarray]]:
    """(start, (B, N) inner products) for consecutive batches of at most ``batch`` queries.

    ``exclude_self``: query i is gallery row i; its own score is set to -inf.
    """
    batch = max(1, int(batch))
    for start in range(0, queries.shape[0], batch):
        scores = queries[start : start + batch] @ gallery.T  # (B, N)
        if exclude_self:
            rows = np.arange(scores.shape[0])
            scores[rows, start + rows] = -np.inf
        yield start, scores


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
    q, g = _pair(query_emb, gallery_emb)
    if len(gallery_labels) != g.shape[0] or g.shape[0] == 0:
        raise InvalidInputError("need one label per gallery row and a non-empty gallery")
    classes, codes = np.unique(np.asarray(gallery_labels), return_inverse=True)
    codes = codes.reshape(-1)
    out = np.empty(q.shape[0], dtype=np.int64)
    for start, scores in score_batches(q, g, batch):
        nearest = top_k(scores, k)  # (B, k)
        out[start : start + len(scores)] = vote(codes[nearest])
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


def _label_codes(
    query_labels: Sequence[Hashable] | np.ndarray, gallery_labels: Sequence[Hashable] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Shared integer codes for query and gallery labels: (Q,), (N,)."""
    q, g = np.asarray(query_labels), np.asarray(gallery_labels)
    _, codes = np.unique(np.concatenate([q, g]), return_inverse=True)
    codes = codes.reshape(-1)
    return codes[: len(q)], codes[len(q) :]


def _ranked_relevance(
    scores: np.ndarray, relevant: np.ndarray, depth: int
) -> tuple[np.ndarray, np.ndarray]:
    """Gallery positions and relevance of the ``depth`` best per row: (B, depth) twice.

    A full ranking (depth = N) is a stable sort, so ties keep gallery order.
    """
    if depth >= scores.shape[1]:
        order = np.argsort(-scores, axis=1, kind="stable")  # (B, N)
    else:
        order = top_k(scores, depth)  # (B, depth)
    return order, np.take_along_axis(relevant, order, axis=1)


def _average_precision(ranked: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """AP per row of a full (B, N) relevance ranking: mean of precision@rank over hits."""
    hits_so_far = np.cumsum(ranked, axis=1, dtype=np.int64)  # (B, N)
    rows, cols = np.nonzero(ranked)
    precision = hits_so_far[rows, cols] / (cols + 1.0)
    total = np.bincount(rows, weights=precision, minlength=ranked.shape[0])
    return total / np.maximum(n_relevant, 1)


def _ndcg(ranked: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Binary-relevance nDCG@k per row of a (B, >=k) relevance ranking."""
    discount = 1.0 / np.log2(np.arange(2, k + 2))  # (k,)
    dcg = ranked[:, :k] @ discount[: ranked[:, :k].shape[1]]  # (B,)
    ideal = np.cumsum(discount)[np.clip(n_relevant, 1, k) - 1]  # (B,)
    return np.asarray(dcg / ideal)


def ranking_metrics(
    query_emb: np.ndarray,
    query_labels: Sequence[Hashable] | np.ndarray,
    gallery_emb: np.ndarray,
    gallery_labels: Sequence[Hashable] | np.ndarray,
    *,
    ks: Sequence[int] = (1, 5, 10),
    knn_k: int | None = 5,
    ndcg_k: int = 10,
    exclude_self: bool = False,
    with_map: bool = True,
    max_scores: int = MAX_SCORES,
) -> dict[str, Any]:
    """Retrieval quality of a labelled gallery: a gallery row is relevant to a query with its label.

    Args:
        query_emb: (Q, D) query embeddings.
        query_labels: (Q,) labels of the queries.
        gallery_emb: (N, D) gallery embeddings.
        gallery_labels: (N,) labels of the gallery rows.
        ks: cut-offs of recall@k and precision@k.
        knn_k: neighbours of the k-NN majority vote (None: no k-NN accuracy).
        ndcg_k: cut-off of nDCG.
        exclude_self: the queries are the gallery (Q == N, query i is row i); each query's
            own row is left out of its ranking and its relevant set.
        with_map: also compute mAP over the full ranking (sorts every row: slower).
        max_scores: scores held at once (bounds memory to ~30 bytes per score).

    Returns:
        ``recall_at_k`` (share of queries with a relevant row in the top k, the R@k of
        image retrieval = ranx ``hit_rate``), ``ir_recall_at_k`` (relevant rows in the top k
        / relevant rows, ranx ``recall``), ``precision_at_k``, ``ndcg_at_{ndcg_k}``, ``map``
        (None without ``with_map``), each averaged over the queries that have a relevant
        row; ``knn_accuracy`` over all queries; and the counts.
    """
    ks = sorted({_check_k(k) for k in ks})
    q, g = _pair(query_emb, gallery_emb)
    if len(query_labels) != len(q) or len(gallery_labels) != len(g) or not len(q) or not len(g):
        raise InvalidInputError(
            f"ranking_metrics: {len(q)} queries with {len(query_labels)} labels, "
            f"{len(g)} gallery rows with {len(gallery_labels)} labels (need >= 1 of each)"
        )
    if exclude_self and len(q) != len(g):
        raise InvalidInputError("exclude_self needs the queries to be the gallery rows (Q == N)")
    q_codes, g_codes = _label_codes(query_labels, gallery_labels)
    depth = len(g) if with_map else min(len(g), max(*ks, ndcg_k, knn_k or 1))
    n_vote = min(knn_k or 1, len(g) - int(exclude_self)) if knn_k else 0
    per_query: dict[str, list[np.ndarray]] = {}

    def add(name: str, values: np.ndarray) -> None:
        per_query.setdefault(name, []).append(values)

    for start, scores in score_batches(q, g, max_scores // len(g), exclude_self=exclude_self):
        codes = q_codes[start : start + len(scores)]  # (B,)
        relevant = g_codes[None, :] == codes[:, None]  # (B, N)
        if exclude_self:
            relevant[np.arange(len(scores)), start + np.arange(len(scores))] = False
        order, ranked = _ranked_relevance(scores, relevant, depth)  # (B, depth)
        n_rel = relevant.sum(axis=1)  # (B,)
        if n_vote:
            add("knn", vote(g_codes[order[:, :n_vote]]) == codes)
        has = n_rel > 0
        add("n_rel", n_rel[has])
        for k in ks:
            found = ranked[has, :k].sum(axis=1)
            add(f"hit{k}", found > 0)
            add(f"p{k}", found / k)
            add(f"ir{k}", found / n_rel[has])
        add("ndcg", _ndcg(ranked[has], n_rel[has], ndcg_k))
        if with_map:
            add("ap", _average_precision(ranked[has], n_rel[has]))
    v = {name: np.concatenate(parts) for name, parts in per_query.items()}
    scored = len(v["n_rel"])

    def mean(name: str) -> float | None:
        return float(np.mean(v[name])) if name in v and len(v[name]) else None

    return {
        "queries": len(q),
        "gallery": len(g),
        "queries_with_relevant": scored,
        "recall_at_k": {str(k): mean(f"hit{k}") for k in ks},
        "ir_recall_at_k": {str(k): mean(f"ir{k}") for k in ks},
        "precision_at_k": {str(k): mean(f"p{k}") for k in ks},
        f"ndcg_at_{ndcg_k}": mean("ndcg"),
        "map": mean("ap"),
        **({"knn_k": knn_k, "knn_accuracy": mean("knn")} if knn_k else {}),
    }


def _class_codes(y: Sequence[int] | np.ndarray, n_classes: int, what: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise InvalidInputError(f"{what} must be a 1-d array of class indices, got {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        raise InvalidInputError(
            f"{what} holds class index {int(arr.min() if arr.min() < 0 else arr.max())}; "
            f"allowed: 0..{n_classes - 1}"
        )
    return arr.astype(np.int64)


def confusion_matrix(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int
) -> np.ndarray:
    """(C, C) counts: row = true class index, column = predicted class index."""
    t = _class_codes(y_true, n_classes, "y_true")
    p = _class_codes(y_pred, n_classes, "y_pred")
    if len(t) != len(p):
        raise InvalidInputError(f"{len(t)} true labels but {len(p)} predictions")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den == 0 (scikit-learn's zero_division=0)."""
    return np.divide(num, den, out=np.zeros(len(num)), where=den > 0)


def classification_metrics(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro and weighted F1, per-class precision/recall/F1 and the confusion matrix.

    Labels are indices into ``classes``. Macro F1 averages the classes that occur in
    ``y_true`` or ``y_pred`` (scikit-learn's default); weighted F1 weights by support.
    """
    cm = confusion_matrix(y_true, y_pred, len(classes))  # (C, C)
    n = int(cm.sum())
    if n == 0:
        raise InvalidInputError("classification_metrics: no labels to score")
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    present = np.flatnonzero(support + predicted)
    return {
        "n": n,
        "accuracy": float(tp.sum() / n),
        "macro_f1": float(f1[present].mean()),
        "weighted_f1": float(f1 @ support / support.sum()),
        "per_class": {
            classes[c]: {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
            }
            for c in present.tolist()
        },
        "classes": list(classes),
        "confusion_matrix": cm.tolist(),
    }


def zero_shot_predict(
    image_emb: np.ndarray, class_emb: np.ndarray, batch: int = 4096
) -> np.ndarray:
    """Index of the most similar class embedding per image. (N, D), (C, D) -> (N,)."""
    x, c = _pair(image_emb, class_emb)
    if not len(c):
        raise InvalidInputError("zero_shot_predict: no class embeddings")
    out = np.empty(len(x), dtype=np.int64)
    for start, scores in score_batches(x, c, batch):
        out[start : start + len(scores)] = np.argmax(scores, axis=1)  # (B,)
    return out
