"""A saved model as ``trained:DIR``: category head, held-out classes, composed queries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from shoplens.catalog.ingest import ingest_manifest
from shoplens.catalog.store import Catalog
from shoplens.errors import InvalidInputError
from shoplens.index.build import build_image_index
from shoplens.models.io import save_model
from shoplens.registry import create_encoder, create_model
from shoplens.search.engine import SearchEngine

from ..conftest import CATEGORIES


@pytest.fixture
def clip_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "clip"
    save_model(create_model("clip-test-tiny", class_names=list(CATEGORIES)), folder)
    (folder / "config.yaml").write_text(
        yaml.safe_dump({"data": {"held_out": ["Blue square"]}}), encoding="utf-8"
    )
    return folder


def test_trained_encoder_exposes_head_classes_and_held_out(
    clip_dir: Path, product_image: Any
) -> None:
    enc: Any = create_encoder(f"trained:{clip_dir}")
    assert enc.classes == tuple(CATEGORIES) and enc.held_out_classes == ("Blue square",)
    logits = enc.classify_images([product_image("Red circle", 1), product_image("Red circle", 2)])
    assert logits.shape == (2, 4) and np.isfinite(logits).all()
    assert not enc.can_compose
    with pytest.raises(InvalidInputError, match="no combiner"):
        enc.compose([product_image("Red circle", 1)], ["in the blue square category"])


def test_composed_queries_go_through_the_combiner(
    clip_dir: Path, home: Path, catalog_dir: Path, product_image: Any
) -> None:
    ingest_manifest(catalog_dir, "compose")
    save_model(create_model("combiner-test-tiny"), clip_dir / "combiner")
    spec = f"trained:{clip_dir}"
    enc: Any = create_encoder(spec)
    assert enc.can_compose
    q = enc.compose([product_image("Red circle", 1)], ["in the blue square category"])
    assert q.shape == (1, enc.dim) and np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
    # the combined query differs from the image alone and from the text alone
    assert not np.allclose(q, enc.encode_images([product_image("Red circle", 1)]))
    assert not np.allclose(q, enc.encode_texts(["in the blue square category"]))

    with Catalog.open("compose") as cat:
        build_image_index(cat, "test-tiny")
        build_image_index(cat, spec)
        engine = SearchEngine(cat, spec)
        assert engine.composes
        image = product_image("Red circle", 3)
        composed = engine.search(image=image, text="blue square", k=5)
        query = enc.compose([image], ["blue square"])  # (1, D)
        _, ids = engine.image_build.index.search(query, 5, None)
        by_id = cat.get_by_ids([int(i) for i in ids[0]])
        assert [h.sku for h in composed] == [by_id[int(i)].sku for i in ids[0]]
        fused = engine.search(image=image, text="blue square", k=5, compose=False)
        assert len(fused) == 5
        # an encoder without a combiner refuses compose=True with a clear message
        plain = SearchEngine(cat, "test-tiny")
        with pytest.raises(InvalidInputError, match="no combiner"):
            plain.search(image=image, text="blue square", k=5, compose=True)


def test_service_batches_every_dense_ranking_of_a_text_query(
    clip_dir: Path, home: Path, catalog_dir: Path
) -> None:
    """With an encoder that embeds texts in its image space, the service's one batched
    text step holds both dense rankings (text encoder + text index, and the model's text
    tower + image index): concurrent text queries get the plain engine's answers."""
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from shoplens.index.build import build_indexes
    from shoplens.serve import ServiceSettings, create_app

    ingest_manifest(catalog_dir, "clipserve")
    spec = f"trained:{clip_dir}"
    queries = ["red circle", "blue square", "yellow stripes", "green triangle"] * 3
    with Catalog.open("clipserve") as cat:
        build_indexes(cat, spec, text_encoder="test-tiny-text")
        plain = SearchEngine(cat, spec, text_encoder="test-tiny-text")
        assert plain.encoder.shared_space
        assert len(plain.text_rankings("red circle", 20)) == 3  # BM25, text index, tower
        want = {q: [(h.sku, round(h.score, 6)) for h in plain.search(text=q, k=5)] for q in queries}
    app = create_app(ServiceSettings(catalog="clipserve", encoder=spec, load_in_background=False))
    with TestClient(app) as client:
        engine = app.state.shoplens.get()
        indexes = [index for _, index in engine.dense_text.signals]
        assert len(indexes) == 2
        assert indexes[1] is not engine.text_build.index  # the image index's ranking too

        def ask(q: str) -> list[tuple[str, float]]:
            r = client.post("/v1/search", json={"text": q, "k": 5})
            assert r.status_code == 200, r.text
            return [(h["sku"], round(h["score"], 6)) for h in r.json()["results"]]

        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(ask, queries))
    assert got == [want[q] for q in queries]
