from __future__ import annotations

import numpy as np
import pytest
from ranx import Qrels, Run, evaluate
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.neighbors import KNeighborsClassifier

from shoplens.errors import InvalidInputError
from shoplens.eval.metrics import (
    classification_metrics,
    confusion_matrix,
    hit_rate_at_k,
    knn_accuracy,
    knn_predict,
    precision_at_k,
    ranking_metrics,
    recall_at_k,
    top_k,
    vote,
    zero_shot_predict,
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


# --- classification -------------------------------------------------------------------


def test_classification_metrics_by_hand() -> None:
    # 3 classes; true a a b b c, predicted a b b b a
    got = classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"])
    assert got["accuracy"] == pytest.approx(3 / 5)
    assert got["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # a: P 1/2 R 1/2 F1 1/2; b: P 2/3 R 1 F1 4/5; c: P 0 (never predicted) R 0 F1 0
    assert got["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert got["per_class"]["b"]["f1"] == pytest.approx(0.8)
    assert got["per_class"]["c"]["f1"] == 0.0
    assert got["macro_f1"] == pytest.approx((0.5 + 0.8 + 0) / 3)
    assert got["weighted_f1"] == pytest.approx((2 * 0.5 + 2 * 0.8 + 0) / 5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    names = [f"c{i}" for i in range(6)]
    y_true = rng.integers(0, 5, 300)  # class 5 never occurs; class 4 is never predicted
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 4, 300))
    y_pred[:3] = 5  # ... but class 5 is predicted a few times
    got = classification_metrics(y_true, y_pred, names)
    assert got["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    for avg in ("macro", "weighted"):
        want = f1_score(y_true, y_pred, average=avg, zero_division=0)
        assert got[f"{avg}_f1"] == pytest.approx(want, abs=1e-12)
    assert got["confusion_matrix"] == sk_confusion_matrix(y_true, y_pred, labels=range(6)).tolist()
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(6), zero_division=0)
    assert set(got["per_class"]) == {f"c{i}" for i in range(6)}  # 5: predicted, never true
    for c, v in got["per_class"].items():
        i = names.index(c)
        assert (v["precision"], v["recall"], v["f1"]) == pytest.approx((p[i], r[i], f[i]))
        assert v["support"] == s[i]


def test_zero_shot_predict_is_the_most_similar_class() -> None:
    rng = np.random.default_rng(0)
    images, classes = unit(rng.normal(size=(50, 8))), unit(rng.normal(size=(4, 8)))
    want = np.argmax(images @ classes.T, axis=1)
    assert (zero_shot_predict(images, classes, batch=7) == want).all()


# --- ranking against a labelled gallery -----------------------------------------------


def test_ranking_metrics_by_hand() -> None:
    # 1-d "embeddings": the score is query * gallery, so the gallery ranks by its value
    gallery = np.array([[3.0], [2.0], [1.0], [-1.0]])
    g_labels = ["x", "y", "x", "y"]
    query, q_labels = np.array([[1.0]]), ["y"]  # ranking: x y x y -> hits at ranks 2 and 4
    got = ranking_metrics(query, q_labels, gallery, g_labels, ks=(1, 2, 4), knn_k=3, ndcg_k=2)
    assert got["recall_at_k"] == {"1": 0.0, "2": 1.0, "4": 1.0}
    assert got["ir_recall_at_k"] == {"1": 0.0, "2": 0.5, "4": 1.0}
    assert got["precision_at_k"] == {"1": 0.0, "2": 0.5, "4": 0.5}
    assert got["map"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert got["ndcg_at_2"] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))  # DCG/IDCG
    assert got["knn_accuracy"] == 0.0  # x y x -> x
    # the gallery queries itself, each row left out of its own ranking:
    # row 0 (3, x) ranks y x y -> AP 1/2; row 1 (2, y) ranks x x y -> AP 1/3;
    # row 2 (1, x) ranks x y y -> AP 1; row 3 (-1, y) ranks x y x -> AP 1/2
    got = ranking_metrics(gallery, g_labels, gallery, g_labels, ks=(1,), knn_k=1, exclude_self=True)
    assert got["queries_with_relevant"] == 4
    assert got["recall_at_k"]["1"] == 0.25
    assert got["map"] == pytest.approx((1 / 2 + 1 / 3 + 1 + 1 / 2) / 4)
    assert got["knn_accuracy"] == 0.25  # nearest other row: y x x x vs x y x y


def _ranx_scores(
    scores: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray, skip_self: bool
) -> tuple[Qrels, Run]:
    qrels, run = {}, {}
    for i, row in enumerate(scores):
        keep = [j for j in range(len(row)) if not (skip_self and i == j)]
        qrels[f"q{i}"] = {f"d{j}": 1 for j in keep if g_labels[j] == q_labels[i]}
        run[f"q{i}"] = {f"d{j}": float(row[j]) for j in keep}
    return Qrels(qrels), Run(run)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_ranking_metrics_match_ranx(exclude_self: bool) -> None:
    rng = np.random.default_rng(3)
    gallery, g_labels = unit(rng.normal(size=(80, 6))), rng.integers(0, 4, 80)
    if exclude_self:
        query, q_labels = gallery, g_labels
    else:
        query, q_labels = unit(rng.normal(size=(30, 6))), rng.integers(0, 4, 30)
    got = ranking_metrics(
        query, q_labels, gallery, g_labels, exclude_self=exclude_self, max_scores=7 * 80
    )  # batches of 7 queries
    qrels, run = _ranx_scores(query @ gallery.T, q_labels, g_labels, exclude_self)
    names = [f"{m}@{k}" for m in ("hit_rate", "recall", "precision") for k in (1, 5, 10)]
    want = evaluate(qrels, run, [*names, "ndcg@10", "map"], make_comparable=True)
    for k in ("1", "5", "10"):
        assert got["recall_at_k"][k] == pytest.approx(want[f"hit_rate@{k}"], abs=1e-6)
        assert got["ir_recall_at_k"][k] == pytest.approx(want[f"recall@{k}"], abs=1e-6)
        assert got["precision_at_k"][k] == pytest.approx(want[f"precision@{k}"], abs=1e-6)
    assert got["ndcg_at_10"] == pytest.approx(want["ndcg@10"], abs=1e-6)
    assert got["map"] == pytest.approx(want["map"], abs=1e-6)
    # without the full ranking: the same cut-off metrics, no mAP
    quick = ranking_metrics(
        query, q_labels, gallery, g_labels, exclude_self=exclude_self, with_map=False
    )
    assert quick["map"] is None
    assert quick["precision_at_k"] == pytest.approx(got["precision_at_k"])
    assert quick["ndcg_at_10"] == pytest.approx(got["ndcg_at_10"])


def test_ranking_knn_accuracy_matches_knn_accuracy() -> None:
    rng = np.random.default_rng(5)
    gallery, g_labels = unit(rng.normal(size=(120, 5))), rng.integers(0, 3, 120)
    query, q_labels = unit(rng.normal(size=(40, 5))), rng.integers(0, 3, 40)
    got = ranking_metrics(query, q_labels, gallery, g_labels, knn_k=5)
    assert got["knn_accuracy"] == knn_accuracy(query, q_labels, gallery, g_labels, k=5)


def test_ranking_metrics_bad_input() -> None:
    with pytest.raises(InvalidInputError, match="exclude_self"):
        ranking_metrics(np.ones((2, 3)), [0, 1], np.ones((3, 3)), [0, 1, 0], exclude_self=True)
    with pytest.raises(InvalidInputError, match="labels"):
        ranking_metrics(np.ones((2, 3)), [0], np.ones((3, 3)), [0, 1, 0])
    with pytest.raises(InvalidInputError, match="k must be"):
        ranking_metrics(np.ones((2, 3)), [0, 1], np.ones((3, 3)), [0, 1, 0], ks=(0,))
    with pytest.raises(InvalidInputError, match=r"allowed: 0\.\.2"):
        classification_metrics([0, 3], [0, 1], ["a", "b", "c"])
    with pytest.raises(InvalidInputError, match="2 true labels but 1"):
        confusion_matrix([0, 1], [0], 2)
