"""``shoplens eval``: measured figures on the Fashion-MNIST test split -> ``docs/RESULTS.md``.

Four timed parts: (1) image-to-image 5-NN accuracy, train gallery and test queries;
(2) text-query precision@10 for the ten class names; (3) R@1 of altered copies of test
images queried against the whole catalogue; (4) near-duplicate detection on altered
copies injected into a temporary catalogue. Stored embeddings are reused when the index
is up to date. Every number in the report comes from the run. The report replaces the
file but keeps its "## Trained models" section (rows appended by ``run_model_eval``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from shoplens import progress
from shoplens.catalog.store import Catalog, Product, list_catalogs
from shoplens.data.fashion_mnist import CLASSES, Split
from shoplens.errors import InvalidInputError, NotFoundError, NotReadyError
from shoplens.eval.context import embed_images
from shoplens.eval.metrics import knn_predict, precision_at_k
from shoplens.eval.report import machine_info, render_report
from shoplens.eval.results_md import write_atomic, write_foundation_report
from shoplens.eval.robustness import altered_copies, copy_recall, dedupe_eval
from shoplens.index.build import build_image_index, build_text_index, text_index_name
from shoplens.index.store import IndexBuild, load_build
from shoplens.registry import get_encoder

KNN_K = 5
TEXT_K = 10
SPLITS: tuple[Split, Split] = ("train", "test")


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


def _augmented(
    cat: Catalog,
    builds: dict[str, tuple[IndexBuild, float | None]],
    products: dict[int, Product],
    n_aug: int,
    seed: int,
) -> dict[str, Any]:
    test = [products[i] for i in sorted(products) if products[i].attributes["split"] == "test"]
    origin, kinds, images = altered_copies(
        len(test), lambda n: cat.load_image(test[n]), n_aug, seed
    )
    targets = [test[n].image_key for n in origin]
    out: dict[str, Any] = {"originals": len(set(origin)), "queries": len(images)}
    for spec, (build, _) in builds.items():
        key_of = {int(i): k for i, k in zip(build.ids, build.keys, strict=True)}
        _scores, top = build.index.search(
            embed_images(get_encoder(spec), images, f"embed altered copies ({spec})"), 10
        )  # (Q, 10) ids
        retrieved = [[key_of.get(int(i), "") for i in row] for row in top]
        twin = [
            int(top[n, 0]) != test[pos].id and retrieved[n][0] == targets[n]
            for n, pos in enumerate(origin)
        ]
        out[spec] = {**copy_recall(targets, kinds, retrieved), "top1_identical_image": sum(twin)}
    return out


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
        test = [p for _, p in sorted(products.items()) if p.attributes["split"] == "test"]
        dedupe = dedupe_eval(
            test, lambda n: cat.load_image(test[n]), encoders[0], seed, dedupe_base, dedupe_copies
        )
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
    write_foundation_report(out, render_report(results, json_name=out.with_suffix(".json").name))
    write_atomic(out.with_suffix(".json"), json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return results
