"""Reliability under load, hostile input and shutdown, against a real ``shoplens serve``.

Starts ``shoplens serve`` (uvicorn) on loopback in a subprocess, on a generated small
catalogue in a temporary ``SHOPLENS_HOME`` (test-tiny encoders, SIMULATED customers and a
fitted recommender, so it runs anywhere in a minute) or on ``--catalog NAME`` of
``$SHOPLENS_HOME`` (it posts events and products into it: use a copy). Then:

1. load: >= 10,000 mixed requests (text search, image search uploads, product API and
   web pages, similar products, recommendations, event posts with a write key) from
   ``--concurrency`` closed-loop ``httpx`` workers; every answer should be a 2xx. Errors
   (non-2xx, 5xx, connection errors), p50 / p99 per kind, and the server's RSS (psutil)
   after the warm-up and at the end (target: growth < 10 %);
2. the full hostile corpus (:mod:`shoplens.reliability.hostile`) over HTTP, and every
   hostile image URL through the guarded fetcher (a sentinel server must see no request);
3. schemathesis against ``/openapi.json``: ``--fuzz-examples`` positive and as many
   negative examples per operation, checks: no 5xx, response schema, content type;
4. graceful shutdown: SIGTERM while ``--drain`` slow uploads are in flight; they must all
   finish with 2xx and the process exit with status 0.

Rate limits are off for the load generator (one client address; the limiter has its own
tests). Writes docs/bench/reliability.json::

    python benchmarks/bench_reliability.py                 # the figures in docs/RELIABILITY.md
    python benchmarks/bench_reliability.py --quick --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # benchmarks/common.py, next to this script

SHOPLENS = str(Path(sys.executable).parent / "shoplens")
CATALOG = "reliability"
CATEGORIES = ["Bag", "Coat", "Dress", "Sandal", "Shirt", "Sneaker", "Trouser", "Pullover"]
TEXT_QUERIES = ["red bag", "blue coat", "summer dress", "white sneaker", "striped shirt",
                "wool pullover", "black trousers", "sandal with straps"]  # fmt: skip
MIX = {  # kind: weight
    "text search": 30,
    "image search": 15,
    "product api": 10,
    "product page": 10,
    "similar": 10,
    "recommendations": 15,
    "events": 10,
}
TARGET_GROWTH = 0.10
Row = dict[str, Any]


# ---- the catalogue and the server ----------------------------------------------------------
def make_catalog(home: Path, per_category: int, customers: int, say: Callable[[str], None]) -> None:
    """A generated catalogue with the test-tiny encoders, SIMULATED events and recommender."""
    from shoplens.catalog.ingest import ingest_manifest
    from shoplens.catalog.store import Catalog
    from shoplens.demo import demo_recommendations
    from shoplens.index.build import build_indexes
    from shoplens.reliability.hostile_files import sample_image

    src = home / "src"
    (src / "img").mkdir(parents=True, exist_ok=True)
    lines = ["sku,title,category,image,colour"]
    for c, category in enumerate(CATEGORIES):
        for i in range(per_category):
            sku = f"R-{c}-{i:03d}"
            sample_image(1000 * c + i, 48).save(src / "img" / f"{sku}.png")
            colour = ("red", "blue", "white", "black")[i % 4]
            lines.append(f"{sku},{colour} {category.lower()} {i},{category},img/{sku}.png,{colour}")
    (src / "catalog.csv").write_text("\n".join(lines) + "\n")
    say(f"catalogue {CATALOG}: {len(lines) - 1} generated products")
    ingest_manifest(src / "catalog.csv", CATALOG)
    with Catalog.open(CATALOG) as cat:
        build_indexes(cat, "test-tiny", text_encoder="test-tiny-text")
        demo_recommendations(cat, customers, say)


@contextmanager
def server(
    catalog: str, env: dict[str, str], log_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``shoplens serve`` in a subprocess, its output in ``log_path``; yields (base URL,
    process) once /readyz is 200."""
    port = common.free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [SHOPLENS, "serve", "--catalog", catalog, "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        common.wait_ready(proc, base, 600, log_path.read_text, poll_s=0.3)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def log_problems(log_path: Path) -> Row:
    """Tracebacks and warnings the server logged (access log lines excluded)."""
    lines = log_path.read_text(errors="replace").splitlines()
    bad = [ln for ln in lines if ln.startswith(("ERROR", "WARNING", "Traceback", "CRITICAL"))]
    return {"lines": len(lines), "problems": len(bad), "examples": bad[:10]}


def rss_mib(pid: int) -> float:
    import psutil

    return float(psutil.Process(pid).memory_info().rss) / 2**20


# ---- 1. load -------------------------------------------------------------------------------
Make = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


def requests_mix(catalog: str, write_key: str, seed: int) -> list[tuple[str, Make]]:
    """A seeded, shuffled cycle of request makers with the MIX weights."""
    from shoplens.catalog.store import Catalog
    from shoplens.personalize.events import EventStore

    with Catalog.open(catalog) as cat:
        products = list(itertools.islice(cat.iter_products(), 400))
        images = [cat.image_path(p.image_key).read_bytes() for p in products[:50]]
        with EventStore.open(cat) as store:
            customers = store.customer_ids(limit=300) + [f"new-{i}" for i in range(20)]
    skus = [p.sku for p in products]
    auth = {"Authorization": f"Bearer {write_key}"}
    counter = itertools.count()
    t0 = time.time() - 30 * 86_400  # one event a second from a month ago: never "future"

    def events(c: httpx.AsyncClient, i: int) -> Awaitable[httpx.Response]:
        batch = []
        for j in range(5):
            n = next(counter)
            batch.append(
                {
                    "event_id": f"load-{seed}-{n}",
                    "customer_id": f"load-c{n % 97}",
                    "sku": skus[(i + j) % len(skus)],
                    "type": ("view", "click", "purchase")[j % 3],
                    "timestamp": t0 + n,
                }
            )
        return c.post("/v1/events", json={"events": batch}, headers=auth)

    makers: dict[str, Make] = {
        "text search": lambda c, i: c.post(
            "/v1/search", json={"text": TEXT_QUERIES[i % len(TEXT_QUERIES)], "k": 10}
        ),
        "image search": lambda c, i: c.post(
            "/v1/search",
            files={"image": ("q.png", images[i % len(images)], "image/png")},
            data={"k": "10"},
        ),
        "product api": lambda c, i: c.get(f"/v1/products/{skus[i % len(skus)]}"),
        "product page": lambda c, i: c.get(f"/products/{skus[i % len(skus)]}"),
        "similar": lambda c, i: c.get(f"/v1/products/{skus[i % len(skus)]}/similar"),
        "recommendations": lambda c, i: c.get(
            f"/v1/customers/{customers[i % len(customers)]}/recommendations"
        ),
        "events": events,
    }
    cycle = [(k, makers[k]) for k, w in MIX.items() for _ in range(w)]
    random.Random(seed).shuffle(cycle)
    return cycle


async def drive(
    base: str, cycle: list[tuple[str, Make]], n: int, concurrency: int, offset: int = 0
) -> Row:
    """``n`` requests from ``concurrency`` workers, each one at a time (closed loop);
    request ``i`` is ``cycle[(offset + i) % len(cycle)]``."""
    lat: dict[str, list[float]] = {k: [] for k in MIX}
    statuses: Counter[str] = Counter()
    errors: list[str] = []
    counter = itertools.count()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

        async def worker() -> None:
            while (j := next(counter)) < n:
                i = offset + j
                kind, make = cycle[i % len(cycle)]
                t = time.perf_counter()
                try:
                    r = await make(client, i)
                    statuses[f"{kind} {r.status_code}"] += 1
                    if not r.is_success:
                        errors.append(f"{kind}: {r.status_code} {r.text[:150]}")
                except httpx.HTTPError as e:
                    statuses[f"{kind} connection error"] += 1
                    errors.append(f"{kind}: {type(e).__name__}: {e}")
                lat[kind].append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    every = [x for v in lat.values() for x in v]
    return {
        "requests": n,
        "wall_s": round(wall, 2),
        "throughput_rps": round(n / wall, 1),
        **_pcts(every),
        "by_kind": {k: {"requests": len(v), **_pcts(v)} for k, v in lat.items() if v},
        "statuses": dict(sorted(statuses.items())),
        "errors": len(errors),
        "server_errors": sum(n for k, n in statuses.items() if k.split()[-1].startswith("5")),
        "connection_errors": sum(n for k, n in statuses.items() if k.endswith("connection error")),
        "error_examples": errors[:5],
        "_samples": lat,  # raw latencies, merged over the rounds by load()
    }


def _pcts(seconds: list[float]) -> Row:
    ms = np.asarray(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def load(base: str, pid: int, cycle: list[tuple[str, Make]], s: argparse.Namespace) -> Row:
    """Warm up, then ``s.requests`` in ten rounds with the server's RSS sampled between."""
    asyncio.run(drive(base, cycle, s.warmup, s.concurrency))
    rss = [rss_mib(pid)]
    rounds = []
    chunk = max(1, -(-s.requests // 10))
    for done in range(0, s.requests, chunk):
        n = min(chunk, s.requests - done)
        rounds.append(asyncio.run(drive(base, cycle, n, s.concurrency, offset=s.warmup + done)))
        rss.append(rss_mib(pid))
    wall = sum(r["wall_s"] for r in rounds)
    samples: dict[str, list[float]] = {k: [] for k in MIX}
    for r in rounds:
        for k, v in r.pop("_samples").items():
            samples[k] += v
    every = [x for v in samples.values() for x in v]
    return {
        "requests": sum(r["requests"] for r in rounds),
        "concurrency": s.concurrency,
        "warmup_requests": s.warmup,
        "wall_s": round(wall, 2),
        "throughput_rps": round(s.requests / wall, 1),
        **_pcts(every),
        "by_kind": {k: {"requests": len(v), **_pcts(v)} for k, v in samples.items() if v},
        "errors": sum(r["errors"] for r in rounds),
        "server_errors": sum(r["server_errors"] for r in rounds),
        "connection_errors": sum(r["connection_errors"] for r in rounds),
        "error_examples": [e for r in rounds for e in r["error_examples"]][:5],
        "rss_mib": {
            "after_warmup": round(rss[0], 1),
            "end": round(rss[-1], 1),
            "samples": [round(x, 1) for x in rss],
        },
        "rss_growth": round(rss[-1] / rss[0] - 1, 4),
        "rounds": rounds,
    }


# ---- 2. hostile corpus and URLs ------------------------------------------------------------
def hostile(base: str, keys: tuple[str, str], seed: int) -> Row:
    from shoplens.reliability.hostile import (
        Sentinel,
        Target,
        build_corpus,
        run_corpus,
        run_url_cases,
    )
    from shoplens.reliability.hostile_files import url_cases

    spec = httpx.get(f"{base}/openapi.json", timeout=30).json()
    first = httpx.post(f"{base}/v1/search", json={"text": "bag", "k": 1}, timeout=30).json()
    sku = first["results"][0]["sku"]
    with Sentinel() as sentinel, httpx.Client(base_url=base, timeout=60) as client:
        target = Target(sku=sku, write_key=keys[0], read_key=keys[1], url_port=sentinel.port)
        cases = build_corpus(spec, target, seed=seed)

        def send(case: Any) -> tuple[int, Any, bytes]:
            try:
                r = client.request(case.method, case.path, **case.request_kwargs())
            except httpx.HTTPError:
                return 0, {}, b""
            return r.status_code, r.headers, r.content

        report = run_corpus(cases, send)
        http_hits = list(sentinel.hits)
        urls, problems = run_url_cases(url_cases(sentinel.port), sentinel)
    out = report.to_dict()
    out["sentinel_hits"] = len(http_hits)
    out["url_cases"] = {
        "cases": len(urls),
        "outcomes": dict(Counter(u.outcome for u in urls)),
        "problems": problems[:10],
        "sentinel_hits": len(sentinel.hits) - len(http_hits),
    }
    return out


# ---- 3. schemathesis -----------------------------------------------------------------------
@dataclass
class FuzzTally:
    calls: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)
    unsatisfiable: list[str] = field(default_factory=list)


def fuzz(base: str, write_key: str, examples: int) -> Row:
    """schemathesis over every operation: positive and negative examples, derandomized."""
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    headers = {"Authorization": f"Bearer {write_key}"}
    tally = FuzzTally()
    for result in schema.get_all_operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz_operation(result.ok(), mode, examples, headers, tally)
    return {
        "operations": len(tally.calls),
        "examples": sum(tally.calls.values()),
        "max_examples_per_operation_and_mode": examples,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "failures": len(tally.failures),
        "failure_examples": dict(list(tally.failures.items())[:10]),
        "no_examples_possible": tally.unsatisfiable,
    }


def fuzz_operation(
    op: Any, mode: Any, examples: int, headers: dict[str, str], tally: FuzzTally
) -> None:
    """Up to ``examples`` cases of ``op`` in ``mode``; the first failure per kind is kept."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
    )

    label = f"{op.label} ({mode.value})"

    @settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        tally.calls[op.label] += 1
        try:
            resp = case.call(headers=headers, timeout=300)
        except Exception as e:  # a dropped connection is a failure too
            tally.failures.setdefault(f"{label}: {type(e).__name__}", str(e)[:200])
            return
        tally.statuses[resp.status_code] += 1
        if resp.status_code >= 500 and not _unavailable(resp):
            tally.failures.setdefault(label, f"server error {resp.status_code}: {resp.text[:200]}")
            return
        try:
            case.validate_response(
                resp, checks=[response_schema_conformance, content_type_conformance]
            )
        except Exception as e:
            tally.failures.setdefault(label, f"{type(e).__name__}: {str(e)[:300]}")

    try:
        run()
    except Unsatisfiable:  # nothing to negate: no parameters, or only free text
        tally.unsatisfiable.append(label)
    except Exception as e:
        tally.failures.setdefault(f"{label} generation", str(e)[:200])


def _unavailable(resp: Any) -> bool:
    """A documented 503: JSON error saying a model is not installed."""
    from shoplens.reliability.hostile import UNAVAILABLE_CODES

    try:
        body = resp.json()
    except ValueError:
        return False
    err = body.get("error") if isinstance(body, dict) else None
    return (
        resp.status_code == 503 and isinstance(err, dict) and err.get("code") in UNAVAILABLE_CODES
    )


# ---- 4. graceful shutdown ------------------------------------------------------------------
def drain(base: str, proc: subprocess.Popen[bytes], n: int, seconds: float) -> Row:
    """SIGTERM while ``n`` uploads that take ``seconds`` to send are in flight."""
    import io

    from PIL import Image

    img = Image.effect_noise((256, 256), 64).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    boundary = "drainboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + buf.getvalue()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    pieces = 20

    async def slow_body() -> Any:
        step = len(body) // pieces + 1
        for i in range(0, len(body), step):
            yield body[i : i + step]
            await asyncio.sleep(seconds / pieces)

    async def one(client: httpx.AsyncClient) -> str:
        try:
            r = await client.post(
                "/v1/search",
                content=slow_body(),
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )
            return str(r.status_code)
        except httpx.HTTPError as e:
            return type(e).__name__

    async def go() -> tuple[list[str], float, float]:
        async with httpx.AsyncClient(base_url=base, timeout=120) as client:
            tasks = [asyncio.create_task(one(client)) for _ in range(n)]
            await asyncio.sleep(seconds / 4)  # every upload has started, none has finished
            t_term = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            results = await asyncio.gather(*tasks)
            return results, t_term, time.perf_counter()

    results, t_term, t_done = asyncio.run(go())
    code = proc.wait(timeout=120)
    t_exit = time.perf_counter()
    refused = False
    try:
        httpx.get(f"{base}/healthz", timeout=2)
    except httpx.TransportError:
        refused = True
    return {
        "in_flight": n,
        "upload_seconds": seconds,
        "results": dict(Counter(results)),
        "completed_2xx": sum(1 for r in results if r.startswith("2")),
        "exit_code": code,
        "drained_s": round(t_done - t_term, 2),
        "exit_s": round(t_exit - t_term, 2),
        "port_closed_after": refused,
    }


# ---- main ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> Row:
    s = parse_args(argv)
    say = print
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="shoplens-reliability-") as tmp:
        home = Path(os.environ.get("SHOPLENS_HOME", "~/.shoplens")).expanduser()
        catalog = s.catalog
        if catalog is None:
            home, catalog = Path(tmp) / "home", CATALOG
            os.environ["SHOPLENS_HOME"] = str(home)
            make_catalog(home, s.per_category, s.customers, say)
        from shoplens.serve.keys import KeyStore

        keys = KeyStore()
        write, read = keys.create("write", "bench")[1], keys.create("read", "bench")[1]
        keys.close()
        env = {
            **os.environ,
            "SHOPLENS_HOME": str(home),
            "SHOPLENS_RATE_LIMIT_PER_S": "0",
            "SHOPLENS_RATE_LIMIT_KEY_PER_S": "0",
        }
        for var in ("SHOPLENS_MODEL", "SHOPLENS_ENCODER"):
            env.pop(var, None)
        result: Row = {"catalog": catalog, "generated_catalog": s.catalog is None}
        log_path = Path(tmp) / "serve.log"
        with server(catalog, env, log_path) as (base, proc):
            say(f"serving {catalog} at {base} (pid {proc.pid})")
            cycle = requests_mix(catalog, write, s.seed)
            result["load"] = load(base, proc.pid, cycle, s)
            say(_load_line(result["load"]))
            result["hostile"] = hostile(base, (write, read), s.seed)
            h = result["hostile"]
            say(f"hostile: {h['cases']} cases, {h['server_errors']} 5xx, {h['problems']} problems")
            result["schemathesis"] = fuzz(base, write, s.fuzz_examples)
            f = result["schemathesis"]
            say(f"schemathesis: {f['examples']} examples, {f['failures']} failures")
            result["rss_after_all_mib"] = round(rss_mib(proc.pid), 1)
            result["drain"] = drain(base, proc, s.drain, s.drain_seconds)
            say(f"graceful shutdown: {result['drain']}")
        result["server_log"] = log_problems(log_path)
    result["seconds"] = round(time.time() - started, 1)
    result["machine"] = common.machine()
    result["load_average"] = common.load_average()
    result["command"] = "python benchmarks/bench_reliability.py " + " ".join(argv or sys.argv[1:])
    if s.write:
        common.write_json(s.docs / "bench" / "reliability.json", result)
    return result


def _load_line(r: Row) -> str:
    return (
        f"load: {r['requests']} requests at concurrency {r['concurrency']}, {r['errors']} errors "
        f"({r['server_errors']} 5xx, {r['connection_errors']} connection), "
        f"RSS {r['rss_mib']['after_warmup']} -> {r['rss_mib']['end']} MiB "
        f"({r['rss_growth']:+.1%}), {r['throughput_rps']} req/s"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--catalog", help="An existing catalogue of $SHOPLENS_HOME (default: generated)")
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--fuzz-examples", type=int, default=50, help="per operation and mode")
    p.add_argument("--drain", type=int, default=8, help="uploads in flight at SIGTERM")
    p.add_argument("--drain-seconds", type=float, default=3.0, help="time to send each")
    p.add_argument("--per-category", type=int, default=25)
    p.add_argument("--customers", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a smoke test: fewer of everything")
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--docs", type=Path, default=common.DOCS)
    s = p.parse_args(argv)
    if s.quick:
        s.requests, s.warmup, s.fuzz_examples, s.per_category, s.customers = 500, 50, 5, 6, 40
    return s


if __name__ == "__main__":
    out = main()
    ok = (
        out["load"]["errors"] == 0
        and out["load"]["rss_growth"] < TARGET_GROWTH
        and out["hostile"]["server_errors"] == 0
        and out["hostile"]["problems"] == 0
        and out["schemathesis"]["failures"] == 0
        and out["drain"]["exit_code"] == 0
        and out["drain"]["completed_2xx"] == out["drain"]["in_flight"]
    )
    print(
        json.dumps({k: out[k] for k in ("seconds",)}), "all targets met" if ok else "TARGETS MISSED"
    )
    sys.exit(0 if ok else 1)
