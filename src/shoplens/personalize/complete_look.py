"""Complete the look: compatible products from *other* categories, learned from baskets.

Two items are *bought together* when the same customer buys both within
:data:`BASKET_WINDOW_S` (2 hours). From such pairs in different categories a model learns

- which categories go with which (co-purchase counts between categories): a query item is
  completed with at most ``max_categories`` (3) partner categories, never its own;
- which items of those categories fit the query item.

:class:`CompleteTheLook` scores items with a small compatibility network over *content*
embeddings (image ⊕ text): two projection heads ``f``, ``g`` map an item to 32-d unit
vectors and ``compat(a, b) = (f(a)·g(b) + f(b)·g(a)) / 2``. It is trained with InfoNCE on
co-purchased cross-category pairs (in-batch negatives plus negatives drawn from the
partner's category) through :func:`shoplens.training.fit`, so it also completes items that
have no events at all. :class:`CoPurchaseLook` (raw co-purchase counts, visual similarity
where there are none) and :class:`VisualLook` (visual similarity only) are the baselines;
:func:`evaluate_complete_look` measures all three on held-out baskets.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from shoplens.errors import InvalidInputError, NotReadyError
from shoplens.personalize.types import EVENT_TYPES, Interactions, ItemSpace
from shoplens.training.config import TrainConfig

BASKET_WINDOW_S = 2 * 3600.0  # purchases by one customer this close are "bought together"
PURCHASE = EVENT_TYPES.index("purchase")
Completion = tuple[int, np.ndarray, np.ndarray]  # (category, (k,) item indices, (k,) scores)


def co_purchase_pairs(inter: Interactions, window_s: float = BASKET_WINDOW_S) -> np.ndarray:
    """(P, 2) int64 item pairs bought by the same customer at most ``window_s`` apart.

    Each pair appears once, earlier purchase first; pairs of the same item are left out.
    """
    buy = np.flatnonzero(inter.types == PURCHASE)
    cust, ts, item = inter.customers[buy], inter.timestamps[buy], inter.items[buy]  # (B,)
    out = []
    for d in range(1, len(buy)):
        i = np.arange(len(buy) - d)
        ok = (cust[i] == cust[i + d]) & (ts[i + d] - ts[i] <= window_s)
        if not ok.any():  # sorted by (customer, time): no pair further apart either
            break
        out.append(np.stack([item[i[ok]], item[i[ok] + d]], axis=1))
    if not out:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(out).astype(np.int64)
    return pairs[pairs[:, 0] != pairs[:, 1]]


def cross_category_pairs(pairs: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """The rows of (P, 2) ``pairs`` whose two items are in different categories."""
    return pairs[categories[pairs[:, 0]] != categories[pairs[:, 1]]]


class LookBase:
    """Category pairing learned from co-purchases, and the shared ``complete`` logic.

    Subclasses implement ``fit(train, items)`` (calling :meth:`_fit_pairing`) and
    ``_score(item, candidates)``.
    """

    name = "look"

    def __init__(
        self,
        max_categories: int = 3,
        min_share: float = 0.05,
        window_s: float = BASKET_WINDOW_S,
    ) -> None:
        if max_categories < 1:
            raise InvalidInputError(f"max_categories: {max_categories} must be at least 1")
        if not 0.0 <= min_share < 1.0:
            raise InvalidInputError(f"min_share: {min_share} is out of range [0, 1)")
        if window_s <= 0:
            raise InvalidInputError(f"window_s: {window_s} must be positive")
        self.max_categories = max_categories
        self.min_share = min_share
        self.window_s = window_s
        self.category_counts: np.ndarray | None = None  # (K, K) cross-category co-purchases
        self.categories = np.zeros(0, np.int64)  # (N,) category of every item
        self.category_names: list[str] = []

    def _fit_pairing(self, train: Interactions, items: ItemSpace) -> np.ndarray:
        """Learn the category pairing; returns the (P, 2) cross-category training pairs."""
        self.categories = np.asarray(items.categories, dtype=np.int64).copy()
        self.category_names = list(items.category_names)
        k = len(items.category_names)
        pairs = cross_category_pairs(co_purchase_pairs(train, self.window_s), self.categories)
        counts = np.zeros((k, k), np.int64)
        np.add.at(counts, (self.categories[pairs[:, 0]], self.categories[pairs[:, 1]]), 1)
        self.category_counts = counts + counts.T  # symmetric, zero diagonal
        return pairs

    def partner_categories(self, category: int) -> list[int]:
        """Up to ``max_categories`` categories most often bought with ``category``.

        A category needs at least ``min_share`` of the category's co-purchases; never
        ``category`` itself. Empty when the category was never bought with another.
        """
        counts = self._counts()
        if not 0 <= category < len(counts):
            raise InvalidInputError(f"category {category} is out of range [0, {len(counts)})")
        row = counts[category].astype(np.float64)
        row[category] = 0.0
        total = row.sum()
        if total == 0:
            return []
        order = np.argsort(-row, kind="stable")
        keep = [int(c) for c in order if row[c] > 0 and row[c] / total >= self.min_share]
        return keep[: self.max_categories]

    def complete(
        self, item: int, k_per_category: int = 4, categories: list[int] | None = None
    ) -> list[Completion]:
        """The ``k_per_category`` items most compatible with ``item`` in each partner category.

        Partner categories are the learned pairing of ``item``'s category (strongest
        first), or ``categories`` when given; ``item``'s own category is never returned.
        Each entry is ``(category, (k,) item indices, (k,) scores)``, best first (fewer
        than ``k`` when the category has fewer items).
        """
        counts = self._counts()
        n = len(self.categories)
        if not 0 <= int(item) < n:
            raise InvalidInputError(f"item {item} is out of range [0, {n})")
        if k_per_category < 1:
            raise InvalidInputError(f"k_per_category: {k_per_category} must be at least 1")
        own = int(self.categories[item])
        if categories is None:
            targets = self.partner_categories(own)
        else:
            bad = [c for c in categories if not 0 <= int(c) < len(counts)]
            if bad:
                raise InvalidInputError(f"categories {bad} are out of range [0, {len(counts)})")
            targets = list(dict.fromkeys(int(c) for c in categories if int(c) != own))
        out: list[Completion] = []
        for cat in targets:
            cand = np.flatnonzero(self.categories == cat)  # (M,)
            if len(cand) == 0:
                continue
            scores = np.asarray(self._score(int(item), cand), dtype=np.float32)  # (M,)
            top = np.argsort(-scores, kind="stable")[:k_per_category]
            out.append((cat, cand[top].astype(np.int64), scores[top]))
        return out

    def _score(self, item: int, candidates: np.ndarray) -> np.ndarray:
        """(M,) compatibility of ``item`` with each of (M,) ``candidates``."""
        raise NotImplementedError

    def _counts(self) -> np.ndarray:
        if self.category_counts is None:
            raise NotReadyError(f"{type(self).__name__} is not fitted: call fit() first")
        return self.category_counts


class VisualLook(LookBase):
    """Baseline: learned category pairing, items ranked by image cosine similarity."""

    name = "visual"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image = np.zeros((0, 0), np.float32)  # (N, D) unit image embeddings

    def fit(self, train: Interactions, items: ItemSpace) -> None:
        """Learn the category pairing from ``train``'s co-purchases."""
        self._fit_pairing(train, items)
        self.image = np.ascontiguousarray(items.image, dtype=np.float32)

    def _score(self, item: int, candidates: np.ndarray) -> np.ndarray:
        return np.asarray(self.image[candidates] @ self.image[item])


class CoPurchaseLook(VisualLook):
    """Baseline: items most often bought with the query item, then visual similarity.

    Score = co-purchase count + 0.5 * image cosine, so co-purchased items come first (by
    count) and items never bought with the query (e.g. new ones) follow by similarity.
    """

    name = "co-purchase"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pair_keys = np.zeros(0, np.int64)  # (U,) sorted a * N + b of co-purchased pairs
        self.pair_counts = np.zeros(0, np.int64)  # (U,) times bought together

    def fit(self, train: Interactions, items: ItemSpace) -> None:
        """Learn the category pairing and the item co-purchase counts from ``train``."""
        pairs = self._fit_pairing(train, items)
        self.image = np.ascontiguousarray(items.image, dtype=np.float32)
        both = np.concatenate([pairs, pairs[:, ::-1]])  # (2P, 2)
        keys = both[:, 0] * len(items) + both[:, 1]
        self.pair_keys, self.pair_counts = np.unique(keys, return_counts=True)

    def _score(self, item: int, candidates: np.ndarray) -> np.ndarray:
        n = len(self.categories)
        lo, hi = np.searchsorted(self.pair_keys, [item * n, (item + 1) * n])
        count = np.zeros(n, np.float32)
        count[self.pair_keys[lo:hi] - item * n] = self.pair_counts[lo:hi]
        return count[candidates] + 0.5 * super()._score(item, candidates)


def content_features(items: ItemSpace) -> np.ndarray:
    """(N, D [+ Dt]) float32 content features: image ⊕ text embeddings."""
    parts = [items.image] if items.text is None else [items.image, items.text]
    return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)


def _head(in_dim: int, hidden: int, dim: int) -> nn.Module:
    """A projection head: linear when ``hidden`` is 0, else a one-hidden-layer MLP."""
    if hidden == 0:
        return nn.Linear(in_dim, dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class CompatNet(nn.Module):
    """Two projection heads over content features; symmetric dot-product compatibility."""

    def __init__(
        self, in_dim: int, dim: int = 32, hidden: int = 64, temperature: float = 0.1
    ) -> None:
        super().__init__()
        self.f = _head(in_dim, hidden, dim)
        self.g = _head(in_dim, hidden, dim)
        self.temperature = temperature

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(..., in_dim) features -> two (..., dim) unit vectors ``f(x)``, ``g(x)``."""
        return F.normalize(self.f(x), dim=-1), F.normalize(self.g(x), dim=-1)

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """InfoNCE: each anchor's partner against the batch's partners and hard negatives."""
        fa, ga = self.embed(batch["a"])  # (B, d)
        fb, gb = self.embed(batch["b"])  # (B, d)
        fn, gn = self.embed(batch["neg"])  # (B, M, d) items of the partner's category
        in_batch = (fa @ gb.T + ga @ fb.T) / 2  # (B, B) compat(a_i, b_j)
        hard = ((fa[:, None] * gn).sum(-1) + (ga[:, None] * fn).sum(-1)) / 2  # (B, M)
        target = torch.arange(len(fa), device=fa.device)
        forward = F.cross_entropy(torch.cat([in_batch, hard], 1) / self.temperature, target)
        backward = F.cross_entropy(in_batch.T / self.temperature, target)
        loss = (forward + backward) / 2
        return {"loss": loss, "accuracy": (in_batch.argmax(1) == target).float().mean()}


class CompatPairs(Dataset[int]):
    """Co-purchased pairs (both directions) with negatives from the partner's category.

    A sample is a pair number; :meth:`collate` gathers a batch's content features in one
    go. Negatives are redrawn every epoch from ``(seed, epoch)``, so a resumed run sees
    the same ones.
    """

    def __init__(
        self,
        features: np.ndarray,
        pairs: np.ndarray,
        categories: np.ndarray,
        n_negatives: int = 8,
        seed: int = 0,
    ) -> None:
        self.features = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        self.pairs = np.concatenate([pairs, pairs[:, ::-1]]).astype(np.int64)  # (2P, 2)
        self.categories = categories
        self.n_negatives = n_negatives
        self.seed = seed
        self.by_category = [
            np.flatnonzero(categories == c) for c in range(int(categories.max()) + 1)
        ]
        self.negatives = np.zeros((len(self.pairs), n_negatives), np.int64)  # (2P, M)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's negatives: random items of each pair's partner category."""
        rng = np.random.default_rng([self.seed, epoch])
        partner_cat = self.categories[self.pairs[:, 1]]
        for c in np.unique(partner_cat):
            rows = np.flatnonzero(partner_cat == c)
            pool = self.by_category[c]
            self.negatives[rows] = pool[
                rng.integers(0, len(pool), size=(len(rows), self.n_negatives))
            ]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, rows: list[int]) -> dict[str, Tensor]:
        """Pair numbers -> ``a``, ``b`` (B, D) and ``neg`` (B, M, D) content features."""
        idx = np.asarray(rows, dtype=np.int64)
        pairs = torch.from_numpy(self.pairs[idx])  # (B, 2)
        neg = torch.from_numpy(self.negatives[idx])  # (B, M)
        return {
            "a": self.features[pairs[:, 0]],
            "b": self.features[pairs[:, 1]],
            "neg": self.features[neg],
        }


def default_train_config() -> TrainConfig:
    """A small CPU config: the model and data are tiny."""
    return TrainConfig(
        epochs=20,
        batch_size=256,
        lr=1e-2,
        weight_decay=1e-4,
        warmup_ratio=0.05,
        device="cpu",
        log_every=1000,
    )


class CompleteTheLook(LookBase):
    """Learned complete-the-look: category pairing plus a content compatibility model.

    Works for any item with content embeddings, including items without events. Fitted
    objects pickle (the network is kept on CPU; item embeddings are numpy arrays).
    """

    name = "complete-the-look"

    def __init__(
        self,
        train: TrainConfig | None = None,
        run_dir: str | Path | None = None,
        dim: int = 32,
        hidden: int = 64,
        n_negatives: int = 8,
        temperature: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.train_config = train or default_train_config()
        self.run_dir = None if run_dir is None else str(run_dir)
        self.dim, self.hidden = dim, hidden
        self.n_negatives, self.temperature = n_negatives, temperature
        self.net: CompatNet | None = None
        self.item_f = np.zeros((0, dim), np.float32)  # (N, dim) f(x) of every item
        self.item_g = np.zeros((0, dim), np.float32)  # (N, dim) g(x) of every item
        self.train_metrics: dict[str, float] = {}

    def fit(self, train: Interactions, items: ItemSpace) -> None:
        """Learn the category pairing and train the compatibility model on ``train``."""
        from shoplens.training.checkpoint import load_model_weights
        from shoplens.training.loop import fit

        pairs = self._fit_pairing(train, items)
        if len(pairs) == 0:
            raise InvalidInputError(
                "complete-the-look needs purchases of items from different categories by "
                f"the same customer within {self.window_s / 3600:g} hours; there are none"
            )
        features = content_features(items)
        data = CompatPairs(
            features, pairs, self.categories, self.n_negatives, self.train_config.seed
        )
        cfg = self.train_config
        if len(data) < cfg.batch_size:  # few pairs: one smaller batch per epoch
            cfg = replace(cfg, batch_size=len(data))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            net = CompatNet(features.shape[1], self.dim, self.hidden, self.temperature)
        with tempfile.TemporaryDirectory(prefix="shoplens-look-") as tmp:
            run_dir = self.run_dir or tmp
            result = fit(net, data, cfg, run_dir=run_dir, resume=False, collate_fn=data.collate)
            net = net.cpu()
            if cfg.ema_decay is not None:  # the final weights are the EMA weights
                load_model_weights(net, result.model_dir / "weights.pt")
        self.train_metrics = dict(result.metrics)
        self.net = net.eval()
        self.item_f, self.item_g = self.embed_features(features)

    def embed_features(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(M, D) content features -> (M, dim) ``f`` and ``g`` embeddings (numpy float32).

        For products outside the fitted item space (e.g. added after training).
        """
        if self.net is None:
            raise NotReadyError("CompleteTheLook is not fitted: call fit() first")
        with torch.no_grad():
            f, g = self.net.embed(torch.from_numpy(np.asarray(features, dtype=np.float32)))
        return f.numpy(), g.numpy()

    def _score(self, item: int, candidates: np.ndarray) -> np.ndarray:
        f, g = self.item_f, self.item_g
        return np.asarray((f[candidates] @ g[item] + g[candidates] @ f[item]) / 2)


def evaluate_complete_look(
    model: LookBase,
    test: Interactions,
    items: ItemSpace,
    k: int = 4,
    max_queries: int | None = 5000,
    seed: int = 0,
    only: np.ndarray | None = None,
) -> dict[str, float]:
    """How well ``model`` completes held-out baskets.

    Every item bought together (same customer, within 2 hours) with items of other
    categories in ``test`` is a query (only items in ``only``, when given: e.g. the items
    without training events); those items are its true partners. Metrics over queries (at
    most ``max_queries``, a seeded sample):

    - ``hit_rate@k``: share of queries with a true partner among ``complete(query, k)``;
    - ``recall@k``: share of true partners returned (category choice and ranking);
    - ``category_recall``: share of true partners whose category ``complete`` chose;
    - ``recall_given_category@k``: share of true partners among the ``k`` best of their
      own category (ranking alone);
    - ``random_recall@k`` and ``random_recall_given_category@k``: what ranking the items
      of a category at random would get for the two recalls (``k`` / category size).
    """
    pairs = cross_category_pairs(
        co_purchase_pairs(test, getattr(model, "window_s", BASKET_WINDOW_S)), items.categories
    )
    both = np.unique(np.concatenate([pairs, pairs[:, ::-1]]), axis=0)  # (P, 2) sorted
    queries = np.unique(both[:, 0])
    if only is not None:
        queries = queries[np.isin(queries, np.asarray(only, dtype=np.int64))]
    if max_queries is not None and len(queries) > max_queries:
        rng = np.random.default_rng(seed)
        queries = np.sort(rng.choice(queries, size=max_queries, replace=False))
    sizes = np.bincount(items.categories, minlength=len(items.category_names))
    hits, found, cat_found, given_found, n_partners = 0, 0, 0, 0, 0
    random_found, random_given = 0.0, 0.0
    bounds = np.searchsorted(both[:, 0], np.stack([queries, queries + 1]))  # (2, Q)
    for q, lo, hi in zip(queries.tolist(), bounds[0], bounds[1], strict=True):
        partners = both[lo:hi, 1]  # (n_q,) true partners of q
        result = model.complete(q, k_per_category=k)
        returned = {int(i) for _, idx, _ in result for i in idx}
        chosen = {c for c, _, _ in result}
        got = sum(int(p) in returned for p in partners)
        hits += got > 0
        found += got
        n_partners += len(partners)
        for p in partners.tolist():
            pc = int(items.categories[p])
            chance = min(1.0, k / max(1, int(sizes[pc])))
            cat_found += pc in chosen
            random_found += chance * (pc in chosen)
            random_given += chance
            ranked = model.complete(q, k_per_category=k, categories=[pc])
            given_found += bool(ranked) and p in set(ranked[0][1].tolist())
    nq = max(1, len(queries))
    npart = max(1, n_partners)
    return {
        "queries": float(len(queries)),
        "partners": float(n_partners),
        f"hit_rate@{k}": hits / nq,
        f"recall@{k}": found / npart,
        "category_recall": cat_found / npart,
        f"recall_given_category@{k}": given_found / npart,
        f"random_recall@{k}": random_found / npart,
        f"random_recall_given_category@{k}": random_given / npart,
    }
