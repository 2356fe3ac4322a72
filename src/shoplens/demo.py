"""``shoplens demo``: Fashion-MNIST ingested, a CLIP-style model trained, indexed and
searched, offline.

On first run the demo trains shoplens's own CLIP-style model (small CNN image tower,
frozen MiniLM text tower with a projection) and a composed-query combiner on the
Fashion-MNIST training split, registers it in MLflow as ``fashion-mnist-clip@champion``
and indexes the catalogue with it; text search fuses BM25, MiniLM over product texts and
the model's text-to-image ranking. Later runs reuse the registered model, the stored
catalogue and the indexes (rebuilt only when they changed), so the service is up within
a minute.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from shoplens.catalog.store import Catalog, list_catalogs
from shoplens.config import shoplens_home
from shoplens.errors import NotFoundError
from shoplens.index.build import build_image_index, build_text_index, text_index_name
from shoplens.index.store import is_fresh
from shoplens.search.engine import Hit, SearchEngine

DEMO_CATALOG = "fashion-mnist"
DEMO_MODEL = "fashion-mnist-clip"  # registered model name (alias champion)
FULL_SIZE = 70_000


def customer_photo(img: Image.Image, seed: int = 0) -> Image.Image:
    """A query that is not in the catalogue: the product re-photographed (crop, blur, noise)."""
    rng = np.random.default_rng(seed)
    w, h = img.size
    crop = img.crop((1, 1, w - 1, h - 2)).resize((w * 4, h * 4), Image.Resampling.BICUBIC)
    crop = crop.filter(ImageFilter.GaussianBlur(1.2))
    arr = np.asarray(crop, dtype=np.float32) * 0.9 + 20 + rng.normal(0, 8, (h * 4, w * 4, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _first_of(catalog: Catalog, category: str) -> str:
    """The sku of the first test product of ``category``."""
    ids = catalog.filter_ids([category], {"split": "test"}) or []
    if not ids:
        raise NotFoundError(f"the demo catalogue has no test product of {category!r}")
    return catalog.get_by_ids([min(ids)])[min(ids)].sku


def results_grid(
    rows: list[tuple[str, Image.Image | None, list[Hit]]], path: Path, cell: int = 96
) -> Path:
    """Write a picture: one row per query (query image or text, then the top results)."""
    ncols = 1 + max((len(h) for _, _, h in rows), default=0)
    label_h = 30
    grid = Image.new("RGB", (ncols * (cell + 8) + 8, len(rows) * (cell + label_h + 8) + 8), "white")
    draw = ImageDraw.Draw(grid)
    for r, (label, qimg, hits) in enumerate(rows):
        y = 8 + r * (cell + label_h + 8)
        if qimg is not None:
            grid.paste(qimg.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (8, y))
        else:
            draw.rectangle((8, y, 8 + cell, y + cell), outline="black")
            for n, line in enumerate(textwrap.wrap(label, 14)[:5]):
                draw.text((12, y + 6 + 14 * n), line, fill="black")
        draw.text((10, y + cell + 2), label[:16], fill="black")
        draw.text((10, y + cell + 14), "query", fill="#444444")
        for c, hit in enumerate(hits, start=1):
            x = 8 + c * (cell + 8)
            with Image.open(hit.image_path) as im:
                grid.paste(im.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (x, y))
            draw.text((x + 2, y + cell + 2), hit.category[:16], fill="black")
            draw.text((x + 2, y + cell + 14), f"{hit.score:.3f}", fill="#444444")
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def _registered_model(name: str) -> Path | None:
    """The champion version's folder of registered model ``name`` if complete on disk."""
    from shoplens.training.tracking import MlflowTracker

    try:
        info = MlflowTracker().get_model_version_by_alias(name, "champion")
    except NotFoundError:
        return None
    folder = Path(info.source_dir)
    done = (folder / "model.json").is_file() and (folder / "combiner" / "model.json").is_file()
    return folder if done else None


def demo_model(limit: int | None, say: Callable[[str], None]) -> Path:
    """The demo's CLIP-style model folder: the registered champion, or trained now.

    Trains the ``fmnist-clip`` recipe, then the ``fmnist-combiner`` recipe over it (the
    combiner is installed in the model folder), and registers the folder as
    ``fashion-mnist-clip[-LIMIT]@champion``.
    """
    from shoplens.config import load_config
    from shoplens.training.experiment import RECIPES, ExperimentConfig, run_experiment
    from shoplens.training.tracking import MlflowTracker

    name = DEMO_MODEL if limit is None else f"{DEMO_MODEL}-{limit}"
    found = _registered_model(name)
    if found is not None:
        say(f"using the registered model {name}@champion ({found})")
        return found
    limits = [] if limit is None else [f"data.limit={limit}"]
    say("training shoplens's CLIP-style model on the Fashion-MNIST training split ...")
    clip_cfg = load_config(
        ExperimentConfig, RECIPES / "fmnist-clip.yaml", [f"run_name={name}", *limits]
    )
    clip = run_experiment(clip_cfg)
    say(f"  {_metrics_line(clip.metrics)} ({clip.wall_time_s:.0f}s)")
    say("training the composed-query combiner over it ...")
    comb_cfg = load_config(
        ExperimentConfig,
        RECIPES / "fmnist-combiner.yaml",
        [f"run_name={name}-combiner", f"data.base_model={clip.model_dir}", *limits],
    )
    comb = run_experiment(comb_cfg)
    say(f"  {_metrics_line(comb.metrics)} ({comb.wall_time_s:.0f}s)")
    tracker = MlflowTracker(clip_cfg.tracking.experiment)
    tracker.run_id = clip.run_id
    tracker.log_artifact(clip.model_dir, "model")  # now with its combiner
    info = tracker.register_model(str(clip.run_id), "model", name, "champion")
    say(f"registered {name} version {info.version} as champion")
    return Path(info.source_dir)


DEMO_CUSTOMERS = 2000


def demo_recommendations(
    catalog: Catalog, customers: int, say: Callable[[str], None]
) -> dict[str, Any]:
    """SIMULATED customers (when the catalogue has no events) and a fitted recommender.

    Refits only when the events, the catalogue or the image index changed since the last
    recommender build. Returns the build's metadata and an example customer.
    """
    from shoplens.index.store import read_meta
    from shoplens.personalize.events import EventStore
    from shoplens.personalize.items import item_space
    from shoplens.personalize.service import fit_recommendations, recs_root
    from shoplens.personalize.simulate import preset_config, simulate

    with EventStore.open(catalog) as store:
        if store.count() == 0:
            say(f"simulating {customers} customers (SIMULATED events, labelled as such) ...")
            cfg = preset_config("balanced", n_customers=customers)
            sim = simulate(item_space(catalog, text=False), cfg)
            store.add_simulated(sim.events)
        events = store.count()
        ids = store.customer_ids(limit=1, simulated=True)
    example = ids[0] if ids else None
    meta_path = recs_root(catalog) / "current" / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    index = read_meta(catalog, catalog.get_meta("default_encoder") or "") or {}
    if (
        meta.get("stored_events") != events
        or meta.get("catalog_version") != catalog.version()
        or meta.get("fitted_at", 0) < index.get("built_at", 0)
    ):
        say(f"fitting the recommender on {events} events ...")
        meta = fit_recommendations(catalog, say=say)
    return {**meta, "example_customer": example}


def _metrics_line(metrics: dict[str, float]) -> str:
    keys = [k for k in metrics if k.startswith("eval/")] or sorted(metrics)[:3]
    return ", ".join(f"{k.removeprefix('eval/')} {metrics[k]:.3f}" for k in keys)


def run_demo(
    *,
    limit: int | None = None,
    grid_path: Path | None = None,
    echo: Callable[[str], None] | None = print,
    customers: int | None = None,
) -> dict[str, Any]:
    """Prepare the demo catalogue and run example searches; return a summary."""
    from shoplens.catalog.ingest import ingest_fashion_mnist

    say = echo or (lambda _s: None)
    t0 = time.time()
    name = DEMO_CATALOG if limit is None else f"{DEMO_CATALOG}-{limit}"
    expected = FULL_SIZE if limit is None else 2 * limit
    timings: dict[str, float] = {}
    have = name in list_catalogs() and Catalog.open(name).count() == expected
    if not have:
        say(f"ingesting Fashion-MNIST ({expected} real Zalando product photos) ...")
        ingest_fashion_mnist(name, limit=limit)
    timings["ingest"] = time.time() - t0
    catalog = Catalog.open(name)
    encoder = f"trained:{demo_model(limit, say)}"
    timings["model"] = time.time() - t0 - sum(timings.values())
    if not is_fresh(catalog, encoder):
        say(f"embedding images with {encoder} ...")
        build_image_index(catalog, encoder)
    catalog.set_meta("default_encoder", encoder)
    timings["image_index"] = time.time() - t0 - sum(timings.values())
    if not is_fresh(catalog, text_index_name("minilm")):
        say("embedding product texts with all-MiniLM-L6-v2 and building BM25 ...")
        build_text_index(catalog, "minilm")
    timings["text_index"] = time.time() - t0 - sum(timings.values())
    recs = demo_recommendations(catalog, customers or DEMO_CUSTOMERS, say)
    timings["recommendations"] = time.time() - t0 - sum(timings.values())

    engine = SearchEngine(catalog, encoder)
    probe = catalog.get("fm-test-00000")
    photo = customer_photo(catalog.load_image(probe))
    sneaker = catalog.get(_first_of(catalog, "Sneaker"))
    examples: list[tuple[str, Image.Image | None, list[Hit]]] = [
        (f"photo of {probe.category}", photo, engine.search(image=photo, k=8)),
        (
            "this sneaker, as an ankle boot",
            catalog.load_image(sneaker),
            engine.search(
                image=catalog.load_image(sneaker), text="in the ankle boot category", k=8
            ),
        ),
        ("text: ankle boot", None, engine.search(text="ankle boot", k=8)),
        ("text: bag", None, engine.search(text="bag", k=8)),
        (
            "sku fm-test-00001",
            catalog.load_image(catalog.get("fm-test-00001")),
            engine.similar("fm-test-00001", k=8),
        ),
    ]
    for label, _img, hits in examples:
        say(f"\n{label}:")
        for n, h in enumerate(hits[:5], 1):
            say(f"  {n}. {h.score:.3f}  {h.sku:<16} {h.category}")
    grid = results_grid(examples, grid_path or shoplens_home() / "demo" / "results_grid.png")
    timings["total"] = time.time() - t0
    say(f"\nresults grid: {grid}")
    say(f"ready in {timings['total']:.0f}s (catalogue {name}, {catalog.count()} products)")
    return {
        "catalog": name,
        "products": catalog.count(),
        "encoder": encoder,
        "grid": str(grid),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "recommendations": recs,
        "examples": {label: [h.to_dict() for h in hits] for label, _i, hits in examples},
    }
