"""Fit, store and serve a catalogue's recommenders.

``fit_recommendations(catalog)`` learns from every stored event: the fused ranker (with
its retrievers) and complete-the-look, and publishes them as one build under
``catalogs/NAME/recs/`` (atomic ``current`` swap, like indexes). ``Recommendations`` loads
the current build and answers per customer from the customer's stored events *at request
time*, so a new customer's first events in a session already shape what they see.

Builds are pickles written and read only by shoplens under SHOPLENS_HOME; never load a
build from an untrusted source.
"""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shoplens.catalog.store import Catalog, Product
from shoplens.errors import InvalidInputError, NotReadyError
from shoplens.index.store import publish_build
from shoplens.personalize.events import EventStore
from shoplens.personalize.items import item_space
from shoplens.personalize.types import EVENT_TYPES, Event, History, Interactions, ItemSpace
from shoplens.search.engine import check_k

HISTORY_LIMIT = 200  # most recent events of a customer used at serving time
MAX_K = 100
TYPE_CODE = {t: n for n, t in enumerate(EVENT_TYPES)}


def recs_root(catalog: Catalog) -> Path:
    return catalog.root / "recs"


def history_of(events: Sequence[Event], items: ItemSpace) -> History:
    """A customer's events (any order) as a History over ``items`` (unknown skus dropped)."""
    rows = sorted(
        ((e.timestamp, items.index_of(e.sku), TYPE_CODE[e.type]) for e in events),
        key=lambda r: r[0],
    )
    rows = [r for r in rows if r[1] is not None]
    return History(
        items=np.array([r[1] for r in rows], dtype=np.int64),
        types=np.array([r[2] for r in rows], dtype=np.int64),
        timestamps=np.array([r[0] for r in rows], dtype=np.float64),
    )


def fit_recommendations(
    catalog: Catalog,
    *,
    encoder: str | None = None,
    say: Callable[[str], None] = lambda _: None,
    ranker_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit the fused ranker and complete-the-look on all stored events; publish a build.

    Returns the build's metadata. Raises NotReadyError when the catalogue has no index or
    no events.
    """
    from shoplens.personalize.complete_look import CompleteTheLook
    from shoplens.personalize.ranker import FusedRanker

    t0 = time.perf_counter()
    items = item_space(catalog, encoder)
    with EventStore.open(catalog) as store:
        stats = store.stats()
        events = list(store.iter_events())
    if not events:
        raise NotReadyError(
            f"catalogue {catalog.name!r} has no events: import some with 'shoplens events "
            "import FILE' or generate simulated ones with 'shoplens simulate events'"
        )
    data = Interactions.from_events(events, items)
    if len(data) == 0:
        raise NotReadyError("no stored event refers to an indexed product; rebuild the index")
    say(f"fitting on {len(data)} events of {len(data.customer_ids)} customers ...")
    ranker = FusedRanker(**(ranker_options or {}))
    ranker.fit(data, items)
    say(f"fused ranker fitted ({time.perf_counter() - t0:.0f}s); complete-the-look ...")
    look: CompleteTheLook | None = None
    look_note = "fitted"
    try:
        look = CompleteTheLook()
        look.fit(data, items)
    except InvalidInputError as e:  # e.g. no cross-category purchases to learn from
        look, look_note = None, f"unavailable: {e.message}"
        say(f"complete-the-look {look_note}")
    simulated = int(stats.get("simulated_events", 0))

    def write(folder: Path) -> dict[str, Any]:
        with (folder / "bundle.pkl").open("wb") as f:
            pickle.dump({"items": items, "ranker": ranker, "look": look}, f, protocol=5)
        return {
            "catalog": catalog.name,
            "catalog_version": catalog.version(),
            "encoder": items.encoder,
            "items": len(items),
            "events": len(data),
            "stored_events": int(stats.get("events", 0)),
            "customers": len(data.customer_ids),
            "simulated_events": simulated,
            "simulated": simulated > 0,
            "fitted_at": time.time(),
            "fit_s": round(time.perf_counter() - t0, 1),
            "complete_the_look": look_note,
        }

    build = publish_build(recs_root(catalog), write)
    return dict(json.loads((build / "meta.json").read_text()))


@dataclass
class Recommended:
    """One recommended product with why it was proposed."""

    product: Product
    score: float
    sources: list[str]


class Recommendations:
    """The current recommender build of a catalogue plus its live events store.

    ``ann``: on catalogues of at least :data:`~shoplens.personalize.ann.ANN_MIN_ITEMS`
    items the ranker's retrievers take their candidates from IVF indexes instead of
    scanning every item (built in the background; see :mod:`shoplens.personalize.ann`).
    """

    def __init__(self, catalog: Catalog, *, ann: bool = True) -> None:
        current = recs_root(catalog) / "current"
        if not (current / "bundle.pkl").is_file():
            raise NotReadyError(
                f"no recommender for catalogue {catalog.name!r}; run 'shoplens recommend fit "
                f"--catalog {catalog.name}'"
            )
        path = current.resolve()
        self.path = path
        self.meta: dict[str, Any] = json.loads((path / "meta.json").read_text())
        with (path / "bundle.pkl").open("rb") as f:
            bundle = pickle.load(f)
        self.catalog = catalog
        self.items: ItemSpace = bundle["items"]
        self.ranker = bundle["ranker"]
        self.look = bundle["look"]
        if hasattr(self.ranker, "num_threads"):
            # requests run in parallel threads: one OpenMP thread per LightGBM call (more
            # spin-wait on cores that other requests need)
            self.ranker.num_threads = 1
        enable = getattr(self.ranker, "enable_ann", None)
        self.ann = bool(ann and callable(enable) and enable())
        self.events = EventStore.open(catalog)
        # set by the service: batches concurrent requests' (history, k) into rank_many calls
        self.batcher: Any = None

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.events.close()

    @property
    def can_batch(self) -> bool:
        """Whether the ranker ranks several customers in one pass (``recommend_many``)."""
        return callable(getattr(self.ranker, "recommend_many", None))

    def rank_many(self, requests: Sequence[tuple[History, int]]) -> list[dict[str, Any]]:
        """The ranker's answers for several (history, k) requests: one ranker pass per
        distinct k (the ranker is thread-safe, requests may also run in parallel)."""
        out: dict[int, dict[str, Any]] = {}
        by_k: dict[int, list[int]] = {}
        for pos, (_, k) in enumerate(requests):
            by_k.setdefault(k, []).append(pos)
        for k, rows in by_k.items():
            if not self.can_batch:
                answers = [self.ranker.recommend_one(requests[r][0], k) for r in rows]
            else:
                answers = self.ranker.recommend_many([requests[r][0] for r in rows], k)
            for r, answer in zip(rows, answers, strict=True):
                out[r] = answer
        return [out[pos] for pos in range(len(requests))]

    def _rank(self, history: History, k: int) -> dict[str, Any]:
        batcher = self.batcher
        if batcher is not None and not batcher.closed:  # closed: a newer build took over
            return dict(batcher.call((history, k)))
        return dict(self.ranker.recommend_one(history, k))

    @property
    def candidates(self) -> str:
        """How candidates are found: "exact", "ann" or "exact (ann building)" / "exact
        (ann failed)" while the IVF indexes are not usable."""
        ann = self.ranker.__dict__.get("_ann") if self.ann else None
        if ann is None:
            return "exact"
        state = str(ann.state)
        return "ann" if state == "ready" else f"exact (ann {state})"

    def _products(self, idx: Sequence[int]) -> dict[int, Product]:
        ids = [int(self.items.ids[i]) for i in idx]
        by_id = self.catalog.get_by_ids(ids)
        return {i: by_id[pid] for i, pid in zip(idx, ids, strict=True) if pid in by_id}

    def for_customer(self, customer_id: str, k: int = 10) -> dict[str, Any]:
        """Recommendations for a customer from their stored events (fallback if none)."""
        k = check_k(k, MAX_K)
        if not customer_id or len(customer_id) > 128:
            raise InvalidInputError("customer id must be 1 to 128 characters")
        events = self.events.customer_events(customer_id, limit=HISTORY_LIMIT)
        history = history_of(events, self.items)
        out = self._rank(history, k)
        idx = [int(i) for i in out["items"] if int(i) >= 0]
        products = self._products(idx)
        results = [
            Recommended(products[i], float(s), list(src))
            for i, s, src in zip(out["items"], out["scores"], out["sources"], strict=False)
            if int(i) in products
        ]
        personalized = bool(out["personalized"])
        return {
            "customer_id": customer_id,
            "known_customer": bool(events),
            "history_events": len(history),
            "simulated": bool(events) and all(e.simulated for e in events),
            "personalized": personalized,
            "fallback": None if personalized else "popular",
            "results": results,
        }

    def complete_the_look(self, sku: str, k: int = 4) -> dict[str, Any]:
        """Compatible products from other categories, grouped by category."""
        k = check_k(k, MAX_K)
        product = self.catalog.get(sku)  # NotFoundError for unknown skus
        item = self.items.index_of(sku)
        if item is None:
            raise NotReadyError(
                f"product {sku!r} is not indexed yet; run 'shoplens index build' and "
                "'shoplens recommend fit'"
            )
        if self.look is None:
            raise NotReadyError(
                "complete-the-look is not available for this catalogue: "
                + str(self.meta.get("complete_the_look", "not fitted")).removeprefix(
                    "unavailable: "
                )
            )
        groups = self.look.complete(item, k_per_category=k)
        out = []
        for cat, idx, scores in groups:
            products = self._products([int(i) for i in idx])
            out.append(
                {
                    "category": self.items.category_names[int(cat)],
                    "results": [
                        Recommended(products[int(i)], float(s), ["complete-the-look"])
                        for i, s in zip(idx, scores, strict=True)
                        if int(i) in products
                    ],
                }
            )
        return {"sku": product.sku, "category": product.category, "groups": out}
