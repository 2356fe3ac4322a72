"""Service latency over HTTP: routes x concurrency, micro-batching on vs off, search overhead.

Starts the real service (``create_app`` under uvicorn, as ``shoplens serve`` runs it) on
a catalogue (default: the demo catalogue ``fashion-mnist`` in ``$SHOPLENS_HOME``) in a
subprocess and drives it from this process with a bounded async load generator: C
keep-alive connections that each send one request at a time (closed loop), a fixed
number of requests per level after a warm-up. The requests are prepared before the clock
starts (encoded by httpx: the same bytes an ``httpx`` client sends) and written to
asyncio streams; responses are read by their ``Content-Length``. It costs ~0.2 ms of CPU
per request, against ~2 ms for ``httpx.AsyncClient`` (``--client httpx``), and it shares
the machine's cores with the service. Measured:

* p50 / p90 / p99 / throughput at concurrency 1, 8 and 32 for image search (multipart
  upload of product images), text search, the product page's similar products
  (``/v1/products/{sku}/similar``) and recommendations (``/v1/customers/{id}/
  recommendations`` for the SIMULATED customers of the demo);
* micro-batching on vs off at concurrency 8 (two service processes, identical but for
  ``SHOPLENS_BATCHING``; rounds interleaved, so load from other work hits both alike);
* the search path's overhead in process: ``SearchEngine`` search by sku and by a query
  embedding vs raw FAISS ``index.search`` on the same index and vectors;
* recommendation p99 vs product page p99.

Writes the "## Service latency" section of docs/BENCHMARKS.md and the raw numbers
(latency summaries with histograms) to docs/bench/http.json::

    SHOPLENS_HOME=~/.shoplens python benchmarks/bench_http.py
    python benchmarks/bench_http.py --quick --no-write       # a smoke test
    python benchmarks/bench_http.py --max-wait-ms 5 --torch-threads 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # benchmarks/common.py, next to this script
from shoplens.serve.settings import ServiceSettings

HEADING = "## Service latency"
LEVELS = (1, 8, 32)
TARGET_BATCH_SPEEDUP = 1.5  # throughput, batching on / off, concurrency 8
TARGET_BATCH_P99 = 2.0  # p99 on / p99 off at most
TARGET_OVERHEAD = 1.3  # in-process search p50 / raw FAISS p50 at most
TARGET_RECS = 3.0  # recommendation p99 / product page p99 at most
HIST_EDGES_MS = np.geomspace(0.5, 30_000, 49)  # log-spaced latency bins
TEXT_QUERIES = [
    "black ankle boot", "white sneaker", "summer dress", "striped t-shirt", "warm coat",
    "leather bag", "blue trousers", "wool pullover", "sandal with straps", "checked shirt",
    "long sleeve top", "running shoe", "handbag", "slim jeans", "evening dress", "knit sweater",
]  # fmt: skip
# What `shoplens serve --catalog NAME --port PORT` runs, with every other setting taken
# from the SHOPLENS_* environment (batching on / off, threads).
LAUNCH = """
import sys, uvicorn
from shoplens.serve import ServiceSettings, create_app
from shoplens.serve.protocol import server_options
settings = ServiceSettings(catalog=sys.argv[1])
app = create_app(settings)
options = server_options(settings)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="info", **options)
"""
UNSET = ("SHOPLENS_MODEL", "SHOPLENS_ENCODER")  # the catalogue's own encoder is served
Row = dict[str, Any]
CLIENTS = ("raw", "httpx")  # the load generator's HTTP client (see the module docstring)


@dataclass(frozen=True)
class Req:
    """One prepared request; ``wire`` is what goes on the socket."""

    method: str
    target: str  # path + query
    headers: tuple[tuple[str, str], ...]  # content headers (httpx adds the rest itself)
    body: bytes
    wire: bytes

    @classmethod
    def build(cls, method: str, target: str, **kwargs: Any) -> Req:
        """``kwargs`` as for ``httpx.Request`` (json=, files=, data=, params=)."""
        r = httpx.Request(method, "http://bench" + target, **kwargs)
        body = r.read()
        headers = tuple((k, v) for k, v in r.headers.items() if k.lower().startswith("content-"))
        target = r.url.raw_path.decode()
        head = [f"{method} {target} HTTP/1.1", "Host: bench"]
        head += [f"{k}: {v}" for k, v in headers] + ["", ""]
        return cls(method, target, headers, body, "\r\n".join(head).encode() + body)


Make = Callable[[int], Req]  # the i-th request of a run
# what a failed request raises (counted as an error, the run goes on)
LOAD_ERRORS = (OSError, EOFError, ValueError, asyncio.LimitOverrunError, httpx.HTTPError)
Observe = Callable[[dict[str, str]], None]  # sees each response's headers


# ---- the service ----
@contextmanager
def service(catalog: str, env: dict[str, str], timeout: float = 600) -> Iterator[str]:
    """The service (as ``shoplens serve`` runs it) in a subprocess; yields its URL once
    /readyz is 200. Settings other than the catalogue come from ``env``."""
    port = common.free_port()
    cmd = [sys.executable, "-c", LAUNCH, catalog, str(port)]
    proc = subprocess.Popen(
        cmd,
        env={
            **{k: v for k, v in os.environ.items() if k not in UNSET},
            "SHOPLENS_RATE_LIMIT_PER_S": "0",  # a load generator on one address: no limit
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        common.wait_ready(
            proc, base, timeout, lambda: proc.stderr.read().decode() if proc.stderr else ""
        )
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- the load generator ----
class _Response:
    """Status, headers (lower-case names) and body of one HTTP/1.1 response."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


async def _read_response(reader: asyncio.StreamReader) -> _Response:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = {}
    for line in head[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")  # no trailers are sent
        body = b"".join(parts)
    else:  # no length: the body runs to the end of the connection
        body = await reader.read()
    return _Response(status, headers, body)


class _RawConnection:
    """One keep-alive connection; reopened when the server closes it."""

    def __init__(self, base: str) -> None:
        host, _, port = base.removeprefix("http://").rpartition(":")
        self.host, self.port = host, int(port)
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, req: Req) -> _Response:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        try:
            writer.write(req.wire)
            r = await asyncio.wait_for(_read_response(reader), 120)
        except BaseException:
            self.close()
            raise
        if r.headers.get("connection", "").lower() == "close":
            self.close()
        return r

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def _drive(
    send: Callable[[int, Req], Awaitable[_Response]],
    make: Make,
    concurrency: int,
    n: int,
    observe: Observe | None,
) -> Row:
    """``n`` requests from ``concurrency`` workers, each one request at a time; worker
    ``w`` sends with ``send(w, request)``."""
    latencies: list[float] = []
    in_app: list[float] = []  # the service's own time (Server-Timing header), seconds
    errors: list[str] = []
    counter = itertools.count()

    async def worker(w: int) -> None:
        while (i := next(counter)) < n:
            req = make(i)
            t0 = time.perf_counter()
            try:
                r = await send(w, req)
                ok, why = r.status == 200, f"{r.status} {r.body[:120]!r}"
                timing = r.headers.get("server-timing", "")
                if timing.startswith("app;dur="):
                    in_app.append(float(timing.removeprefix("app;dur=")) / 1000.0)
                if observe is not None:
                    observe(r.headers)
            except LOAD_ERRORS as e:
                ok, why = False, f"{type(e).__name__}: {e}"
            latencies.append(time.perf_counter() - t0)
            if not ok:
                errors.append(why)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    wall = time.perf_counter() - t0
    return {"latencies": latencies, "in_app": in_app, "errors": errors, "wall_s": wall}


async def _measured(drive: Awaitable[Row]) -> Row:
    """``drive``'s row and the CPU seconds this process spent on it (the load generator)."""
    cpu = time.process_time()
    out = await drive
    return {**out, "cpu_s": time.process_time() - cpu}


def run_load(
    base: str,
    make: Make,
    concurrency: int,
    n: int,
    warmup: int,
    client: str = "raw",
    observe: Observe | None = None,
) -> Row:
    """Warm up, then measure ``n`` requests at ``concurrency`` over ``client`` (one of
    CLIENTS); summary + raw samples. ``observe`` sees each measured response's headers."""

    async def go() -> Row:
        if client == "raw":
            conns = [_RawConnection(base) for _ in range(concurrency)]

            async def send(w: int, req: Req) -> _Response:
                return await conns[w].send(req)

            try:
                if warmup:
                    await _drive(send, make, concurrency, warmup, None)
                return await _measured(_drive(send, make, concurrency, n, observe))
            finally:
                for c in conns:
                    c.close()
        if client != "httpx":
            raise ValueError(f"client must be one of {CLIENTS}, not {client!r}")
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as http:

            async def send_httpx(w: int, req: Req) -> _Response:
                r = await http.request(
                    req.method, req.target, content=req.body, headers=dict(req.headers)
                )
                return _Response(r.status_code, dict(r.headers), r.content)

            if warmup:
                await _drive(send_httpx, make, concurrency, warmup, None)
            return await _measured(_drive(send_httpx, make, concurrency, n, observe))

    out = asyncio.run(go())
    app = summarize(out["in_app"]) if out["in_app"] else None
    return {
        **summarize(out["latencies"]),
        "in_app": app,
        "concurrency": concurrency,
        "client": client,
        "errors": len(out["errors"]),
        "error_examples": out["errors"][:3],
        "throughput_rps": len(out["latencies"]) / out["wall_s"],
        "wall_s": out["wall_s"],
        "client_cpu_ms": 1000 * out["cpu_s"] / max(1, len(out["latencies"])),  # per request
        "samples_s": out["latencies"],
    }


def summarize(latencies: list[float]) -> Row:
    """p50 / p90 / p99 / max / mean (ms) and a log-binned histogram of ``latencies`` (s)."""
    ms = np.asarray(latencies) * 1000.0
    counts, _ = np.histogram(np.clip(ms, HIST_EDGES_MS[0], HIST_EDGES_MS[-1]), HIST_EDGES_MS)
    return {
        "requests": int(ms.size),
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "mean_ms": float(ms.mean()),
        "histogram": {
            "edges_ms": [round(float(e), 3) for e in HIST_EDGES_MS],
            "counts": [int(c) for c in counts],
        },
    }


# ---- workloads ----
def workloads(catalog: str, customers: list[str], seed: int = 0) -> dict[str, Make]:
    """Request makers per route, cycling through fixed, seeded inputs (prepared here)."""
    from shoplens.catalog.store import Catalog

    rng = random.Random(seed)
    with Catalog.open(catalog) as cat:
        n = cat.count()
        picks = set(rng.sample(range(n), min(400, n)))
        products = [p for i, p in enumerate(cat.iter_products()) if i in picks]
        images = [cat.image_path(p.image_key).read_bytes() for p in products[:200]]
        skus = [p.sku for p in products]
    rng.shuffle(skus)

    def cycle(reqs: list[Req]) -> Make:
        return lambda i: reqs[i % len(reqs)]

    files = [{"image": ("q.png", data, "image/png")} for data in images]
    image = cycle([Req.build("POST", "/v1/search", files=f, data={"k": "10"}) for f in files])
    text = cycle([Req.build("POST", "/v1/search", json={"text": q}) for q in TEXT_QUERIES])
    similar = cycle(
        [Req.build("GET", f"/v1/products/{sku}/similar", params={"k": 10}) for sku in skus]
    )
    recs = cycle([Req.build("GET", f"/v1/customers/{c}/recommendations") for c in customers])

    out: dict[str, Make] = {"image search": image, "text search": text, "product page": similar}
    if customers:
        out["recommendations"] = recs
    return out


def wait_for_recs(base: str, timeout: float = 300.0) -> str:
    """Load the recommender and wait until its candidate indexes are built (the service
    builds them in the background; until then it answers with exact scans)."""
    httpx.get(f"{base}/v1/customers/sim-c000000/recommendations", timeout=120)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recs = httpx.get(f"{base}/readyz", timeout=30).json().get("recommendations") or {}
        mode = str(recs.get("candidates", ""))
        if not mode.endswith("building)"):
            return mode
        time.sleep(1.0)
    return "exact (ann building)"


ROUTES = {
    "image search": "POST /v1/search (multipart image)",
    "text search": "POST /v1/search (JSON text)",
    "product page": "GET /v1/products/{sku}/similar",
    "recommendations": "GET /v1/customers/{id}/recommendations",
}


def simulated_customers(catalog: str, fit: bool, say: Callable[[str], None]) -> list[str]:
    """The demo's simulated customers (a recommender is fitted first when missing)."""
    from shoplens.catalog.store import Catalog
    from shoplens.personalize.events import EventStore
    from shoplens.personalize.service import recs_root

    with Catalog.open(catalog) as cat:
        if not (recs_root(cat) / "current").exists():
            if not fit:
                say("no recommender fitted: recommendations are left out (see --fit-recs)")
                return []
            from shoplens.demo import DEMO_CUSTOMERS, demo_recommendations

            say("no recommender yet: simulating customers and fitting one as the demo does")
            demo_recommendations(cat, DEMO_CUSTOMERS, say)
        with EventStore.open(cat) as store:
            return store.customer_ids(limit=500, simulated=True)


# ---- in-process search overhead ----
def search_overhead(catalog: str, iterations: int, seed: int = 0) -> Row:
    """p50 of ``SearchEngine`` searches vs raw FAISS on the same index and vectors.

    Each iteration times, in rotating order: raw FAISS on a product's stored vector and
    ``engine.search(sku=...)`` for that product; raw FAISS on an encoded query image's
    vector and ``engine.search_vector`` on it (the image search without its encode); and
    ``engine.search(image=...)`` (with the encode, for reference). k = 10 throughout.
    """
    import faiss

    from shoplens.search.engine import SearchEngine

    engine = SearchEngine.open(catalog)
    index = engine.image_build.index
    raw = getattr(index, "_index", None)
    if raw is None:
        raise SystemExit("the image index is not a FAISS index: nothing to compare with")
    rng = np.random.default_rng(seed)
    pick = rng.choice(engine.image_build.ids, size=200, replace=False)
    by_id = engine.catalog.get_by_ids([int(i) for i in pick])
    skus = [by_id[int(i)].sku for i in pick]
    sku_q = [engine.product_vector(int(i)) for i in pick]  # (1, D) each
    images = [engine.catalog.load_image(by_id[int(i)]) for i in pick[:100]]
    img_q = [engine.encoder.encode_images([im]) for im in images]  # (1, D) each
    k = 10
    calls: dict[str, Callable[[int], Any]] = {
        "raw FAISS, product vector": lambda i: raw.search(sku_q[i % 200], k),
        "engine.search(sku=...)": lambda i: engine.search(sku=skus[i % 200], k=k),
        "raw FAISS, query-image vector": lambda i: raw.search(img_q[i % 100], k),
        "engine.search_vector(query-image vector)": lambda i: engine.search_vector(
            img_q[i % 100], k=k
        ),
        "engine.search(image=...), with encode": lambda i: engine.search(
            image=images[i % 100], k=k
        ),
    }
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    for n in names:  # warm-up
        for i in range(20):
            calls[n](i)
    for it in range(iterations):
        shift = it % len(names)
        for n in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            calls[n](it)
            times[n].append(time.perf_counter() - t0)
    rows = {n: summarize(v) for n, v in times.items()}
    return {
        "rows": rows,
        "vectors": int(index.ntotal),
        "factory": engine.image_build.meta.get("factory"),
        "encoder": engine.image_build.encoder,
        "faiss_threads": faiss.omp_get_max_threads(),
        "iterations": iterations,
        "ratio_sku": rows["engine.search(sku=...)"]["p50_ms"]
        / rows["raw FAISS, product vector"]["p50_ms"],
        "ratio_vector": rows["engine.search_vector(query-image vector)"]["p50_ms"]
        / rows["raw FAISS, query-image vector"]["p50_ms"],
    }


def thread_check(catalog: str, blocks: int = 8, per_block: int = 30) -> Row:
    """Single-call latency with 1 thread vs one per core (torch and FAISS), in blocks.

    Blocks alternate between the settings; every call in the service is one request's
    encode or search, so this is what a request pays for the library's thread pool.
    """
    import faiss
    import torch

    from shoplens.search.engine import SearchEngine

    engine = SearchEngine.open(catalog)
    raw = engine.image_build.index._index  # type: ignore[attr-defined]
    products = list(
        engine.catalog.get_by_ids([int(i) for i in engine.image_build.ids[:8]]).values()
    )
    images = [engine.catalog.load_image(p) for p in products]
    q = engine.encoder.encode_images(images[:1])  # (1, D)
    many = max(2, os.cpu_count() or 2)
    calls: dict[str, Callable[[], Any]] = {
        "encode 1 image": lambda: engine.encoder.encode_images(images[:1]),
        "encode 8 images": lambda: engine.encoder.encode_images(images),
        "FAISS search, 1 query": lambda: raw.search(q, 100),
    }
    times: dict[tuple[str, int], list[float]] = {}
    before = (torch.get_num_threads(), faiss.omp_get_max_threads())
    try:
        for b in range(blocks):
            threads = 1 if b % 2 == 0 else many
            torch.set_num_threads(threads)
            faiss.omp_set_num_threads(threads)
            for name, f in calls.items():
                for _ in range(3):
                    f()
                for _ in range(per_block):
                    t0 = time.perf_counter()
                    f()
                    times.setdefault((name, threads), []).append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before[0])
        faiss.omp_set_num_threads(before[1])
    return {
        "threads": [1, many],
        "rows": {name: {str(t): summarize(times[(name, t)]) for t in (1, many)} for name in calls},
    }


BATCHES = (1, 2, 3, 4, 6, 8, 16)


def batch_costs(catalog: str, blas_threshold: int, reps: int = 15) -> Row:
    """Milliseconds per query of each step a micro-batch shares, at batch sizes
    :data:`BATCHES` (one thread, in process): how much a batch of b saves per query.

    Exact search three ways: FAISS with its default BLAS threshold (a SIMD scan of every
    vector per query below 128,000 queries x dim), FAISS with the service's
    (``SHOPLENS_FAISS_BLAS_THRESHOLD``: one BLAS product for the batch), and as served
    (:class:`~shoplens.index.FaissIndex`: one torch product for 2-7 queries, else FAISS
    with the service's threshold). Sizes, steps and
    settings rotate within each repetition; each timed call follows an untimed one of
    the same step and size (warm caches: a cold 36 MB index scan costs several times more).
    """
    import faiss

    from shoplens.search.engine import SearchEngine

    engine = SearchEngine.open(catalog)
    ids = engine.image_build.ids[: max(BATCHES)]
    images = [engine.catalog.load_image(p) for p in engine.catalog.get_by_ids(
        [int(i) for i in ids]).values()]  # fmt: skip
    texts = (TEXT_QUERIES * 2)[: max(BATCHES)]
    default = faiss.cvar.distance_compute_blas_threshold
    steps: dict[str, Callable[[int], Any]] = {
        "image encoder (demo model)": lambda b: engine.encoder.encode_images(images[:b])
    }
    if "text" in getattr(engine.encoder, "modalities", ()):
        steps["text tower (demo model)"] = lambda b: engine.encoder.encode_texts(texts[:b])
    if engine.text_encoder is not None:
        steps["text encoder (MiniLM)"] = lambda b: engine.text_encoder.encode_texts(texts[:b])
    builds = [("image", engine.image_build, engine.encoder.encode_images(images))]
    if engine.text_build is not None and engine.text_encoder is not None:
        builds.append(("text", engine.text_build, engine.text_encoder.encode_texts(texts)))

    def search(index: Any, q: np.ndarray, threshold: int) -> Callable[[int], Any]:
        def run(b: int) -> Any:
            faiss.cvar.distance_compute_blas_threshold = threshold
            return index.search(np.ascontiguousarray(q[:b]), 28)  # 2k + 8 at k = 10

        return run

    for kind, build, q in builds:
        raw = getattr(build.index, "_index", None)
        if raw is None:
            continue
        label = f"exact search, {kind} index ({raw.ntotal:,} x {raw.d})"
        steps[f"{label}, FAISS default"] = search(raw, q, default)
        steps[f"{label}, FAISS threshold {blas_threshold}"] = search(raw, q, blas_threshold)
        steps[f"{label}, as served"] = search(build.index, q, blas_threshold)
    times: dict[str, dict[int, list[float]]] = {n: {b: [] for b in BATCHES} for n in steps}
    names = list(steps)
    try:
        for name in names:  # warm-up
            for b in BATCHES:
                steps[name](b)
        for rep in range(reps):
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                for b in BATCHES if rep % 2 == 0 else BATCHES[::-1]:
                    steps[name](b)  # warm caches: the step before evicted this one's data
                    t0 = time.perf_counter()
                    steps[name](b)
                    times[name][b].append((time.perf_counter() - t0) / b)
    finally:
        faiss.cvar.distance_compute_blas_threshold = default
    return {
        "batches": list(BATCHES),
        "reps": reps,
        "faiss_default_threshold": int(default),
        "blas_threshold": blas_threshold,
        "ms_per_query": {
            n: {str(b): 1000 * statistics.median(v) for b, v in per.items()}
            for n, per in times.items()
        },
    }


# ---- the measurements ----
def service_env(s: argparse.Namespace, batching: bool) -> dict[str, str]:
    env = {
        "SHOPLENS_BATCHING": "true" if batching else "false",
        "SHOPLENS_BATCH_MAX_SIZE": str(s.max_batch),
        "SHOPLENS_BATCH_MAX_WAIT_MS": str(s.max_wait_ms),
    }
    env["SHOPLENS_TORCH_THREADS"] = str(s.torch_threads)
    if s.batch_workers is not None:  # else the service's default (one per core)
        env["SHOPLENS_BATCH_WORKERS"] = str(s.batch_workers)
    env["SHOPLENS_RECS_BATCH_WORKERS"] = str(s.recs_batch_workers)
    env["SHOPLENS_FAISS_THREADS"] = str(s.faiss_threads)
    env["SHOPLENS_FAISS_BLAS_THRESHOLD"] = str(s.faiss_blas_threshold)
    return env


def compare_configs(
    bases: dict[str, str],
    make: Make,
    concurrency: int,
    n: int,
    rounds: int,
    warmup: int,
    kind: str = "image",
    client: str = "raw",
) -> Row:
    """Interleaved rounds over services that differ in one setting; the first is the
    baseline. Each round runs every service once (the order rotates between rounds);
    a config's speedup is the median over rounds of its throughput / the baseline's."""
    names = list(bases)
    runs: dict[str, list[Row]] = {k: [] for k in names}
    sizes_before = {k: batch_sizes(u) for k, u in bases.items()}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        if r % 2:
            order.reverse()
        for name in order:
            runs[name].append(run_load(bases[name], make, concurrency, n, warmup, client))
    after = {k: batch_sizes(u) for k, u in bases.items()}
    base = names[0]
    out: Row = {
        "concurrency": concurrency,
        "rounds": rounds,
        "requests_per_round": n,
        "client": client,
    }
    configs: dict[str, Row] = {}
    for name in names:
        pooled = summarize([x for run in runs[name] for x in run["samples_s"]])
        ratios = [
            a["throughput_rps"] / b["throughput_rps"]
            for a, b in zip(runs[name], runs[base], strict=True)
        ]
        configs[name] = {
            **pooled,
            "throughput_rps": [x["throughput_rps"] for x in runs[name]],
            "errors": sum(x["errors"] for x in runs[name]),
            "client_cpu_ms": statistics.median(x["client_cpu_ms"] for x in runs[name]),
            "speedup_paired_median": statistics.median(ratios),
            "speedup_each": ratios,
            "mean_batch": _mean_batch(sizes_before[name], after[name]),
            "encode_share": _encode_share(sizes_before[name], after[name], kind),
        }
    for name in names:
        configs[name]["p99_ratio"] = configs[name]["p99_ms"] / configs[base]["p99_ms"]
    out["baseline"] = base
    out["configs"] = configs
    return out


def recs_vs_page(
    base: str,
    makers: dict[str, Make],
    levels: list[int],
    n: int,
    rounds: int,
    warmup: int,
    client: str = "raw",
) -> list[Row]:
    """Recommendation p99 against the product page's, per concurrency level: ``rounds``
    interleaved rounds on one service (each runs both routes, the order alternating),
    samples pooled per route. Slow spells of a shared machine then fall on both routes
    alike, and p99 rests on ``rounds`` x ``n`` requests instead of ``n``."""
    out = []
    for c in levels:
        runs: dict[str, list[Row]] = {"product page": [], "recommendations": []}
        for r in range(rounds):
            order = list(runs) if r % 2 == 0 else list(runs)[::-1]
            for route in order:
                runs[route].append(run_load(base, makers[route], c, n, warmup, client))
        pooled = {
            route: summarize([x for run in rs for x in run["samples_s"]])
            for route, rs in runs.items()
        }
        out.append(
            {
                "concurrency": c,
                "rounds": rounds,
                "requests_per_round": n,
                "page_p99_ms": pooled["product page"]["p99_ms"],
                "recs_p99_ms": pooled["recommendations"]["p99_ms"],
                "page_rps": [x["throughput_rps"] for x in runs["product page"]],
                "recs_rps": [x["throughput_rps"] for x in runs["recommendations"]],
                "errors": sum(x["errors"] for rs in runs.values() for x in rs),
                "ratio": pooled["recommendations"]["p99_ms"] / pooled["product page"]["p99_ms"],
                "ratio_each": [
                    a["p99_ms"] / b["p99_ms"]
                    for a, b in zip(runs["recommendations"], runs["product page"], strict=True)
                ],
            }
        )
    return out


# the encoders' labels in /metrics (batch_sizes also returns "search": the route's seconds,
# and "recommend": the recommender's ranker passes)
ENCODE_KINDS = ("image", "text")
BATCH_KINDS = (*ENCODE_KINDS, "recommend")
# what each route micro-batches
ROUTE_KIND = {"image search": "image", "text search": "text", "recommendations": "recommend"}


def _mean_batch(before: Row, after: Row) -> dict[str, float]:
    """Mean queries per forward pass between two /metrics readings, per kind."""
    out = {}
    for kind in BATCH_KINDS:
        if kind not in after:
            continue
        x, b = after[kind], before.get(kind, {"passes": 0, "mean_batch": 0.0})
        passes = x["passes"] - b["passes"]
        if passes > 0:
            out[kind] = (x["mean_batch"] * x["passes"] - b["mean_batch"] * b["passes"]) / passes
    return out


def _encode_share(before: Row, after: Row, kind: str) -> float | None:
    """Encoder forward-pass seconds / in-app seconds of POST /v1/search between two
    /metrics readings (the share of the route's time that batching can shrink)."""
    app_s = after["search"]["seconds"] - before["search"]["seconds"]
    if kind not in ENCODE_KINDS or kind not in after or app_s <= 0:
        return None
    enc_s = after[kind]["encode_s"] - before.get(kind, {"encode_s": 0.0})["encode_s"]
    return enc_s / app_s


def _metric(text: str, name: str) -> float:
    """The value of the /metrics sample ``name`` (with its labels), 0 when absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def batch_sizes(base: str) -> Row:
    """Per kind: encoder passes, mean query batch and encode seconds; and the in-app
    seconds of POST /v1/search ("search"), from the service's /metrics."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    out: Row = {}
    for kind in ENCODE_KINDS:
        label = f'{{kind="{kind}"}}'
        count = _metric(text, f"shoplens_encode_batch_size_count{label}")
        if count:
            out[kind] = {
                "passes": int(count),
                "mean_batch": _metric(text, f"shoplens_encode_batch_size_sum{label}") / count,
                "encode_s": _metric(text, f"shoplens_encode_seconds_sum{label}"),
            }
    count = _metric(text, "shoplens_recommend_batch_size_count")
    if count:
        out["recommend"] = {
            "passes": int(count),
            "mean_batch": _metric(text, "shoplens_recommend_batch_size_sum") / count,
        }
    route = '{method="POST",route="/v1/search"}'
    out["search"] = {"seconds": _metric(text, f"shoplens_http_request_seconds_sum{route}")}
    return out


def main(argv: list[str] | None = None) -> Row:
    s = parse_args(argv)
    # a killed benchmark still stops its service processes (the context managers run)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    say = print
    if s.render_only:  # re-render the section from saved raw numbers
        return common.rerender(s.docs, "http", render, write=not s.no_write, say=say)
    load = [common.load_average()]
    customers = simulated_customers(s.catalog, s.fit_recs, say)
    say(f"in-process search overhead ({s.iterations} iterations) ...")
    import faiss
    import torch

    faiss.omp_set_num_threads(s.faiss_threads)  # in process as in the service
    torch.set_num_threads(s.torch_threads)
    overhead = search_overhead(s.catalog, s.iterations)
    say(
        f"  sku search {overhead['ratio_sku']:.2f}x raw FAISS, "
        f"vector search {overhead['ratio_vector']:.2f}x"
    )
    say("threads per call: 1 vs one per core ...")
    threads = thread_check(s.catalog)
    say("cost per query by batch size ...")
    costs = batch_costs(s.catalog, s.faiss_blas_threshold)
    load.append(common.load_average())
    makers = workloads(s.catalog, customers)
    levels: dict[str, list[Row]] = {}
    recs_candidates = "exact scans"
    say("starting the services (batching on, off, and on with other max waits) ...")
    envs = {"batching off": service_env(s, False), "batching on": service_env(s, True)}
    variants = [  # (values, configuration name, batching, the setting they go to)
        (s.tune_wait, "on, max wait {:g} ms", True, "SHOPLENS_BATCH_MAX_WAIT_MS"),
        (s.tune_torch_threads, "on, torch threads {}", True, "SHOPLENS_TORCH_THREADS"),
        (s.tune_workers, "on, batch workers {}", True, "SHOPLENS_BATCH_WORKERS"),
        (s.tune_recs_workers, "on, recs batch workers {}", True, "SHOPLENS_RECS_BATCH_WORKERS"),
        # is the baseline at its best?
        (s.tune_off_torch_threads, "off, torch threads {}", False, "SHOPLENS_TORCH_THREADS"),
    ]
    for values, name, batching, setting in variants:
        for value in values:
            envs[name.format(value)] = {**service_env(s, batching), setting: str(value)}
    with contextlib.ExitStack() as stack:
        bases = {k: stack.enter_context(service(s.catalog, env)) for k, env in envs.items()}
        on = bases["batching on"]
        ready = httpx.get(f"{on}/readyz").json()
        for route, make in makers.items():
            n = s.requests // 2 if route == "text search" else s.requests
            levels[route] = []
            if route == "recommendations":
                recs_candidates = wait_for_recs(on)
            for c in s.levels:
                row = run_load(on, make, c, n, s.warmup, s.client)
                levels[route].append(row)
                say(
                    f"  {route:<16} c={c:<3} {row['throughput_rps']:7.1f} req/s  "
                    f"p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
                    f"errors {row['errors']}"
                )
            load.append(common.load_average())
        sizes_main = batch_sizes(on)
        recs_page: list[Row] = []
        if "recommendations" in makers and s.recs_rounds > 0:
            say(f"recommendations vs product page p99, {s.recs_rounds} interleaved rounds ...")
            recs_page = recs_vs_page(
                on, makers, s.levels, s.requests, s.recs_rounds, s.warmup, s.client
            )
            for x in recs_page:
                say(
                    f"  c={x['concurrency']:<3} page p99 {x['page_p99_ms']:.1f} ms, recs p99 "
                    f"{x['recs_p99_ms']:.1f} ms: {x['ratio']:.2f}x "
                    f"(rounds {', '.join(f'{v:.2f}' for v in x['ratio_each'])})"
                )
            load.append(common.load_average())
        batching: dict[str, Row] = {}
        for route, n, rounds in (
            ("image search", s.requests, s.rounds),
            ("text search", s.requests // 2, s.rounds),
            ("recommendations", s.requests // 2, s.rounds),
        ):
            if route not in makers:
                continue
            say(f"batching on vs off: {route}, concurrency 8, {rounds} rounds ...")
            kind = ROUTE_KIND[route]
            batching[route] = compare_configs(
                {k: u for k, u in bases.items() if _tried_on(k, route)},
                makers[route],
                8,
                n,
                rounds,
                s.warmup,
                kind,
                s.client,
            )
            for name, x in batching[route]["configs"].items():
                say(
                    f"  {name:<24} {x['speedup_paired_median']:.2f}x throughput, "
                    f"p99 {x['p99_ratio']:.2f}x, mean batch {x['mean_batch']}"
                )
            load.append(common.load_average())
        check: dict[str, Row] = {}
        if s.check_client != s.client:
            pair = {k: bases[k] for k in ("batching off", "batching on")}
            for route in ("image search", "text search"):
                say(f"cross-check with the {s.check_client} client: {route} ...")
                n = s.requests // 2 if route == "text search" else s.requests
                kind = ROUTE_KIND[route]
                check[route] = compare_configs(
                    pair, makers[route], 8, n, s.rounds, s.warmup, kind, s.check_client
                )
                x = check[route]["configs"]["batching on"]
                say(f"  {x['speedup_paired_median']:.2f}x, p99 {x['p99_ratio']:.2f}x")
            load.append(common.load_average())
    for rows in levels.values():
        for row in rows:
            row.pop("samples_s", None)
    result = {
        "machine": common.machine(),
        "date": time.strftime("%Y-%m-%d"),
        "load_average": load,
        "catalog": s.catalog,
        "served": {k: ready.get(k) for k in ("encoder", "vectors", "model")},
        "settings": {
            "max_batch": s.max_batch,
            "max_wait_ms": s.max_wait_ms,
            "tune_wait_ms": s.tune_wait,
            "tune_torch_threads": s.tune_torch_threads,
            "tune_workers": s.tune_workers,
            "tune_recs_workers": s.tune_recs_workers,
            "tune_off_torch_threads": s.tune_off_torch_threads,
            "batch_workers": s.batch_workers,
            "recs_batch_workers": s.recs_batch_workers,
            "torch_threads": s.torch_threads,
            "faiss_threads": s.faiss_threads,
            "faiss_blas_threshold": s.faiss_blas_threshold,
            "requests": s.requests,
            "recs_rounds": s.recs_rounds,
            "warmup": s.warmup,
            "client": s.client,
        },
        "simulated_customers": len(customers),
        "recs_candidates": recs_candidates,
        "levels": levels,
        "recs_vs_page": recs_page,
        "batch_sizes_main": sizes_main,
        "batching": batching,
        "batching_check": check,
        "overhead": overhead,
        "threads": threads,
        "batch_costs": costs,
        "versions": versions(),
    }
    result["history"] = earlier_runs(s.docs / "bench" / "http.json")
    if not s.no_write:  # the raw numbers first: they survive a failure to render
        common.write_json(s.docs / "bench" / "http.json", result)
    section = render(result)
    say("\n" + section)
    if not s.no_write:
        common.write_section(s.docs / "BENCHMARKS.md", section)
        say(f"wrote {s.docs / 'BENCHMARKS.md'} and {s.docs / 'bench' / 'http.json'}")
    return result


def earlier_runs(path: Path, keep: int = 8) -> list[Row]:
    """The headlines of the run saved at ``path`` and of the runs before it (newest
    first, at most ``keep``); empty when there is none or it cannot be read."""
    import json

    try:
        saved = json.loads(path.read_text())
        return [headline(saved), *saved.get("history", [])][:keep]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"earlier runs not kept ({type(e).__name__}: {e})")
        return []


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "faiss-cpu", "fastapi", "uvicorn", "httpx"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


# ---- the report ----
def _met(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def _tried_on(config: str, route: str) -> bool:
    """Whether the on/off comparison of ``route`` runs ``config``: the recommender's own
    worker setting changes nothing else, the batchers' worker setting no longer reaches the
    recommender (it has its own)."""
    if config.startswith("on, recs "):
        return route == "recommendations"
    return not (config.startswith("on, batch workers") and route == "recommendations")


def _batching_off(config: str) -> bool:
    """Whether a configuration of the on/off comparison runs with batching off."""
    return config == "batching off" or config.startswith("off,")


def _batching_verdict(configs: Row) -> tuple[str, float, float]:
    """(baseline, throughput ratio, p99 ratio) of "batching on" against the best
    batching-off configuration tried (the default one unless a variant was faster): the
    gain must not come from a handicapped baseline."""
    on = configs["batching on"]
    off_name, off = max(
        ((k, v) for k, v in configs.items() if _batching_off(k)),
        key=lambda kv: kv[1]["speedup_paired_median"],
    )
    speedup = on["speedup_paired_median"] / off["speedup_paired_median"]
    return off_name, speedup, on["p99_ms"] / off["p99_ms"]


def headline(r: Row) -> Row:
    """The targets' figures of one full run (kept in later runs' ``history``)."""
    levels = r["levels"]
    recs = {}
    if r.get("recs_vs_page"):
        recs = {str(x["concurrency"]): x["ratio"] for x in r["recs_vs_page"]}
    elif "recommendations" in levels:
        recs = {
            str(page["concurrency"]): rec["p99_ms"] / page["p99_ms"]
            for page, rec in zip(levels["product page"], levels["recommendations"], strict=True)
        }
    o = r["overhead"]
    return {
        "commit": r["machine"]["commit"],
        "cpu": r["machine"].get("cpu"),
        "date": r.get("date"),
        "client": r["settings"].get("client", "httpx"),
        "batching": {
            route: _batching_verdict(r["batching"][route]["configs"])[1]
            for route in ("image search", "text search")
            if route in r["batching"]
        },
        "recs_vs_page_p99": recs,
        "overhead": max(o["ratio_sku"], o["ratio_vector"]),
    }


def _history_lines(r: Row) -> list[str]:
    """This run and the earlier full runs kept in ``r["history"]``, one row each."""
    runs = [headline(r), *r.get("history", [])]
    if len(runs) < 2:
        return []
    levels = sorted({c for x in runs for c in x["recs_vs_page_p99"]}, key=int)
    lines = [
        "",
        "### Run to run",
        "",
        "The targets' figures of this run (first row) and of the earlier full runs of this "
        "benchmark (each with its own commit, machine and load generator client; their "
        "raw numbers are in the git history of `docs/bench/http.json`). The same code "
        "measured twice on this shared machine can land on either side of a target; "
        "runs before the CPU's vector units were recorded name only its model.",
        "",
        "| commit | date | CPU | load generator client | image search batching "
        "| text search batching "
        "| "
        + " | ".join(f"recs / product page p99, c={c}" for c in levels)
        + " | search overhead |",
        "|---|---|---|---|---:|---:|" + "---:|" * len(levels) + "---:|",
    ]
    for x in runs:
        b = x["batching"]
        cells = [f"{b[k]:.2f}x" if k in b else "-" for k in ("image search", "text search")]
        cells += [
            f"{x['recs_vs_page_p99'][c]:.2f}x" if c in x["recs_vs_page_p99"] else "-"
            for c in levels
        ]
        lines.append(
            f"| {x['commit']} | {x.get('date') or '-'} | {x.get('cpu') or '-'} | "
            f"{x['client']} | " + " | ".join(cells) + f" | {x['overhead']:.2f}x |"
        )
    lines += [
        "",
        f"Targets: batching >= {TARGET_BATCH_SPEEDUP}x (vs the best batching-off "
        f"configuration), recommendations <= {TARGET_RECS:g}x the product page's p99, "
        f"search overhead <= {TARGET_OVERHEAD}x raw FAISS.",
    ]
    return lines


def _generator(client: str) -> str:
    if client == "httpx":
        return "`httpx.AsyncClient` with C workers"
    return (
        "C keep-alive connections writing requests prepared before the clock starts (the "
        "bytes httpx encodes) to asyncio streams and reading responses by their length"
    )


def _client_cpu(b: Row) -> str:
    """The load generator's CPU per request in comparison ``b``, off / on."""
    c = b["configs"]
    if "client_cpu_ms" not in c["batching off"]:
        return ""
    off, on = c["batching off"]["client_cpu_ms"], c["batching on"]["client_cpu_ms"]
    return f"{off:.2f} / {on:.2f} ms"


def render(r: Row) -> str:
    m = r["machine"]
    st = r["settings"]
    load = r["load_average"][0]  # before this benchmark started anything: other work
    v = r["versions"]
    vers = ", ".join(f"{k} {v[k]}" for k in ("torch", "faiss-cpu", "uvicorn", "httpx") if k in v)
    threads = f"torch threads {st['torch_threads']}, FAISS threads {st['faiss_threads']}"
    where = f"{m['cpu']}, {m['nproc']} cores, commit {m['commit']}"
    served = r["served"]
    lines = [
        HEADING,
        "",
        common.measured_line("bench_http.py", threads, vers, load, m),
        "",
        "The service (`create_app` under uvicorn as `shoplens serve` runs it, one process) "
        f"serves catalogue `{r['catalog']}` ({served['vectors']:,} products, image index "
        f"{r['overhead']['factory']}, encoder `{_short(served['encoder'])}`). The load "
        "generator runs in another process on the same machine over loopback: "
        f"{_generator(st.get('client', 'httpx'))}, each sending one request at a time (closed "
        f"loop), {st['requests']} requests per level (text search: half) after "
        f"{st['warmup']} warm-up requests. Micro-batching is on (max batch "
        f"{st['max_batch']}, max wait {st['max_wait_ms']:g} ms, batch workers "
        f"{st.get('batch_workers') or 'one per core'}"
        + (
            f", recommender batch workers {st['recs_batch_workers']}"
            if st.get("recs_batch_workers")
            else ""
        )
        + ") unless said otherwise. "
        f"Load average {load:.1f} before the benchmark started (other work), then "
        f"{', '.join(f'{x:.1f}' for x in r['load_average'][1:])} while measuring on "
        f"{m['nproc']} cores: those include this benchmark's own service processes and "
        "load generator. Absolute figures vary between runs; the comparisons are "
        "interleaved.",
        "",
        "### Latency by route and concurrency",
        "",
        f"Machine: {where}. Baseline: the same route at concurrency 1 (last column: "
        "throughput relative to it).",
    ]
    if "recommendations" in r["levels"]:
        lines.append(
            f"Recommendations are for {r['simulated_customers']} SIMULATED customers "
            "(the demo's simulator; no real shoppers)."
        )
    lines += [
        "",
        "| route | concurrency | requests | errors | req/s | p50 ms | p90 ms | p99 ms | "
        "max ms | in app p50 / p99 ms | req/s vs c=1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for route, rows in r["levels"].items():
        base = rows[0]["throughput_rps"]
        for row in rows:
            app = row.get("in_app")
            in_app = f"{app['p50_ms']:.1f} / {app['p99_ms']:.1f}" if app else "-"
            lines.append(
                f"| {ROUTES[route]} | {row['concurrency']} | {row['requests']} | "
                f"{row['errors']} | {row['throughput_rps']:.1f} | {row['p50_ms']:.1f} | "
                f"{row['p90_ms']:.1f} | {row['p99_ms']:.1f} | {row['max_ms']:.1f} | "
                f"{in_app} | {row['throughput_rps'] / base:.2f}x |"
            )
    lines += [
        "",
        "Latency is what the load generator saw (send to last byte). *In app* is the "
        "service's own time per request (its `Server-Timing` header: from the request "
        "reaching the app to the response leaving it); the rest is HTTP handling, queueing "
        "in the event loop and the load generator, which share the same cores.",
    ]
    mb = r["batch_sizes_main"]
    if mb:
        lines += [
            "",
            "Mean encoder batch over these runs: "
            + ", ".join(
                f"{k} {x['mean_batch']:.1f} queries per forward pass ({x['passes']} passes)"
                for k, x in mb.items()
                if k in ENCODE_KINDS
            )
            + (
                f"; recommendations {mb['recommend']['mean_batch']:.1f} customers per ranker "
                f"pass ({mb['recommend']['passes']} passes)"
                if "recommend" in mb
                else ""
            )
            + ".",
        ]
    # batching
    lines += [
        "",
        "### Micro-batching on vs off",
        "",
        f"Machine: {where}. Baseline: the same service with `SHOPLENS_BATCHING=false`. "
        "Each configuration is its own service process (same build and settings but the "
        "one named); every round runs each of them once at concurrency 8, the order "
        "rotating between rounds. Latencies pooled over the rounds; speedup = median over "
        "rounds of throughput / the baseline's throughput in the same round. For "
        "recommendations, batching means concurrent requests share one ranker pass "
        "(candidates, features and one LightGBM call for several customers).",
        "",
        "| route | configuration | rounds x requests | errors | req/s (each round) | "
        "p50 ms | p99 ms | mean batch | speedup | p99 vs off |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for route, b in r["batching"].items():
        kind = ROUTE_KIND[route]
        for name, x in b["configs"].items():
            mean_batch = x["mean_batch"].get(kind)
            batch = f"{mean_batch:.1f}" if mean_batch else "1"
            lines.append(
                f"| {ROUTES[route]} | {name} | {b['rounds']} x {b['requests_per_round']} | "
                f"{x['errors']} | {', '.join(f'{t:.1f}' for t in x['throughput_rps'])} | "
                f"{x['p50_ms']:.1f} | {x['p99_ms']:.1f} | "
                f"{batch} | "
                f"{x['speedup_paired_median']:.2f}x | {x['p99_ratio']:.2f}x |"
            )
    verdicts = []
    for route in ("image search", "text search"):
        configs = r["batching"][route]["configs"]
        off_name, speedup, p99 = _batching_verdict(configs)
        best = max(
            ((k, v) for k, v in configs.items() if not _batching_off(k)),
            key=lambda kv: kv[1]["speedup_paired_median"],
        )
        verdicts.append(
            f"{route.capitalize()} (default settings, vs {off_name}): **{speedup:.2f}x** "
            f"{_met(speedup >= TARGET_BATCH_SPEEDUP)}, p99 {p99:.2f}x "
            f"{_met(p99 <= TARGET_BATCH_P99)}; best configuration tried: {best[0]} "
            f"({best[1]['speedup_paired_median']:.2f}x vs batching off)."
        )
    lines += [
        "",
        f"Target (concurrency 8): >= {TARGET_BATCH_SPEEDUP}x throughput with batching, p99 "
        f"no worse than {TARGET_BATCH_P99:g}x. " + " ".join(verdicts),
    ]
    check = r.get("batching_check") or {}
    if check:
        main_cpu = [_client_cpu(r["batching"][route]) for route in check]
        parts = [
            f"{route} {b['configs']['batching on']['speedup_paired_median']:.2f}x "
            f"(p99 {b['configs']['batching on']['p99_ratio']:.2f}x; client CPU per request "
            f"off / on {_client_cpu(b)}, against {cpu} in the runs above)"
            for (route, b), cpu in zip(check.items(), main_cpu, strict=True)
        ]
        first = next(iter(check.values()))
        lines += [
            "",
            f"Cross-check with `{first['client']}` as the load generator's client (the same "
            f"batching on and off services, {first['rounds']} more rounds each): "
            + "; ".join(parts)
            + ". The load generator shares the 2 cores with the service, so the CPU its "
            "client spends per request is taken from the service, in both configurations "
            "alike; a costlier client dilutes what batching saves.",
        ]
    shares = {
        route: b["configs"][b["baseline"]].get("encode_share")
        for route, b in r["batching"].items()
        if ROUTE_KIND[route] in ENCODE_KINDS
    }
    if all(v is not None for v in shares.values()):
        lines += [
            "",
            "How much batching can give: with batching off, at concurrency 8, the "
            "encoders' forward passes (timed under that load) took "
            + " and ".join(
                f"{100 * v:.0f}% of the in-app time of {route}" for route, v in shares.items()
            )
            + " (`shoplens_encode_seconds` / `shoplens_http_request_seconds` of the route). "
            "Batching shrinks only that part, so the throughput gain is below "
            + " and ".join(f"{1 / (1 - v):.2f}x for {route}" for route, v in shares.items())
            + " even if batched passes cost nothing. The text route runs MiniLM for its "
            "dense text ranking besides the demo model's text tower; the image route "
            "runs the demo's 28-px CNN.",
        ]
    lines += batch_cost_lines(r, where)
    # overhead
    o = r["overhead"]
    lines += [
        "",
        "### Search path overhead (in process)",
        "",
        f"Machine: {where}. Baseline: raw FAISS `index.search(q, 10)` on the served index "
        f"({o['vectors']:,} vectors, {o['factory']}, FAISS threads {o['faiss_threads']}) "
        "with the same query vectors. shoplens asks FAISS for 2k + 8 candidates (room for "
        "dedupe and leaving out the product itself; more only when they do not fill the "
        "page) and reads the products of "
        f"the top ones from SQLite. {o['iterations']} interleaved iterations after a "
        "warm-up, the timed calls rotating within each.",
        "",
        "| call | p50 ms | p90 ms | p99 ms |",
        "|---|---:|---:|---:|",
    ]
    for name, row in o["rows"].items():
        lines.append(
            f"| {name} | {row['p50_ms']:.3f} | {row['p90_ms']:.3f} | {row['p99_ms']:.3f} |"
        )
    worst = max(o["ratio_sku"], o["ratio_vector"])
    lines += [
        "",
        f"Search by sku: **{o['ratio_sku']:.2f}x** raw FAISS p50; search by an image's "
        f"embedding: **{o['ratio_vector']:.2f}x**. Target <= {TARGET_OVERHEAD}x "
        f"{_met(worst <= TARGET_OVERHEAD)}.",
    ]
    # recs vs product page
    if r.get("recs_vs_page"):
        lines += recs_page_lines(r, where)
    elif "recommendations" in r["levels"]:
        lines += [
            "",
            "### Recommendations vs product page",
            "",
            f"Machine: {where}. Baseline: the product page's similar products "
            "(`/v1/products/{sku}/similar`) p99 at the same concurrency, from the first "
            "table. Recommendations for SIMULATED customers; candidates found by "
            f"{r.get('recs_candidates', 'exact scans')} (see `shoplens.personalize.ann`; "
            "the service builds its IVF indexes in the background after loading the "
            "recommender, and the timed requests start once they are ready).",
            "",
            "| concurrency | product page p99 ms | recommendations p99 ms | ratio | target <= 3x |",
            "|---:|---:|---:|---:|---|",
        ]
        for page, rec in zip(
            r["levels"]["product page"], r["levels"]["recommendations"], strict=True
        ):
            ratio = rec["p99_ms"] / page["p99_ms"]
            lines.append(
                f"| {page['concurrency']} | {page['p99_ms']:.1f} | {rec['p99_ms']:.1f} | "
                f"{ratio:.2f}x | {_met(ratio <= TARGET_RECS)} |"
            )
    t = r["threads"]
    one, many = t["threads"]
    lines += [
        "",
        "### Threads per call",
        "",
        f"Machine: {where}. Baseline: 1 thread. One call of each kind in process, in "
        f"blocks alternating between 1 thread and {many} (one per core) for torch and "
        "FAISS: the latency of a lone call. The service runs each request's encode and "
        "search on one thread (`SHOPLENS_TORCH_THREADS`, `SHOPLENS_FAISS_THREADS`, "
        "default 1) because requests run concurrently anyway: the batching table above "
        "compares torch threads under load; on a busy machine a thread pool also waits "
        "for cores that other processes hold.",
        "",
        f"| call | p50 ms, {one} thread | p50 ms, {many} threads | p90 ms, {one} thread | "
        f"p90 ms, {many} threads |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in t["rows"].items():
        a, b = row[str(one)], row[str(many)]
        lines.append(
            f"| {name} | {a['p50_ms']:.2f} | {b['p50_ms']:.2f} | {a['p90_ms']:.2f} | "
            f"{b['p90_ms']:.2f} |"
        )
    lines += _history_lines(r)
    lines += [
        "",
        "Raw numbers (percentiles and latency histograms per run): `docs/bench/http.json`.",
    ]
    return "\n".join(lines) + "\n"


# the batched steps of each route, by name prefix in batch_costs' rows
ROUTE_STEPS = {
    "image search": ("image encoder", "exact search, image index"),
    "text search": (
        "text encoder",
        "text tower",
        "exact search, text index",
        "exact search, image index",
    ),
}


def batch_cost_lines(r: Row, where: str) -> list[str]:
    """The per-query cost table and, per route, an estimate of the throughput batching
    gives with these measured costs (the rest of the request unchanged)."""
    c = r.get("batch_costs")
    if not c:
        return []
    batches = [str(b) for b in c["batches"]]
    served = any(n.endswith("as served") for n in c["ms_per_query"])
    lines = [
        "",
        "### Cost per query by batch size (in process)",
        "",
        f"Machine: {where}. Baseline: the same step with a batch of 1. One thread (torch "
        "and FAISS), warm caches, median of "
        f"{c['reps']} repetitions; milliseconds per query. Exact search with FAISS's "
        f"default BLAS threshold ({c['faiss_default_threshold']:,} queries x dim: a scan "
        "of every vector per query)" + (", with" if served else " and with") + " the service's "
        f"(`SHOPLENS_FAISS_BLAS_THRESHOLD={c['blas_threshold']}`: one BLAS product for "
        "the batch from that many queries x dim)"
        + (
            " and as served (shoplens's `FaissIndex`: one torch matrix product and top-k "
            "for 2-7 queries, FAISS with the service's threshold otherwise)."
            if served
            else "."
        ),
        "",
        "| step | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "|---|" + "---:|" * len(batches),
    ]
    rows = c["ms_per_query"]
    for name, per in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{per[b]:.3f}" for b in batches) + " |")
    # what the service runs: the encoders and its search ("threshold N" in runs before
    # the "as served" rows)
    service = [n for n in rows if "FAISS" not in n]
    bounds = []
    for route, prefixes in ROUTE_STEPS.items():
        level = r["levels"].get(route)
        steps = [n for p in prefixes for n in service if n.startswith(p)]
        if not level or not level[0].get("in_app") or len(steps) != len(prefixes):
            continue
        total = level[0]["in_app"]["p50_ms"]  # concurrency 1
        rest = max(0.0, total - sum(rows[n]["1"] for n in steps))
        sizes = [b for b in ("2", "3", "4", "8") if b in rows[steps[0]]]
        per = {b: sum(rows[n][b] for n in steps) + rest for b in sizes}
        bounds.append(
            f"{route}: in-app p50 {total:.1f} ms at concurrency 1, of which "
            f"{total - rest:.1f} ms in the batched steps; with every batch of "
            + ", of ".join(
                f"{b}{' queries' if i == 0 else ''} {per[b]:.1f} ms (**{total / per[b]:.2f}x**)"
                for i, b in enumerate(sizes)
            )
        )
    if bounds:
        lines += [
            "",
            "What these costs allow if the rest of a request (HTTP, parsing, decoding, "
            "products and JSON) cost the same with and without batching and each pass "
            "cost what it costs alone: " + "; ".join(bounds) + ". An estimate, not a "
            "bound: under load the unbatched passes of concurrent requests also compete "
            "for the cores and caches, so the speedups measured above can exceed it.",
        ]
    return lines


def recs_page_lines(r: Row, where: str) -> list[str]:
    """The recommendations vs product page section from the interleaved rounds."""
    rows = r["recs_vs_page"]
    x0 = rows[0]
    lines = [
        "",
        "### Recommendations vs product page",
        "",
        f"Machine: {where}. Baseline: the product page's similar products "
        "(`/v1/products/{sku}/similar`) p99 at the same concurrency. Both routes on the "
        f"batching-on service in {x0['rounds']} interleaved rounds per level (each round "
        f"runs both, {x0['requests_per_round']} requests each, the order alternating), "
        "latencies pooled per route: a slow spell of the shared machine falls on both. "
        "Recommendations for SIMULATED customers; candidates found by "
        f"{r.get('recs_candidates', 'exact scans')} (see `shoplens.personalize.ann`; the "
        "service builds its IVF indexes in the background after loading the recommender, "
        "and the timed requests start once they are ready).",
        "",
        "| concurrency | errors | product page req/s (each round) | recommendations req/s "
        "(each round) | product page p99 ms | recommendations p99 ms | ratio | ratio each "
        "round | target <= 3x |",
        "|---:|---:|---|---|---:|---:|---:|---|---|",
    ]
    for x in rows:
        lines.append(
            f"| {x['concurrency']} | {x['errors']} | "
            f"{', '.join(f'{v:.1f}' for v in x['page_rps'])} | "
            f"{', '.join(f'{v:.1f}' for v in x['recs_rps'])} | {x['page_p99_ms']:.1f} | "
            f"{x['recs_p99_ms']:.1f} | {x['ratio']:.2f}x | "
            f"{', '.join(f'{v:.2f}x' for v in x['ratio_each'])} | "
            f"{_met(x['ratio'] <= TARGET_RECS)} |"
        )
    return lines


def _short(spec: str | None) -> str:
    if spec and spec.startswith("trained:") and len(spec) > 60:
        return "trained:…/" + "/".join(spec.rstrip("/").split("/")[-3:])
    return str(spec)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--catalog", default="fashion-mnist", help="catalogue in $SHOPLENS_HOME")
    p.add_argument("--requests", type=int, default=400, help="requests per level")
    p.add_argument("--warmup", type=int, default=40, help="warm-up requests before each level")
    p.add_argument("--levels", default="1,8,32", help="concurrency levels, comma-separated")
    p.add_argument("--rounds", type=int, default=6, help="batching on/off rounds (each)")
    p.add_argument(
        "--recs-rounds",
        type=int,
        default=3,
        help="interleaved rounds of recommendations vs product page per level (0: from the "
        "first table only)",
    )
    p.add_argument("--iterations", type=int, default=1500, help="in-process search iterations")
    p.add_argument("--max-batch", type=int, default=32, help="SHOPLENS_BATCH_MAX_SIZE")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="SHOPLENS_BATCH_MAX_WAIT_MS")
    p.add_argument(
        "--tune-wait",
        default="10",
        help="other max waits (ms, comma-separated) compared with batching off",
    )
    p.add_argument(
        "--tune-torch-threads",
        default="2",
        help="other torch thread counts (comma-separated) compared with batching off",
    )
    p.add_argument(
        "--tune-workers",
        default="1",
        help="other batch worker counts (comma-separated) compared with batching off",
    )
    p.add_argument(
        "--tune-recs-workers",
        default="2",
        help="other recommender batch worker counts (comma-separated), recommendations only",
    )
    p.add_argument(
        "--tune-off-torch-threads",
        default="2",
        help="torch thread counts (comma-separated) tried with batching off too",
    )
    p.add_argument(
        "--batch-workers",
        type=int,
        default=None,
        help="SHOPLENS_BATCH_WORKERS (default: the service's, one per core)",
    )
    p.add_argument(
        "--recs-batch-workers",
        type=int,
        default=1,
        help="SHOPLENS_RECS_BATCH_WORKERS (the service's default: 1)",
    )
    p.add_argument("--torch-threads", type=int, default=1, help="SHOPLENS_TORCH_THREADS")
    p.add_argument("--faiss-threads", type=int, default=1, help="SHOPLENS_FAISS_THREADS")
    p.add_argument(
        "--faiss-blas-threshold",
        type=int,
        default=ServiceSettings.model_fields["faiss_blas_threshold"].default,
        help="SHOPLENS_FAISS_BLAS_THRESHOLD (default: the service's)",
    )
    p.add_argument(
        "--fit-recs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fit the demo's recommender (simulated customers) when the catalogue has none",
    )
    p.add_argument(
        "--client",
        choices=CLIENTS,
        default="raw",
        help="the load generator's client: prepared bytes on asyncio streams, or httpx",
    )
    p.add_argument(
        "--check-client",
        choices=CLIENTS,
        default="httpx",
        help="image and text search on vs off once more with this client (a cross-check)",
    )
    p.add_argument("--quick", action="store_true", help="few requests: a smoke test")
    p.add_argument(
        "--render-only", action="store_true", help="rewrite the section from docs/bench/http.json"
    )
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--docs", type=Path, default=common.DOCS, help="where the results go")
    s = p.parse_args(argv)
    s.levels = [int(x) for x in str(s.levels).split(",") if x]
    s.tune_wait = [float(x) for x in str(s.tune_wait).split(",") if x]
    s.tune_torch_threads = [int(x) for x in str(s.tune_torch_threads).split(",") if x]
    s.tune_workers = [int(x) for x in str(s.tune_workers).split(",") if x]
    s.tune_recs_workers = [int(x) for x in str(s.tune_recs_workers).split(",") if x]
    s.tune_off_torch_threads = [int(x) for x in str(s.tune_off_torch_threads).split(",") if x]
    if s.quick:
        s.requests, s.warmup, s.rounds, s.iterations = 80, 10, 2, 200
        s.recs_rounds = min(s.recs_rounds, 2)
    return s


if __name__ == "__main__":
    main()
