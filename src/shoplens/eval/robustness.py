"""Altered copies and near-duplicates: shared by the foundation report and the model tasks.

:func:`altered_copies` samples images and alters each four ways (crop, noise, brightness,
blur-jpeg); :func:`copy_recall` scores how often the original comes back first.
:func:`dedupe_eval` injects mildly altered copies into a temporary catalogue and measures
:func:`~shoplens.search.dedupe.find_duplicates` on it.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from shoplens import progress
from shoplens.errors import InvalidInputError
from shoplens.eval.metrics import hit_rate_at_k

ALTERATIONS = ("crop", "noise", "brightness", "blur-jpeg")
MILD_ALTERATIONS = ("crop", "brightness", "noise")
DEDUPE_CATALOG = "fm-dedupe-eval"

ImageLoader = Callable[[int], Image.Image]


class Described(Protocol):
    """What the near-duplicate part needs to know of an item (a catalogue product fits)."""

    @property
    def sku(self) -> str: ...

    @property
    def title(self) -> str: ...

    @property
    def category(self) -> str: ...


def alter(
    img: Image.Image, kind: str, rng: np.random.Generator, *, mild: bool = False
) -> Image.Image:
    """An altered copy of ``img``: crop, noise, brightness or blur-jpeg (``mild``: weaker)."""
    w, h = img.size
    if kind == "crop":  # a random 80-90 % (mild: 92-95 %) crop, resized back
        f = rng.uniform(0.92, 0.95) if mild else rng.uniform(0.8, 0.9)
        cw, ch = max(1, round(w * f)), max(1, round(h * f))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.BICUBIC)
    if kind == "noise":  # gaussian, sigma 10 (mild: 4) grey levels
        arr = np.asarray(img, np.float32) + rng.normal(0, 4 if mild else 10, (h, w, 3))
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if kind == "brightness":  # x1.3 or x0.7 (mild: x1.1 or x0.9)
        up = rng.random() < 0.5
        factor = (1.1 if up else 0.9) if mild else (1.3 if up else 0.7)
        return ImageEnhance.Brightness(img).enhance(factor)
    if kind == "blur-jpeg":  # gaussian blur radius 1, then JPEG quality 30, decoded again
        buf = io.BytesIO()
        img.filter(ImageFilter.GaussianBlur(1)).save(buf, format="JPEG", quality=30)
        with Image.open(io.BytesIO(buf.getvalue())) as im:
            return im.convert("RGB")
    raise InvalidInputError(f"unknown alteration {kind!r}; known: {', '.join(ALTERATIONS)}")


def altered_copies(
    n_items: int, load: ImageLoader, n: int, seed: int
) -> tuple[list[int], list[str], list[Image.Image]]:
    """Sample ``min(n, n_items)`` items with ``seed`` and alter each of them 4 ways.

    Args:
        n_items: how many items there are to sample from (positions 0..n_items-1).
        load: position -> RGB image.
        n: originals wanted.
        seed: seed of the sample and of the alterations.

    Returns:
        (origin position, alteration kind, altered image) per query, 4 queries per original.
    """
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n_items, size=min(n, n_items), replace=False)
    origin: list[int] = []
    kinds: list[str] = []
    images: list[Image.Image] = []
    for pos in (int(p) for p in chosen):
        img = load(pos)
        for kind in ALTERATIONS:
            origin.append(pos)
            kinds.append(kind)
            images.append(alter(img, kind, rng))
    return origin, kinds, images


def copy_recall(
    targets: Sequence[Hashable], kinds: Sequence[str], retrieved: Sequence[Sequence[Hashable]]
) -> dict[str, dict[str, float]]:
    """R@1 and R@10 of altered-copy queries, per alteration kind and overall.

    Args:
        targets: per query, the key of its original (an identical image may share it).
        kinds: per query, its alteration.
        retrieved: per query, the keys of the gallery items found, best first.
    """
    out: dict[str, dict[str, float]] = {"r_at_1": {}, "r_at_10": {}}
    for kind in (*ALTERATIONS, "overall"):
        sel = [n for n, k in enumerate(kinds) if kind in (k, "overall")]
        if not sel:
            continue
        t, r = [targets[n] for n in sel], [retrieved[n] for n in sel]
        out["r_at_1"][kind] = hit_rate_at_k(t, r, 1)
        out["r_at_10"][kind] = hit_rate_at_k(t, r, 10)
    return out


def dedupe_eval(
    items: Sequence[Described],
    load: ImageLoader,
    spec: str,
    seed: int,
    n_base: int,
    n_copies: int,
) -> dict[str, Any]:
    """Near-duplicate detection on mildly altered copies injected into a temporary catalogue.

    ``min(n_base, len(items))`` items are sampled with ``seed + 1``; the first ``n_copies``
    of them also get an altered copy (cycling through :data:`MILD_ALTERATIONS`). The
    catalogue is embedded with encoder ``spec``, searched by ``find_duplicates`` with its
    defaults, and deleted.
    """
    from shoplens.catalog.ingest import store_image
    from shoplens.catalog.store import Catalog, ProductRecord, list_catalogs
    from shoplens.index.build import build_image_index
    from shoplens.search.dedupe import find_duplicates

    rng = np.random.default_rng(seed + 1)
    base = [int(i) for i in rng.choice(len(items), size=min(n_base, len(items)), replace=False)]
    if DEDUPE_CATALOG in list_catalogs():
        Catalog.open(DEDUPE_CATALOG).delete()
    cat = Catalog.create(DEDUPE_CATALOG)
    try:
        records: list[ProductRecord] = []
        base_key: dict[str, str] = {}  # sku -> image key of the original it shows
        injected: list[tuple[str, str, str]] = []
        with progress.task("dedupe catalogue", len(base) + min(n_copies, len(base))) as advance:
            for n, pos in enumerate(base + base[:n_copies]):
                p = items[pos]
                copy = n >= len(base)
                kind = MILD_ALTERATIONS[n % len(MILD_ALTERATIONS)]
                img = load(pos)
                key, ph, w, h = store_image(cat, alter(img, kind, rng, mild=True) if copy else img)
                sku = f"{p.sku}-copy-{kind}" if copy else p.sku
                base_key[sku] = base_key.get(p.sku, key)
                if copy:
                    injected.append((p.sku, sku, kind))
                records.append(ProductRecord(sku, p.title, p.category, key, {}, "", ph, w, h))
                advance(1)
        with cat.transaction() as conn:
            cat.record_ingest(conn, "shoplens eval", time.time(), cat.upsert_in(conn, records), 0)
        report = find_duplicates(cat, build_image_index(cat, spec))
    finally:
        cat.delete()
    reported = {frozenset((p.sku_a, p.sku_b)) for p in report.pairs}
    found = [frozenset((a, b)) in reported for a, b, _ in injected]
    cluster = {sku: n for n, c in enumerate(report.clusters) for sku in c}
    same_cluster = [a in cluster and cluster.get(a) == cluster.get(b) for a, b, _ in injected]
    other = [p for p in report.pairs if base_key[p.sku_a] != base_key[p.sku_b]]
    n_pairs = len(report.pairs)
    return {
        "encoder": spec,
        "products": report.products,
        "originals": len(base),
        "injected": len(injected),
        "reported_pairs": n_pairs,
        "injected_found": int(sum(found)),
        "identical_or_copy_of_identical": n_pairs - len(other) - int(sum(found)),
        "other_pairs": len(other),
        "other_by_reason": dict(Counter(p.reason for p in other)),
        "other_examples": [[p.sku_a, p.sku_b, p.similarity, p.reason] for p in other[:10]],
        "precision": (n_pairs - len(other)) / n_pairs if n_pairs else None,
        "recall": float(np.mean(found)) if found else None,
        "recall_same_cluster": float(np.mean(same_cluster)) if found else None,
        "recall_by_alteration": {
            k: float(np.mean([f for f, (_, _, kk) in zip(found, injected, strict=True) if kk == k]))
            for k in MILD_ALTERATIONS
            if any(kk == k for _, _, kk in injected)
        },
    }
