"""Search a catalogue by image, text, sku ("similar") or image + text, with filters.

Text search works on any catalogue: BM25 over the product text fused (reciprocal rank
fusion) with dense text embeddings of the product text, plus text-to-image similarity when
the image encoder is a vision-language model. Results that share an identical image are
collapsed (``dedupe=True``) so exact duplicate products don't fill a page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeAlias
from urllib.parse import quote

import numpy as np
from PIL import Image

from shoplens.catalog.store import Catalog, Product
from shoplens.errors import InvalidInputError, NotReadyError
from shoplens.index.build import default_image_encoder, default_text_encoder, text_index_name
from shoplens.index.store import IndexBuild, load_build
from shoplens.registry import get_encoder
from shoplens.search.fusion import rrf
from shoplens.search.text import Bm25

MAX_K = 1000
MAX_QUERY_CHARS = 1000


@dataclass
class Filters:
    """Restrict results to categories and exact attribute values."""

    categories: list[str] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.categories or self.attributes)


#: A search restriction: none, allowed product ids, or filters run inside the vector store.
Allowed: TypeAlias = "np.ndarray | Filters | None"


def metadata_index(index: Any) -> Any:
    """The index under ``index``'s serving wrappers (batching, thread limits) when it
    filters on product metadata itself (a Milvus index), else None."""
    seen = 0
    while index is not None and seen < 8:
        if getattr(type(index), "filters_metadata", False):
            return index
        index = index.__dict__.get("index") if hasattr(index, "__dict__") else None
        seen += 1
    return None


# (query, n) -> one [(product id, score), ...] per dense signal: SearchEngine's hooks
DenseRankings: TypeAlias = Callable[[tuple[Any, int]], list[list[tuple[int, float]]]]


@dataclass
class Hit:
    sku: str
    score: float
    title: str
    category: str
    attributes: dict[str, str]
    image_url: str
    image_path: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "sku": self.sku,
            "score": round(float(self.score), 6),
            "title": self.title,
            "category": self.category,
            "attributes": self.attributes,
            "image_url": self.image_url,
        }


@lru_cache(maxsize=1 << 16)
def product_image_url(sku: str) -> str:
    """The API path of a product's image (cached: search pages repeat the same skus)."""
    return f"/v1/products/{quote(sku, safe='')}/image"


def _first_n(k: int, exclude: set[int] | None = None) -> int:
    """Candidates to ask the index for first for a page of ``k``: room for the excluded
    products and duplicate images."""
    return 2 * k + (len(exclude) if exclude else 0) + 8


def check_k(k: int, limit: int = MAX_K) -> int:
    """``k`` when it is an int in 1..limit, else InvalidInputError."""
    if not isinstance(k, int) or not 1 <= k <= limit:
        raise InvalidInputError(f"k must be between 1 and {limit}, got {k!r}")
    return k


def ranked_pairs(ids: np.ndarray, scores: np.ndarray) -> list[tuple[int, float]]:
    """One query's index result row, (n,) ids and (n,) scores, as ``[(id, score), ...]``
    without the -1 padding."""
    # tolist() first: iterating numpy arrays element by element is several times slower
    pairs = zip(ids.tolist(), scores.tolist(), strict=True)
    return [(int(i), float(s)) for i, s in pairs if i >= 0]


class SearchEngine:
    """Loaded indexes of one catalogue; thread-safe for concurrent searches."""

    def __init__(
        self, catalog: Catalog, encoder: str | None = None, text_encoder: str | None = None
    ) -> None:
        self.catalog = catalog
        self.image_build: IndexBuild = load_build(
            catalog, encoder or default_image_encoder(catalog)
        )
        self.encoder = get_encoder(self.image_build.encoder)
        self.text_build: IndexBuild | None
        self.bm25: Bm25 | None
        text_encoder = text_encoder or default_text_encoder(catalog)
        try:
            self.text_build = load_build(catalog, text_index_name(text_encoder))
            self.bm25 = Bm25.load(self.text_build.path / "bm25", self.text_build.ids)
            self.text_encoder = get_encoder(text_encoder)
        except NotReadyError:
            self.text_build, self.bm25 = None, None
        # product id -> row of the image build (built once: a per-query map costs O(N))
        self._rows = {int(i): n for n, i in enumerate(self.image_build.ids)}
        # (text, n) -> the unfiltered dense rankings of a text query (the text index's,
        # then the image index's when the image encoder embeds texts), as text_rankings
        # computes them; set by the service to batch concurrent text queries as one step
        self.dense_text: DenseRankings | None = None
        # (image, n) -> [the unfiltered image-index ranking of an image query]; set by the
        # service to batch the encoder pass and the search of concurrent image queries
        self.dense_image: DenseRankings | None = None

    @classmethod
    def open(cls, name: str, encoder: str | None = None) -> SearchEngine:
        return cls(Catalog.open(name), encoder)

    @property
    def composes(self) -> bool:
        """True when the image encoder has a learned combiner for image + text queries."""
        return bool(getattr(self.encoder, "can_compose", False))

    @property
    def stale(self) -> bool:
        """True when the catalogue changed after the image index was built."""
        return self.image_build.meta.get("catalog_version") != self.catalog.version()

    # ---- helpers ---------------------------------------------------------------------
    def _allowed(
        self,
        filters: Filters | None,
        build: IndexBuild | None = None,
        ids: np.ndarray | None = None,
    ) -> Allowed:
        """What restricts a search of ``build``: None, the ids matching ``filters`` from
        the catalogue (``ids`` when the caller read them already), or ``filters``
        themselves when ``build``'s index filters on product metadata itself (Milvus):
        then the filter runs inside the vector store."""
        if filters and build is not None and metadata_index(build.index) is not None:
            return filters
        return ids if ids is not None else self._allowed_ids(filters)

    def _allowed_ids(self, filters: Filters | None) -> np.ndarray | None:
        """(M,) int64 ids of the products matching ``filters`` (None: no filter)."""
        if not filters:
            return None
        ids = self.catalog.filter_ids(filters.categories, filters.attributes)
        return None if ids is None else np.asarray(ids, dtype=np.int64)

    def _hits(
        self, ranked: list[tuple[int, float]], k: int, dedupe: bool, exclude: set[int] | None = None
    ) -> list[Hit]:
        hits: list[Hit] = []
        seen_images: set[str] = set()
        # Products are read in growing chunks: usually the first k (plus what is excluded)
        # candidates fill the page, so reading all the ranked candidates would be wasted.
        start, chunk = 0, k + len(exclude or ()) + 4
        while start < len(ranked) and len(hits) < k:
            part = ranked[start : start + chunk]
            start, chunk = start + len(part), chunk * 2
            products = self.catalog.get_by_ids([i for i, _ in part])
            for pid, score in part:
                p: Product | None = products.get(pid)
                if p is None or (exclude and pid in exclude):
                    continue
                if dedupe and p.image_key in seen_images:
                    continue
                seen_images.add(p.image_key)
                hits.append(
                    Hit(
                        sku=p.sku,
                        score=score,
                        title=p.title,
                        category=p.category,
                        attributes=p.attributes,
                        image_url=product_image_url(p.sku),
                        image_path=self.catalog.image_file(p.image_key),
                    )
                )
                if len(hits) == k:
                    break
        return hits

    def product_vector(self, product_id: int) -> np.ndarray:
        """The stored image embedding of a product. Returns (1, D)."""
        row = self._rows.get(int(product_id))
        if row is None:
            raise NotReadyError(
                f"product {product_id} is not in the index; run 'shoplens index build'"
            )
        return np.asarray(self.image_build.embeddings[row : row + 1])

    def search_vector(
        self,
        q: np.ndarray,
        k: int = 10,
        filters: Filters | None = None,
        dedupe: bool = True,
        exclude: set[int] | None = None,
    ) -> list[Hit]:
        """The search step alone: products nearest to query embedding ``q`` (1, D)."""
        check_k(k)
        return self._nearest(q, k, self._allowed(filters, self.image_build), dedupe, exclude)

    def _nearest(
        self,
        q: np.ndarray,
        k: int,
        allowed: Allowed,
        dedupe: bool,
        exclude: set[int] | None = None,
    ) -> list[Hit]:
        """The top ``k`` hits for (1, D) ``q``: asks the index for a few more than ``k``
        (room for the excluded and duplicate images) and asks again for more only when
        those did not fill the page."""
        n = _first_n(k, exclude)
        while True:
            ranked = self._vector_ranked(self.image_build, q, n, allowed)
            hits = self._hits(ranked, k, dedupe, exclude=exclude)
            if self._page_done(hits, ranked, k, n):
                return hits
            n *= 4

    def _page_done(self, hits: list[Hit], ranked: list[tuple[int, float]], k: int, n: int) -> bool:
        """Whether ``n`` candidates gave a full page, or no more can be had."""
        return len(hits) >= k or len(ranked) < n or n >= self.image_build.index.ntotal

    def _vector_ranked(
        self, build: IndexBuild, q: np.ndarray, n: int, allowed: Allowed
    ) -> list[tuple[int, float]]:
        if isinstance(allowed, Filters):  # pushed down into the vector store
            store = metadata_index(build.index)
            assert store is not None  # _allowed returns Filters only for such an index
            scores, ids = store.search(
                q, n, categories=allowed.categories or None, attributes=allowed.attributes or None
            )
        else:
            if allowed is not None and allowed.size == 0:
                return []
            scores, ids = build.index.search(q, n, allowed)
        return ranked_pairs(ids[0], scores[0])

    # ---- queries ---------------------------------------------------------------------
    def image_ranking(
        self, image: Image.Image, n: int, filters: Filters | None = None
    ) -> list[tuple[int, float]]:
        if not filters and self.dense_image is not None:
            return self.dense_image((image, n))[0]  # encoder pass and search, batched
        q = self.encoder.encode_images([image])  # (1, D)
        return self._vector_ranked(self.image_build, q, n, self._allowed(filters, self.image_build))

    def text_rankings(
        self, text: str, n: int, filters: Filters | None = None
    ) -> list[list[tuple[int, float]]]:
        """One ranking per available text signal (BM25, dense text, text-to-image)."""
        lists: list[list[tuple[int, float]]] = []
        ids: np.ndarray | None = None  # the catalogue's filter result, read at most once
        if self.bm25 is not None and self.text_build is not None:
            ids = self._allowed_ids(filters)
            lists.append(self.bm25.search(text, n, ids))
        if not filters and self.dense_text is not None:
            lists.extend(self.dense_text((text, n)))  # the dense rankings below, batched
            return lists
        if self.bm25 is not None and self.text_build is not None:
            q = self.text_encoder.encode_texts([text])
            lists.append(self._vector_ranked(self.text_build, q, n, ids))
        if self.encoder.shared_space:
            q = self.encoder.encode_texts([text])
            image_allowed = self._allowed(filters, self.image_build, ids)
            lists.append(self._vector_ranked(self.image_build, q, n, image_allowed))
        if not lists:
            raise NotReadyError(
                f"catalogue {self.catalog.name!r} has no text index; run 'shoplens index "
                f"build --catalog {self.catalog.name}' (without --no-text)"
            )
        return lists

    def search(
        self,
        *,
        image: Image.Image | None = None,
        text: str | None = None,
        sku: str | None = None,
        k: int = 10,
        filters: Filters | None = None,
        dedupe: bool = True,
        text_weight: float = 1.0,
        image_weight: float = 1.0,
        compose: bool | None = None,
    ) -> list[Hit]:
        """Search by one of image / text / sku, or image and text together.

        An image + text query ("like this, but in the boot category") goes through the
        encoder's learned combiner when it has one (``compose`` None or True), else the
        image and text rankings are fused by weighted reciprocal rank (``compose=False``).
        """
        check_k(k)
        if text is not None:
            text = text.strip()
            if not text:
                raise InvalidInputError("text query is empty")
            if len(text) > MAX_QUERY_CHARS:
                raise InvalidInputError(f"text query is longer than {MAX_QUERY_CHARS} characters")
        if sku is not None and (image is not None or text is not None):
            raise InvalidInputError("give either a sku, or an image and/or text, not both")
        if sku is None and image is None and text is None:
            raise InvalidInputError("give a query: an image, a text or a sku")
        if not 0 <= text_weight <= 10 or not 0 <= image_weight <= 10:
            raise InvalidInputError("weights must be between 0 and 10")
        n = max(100, 3 * k)
        if sku is not None:
            return self.similar(sku, k=k, filters=filters, dedupe=dedupe)
        if compose and not self.composes:
            raise InvalidInputError(
                f"encoder {self.encoder.name!r} has no combiner for composed queries; train "
                "one (shoplens train model=combiner-small data.base_model=DIR) or leave "
                "compose off to fuse the image and text rankings"
            )
        if image is not None and text is not None and compose is not False and self.composes:
            q = self.encoder.compose([image], [text])  # type: ignore[attr-defined]  # (1, D)
            return self._nearest(q, k, self._allowed(filters, self.image_build), dedupe)
        if image is not None and text is None:
            if not filters and self.dense_image is not None:
                n = _first_n(k)
                ranked = self.dense_image((image, n))[0]  # encoder pass and search, batched
                hits = self._hits(ranked, k, dedupe)
                if self._page_done(hits, ranked, k, n):
                    return hits  # else (duplicate images left it short) ask again below
            q = self.encoder.encode_images([image])  # (1, D)
            return self._nearest(q, k, self._allowed(filters, self.image_build), dedupe)
        lists: list[list[tuple[int, float]]] = []
        weights: list[float] = []
        if image is not None:
            lists.append(self.image_ranking(image, n, filters))
            weights.append(image_weight)
        if text is not None:
            tl = self.text_rankings(text, n, filters)
            lists.extend(tl)
            weights.extend(
                [text_weight / len(tl)] * len(tl) if image is not None else [1.0] * len(tl)
            )
        ranked = lists[0] if len(lists) == 1 else rrf(lists, weights)
        return self._hits(ranked, k, dedupe)

    def similar(
        self, sku: str, k: int = 10, filters: Filters | None = None, dedupe: bool = True
    ) -> list[Hit]:
        """Products that look like ``sku`` (the product itself is left out)."""
        check_k(k)
        product = self.catalog.get(sku)
        return self.search_vector(
            self.product_vector(product.id), k, filters, dedupe, exclude={product.id}
        )
