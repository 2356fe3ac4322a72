from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import top_k_accuracy_score
from sklearn.neighbors import KNeighborsClassifier

from shoplens.errors import InvalidInputError
from shoplens.eval.metrics import (
    hit_rate_at_k,
    knn_accuracy,
    knn_predict,
    precision_at_k,
    recall_at_k,
    top_k,
    vote,
)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_knn_on_a_hand_computed_case() -> None:
    # gallery on the unit circle at angles 0, 10, 20, 90, 100 degrees; labels a a b c c
    angles = np.deg2rad([0, 10, 20, 90, 100])
    gallery = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = ["a", "a", "b", "c", "c"]
    query = unit(np.array([[1.0, 0.05], [0.0, 1.0]]))
    # k=3: query 0 -> neighbours 0, 10, 20 deg -> a a b -> a; query 1 -> 90, 100, 20 -> c
    assert list(knn_predict(query, gallery, labels, k=3)) == ["a", "c"]
    assert knn_accuracy(query, ["a", "b"], gallery, labels, k=3) == 0.5
    # k=1 is the nearest neighbour
    assert list(knn_predict(query, gallery, labels, k=1)) == ["a", "c"]


def test_vote_ties_go_to_the_nearest_tied_label() -> None:
    # rows are neighbour labels, nearest first
    got = vote(np.array([[2, 1, 1, 2, 0], [0, 1, 2, 3, 4], [3, 3, 1, 1, 1]]))
    assert got.tolist() == [2, 0, 1]


def test_top_k_orders_best_first_and_clips_k() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [1.0, -1.0, 0.0, 2.0]])
    assert top_k(scores, 3).tolist() == [[1, 3, 2], [3, 0, 2]]
    assert top_k(scores, 10).shape == (2, 4)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_knn_matches_scikit_learn_cosine_knn(n_classes: int) -> None:
    rng = np.random.default_rng(n_classes)
    centres = rng.normal(size=(n_classes, 16))
    g_lab = rng.integers(0, n_classes, 400)
    q_lab = rng.integers(0, n_classes, 300)
    gallery = centres[g_lab] + 1.5 * rng.normal(size=(400, 16))
    queries = centres[q_lab] + 1.5 * rng.normal(size=(300, 16))
    ours = knn_predict(unit(queries), unit(gallery), g_lab, k=5, batch=64)  # batched
    clf = KNeighborsClassifier(n_neighbors=5, metric="cosine").fit(gallery, g_lab)
    theirs = clf.predict(queries)
    if n_classes == 2:  # 5 votes over 2 labels never tie: identical predictions
        assert (ours == theirs).all()
        acc = knn_accuracy(unit(queries), q_lab, unit(gallery), g_lab, k=5)
        assert acc == pytest.approx(clf.score(queries, q_lab))
    else:  # sklearn breaks vote ties by the smallest label; compare where votes are clear
        _, idx = clf.kneighbors(queries)
        counts = np.stack([np.bincount(g_lab[row], minlength=n_classes) for row in idx])
        top2 = np.sort(counts, axis=1)[:, -2:]
        clear = top2[:, 1] > top2[:, 0]
        assert clear.sum() > 200
        assert (ours[clear] == theirs[clear]).all()
    assert 0.5 < float(np.mean(ours == q_lab)) <= 1.0


def test_precision_recall_and_hit_rate_by_hand() -> None:
    relevant = [{"a", "b"}, {"x"}, {"p", "q", "r", "s"}]
    retrieved = [["a", "z", "b"], ["y", "w", "x"], ["p"]]
    # P@2: 1/2, 0/2, 1/2 (only one retrieved: a miss) -> 1/3
    assert precision_at_k(relevant, retrieved, 2) == pytest.approx(1 / 3)
    # P@3: 2/3, 1/3, 1/3 -> 4/9
    assert precision_at_k(relevant, retrieved, 3) == pytest.approx(4 / 9)
    # R@2: 1/2, 0, 1/4; R@3: 1, 1, 1/4
    assert recall_at_k(relevant, retrieved, 2) == pytest.approx((0.5 + 0 + 0.25) / 3)
    assert recall_at_k(relevant, retrieved, 3) == pytest.approx(2.25 / 3)
    # queries with nothing relevant are left out of recall
    assert recall_at_k([set(), {"a"}], [["a"], ["a"]], 1) == 1.0
    targets = ["a", "x", "q"]
    assert hit_rate_at_k(targets, retrieved, 1) == pytest.approx(1 / 3)
    assert hit_rate_at_k(targets, retrieved, 3) == pytest.approx(2 / 3)
    # single target: recall == hit rate
    assert recall_at_k([{t} for t in targets], retrieved, 3) == hit_rate_at_k(targets, retrieved, 3)
    # repeated labels count per position (category precision)
    assert precision_at_k([{"Bag"}], [["Bag", "Bag", "Coat", "Bag"]], 4) == 0.75


def test_hit_rate_matches_scikit_learn_top_k_accuracy() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(200, 12))
    y = rng.integers(0, 12, 200)
    ranked = np.argsort(-scores, axis=1).tolist()
    for k in (1, 3, 5):
        want = top_k_accuracy_score(y, scores, k=k, labels=np.arange(12))
        assert hit_rate_at_k(y.tolist(), ranked, k) == pytest.approx(want)


def test_bad_arguments_are_user_errors() -> None:
    with pytest.raises(InvalidInputError):
        precision_at_k([{"a"}], [["a"]], 0)
    with pytest.raises(InvalidInputError):
        hit_rate_at_k(["a", "b"], [["a"]], 1)
    with pytest.raises(InvalidInputError):
        recall_at_k([], [], 1)
    with pytest.raises(InvalidInputError):
        recall_at_k([set()], [["a"]], 1)
    with pytest.raises(InvalidInputError):
        knn_predict(np.ones((2, 3)), np.ones((4, 2)), [0, 1, 0, 1])
    with pytest.raises(InvalidInputError):
        knn_accuracy(np.ones((2, 2)), [0], np.ones((4, 2)), [0, 1, 0, 1])
