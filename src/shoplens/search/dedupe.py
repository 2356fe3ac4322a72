"""Near-duplicate products: identical images, perceptual hashes and embeddings.

A pair is reported when the two images are byte-identical after normalisation, when
their embedding cosine is >= ``threshold``, or when their 64-bit perceptual hashes differ
in <= ``hash_distance`` bits *and* their cosine is >= ``hash_threshold`` (the hash alone
confuses different products with the same silhouette). Pairs are joined into clusters.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from shoplens.catalog.store import Catalog, Product
from shoplens.errors import InvalidInputError
from shoplens.index.store import IndexBuild

Reason = Literal["identical image", "embedding", "perceptual hash"]


@dataclass(frozen=True)
class DuplicatePair:
    sku_a: str
    sku_b: str
    similarity: float
    reason: Reason


@dataclass
class DedupeReport:
    products: int
    threshold: float
    pairs: list[DuplicatePair]
    clusters: list[list[str]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "products": self.products,
            "threshold": self.threshold,
            "pairs": [asdict(p) for p in self.pairs],
            "clusters": self.clusters,
        }


def _phash_bits(products: list[Product]) -> np.ndarray:
    """(N, 8) uint8 packed 64-bit hashes (zeros where a product has none)."""
    out = np.zeros((len(products), 8), dtype=np.uint8)
    for i, p in enumerate(products):
        if len(p.phash) == 16:
            out[i] = np.frombuffer(bytes.fromhex(p.phash), dtype=np.uint8)
    return out


def _hash_candidates(bits: np.ndarray, max_distance: int) -> set[tuple[int, int]]:
    """Index pairs (i < j) whose hashes differ in <= max_distance bits (FAISS binary)."""
    import faiss

    index = faiss.IndexBinaryFlat(64)
    index.add(bits)
    lims, _dist, labels = index.range_search(bits, max_distance + 1)
    pairs: set[tuple[int, int]] = set()
    for i in range(len(bits)):
        for j in labels[lims[i] : lims[i + 1]]:
            if i < int(j):
                pairs.add((i, int(j)))
    return pairs


def _clusters(pairs: list[tuple[int, int]], n: int) -> list[list[int]]:
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in {x for p in pairs for x in p}:
        groups[find(i)].append(i)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: (-len(g), g[0]))


def find_duplicates(
    catalog: Catalog,
    build: IndexBuild,
    *,
    threshold: float = 0.95,
    hash_distance: int = 6,
    hash_threshold: float = 0.85,
    neighbours: int = 10,
) -> DedupeReport:
    """Find near-duplicate pairs and clusters among all indexed products."""
    if not 0.0 < threshold <= 1.0 or not 0.0 < hash_threshold <= 1.0:
        raise InvalidInputError("thresholds must be in (0, 1]")
    if not 0 <= hash_distance <= 32:
        raise InvalidInputError("hash distance must be 0..32 bits")
    by_id = catalog.get_by_ids(build.ids.tolist())
    keep = np.array([int(i) in by_id for i in build.ids], dtype=bool)
    ids = [int(i) for i in build.ids[keep]]
    products = [by_id[i] for i in ids]
    pos_of = {pid: n for n, pid in enumerate(ids)}
    emb = np.ascontiguousarray(np.asarray(build.embeddings)[keep])  # (N, D)
    found: dict[tuple[int, int], tuple[float, Reason]] = {}

    # 1. identical images
    by_image: dict[str, list[int]] = defaultdict(list)
    for n, p in enumerate(products):
        by_image[p.image_key].append(n)
    for group in by_image.values():
        for a in group:
            for b in group:
                if a < b:
                    found[(a, b)] = (1.0, "identical image")

    # 2. embedding neighbours
    k = min(neighbours + 1, len(ids))
    if k > 1:
        scores, labels = build.index.search(emb, k)
        for a in range(len(ids)):
            for s, lab in zip(scores[a], labels[a], strict=True):
                other = pos_of.get(int(lab))
                if other is None or other == a or s < threshold:
                    continue
                key = (min(a, other), max(a, other))
                found.setdefault(key, (float(s), "embedding"))

    # 3. perceptual hash, confirmed by a looser embedding threshold
    for a, b in _hash_candidates(_phash_bits(products), hash_distance):
        if (a, b) in found:
            continue
        s = float(emb[a] @ emb[b])
        if s >= hash_threshold:
            found[(a, b)] = (s, "perceptual hash")

    ordered = sorted(found.items(), key=lambda t: (-t[1][0], t[0]))
    pairs = [
        DuplicatePair(products[a].sku, products[b].sku, round(s, 6), r)
        for (a, b), (s, r) in ordered
    ]
    clusters = [[products[i].sku for i in c] for c in _clusters([p for p, _ in ordered], len(ids))]
    return DedupeReport(products=len(ids), threshold=threshold, pairs=pairs, clusters=clusters)
