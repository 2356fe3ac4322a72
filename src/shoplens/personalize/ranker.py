"""Multi-retriever candidates and a learned fused re-ranker (recommender name ``fused``).

Stage 1, candidates: several retrievers each propose their top items for a history (by
default the content ANN on the pooled customer embedding, ALS, co-visitation, the
sequential model and popularity); the union, ordered by each item's best rank over the
retrievers, is capped at ``max_candidates``.

Stage 2, ranking: a LightGBM lambdarank model scores every (customer, candidate) pair from
features (:data:`BASE_FEATURES` plus a score and a rank per retriever): every retriever's
score of the candidate (also of retrievers that did not propose it), its rank in each
retriever's list, cosine of the pooled customer image / text embedding and of the last
item's image with the candidate's, item popularity (log count, recency-decayed), whether
the item is cold (no train events), its age, the customer's share of history and recency
in the candidate's category, and the history length.

Training without leakage: ``fit`` holds out the last events of each customer of ``train``
(:func:`~shoplens.personalize.evaluate.temporal_split`), fits the retrievers on the rest,
builds candidates and features for the remaining histories, labels a candidate 1 when it is
among the customer's held-out (new to them) items, and trains the ranker on the customers
with at least one positive candidate. The retrievers are then refitted on all of ``train``
and the ranker is kept. New items reach the candidates through the content ANN and the
sequential model; the ``is_cold`` feature lets the ranker learn how far to trust them.
Everything is computed from the history, so new customers are served as well; an empty
history gets the popularity ranking (:meth:`FusedRanker.recommend_one` says so).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shoplens.errors import InvalidInputError
from shoplens.personalize.baselines import gather_sparse, top_k_sparse
from shoplens.personalize.types import TYPE_WEIGHTS, History, Interactions, ItemSpace, top_k_rows

logger = logging.getLogger(__name__)

DAY = 86_400.0
CHUNK = 256  # histories processed at once (bounds the (b, N) score matrices)
# LightGBM's predict on one booster from several threads races in its predictor set-up
# (LightGBM issues 6142, 5482); everything else in a recommendation runs concurrently.
_PREDICT_LOCK = threading.Lock()
# Fewer rows than this (one customer's candidates) are scored on one thread: LightGBM's
# OpenMP start-up costs more than it gains there, and a service runs requests in parallel.
PARALLEL_PREDICT_ROWS = 4096
DEFAULT_RETRIEVERS: dict[str, int] = {
    "customer-embedding": 100,
    "als": 100,
    "co-visitation": 100,
    "sequential": 100,
    "popularity": 50,
}
BASE_FEATURES: tuple[str, ...] = (
    "n_sources",  # how many retrievers proposed the candidate
    "image_cos",  # cos(pooled customer image embedding, item image)
    "text_cos",  # the same for text (nan without text embeddings)
    "last_image_cos",  # cos(image of the customer's last item, item image)
    "pop_log",  # log(1 + train events on the item)
    "pop_recent",  # log(1 + type-weighted events, half-life pop_half_life_days)
    "is_cold",  # 1 when the item has no train events
    "item_age_days",  # customer's last event - the item's first train event (0 if cold)
    "cat_share",  # share of the customer's history in the item's category
    "cat_recency_days",  # customer's last event - their last event in the category (nan)
    "same_cat_as_last",  # the item's category is that of the customer's last item
    "hist_len",  # events in the history
)


def _feature_key(name: str) -> str:
    return name.replace("-", "_")


def retriever_features(names: Sequence[str]) -> list[str]:
    """Feature names of the retrievers ``names``: ``score_<name>`` and ``rank_<name>``."""
    return [f"{kind}_{_feature_key(n)}" for n in names for kind in ("score", "rank")]


RETRIEVER_NAMES = (
    "customer-embedding",
    "als",
    "co-visitation",
    "sequential",
    "popularity",
    "image-knn",
)


def build_retriever(name: str, params: Mapping[str, Any] | None = None) -> Any:
    """A fresh, unfitted retriever by recommender name (one of :data:`RETRIEVER_NAMES`)."""
    from shoplens.personalize.baselines import ALS, CoVisitation, ImageKNN, Popularity
    from shoplens.personalize.customer import ContentRecommender
    from shoplens.personalize.sequential import SequentialRecommender

    factories: dict[str, Any] = {
        "customer-embedding": ContentRecommender,
        "als": ALS,
        "co-visitation": CoVisitation,
        "sequential": SequentialRecommender,
        "popularity": Popularity,
        "image-knn": ImageKNN,
    }
    _check_names([name])
    return factories[name](**dict(params or {}))


def _check_names(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in RETRIEVER_NAMES]
    if unknown:
        raise InvalidInputError(
            f"fused: unknown retriever {unknown[0]!r}; choose from {', '.join(RETRIEVER_NAMES)}"
        )


@dataclass
class Candidates:
    """Candidates of B histories and what the retrievers said about them (R retrievers)."""

    items: np.ndarray  # (B, C) int64 item indices, -1 padded
    scores: np.ndarray  # (R, B, C) float32 each retriever's score (nan: none / padding)
    ranks: np.ndarray  # (R, B, C) float32 rank in each retriever's list (missing: its n)
    sources: np.ndarray  # (B, C) int64 bit r set when retriever r proposed the item


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalised rows as float16 (feature precision, half the memory of the copy)."""
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0), dtype=np.float16)


class FusedRanker:
    """Candidates from several retrievers, re-ranked by LightGBM lambdarank (``fused``).

    Args:
        retrievers: retriever name -> candidates it proposes (see :func:`build_retriever`).
        max_candidates: cap of the deduplicated union per history.
        retriever_params: per retriever name, keyword arguments of its constructor.
        label_holdout, min_train: the :func:`temporal_split` that makes ranker labels.
        max_train_customers: customers sampled for ranker training (None = all).
        n_estimators, num_leaves, learning_rate, min_child_samples: LightGBM settings.
        pop_half_life_days: half-life of the recent-popularity feature.
        half_life_days: recency half-life of the pooled customer embeddings.
        refit: refit the retrievers on all of ``train`` after training the ranker.
        num_threads: LightGBM threads.
        new_item_share: share of each top-k kept for new products (no events yet), filled
            with the ranker's best new-product candidates when there are any. The ranker
            learns from past events, where launches are rare, so without an exposure
            quota new products are never shown and never get events (0 turns it off).
    """

    name = "fused"

    def __init__(
        self,
        retrievers: Mapping[str, int] | None = None,
        max_candidates: int = 300,
        retriever_params: Mapping[str, Mapping[str, Any]] | None = None,
        label_holdout: int = 5,
        min_train: int = 3,
        max_train_customers: int | None = 20_000,
        n_estimators: int = 200,
        num_leaves: int = 15,
        learning_rate: float = 0.05,
        min_child_samples: int = 20,
        pop_half_life_days: float = 7.0,
        half_life_days: float = 14.0,
        refit: bool = True,
        seed: int = 0,
        num_threads: int = 2,
        new_item_share: float = 0.2,
    ) -> None:
        if not 0.0 <= new_item_share <= 1.0:
            raise InvalidInputError(f"fused: new_item_share {new_item_share} is not in [0, 1]")
        self.new_item_share = new_item_share
        self.retriever_n = dict(DEFAULT_RETRIEVERS if retrievers is None else retrievers)
        if not self.retriever_n or any(n < 1 for n in self.retriever_n.values()):
            raise InvalidInputError("fused: retrievers must map names to counts >= 1")
        _check_names([*self.retriever_n, *(retriever_params or {})])
        self.max_candidates = max_candidates
        self.retriever_params = {k: dict(v) for k, v in (retriever_params or {}).items()}
        self.label_holdout, self.min_train = label_holdout, min_train
        self.max_train_customers = max_train_customers
        self.n_estimators, self.num_leaves = n_estimators, num_leaves
        self.learning_rate, self.min_child_samples = learning_rate, min_child_samples
        self.pop_half_life_days, self.half_life_days = pop_half_life_days, half_life_days
        self.refit, self.seed, self.num_threads = refit, seed, num_threads
        self.feature_names = list(BASE_FEATURES) + retriever_features(list(self.retriever_n))
        self.retrievers: dict[str, Any] = {}
        self.popularity: Any = None  # fallback for empty histories
        self.model: Any = None  # the fitted lightgbm.LGBMRanker
        self.fit_info: dict[str, Any] = {}
        # Item data and statistics (set by fit).
        self.n_items = 0
        self.skus: list[str] = []
        self.image = np.zeros((0, 0), np.float16)  # (N, D) L2-normalised
        self.text: np.ndarray | None = None  # (N, Dt) L2-normalised (float16)
        self.categories = np.zeros(0, np.int64)  # (N,)
        self.n_categories = 0
        self.pop_log = np.zeros(0, np.float32)  # (N,)
        self.pop_recent = np.zeros(0, np.float32)  # (N,)
        self.cold = np.zeros(0, bool)  # (N,)
        self.first_seen = np.zeros(0, np.float64)  # (N,) nan when cold

    # -- fitting ---------------------------------------------------------------------

    def fit(self, train: Interactions, items: ItemSpace) -> None:
        """Train the ranker on a temporal split of ``train``, then refit the retrievers."""
        import lightgbm as lgb

        from shoplens.personalize.evaluate import temporal_split

        t0 = time.perf_counter()
        self._set_items(items)
        split = temporal_split(
            train, holdout=self.label_holdout, min_train=self.min_train, n_items=len(items)
        )
        histories, relevant = split.histories, split.relevant
        if self.max_train_customers is not None and len(histories) > self.max_train_customers:
            rng = np.random.default_rng(self.seed)
            keep = np.sort(rng.choice(len(histories), self.max_train_customers, replace=False))
            histories = [histories[i] for i in keep]
            relevant = [relevant[i] for i in keep]
        self._fit_retrievers(split.train, items)
        t1 = time.perf_counter()
        x_parts, y_parts, groups = [], [], []
        found = total = cold_pos = cold_rows = 0
        for lo in range(0, len(histories), CHUNK):
            chunk = histories[lo : lo + CHUNK]
            cand = self.candidates(chunk, exclude_seen=True)
            feats = self.features(chunk, cand)  # (b, C, F)
            for r, rel in enumerate(relevant[lo : lo + CHUNK]):
                valid = cand.items[r] >= 0
                label = np.isin(cand.items[r][valid], rel)
                found, total = found + int(label.sum()), total + len(rel)
                is_cold = self.cold[cand.items[r][valid]]
                cold_rows += int(is_cold.sum())
                cold_pos += int((label & is_cold).sum())
                if label.any():
                    x_parts.append(feats[r][valid])
                    y_parts.append(label.astype(np.int32))
                    groups.append(int(valid.sum()))
        t2 = time.perf_counter()
        self.fit_info = {
            "label_customers": len(histories),
            "train_groups": len(groups),
            "train_rows": int(sum(groups)),
            "candidate_recall": found / total if total else 0.0,
            "positives": found,
            "cold_candidates": cold_rows,
            "cold_positives": cold_pos,
        }
        if not groups:
            raise InvalidInputError(
                "fused: no held-out item was among the candidates; need more events per "
                f"customer (>= {self.min_train + self.label_holdout}) or more candidates"
            )
        model = lgb.LGBMRanker(
            objective="lambdarank",
            n_estimators=self.n_estimators,
            num_leaves=self.num_leaves,
            learning_rate=self.learning_rate,
            min_child_samples=self.min_child_samples,
            random_state=self.seed,
            deterministic=True,
            force_row_wise=True,
            num_threads=self.num_threads,
            verbose=-1,
        )
        model.fit(
            np.concatenate(x_parts),
            np.concatenate(y_parts),
            group=np.asarray(groups),
            feature_name=[_feature_key(f) for f in self.feature_names],
        )
        self.model = model
        t3 = time.perf_counter()
        if self.refit:
            self._set_items(items)
            self._fit_retrievers(train, items)
        self.fit_info["seconds"] = {
            "retrievers_stage1": round(t1 - t0, 2),
            "features": round(t2 - t1, 2),
            "ranker": round(t3 - t2, 2),
            "refit": round(time.perf_counter() - t3, 2),
        }
        logger.info("fused ranker fitted: %s", self.fit_info)

    def _fit_retrievers(self, train: Interactions, items: ItemSpace) -> None:
        """Fresh retrievers (and the popularity fallback) fitted on ``train``; item stats."""
        self._item_stats(train)
        self.retrievers = {}
        for name in self.retriever_n:
            rec = build_retriever(name, self.retriever_params.get(name))
            rec.fit(train, items)
            self.retrievers[name] = rec
        pop = self.retrievers.get("popularity")
        if pop is None:
            pop = build_retriever("popularity", self.retriever_params.get("popularity"))
            pop.fit(train, items)
        self.popularity = pop

    def _set_items(self, items: ItemSpace) -> None:
        self.n_items = len(items)
        self.skus = list(items.skus)
        self.image = _normalise_rows(items.image)
        self.text = None if items.text is None else _normalise_rows(items.text)
        self.categories = np.asarray(items.categories, np.int64)
        self.n_categories = max(len(items.category_names), int(self.categories.max(initial=-1)) + 1)

    def _item_stats(self, train: Interactions) -> None:
        """Popularity, cold flags and first-seen times of the items in ``train``."""
        n = self.n_items
        counts = np.bincount(train.items, minlength=n)[:n]
        self.cold = counts == 0
        self.pop_log = np.log1p(counts).astype(np.float32)
        now = float(train.timestamps.max()) if len(train) else 0.0
        age = np.maximum(now - train.timestamps, 0.0) / DAY
        w = TYPE_WEIGHTS[train.types] * 0.5 ** (age / self.pop_half_life_days)
        recent = np.bincount(train.items, weights=w, minlength=n)[:n]
        self.pop_recent = np.log1p(recent).astype(np.float32)
        first = np.full(n, np.inf)
        np.minimum.at(first, train.items, train.timestamps)
        self.first_seen = np.where(np.isfinite(first), first, np.nan)

    # -- candidates and features -----------------------------------------------------

    def candidates(self, histories: Sequence[History], exclude_seen: bool = True) -> Candidates:
        """The retrievers' deduplicated top items per history, by best rank, capped."""
        if not self.retrievers:
            raise InvalidInputError("fused: call fit() before asking for candidates")
        names = list(self.retriever_n)
        b, n = len(histories), self.n_items
        exclude = [np.asarray(h.items, np.int64) for h in histories] if exclude_seen else None
        lists: list[np.ndarray] = []  # per retriever (b, n_r) item indices
        full: dict[str, np.ndarray] = {}  # (b, N) scores of retrievers that give them
        queries: dict[str, np.ndarray] = {}  # (b, d) ANN queries, reused for the scores
        parts: dict[str, tuple[Any, np.ndarray]] = {}  # sparse score parts, reused
        ann = self.__dict__.get("_ann")
        for name in names:
            rec, k = self.retrievers[name], self.retriever_n[name]
            index = ann.get(name) if ann is not None else None
            if index is not None and all(len(h) for h in histories):
                queries[name] = rec.ann_queries(histories)
                idx, _ = index.search(queries[name], k, exclude)
            elif getattr(rec, "sparse_scores", False):  # no dense (b, N) rows
                parts[name] = rec.score_parts(histories)
                part, base = parts[name]
                idx, _ = top_k_sparse(part, base, rec.base_order(), k, exclude)
            elif hasattr(rec, "score_all") and name != "popularity":
                scores = rec.score_all(histories)  # (b, N)
                idx, _ = top_k_rows(scores, k, exclude)
                full[name] = scores
            else:
                idx, _ = rec.recommend(histories, k, exclude_seen=exclude_seen)
            lists.append(idx)
        # Union ordered by (best rank, retriever order), first occurrence kept.
        all_items = np.concatenate(lists, axis=1)  # (b, T)
        all_ranks = np.concatenate(
            [np.broadcast_to(np.arange(x.shape[1]), x.shape) for x in lists], 1
        )
        all_src = np.concatenate([np.full(x.shape, r) for r, x in enumerate(lists)], axis=1)
        order = np.lexsort((all_src, all_ranks), axis=1)  # (b, T)
        s_items = np.take_along_axis(all_items, order, axis=1).ravel()
        rows = np.repeat(np.arange(b), all_items.shape[1])
        pos = np.flatnonzero(s_items >= 0)
        _, first = np.unique(rows[pos] * n + s_items[pos], return_index=True)
        keep = np.sort(pos[first])
        rows_k, items_k = rows[keep], s_items[keep]
        starts = np.r_[0, np.cumsum(np.bincount(rows_k, minlength=b))[:-1]]
        col = np.arange(len(keep)) - starts[rows_k]
        width = max(1, min(self.max_candidates, int(col.max(initial=-1)) + 1))
        ok = col < width
        cand = np.full((b, width), -1, np.int64)
        cand[rows_k[ok], col[ok]] = items_k[ok]
        # What each retriever says about every candidate.
        r_count = len(names)
        ranks = np.empty((r_count, b, width), np.float32)
        scores = np.full((r_count, b, width), np.nan, np.float32)
        sources = np.zeros((b, width), np.int64)
        cand_keys = np.arange(b)[:, None] * n + cand  # (b, C)
        for r, (name, idx) in enumerate(zip(names, lists, strict=True)):
            valid = idx >= 0
            keys = (np.arange(b)[:, None] * n + idx)[valid]  # (M,)
            rank = np.broadcast_to(np.arange(idx.shape[1]), idx.shape)[valid]
            srt = np.argsort(keys)
            keys, rank = keys[srt], rank[srt]
            at = np.clip(np.searchsorted(keys, cand_keys), 0, max(len(keys) - 1, 0))
            hit = (keys[at] == cand_keys) & (cand >= 0) if len(keys) else np.zeros_like(cand, bool)
            ranks[r] = np.where(hit, rank[at] if len(keys) else 0, self.retriever_n[name])
            sources |= hit.astype(np.int64) << r
            if name in full:
                got = np.take_along_axis(full[name], np.maximum(cand, 0), axis=1)
                scores[r] = np.where(cand >= 0, got, np.nan)
            elif name in queries:
                scores[r] = self.retrievers[name].score_items(histories, cand, queries[name])
            elif name in parts:
                scores[r] = gather_sparse(parts[name][0], parts[name][1], cand)
            else:
                scores[r] = self.retrievers[name].score_items(histories, cand)
        scores[~np.isfinite(scores)] = np.nan  # e.g. ALS's -inf for cold items
        return Candidates(cand, scores, ranks, sources)

    def features(self, histories: Sequence[History], cand: Candidates) -> np.ndarray:
        """(B, C, F) float32 features of the candidates, in ``feature_names`` order."""
        items = cand.items
        b, c = items.shape
        safe = np.maximum(items, 0)  # (b, C)
        pad = items < 0
        last_item = np.array([int(h.items[-1]) if len(h) else -1 for h in histories])
        last_ts = np.array([float(h.timestamps[-1]) if len(h) else np.nan for h in histories])
        image_q = self._pool(histories, self.image)  # (b, D)
        last_img = self.image[np.maximum(last_item, 0)]  # (b, D)
        image_cos = _row_dots(self.image, safe, image_q)  # (b, C)
        last_image_cos = _row_dots(self.image, safe, last_img)
        if self.text is not None:
            text_cos = _row_dots(self.text, safe, self._pool(histories, self.text))
        else:
            text_cos = np.full((b, c), np.nan, np.float32)
        last_image_cos[last_item < 0] = np.nan
        hist_len = np.array([len(h) for h in histories], np.float32)
        # Category profile of each history.
        share = np.zeros((b, self.n_categories), np.float32)
        cat_last = np.full((b, self.n_categories), np.nan)
        for r, h in enumerate(histories):
            if len(h) == 0:
                continue
            cats = self.categories[np.asarray(h.items, np.int64)]
            share[r] = np.bincount(cats, minlength=self.n_categories) / len(h)
            last = np.full(self.n_categories, -np.inf)
            np.maximum.at(last, cats, np.asarray(h.timestamps, np.float64))
            cat_last[r] = np.where(np.isfinite(last), last, np.nan)
        item_cat = self.categories[safe]  # (b, C)
        rows = np.arange(b)[:, None]
        last_cat = np.where(last_item >= 0, self.categories[np.maximum(last_item, 0)], -1)
        base = {
            "n_sources": _popcount(cand.sources).astype(np.float32),
            "image_cos": image_cos,
            "text_cos": text_cos,
            "last_image_cos": last_image_cos,
            "pop_log": self.pop_log[safe],
            "pop_recent": self.pop_recent[safe],
            "is_cold": self.cold[safe].astype(np.float32),
            "item_age_days": np.where(
                self.cold[safe], 0.0, (last_ts[:, None] - self.first_seen[safe]) / DAY
            ),
            "cat_share": share[rows, item_cat],
            "cat_recency_days": (last_ts[:, None] - cat_last[rows, item_cat]) / DAY,
            "same_cat_as_last": (item_cat == last_cat[:, None]).astype(np.float32),
            "hist_len": np.broadcast_to(hist_len[:, None], (b, c)),
        }
        cols = [base[f] for f in BASE_FEATURES]
        for r in range(len(self.retriever_n)):
            cols += [cand.scores[r], cand.ranks[r]]
        out = np.stack([np.asarray(x, np.float32) for x in cols], axis=-1)  # (b, C, F)
        out[pad] = np.nan
        return out

    def _pool(self, histories: Sequence[History], vectors: np.ndarray) -> np.ndarray:
        """(B, D) L2-normalised type- and recency-weighted means of history item vectors."""
        from shoplens.personalize.baselines import history_weights

        out = np.zeros((len(histories), vectors.shape[1]), np.float32)
        for r, h in enumerate(histories):
            if len(h):
                w = history_weights(h, None, self.half_life_days)  # (L,)
                v = w @ vectors[np.asarray(h.items, np.int64)].astype(np.float32)  # (D,)
                norm = float(np.linalg.norm(v))
                out[r] = v / norm if norm > 0 else v
        return out

    # -- inference -------------------------------------------------------------------

    def _rank(
        self, histories: Sequence[History], exclude_seen: bool
    ) -> tuple[Candidates, np.ndarray]:
        """Candidates of ``histories`` (all non-empty) and their (B, C) ranker scores."""
        cand = self.candidates(histories, exclude_seen)
        feats = self.features(histories, cand)  # (b, C, F)
        b, c = feats.shape[:2]
        valid = cand.items >= 0
        scores = np.full((b, c), -np.inf, np.float32)
        if valid.any():
            scores[valid] = self._predict(feats[valid])
        return cand, scores

    def recommend(
        self, histories: Sequence[History], k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` items per history: ((B, k) int64, -1 padded; (B, k) float32 scores).

        Empty histories get the popularity ranking (its scores).
        """
        out_idx = np.full((len(histories), k), -1, np.int64)
        out_val = np.full((len(histories), k), -np.inf, np.float32)
        for lo in range(0, len(histories), CHUNK):
            idx, val, _ = self._recommend_chunk(histories[lo : lo + CHUNK], k, exclude_seen)
            out_idx[lo : lo + len(idx)], out_val[lo : lo + len(idx)] = idx, val
        return out_idx, out_val

    def _recommend_chunk(
        self, histories: Sequence[History], k: int, exclude_seen: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(b, k) items, (b, k) scores, (b, k) source bits (0 for popularity fallback)."""
        self._check_fitted()
        b = len(histories)
        idx = np.full((b, k), -1, np.int64)
        val = np.full((b, k), -np.inf, np.float32)
        src = np.zeros((b, k), np.int64)
        full = [r for r, h in enumerate(histories) if len(h)]
        empty = [r for r, h in enumerate(histories) if not len(h)]
        if empty:
            p_idx, p_val = self.popularity.recommend([History.empty()], k, exclude_seen)
            idx[empty], val[empty] = p_idx[0], p_val[0]
        if full:
            sub = [histories[r] for r in full]
            cand, scores = self._rank(sub, exclude_seen)
            top, top_val = self._top_with_new_items(cand, scores, k)
            ok = top >= 0
            picked = np.take_along_axis(cand.items, np.maximum(top, 0), axis=1)
            bits = np.take_along_axis(cand.sources, np.maximum(top, 0), axis=1)
            idx[full] = np.where(ok, picked, -1)
            val[full] = np.where(ok, top_val, -np.inf)
            src[full] = np.where(ok, bits, 0)
        return idx, val, src

    def _top_with_new_items(
        self, cand: Candidates, scores: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Row-wise top ``k`` positions into the candidates, with at least ``round(k *
        new_item_share)`` new products: when the ranker placed fewer, its best-scored other
        new candidates take slots spread over the list (e.g. places 4 and 7 of 10)."""
        top, top_val = top_k_rows(scores, k)  # (b, k) positions into the candidates
        slots = round(k * getattr(self, "new_item_share", 0.0))
        if slots == 0:
            return top, top_val
        new = (cand.items >= 0) & self.cold[np.maximum(cand.items, 0)]  # (b, C)
        new_top, _ = top_k_rows(np.where(new, scores, -np.inf), slots)
        places = [min(k - 1, round((j + 1) * k / (slots + 1))) for j in range(slots)]
        for row in range(len(top)):
            ranked = [int(p) for p in top[row] if p >= 0]
            need = slots - int(new[row, ranked].sum())
            extra = [int(p) for p in new_top[row] if p >= 0 and int(p) not in ranked][:need]
            if not extra:
                continue
            at = set(places[: len(extra)])
            order = [
                extra.pop(0) if pos in at else ranked.pop(0)
                for pos in range(k)
                if pos in at or ranked
            ]
            top[row] = -1
            top[row, : len(order)] = order
            top_val[row] = np.where(top[row] >= 0, scores[row][np.maximum(top[row], 0)], -np.inf)
        return top, top_val

    def score_items(self, histories: Sequence[History], candidates: np.ndarray) -> np.ndarray:
        """(B, C) ranker scores of the (B, C) int64 candidates (-1 -> nan).

        Retriever ranks are those of each history's own candidate lists; an empty history
        gets popularity scores.
        """
        self._check_fitted()
        cand_in = np.asarray(candidates, np.int64)
        if cand_in.ndim != 2 or cand_in.shape[0] != len(histories):
            raise InvalidInputError(
                f"candidates must be (B, C) with B={len(histories)}, got {cand_in.shape}"
            )
        out = np.full(cand_in.shape, np.nan, np.float32)
        for lo in range(0, len(histories), CHUNK):
            chunk = histories[lo : lo + CHUNK]
            cands = cand_in[lo : lo + len(chunk)]
            own = self.candidates(chunk, exclude_seen=True)
            given = self._describe(chunk, cands, own)
            feats = self.features(chunk, given)
            valid = cands >= 0
            scores = np.full(cands.shape, np.nan, np.float32)
            if valid.any():
                scores[valid] = self._predict(feats[valid])
            for r, h in enumerate(chunk):
                if not len(h):
                    scores[r] = self.popularity.score_items([h], cands[r : r + 1])[0]
            out[lo : lo + len(chunk)] = scores
        return out

    def _describe(
        self, histories: Sequence[History], cands: np.ndarray, own: Candidates
    ) -> Candidates:
        """Retriever scores and ranks of the given candidates (ranks from ``own`` lists)."""
        names = list(self.retriever_n)
        b, c = cands.shape
        ranks = np.empty((len(names), b, c), np.float32)
        scores = np.full((len(names), b, c), np.nan, np.float32)
        sources = np.zeros((b, c), np.int64)
        for r, name in enumerate(names):
            ranks[r] = self.retriever_n[name]
            scores[r] = self.retrievers[name].score_items(histories, cands)
        for row in range(b):
            pos = {int(i): j for j, i in enumerate(own.items[row]) if i >= 0}
            for col, item in enumerate(cands[row]):
                j = pos.get(int(item))
                if item >= 0 and j is not None:
                    ranks[:, row, col] = own.ranks[:, row, j]
                    sources[row, col] = own.sources[row, j]
        scores[~np.isfinite(scores)] = np.nan
        return Candidates(cands, scores, ranks, sources)

    def recommend_one(self, history: History, k: int, exclude_seen: bool = True) -> dict[str, Any]:
        """Serving view of one customer's top ``k``.

        Returns ``{"items": (k',) int64 item indices, "skus": [...], "scores": (k',)
        float32, "sources": per item the retrievers that proposed it, "personalized":
        False for an empty history (popularity ranking)}``.
        """
        return self.recommend_many([history], k, exclude_seen)[0]

    def recommend_many(
        self, histories: Sequence[History], k: int, exclude_seen: bool = True
    ) -> list[dict[str, Any]]:
        """:meth:`recommend_one` for several customers in one pass (one retrieval, one
        feature matrix and one LightGBM call for all of them): what a service does with
        concurrent requests."""
        names = list(self.retriever_n)
        out = []
        for lo in range(0, len(histories), CHUNK):
            chunk = histories[lo : lo + CHUNK]
            idx, val, src = self._recommend_chunk(chunk, k, exclude_seen)
            for row, history in enumerate(chunk):
                ok = idx[row] >= 0
                personalized = len(history) > 0
                sources = [
                    [n for r, n in enumerate(names) if bits >> r & 1]
                    if personalized
                    else ["popularity"]
                    for bits in src[row][ok]
                ]
                items = idx[row][ok]
                out.append(
                    {
                        "items": items,
                        "skus": [self.skus[int(i)] for i in items],
                        "scores": val[row][ok],
                        "sources": sources,
                        "personalized": personalized,
                    }
                )
        return out

    def _predict(self, x: np.ndarray) -> np.ndarray:
        """(M, F) features -> (M,) float32 ranker scores."""
        threads = self.num_threads if len(x) >= PARALLEL_PREDICT_ROWS else 1
        with _PREDICT_LOCK:
            out = self.model.booster_.predict(x, num_threads=threads)
        return np.asarray(out, np.float32)

    def enable_ann(self, min_items: int | None = None, *, wait: bool = False) -> bool:
        """Serve candidates from IVF indexes over the retrievers' item vectors (built in
        a background thread; exact scans answer until they are ready) when the catalogue
        has at least ``min_items`` items (default :data:`~shoplens.personalize.ann.
        ANN_MIN_ITEMS`). Returns whether ANN was enabled."""
        from shoplens.personalize.ann import ANN_MIN_ITEMS, LazyANN

        self._check_fitted()
        if self.n_items < (ANN_MIN_ITEMS if min_items is None else min_items):
            return False
        specs = {
            name: rec.ann_vectors()
            for name, rec in self.retrievers.items()
            if callable(getattr(rec, "ann_vectors", None))
        }
        lazy = LazyANN(specs)
        self.__dict__["_ann"] = lazy
        if wait:
            lazy.wait()
        return True

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_ann", None)  # serving-time indexes are rebuilt, never pickled
        return state

    def feature_importance(self) -> dict[str, float]:
        """Total gain of each feature in the ranker (``feature_names`` order)."""
        self._check_fitted()
        gain = self.model.booster_.feature_importance(importance_type="gain")
        return {f: float(g) for f, g in zip(self.feature_names, gain, strict=True)}

    def _check_fitted(self) -> None:
        if self.model is None or not self.retrievers:
            raise InvalidInputError("fused: call fit() before recommending")


def _row_dots(vectors: np.ndarray, rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(B, C) ``vectors[rows[b, c]] @ queries[b]``, one history at a time (bounded memory)."""
    out = np.empty(rows.shape, np.float32)
    for b in range(rows.shape[0]):
        out[b] = vectors[rows[b]].astype(np.float32) @ queries[b].astype(np.float32)
    return out


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each int64 (small masks)."""
    out = np.zeros(x.shape, np.int64)
    y = x.copy()
    while y.any():
        out += y & 1
        y >>= 1
    return out
