"""Recommendation metrics (checked against ranx), the temporal split and evaluate()."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from ranx import Qrels, Run
from ranx import evaluate as ranx_evaluate

from shoplens.personalize import metrics as M
from shoplens.personalize.baselines import ALS, ImageKNN, Popularity
from shoplens.personalize.customer import ContentRecommender
from shoplens.personalize.evaluate import Split, evaluate, ratio_table, temporal_split
from shoplens.personalize.types import Interactions

from ..helpers import random_item_space
from .test_recs_baselines import PER, T0, group_world, interactions

# ---------------------------------------------------------------- metrics


def test_metrics_match_ranx() -> None:
    rng = np.random.default_rng(7)
    n_items, b, depth = 40, 60, 20
    ranked = np.stack([rng.permutation(n_items)[:depth] for _ in range(b)])  # (B, 20)
    ranked[:5, 15:] = -1  # some short lists
    relevant = [rng.choice(n_items, size=int(rng.integers(1, 15)), replace=False) for _ in range(b)]
    qrels = {f"q{i}": {f"d{j}": 1 for j in rel} for i, rel in enumerate(relevant)}
    run = {
        f"q{i}": {f"d{j}": float(depth - r) for r, j in enumerate(row) if j >= 0}  # no ties
        for i, row in enumerate(ranked)
    }
    names = ["ndcg@10", "recall@20", "map@12", "precision@10", "hit_rate@10"]
    want = ranx_evaluate(Qrels(qrels), Run(run), names, make_comparable=True)
    got = {
        "ndcg@10": M.ndcg_at_k(ranked, relevant, 10),
        "recall@20": M.recall_at_k(ranked, relevant, 20),
        "map@12": M.map_at_k(ranked, relevant, 12),
        "precision@10": M.precision_at_k(ranked, relevant, 10),
        "hit_rate@10": M.hit_rate_at_k(ranked, relevant, 10),
    }
    for name in names:
        assert got[name].shape == (b,)
        assert got[name].mean() == pytest.approx(want[name], abs=1e-6), name


def test_metrics_hand_worked() -> None:
    ranked = np.array([[5, 1, 7, 2], [3, 4, -1, -1]])
    relevant = [np.array([1, 2, 9]), np.array([3])]
    # row 0: hits at ranks 2 and 4 of 3 relevant; row 1: hit at rank 1 of 1
    np.testing.assert_allclose(M.precision_at_k(ranked, relevant, 4), [2 / 4, 1 / 4])
    np.testing.assert_allclose(M.recall_at_k(ranked, relevant, 4), [2 / 3, 1.0])
    np.testing.assert_allclose(M.recall_at_k(ranked, relevant, 1), [0.0, 1.0])
    np.testing.assert_allclose(M.hit_rate_at_k(ranked, relevant, 1), [0.0, 1.0])
    np.testing.assert_allclose(M.hit_rate_at_k(ranked, relevant, 2), [1.0, 1.0])
    np.testing.assert_allclose(M.map_at_k(ranked, relevant, 4), [(1 / 2 + 2 / 4) / 3, 1.0])
    dcg = 1 / np.log2(3) + 1 / np.log2(5)
    idcg = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    np.testing.assert_allclose(M.ndcg_at_k(ranked, relevant, 4), [dcg / idcg, 1.0])
    # k beyond the list: missing slots are misses, the ideal DCG uses min(|rel|, k)
    np.testing.assert_allclose(M.precision_at_k(ranked, relevant, 8), [2 / 8, 1 / 8])
    np.testing.assert_allclose(M.ndcg_at_k(ranked, relevant, 8), [dcg / idcg, 1.0])
    assert M.coverage(ranked, 10) == pytest.approx(6 / 10)  # 5 1 7 2 3 4
    assert M.coverage(ranked[:, :1], 10) == pytest.approx(2 / 10)
    np.testing.assert_array_equal(
        M.hit_matrix(ranked, relevant, 3), [[False, True, False], [True, False, False]]
    )


def test_metrics_reject_rows_without_relevant_items() -> None:
    with pytest.raises(ValueError, match="no relevant"):
        M.ndcg_at_k(np.array([[1, 2]]), [np.array([], dtype=np.int64)], 2)
    with pytest.raises(ValueError):
        M.recall_at_k(np.array([[1, 2]]), [np.array([1]), np.array([2])], 2)
    with pytest.raises(ValueError):
        M.precision_at_k(np.array([[1, 2]]), [np.array([1])], 0)


# ---------------------------------------------------------------- temporal split


def test_temporal_split_holds_out_the_last_events() -> None:
    rows = []
    for i in range(10):  # customer 0: items 0..9 in order
        rows.append((0, i, 0, T0 + i))
    for i, item in enumerate([0, 1, 2, 2, 0, 1]):  # customer 1: held-out revisits 2,0,1
        rows.append((1, item, 0, T0 + i))
    for i, item in enumerate([5, 6, 2]):  # customer 2: too few events
        rows.append((2, item, 0, T0 + i))
    for i, item in enumerate([4, 5, 6, 6, 11, 4]):  # customer 3: 11 is never seen before
        rows.append((3, item, 0, T0 + 100 + i))
    data = interactions(rows)
    split = temporal_split(data, holdout=3, min_train=3, n_items=15)
    np.testing.assert_array_equal(split.customers, [0, 3])
    np.testing.assert_array_equal(split.histories[0].items, [0, 1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(split.relevant[0], [7, 8, 9])
    np.testing.assert_array_equal(split.histories[1].items, [4, 5, 6])
    np.testing.assert_array_equal(split.relevant[1], [11])  # 6 and 4 are in its history
    # train: everything but the evaluated customers' held-out events
    assert len(split.train) == len(data) - 3 - 3
    assert set(split.train.items[split.train.customers == 1].tolist()) == {0, 1, 2}
    assert len(split.train.items[split.train.customers == 1]) == 6  # dropped: kept whole
    # cold: no train events (7..9 are held out, 11 too; 10, 12..14 never occur)
    np.testing.assert_array_equal(np.flatnonzero(split.cold_items), [7, 8, 9, 10, 11, 12, 13, 14])
    assert split.summary()["customers_with_cold_relevant"] == 2


def test_temporal_split_cut_time_mode() -> None:
    rows = [(0, i, 0, T0 + i * 10) for i in range(6)]  # 0..5 at T0..T0+50
    rows += [(1, i, 0, T0 + 5 + i) for i in (7, 8)]  # too few before the cut
    rows += [(1, 9, 0, T0 + 100)]
    split = temporal_split(interactions(rows), min_train=3, cut_time=T0 + 25)
    np.testing.assert_array_equal(split.customers, [0])
    np.testing.assert_array_equal(split.relevant[0], [3, 4, 5])
    assert (split.train.timestamps <= T0 + 25).all()
    assert len(split.train) == 3 + 2
    assert len(split.cold_items) == 10 and split.cold_items[[3, 4, 5, 6, 9]].all()


def test_temporal_split_rejects_unsorted() -> None:
    data = interactions([(0, 1, 0, T0), (0, 2, 0, T0 + 1)])
    bad = Interactions(
        data.customers, data.items, data.types, data.timestamps[::-1].copy(), data.customer_ids
    )
    with pytest.raises(ValueError, match="sorted"):
        temporal_split(bad)


# ---------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def split_world() -> tuple[Any, Split]:
    items, data = group_world(customers=12, events=10, seed=3)
    # every third customer's last event is on one of their group's never-seen items
    last = np.r_[np.flatnonzero(np.diff(data.customers)), len(data) - 1]  # (U,)
    pick = last[::3]
    group = data.customers[pick] // 12
    data.items[pick] = group * PER + PER - 3 + np.arange(len(pick)) % 3
    return items, temporal_split(data, holdout=3, min_train=3, n_items=len(items))


def test_evaluate_output_and_cold_slice(split_world: tuple[Any, Split]) -> None:
    items, split = split_world
    models = {
        "popularity": Popularity(),
        "als": ALS(factors=8, iterations=10),
        "image": ImageKNN(neighbours=10),
        "content": ContentRecommender(),
    }
    res = evaluate(models, split, items, batch_size=7)
    json.dumps(res)  # plain JSON
    metric_keys = {
        "ndcg@10",
        "recall@20",
        "map@12",
        "precision@10",
        "hit_rate@10",
        "coverage@10",
        "cold_share@10",
    }
    assert set(res) == set(models)
    for name, r in res.items():
        assert metric_keys <= set(r) and r["n_customers"] == len(split.customers)
        assert r["fit_seconds"] >= 0 and r["recommend_seconds"] >= 0
        assert r["name"] == models[name].name
        for key in metric_keys:
            assert 0.0 <= r[key] <= 1.0
        assert metric_keys <= set(r["cold_start_items"])
    n_cold = sum(bool(split.cold_items[r].any()) for r in split.relevant)
    assert n_cold > 0
    for r in res.values():
        assert r["cold_start_items"]["n_customers"] == n_cold
    # ALS and popularity can never show a cold item; content models can
    assert res["als"]["cold_start_items"]["recall@20"] == 0.0
    assert res["als"]["cold_share@10"] == 0.0
    assert res["popularity"]["cold_start_items"]["hit_rate@10"] == 0.0
    assert res["content"]["cold_start_items"]["recall@20"] > 0.0
    assert res["image"]["cold_share@10"] > 0.0
    # personalised models beat popularity on this clustered world
    assert res["als"]["ndcg@10"] > res["popularity"]["ndcg@10"]
    # fit=False reuses the fitted models
    again = evaluate({"als": models["als"]}, split, items, fit=False)
    assert again["als"]["ndcg@10"] == pytest.approx(res["als"]["ndcg@10"])
    assert again["als"]["fit_seconds"] is None


def test_evaluate_matches_metrics_on_the_recommendations(split_world: tuple[Any, Split]) -> None:
    items, split = split_world
    model = ImageKNN(neighbours=10)
    res = evaluate({"image": model}, split, items, ks=(5, 10, 7))
    ranked, _ = model.recommend(split.histories, 10)
    assert res["image"]["ndcg@5"] == pytest.approx(M.ndcg_at_k(ranked, split.relevant, 5).mean())
    assert res["image"]["recall@10"] == pytest.approx(
        M.recall_at_k(ranked, split.relevant, 10).mean()
    )
    assert res["image"]["map@7"] == pytest.approx(M.map_at_k(ranked, split.relevant, 7).mean())


def test_ratio_table() -> None:
    results = {
        "als": {"ndcg@10": 0.2, "recall@20": 0.0, "n_customers": 5,
                "cold_start_items": {"ndcg@10": None, "n_customers": 0}},
        "content": {"ndcg@10": 0.3, "recall@20": 0.1, "n_customers": 5,
                    "cold_start_items": {"ndcg@10": 0.4, "n_customers": 0}},
    }  # fmt: skip
    table = ratio_table(results, baseline="als")
    assert table["content"]["ndcg@10"] == pytest.approx(1.5)
    assert table["content"]["recall@20"] is None  # baseline 0
    assert table["content"]["cold_start_items/ndcg@10"] is None  # baseline missing
    assert table["als"]["ndcg@10"] == pytest.approx(1.0)
    assert "n_customers" not in table["als"]
    with pytest.raises(KeyError):
        ratio_table(results, baseline="nope")


def test_cold_items_beyond_the_split_count_as_cold() -> None:
    items = random_item_space(n_per_category=5, categories=["a", "b"])  # 10 items
    data = interactions([(0, i, 0, T0 + i) for i in range(5)] + [(0, 8, 0, T0 + 9)])
    split = temporal_split(data, holdout=1, min_train=3)  # n_items inferred: 9
    assert len(split.cold_items) == 9
    res = evaluate({"content": ContentRecommender()}, split, items)
    assert res["content"]["cold_start_items"]["n_customers"] == 1
