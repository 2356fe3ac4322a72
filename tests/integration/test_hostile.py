"""The hostile-input corpus against the real app: no 5xx, every error a JSON 4xx (HTML on
UI pages), the service healthy and answering the same afterwards; hostile manifests and
image URLs through the library."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shoplens.reliability.hostile import (
    Sentinel,
    Target,
    build_corpus,
    catalog_snapshot,
    pretend_public,
    run_corpus,
    run_manifest_cases,
    run_url_cases,
)
from shoplens.reliability.hostile_files import manifest_cases, url_cases
from shoplens.serve import ServiceSettings, create_app

from ..conftest import write_catalog
from ..helpers import SHOPLENS, assert_error

NO_LIMITS = {"rate_limit_per_s": 0, "rate_limit_key_per_s": 0}


@pytest.fixture(scope="module")
def hostile_catalog(session_home: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Its own catalogue: the corpus may add products through the ingest route."""
    from shoplens.catalog.ingest import ingest_manifest
    from shoplens.catalog.store import Catalog
    from shoplens.index.build import build_indexes

    ingest_manifest(write_catalog(tmp_path_factory.mktemp("hostile-src"), 3), "hostile")
    with Catalog.open("hostile") as cat:
        build_indexes(cat, "test-tiny", text_encoder="test-tiny-text")
    return "hostile"


@pytest.fixture(scope="module")
def client(hostile_catalog: str) -> Iterator[TestClient]:
    settings = ServiceSettings(catalog=hostile_catalog, load_in_background=False, **NO_LIMITS)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def _search(client: TestClient) -> list[tuple[str, float]]:
    r = client.post("/v1/search", json={"text": "red circle", "k": 5})
    assert r.status_code == 200, r.text
    return [(h["sku"], round(h["score"], 5)) for h in r.json()["results"]]


def test_hostile_corpus_gets_no_5xx_and_json_errors(client: TestClient) -> None:
    keys = client.app.state.keys  # type: ignore[attr-defined]
    write, read = keys.create("write", "hostile")[1], keys.create("read", "hostile")[1]
    before, count = _search(client), client.get("/v1/catalog").json()["products"]
    with Sentinel() as sentinel, Sentinel("127.0.0.2") as redirector, pretend_public("127.0.0.2"):
        target = Target(
            sku="SKU-000",
            write_key=write,
            read_key=read,
            url_port=sentinel.port,
            redirect_base=f"{redirector.base}/redirect",
        )
        spec = client.get("/openapi.json").json()
        cases = build_corpus(spec, target, seed=0)

        def send(case: Any) -> tuple[int, Any, bytes]:
            r = client.request(case.method, case.path, **case.request_kwargs())
            return r.status_code, r.headers, r.content

        report = run_corpus(cases, send)
        assert sentinel.hits == []  # no refused URL was fetched, not even after a redirect
    assert report.cases >= 1000
    assert report.server_errors == 0, report.problems[:10]
    assert report.problems == []
    groups = report.groups
    assert {"images", "json", "query", "path", "headers", "methods", "ui", "urls"} <= set(groups)
    assert groups["images"]["2xx"] > 0 and groups["images"]["4xx"] > 0  # both kinds tried
    # still healthy and answering exactly as before
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    assert _search(client) == before
    added = client.get("/v1/catalog").json()["products"] - count
    accepted = sum(1 for c in cases if c.group == "images-ingest" and c.expect != "reject")
    assert 0 <= added <= accepted  # only legitimate photos were stored


def test_rate_limiter_answers_429_json(hostile_catalog: str) -> None:
    settings = ServiceSettings(
        catalog=hostile_catalog, load_in_background=False, rate_limit_per_s=0.01, rate_limit_burst=3
    )
    with TestClient(create_app(settings)) as c:
        codes = [c.get("/v1/products/SKU-000").status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200]
        r = c.get("/v1/products/SKU-000")
        assert_error(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1
        assert c.get("/healthz").status_code == 200  # never limited


def test_hostile_manifests_store_nothing_and_fail_cleanly(
    hostile_catalog: str, tmp_path: Path
) -> None:
    from shoplens.catalog.ingest import ingest_manifest

    victim = "hostile-victim"
    ingest_manifest(write_catalog(tmp_path / "good", 2), victim)
    start = catalog_snapshot(victim)
    cases = manifest_cases(tmp_path / "root", tmp_path / "outside")
    outcomes = run_manifest_cases(cases, victim)
    assert [o for o in outcomes if o.problem] == []
    assert {o.outcome for o in outcomes} >= {"rejected", "stored", "partial"}
    rejected = [o for o in outcomes if o.expect == "reject"]
    assert len(rejected) >= 50 and all(o.outcome == "rejected" for o in rejected)
    end = catalog_snapshot(victim)
    assert all(end[s] == v for s, v in start.items())  # the good products survived it all


@pytest.mark.parametrize("name", ["json-deep", "path-15", "csv-unterminated-quote"])
def test_cli_ingest_of_hostile_manifest_exits_2_with_one_line(
    name: str, session_home: Path, tmp_path: Path
) -> None:
    case = next(c for c in manifest_cases(tmp_path / "root", tmp_path / "out") if c.name == name)
    proc = subprocess.run(
        [SHOPLENS, "ingest", str(case.path), "--name", "cli-victim", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1


def test_hostile_urls_are_refused_before_any_connection() -> None:
    with Sentinel() as sentinel, Sentinel("127.0.0.2") as redirector, pretend_public("127.0.0.2"):
        cases = url_cases(sentinel.port, f"{redirector.base}/redirect")
        outcomes, problems = run_url_cases(cases, sentinel)
    assert problems == []
    assert sentinel.hits == []
    assert len(outcomes) >= 60
    by_name = {o.name: o for o in outcomes}
    assert by_name["loopback-3"].outcome == "refused"  # 0x7f000001
    assert "private or reserved" in by_name["redirect-0"].message  # refused after a redirect
    assert len(redirector.hits) >= 7  # the redirector itself was reachable
