"""Personalization through the service: keys, events, recommendations, complete-the-look, pages.

A fresh tiny catalogue (4 categories x 10 products, test-tiny encoders) gets events
through ``POST /v1/events``: each customer browses one favourite category and buys
outfits (a Red circle with a Blue square, a Green triangle with Yellow stripes).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shoplens.catalog.store import Catalog
from shoplens.serve import ServiceSettings, create_app
from shoplens.serve.keys import KeyStore

from ..conftest import write_catalog
from ..helpers import assert_error, outfit_events, sku

CATALOG = "recs-tiny"
PER_CATEGORY = 10
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.fixture(scope="module")
def service(session_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from shoplens.catalog.ingest import ingest_manifest
    from shoplens.index.build import build_indexes

    manifest = write_catalog(tmp_path_factory.mktemp("recs-src"), per_category=PER_CATEGORY)
    ingest_manifest(manifest, CATALOG)
    with Catalog.open(CATALOG) as cat:
        build_indexes(cat, "test-tiny", text_encoder="test-tiny-text")
    keys = KeyStore()
    _, write_key = keys.create("write", "test writer")
    _, read_key = keys.create("read", "test reader")
    keys.close()
    app = create_app(ServiceSettings(catalog=CATALOG, load_in_background=False))
    with TestClient(app) as client:
        yield client, write_key, read_key


def _post(client: TestClient, key: str | None, events: list[dict[str, Any]]) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post("/v1/events", json={"events": events}, headers=headers)


def test_events_need_a_write_key(service: Any) -> None:
    client, _, read_key = service
    ev = [{"event_id": "k1", "customer_id": "c", "sku": sku(0, 0), "type": "view", "timestamp": T0}]
    assert_error(_post(client, None, ev), 401, "unauthorized")
    assert_error(_post(client, "sl_nope_nope", ev), 401, "unauthorized")
    assert_error(_post(client, read_key, ev), 403, "forbidden")
    r = client.post("/v1/events", json={"events": ev}, headers={"X-API-Key": read_key})
    assert_error(r, 403, "forbidden")


def test_events_validated_idempotent_then_recommendations(service: Any) -> None:
    client, write_key, _ = service
    with Catalog.open(CATALOG) as cat:
        r = client.get("/v1/customers/c0/recommendations")
        assert_error(r, 409, "not_ready")  # no recommender fitted yet

        events = outfit_events(12, PER_CATEGORY)
        r = _post(client, write_key, events)
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == len(events) and r.json()["rejected_count"] == 0
        r = _post(client, write_key, events)  # replay: nothing new
        assert r.json()["accepted"] == 0 and r.json()["duplicates"] == len(events)
        # a client retrying after a crash, with one bad event added: its stored events are
        # acknowledged (200 with the reject listed), not refused
        odd = {"event_id": "odd", "customer_id": "c0", "sku": "NOPE", "type": "view"}
        r = _post(client, write_key, [*events[:3], {**odd, "timestamp": T0}])
        assert r.status_code == 200, r.text
        assert (r.json()["duplicates"], r.json()["rejected_count"]) == (3, 1)
        strict = {"events": [*events[:3], {**odd, "timestamp": T0}], "strict": True}
        r = client.post("/v1/events", json=strict, headers={"X-API-Key": write_key})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"  # strict

        bad = [
            {"event_id": "b1", "customer_id": "c0", "sku": "NOPE", "type": "view", "timestamp": T0},
            {
                "event_id": "b2",
                "customer_id": "c0",
                "sku": sku(0, 1),
                "type": "like",
                "timestamp": T0,
            },
            {
                "event_id": "b3",
                "customer_id": "c0",
                "sku": sku(0, 1),
                "type": "view",
                "timestamp": time.time() + 86_400,
            },
        ]
        r = _post(client, write_key, bad)
        assert r.status_code == 422
        report = r.json()["report"]
        reasons = " ".join(x["reason"] for x in report["rejected"])
        assert report["rejected_count"] == 3 and report["accepted"] == 0
        assert "NOPE" in reasons and "like" in reasons and "future" in reasons
        good = {
            "event_id": "g1",
            "customer_id": "c0",
            "sku": sku(0, 9),
            "type": "view",
            "timestamp": T0 + 100,
        }
        r = _post(client, write_key, [*bad, good])  # good ones stored, bad ones reported
        assert r.status_code == 200 and r.json()["accepted"] == 1
        assert r.json()["rejected_count"] == 3
        r = client.post(
            "/v1/events",
            json={"events": [*bad, {**good, "event_id": "g2"}], "strict": True},
            headers={"Authorization": f"Bearer {write_key}"},
        )
        assert r.status_code == 422  # strict: nothing stored
        from shoplens.personalize.events import EventStore

        with EventStore.open(cat) as store:
            assert store.count() == len(events) + 1

        from shoplens.personalize.service import fit_recommendations

        meta = fit_recommendations(cat)
        assert meta["events"] == len(events) + 1 and meta["simulated"] is False

    r = client.get("/v1/customers/c0/recommendations", params={"k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["personalized"] and body["fallback"] is None and not body["simulated"]
    assert body["count"] == 5 and all(h["sources"] for h in body["results"])
    seen = {e["sku"] for e in events if e["customer_id"] == "c0"} | {good["sku"]}
    assert not seen & {h["sku"] for h in body["results"]}  # never what they already had
    # a small catalogue: exact candidate scans (IVF indexes start at 20k items)
    assert client.get("/readyz").json()["recommendations"]["candidates"] == "exact"

    r = client.get("/v1/customers/stranger/recommendations", params={"k": 4})
    body = r.json()
    assert r.status_code == 200 and not body["personalized"]
    assert body["fallback"] == "popular" and body["count"] == 4 and not body["known_customer"]

    # a new customer's first events count at once, without refitting
    first = [
        {
            "event_id": "n1",
            "customer_id": "newbie",
            "sku": sku(2, 5),
            "type": "click",
            "timestamp": T0 + 50 * 86_400,
        }
    ]
    assert _post(client, write_key, first).status_code == 200
    body = client.get("/v1/customers/newbie/recommendations", params={"k": 4}).json()
    assert body["personalized"] and body["history_events"] == 1

    assert_error(client.get("/v1/customers/c0/recommendations", params={"k": 0}), 422)
    assert_error(client.get("/v1/customers/c0/recommendations", params={"k": 101}), 422)


def _ensure_fitted(client: TestClient) -> None:
    if client.get("/v1/customers/c1/recommendations").status_code == 409:
        # run on its own: store the outfit events and fit (the test above does it via HTTP)
        from shoplens.personalize.events import EventStore
        from shoplens.personalize.service import fit_recommendations

        with Catalog.open(CATALOG) as cat:
            with EventStore.open(cat) as store:
                store.add(outfit_events(12, PER_CATEGORY))
            fit_recommendations(cat)


def test_complete_the_look_and_pages(service: Any) -> None:
    client, _, _ = service
    _ensure_fitted(client)
    r = client.get(f"/v1/products/{sku(0, 0)}/complete-the-look", params={"k": 3})
    assert r.status_code == 200, r.text
    groups = r.json()["groups"]
    assert groups and all(g["category"] != "Red circle" for g in groups)
    assert groups[0]["category"] == "Blue square"  # learned from outfits bought together
    assert_error(client.get("/v1/products/NOPE/complete-the-look"), 404, "not_found")

    page = client.get(f"/products/{sku(0, 0)}")
    assert page.status_code == 200 and "Complete the look" in page.text
    page = client.get("/customers/c0")
    assert page.status_code == 200 and "Picked for this customer" in page.text
    assert "Simulated customer" not in page.text  # c0's events are not simulated
    page = client.get("/customers/someone-new")
    assert page.status_code == 200 and "popular with everyone" in page.text
    page = client.get("/customers")
    assert page.status_code == 200 and "/customers/c0" in page.text
    r = client.get("/customers", params={"id": "c3"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/customers/c3"
    r = client.get("/customers", params={"id": "x" * 300})
    assert r.status_code == 400 and "at most 128" in r.text


def test_concurrent_recommendations_match_one_at_a_time(service: Any) -> None:
    """Requests run the recommender in parallel threads (no global lock): same answers."""
    from concurrent.futures import ThreadPoolExecutor

    client, _, _ = service
    _ensure_fitted(client)
    from shoplens.personalize.service import Recommendations

    with Catalog.open(CATALOG) as cat:
        recs = Recommendations(cat)
        customers = [f"c{i}" for i in range(12)] + ["someone-new"]
        calls = customers * 4

        def answer(c: str) -> list[tuple[str, float]]:
            return [(r.product.sku, round(r.score, 5)) for r in recs.for_customer(c, 8)["results"]]

        alone = {c: answer(c) for c in customers}
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(answer, calls))
        recs.close()
    assert together == [alone[c] for c in calls]
    assert any(alone[c] != alone["someone-new"] for c in customers[:-1])  # personalised


def test_micro_batched_recommendations_match_one_at_a_time(service: Any) -> None:
    """Concurrent requests micro-batched into shared ranker passes (as the service does
    with batching on), with different k in one batch: each gets its own answer."""
    from concurrent.futures import ThreadPoolExecutor

    from shoplens.personalize.service import Recommendations
    from shoplens.serve.batching import MicroBatcher

    client, _, _ = service
    _ensure_fitted(client)
    sizes: list[int] = []
    with Catalog.open(CATALOG) as cat:
        recs = Recommendations(cat)
        assert recs.can_batch
        customers = [f"c{i}" for i in range(12)] + ["someone-new"]
        calls = [(c, 4 + i % 3 * 3) for i, c in enumerate(customers * 4)]  # k 4, 7, 10

        def answer(call: tuple[str, int]) -> list[tuple[str, float, tuple[str, ...]]]:
            out = recs.for_customer(*call)["results"]
            return [(r.product.sku, round(r.score, 5), tuple(r.sources)) for r in out]

        alone = {call: answer(call) for call in set(calls)}
        recs.batcher = MicroBatcher(
            recs.rank_many, max_batch=8, max_wait_ms=20, on_batch=lambda n, _: sizes.append(n)
        )
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(answer, calls))
        recs.batcher.close()  # as when a newer build takes over: answered directly
        assert answer(calls[1]) == alone[calls[1]]
        recs.close()  # closes the batcher too (again: a no-op)
    assert recs.batcher.closed
    assert together == [alone[call] for call in calls]
    assert sum(sizes) == len(calls) and max(sizes) > 1  # shared passes happened
    assert [len(a) for a in together[:3]] == [4, 7, 10]


def test_service_batches_recommendations(service: Any) -> None:
    """With batching on (the default) the service's ranker passes show in /metrics."""
    client, _, _ = service
    _ensure_fitted(client)
    before = _metric(client, "shoplens_recommend_batch_size_count")
    r = client.get("/v1/customers/c2/recommendations", params={"k": 5})
    assert r.status_code == 200 and r.json()["count"] == 5
    assert _metric(client, "shoplens_recommend_batch_size_count") == before + 1
    assert _metric(client, "shoplens_recommend_rank_seconds_sum") > 0
    # one ranker pass at a time by default (SHOPLENS_RECS_BATCH_WORKERS), whatever the
    # encoders' batchers run (SHOPLENS_BATCH_WORKERS: one per core here)
    state = client.app.state.recs  # type: ignore[attr-defined]
    assert state.recs.batcher.workers == 1


def test_recs_batch_workers_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """SHOPLENS_RECS_BATCH_WORKERS sets the ranker passes at once (unset: 1)."""
    assert ServiceSettings().recs_batch_workers == 1
    monkeypatch.setenv("SHOPLENS_RECS_BATCH_WORKERS", "3")
    assert ServiceSettings().recs_batch_workers == 3
    monkeypatch.setenv("SHOPLENS_RECS_BATCH_WORKERS", "0")
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        ServiceSettings()


def _metric(client: TestClient, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0
