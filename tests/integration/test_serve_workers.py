"""``shoplens serve --workers 2``: two processes on one port sharing the stores and indexes.

One service (a tiny generated catalogue, a registered tiny CLIP model followed by its
alias, a fitted recommender, API keys) runs as a subprocess through the installed CLI.
Requests go over fresh connections, so the kernel hands them to either worker; every
response names its worker (``X-Shoplens-Worker``). Checked: concurrent answers come from
both workers and are right; an event stored through one worker is seen by both; a key
created or revoked while serving counts in both; rate limits are per worker; an index
rebuild and an alias promote reach both; a killed worker is replaced; SIGTERM drains an
in-flight request, stops both workers and exits 0; a killed supervisor leaves no worker
behind; bad options exit 2. The tests share the one service.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import torch

from shoplens.catalog.ingest import ingest_manifest
from shoplens.catalog.store import Catalog
from shoplens.index.build import build_image_index, build_text_index
from shoplens.models.io import save_model
from shoplens.personalize.events import EventStore
from shoplens.personalize.service import fit_recommendations
from shoplens.registry import create_model
from shoplens.search.engine import SearchEngine
from shoplens.serve.keys import KeyStore
from shoplens.serve.workers import WORKER_HEADER
from shoplens.training.tracking import MlflowTracker

from ..conftest import CATEGORIES, make_product_image, write_catalog
from ..helpers import SHOPLENS, auth, free_port, png_bytes, sku

CATALOG = "workers-tiny"
MODEL = "workers-clip"
WORKERS = 2
BURST = 3  # anonymous requests each worker allows (the bucket refills in ~1000 s)
POLL_S = 0.5  # registry and index checks
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def _browse_events(n_customers: int = 16) -> list[dict[str, Any]]:
    """Views and purchases within one favourite category per customer (no outfits, so
    complete-the-look is skipped and the fit stays quick)."""
    return [
        {
            "event_id": f"c{c}-{j}",
            "customer_id": f"c{c}",
            "sku": sku(c % 4, (c + j) % 10),
            "type": "purchase" if j % 3 == 2 else "view",
            "timestamp": T0 + c * 86_400 + 60 * j,
        }
        for c in range(n_customers)
        for j in range(10)
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The catalogue, two registered model versions (indexed), a recommender and keys."""
    home = tmp_path_factory.mktemp("workers-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHOPLENS_HOME", str(home))
        for var in ("SHOPLENS_TRACKING_URI", "SHOPLENS_MODEL", "SHOPLENS_ENCODER"):
            mp.delenv(var, raising=False)
        ingest_manifest(write_catalog(tmp_path_factory.mktemp("workers-src"), 10), CATALOG)
        tracker = MlflowTracker("workers")
        specs = {}
        for seed in (1, 2):
            torch.manual_seed(seed)
            folder = save_model(
                create_model("clip-test-tiny", class_names=list(CATEGORIES)), home / f"m{seed}"
            )
            run = MlflowTracker("workers")
            run.start({"seed": seed})
            run.log_artifact(folder, "model")
            run.end()
            assert run.run_id is not None
            info = tracker.register_model(run.run_id, "model", MODEL, alias="champion")
            specs[info.version] = f"trained:{info.source_dir}"
        tracker.set_alias(MODEL, 1, "champion")
        with Catalog.open(CATALOG) as cat:
            build_text_index(cat, "test-tiny-text")
            for version in ("2", "1"):  # indexed here, so no worker builds one at start-up
                build_image_index(cat, specs[version])
            with EventStore.open(cat) as store:
                store.add(_browse_events())
            small = {"customer-embedding": 40, "co-visitation": 40, "popularity": 20}
            fit_recommendations(
                cat, ranker_options={"retrievers": small, "n_estimators": 20, "num_threads": 1}
            )
        keys = KeyStore()
        read_key, write_key = keys.create("read")[1], keys.create("write")[1]
        keys.close()
        yield {"home": home, "specs": specs, "read": read_key, "write": write_key}


@pytest.fixture(scope="module")
def server(
    world: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """``shoplens serve --workers 2 --model MODEL@champion``; yields once both are ready."""
    port = free_port()
    env = {
        **os.environ,
        "SHOPLENS_HOME": str(world["home"]),
        "SHOPLENS_REGISTRY_POLL_S": str(POLL_S),
        "SHOPLENS_INDEX_POLL_S": str(POLL_S),
        "SHOPLENS_RATE_LIMIT_PER_S": "0.001",  # anonymous clients: BURST, then 429
        "SHOPLENS_RATE_LIMIT_BURST": str(BURST),
    }
    for var in ("SHOPLENS_TRACKING_URI", "SHOPLENS_MODEL", "SHOPLENS_ENCODER"):
        env.pop(var, None)
    args = ["serve", "-c", CATALOG, "--model", f"{MODEL}@champion", "--port", str(port)]
    log = tmp_path_factory.mktemp("workers-log") / "serve.log"
    with log.open("w") as out:  # a file, not a pipe: the access log never blocks the server
        proc = subprocess.Popen(
            [SHOPLENS, *args, "--workers", str(WORKERS)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    srv = {**world, "proc": proc, "log": log, "base": f"http://127.0.0.1:{port}"}
    try:
        # loading takes seconds on a quiet machine, minutes on a busy shared one
        ready = each_worker(srv, "/readyz", lambda r: r.status_code == 200, timeout=300)
        srv["pids"] = set(ready)
        yield srv
    finally:  # never leave a worker behind, whatever failed
        workers = []
        for pid in srv.get("pids", ()):
            with contextlib.suppress(psutil.NoSuchProcess):
                workers.append(psutil.Process(pid))
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        for w in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                w.kill()


def call(srv: dict[str, Any], method: str, path: str, key: str | None = "read", **kw: Any) -> Any:
    """One request on a new connection (so it may reach any worker); ``key``: which API key
    to send (the read key keeps requests out of the anonymous rate limit)."""
    headers = {**(auth(srv[key]) if key else {}), **kw.pop("headers", {})}
    return httpx.request(method, srv["base"] + path, headers=headers, timeout=30, **kw)


def tail(srv: dict[str, Any]) -> str:
    """The end of the service's log (for failure messages)."""
    return str(srv["log"].read_text()[-3000:])


def worker_of(r: Any) -> int:
    return int(r.headers[WORKER_HEADER])


def each_worker(
    srv: dict[str, Any],
    path: str,
    ok: Callable[[Any], bool],
    timeout: float = 30,
    method: str = "GET",
    **kw: Any,
) -> dict[int, Any]:
    """Send a request (GET ``path``; ``kw`` as for :func:`call`) over new connections until
    ``WORKERS`` distinct workers answered it as ``ok`` accepts; {pid: that response}."""
    got: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    while len(got) < WORKERS:
        assert srv["proc"].poll() is None, tail(srv)
        assert time.monotonic() < deadline, f"only {sorted(got)} answered {path}: {tail(srv)}"
        try:
            r = call(srv, method, path, **kw)
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        if ok(r):
            got.setdefault(worker_of(r), r)
        else:
            time.sleep(0.05)
    return got


def test_workers_are_the_supervisors_children(server: dict[str, Any]) -> None:
    children = {p.pid for p in psutil.Process(server["proc"].pid).children()}
    assert len(server["pids"]) == WORKERS and server["pids"] <= children


def test_concurrent_requests_reach_both_workers_and_are_right(server: dict[str, Any]) -> None:
    with Catalog.open(CATALOG) as cat:
        engine = SearchEngine(cat, server["specs"]["1"])
        texts = ["blue square", "red circle", "green triangle", "yellow stripes"]
        want_text = {t: [h.sku for h in engine.search(text=t, k=5)] for t in texts}
        probes = [sku(c, i) for c in range(4) for i in (0, 5)]
        want_similar = {s: [h.sku for h in engine.similar(s, k=4)] for s in probes}
        image = make_product_image("Green triangle", 7)
        want_image = [h.sku for h in engine.search(image=image, k=5)]
    query = png_bytes("Green triangle", 7)

    def one(i: int) -> tuple[int, bool, str]:
        if i % 3 == 0:
            t = texts[i % len(texts)]
            r = call(server, "POST", "/v1/search", json={"text": t, "k": 5})
            want = want_text[t]
        elif i % 3 == 1:
            s = probes[i % len(probes)]
            r = call(server, "GET", f"/v1/products/{s}/similar", params={"k": 4})
            want = want_similar[s]
        else:
            files = {"image": ("q.png", query, "image/png")}
            r = call(server, "POST", "/v1/search", files=files, data={"k": "5"})
            want = want_image
        right = r.status_code == 200 and [h["sku"] for h in r.json()["results"]] == want
        return worker_of(r), right, r.text[:200]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(48)))
    assert all(right for _, right, _ in answers), [a for a in answers if not a[1]][:3]
    served = Counter(pid for pid, _, _ in answers)
    assert set(served) <= server["pids"]
    assert len(served) == WORKERS, served  # both workers answered


def test_event_stored_by_one_worker_is_seen_by_all(server: dict[str, Any]) -> None:
    events = [
        {
            "event_id": f"new-{j}",
            "customer_id": "newcomer",
            "sku": sku(1, j),
            "type": "click",
            "timestamp": T0 + 40 * 86_400 + j,
        }
        for j in range(3)
    ]
    r = call(server, "POST", "/v1/events", key="write", json={"events": events})
    assert r.status_code == 200 and r.json()["accepted"] == 3, r.text
    path = "/v1/customers/newcomer/recommendations?k=4"
    answers = each_worker(server, path, lambda r: r.status_code == 200)
    for body in (a.json() for a in answers.values()):
        assert body["personalized"] and body["history_events"] == 3, body
        assert not {e["sku"] for e in events} & {h["sku"] for h in body["results"]}


def test_api_keys_are_shared(server: dict[str, Any]) -> None:
    """A key created while the service runs works in every worker; revoked, in none."""
    keys = KeyStore(server["home"] / "keys.sqlite")
    record, server["late"] = keys.create("write", "created while serving")
    event = {"event_id": "key-check", "customer_id": "keys", "sku": sku(3, 3), "type": "view"}
    body = {"events": [{**event, "timestamp": T0}]}
    accepted = each_worker(
        server, "/v1/events", lambda r: r.status_code == 200, method="POST", key="late", json=body
    )
    assert sum(r.json()["accepted"] for r in accepted.values()) == 1  # then duplicates
    keys.revoke(record.id)
    keys.close()
    refused = each_worker(
        server, "/v1/events", lambda r: r.status_code == 401, method="POST", key="late", json=body
    )
    assert all(r.json()["error"]["code"] == "unauthorized" for r in refused.values())


def test_rate_limits_are_per_worker(server: dict[str, Any]) -> None:
    """Documented: each worker keeps its own buckets, so one address gets BURST from each."""
    allowed: Counter[int] = Counter()
    refused: Counter[int] = Counter()
    for _ in range(200):
        # a new connection, from an address of its own (the other tests' come from 127.0.0.1)
        transport = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(transport=transport, base_url=server["base"], timeout=30) as client:
            r = client.get(f"/v1/products/{sku(0, 0)}")
        assert r.status_code in (200, 429), r.text
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
        (allowed if r.status_code == 200 else refused)[worker_of(r)] += 1
        if len(refused) == WORKERS:
            break
    assert set(refused) == server["pids"], (allowed, refused)
    assert allowed == {pid: BURST for pid in server["pids"]}  # N x the configured burst


def test_index_rebuild_reaches_every_worker(server: dict[str, Any], tmp_path: Path) -> None:
    rows = []
    (tmp_path / "img").mkdir()
    for i in range(4):
        make_product_image("Red circle", 900 + i).save(tmp_path / "img" / f"NEW-{i}.png")
        rows.append({"sku": f"NEW-{i}", "title": f"New red circle {i}", "category": "Red circle"})
        rows[-1]["image"] = f"img/NEW-{i}.png"
    with (tmp_path / "new.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ingest_manifest(tmp_path / "new.csv", CATALOG)
    with Catalog.open(CATALOG) as cat:
        build_image_index(cat, server["specs"]["1"])  # a new `current` build: 44 products
    t0 = time.monotonic()
    each_worker(server, "/readyz", lambda r: r.status_code == 200 and r.json()["vectors"] == 44)
    took = time.monotonic() - t0
    assert took < 20, took  # each worker checks every POLL_S, then loads the build
    similar = each_worker(server, "/v1/products/NEW-0/similar?k=3", lambda r: True)
    assert all(r.status_code == 200 for r in similar.values()), similar


def test_promote_reaches_every_worker(server: dict[str, Any]) -> None:
    url = f"/v1/models/{MODEL}/aliases/champion"
    r = call(server, "POST", url, key="write", json={"version": "2"})
    assert r.status_code == 200 and r.json()["previous_version"] == "1", r.text
    t0 = time.monotonic()
    ready = each_worker(
        server,
        "/readyz",
        lambda r: r.status_code == 200 and (r.json()["model"] or {}).get("version") == "2",
    )
    took = time.monotonic() - t0
    assert took < 20, took  # each worker polls the alias every POLL_S, then loads version 2
    assert {r.json()["encoder"] for r in ready.values()} == {server["specs"]["2"]}


def test_a_killed_worker_is_replaced(server: dict[str, Any]) -> None:
    champion = MlflowTracker().get_model_version_by_alias(MODEL, "champion").version
    victim = psutil.Process(min(server["pids"]))
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    ready = each_worker(
        server,
        "/readyz",
        lambda r: r.status_code == 200 and (r.json()["model"] or {}).get("version") == champion,
        timeout=300,
    )
    assert victim.pid not in ready and len(ready) == WORKERS  # the newcomer serves @champion
    children = {p.pid for p in psutil.Process(server["proc"].pid).children()}
    assert set(ready) <= children
    server["pids"] = set(ready)


def test_sigterm_drains_and_stops_every_worker(server: dict[str, Any]) -> None:
    """A request still sending its body when SIGTERM arrives is answered; then all exit."""
    proc = server["proc"]
    workers = [psutil.Process(pid) for pid in server["pids"]]
    event = {"event_id": "late", "customer_id": "late", "sku": sku(2, 1), "type": "view"}
    body = json.dumps({"events": [{**event, "timestamp": T0}]}).encode()
    sent_first, go_on = threading.Event(), threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        sent_first.set()
        go_on.wait(10)
        yield body[len(body) // 2 :]

    result: dict[str, Any] = {}

    def post() -> None:
        try:
            result["r"] = call(
                server,
                "POST",
                "/v1/events",
                key="write",
                content=slow_body(),
                headers={"Content-Type": "application/json"},
            )
        except httpx.HTTPError as e:
            result["error"] = e

    poster = threading.Thread(target=post)
    poster.start()
    assert sent_first.wait(10)
    time.sleep(0.5)  # the server is reading the body now
    proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)  # the workers are draining
    go_on.set()
    poster.join(30)
    assert "error" not in result, result.get("error")
    assert result["r"].status_code == 200 and result["r"].json()["accepted"] == 1
    assert proc.wait(timeout=60) == 0, tail(server)
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, alive  # no orphans
    with Catalog.open(CATALOG) as cat, EventStore.open(cat) as store:
        assert [e.sku for e in store.customer_events("late")] == [sku(2, 1)]


def test_zero_workers_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from shoplens.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--workers", "0"])
    assert exit_.value.code == 2
    assert "--workers" in capsys.readouterr().err


ORPHAN = """
import multiprocessing, os, signal, sys, time


def worker():
    from shoplens.serve.workers import stop_with_parent

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # uvicorn would drain here
    stop_with_parent()
    time.sleep(60)


if __name__ == "__main__":
    os.environ["SHOPLENS_SUPERVISOR_PID"] = str(os.getpid())
    p = multiprocessing.get_context("spawn").Process(target=worker)
    p.start()
    print(p.pid, flush=True)
    time.sleep(60)
"""


def test_worker_stops_when_its_supervisor_is_killed(tmp_path: Path) -> None:
    """A supervisor killed with SIGKILL leaves no worker serving behind it."""
    script = tmp_path / "supervisor.py"
    script.write_text(ORPHAN)
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    worker = None
    try:
        assert parent.stdout is not None
        worker = psutil.Process(int(parent.stdout.readline()))
        assert worker.ppid() == parent.pid
        parent.kill()  # perhaps before the worker even started to watch: it stops all the same
        parent.wait(timeout=10)
        worker.wait(timeout=30)  # psutil.TimeoutExpired if it keeps running
    finally:
        if worker is not None and worker.is_running():
            worker.kill()
        if parent.poll() is None:
            parent.kill()
        parent.wait(timeout=10)


def test_bad_setting_fails_before_any_worker_starts(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from shoplens.cli import main

    monkeypatch.setenv("SHOPLENS_HOME", str(world["home"]))
    monkeypatch.setenv("SHOPLENS_INDEX_POLL_S", "-1")
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "-c", CATALOG, "--workers", "2", "--port", str(free_port())])
    assert exit_.value.code == 2
    assert "SHOPLENS_INDEX_POLL_S" in capsys.readouterr().err
