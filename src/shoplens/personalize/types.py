"""Shared types of the personalization package.

Events are stored by sku (the retailer's stable key). Models work on an :class:`ItemSpace`:
items numbered ``0..N-1`` (an *item index*), each with its catalogue product id, sku,
category and content embeddings. A customer is an :class:`History` of events in time
order, so every recommender serves known customers, new customers (their first events in
the session) and the evaluation's held-back histories through the same call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase")
# How much an event of each type says about a customer's taste (implicit-feedback weight).
EVENT_WEIGHTS: dict[str, float] = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0}
TYPE_WEIGHTS = np.array([EVENT_WEIGHTS[t] for t in EVENT_TYPES], dtype=np.float32)
SIMULATED_PREFIX = "sim-"  # customer and event ids the simulator writes start with this


@dataclass(frozen=True)
class Event:
    """One validated customer event (``timestamp`` in Unix seconds, UTC)."""

    event_id: str
    customer_id: str
    sku: str
    type: str
    timestamp: float
    simulated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "customer_id": self.customer_id,
            "sku": self.sku,
            "type": self.type,
            "timestamp": self.timestamp,
            "simulated": self.simulated,
        }


@dataclass
class ItemSpace:
    """The recommendable items: index ``i`` is product ``ids[i]`` with sku ``skus[i]``."""

    ids: np.ndarray  # (N,) int64 catalogue product ids
    skus: list[str]
    categories: np.ndarray  # (N,) int64 codes into category_names
    category_names: list[str]
    image: np.ndarray  # (N, D) float32, L2-normalised image embeddings
    text: np.ndarray | None = None  # (N, Dt) float32, L2-normalised text embeddings
    encoder: str = ""  # the image encoder spec the embeddings came from

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(self.skus) != n or len(self.categories) != n or self.image.shape[0] != n:
            raise ValueError("ItemSpace arrays must all have one row per item")
        if self.text is not None and self.text.shape[0] != n:
            raise ValueError("ItemSpace.text must have one row per item")
        self._index = {s: i for i, s in enumerate(self.skus)}

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, sku: str) -> int | None:
        return self._index.get(sku)


@dataclass
class History:
    """One customer's events in time order, as item indices."""

    items: np.ndarray  # (L,) int64 item indices
    types: np.ndarray  # (L,) int64 codes into EVENT_TYPES
    timestamps: np.ndarray  # (L,) float64 Unix seconds, non-decreasing

    @classmethod
    def empty(cls) -> History:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))

    def __len__(self) -> int:
        return len(self.items)

    def weights(self) -> np.ndarray:
        """(L,) float32 implicit-feedback weight of each event."""
        return TYPE_WEIGHTS[self.types]


@dataclass
class Interactions:
    """All events of a period as parallel arrays, sorted by (customer, timestamp)."""

    customers: np.ndarray  # (E,) int64 codes into customer_ids
    items: np.ndarray  # (E,) int64 item indices
    types: np.ndarray  # (E,) int64 codes into EVENT_TYPES
    timestamps: np.ndarray  # (E,) float64
    customer_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def histories(self) -> list[History]:
        """One :class:`History` per customer code (empty for customers without events)."""
        out = [History.empty() for _ in self.customer_ids]
        if len(self.items) == 0:
            return out
        bounds = np.flatnonzero(np.diff(self.customers)) + 1
        for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(self.items)], strict=True):
            c = int(self.customers[start])
            out[c] = History(
                self.items[start:stop], self.types[start:stop], self.timestamps[start:stop]
            )
        return out

    def subset(self, mask: np.ndarray) -> Interactions:
        """The events where ``mask`` is true (same customer codes)."""
        return Interactions(
            self.customers[mask],
            self.items[mask],
            self.types[mask],
            self.timestamps[mask],
            list(self.customer_ids),
        )

    @classmethod
    def from_events(cls, events: Sequence[Event], items: ItemSpace) -> Interactions:
        """Events (any order) -> sorted arrays; events on skus outside ``items`` are dropped."""
        keep = [(e, items.index_of(e.sku)) for e in events]
        keep = [(e, i) for e, i in keep if i is not None]
        customer_ids = sorted({e.customer_id for e, _ in keep})
        code = {c: n for n, c in enumerate(customer_ids)}
        type_code = {t: n for n, t in enumerate(EVENT_TYPES)}
        customers = np.array([code[e.customer_id] for e, _ in keep], dtype=np.int64)
        ts = np.array([e.timestamp for e, _ in keep], dtype=np.float64)
        order = np.lexsort((ts, customers))
        return cls(
            customers[order],
            np.array([i for _, i in keep], dtype=np.int64)[order],
            np.array([type_code[e.type] for e, _ in keep], dtype=np.int64)[order],
            ts[order],
            customer_ids,
        )


class Recommender(Protocol):
    """What every recommender does: learn from interactions, rank items for histories."""

    name: str

    def fit(self, train: Interactions, items: ItemSpace) -> None: ...

    def recommend(
        self, histories: Sequence[History], k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` items per history: ((B, k) int64 item indices, (B, k) float32 scores).

        Rows are padded with -1 (score -inf) when fewer than ``k`` items can be ranked.
        With ``exclude_seen`` the history's own items are never returned.
        """
        ...


def unseen(items: np.ndarray, seen: np.ndarray, n_items: int) -> np.ndarray:
    """(M,) bool: which ``items`` (indices below ``n_items``) are not in ``seen``.

    What ``~np.isin(items, seen)`` gives, from a table of ``n_items`` bools: ~25x faster
    for a few hundred items, and serving runs it for every retriever of every request.
    Negative ``items`` (padding) count as unseen; ``seen`` outside ``[0, n_items)`` is
    ignored (it matches no item).
    """
    seen = np.asarray(seen, np.int64)
    table = np.zeros(n_items + 1, bool)  # the last slot answers for negative items
    table[seen[(seen >= 0) & (seen < n_items)]] = True
    items = np.asarray(items, np.int64)
    return ~table[np.where(items >= 0, items, n_items)]


def top_k_rows(
    scores: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top ``k`` of (B, N) ``scores`` (higher first), skipping ``exclude[b]``.

    Non-finite scores are never returned; rows are padded with -1 / -inf.
    """
    scores = np.array(scores, dtype=np.float32, copy=True)
    b, n = scores.shape
    if exclude is not None:
        for row, seen in enumerate(exclude):
            if len(seen):
                scores[row, seen] = -np.inf
    k_eff = min(k, n)
    idx = np.full((b, k), -1, dtype=np.int64)
    val = np.full((b, k), -np.inf, dtype=np.float32)
    if k_eff == 0:
        return idx, val
    part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    top = np.take_along_axis(part, order, axis=1)
    top_scores = np.take_along_axis(part_scores, order, axis=1)
    finite = np.isfinite(top_scores)
    idx[:, :k_eff] = np.where(finite, top, -1)
    val[:, :k_eff] = np.where(finite, top_scores, -np.inf)
    return idx, val
