"""Customer conditioning check on SIMULATED customers: taste vectors from their events,
samples with vs without the taste (same seeds), cosine to the taste in the conditioning
encoder's image space, and a paired Wilcoxon test."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from shoplens.errors import InvalidInputError, NotFoundError
from shoplens.generate.fidelity import paired_comparison

if TYPE_CHECKING:
    from shoplens.catalog.store import Catalog
    from shoplens.generate.pipeline import Generator

Say = Callable[[str], None]
HISTORY_LIMIT = 200  # a customer's most recent events pooled into their taste
SHOWN = 4  # customers whose samples go into the grid


def customer_tastes(
    catalog: Catalog, customer_ids: Sequence[str], encoder: str
) -> tuple[np.ndarray, list[str], list[list[str]]]:
    """Taste vectors (B, E) of customers: their recent history items embedded by
    ``encoder`` (the generator's conditioning encoder), pooled with ``pool_customer``.

    Also each customer's top category (events weighted by type) and history skus (newest first).
    """
    from shoplens.personalize.customer import pool_customer
    from shoplens.personalize.events import EventStore
    from shoplens.personalize.items import encoded_item_space
    from shoplens.personalize.service import history_of
    from shoplens.personalize.types import EVENT_WEIGHTS

    with EventStore.open(catalog) as store:
        events = {c: store.customer_events(c, limit=HISTORY_LIMIT) for c in customer_ids}
    products = {}
    for sku in dict.fromkeys(e.sku for evs in events.values() for e in evs):
        try:
            products[sku] = catalog.get(sku)
        except NotFoundError:
            continue  # deleted since the event
    if not products:
        raise InvalidInputError("the customers have no events on current products")
    prods = list(products.values())
    items = encoded_item_space(catalog, prods, encoder)
    histories = [history_of(events[c], items) for c in customer_ids]
    tastes = pool_customer(histories, items, use_text=False)  # (B, E)
    top: list[str] = []
    recent: list[list[str]] = []
    for c in customer_ids:
        weight: dict[str, float] = {}
        for e in events[c]:
            if e.sku in products:
                cat = products[e.sku].category
                weight[cat] = weight.get(cat, 0.0) + EVENT_WEIGHTS[e.type]
        top.append(max(sorted(weight), key=lambda k: weight[k]) if weight else "")
        recent.append(list(dict.fromkeys(e.sku for e in reversed(events[c]) if e.sku in products)))
    return tastes, top, recent


def pick_customers(catalog: Catalog, n: int, seed: int) -> list[str]:
    """``n`` SIMULATED customers of the catalogue, drawn with ``seed`` (sorted ids)."""
    from shoplens.personalize.events import EventStore

    with EventStore.open(catalog) as store:
        ids = store.customer_ids(limit=1_000_000, simulated=True)
    if not ids:
        return []
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(ids, size=min(n, len(ids)), replace=False).tolist())


def customer_conditioning(
    generator: Generator,
    catalog: Catalog,
    customer_ids: Sequence[str],
    *,
    per_customer: int,
    guidance: float,
    steps: int,
    seed: int,
    scheduler: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Cosine of samples to each (SIMULATED) customer's taste with vs without the taste.

    Two settings: no category, and the customer's top category. Customer b's images use
    seeds ``seed + 100 b + i`` with and without the taste (paired, independent across
    customers). Returns the JSON block and the images for a grid.
    """
    from shoplens.registry import get_encoder

    tastes, top, recent = customer_tastes(catalog, customer_ids, generator.cond_encoder)
    encoder = get_encoder(generator.cond_encoder)
    known = set(generator.categories)
    settings: dict[str, Any] = {}
    shown: dict[str, list[Image.Image]] = {}
    for setting in ("any category", "top category"):
        cond, plain = [], []
        for b, cid in enumerate(customer_ids):
            category = top[b] if setting == "top category" and top[b] in known else None
            if (setting == "top category" and category is None) or not tastes[b].any():
                continue  # no known top category / no history on current products
            kw: dict[str, Any] = {
                "n": per_customer, "seed": seed + 100 * b, "category": category,
                "guidance": guidance, "steps": steps, "scheduler": scheduler,
            }  # fmt: skip
            with_taste = [g.image for g in generator.generate(**kw, taste=tastes[b], customer=cid)]
            without = [g.image for g in generator.generate(**kw)]
            t = tastes[b] / float(np.linalg.norm(tastes[b]))
            cond.append(float((encoder.encode_images(with_taste) @ t).mean()))
            plain.append(float((encoder.encode_images(without) @ t).mean()))
            if setting == "any category" and len(shown) < SHOWN:
                shown[cid] = [*with_taste, *without]
        if cond:
            settings[setting] = paired_comparison(np.array(cond), np.array(plain))
    return {
        "simulated": True,
        "customers": list(customer_ids),
        "per_customer": per_customer,
        "encoder": generator.cond_encoder,
        "settings": settings,
    }, {"samples": shown, "recent": dict(zip(customer_ids, recent, strict=True))}


def customers_check(
    generator: Generator,
    catalog: str | None,
    customers: int,
    *,
    seed: int,
    say: Say,
    **kwargs: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`customer_conditioning` on ``customers`` SIMULATED customers of ``catalog``."""
    from shoplens.catalog.store import Catalog

    if customers == 0 or not catalog:
        return {"simulated": True, "skipped": "customers=0"}, {}
    with Catalog.open(catalog) as cat:
        ids = pick_customers(cat, customers, seed)
        if not ids:
            return {"simulated": True, "skipped": f"no simulated customers in {catalog!r}"}, {}
        say(f"customer conditioning: {len(ids)} SIMULATED customers ...")
        block, shown = customer_conditioning(generator, cat, ids, seed=seed, **kwargs)
    return block, {**shown, "catalog": catalog}
