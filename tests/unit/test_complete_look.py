"""Complete the look on a simulated world: learned compatibility vs. the baselines."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from shoplens.errors import InvalidInputError, NotReadyError
from shoplens.personalize.complete_look import (
    BASKET_WINDOW_S,
    CompleteTheLook,
    CoPurchaseLook,
    VisualLook,
    co_purchase_pairs,
    evaluate_complete_look,
)
from shoplens.personalize.simulate import SimulatorConfig, simulate
from shoplens.personalize.types import EVENT_TYPES, Interactions, ItemSpace
from shoplens.training import TrainConfig

from ..helpers import random_item_space

TINY = TrainConfig(
    epochs=6, batch_size=256, lr=1e-2, weight_decay=1e-4, device="cpu", log_every=1000
)
K = 4


class World:
    """A simulated catalogue with outfits, split in time: test = the last 20 days."""

    def __init__(self) -> None:
        self.items: ItemSpace = random_item_space(n_per_category=40, seed=0)
        cfg = SimulatorConfig(
            n_customers=200,
            outfit_rate=0.9,
            p_click=0.5,
            p_add_to_cart=0.5,
            p_purchase=0.8,
            new_item_share=0.2,
            seed=0,
        )
        self.sim = simulate(self.items, cfg)
        inter = Interactions.from_events(self.sim.events, self.items)
        cut = cfg.end - 20 * 86400
        self.train = inter.subset(inter.timestamps < cut)
        self.test = inter.subset(inter.timestamps >= cut)


@pytest.fixture(scope="module")
def world() -> World:
    return World()


@pytest.fixture(scope="module")
def learned(world: World, tmp_path_factory: pytest.TempPathFactory) -> CompleteTheLook:
    model = CompleteTheLook(train=TINY, run_dir=tmp_path_factory.mktemp("look-run"))
    model.fit(world.train, world.items)
    return model


def test_co_purchase_pairs_same_customer_within_window() -> None:
    purchase = EVENT_TYPES.index("purchase")
    h = 3600.0
    inter = Interactions(
        customers=np.array([0, 0, 0, 0, 1, 1]),
        items=np.array([1, 2, 2, 3, 4, 5]),
        types=np.array([purchase, 0, purchase, purchase, purchase, purchase]),
        timestamps=np.array([0.0, 10.0, h, 4 * h, 0.0, 2 * h + 1]),
        customer_ids=["a", "b"],
    )
    pairs = co_purchase_pairs(inter)
    assert pairs.tolist() == [[1, 2]]  # the view is no purchase; 3 and 5 are too late
    assert BASKET_WINDOW_S == 7200.0
    assert co_purchase_pairs(inter, window_s=3 * h).tolist() == [[1, 2], [2, 3], [4, 5]]


def test_learns_the_category_pairing(world: World, learned: CompleteTheLook) -> None:
    names = world.items.category_names
    partners = {"Trouser", "Sneaker", "Sandal", "Ankle boot", "Bag"}
    tops = {"T-shirt/top", "Shirt", "Pullover", "Coat"}
    for top in tops:
        chosen = [names[c] for c in learned.partner_categories(names.index(top))]
        assert 1 <= len(chosen) <= 3 and set(chosen) <= partners, (top, chosen)
        assert "Trouser" in chosen
    dress = [names[c] for c in learned.partner_categories(names.index("Dress"))]
    assert dress and "Trouser" not in dress
    trouser = [names[c] for c in learned.partner_categories(names.index("Trouser"))]
    assert trouser and not set(trouser) & {"Trouser", "Dress"}


def test_never_returns_the_query_category(world: World, learned: CompleteTheLook) -> None:
    cats = world.items.categories
    for item in range(0, len(world.items), 7):
        result = learned.complete(item, k_per_category=3)
        assert len(result) <= 3
        for cat, idx, scores in result:
            assert cat != cats[item] and np.all(cats[idx] == cat)
            assert len(idx) == 3 and np.all(np.diff(scores) <= 0)
    own = int(cats[0])
    forced = learned.complete(0, k_per_category=2, categories=[own, (own + 1) % 10])
    assert [c for c, _, _ in forced] == [(own + 1) % 10]


def test_learned_model_beats_random_and_visual_similarity(
    world: World, learned: CompleteTheLook
) -> None:
    visual, copurchase = VisualLook(), CoPurchaseLook()
    visual.fit(world.train, world.items)
    copurchase.fit(world.train, world.items)
    got = evaluate_complete_look(learned, world.test, world.items, k=K)
    vis = evaluate_complete_look(visual, world.test, world.items, k=K)
    cop = evaluate_complete_look(copurchase, world.test, world.items, k=K)
    # measured (seed 0): recall@4 0.21 (random 0.07, visual 0.15, co-purchase 0.27);
    # ranking alone, recall_given_category@4 0.31 (random 0.10, visual 0.21, co-purchase 0.38)
    assert got["queries"] > 100 and got["partners"] > 500
    assert got[f"recall@{K}"] > 2.5 * got[f"random_recall@{K}"], got
    given = f"recall_given_category@{K}"
    assert got[given] > 2.5 * got[f"random_recall_given_category@{K}"], got
    assert got[given] >= vis[given] + 0.05, (got, vis)
    assert got[f"recall@{K}"] >= vis[f"recall@{K}"] + 0.03, (got, vis)
    assert got[f"hit_rate@{K}"] > 0.6
    assert cop[given] > vis[given]  # the co-purchase baseline memorises known items


def test_completes_items_without_events(world: World, learned: CompleteTheLook) -> None:
    cats, names = world.items.categories, world.items.category_names
    seen = set(world.train.items.tolist())
    cold = [i for i in range(len(world.items)) if i not in seen and names[cats[i]] == "Shirt"]
    assert cold, "the simulated world has new shirts without training events"
    result = learned.complete(cold[0], k_per_category=K)
    assert result and all(len(idx) == K and np.all(np.isfinite(s)) for _, idx, s in result)
    baseline = CoPurchaseLook()
    baseline.fit(world.train, world.items)
    assert baseline.complete(cold[0], k_per_category=K)  # falls back to visual similarity


def test_pickle_round_trip_gives_identical_output(learned: CompleteTheLook) -> None:
    clone = pickle.loads(pickle.dumps(learned))
    for item in (0, 45, 130, 399):
        a, b = learned.complete(item, K), clone.complete(item, K)
        assert [c for c, _, _ in a] == [c for c, _, _ in b]
        for (_, ia, sa), (_, ib, sb) in zip(a, b, strict=True):
            assert np.array_equal(ia, ib) and np.array_equal(sa, sb)
    assert next(clone.net.parameters()).device.type == "cpu"
    f, g = clone.embed_features(np.ones((2, 16 + 8), np.float32))  # image ⊕ text
    assert f.shape == g.shape == (2, 32)


def test_run_dir_keeps_the_training_outputs(learned: CompleteTheLook) -> None:
    assert learned.run_dir is not None
    assert (Path(learned.run_dir) / "metrics.json").is_file()
    assert np.isfinite(learned.train_metrics["train/loss"])


def test_errors(world: World, learned: CompleteTheLook) -> None:
    with pytest.raises(NotReadyError):
        CompleteTheLook().complete(0)
    with pytest.raises(InvalidInputError, match="out of range"):
        learned.complete(len(world.items))
    with pytest.raises(InvalidInputError, match="k_per_category"):
        learned.complete(0, k_per_category=0)
    empty = world.train.subset(np.zeros(len(world.train), bool))
    with pytest.raises(InvalidInputError, match="different categories"):
        CompleteTheLook(train=TINY).fit(empty, world.items)
