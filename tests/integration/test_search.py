from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageFilter

from shoplens.catalog.ingest import ingest_manifest
from shoplens.catalog.store import Catalog
from shoplens.errors import InvalidInputError, NotFoundError, NotReadyError
from shoplens.index.build import build_image_index, build_indexes
from shoplens.index.store import index_root, load_build
from shoplens.search.engine import Filters, SearchEngine

from ..conftest import CATEGORIES, make_product_image


@pytest.fixture(scope="module")
def engine(built_catalog: str) -> SearchEngine:
    return SearchEngine.open(built_catalog)


def test_image_query_finds_the_product(engine: SearchEngine) -> None:
    for sku in ("SKU-000", "SKU-103", "SKU-205", "SKU-301"):
        p = engine.catalog.get(sku)
        hits = engine.search(image=engine.catalog.load_image(p), k=3)
        assert hits[0].sku == sku and hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_altered_photo_still_finds_the_product(engine: SearchEngine) -> None:
    found = 0
    for c_idx, category in enumerate(CATEGORIES):
        for i in range(3):
            img = make_product_image(category, seed=100 * c_idx + i)
            altered = img.filter(ImageFilter.GaussianBlur(0.6)).resize((40, 40))
            hits = engine.search(image=altered, k=3)
            assert hits[0].category == category
            found += f"SKU-{c_idx}{i:02d}" in [h.sku for h in hits]
    assert found >= 10  # of 12, with a random tiny encoder


def test_text_query_ranks_matching_category_first(engine: SearchEngine) -> None:
    hits = engine.search(text="blue square", k=6)
    assert [h.category for h in hits] == ["Blue square"] * 6
    assert all(h.image_url.startswith("/v1/products/") for h in hits)


def test_filters(engine: SearchEngine) -> None:
    img = engine.catalog.load_image(engine.catalog.get("SKU-000"))
    hits = engine.search(image=img, k=50, filters=Filters(categories=["Green triangle"]))
    assert len(hits) == 6 and {h.category for h in hits} == {"Green triangle"}
    hits = engine.search(
        text="product",
        k=50,
        filters=Filters(categories=["Red circle"], attributes={"size": "large"}),
    )
    assert {h.sku for h in hits} == {"SKU-001", "SKU-003", "SKU-005"}
    assert engine.search(text="product", k=5, filters=Filters(categories=["Nope"])) == []


def test_similar_excludes_the_product_itself(engine: SearchEngine) -> None:
    hits = engine.similar("SKU-102", k=5)
    assert "SKU-102" not in [h.sku for h in hits] and len(hits) == 5
    assert hits[0].category == "Blue square"


def test_image_plus_text_fuses_both(engine: SearchEngine) -> None:
    img = engine.catalog.load_image(engine.catalog.get("SKU-000"))
    hits = engine.search(image=img, text="yellow stripes", k=10, text_weight=3.0)
    cats = {h.category for h in hits}
    assert "Yellow stripes" in cats and "Red circle" in cats


def test_query_errors(engine: SearchEngine) -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        engine.search(text="   ")
    with pytest.raises(InvalidInputError, match="k must"):
        engine.search(text="x", k=0)
    with pytest.raises(InvalidInputError):
        engine.search(sku="SKU-000", text="x")
    with pytest.raises(InvalidInputError, match="give a query"):
        engine.search()
    with pytest.raises(NotFoundError, match="unknown sku"):
        engine.similar("NOPE")


def test_duplicates_collapse_in_results(home: Path, catalog_dir: Path) -> None:
    with catalog_dir.open("a") as f:
        f.write("DUP-1,Red circle copy,Red circle,img/SKU-000.png,red,small\n")
    ingest_manifest(catalog_dir, "dups")
    cat = Catalog.open("dups")
    build_indexes(cat, "test-tiny", text_encoder="test-tiny-text")
    engine = SearchEngine(cat)
    img = cat.load_image(cat.get("SKU-000"))
    top = [h.sku for h in engine.search(image=img, k=3)]
    assert len({"SKU-000", "DUP-1"} & set(top)) == 1
    top_all = [h.sku for h in engine.search(image=img, k=3, dedupe=False)]
    assert {"SKU-000", "DUP-1"} <= set(top_all[:2])


def test_rebuild_swaps_atomically_and_reuses_embeddings(
    home: Path, catalog_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest_manifest(catalog_dir, "shop")
    cat = Catalog.open("shop")
    with pytest.raises(NotReadyError, match="index build"):
        SearchEngine(cat)
    first = build_image_index(cat, "test-tiny")
    engine = SearchEngine(cat)
    assert not engine.stale

    from shoplens.models import encoders

    calls: list[int] = []
    original = encoders.TinyConvEncoder.encode_images

    def counting(self: object, images: list) -> np.ndarray:  # type: ignore[type-arg]
        calls.append(len(images))
        return original(self, images)  # type: ignore[arg-type]

    monkeypatch.setattr(encoders.TinyConvEncoder, "encode_images", counting)
    with catalog_dir.open("a") as f:
        f.write("NEW-1,A new blue square,Blue square,img/SKU-101.png,blue,large\n")
        f.write("NEW-2,Changed photo,Blue square,img/SKU-000.png,blue,large\n")
    ingest_manifest(catalog_dir, "shop")
    assert engine.stale  # catalogue changed after the build
    second = build_image_index(cat, "test-tiny")
    assert sum(calls) == 0  # both new products reuse cached embeddings of identical images
    assert second.path != first.path and second.index.ntotal == 26
    assert os.path.islink(index_root(cat, "test-tiny") / "current")
    assert load_build(cat, "test-tiny").path == second.path
    assert not list((index_root(cat, "test-tiny") / "builds").glob(".tmp-*"))
    assert not SearchEngine(cat).stale
