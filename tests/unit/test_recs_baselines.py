"""Baseline recommenders and customer embeddings on tiny worlds with known answers."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest

from shoplens.personalize.baselines import (
    ALS,
    CoVisitation,
    ImageKNN,
    Popularity,
    gather_sparse,
    history_weights,
    top_k_sparse,
)
from shoplens.personalize.customer import ContentRecommender, item_vectors, pool_customer
from shoplens.personalize.types import EVENT_TYPES, History, Interactions, top_k_rows, unseen

from ..helpers import random_item_space

DAY = 86_400.0
T0 = 1_700_000_000.0
VIEW, CLICK, CART, BUY = (
    EVENT_TYPES.index(t) for t in ("view", "click", "add_to_cart", "purchase")
)
PER = 30  # items per group of group_world (the last 3 of each are cold)
N = 4 * PER


def interactions(rows: list[tuple[int, int, int, float]]) -> Interactions:
    """(customer, item, type, timestamp) rows -> sorted Interactions."""
    a = np.array(rows, dtype=np.float64).reshape(-1, 4)
    order = np.lexsort((a[:, 3], a[:, 0]))
    a = a[order]
    n_cust = int(a[:, 0].max()) + 1 if len(a) else 0
    return Interactions(
        a[:, 0].astype(np.int64),
        a[:, 1].astype(np.int64),
        a[:, 2].astype(np.int64),
        a[:, 3],
        [f"c{i}" for i in range(n_cust)],
    )


def hist(items: list[int], types: list[int] | None = None, gap: float = 3600.0) -> History:
    """A history of ``items`` one ``gap`` apart (views unless ``types``)."""
    n = len(items)
    return History(
        np.array(items, dtype=np.int64),
        np.array(types if types is not None else [VIEW] * n, dtype=np.int64),
        T0 + gap * np.arange(n, dtype=np.float64),
    )


def group_world(
    n_groups: int = 4, per_group: int = PER, customers: int = 12, events: int = 8, seed: int = 0
) -> tuple[Any, Interactions]:
    """Items in ``n_groups`` categories; each customer only touches items of their group.

    The last 3 items of every group get no events (cold items).
    """
    items = random_item_space(
        n_per_category=per_group, categories=[f"g{g}" for g in range(n_groups)], seed=seed
    )
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        warm = np.arange(g * per_group, (g + 1) * per_group - 3)
        for c in range(customers):
            cust = g * customers + c
            for e, item in enumerate(rng.choice(warm, size=events, replace=False)):
                rows.append((cust, int(item), int(rng.integers(0, 4)), T0 + e * 600.0))
    return items, interactions(rows)


def all_models() -> list[Any]:
    return [
        Popularity(),
        CoVisitation(),
        ImageKNN(neighbours=10),
        ALS(factors=8, iterations=10),
        ContentRecommender(),
    ]


@pytest.fixture(scope="module")
def world() -> tuple[Any, Interactions]:
    return group_world()


@pytest.fixture(scope="module")
def fitted(world: tuple[Any, Interactions]) -> list[Any]:
    items, train = world
    models = all_models()
    for m in models:
        m.fit(train, items)
    return models


# ---------------------------------------------------------------- history weights


def test_history_weights_type_and_recency() -> None:
    h = History(
        np.array([3, 4, 5]),
        np.array([VIEW, BUY, CART]),
        np.array([T0, T0 + 7 * DAY, T0 + 14 * DAY]),
    )
    np.testing.assert_allclose(history_weights(h, None, None), [1, 8, 4])
    np.testing.assert_allclose(history_weights(h, None, 14.0), [0.5, 8 * 0.5**0.5, 4])
    np.testing.assert_allclose(history_weights(h, T0 + 28 * DAY, 14.0), [0.25, 8 * 0.5**1.5, 2])
    assert history_weights(h, None, 14.0).dtype == np.float32
    assert history_weights(History.empty(), None, 14.0).shape == (0,)


# ---------------------------------------------------------------- shared behaviour


def test_shapes_exclude_seen_and_scores(world: tuple[Any, Interactions], fitted: list[Any]) -> None:
    items, _ = world
    n = len(items)
    histories = [hist([0, 1, 2]), hist([40, 41]), hist([95])]
    for m in fitted:
        idx, val = m.recommend(histories, 10)
        assert idx.shape == val.shape == (3, 10), m.name
        assert idx.dtype == np.int64 and val.dtype == np.float32
        for h, row, scores in zip(histories, idx, val, strict=True):
            assert not np.isin(row, h.items).any(), m.name  # exclude_seen
            shown = row[row >= 0]
            assert len(np.unique(shown)) == len(shown)
            assert np.all(np.diff(scores[row >= 0]) <= 1e-6), m.name  # best first
        # scores of the recommended items agree with score_items; -1 pads are nan
        cand = np.concatenate([idx[:, :5], np.full((3, 2), -1)], axis=1)
        got = m.score_items(histories, cand)
        assert got.shape == (3, 7) and got.dtype == np.float32
        np.testing.assert_allclose(got[:, :5], val[:, :5], rtol=1e-5, atol=1e-6)
        assert np.isnan(got[:, 5:]).all()
        # without exclude_seen the history items may come back, with the same machinery
        idx_all, _ = m.recommend(histories, n, exclude_seen=False)
        if m.name != "als":  # ALS only ranks items with train events
            for h, row in zip(histories, idx_all, strict=True):
                assert np.isin(h.items, row).all(), m.name


def test_unseen_customer_and_empty_history(
    world: tuple[Any, Interactions], fitted: list[Any]
) -> None:
    """A history never seen in training works; an empty one falls back to popularity."""
    _, train = world
    pop = np.bincount(train.items, minlength=N)  # event counts
    for m in fitted:
        idx, _ = m.recommend([hist([95, 96, 97]), History.empty()], 5)
        assert (idx >= 0).all(), m.name
        if m.name != "popularity":  # a group-3 history
            assert (idx[0] // PER == 3).mean() >= 0.6, (m.name, idx[0])
        assert (pop[idx[1]] > 0).all(), m.name  # empty: popular (warm) items only


def test_pickle_round_trip(world: tuple[Any, Interactions], fitted: list[Any]) -> None:
    histories = [hist([0, 5, 9]), hist([33]), History.empty()]
    cand = np.tile(np.arange(0, N, 6), (3, 1))
    for m in fitted:
        idx, val = m.recommend(histories, 12)
        copy = pickle.loads(pickle.dumps(m))
        idx2, val2 = copy.recommend(histories, 12)
        np.testing.assert_array_equal(idx, idx2)
        np.testing.assert_array_equal(val, val2)
        np.testing.assert_array_equal(
            m.score_items(histories, cand), copy.score_items(histories, cand)
        )


def test_unfitted_raises() -> None:
    for m in all_models():
        with pytest.raises(RuntimeError):
            m.recommend([hist([0])], 3)


# ---------------------------------------------------------------- popularity


def test_popularity_most_popular_unseen_items() -> None:
    items = random_item_space(n_per_category=5, categories=["a", "b"])
    rows = [(0, 3, BUY, T0)]  # 8
    rows += [(c, 7, VIEW, T0 + c) for c in range(1, 6)]  # 5
    rows += [(c, 1, CLICK, T0 + c) for c in range(1, 3)]  # 4
    rows += [(6, 9, VIEW, T0 + 5)]  # 1
    m = Popularity(half_life_days=None)
    m.fit(interactions(rows), items)
    assert m.scores.shape == (10,)
    np.testing.assert_allclose(m.scores[[3, 7, 1, 9, 0]], [8, 5, 4, 1, 0])
    idx, val = m.recommend([History.empty(), hist([3, 1])], 3)
    np.testing.assert_array_equal(idx[0], [3, 7, 1])
    np.testing.assert_array_equal(idx[1][:2], [7, 9])
    np.testing.assert_allclose(val[0], [8, 5, 4])


def test_popularity_recency_decay() -> None:
    items = random_item_space(n_per_category=5, categories=["a", "b"])
    old_buy = (0, 2, BUY, T0)  # 60 days before the last event: 8 * 0.5**2 = 2
    recent_views = [(1, 4, VIEW, T0 + 60 * DAY), (2, 4, VIEW, T0 + 60 * DAY)]
    m = Popularity(half_life_days=30.0)
    m.fit(interactions([old_buy, *recent_views]), items)
    np.testing.assert_allclose(m.scores[[2, 4]], [2.0, 2.0], rtol=1e-6)
    m2 = Popularity(half_life_days=60.0)
    m2.fit(interactions([old_buy, *recent_views]), items)
    assert m2.recommend([History.empty()], 1)[0][0, 0] == 2  # 4 > 2


# ---------------------------------------------------------------- co-visitation


def test_covisitation_recommends_the_co_visited_item() -> None:
    items = random_item_space(n_per_category=10, categories=["a", "b"])  # 20 items
    rng = np.random.default_rng(1)
    rows = []
    for c in range(30):
        t = T0 + c * 10 * DAY
        rows += [(c, 4, VIEW, t), (c, 11, CLICK, t + 1800)]  # A=4 -> B=11 always
        noise = rng.choice([i for i in range(20) if i not in (4, 11)], 2, replace=False)
        rows += [(c, int(noise[0]), VIEW, t + 3 * DAY), (c, int(noise[1]), VIEW, t + 3 * DAY + 60)]
    m = CoVisitation(window_hours=24.0, max_neighbours=5)
    m.fit(interactions(rows), items)
    assert m.sim.shape == (20, 20) and m.sim.format == "csr"
    assert (np.diff(m.sim.indptr) <= 5).all()
    np.testing.assert_allclose(m.sim.toarray(), m.sim.toarray().T, atol=1e-6)  # top-5 kept
    nb, sc = m.neighbours(4, 3)
    assert nb[0] == 11 and sc[0] > 0.9 and np.all(np.diff(sc) <= 0)
    idx, _ = m.recommend([hist([4]), hist([11])], 1)
    np.testing.assert_array_equal(idx[:, 0], [11, 4])
    # 4 and a noise item 3 days later are outside the window: never similar
    assert m.sim[4].toarray()[0][[i for i in range(20) if i != 11]].max() == 0


def test_sparse_top_k_and_gather_equal_the_dense_scan() -> None:
    """top_k_sparse / gather_sparse give what top_k_rows / gather over dense rows give,
    with rows whose non-zeros are few, many, empty or negative, and exclusions."""
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    n, k = 300, 25
    dense = np.zeros((5, n), np.float32)
    dense[0, rng.choice(n, 4, replace=False)] = rng.random(4)  # fewer than k non-zeros
    dense[1, rng.choice(n, 120, replace=False)] = rng.random(120)
    dense[3, rng.choice(n, 30, replace=False)] = rng.normal(size=30)  # negative parts
    dense[4, rng.choice(n, 10, replace=False)] = 1e-7  # below some base gaps
    base = (rng.random(n) * 1e-6).astype(np.float32)
    exclude = [rng.choice(n, m, replace=False) for m in (3, 0, 40, 5, 290)]
    part = sp.csr_matrix(dense)
    order = np.argsort(-base, kind="stable")
    idx, val = top_k_sparse(part, base, order, k, exclude)
    want_idx, want_val = top_k_rows(dense + base, k, exclude)
    np.testing.assert_array_equal(idx, want_idx)  # distinct scores: one right answer
    np.testing.assert_array_equal(val, want_val)
    assert (idx[4] >= 0).sum() == n - 290  # padded when fewer than k can be ranked
    cand = np.stack([rng.choice(n, 12, replace=False) for _ in range(5)])
    cand[2, -3:] = -1
    got = gather_sparse(part, base, cand)
    want = np.take_along_axis(dense + base, np.maximum(cand, 0), axis=1)
    np.testing.assert_array_equal(got[cand >= 0], want[cand >= 0])
    assert np.isnan(got[cand < 0]).all()


def test_covisitation_serves_without_dense_rows(world: tuple[Any, Interactions]) -> None:
    """Co-visitation's recommend / score_items (sparse) agree with its dense score_all."""
    items, train = world
    model = CoVisitation()
    model.fit(train, items)
    hs = [hist([1, 2, 3]), hist([40, 41]), hist([70]), hist([5, 95, 6], [BUY, VIEW, CART])]
    idx, val = model.recommend(hs, 10)
    dense = model.score_all(hs)
    want_idx, want_val = top_k_rows(dense, 10, [h.items for h in hs])
    np.testing.assert_allclose(val, want_val, rtol=1e-6)
    np.testing.assert_array_equal(idx[val > 1e-5], want_idx[want_val > 1e-5])
    got = model.score_items(hs, idx)
    np.testing.assert_allclose(got, np.take_along_axis(dense, idx, axis=1), rtol=1e-6)


def test_covisitation_window_and_recency() -> None:
    items = random_item_space(n_per_category=5, categories=["a", "b"])  # 10 items
    rows = [(0, 0, VIEW, T0), (0, 1, VIEW, T0 + 3600), (0, 2, VIEW, T0 + 2 * DAY)]
    rows += [(1, 5, VIEW, T0), (1, 6, VIEW, T0 + 600)]
    m = CoVisitation(window_hours=24.0)
    m.fit(interactions(rows), items)
    s = m.sim.toarray()
    assert s[0, 1] > 0 and s[1, 2] == 0 and s[0, 2] == 0 and s[5, 6] > 0
    # the newest history item weighs most: 5's neighbour beats 0's when 5 is newer
    old_then_new = History(np.array([0, 5]), np.array([VIEW, VIEW]), np.array([T0, T0 + 60 * DAY]))
    assert m.recommend([old_then_new], 1)[0][0, 0] == 6


# ---------------------------------------------------------------- image kNN


def test_image_knn_returns_nearest_images(world: tuple[Any, Interactions]) -> None:
    items, train = world
    m = ImageKNN(neighbours=8)
    m.fit(train, items)
    cos = items.image @ items.image[17]
    cos[17] = -np.inf
    want = np.argsort(-cos)[:8]
    idx, val = m.recommend([hist([17])], 8)
    np.testing.assert_array_equal(idx[0], want)
    np.testing.assert_allclose(val[0], np.maximum(cos[want], 0) * 1.0, atol=1e-5)
    nb, _ = m.neighbours(17, 8)
    np.testing.assert_array_equal(nb, want)
    # cold items (no events) are recommended too: they have embeddings
    cold = np.setdiff1d(np.arange(N), train.items)
    warm = np.setdiff1d(np.arange(N), cold)
    shown = m.recommend([hist([int(j)]) for j in warm], 8)[0]
    assert np.isin(cold, shown).mean() > 0.5
    assert m.recommend([hist([int(cold[0])])], 8)[0].min() >= 0  # a cold history works


# ---------------------------------------------------------------- ALS


def test_als_recovers_blocks_and_scores_cold_items_minus_inf(
    world: tuple[Any, Interactions],
) -> None:
    items, train = world
    m = ALS(factors=8, iterations=15, regularization=0.05, seed=0)
    m.fit(train, items)
    assert m.item_factors.shape == (N, 8)
    histories = train.histories()  # 48 customers, 12 per group
    idx, _ = m.recommend(histories, 10)
    group = np.repeat(np.arange(4), 12)
    in_group = (idx // PER == group[:, None]) & (idx >= 0)
    assert in_group.mean() > 0.8, in_group.mean()
    cold = np.setdiff1d(np.arange(N), train.items)
    scores = m.score_all(histories[:3])
    assert np.isneginf(scores[:, cold]).all()
    assert np.isfinite(np.delete(scores, cold, axis=1)).all()
    assert not np.isin(m.recommend(histories, N)[0], cold).any()
    # an unseen customer with a group-2 history: factors from the history alone
    u = m.user_factors([hist([60, 61, 62]), History.empty()])
    assert u.shape == (2, 8) and np.all(u[1] == 0)
    top = m.recommend([hist([60, 61, 62])], 5)[0][0]
    assert (top // PER == 2).all()


# ---------------------------------------------------------------- customer embeddings


def test_pool_customer_is_weighted_normalised_mean(world: tuple[Any, Interactions]) -> None:
    items, _ = world
    h = History(np.array([1, 2]), np.array([VIEW, BUY]), np.array([T0, T0 + 14 * DAY]))
    got = pool_customer([h, History.empty()], items, half_life_days=14.0, use_text=True)
    dim = items.image.shape[1] + items.text.shape[1]
    assert got.shape == (2, dim)
    vec = np.concatenate([items.image, 0.5 * items.text], axis=1)
    want = 0.5 * vec[1] + 8.0 * vec[2]
    np.testing.assert_allclose(got[0], want / np.linalg.norm(want), atol=1e-6)
    assert np.all(got[1] == 0)
    img = pool_customer([h], items, use_text=False)
    assert img.shape == (1, items.image.shape[1])
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-6)


def test_content_recommender_ranks_by_cosine_and_serves_cold_items(
    world: tuple[Any, Interactions],
) -> None:
    items, train = world
    m = ContentRecommender()
    m.fit(train, items)
    assert m.name == "customer-embedding"
    h = hist([30, 31, 33])
    q = pool_customer([h], items)[0]
    cos = item_vectors(items) @ q
    cos[[30, 31, 33]] = -np.inf
    want = np.argsort(-cos)[:10]
    idx, val = m.recommend([h], 10)
    np.testing.assert_array_equal(idx[0], want)
    np.testing.assert_allclose(val[0], cos[want], atol=1e-5)
    cold = np.setdiff1d(np.arange(N), train.items)  # 27..29 are group-0 cold items
    warm = np.setdiff1d(np.arange(N), cold)
    shown = m.recommend([hist([int(j)]) for j in warm], 5)[0]
    assert np.isin(cold, shown).mean() > 0.5  # new items are found without any event
    padded = m.recommend([hist([0])], N + 5)[0]  # more than N: padded
    assert padded.shape == (1, N + 5) and (padded[0, : N - 1] >= 0).all()
    assert (padded[0, N - 1 :] == -1).all()


def test_unseen_matches_isin() -> None:
    """unseen is ~np.isin for item indices, padding (-1) counts as unseen."""
    rng = np.random.default_rng(3)
    n = 500
    for _ in range(50):
        items = rng.integers(-1, n, rng.integers(0, 60))
        seen = rng.integers(0, n, rng.integers(0, 40))
        got = unseen(items, seen, n)
        want = ~np.isin(items, seen) | (items < 0)
        assert got.dtype == bool and got.shape == items.shape
        np.testing.assert_array_equal(got, want)
    # out-of-range seen entries match nothing; the input arrays are left as they were
    items, seen = np.array([0, 4, -1, 9]), np.array([-1, 4, 10, 99])
    np.testing.assert_array_equal(unseen(items, seen, 10), [True, False, True, True])
    np.testing.assert_array_equal(seen, [-1, 4, 10, 99])
