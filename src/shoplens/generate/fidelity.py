"""Fidelity checks of generated images: pure metrics on feature arrays.

* :func:`frechet_distance` — FID's formula (Heusel et al. 2017) on any features. shoplens
  computes it on its OWN trained image tower's features, not on Inception's, so its values
  are not comparable with published Inception FIDs.
* :func:`precision_recall` — improved precision / recall of samples (Kynkäänniemi et al.
  2019): k-NN balls around each real (generated) feature approximate the real (generated)
  manifold; precision = share of generated samples inside the real manifold, recall =
  share of real samples inside the generated one. Neighbour searches use faiss (exact).
* :func:`memorisation_threshold` / :func:`memorised_share` — a sample is flagged as
  memorised when its nearest training image is closer than all but ``quantile`` of real
  unseen (test) images are to theirs.
* :func:`conditional_accuracy`, :func:`paired_comparison` — share of samples a classifier
  labels as requested; a paired, one-sided Wilcoxon test of conditioned vs unconditioned.

The driver that runs them on a generator is :func:`shoplens.generate.fidelity_eval.
evaluate_generator` (features: :mod:`~shoplens.generate.fidelity_features`, SIMULATED
customers: :mod:`~shoplens.generate.fidelity_customers`, grids / JSON / RESULTS.md:
:mod:`~shoplens.generate.fidelity_report`; CLI: ``shoplens generate eval``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np
from scipy import linalg, stats

from shoplens.errors import InvalidInputError

RANGE_CHUNK = 1024  # queries per faiss range search (bounds the result-list memory)


def _as_features(x: np.ndarray, name: str, min_rows: int = 1) -> np.ndarray:
    """(N, D) float array check; returns a C-contiguous float32 copy for faiss."""
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[0] < min_rows or a.shape[1] < 1:
        raise InvalidInputError(
            f"{name} must be a (N, D) feature array with N >= {min_rows}, got shape {a.shape}"
        )
    if not np.isfinite(a).all():
        raise InvalidInputError(f"{name} contains NaN or infinite values")
    return np.ascontiguousarray(a, dtype=np.float32)


def _same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise InvalidInputError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")


# --- Fréchet distance -------------------------------------------------------------------


def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    f = np.asarray(feats, dtype=np.float64)
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance_from_stats(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), as in pytorch-fid / TTUR.

    ``sqrtm`` of a product of (near-)singular covariances can fail or leave an imaginary
    residue: like the reference implementations, ``eps`` is added to the diagonals when
    the root is not finite, an imaginary part is dropped when its diagonal is within 1e-3
    of zero, and a larger one is an error.
    """
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            worst = float(np.max(np.abs(covmean.imag)))
            raise ValueError(f"sqrtm left an imaginary component of {worst:.3g}")
        covmean = covmean.real
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)
    return float(max(value, 0.0))  # tiny negative values are rounding error


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID formula between two (N, D) feature sets (each needs N >= 2 rows)."""
    a = _as_features(feats_a, "feats_a", min_rows=2)
    b = _as_features(feats_b, "feats_b", min_rows=2)
    _same_dim(a, b)
    return frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b))


# --- k-NN manifolds: precision / recall -------------------------------------------------


def knn_radii(feats: np.ndarray, k: int = 3) -> np.ndarray:
    """(N,) L2 distance of each row to its k-th nearest other row (exact faiss search)."""
    f = _as_features(feats, "feats", min_rows=k + 1)
    index = faiss.IndexFlatL2(f.shape[1])
    index.add(f)
    d2, _ = index.search(f, k + 1)  # (N, k+1) squared; column 0 is the row itself
    return np.sqrt(np.maximum(d2[:, k], 0.0)).astype(np.float64)


def in_manifold(queries: np.ndarray, manifold: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """(Q,) bool: query q lies in some ball ||q - m_i|| <= radii[i] of the manifold points.

    A faiss range search at the largest radius finds every candidate ball (exact), then
    each candidate is checked against its own radius.
    """
    q = _as_features(queries, "queries")
    m = _as_features(manifold, "manifold")
    _same_dim(q, m)
    r2 = np.asarray(radii, dtype=np.float64) ** 2  # (M,)
    if r2.shape != (m.shape[0],):
        raise InvalidInputError("radii must have one value per manifold point")
    index = faiss.IndexFlatL2(m.shape[1])
    index.add(m)
    tol = 1e-5 * max(float(r2.max()), 1e-12)  # float32 rounding of squared distances
    search_radius = float(r2.max()) + 2 * tol  # faiss keeps d2 < radius
    out = np.zeros(q.shape[0], dtype=bool)
    for start in range(0, q.shape[0], RANGE_CHUNK):
        lims, d2, ids = index.range_search(q[start : start + RANGE_CHUNK], search_radius)
        hit = d2 <= r2[ids] + tol  # (pairs,)
        for j in range(len(lims) - 1):
            out[start + j] = bool(hit[lims[j] : lims[j + 1]].any())
    return out


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, Any]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds."""
    if k < 1:
        raise InvalidInputError(f"k must be >= 1, got {k}")
    r = _as_features(real, "real", min_rows=k + 1)
    f = _as_features(fake, "fake", min_rows=k + 1)
    _same_dim(r, f)
    precision = float(in_manifold(f, r, knn_radii(r, k)).mean())
    recall = float(in_manifold(r, f, knn_radii(f, k)).mean())
    return {"precision": precision, "recall": recall, "k": k, "real": len(r), "fake": len(f)}


# --- memorisation -----------------------------------------------------------------------


def nearest_neighbours(queries: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Q,) L2 distance of each query to its nearest reference row and (Q,) that row's
    index (exact faiss search)."""
    q = _as_features(queries, "queries")
    ref = _as_features(reference, "reference")
    _same_dim(q, ref)
    index = faiss.IndexFlatL2(ref.shape[1])
    index.add(ref)
    d2, ids = index.search(q, 1)  # (Q, 1) squared
    return np.sqrt(np.maximum(d2[:, 0], 0.0)).astype(np.float64), ids[:, 0].astype(np.int64)


def nearest_distances(queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(Q,) L2 distance of each query to its nearest reference row."""
    return nearest_neighbours(queries, reference)[0]


def memorisation_threshold(
    test_feats: np.ndarray, train_feats: np.ndarray, quantile: float = 0.01
) -> float:
    """The ``quantile`` of real unseen (test) images' distances to their nearest train image.

    A generated sample closer to a training image than this is closer than all but
    ``quantile`` of real unseen images are: :func:`memorised_share` flags it.
    """
    if not 0.0 < quantile < 1.0:
        raise InvalidInputError(f"quantile must be in (0, 1), got {quantile}")
    return float(np.quantile(nearest_distances(test_feats, train_feats), quantile))


def memorised_share(sample_feats: np.ndarray, train_feats: np.ndarray, threshold: float) -> float:
    """Share of samples whose nearest training image is closer than ``threshold``."""
    return float((nearest_distances(sample_feats, train_feats) < threshold).mean())


def l2_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0), dtype=np.float32)


# --- conditioning -----------------------------------------------------------------------


def conditional_accuracy(
    predicted: Sequence[str], requested: Sequence[str], classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """Share of samples labelled as their requested category: overall and per class.

    ``classes`` orders ``per_class`` (default: the requested categories, sorted); a class
    with no requested sample is left out of ``per_class``.
    """
    if len(predicted) != len(requested) or not requested:
        raise InvalidInputError("need one predicted label per requested category (and >= 1)")
    pred, req = np.asarray(predicted, dtype=object), np.asarray(requested, dtype=object)
    hits = pred == req
    per_class: dict[str, float] = {}
    for c in classes if classes is not None else sorted(set(requested)):
        mask = req == c
        if mask.any():
            per_class[str(c)] = float(hits[mask].mean())
    return {"overall": float(hits.mean()), "per_class": per_class, "samples": len(req)}


def paired_comparison(conditioned: np.ndarray, unconditioned: np.ndarray) -> dict[str, Any]:
    """Paired scores (e.g. cosine to a customer's taste) with and without conditioning.

    Means, the share of pairs where conditioning scores higher, and a one-sided Wilcoxon
    signed-rank test (H1: conditioned > unconditioned); ``p_value`` is None when every
    difference is zero or there are fewer than 2 pairs.
    """
    a = np.asarray(conditioned, dtype=np.float64)
    b = np.asarray(unconditioned, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise InvalidInputError("conditioned and unconditioned need the same (N,) shape, N >= 1")
    diff = a - b
    p_value: float | None = None
    statistic: float | None = None
    if len(a) >= 2 and np.any(diff != 0):
        res = stats.wilcoxon(a, b, alternative="greater")
        p_value, statistic = float(res.pvalue), float(res.statistic)
    return {
        "pairs": len(a),
        "mean_conditioned": float(a.mean()),
        "mean_unconditioned": float(b.mean()),
        "mean_difference": float(diff.mean()),
        "share_conditioned_higher": float((diff > 0).mean()),
        "wilcoxon_statistic": statistic,
        "wilcoxon_p_value": p_value,
    }


__all__ = [
    "conditional_accuracy",
    "frechet_distance",
    "frechet_distance_from_stats",
    "gaussian_stats",
    "in_manifold",
    "knn_radii",
    "l2_rows",
    "memorisation_threshold",
    "memorised_share",
    "nearest_distances",
    "nearest_neighbours",
    "paired_comparison",
    "precision_recall",
]
