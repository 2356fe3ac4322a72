"""Access control and request limits of the real service (TestClient on ``create_app``).

Rate limits (429 + Retry-After, per key apart from per address, trusted proxies), CORS
closed by default, 413/414 JSON, security headers, the write routes (ingest over HTTP,
model promote, index reload) and an OpenAPI walk: every write route needs a write key.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shoplens.catalog.store import Catalog
from shoplens.serve import ServiceSettings
from shoplens.serve.keys import KeyStore

from ..conftest import write_catalog
from ..helpers import assert_error, auth, make_client, png_bytes

CATALOG = "access-tiny"
MODEL = "access-model"
ORIGIN = "https://shop.example"


@pytest.fixture(scope="module")
def keys(session_home: Path) -> dict[str, str]:
    store = KeyStore()
    out = {scope: store.create(scope, f"access {scope}")[1] for scope in ("read", "write")}
    out["read2"] = store.create("read", "access read 2")[1]
    out["admin"] = store.create("admin", "access admin")[1]
    store.close()
    return out


@pytest.fixture(scope="module")
def client(built_catalog: str) -> Iterator[TestClient]:
    """The service with its default limits."""
    with make_client(built_catalog, max_upload_bytes=200_000) as c:
        yield c


# ---- rate limits -----------------------------------------------------------------------------
def test_429_with_retry_after_once_the_burst_is_spent(built_catalog: str) -> None:
    with make_client(built_catalog, rate_limit_per_s=0.5, rate_limit_burst=5) as c:
        ok = [c.get("/v1/catalog") for _ in range(5)]
        assert [r.status_code for r in ok] == [200] * 5
        assert ok[0].headers["ratelimit-limit"] == "5"
        r = c.get("/v1/catalog")
        assert_error(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1 and r.headers["ratelimit-remaining"] == "0"
        assert_error(c.get("/v1/products/SKU-001"), 429, "rate_limited")
        page = c.get("/search", params={"q": "red"})  # the web UI says it in a page
        assert page.status_code == 429 and page.headers["content-type"].startswith("text/html")
        assert "Too many requests" in page.text and int(page.headers["retry-after"]) >= 1
        # probes, metrics and static files still answer
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.get("/static/ui.css").status_code == 200
        metrics = c.get("/metrics").text
        assert 'route="unmatched",status="429"' in metrics  # 429s are counted


def test_keys_have_buckets_apart_from_the_address(built_catalog: str, keys: dict[str, str]) -> None:
    settings = {"rate_limit_per_s": 0.5, "rate_limit_burst": 3}
    with make_client(
        built_catalog, **settings, rate_limit_key_per_s=0.5, rate_limit_key_burst=4
    ) as c:
        for _ in range(3):
            c.get("/v1/catalog")
        assert_error(c.get("/v1/catalog"), 429)  # this address is spent
        keyed = [c.get("/v1/catalog", headers=auth(keys["read"])) for _ in range(5)]
        assert [r.status_code for r in keyed] == [200] * 4 + [429]
        assert keyed[0].headers["ratelimit-limit"] == "4"
        assert c.get("/v1/catalog", headers={"X-API-Key": keys["read2"]}).status_code == 200
        # an unknown key counts as its address
        assert_error(c.get("/v1/catalog", headers=auth("sl_nope_nope")), 429)


def test_image_uploads_cost_more(built_catalog: str) -> None:
    settings = {"rate_limit_per_s": 0.5, "rate_limit_burst": 25, "rate_limit_expensive_cost": 10}
    with make_client(built_catalog, **settings) as c:
        files = {"image": ("q.png", png_bytes(), "image/png")}
        statuses = [c.post("/v1/search", files=files).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert c.post("/v1/search", json={"text": "red"}).status_code == 200  # 1 token


def test_forwarded_for_only_from_trusted_proxies(built_catalog: str) -> None:
    def spend(c: TestClient, address: str) -> int:
        hdr = {"X-Forwarded-For": address}
        return [c.get("/v1/catalog", headers=hdr).status_code for _ in range(3)][-1]

    limits = {"rate_limit_per_s": 0.5, "rate_limit_burst": 2}
    with make_client(built_catalog, **limits) as c:  # default: the header is ignored
        assert spend(c, "1.1.1.1") == 429 and spend(c, "2.2.2.2") == 429
    with make_client(built_catalog, **limits, trusted_proxies=["testclient"]) as c:
        assert spend(c, "1.1.1.1") == 429 and spend(c, "2.2.2.2") == 429
        assert c.get("/v1/catalog", headers={"X-Forwarded-For": "3.3.3.3"}).status_code == 200


# ---- CORS, sizes, headers --------------------------------------------------------------------
def preflight(c: TestClient, origin: str = ORIGIN) -> Any:
    return c.options(
        "/v1/search",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
    )


def test_cors_is_closed_by_default(client: TestClient) -> None:
    assert "access-control-allow-origin" not in preflight(client).headers
    r = client.post("/v1/search", json={"text": "red"}, headers={"Origin": ORIGIN})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_cors_opens_for_configured_origins(built_catalog: str) -> None:
    with make_client(built_catalog, cors_origins=[ORIGIN]) as c:
        r = preflight(c)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in r.headers
        assert "access-control-allow-origin" not in preflight(c, "https://evil.example").headers
        r = c.post("/v1/search", json={"text": "red"}, headers={"Origin": ORIGIN})
        assert r.headers["access-control-allow-origin"] == ORIGIN


def test_wildcard_origin_with_credentials_is_refused() -> None:
    with pytest.raises(ValueError, match="cors_allow_credentials"):
        ServiceSettings(cors_origins=["*"], cors_allow_credentials=True)


def test_oversized_requests_get_json_413_414(built_catalog: str, keys: dict[str, str]) -> None:
    limits = {"max_json_bytes": 2000, "max_events_bytes": 50_000, "max_upload_bytes": 100_000}
    with make_client(built_catalog, **limits) as c:
        r = c.post("/v1/search", json={"text": "x" * 3000})
        assert_error(r, 413, "payload_too_large")
        # a chunked body (no Content-Length) is counted as it arrives
        chunks = iter([b'{"text": "', b"y" * 1500, b"z" * 1500, b'"}'])
        r = c.post("/v1/search", content=chunks, headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers
        assert_error(r, 413, "payload_too_large")
        # FastAPI-parsed bodies too (not a 400 "error parsing the body")
        big = [{"event_id": str(i), "customer_id": "c", "sku": "SKU-001", "type": "view",
                "timestamp": 1_767_225_600 + i} for i in range(1000)]  # fmt: skip
        assert_error(c.post("/v1/events", json={"events": big}, headers=auth(keys["write"])), 413)
        # the events route allows more than other JSON: 30 events (~3 kB) get through to
        # validation (unknown sku: rejected, nothing stored)
        unknown = [{**e, "sku": "NO-SUCH-SKU"} for e in big[:30]]
        r = c.post("/v1/events", json={"events": unknown}, headers=auth(keys["write"]))
        assert r.status_code == 422 and r.json()["report"]["rejected_count"] == 30, r.text
        upload = {"image": ("a.png", b"\x89PNG" + b"0" * 200_000, "image/png")}
        assert_error(c.post("/v1/search", files=upload), 413, "payload_too_large")
        assert_error(c.get("/v1/catalog", params={"q": "a" * 9000}), 414, "uri_too_long")
        page = c.get("/search", params={"q": "a" * 9000})
        assert page.status_code == 414 and "That search is too long" in page.text
        assert c.post("/v1/search", json={"text": "red"}).status_code == 200


def test_security_headers(client: TestClient) -> None:
    api = client.get("/v1/catalog")
    assert api.headers["x-content-type-options"] == "nosniff"
    assert api.headers["x-frame-options"] == "DENY"
    assert api.headers["referrer-policy"] == "strict-origin-when-cross-origin"
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert "content-security-policy" not in client.get("/docs").headers  # Swagger's CDN
    assert_error(client.get("/v1/nope"), 404)
    assert client.get("/v1/nope").headers["x-content-type-options"] == "nosniff"


# ---- write routes ----------------------------------------------------------------------------
def test_every_write_route_needs_a_write_key(client: TestClient, keys: dict[str, str]) -> None:
    """Walks the OpenAPI schema: a new write route that forgets its key fails here."""
    read_only = {("post", "/v1/search")}  # a search query sent as a body
    spec = client.get("/openapi.json").json()
    walked = []
    for path, ops in spec["paths"].items():
        for method in ops:
            if method not in ("post", "put", "patch", "delete") or (method, path) in read_only:
                continue
            url = path.replace("{name}", "x").replace("{alias}", "champion")
            url = url.replace("{sku}", "SKU-001")
            assert "{" not in url, f"fill the path parameters of {path}"
            assert_error(client.request(method, url, json={}), 401, "unauthorized")
            r = client.request(method, url, json={}, headers=auth(keys["read"]))
            assert_error(r, 403, "forbidden")
            walked.append(path)
    assert {"/v1/events", "/v1/products", "/v1/models/{name}/aliases/{alias}"} <= set(walked)


@pytest.fixture(scope="module")
def ingest_service(
    session_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """A catalogue of its own (ingest changes it), served."""
    from shoplens.catalog.ingest import ingest_manifest
    from shoplens.index.build import build_indexes

    ingest_manifest(write_catalog(tmp_path_factory.mktemp("access-src"), per_category=2), CATALOG)
    with Catalog.open(CATALOG) as cat:
        build_indexes(cat, "test-tiny", text_encoder="test-tiny-text")
    with make_client(CATALOG) as c:
        yield c


def product(sku: str, **kw: Any) -> dict[str, Any]:
    photo = base64.b64encode(png_bytes("Blue square", len(sku))).decode()
    return {"sku": sku, "title": f"Blue thing {sku}", "category": "Blue square",
            "attributes": {"color": "blue", "size": 3}, "image_base64": photo, **kw}  # fmt: skip


def count(c: TestClient) -> int:
    return int(c.get("/v1/catalog").json()["products"])


def test_ingest_over_http(ingest_service: TestClient, keys: dict[str, str]) -> None:
    c, write = ingest_service, auth(keys["write"])
    before = count(c)
    body = {"products": [product("NEW-1"), product("NEW-2")]}
    assert_error(c.post("/v1/products", json=body), 401, "unauthorized")
    assert_error(c.post("/v1/products", json=body, headers=auth(keys["read"])), 403)
    r = c.post("/v1/products", json=body, headers=write)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["added"], out["rejected"], out["indexed"]) == (2, [], False)
    assert out["total"] == count(c) == before + 2
    assert "shoplens index build" in out["message"]
    p = c.get("/v1/products/NEW-1").json()
    assert p["attributes"] == {"color": "blue", "size": "3"} and p["title"] == "Blue thing NEW-1"
    assert c.get("/v1/products/NEW-1/image").content[:4] == b"\x89PNG"
    # the same again changes nothing; a new title updates
    again = c.post("/v1/products", json=body, headers=write).json()
    assert (again["added"], again["unchanged"]) == (0, 2)
    renamed = {"products": [product("NEW-1", title="Renamed")]}
    assert c.post("/v1/products", json=renamed, headers=write).json()["updated"] == 1


def test_bad_products_store_nothing(ingest_service: TestClient, keys: dict[str, str]) -> None:
    c, write = ingest_service, auth(keys["write"])
    before = count(c)
    bad = [
        product("GOOD-1"),
        product("BAD/1"),  # '/' in a sku
        product("BAD-2", image_base64="not base64!"),
        {k: v for k, v in product("BAD-3").items() if k != "image_base64"},  # no photo
        product("BAD-4", image_base64=base64.b64encode(b"plain text").decode()),
        {**product("BAD-5"), "image_base64": None, "image": "http://127.0.0.1/a.png"},
        {"sku": "BAD-6", "title": "no category"},
        product("GOOD-1"),  # duplicate sku in one request
    ]
    r = c.post("/v1/products", json={"products": bad}, headers=write)
    out = r.json()
    assert r.status_code == 422, r.text
    assert out["error"]["code"] == "invalid_input"
    rejected = {x["position"]: x["reason"] for x in out["rejected"]}
    assert sorted(rejected) == [1, 2, 3, 4, 5, 6, 7]
    assert "'/'" in rejected[1] and "base64" in rejected[2] and "exactly one" in rejected[3]
    assert "not an image" in rejected[4] and "category" in rejected[6]
    assert "refusing to fetch from host '127.0.0.1'" in rejected[5]  # the SSRF guard
    assert rejected[7] == "duplicate sku 'GOOD-1' (first at position 0)"
    assert count(c) == before  # all or nothing
    assert_error(c.get("/v1/products/GOOD-1"), 404)
    # strict false: the good one is stored, the bad ones reported
    r = c.post("/v1/products", json={"products": bad[:3], "strict": False}, headers=write)
    assert r.status_code == 200, r.text
    assert r.json()["added"] == 1 and [x["position"] for x in r.json()["rejected"]] == [1, 2]
    assert count(c) == before + 1
    assert_error(c.post("/v1/products", json={"products": []}, headers=write), 422)


def test_reload_makes_new_products_searchable(
    ingest_service: TestClient, keys: dict[str, str]
) -> None:
    from shoplens.index.build import build_indexes

    c = ingest_service
    body = {"products": [product("FRESH-1")]}
    assert c.post("/v1/products", json=body, headers=auth(keys["write"])).status_code == 200
    assert_error(c.get("/v1/products/FRESH-1/similar"), 409, "not_ready")  # not indexed yet
    with Catalog.open(CATALOG) as cat:  # what 'shoplens index build' does
        build_indexes(cat, "test-tiny", text_encoder="test-tiny-text")
    assert_error(c.post("/v1/index/reload", headers=auth(keys["write"])), 403, "forbidden")
    r = c.post("/v1/index/reload", headers=auth(keys["admin"]))
    assert r.status_code == 200, r.text
    assert r.json()["vectors"] == count(c) and r.json()["stale_index"] is False
    sim = c.get("/v1/products/FRESH-1/similar", params={"k": 3}).json()
    assert sim["results"][0]["category"] == "Blue square"


@pytest.fixture(scope="module")
def registered(session_home: Path) -> Iterator[None]:
    """Model MODEL with versions 1 and 2 (a stand-in artefact: promote loads nothing)."""
    from shoplens.training.tracking import MlflowTracker

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SHOPLENS_TRACKING_URI", raising=False)
        folder = session_home / "access-model"
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text("{}")
        for seed in (1, 2):
            run = MlflowTracker("access")
            run.start({"seed": seed})
            run.log_artifact(folder, "model")
            run.end()
            assert run.run_id is not None
            MlflowTracker("access").register_model(run.run_id, "model", MODEL, alias="champion")
        yield


def test_promote_over_http(client: TestClient, keys: dict[str, str], registered: None) -> None:
    url = f"/v1/models/{MODEL}/aliases/champion"
    assert_error(client.post(url, json={"version": 1}), 401, "unauthorized")
    assert_error(client.post(url, json={"version": 1}, headers=auth(keys["read"])), 403)
    r = client.post(url, json={"version": 1}, headers=auth(keys["write"]))
    assert r.status_code == 200, r.text
    assert (r.json()["previous_version"], r.json()["version"]) == ("2", "1")
    r = client.post(url, json={"version": 2}, headers=auth(keys["admin"]))  # admin > write
    assert (r.json()["previous_version"], r.json()["version"]) == ("1", "2")
    assert_error(client.post(url, json={"version": 9}, headers=auth(keys["write"])), 404)
    bad_alias = f"/v1/models/{MODEL}/aliases/latest"
    assert_error(client.post(bad_alias, json={"version": 1}, headers=auth(keys["write"])), 422)
