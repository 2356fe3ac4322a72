from __future__ import annotations

import pytest

from shoplens.search.fusion import rrf


def test_rrf_matches_hand_computed_scores() -> None:
    a = [(1, 9.0), (2, 8.0), (3, 7.0)]
    b = [(3, 0.9), (1, 0.5)]
    fused = dict(rrf([a, b], k=60))
    assert fused[1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[2] == pytest.approx(1 / 62)
    assert fused[3] == pytest.approx(1 / 63 + 1 / 61)
    assert [d for d, _ in rrf([a, b], k=60)] == [1, 3, 2]


def test_rrf_weights_and_ties() -> None:
    a = [(1, 0.0)]
    b = [(2, 0.0)]
    assert [d for d, _ in rrf([a, b])] == [1, 2]  # tie broken by id
    assert [d for d, _ in rrf([a, b], weights=[1.0, 2.0])] == [2, 1]
    with pytest.raises(ValueError):
        rrf([a, b], weights=[1.0])
