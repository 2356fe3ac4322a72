"""BM25 keyword search: the same scores as bm25s's own retrieval, faster top-n."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from shoplens.search.text import Bm25, tokenize, top_positive


@pytest.fixture(scope="module")
def index() -> Bm25:
    import bm25s

    # Short catalogue titles tie a lot: the case bm25s's own top-k is slow on.
    titles = ["black ankle boot", "white sneaker", "black dress", "ankle boot", "summer dress"]
    texts = [f"{titles[i % len(titles)]} {'new' if i % 7 == 0 else ''}" for i in range(500)]
    retriever = bm25s.BM25()
    retriever.index(tokenize(texts), show_progress=False)
    return Bm25(retriever, np.arange(1000, 1500, dtype=np.int64))


@pytest.mark.parametrize("query", ["black ankle boot", "dress", "new sneaker", "boot boot"])
def test_bm25_scores_equal_bm25s_and_ties_keep_catalogue_order(index: Bm25, query: str) -> None:
    got = index.search(query, 50)
    tokens = [t for t in tokenize([query])[0] if t in index._vocab]
    _, want = index.retriever.retrieve([tokens], k=50, show_progress=False)  # type: ignore[attr-defined]
    assert [s for _, s in got] == pytest.approx([float(s) for s in want[0] if s > 0])
    for (a, sa), (b, sb) in itertools.pairwise(got):
        assert sa > sb or (sa == sb and a < b)  # best first; ties by product order


def test_bm25_filter_unknown_words_and_empty_results(index: Bm25) -> None:
    allowed = np.arange(1000, 1500, 3)
    got = index.search("black", 20, allowed)
    assert got and {i for i, _ in got} <= set(allowed.tolist())
    assert index.search("black", 20, np.array([5, 6])) == []  # none of them indexed
    assert index.search("purple unicorn", 20) == []
    assert len(index.search("ankle", 1000)) == 200  # every match, no zero scores


def test_top_positive_matches_a_full_sort() -> None:
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 60):
        scores = rng.choice([0.0, 0.5, 1.0, 2.0, -1.0], size=300).astype(np.float32)
        want = sorted(np.flatnonzero(scores > 0).tolist(), key=lambda i: (-scores[i], i))[:n]
        assert top_positive(scores, n).tolist() == want
