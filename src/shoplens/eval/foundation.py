"""``shoplens eval``: measured figures on the Fashion-MNIST test split -> ``docs/RESULTS.md``.

Four timed parts: (1) image-to-image 5-NN accuracy, train gallery and test queries;
(2) text-query precision@10 for the ten class names; (3) R@1 of altered copies of test
images queried against the whole catalogue; (4) near-duplicate detection on altered
copies injected into a temporary catalogue. Stored embeddings are reused when the index
is up to date. Every number in the report comes from the run.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from shoplens import progress
from shoplens.catalog.store import Catalog, Product, ProductRecord, list_catalogs
from shoplens.data.fashion_mnist import CLASSES, Split
from shoplens.errors import InvalidInputError, NotFoundError, NotReadyError
from shoplens.eval.metrics import hit_rate_at_k, knn_predict, precision_at_k
from shoplens.eval.report import machine_info, render_report
from shoplens.index.build import build_image_index, build_text_index, text_index_name
from shoplens.index.store import IndexBuild, load_build
from shoplens.registry import get_encoder

ALTERATIONS = ("crop", "noise", "brightness", "blur-jpeg")
MILD_ALTERATIONS = ("crop", "brightness", "noise")
DEDUPE_CATALOG = "fm-dedupe-eval"
KNN_K = 5
TEXT_K = 10
SPLITS: tuple[Split, Split] = ("train", "test")


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
    raise InvalidInputError(f"unknown alteration {kind!r}")


def _ensure_catalog(name: str, limit: int | None, timings: dict[str, float]) -> Catalog:
    """Open the Fashion-MNIST catalogue ``name``, ingesting it when missing or incomplete."""
    from shoplens.catalog.ingest import ingest_fashion_mnist
    from shoplens.data.fashion_mnist import load_fashion_mnist

    if name in list_catalogs():
        cat = Catalog.open(name)
        have = {s: len(cat.filter_ids(attributes={"split": s}) or []) for s in SPLITS}
        try:
            want: dict[str, int] | None = {
                s: min(len(load_fashion_mnist(s, download=False)), limit or 10**9) for s in SPLITS
            }
        except NotFoundError:  # dataset files gone: use the catalogue as it is
            want = None
        if have["train"] and have["test"] and (want is None or want == have):
            return cat
        cat.close()
    t0 = time.time()
    ingest_fashion_mnist(name, limit=limit)
    timings["ingest_s"] = time.time() - t0
    return Catalog.open(name)


def _fresh(cat: Catalog, name: str, make: Callable[[], object]) -> tuple[IndexBuild, float | None]:
    """The current build of index ``name`` if up to date, else a new one and its build time."""
    try:
        build = load_build(cat, name)
        if build.meta.get("catalog_version") == cat.version():
            return build, None
    except NotReadyError:
        pass
    t0 = time.time()
    make()
    return load_build(cat, name), time.time() - t0


def _knn(
    builds: dict[str, tuple[IndexBuild, float | None]], products: dict[int, Product]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec, (build, built_s) in builds.items():
        ids = [int(i) for i in build.ids]
        split = np.array([products[i].attributes["split"] if i in products else "" for i in ids])
        labels = np.array(
            [CLASSES.index(products[i].category) if i in products else -1 for i in ids]
        )
        tr, te = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
        if not len(tr) or not len(te):
            raise NotReadyError(f"index {spec!r} holds no train or no test products")
        t0 = time.time()
        gallery = np.asarray(build.embeddings[tr], dtype=np.float32)  # (N, D)
        queries = np.asarray(build.embeddings[te], dtype=np.float32)  # (Q, D)
        pred = np.empty(len(te), dtype=np.int64)
        with progress.task(f"5-NN ({spec})", len(te)) as advance:
            for s in range(0, len(te), 1024):
                pred[s : s + 1024] = knn_predict(
                    queries[s : s + 1024], gallery, labels[tr], k=KNN_K
                )
                advance(len(pred[s : s + 1024]))
        truth = labels[te]
        out[spec] = {
            "accuracy": float(np.mean(pred == truth)),
            "k": KNN_K,
            "queries": len(te),
            "gallery": len(tr),
            "per_class": {
                c: float(np.mean(pred[truth == n] == n))
                for n, c in enumerate(CLASSES)
                if np.any(truth == n)
            },
            "index": "reused" if built_s is None else "built",
            "embed_s": None if built_s is None else round(built_s, 1),
            "knn_s": round(time.time() - t0, 1),
        }
    return out


def _text(cat: Catalog, image_spec: str, text_encoder: str) -> dict[str, Any]:
    from shoplens.search.engine import SearchEngine

    engine = SearchEngine(cat, image_spec, text_encoder)
    retrieved = [[h.category for h in engine.search(text=c, k=TEXT_K)] for c in CLASSES]
    per_class = {
        c: {
            "precision": precision_at_k([{c}], [got], TEXT_K),
            "others": dict(Counter(g for g in got if g != c)),
        }
        for c, got in zip(CLASSES, retrieved, strict=True)
    }
    return {
        "k": TEXT_K,
        "text_encoder": text_encoder,
        "mean_precision": precision_at_k([{c} for c in CLASSES], retrieved, TEXT_K),
        "per_class": per_class,
    }


def _encode(spec: str, images: Sequence[Image.Image]) -> np.ndarray:
    encoder = get_encoder(spec)
    out = []
    with progress.task(f"embed altered copies ({spec})", len(images)) as advance:
        for s in range(0, len(images), 256):
            out.append(encoder.encode_images(images[s : s + 256]))
            advance(len(images[s : s + 256]))
    return np.concatenate(out)


def _augmented(
    cat: Catalog,
    builds: dict[str, tuple[IndexBuild, float | None]],
    products: dict[int, Product],
    n_aug: int,
    seed: int,
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    test_ids = sorted(i for i, p in products.items() if p.attributes["split"] == "test")
    chosen = [int(i) for i in rng.choice(test_ids, size=min(n_aug, len(test_ids)), replace=False)]
    origin, kinds, images = [], [], []
    for pid in chosen:
        img = cat.load_image(products[pid])
        for kind in ALTERATIONS:
            origin.append(pid)
            kinds.append(kind)
            images.append(alter(img, kind, rng))
    out: dict[str, Any] = {"originals": len(chosen), "queries": len(images)}
    for spec, (build, _) in builds.items():
        key_of = {int(i): k for i, k in zip(build.ids, build.keys, strict=True)}
        _scores, top = build.index.search(_encode(spec, images), 10)  # (Q, 10) ids
        retrieved = [[key_of.get(int(i), "") for i in row] for row in top]
        targets = [products[pid].image_key for pid in origin]
        r1, r10 = {}, {}
        for kind in (*ALTERATIONS, "overall"):
            sel = [n for n, k in enumerate(kinds) if kind in (k, "overall")]
            r1[kind] = hit_rate_at_k([targets[n] for n in sel], [retrieved[n] for n in sel], 1)
            r10[kind] = hit_rate_at_k([targets[n] for n in sel], [retrieved[n] for n in sel], 10)
        twin = [
            int(top[n, 0]) != pid and retrieved[n][0] == targets[n] for n, pid in enumerate(origin)
        ]
        out[spec] = {"r_at_1": r1, "r_at_10": r10, "top1_identical_image": int(sum(twin))}
    return out


def _dedupe(
    source: Catalog, products: dict[int, Product], spec: str, seed: int, n_base: int, n_copies: int
) -> dict[str, Any]:
    from shoplens.catalog.ingest import store_image
    from shoplens.search.dedupe import find_duplicates

    rng = np.random.default_rng(seed + 1)
    test_ids = sorted(i for i, p in products.items() if p.attributes["split"] == "test")
    base = [int(i) for i in rng.choice(test_ids, size=min(n_base, len(test_ids)), replace=False)]
    if DEDUPE_CATALOG in list_catalogs():
        Catalog.open(DEDUPE_CATALOG).delete()
    cat = Catalog.create(DEDUPE_CATALOG)
    try:
        records: list[ProductRecord] = []
        base_key: dict[str, str] = {}  # sku -> image key of the original it shows
        injected: list[tuple[str, str, str]] = []
        with progress.task("dedupe catalogue", len(base) + min(n_copies, len(base))) as advance:
            for n, pid in enumerate(base + base[:n_copies]):
                p = products[pid]
                copy = n >= len(base)
                kind = MILD_ALTERATIONS[n % len(MILD_ALTERATIONS)]
                img = source.load_image(p)
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


def run_foundation_eval(
    *,
    catalog: str = "fashion-mnist",
    encoders: Sequence[str] = ("effnet-lite0@64", "pixels"),
    n_aug: int = 1000,
    seed: int = 0,
    out: Path = Path("docs/RESULTS.md"),
    limit: int | None = None,
    text_encoder: str = "minilm",
    dedupe_base: int = 2000,
    dedupe_copies: int = 200,
) -> dict[str, Any]:
    """Measure search quality on Fashion-MNIST; write ``out`` (Markdown) and ``out.json``.

    ``limit`` keeps the first N products of each split, in catalogue ``{catalog}-{limit}``
    so the full catalogue is left alone. The first encoder serves the text search and
    the near-duplicate part. Returns the figures written to the JSON file.
    """
    encoders = list(dict.fromkeys(encoders))
    if not encoders:
        raise InvalidInputError("give at least one image encoder")
    if n_aug < 1 or dedupe_base < 2 or dedupe_copies < 1:
        raise InvalidInputError("n_aug and dedupe_copies must be >= 1 and dedupe_base >= 2")
    for spec in [*encoders, text_encoder]:
        get_encoder(spec)  # fail fast on an unknown spec
    t_start = time.time()
    timings: dict[str, float] = {}
    name = catalog if limit is None else f"{catalog}-{limit}"
    cat = _ensure_catalog(name, limit, timings)
    prev_meta = {k: cat.get_meta(k) for k in ("default_encoder", "text_encoder")}
    try:
        products = {
            p.id: p
            for p in cat.iter_products()
            if p.attributes.get("split") in ("train", "test") and p.category in CLASSES
        }
        t0 = time.time()
        builds = {s: _fresh(cat, s, partial(build_image_index, cat, s)) for s in encoders}
        knn = _knn(builds, products)
        timings["knn_s"] = time.time() - t0
        t0 = time.time()
        text_build = _fresh(
            cat, text_index_name(text_encoder), lambda: build_text_index(cat, text_encoder)
        )
        text = _text(cat, encoders[0], text_encoder)
        text["index"] = "reused" if text_build[1] is None else "built"
        text["embed_s"] = None if text_build[1] is None else round(text_build[1], 1)
        timings["text_s"] = time.time() - t0
        t0 = time.time()
        augmented = _augmented(cat, builds, products, n_aug, seed)
        timings["augmented_s"] = time.time() - t0
        t0 = time.time()
        dedupe = _dedupe(cat, products, encoders[0], seed, dedupe_base, dedupe_copies)
        timings["dedupe_s"] = time.time() - t0
        n_products = cat.count()
        splits = Counter(p.attributes["split"] for p in products.values())
    finally:
        for key, value in prev_meta.items():
            if value is not None:
                cat.set_meta(key, value)
        cat.close()
    timings["total_s"] = time.time() - t_start
    results: dict[str, Any] = {
        "meta": {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "catalog": name,
            "products": n_products,
            "train": splits["train"],
            "test": splits["test"],
            "encoders": encoders,
            "text_encoder": text_encoder,
            "seed": seed,
            "n_aug": n_aug,
            "limit": limit,
            "machine": machine_info(),
            "timings_s": {k: round(v, 1) for k, v in timings.items()},
        },
        "knn": knn,
        "text": text,
        "augmented": augmented,
        "dedupe": dedupe,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(results, json_name=out.with_suffix(".json").name))
    out.with_suffix(".json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return results
