"""The seeded customer simulator: determinism, labelling, time, funnel, outfits, taste."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoplens.errors import InvalidInputError
from shoplens.personalize.simulate import (
    PRESETS,
    Simulation,
    SimulatorConfig,
    preset_config,
    sidecar_path,
    simulate,
    write_events,
)
from shoplens.personalize.types import EVENT_TYPES, SIMULATED_PREFIX, Interactions, ItemSpace

from ..helpers import random_item_space

TOPS = {"T-shirt/top", "Shirt", "Pullover", "Coat", "Dress"}
PARTNERS = {"Trouser", "Sneaker", "Sandal", "Ankle boot", "Bag"}


@pytest.fixture(scope="module")
def items() -> ItemSpace:
    return random_item_space(n_per_category=20, seed=0)


@pytest.fixture(scope="module")
def sim(items: ItemSpace) -> Simulation:
    return simulate(items, SimulatorConfig(n_customers=200, outfit_rate=0.8, seed=3))


def rows(sim: Simulation, items: ItemSpace) -> tuple[np.ndarray, ...]:
    """(E,) customer code, item, type code, timestamp of every event."""
    code = {c: i for i, c in enumerate(sim.customer_ids)}
    cust = np.array([code[e.customer_id] for e in sim.events])
    item = np.array([items.index_of(e.sku) for e in sim.events])
    etype = np.array([EVENT_TYPES.index(e.type) for e in sim.events])
    ts = np.array([e.timestamp for e in sim.events])
    return cust, item, etype, ts


def test_same_seed_same_events_other_seed_differs(items: ItemSpace, sim: Simulation) -> None:
    again = simulate(items, SimulatorConfig(n_customers=200, outfit_rate=0.8, seed=3))
    assert again.events == sim.events
    assert again.meta == sim.meta
    other = simulate(items, SimulatorConfig(n_customers=200, outfit_rate=0.8, seed=4))
    assert other.events != sim.events


def test_everything_is_labelled_simulated(
    items: ItemSpace, sim: Simulation, tmp_path: Path
) -> None:
    assert sim.events and sim.meta["simulated"] is True
    assert all(e.simulated for e in sim.events)
    assert all(e.customer_id.startswith(SIMULATED_PREFIX) for e in sim.events)
    assert all(e.event_id.startswith(SIMULATED_PREFIX) for e in sim.events)
    assert len({e.event_id for e in sim.events}) == len(sim.events)

    path = write_events(sim, tmp_path / "events.jsonl")
    lines = path.read_text().splitlines()
    assert len(lines) == len(sim.events)
    first = json.loads(lines[0])
    assert first == sim.events[0].to_dict() and first["simulated"] is True
    assert all(json.loads(line)["simulated"] is True for line in lines)
    side = json.loads(sidecar_path(path).read_text())
    assert side["simulated"] is True and "simulated data" in side["note"]
    assert side["seed"] == 3 and side["config"]["n_customers"] == 200
    assert side["config"]["outfit_rate"] == 0.8
    assert side["meta"]["counts"] == sim.meta["counts"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "events.jsonl",
        "events.jsonl.simulation.json",
    ]  # atomic writes leave no temp files


def test_times_ordered_in_the_period_never_in_the_future(items: ItemSpace, sim: Simulation) -> None:
    ts = np.array([e.timestamp for e in sim.events])
    cfg = sim.config
    assert np.all(np.diff(ts) >= 0)
    assert ts.min() >= cfg.end - cfg.days * 86400 and ts.max() < cfg.end
    assert cfg.end <= 1767225600.0  # the default end is fixed: 2026-01-01T00:00:00Z


def test_new_items_have_no_events_before_launch(items: ItemSpace, sim: Simulation) -> None:
    _, item, _, ts = rows(sim, items)
    assert np.all(ts >= sim.launch_times[item])
    cfg = sim.config
    new = sim.launch_times > cfg.end - cfg.new_item_days * 86400
    assert new.sum() == sim.meta["new_items"] > 0
    assert sim.meta["new_items_with_events"] > 0  # they are bought once launched
    # every item launched before the period is available the whole time
    assert np.all(sim.launch_times[~new] <= cfg.end - cfg.days * 86400)


def test_funnel_order_per_customer_and_item(items: ItemSpace, sim: Simulation) -> None:
    cust, item, etype, ts = rows(sim, items)
    first_at: dict[tuple[int, int, int], float] = {}
    for c, i, t, s in zip(cust, item, etype, ts, strict=True):
        first_at.setdefault((int(c), int(i), int(t)), float(s))
    counts = sim.meta["counts"]
    assert counts["view"] > counts["click"] > counts["add_to_cart"] > counts["purchase"] > 0
    for (c, i, t), s in first_at.items():
        if t > 0:  # click, add_to_cart, purchase: the same customer saw the item before
            assert (c, i, t - 1) in first_at, (c, i, EVENT_TYPES[t])
            assert first_at[(c, i, t - 1)] < s


def test_outfits_connect_tops_to_compatible_partners(items: ItemSpace, sim: Simulation) -> None:
    assert sim.meta["outfits_enabled"] is True and sim.meta["outfits"] > 10
    names = items.category_names
    out = sim.outfits  # (P, 3) customer, anchor, partner
    assert len(out) == sim.meta["outfit_pairs"]
    anchor_cat = [names[c] for c in items.categories[out[:, 1]]]
    partner_cat = [names[c] for c in items.categories[out[:, 2]]]
    assert set(anchor_cat) <= TOPS and set(partner_cat) <= PARTNERS
    assert {"Trouser", "Bag"} <= set(partner_cat)
    pairs = set(zip(anchor_cat, partner_cat, strict=True))
    assert ("Dress", "Trouser") not in pairs
    # both are purchases by that customer, within minutes of each other
    cust, item, etype, ts = rows(sim, items)
    bought: dict[tuple[int, int], list[float]] = defaultdict(list)
    for c, i, t, s in zip(cust, item, etype, ts, strict=True):
        if EVENT_TYPES[t] == "purchase":
            bought[(int(c), int(i))].append(float(s))
    for c, a, p in out:
        gaps = [abs(x - y) for x in bought[(c, a)] for y in bought[(c, p)]]
        assert gaps and min(gaps) < 2 * 3600
    # style-consistent: the partner matches the anchor's hidden style better than chance
    style = sim.item_style
    partner_sim = np.sum(style[out[:, 1]] * style[out[:, 2]], axis=1).mean()
    rng = np.random.default_rng(0)
    random_sim = []
    for a, p in out[:, 1:]:
        same_cat = np.flatnonzero(items.categories == items.categories[p])
        random_sim.append(float(style[a] @ style[rng.choice(same_cat)]))
    assert partner_sim > np.mean(random_sim) + 0.3, (partner_sim, np.mean(random_sim))


def test_generic_catalogue_has_no_outfits() -> None:
    generic = random_item_space(n_per_category=10, categories=["Lamps", "Rugs", "Vases"])
    sim = simulate(generic, SimulatorConfig(n_customers=50, outfit_rate=1.0))
    assert sim.meta["outfits_enabled"] is False and "outfits off" in sim.meta["outfits_note"]
    assert sim.meta["outfits"] == 0 and len(sim.outfits) == 0
    assert sim.meta["counts"]["purchase"] > 0


def taste_affinity(sim: Simulation, items: ItemSpace) -> tuple[float, float]:
    """Mean cosine of purchased items to the buyer's closest taste centre, and its mean
    percentile among the items of the same category (0.5 = no better than chance)."""
    cust, item, etype, _ = rows(sim, items)
    buy = etype == EVENT_TYPES.index("purchase")
    cust, item = cust[buy], item[buy]
    cos = np.einsum("cmd,nd->cmn", sim.taste_centres, items.image)  # (C, 3, N)
    active = np.arange(3)[None, :] < sim.n_taste_centres[:, None]
    cos = np.where(active[:, :, None], cos, -np.inf).max(axis=1)[cust]  # (P, N)
    mine = cos[np.arange(len(item)), item][:, None]  # (P, 1)
    same = items.categories[None, :] == items.categories[item][:, None]  # (P, N)
    pct = ((cos < mine) & same).sum(axis=1) / (same.sum(axis=1) - 1)
    return float(mine.mean()), float(pct.mean())


def test_taste_strength_makes_purchases_closer_to_visual_taste(items: ItemSpace) -> None:
    strong = simulate(items, preset_config("visual", n_customers=200, seed=5))
    weak = simulate(items, preset_config("low-image-signal", n_customers=200, seed=5))
    cos_strong, pct_strong = taste_affinity(strong, items)
    cos_weak, pct_weak = taste_affinity(weak, items)
    # measured (seed 5): cos 0.43 vs 0.34, within-category percentile 0.74 vs 0.53
    assert cos_strong > cos_weak + 0.05, (cos_strong, cos_weak)
    assert pct_strong > 0.65 and pct_weak < 0.6 and pct_strong > pct_weak + 0.1


def test_repeat_purchases(items: ItemSpace) -> None:
    sim = simulate(items, SimulatorConfig(n_customers=100, repeat_rate=0.6, seed=1))
    assert sim.meta["repeat_purchases"] > 5
    cust, item, etype, _ = rows(sim, items)
    buy = etype == EVENT_TYPES.index("purchase")
    pairs = list(zip(cust[buy].tolist(), item[buy].tolist(), strict=True))
    assert len(set(pairs)) < len(pairs)


def test_interactions_round_trip(items: ItemSpace, sim: Simulation) -> None:
    inter = Interactions.from_events(sim.events, items)
    assert len(inter) == len(sim.events)
    assert inter.customer_ids == sim.customer_ids[: len(inter.customer_ids)]


def test_presets() -> None:
    assert set(PRESETS) == {"visual", "balanced", "low-image-signal"}
    assert preset_config("visual").taste_strength == 0.9
    assert preset_config("balanced").taste_strength == 0.6
    assert preset_config("low-image-signal", seed=7).seed == 7
    with pytest.raises(InvalidInputError, match="unknown"):
        preset_config("nope")
    with pytest.raises(InvalidInputError, match="colour"):
        preset_config("visual", colour=1)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_customers", 0),
        ("n_customers", 2.5),
        ("days", 0),
        ("taste_strength", 1.5),
        ("taste_strength", -0.1),
        ("category_concentration", 0.0),
        ("popularity_bias", -1.0),
        ("repeat_rate", 2.0),
        ("outfit_rate", float("nan")),
        ("new_item_share", -0.5),
        ("new_item_days", 200.0),
        ("p_click", 1.1),
        ("p_purchase", "high"),
        ("sessions_per_customer", 0.5),
        ("events_per_session", 0.0),
        ("seed", -1),
    ],
)
def test_bad_config_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(InvalidInputError, match=field):
        SimulatorConfig(**{field: value})
