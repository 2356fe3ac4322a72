"""Registry-driven serving: promote / rollback a model alias while requests keep coming.

Two tiny CLIP-style models are registered as versions 1 and 2 of one model. The service
serves ``NAME@champion`` (building the catalogue index of each version itself), threads
search and open product pages without pause while the alias is promoted to version 2 and
rolled back to version 1 through the CLI, and no request may fail.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from typer.testing import CliRunner

from shoplens.catalog.ingest import ingest_manifest
from shoplens.catalog.store import Catalog
from shoplens.index.build import build_text_index
from shoplens.models.io import save_model
from shoplens.registry import create_model
from shoplens.search.engine import SearchEngine
from shoplens.serve import ServiceSettings, create_app
from shoplens.serve.screenshots import serve_in_thread
from shoplens.training.cli import models_app
from shoplens.training.tracking import MlflowTracker

from ..conftest import CATEGORIES, make_product_image, write_catalog
from ..helpers import png_bytes

CATALOG = "swap-tiny"
MODEL = "swap-clip"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A fresh SHOPLENS_HOME with the tiny catalogue (text index only) and two versions."""
    home = tmp_path_factory.mktemp("swap-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHOPLENS_HOME", str(home))
        mp.delenv("SHOPLENS_TRACKING_URI", raising=False)
        ingest_manifest(write_catalog(tmp_path_factory.mktemp("swap-src")), CATALOG)
        with Catalog.open(CATALOG) as cat:
            build_text_index(cat, "test-tiny-text")
        tracker = MlflowTracker("swap")
        versions = {}
        for seed in (1, 2):
            torch.manual_seed(seed)
            folder = save_model(
                create_model("clip-test-tiny", class_names=list(CATEGORIES)),
                home / f"model-{seed}",
            )
            run = MlflowTracker("swap")
            run.start({"seed": seed})
            run.log_artifact(folder, "model")
            run.end()
            assert run.run_id is not None
            info = tracker.register_model(run.run_id, "model", MODEL, alias="champion")
            versions[info.version] = f"trained:{info.source_dir}"
        assert sorted(versions) == ["1", "2"]
        tracker.set_alias(MODEL, 1, "champion")  # start from version 1
        yield {"home": home, "specs": versions}


def cli(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(models_app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    # stdout only: the service's threads may write progress to stderr meanwhile
    return dict(json.loads(result.stdout))


def served_version(base: str) -> str | None:
    ready = httpx.get(f"{base}/readyz", timeout=10).json()
    return ready["model"]["version"] if ready.get("model") else None


def wait_for_version(base: str, version: str, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while served_version(base) != version:
        assert time.monotonic() < deadline, f"version {version} was not swapped in"
        time.sleep(0.1)


def expected_skus(spec: str, image: Any, k: int = 5) -> list[str]:
    with Catalog.open(CATALOG) as cat:
        return [h.sku for h in SearchEngine(cat, spec).search(image=image, k=k)]


def test_alias_swap_under_concurrent_requests(registry: dict[str, Any]) -> None:
    settings = ServiceSettings(
        catalog=CATALOG,
        model=f"{MODEL}@champion",
        registry_poll_s=0.2,
        load_in_background=False,  # version 1's index is built at start-up
        batch_max_wait_ms=2,
        rate_limit_per_s=0,  # a load test from one address; rate limits: test_access.py
    )
    query = png_bytes("Blue square", 7)
    image = make_product_image("Blue square", 7)
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def hammer(n: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as http:
            i = 0
            while not stop.is_set():
                i += 1
                if (i + n) % 3 == 0:
                    r = http.post(
                        "/v1/search", files={"image": ("q.png", query, "image/png")}, data={"k": 5}
                    )
                elif (i + n) % 3 == 1:
                    r = http.get(f"/v1/products/SKU-{n % 4}0{i % 6}/similar", params={"k": 4})
                else:
                    r = http.post("/v1/search", json={"text": "blue square", "k": 3})
                with lock:
                    statuses[r.status_code] += 1
                    if r.status_code != 200:
                        failures.append(f"{r.request.url}: {r.status_code} {r.text[:200]}")

    with serve_in_thread(create_app(settings)) as base:
        assert served_version(base) == "1"
        first = httpx.post(
            f"{base}/v1/search", files={"image": ("q.png", query, "image/png")}, data={"k": 5}
        )
        assert first.headers["server-timing"].startswith("app;dur=")
        v1_results = first.json()["results"]
        assert [h["sku"] for h in v1_results] == expected_skus(registry["specs"]["1"], image)

        workers = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
        for w in workers:
            w.start()
        try:
            time.sleep(0.5)
            out = cli("promote", MODEL, "2", "--alias", "champion")
            assert (out["previous_version"], out["version"]) == ("1", "2")
            before = sum(statuses.values())
            wait_for_version(base, "2")  # version 2's index is built while 1 serves
            during = sum(statuses.values()) - before
            time.sleep(0.5)
            after = httpx.post(
                f"{base}/v1/search", files={"image": ("q.png", query, "image/png")}, data={"k": 5}
            ).json()
            out = cli("rollback", MODEL)
            assert (out["previous_version"], out["version"]) == ("2", "1")
            wait_for_version(base, "1")
            time.sleep(0.5)
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=60)
        metrics = httpx.get(f"{base}/metrics").text
        ready = httpx.get(f"{base}/readyz").json()

    assert not failures, failures[:5]
    assert statuses[200] > 20 and during > 0, (statuses, during)
    # results after the swap come from version 2's encoder and index
    assert [h["sku"] for h in after["results"]] == expected_skus(registry["specs"]["2"], image)
    assert ready["model"]["swaps"] == 2 and ready["encoder"] == registry["specs"]["1"]
    assert "shoplens_model_version 1.0" in metrics
    assert "shoplens_model_swaps_total 2.0" in metrics
    assert f'model="{MODEL}",version="1"' in metrics
    assert 'shoplens_encode_batch_size_count{kind="image"}' in metrics
    assert "shoplens_encode_seconds_bucket" in metrics
    # both versions' indexes exist now, and the catalogue's default encoder was left alone
    with Catalog.open(CATALOG) as cat:
        assert cat.get_meta("default_encoder") in (None, registry["specs"]["1"])


def test_cli_list_promote_rollback(registry: dict[str, Any]) -> None:
    models = CliRunner().invoke(models_app, ["list", "--registered", "--json"])
    assert models.exit_code == 0, models.output
    (entry,) = [m for m in json.loads(models.output) if m["name"] == MODEL]
    assert [v["version"] for v in entry["versions"]] == ["1", "2"]
    champion = entry["aliases"]["champion"]

    other = "2" if champion == "1" else "1"
    out = cli("promote", MODEL, other)
    assert (out["previous_version"], out["version"]) == (champion, other)
    assert out["encoder_spec"] == registry["specs"][other]
    out = cli("rollback", MODEL, "--alias", "champion")
    assert (out["previous_version"], out["version"]) == (other, champion)
    human = CliRunner().invoke(models_app, ["list", "--registered"])
    assert "@champion" in human.output and "rollback of @champion" in human.output

    # nothing to roll back to: a clear error, not a traceback
    bad = CliRunner().invoke(models_app, ["rollback", MODEL, "--alias", "challenger"])
    assert bad.exit_code != 0
    assert "no previous 'challenger' version" in str(bad.exception)
    bad = CliRunner().invoke(models_app, ["promote", MODEL, "9"])
    assert bad.exit_code != 0 and "no version 9" in str(bad.exception)
    bad = CliRunner().invoke(models_app, ["promote", MODEL, "1", "--alias", "best"])
    assert bad.exit_code == 2 and "champion or challenger" in bad.output


def test_unknown_model_is_not_ready(registry: dict[str, Any], tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    settings = ServiceSettings(
        catalog=CATALOG, model="never-registered@champion", load_in_background=False
    )
    with TestClient(create_app(settings)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503
        assert "never-registered" in r.json()["error"]["message"]
