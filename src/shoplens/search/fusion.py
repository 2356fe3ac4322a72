"""Rank fusion of several result lists."""

from __future__ import annotations

from collections.abc import Sequence

RRF_K = 60  # the constant of Cormack et al. (2009)


def rrf(
    rankings: Sequence[Sequence[tuple[int, float]]],
    weights: Sequence[float] | None = None,
    k: int = RRF_K,
) -> list[tuple[int, float]]:
    """Weighted reciprocal rank fusion: score(d) = sum_l w_l / (k + rank_l(d)), rank from 1.

    Args:
        rankings: lists of ``(id, score)`` ordered best first (scores are ignored).
        weights: one weight per list (default 1.0 each).
        k: smoothing constant.

    Returns:
        ``(id, fused score)`` best first; ties broken by id for determinism.
    """
    weights = list(weights) if weights is not None else [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError("one weight per ranking")
    fused: dict[int, float] = {}
    for ranking, w in zip(rankings, weights, strict=True):
        for rank, (doc, _score) in enumerate(ranking, start=1):
            fused[doc] = fused.get(doc, 0.0) + w / (k + rank)
    return sorted(fused.items(), key=lambda t: (-t[1], t[0]))
