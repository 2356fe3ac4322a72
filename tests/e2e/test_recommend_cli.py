"""Personalization through the installed CLI: keys, simulate, import, fit, recommend, serve.

A generated catalogue is indexed with the test-tiny encoders; the simulator writes
SIMULATED events (labelled so in every output); a real event file is imported; the
recommender is fitted; `shoplens recommend` answers; a served process answers over HTTP
with a key created by `shoplens keys create`.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from ..conftest import write_catalog
from ..helpers import run_cli as run
from ..helpers import serve_process


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("recs-cli-home")
    manifest = write_catalog(tmp_path_factory.mktemp("recs-cli-src"), per_category=8)
    run(home, "ingest", str(manifest), "--name", "shop")
    run(
        home,
        "index",
        "build",
        "-c",
        "shop",
        "--encoder",
        "test-tiny",
        "--text-encoder",
        "test-tiny-text",
    )
    return home


def test_simulate_import_fit_recommend_and_serve(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "sim.jsonl"
    sim = run(
        home,
        "simulate",
        "events",
        "-c",
        "shop",
        "--customers",
        "40",
        "--preset",
        "visual",
        "--out",
        str(out),
        "--set",
        "new_item_share=0.2",
    )
    assert "SIMULATED" in sim.stdout and "stored in catalogue shop" in sim.stdout
    first = json.loads(out.read_text().splitlines()[0])
    assert first["simulated"] is True and first["customer_id"].startswith("sim-")
    sidecar = json.loads(Path(f"{out}.simulation.json").read_text())
    assert "simulated" in json.dumps(sidecar).lower()
    assert sidecar["config"]["new_item_share"] == 0.2

    # real (non-simulated) events from a CSV file, with one bad row
    csv = tmp_path / "events.csv"
    csv.write_text(
        "event_id,customer_id,sku,type,timestamp\n"
        "r1,alice,SKU-000,view,2025-12-01T10:00:00Z\n"
        "r2,alice,SKU-001,purchase,2025-12-01T10:05:00Z\n"
        "r3,alice,NOPE,view,2025-12-01T10:06:00Z\n"
    )
    rejects = tmp_path / "rejects.jsonl"
    imp = json.loads(
        run(
            home, "events", "import", str(csv), "-c", "shop", "--rejects", str(rejects), "--json"
        ).stdout
    )
    assert imp["accepted"] == 2 and imp["rejected_count"] == 1
    assert "NOPE" in rejects.read_text()
    again = json.loads(run(home, "events", "import", str(csv), "-c", "shop", "--json").stdout)
    assert again["accepted"] == 0 and again["duplicates"] == 2
    stats = run(home, "events", "stats", "-c", "shop").stdout
    assert "SIMULATED" in stats

    fit = run(home, "recommend", "fit", "-c", "shop").stdout
    assert "recommender fitted" in fit and "SIMULATED" in fit

    alice = json.loads(
        run(home, "recommend", "-c", "shop", "--customer", "alice", "-k", "5", "--json").stdout
    )
    assert alice["personalized"] and not alice["simulated"] and len(alice["results"]) == 5
    assert not {"SKU-000", "SKU-001"} & {r["sku"] for r in alice["results"]}
    simc = run(home, "recommend", "-c", "shop", "--customer", first["customer_id"]).stdout
    assert "SIMULATED" in simc
    nobody = json.loads(
        run(home, "recommend", "-c", "shop", "--customer", "nobody", "--json").stdout
    )
    assert not nobody["personalized"] and nobody["fallback"] == "popular"
    # generic categories: the simulator makes no outfits, so there is nothing to learn from
    look = run(
        home, "recommend", "-c", "shop", "--sku", "SKU-000", "--complete-the-look", check=False
    )
    assert look.returncode == 2 and "complete-the-look is not available" in look.stderr

    bad = run(home, "recommend", "-c", "shop", check=False)
    assert bad.returncode == 2 and "--customer" in bad.stderr
    bad = run(home, "recommend", "-c", "shop", "--sku", "SKU-000", check=False)
    assert bad.returncode == 2 and "--complete-the-look" in bad.stderr
    bad = run(home, "simulate", "events", "-c", "shop", "--preset", "nope", check=False)
    assert bad.returncode == 2 and "preset" in bad.stderr
    bad = run(home, "simulate", "events", "-c", "shop", "--set", "taste_strength=2", check=False)
    assert bad.returncode == 2 and "taste_strength" in bad.stderr

    key = json.loads(run(home, "keys", "create", "--scope", "write", "--json").stdout)["key"]
    read_out = run(home, "keys", "create", "--scope", "read").stdout
    assert read_out.startswith("sl_") and "shown once" in read_out
    listed = json.loads(run(home, "keys", "list", "--json").stdout)
    assert {k["scope"] for k in listed} == {"write", "read"}
    assert key not in json.dumps(listed)
    with serve_process(home, "--catalog", "shop") as base:
        ev = {
            "events": [
                {
                    "event_id": "h1",
                    "customer_id": "bob",
                    "sku": "SKU-100",
                    "type": "click",
                    "timestamp": "2025-12-02T09:00:00Z",
                }
            ]
        }
        assert httpx.post(f"{base}/v1/events", json=ev, timeout=30).status_code == 401
        r = httpx.post(
            f"{base}/v1/events", json=ev, timeout=30, headers={"Authorization": f"Bearer {key}"}
        )
        assert r.status_code == 200 and r.json()["accepted"] == 1
        r = httpx.get(f"{base}/v1/customers/bob/recommendations", params={"k": 3}, timeout=30)
        assert r.status_code == 200 and r.json()["personalized"]
        key_id = next(k["id"] for k in listed if k["scope"] == "write")
        run(home, "keys", "revoke", key_id)
        r = httpx.post(
            f"{base}/v1/events", json=ev, timeout=30, headers={"Authorization": f"Bearer {key}"}
        )
        assert r.status_code == 401 and "revoked" in r.text
