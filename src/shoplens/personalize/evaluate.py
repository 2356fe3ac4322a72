"""Offline evaluation of recommenders: temporal split, top-k metrics, cold-start slice.

The split holds out each evaluated customer's *last* events (or everything after a global
cut time) and asks the models to rank, from the customer's train history, the items they
went on to interact with. Relevance is restricted to items *new to the customer* (not in
their train history): with ``exclude_seen`` the models never return history items, so we
evaluate the discovery of new items, not re-visits. The cold-start slice keeps customers
with at least one held-out item that has no train events at all, relevance restricted to
those items: only content models can win there.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shoplens.personalize import metrics as M
from shoplens.personalize.types import History, Interactions, ItemSpace, Recommender

BATCH = 1024  # histories recommended at once


@dataclass
class Split:
    """A train / held-out split for evaluation.

    ``train``: every event except the evaluated customers' held-out ones (cut-time mode:
    every event at or before the cut). ``histories[i]``, ``relevant[i]``: the train history
    and the unique held-out item indices not in that history of customer ``customers[i]``
    (a code of ``train.customer_ids``). ``cold_items``: (N,) bool, items without train
    events.
    """

    train: Interactions
    histories: list[History]
    relevant: list[np.ndarray]
    customers: np.ndarray  # (B,) int64 customer codes
    cold_items: np.ndarray  # (N,) bool

    def summary(self) -> dict[str, Any]:
        """Counts of the split (JSON-able)."""
        cold = self.cold_items
        return {
            "train_events": len(self.train),
            "customers": len(self.customers),
            "items": len(cold),
            "cold_items": int(cold.sum()),
            "relevant_items": int(sum(len(r) for r in self.relevant)),
            "customers_with_cold_relevant": int(
                sum(bool(cold[r].any()) for r in self.relevant if len(r))
            ),
        }


def temporal_split(
    data: Interactions,
    holdout: int = 5,
    min_train: int = 3,
    cut_time: float | None = None,
    n_items: int | None = None,
) -> Split:
    """Hold out the last events of each customer, or everything after ``cut_time``.

    Default mode: customers with at least ``min_train + holdout`` events have their last
    ``holdout`` events held out (other customers' later events stay in train: a
    leave-last-out split, not a global time cut). Cut-time mode (``cut_time`` given):
    train = events with timestamp <= ``cut_time``; customers with at least ``min_train``
    train events and events after the cut are evaluated on those (``holdout`` is not used).
    Customers whose held-out events only re-visit train-history items are dropped from
    evaluation (default mode: their held-out events go back into train).

    ``n_items``: size of the item space (default: the largest item index + 1).
    """
    if holdout < 1 or min_train < 0:
        raise ValueError("holdout must be >= 1 and min_train >= 0")
    c, ts = data.customers, data.timestamps
    if len(c) > 1 and (np.any(np.diff(c) < 0) or np.any((np.diff(c) == 0) & (np.diff(ts) < 0))):
        raise ValueError("interactions must be sorted by (customer, timestamp)")
    n = int(n_items) if n_items is not None else int(data.items.max(initial=-1)) + 1
    n_cust = max(len(data.customer_ids), int(c.max(initial=-1)) + 1)
    counts = np.bincount(c, minlength=n_cust)  # (U,)
    if cut_time is None:
        first = np.r_[0, np.cumsum(counts)[:-1]]  # (U,) position of each customer's first event
        from_end = counts[c] - (np.arange(len(c)) - first[c])  # (E,) 1 = last event
        test = (counts >= min_train + holdout)[c] & (from_end <= holdout)
    else:
        test = ts > cut_time
    train_hist = data.subset(~test).histories()
    test_hist = data.subset(test).histories()
    customers, histories, relevant = [], [], []
    for code in np.unique(c[test]).tolist():
        past = train_hist[code]
        if len(past) < min_train:
            continue
        new = np.setdiff1d(test_hist[code].items, past.items)  # unique, sorted
        if len(new):
            customers.append(code)
            histories.append(past)
            relevant.append(new.astype(np.int64))
    evaluated = np.zeros(n_cust, dtype=bool)
    evaluated[customers] = True
    if cut_time is None:
        test &= evaluated[c]  # dropped customers' held-out events go back into train
    train = data.subset(~test)
    cold = np.bincount(train.items, minlength=n)[:n] == 0
    return Split(train, histories, relevant, np.asarray(customers, dtype=np.int64), cold)


def _slice_metrics(
    ranked: np.ndarray,
    relevant: Sequence[np.ndarray],
    ks: tuple[int, int, int],
    cold: np.ndarray,
) -> dict[str, Any]:
    """Mean metrics of the rows of ``ranked`` (B, >=max(ks)) against ``relevant``."""
    k_main, k_recall, k_map = ks
    names = [
        f"ndcg@{k_main}",
        f"recall@{k_recall}",
        f"map@{k_map}",
        f"precision@{k_main}",
        f"hit_rate@{k_main}",
        f"coverage@{k_main}",
        f"cold_share@{k_main}",
    ]
    if len(relevant) == 0:
        return {**dict.fromkeys(names), "n_customers": 0}
    top = ranked[:, :k_main]
    filled = top[top >= 0]
    values = [
        M.ndcg_at_k(ranked, relevant, k_main).mean(),
        M.recall_at_k(ranked, relevant, k_recall).mean(),
        M.map_at_k(ranked, relevant, k_map).mean(),
        M.precision_at_k(ranked, relevant, k_main).mean(),
        M.hit_rate_at_k(ranked, relevant, k_main).mean(),
        M.coverage(top, len(cold)),
        cold[filled].mean() if len(filled) else 0.0,
    ]
    return {
        **{name: float(v) for name, v in zip(names, values, strict=True)},
        "n_customers": len(relevant),
    }


def evaluate(
    recommenders: Mapping[str, Recommender],
    split: Split,
    items: ItemSpace,
    ks: tuple[int, int, int] = (10, 20, 12),
    fit: bool = True,
    batch_size: int = BATCH,
) -> dict[str, dict[str, Any]]:
    """Fit (unless ``fit=False``) and score each recommender on ``split``.

    ``ks = (k, k_recall, k_map)``: nDCG, precision, hit rate, coverage and the share of
    cold items among the shown slots (``cold_share``) at ``k``; recall at ``k_recall``;
    AP at ``k_map``. Each model recommends ``max(ks)`` items per evaluated customer
    (``exclude_seen=True``), ``batch_size`` histories at a time.

    Returns ``{key: {metric: mean, ..., "n_customers", "cold_start_items": {same metrics
    on customers with a cold relevant item, relevance = the cold items only},
    "fit_seconds", "recommend_seconds", "name"}}`` (JSON-able; metrics None when a slice
    is empty).
    """
    n = len(items)
    depth = max(ks)
    cold = np.ones(n, dtype=bool)  # items beyond the split's item count had no train events
    cold[: min(n, len(split.cold_items))] = split.cold_items[:n]
    cold_rel = [r[cold[r]] for r in split.relevant]
    in_slice = np.array([len(r) > 0 for r in cold_rel], dtype=bool)
    results: dict[str, dict[str, Any]] = {}
    for key, rec in recommenders.items():
        t0 = time.perf_counter()
        if fit:
            rec.fit(split.train, items)
        t1 = time.perf_counter()
        ranked = np.full((len(split.histories), depth), -1, dtype=np.int64)  # (B, depth)
        for s in range(0, len(split.histories), batch_size):
            chunk = split.histories[s : s + batch_size]
            idx, _ = rec.recommend(chunk, depth, exclude_seen=True)
            w = min(depth, idx.shape[1])
            ranked[s : s + len(chunk), :w] = idx[:, :w]
        t2 = time.perf_counter()
        res = _slice_metrics(ranked, split.relevant, ks, cold)
        res["cold_start_items"] = _slice_metrics(
            ranked[in_slice], [r for r, ok in zip(cold_rel, in_slice, strict=True) if ok], ks, cold
        )
        res["fit_seconds"] = round(t1 - t0, 4) if fit else None
        res["recommend_seconds"] = round(t2 - t1, 4)
        res["name"] = getattr(rec, "name", key)
        results[key] = res
    return results


def ratio_table(
    results: Mapping[str, Mapping[str, Any]], baseline: str = "als"
) -> dict[str, dict[str, float | None]]:
    """Each model's metric / the baseline model's (None where the baseline is 0 or missing).

    Covers the ``@k`` metrics and the cold-start slice's (keys ``cold_start_items/<metric>``).
    """
    if baseline not in results:
        raise KeyError(f"baseline {baseline!r} not in results: {sorted(results)}")

    def flat(res: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in res.items() if "@" in k}
        cold = res.get("cold_start_items") or {}
        out.update({f"cold_start_items/{k}": v for k, v in cold.items() if "@" in k})
        return out

    base = flat(results[baseline])
    table: dict[str, dict[str, float | None]] = {}
    for name, res in results.items():
        row: dict[str, float | None] = {}
        for metric, value in flat(res).items():
            b = base.get(metric)
            row[metric] = None if value is None or b is None or b == 0 else value / b
        table[name] = row
    return table
