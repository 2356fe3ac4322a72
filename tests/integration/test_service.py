from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from shoplens.serve import ServiceSettings, create_app

from ..helpers import assert_error, png_bytes


@pytest.fixture(scope="module")
def client(built_catalog: str) -> Iterator[TestClient]:
    app = create_app(
        ServiceSettings(catalog=built_catalog, load_in_background=False, max_upload_bytes=200_000)
    )
    with TestClient(app) as c:
        yield c


def test_health_ready_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["vectors"] == 24
    spec = client.get("/openapi.json").json()
    assert {
        "/v1/search",
        "/v1/products/{sku}",
        "/v1/products/{sku}/similar",
        "/v1/products/{sku}/image",
    } <= set(spec["paths"])
    body = spec["paths"]["/v1/search"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)


def test_search_by_text_sku_and_image(client: TestClient) -> None:
    r = client.post("/v1/search", json={"text": "yellow stripes", "k": 3})
    assert r.status_code == 200
    assert [h["category"] for h in r.json()["results"]] == ["Yellow stripes"] * 3
    r = client.post("/v1/search", json={"sku": "SKU-100", "k": 2})
    assert r.json()["query"]["kind"] == "sku" and "SKU-100" not in [
        h["sku"] for h in r.json()["results"]
    ]
    r = client.post(
        "/v1/search", files={"image": ("q.png", png_bytes(), "image/png")}, data={"k": "3"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["sku"] == "SKU-201"
    r = client.post(
        "/v1/search",
        files={"image": ("q.png", png_bytes(), "image/png")},
        data={"k": "5", "category": "Red circle"},
    )
    assert {h["category"] for h in r.json()["results"]} == {"Red circle"}


def test_products_similar_and_image(client: TestClient) -> None:
    p = client.get("/v1/products/SKU-001").json()
    assert p["category"] == "Red circle" and p["attributes"]["size"] == "large"
    sim = client.get("/v1/products/SKU-001/similar", params={"k": 4}).json()
    assert sim["count"] == 4 and sim["results"][0]["category"] == "Red circle"
    img = client.get("/v1/products/SKU-001/image")
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert img.content[:8] == b"\x89PNG\r\n\x1a\n"
    filtered = client.get(
        "/v1/products/SKU-001/similar", params={"k": 10, "attr": "size=large"}
    ).json()
    assert filtered["count"] > 0
    assert all(h["attributes"]["size"] == "large" for h in filtered["results"])


def test_bad_input_gets_json_4xx(client: TestClient) -> None:
    assert_error(client.get("/v1/products/NOPE"), 404, "not_found")
    assert_error(client.get("/v1/products/NOPE/similar"), 404, "not_found")
    assert_error(client.get("/v1/products/SKU-001/similar", params={"k": 0}), 422)
    assert_error(client.post("/v1/search", json={}), 422, "invalid_input")
    assert_error(client.post("/v1/search", json={"text": "a", "sku": "b"}), 422)
    assert_error(client.post("/v1/search", json={"text": "   "}), 422)
    assert_error(client.post("/v1/search", json={"text": "a", "k": 5000}), 422)
    assert_error(client.post("/v1/search", json={"text": "a", "bogus": 1}), 422)
    assert_error(
        client.post(
            "/v1/search", content=b"{not json", headers={"content-type": "application/json"}
        ),
        422,
    )
    assert_error(
        client.post("/v1/search", content=b"x", headers={"content-type": "text/plain"}), 422
    )
    assert_error(
        client.post("/v1/search", files={"image": ("a.jpg", b"plain text", "image/jpeg")}),
        422,
        "invalid_image",
    )
    truncated = png_bytes()[:70]
    assert_error(
        client.post("/v1/search", files={"image": ("a.png", truncated, "image/png")}),
        422,
        "invalid_image",
    )
    big = b"\x89PNG" + b"0" * 300_000
    assert_error(client.post("/v1/search", files={"image": ("a.png", big, "image/png")}), 413)
    assert_error(
        client.post("/v1/search", files={"other": ("a.png", png_bytes(), "image/png")}), 422
    )
    assert_error(client.get("/v1/nope"), 404)
    # still healthy and answering after all that
    assert client.post("/v1/search", json={"text": "red circle"}).status_code == 200


def test_metrics_count_requests(client: TestClient) -> None:
    client.post("/v1/search", json={"text": "blue square"})
    text = client.get("/metrics").text
    assert 'shoplens_http_requests_total{method="POST",route="/v1/search",status="200"}' in text
    assert "shoplens_search_seconds_bucket" in text
    assert "shoplens_index_vectors 24.0" in text and "shoplens_ready 1.0" in text


def test_unknown_catalogue_is_not_ready(session_home: object) -> None:
    app = create_app(ServiceSettings(catalog="does-not-exist", load_in_background=False))
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and "unknown catalogue" in r.json()["error"]["message"]
        assert_error(c.post("/v1/search", json={"text": "x"}), 503, "not_ready")


def test_image_plus_text_with_weights(client: TestClient) -> None:
    def cats(text_weight: str) -> list[str]:
        r = client.post(
            "/v1/search",
            files={"image": ("q.png", png_bytes(), "image/png")},
            data={"text": "yellow stripes", "k": "10", "text_weight": text_weight},
        )
        assert r.status_code == 200, r.text
        assert r.json()["query"]["kind"] == "image+text"
        return [h["category"] for h in r.json()["results"]]

    heavy_text, no_text = cats("10"), cats("0")
    assert heavy_text[0] == "Yellow stripes"
    assert "Yellow stripes" not in no_text[:6] and no_text[0] == "Green triangle"
    bad = client.post(
        "/v1/search",
        files={"image": ("q.png", png_bytes(), "image/png")},
        data={"text": "x", "text_weight": "99"},
    )
    assert_error(bad, 422, "invalid_input")


def test_batched_text_search_answers_like_the_engine(
    client: TestClient, built_catalog: str
) -> None:
    """With batching on (the default) a text query's dense ranking runs through the
    service's one-step batcher: concurrent queries get the engine's own answers."""
    from concurrent.futures import ThreadPoolExecutor

    from shoplens.search.engine import SearchEngine

    engine = client.app.state.shoplens.get()  # type: ignore[attr-defined]
    assert engine.dense_text is not None
    queries = ["yellow stripes", "red circle", "blue square", "green triangle"] * 3
    plain = SearchEngine.open(built_catalog)
    want = {q: [h.sku for h in plain.search(text=q, k=5)] for q in set(queries)}
    plain.catalog.close()

    def ask(q: str) -> list[str]:
        r = client.post("/v1/search", json={"text": q, "k": 5})
        assert r.status_code == 200, r.text
        return [h["sku"] for h in r.json()["results"]]

    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(ask, queries))
    assert got == [want[q] for q in queries]
    # a filtered text query takes the per-query path: same filter semantics
    r = client.post("/v1/search", json={"text": "stripes", "k": 3, "categories": ["Red circle"]})
    assert r.status_code == 200 and {h["category"] for h in r.json()["results"]} <= {"Red circle"}


def test_batched_image_search_answers_like_the_engine(built_catalog: str) -> None:
    """With batching on an image query's encoder pass and index search run as one batched
    step: concurrent uploads get the engine's own answers (each its own), a page that
    duplicate images left short is asked again, and filtered queries keep their filter."""
    from concurrent.futures import ThreadPoolExecutor

    from shoplens.data.images import decode_image
    from shoplens.search.engine import SearchEngine

    cats = ("Red circle", "Blue square", "Yellow stripes", "Green triangle")
    uploads = [png_bytes(c, 300 + i) for i, c in enumerate(cats)] * 3
    plain = SearchEngine.open(built_catalog)
    want = [[h.sku for h in plain.search(image=decode_image(b), k=4)] for b in uploads]
    # a stub batched step whose first answer is one product over and over: the page is
    # not full after dedupe, so the engine asks the index again and still fills it
    one = plain.image_ranking(decode_image(uploads[0]), 1)
    plain.dense_image = lambda item: [one * item[1]]
    assert [h.sku for h in plain.search(image=decode_image(uploads[0]), k=4)] == want[0]
    plain.catalog.close()

    app = create_app(
        ServiceSettings(catalog=built_catalog, load_in_background=False, rate_limit_per_s=0)
    )
    with TestClient(app) as client:
        assert app.state.shoplens.get().dense_image is not None

        def ask(data: bytes) -> list[str]:
            r = client.post(
                "/v1/search", files={"image": ("q.png", data, "image/png")}, data={"k": "4"}
            )
            assert r.status_code == 200, r.text
            return [h["sku"] for h in r.json()["results"]]

        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(ask, uploads))
        r = client.post(
            "/v1/search",
            files={"image": ("q.png", uploads[0], "image/png")},
            data={"k": "3", "category": "Blue square"},
        )
    assert got == want
    assert r.status_code == 200 and {h["category"] for h in r.json()["results"]} == {"Blue square"}


def test_loaded_heap_is_frozen_out_of_the_cyclic_gc(built_catalog: str) -> None:
    """After start-up everything loaded is frozen (gc.freeze: no full-collection stalls
    over it), new garbage is still collected, and shutdown unfreezes."""
    import gc

    gc.unfreeze()
    app = create_app(ServiceSettings(catalog=built_catalog, load_in_background=False))
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 200
        frozen = gc.get_freeze_count()
        assert frozen > 1000
        cycle: list[object] = []
        cycle.append(cycle)  # new cyclic garbage after the freeze
        del cycle
        assert gc.collect() >= 1
    assert gc.get_freeze_count() == 0
    off = create_app(
        ServiceSettings(catalog=built_catalog, load_in_background=False, gc_freeze=False)
    )
    with TestClient(off) as c:
        assert c.get("/readyz").status_code == 200
        assert gc.get_freeze_count() == 0
