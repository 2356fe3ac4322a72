"""Hostile-input corpus: >= 1,000 seeded malicious or malformed requests for the service.

:func:`build_corpus` walks the service's OpenAPI schema (so routes added later are covered
too) and makes :class:`HostileCase` requests: hostile image uploads, JSON bodies, query
and path parameters, headers, multipart forms, methods, web UI pages and image URLs.
Every case states its expectation: ``"reject"`` (a 4xx), ``"accept"`` (a 2xx: the input
is legitimately usable) or ``"either"`` (``why`` says why both are fair). Whatever the
expectation, a 5xx is a failure, and a 4xx must be the JSON error
``{"error": {"code", "message"}}`` on API paths or an HTML page on web UI paths
(:func:`check_response`). :func:`run_corpus` sends the cases through any client (FastAPI's
``TestClient`` or ``httpx`` against a running server) and tallies the outcomes.

Manifests and URLs are checked through the library as well
(:func:`run_manifest_cases`, :func:`run_url_cases`): ingest must fail with an input error
and store nothing, and no refused URL may ever reach the sentinel server.

Layout: the payloads (images, URLs, manifests) are in :mod:`.hostile_files`, the API
cases of the OpenAPI walk in :mod:`.hostile_api`, the HTTP-edge and UI cases in
:mod:`.hostile_web`; this module runs and checks them.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from shoplens.errors import ShoplensError
from shoplens.reliability.hostile_files import (
    Expect,
    ManifestCase,
    UrlCase,
    encode,
    sample_image,
)

__all__ = [
    "UNAVAILABLE_CODES",
    "CorpusReport",
    "HostileCase",
    "ManifestOutcome",
    "Sentinel",
    "Target",
    "UrlOutcome",
    "build_corpus",
    "check_response",
    "pretend_public",
    "run_corpus",
    "run_manifest_cases",
    "run_url_cases",
]

UNAVAILABLE_CODES = frozenset({"no_model"})  # 503 that says a model is not installed


@dataclass(frozen=True)
class HostileCase:
    """One request and what a correct service answers."""

    id: str
    group: str
    method: str
    path: str
    expect: Expect
    why: str = ""
    params: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    content: bytes | None = None
    files: tuple[tuple[str, tuple[str, bytes, str]], ...] = ()
    data: tuple[tuple[str, str], ...] = ()
    ui: bool = False  # a web UI path: errors are HTML pages
    transport_may_reject: bool = False  # a real server may refuse it before the app
    unavailable_ok: bool = False  # 503 "no model" is the documented answer here

    def request_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``client.request(case.method, case.path, **kwargs)``."""
        kw: dict[str, Any] = {"headers": list(self.headers)}
        if self.params:
            kw["params"] = list(self.params)
        if self.content is not None:
            kw["content"] = self.content
        if self.files:
            kw["files"] = list(self.files)
        if self.data:
            form: dict[str, list[str]] = {}
            for k, v in self.data:
                form.setdefault(k, []).append(v)
            kw["data"] = form
        return kw


@dataclass(frozen=True)
class Target:
    """What the corpus needs to know about the service under test."""

    sku: str  # a product that exists
    customer: str = "c-1"
    write_key: str | None = None
    read_key: str | None = None
    text: str = "red circle"
    ui: bool = True
    url_port: int | None = None  # the sentinel server for image URLs
    redirect_base: str | None = None  # a reachable redirector (see hostile_files.url_cases)


# ---- checking --------------------------------------------------------------------------------


def check_response(
    case: HostileCase, status: int, headers: Mapping[str, str], body: bytes
) -> str | None:
    """Why the answer to ``case`` is wrong, or None when it is right."""
    ctype = headers.get("content-type", "")
    if status == 0:
        return None if case.transport_may_reject else "connection error"
    if status == 503 and case.unavailable_ok and _error_code(body) in UNAVAILABLE_CODES:
        return None
    if status >= 500:
        return f"server error {status}: {body[:200]!r}"
    if 300 <= status < 400:
        return None if case.ui else f"unexpected redirect {status}"
    if not (200 <= status < 300 or 400 <= status < 500):
        return f"unexpected status {status}"
    got: Expect = "accept" if status < 300 else "reject"
    if case.expect != "either" and got != case.expect:
        return f"expected {case.expect}, got {status}: {body[:200]!r}"
    if status < 400 or case.method == "HEAD":  # a HEAD answer has no body
        return None
    if case.ui:
        if "text/html" not in ctype or b"<html" not in body[:2000].lower():
            return f"UI error {status} is not an HTML page ({ctype})"
        return None
    if status in (413, 414, 431) and case.transport_may_reject and "json" not in ctype:
        return None  # the HTTP server's own limit, before the app
    if "application/json" not in ctype:
        return f"API error {status} is not JSON ({ctype}): {body[:200]!r}"
    code = _error_code(body)
    if code is None:
        return f"API error {status} lacks {{'error': {{'code', 'message'}}}}: {body[:200]!r}"
    return None


def _error_code(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return None
    code, message = err.get("code"), err.get("message")
    return code if isinstance(code, str) and isinstance(message, str) and code else None


@dataclass
class CorpusReport:
    """Outcomes of a corpus run."""

    cases: int = 0
    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    groups: dict[str, Counter[str]] = field(default_factory=dict)
    expectations: Counter[str] = field(default_factory=Counter)
    problems: list[tuple[str, str]] = field(default_factory=list)
    unavailable: int = 0  # documented 503s: a model the environment does not have

    @property
    def server_errors(self) -> int:
        """5xx answers other than the documented 'no model installed' 503s."""
        return sum(n for s, n in self.statuses.items() if s >= 500) - self.unavailable

    def to_dict(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "seconds": round(self.seconds, 2),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "groups": {g: dict(c) for g, c in sorted(self.groups.items())},
            "expectations": dict(self.expectations),
            "server_errors": self.server_errors,
            "unavailable_503": self.unavailable,
            "problems": len(self.problems),
            "problem_examples": [f"{i}: {p}" for i, p in self.problems[:20]],
        }


Send = Callable[[HostileCase], tuple[int, Mapping[str, str], bytes]]


def run_corpus(cases: list[HostileCase], send: Send) -> CorpusReport:
    """Send every case with ``send`` (status 0 = no HTTP answer) and check the answers."""
    report = CorpusReport(cases=len(cases))
    t0 = time.perf_counter()
    for case in cases:
        status, headers, body = send(case)
        report.statuses[status] += 1
        group = report.groups.setdefault(case.group, Counter())
        group["cases"] += 1
        group[f"{status // 100}xx" if status else "no answer"] += 1
        report.expectations[case.expect] += 1
        problem = check_response(case, status, headers, body)
        if status == 503 and problem is None:
            report.unavailable += 1
        if problem:
            group["problems"] += 1
            report.problems.append((case.id, problem))
    report.seconds = time.perf_counter() - t0
    return report


def build_corpus(
    spec: dict[str, Any],
    target: Target,
    *,
    seed: int = 0,
    random_cases: int = 200,
    max_url_cases: int | None = None,
) -> list[HostileCase]:
    """The hostile requests for the service whose OpenAPI document is ``spec``.

    Walks every operation of ``spec``; seeded, so the same spec and seed give the same
    cases. ``random_cases`` adds that many seeded random requests. ``max_url_cases``
    sends a seeded sample of the image URLs through the ingest route (each costs a guarded
    fetch attempt); :func:`run_url_cases` tries all of them.
    """
    from shoplens.reliability.hostile_web import build

    return build(spec, target, seed=seed, random_cases=random_cases, max_url_cases=max_url_cases)


# ---- URLs through the library, and the sentinel server ----------------------------------------


class Sentinel:
    """An HTTP server that records every request; ``/redirect?to=URL`` redirects there.

    A refused URL must never show up in :attr:`hits`. ``?hops=N`` redirects to itself N
    times (a redirect loop).
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        hits: list[str] = []
        self.hits = hits
        png = encode(sample_image(70), "PNG")

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                query = parse_qs(urlsplit(self.path).query)
                if "to" in query or "hops" in query:
                    hops = int(query.get("hops", ["0"])[0])
                    to = query["to"][0] if "to" in query else f"/redirect?hops={hops + 1}"
                    self.send_response(302)
                    self.send_header("Location", to)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.host, self.port = host, int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> Sentinel:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def pretend_public(address: str) -> Iterator[None]:
    """Let the SSRF guard treat ``address`` as public (a stand-in for an outside server
    that redirects to private addresses); every other address is judged as usual."""
    import ipaddress

    from shoplens.data import urls

    original = urls.is_forbidden_ip

    def patched(ip: urls.IPAddress) -> bool:
        return False if ip == ipaddress.ip_address(address) else original(ip)

    urls.is_forbidden_ip = patched  # type: ignore[assignment]
    try:
        yield
    finally:
        urls.is_forbidden_ip = original  # type: ignore[assignment]


@dataclass
class UrlOutcome:
    name: str
    url: str
    outcome: str  # "refused" (an input error), "failed" (another 4xx error), "fetched", "crash"
    message: str


def run_url_cases(cases: list[UrlCase], sentinel: Sentinel) -> tuple[list[UrlOutcome], list[str]]:
    """Fetch each URL with the guarded fetcher; returns outcomes and problems.

    Every URL must fail with a ShoplensError of status 4xx, and the sentinel must not
    have been reached by a forbidden one.
    """
    from shoplens.data.urls import fetch_url

    outcomes, problems = [], []
    for c in cases:
        before = len(sentinel.hits)
        try:
            fetch_url(c.url, timeout=2.0, retries=0, allow_private=False)
            out = UrlOutcome(c.name, c.url, "fetched", "")
        except ShoplensError as e:
            kind = "refused" if e.code == "invalid_input" else "failed"
            out = UrlOutcome(c.name, c.url, kind, e.message)
            if not 400 <= e.http_status < 500:
                problems.append(f"{c.name}: status {e.http_status}")
        except Exception as e:  # a crash: the caller would answer 500
            out = UrlOutcome(c.name, c.url, "crash", f"{type(e).__name__}: {e}")
            problems.append(f"{c.name}: crash {out.message}")
        outcomes.append(out)
        if out.outcome == "fetched":
            problems.append(f"{c.name}: fetched {c.url[:80]}")
        if c.forbidden and len(sentinel.hits) > before:
            problems.append(f"{c.name}: reached the sentinel ({sentinel.hits[before:]})")
    return outcomes, problems


# ---- manifests through the ingest library -------------------------------------------------------


def catalog_snapshot(name: str) -> dict[str, tuple[Any, ...]]:
    """sku -> (title, category, image_key, attributes) of every product of catalogue ``name``."""
    from shoplens.catalog.store import Catalog

    with Catalog.open(name) as cat:
        return {
            p.sku: (p.title, p.category, p.image_key, tuple(sorted(p.attributes.items())))
            for p in cat.iter_products()
        }


@dataclass
class ManifestOutcome:
    name: str
    expect: str
    outcome: str  # "rejected", "stored", "partial" or "crash"
    message: str
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_manifest_cases(cases: list[ManifestCase], catalog: str) -> list[ManifestOutcome]:
    """Ingest each hostile manifest into ``catalog`` and check nothing stored is lost.

    A rejected manifest must raise a one-line ShoplensError and leave the catalogue
    exactly as it was; an accepted one may only add its own products, never a hostile sku.
    """
    from shoplens.catalog.ingest import ingest_manifest

    out = []
    for case in cases:
        before = catalog_snapshot(catalog)
        problem = None
        try:
            report = ingest_manifest(case.path, catalog, concurrency=2, timeout=2.0, retries=0)
            outcome = "partial" if report.rejected else "stored"
            message = f"{report.added} added, {len(report.rejected)} rejected"
        except ShoplensError as e:
            outcome, message = "rejected", e.message
            if "\n" in e.message:
                problem = "error message is more than one line"
        except Exception as e:
            outcome, message = "crash", f"{type(e).__name__}: {e}"
            problem = f"crash: {message[:200]}"
        after = catalog_snapshot(catalog)
        lost = [s for s, v in before.items() if after.get(s) != v and s not in _skus_in(case)]
        if lost:
            problem = f"stored products changed or lost: {lost[:5]}"
        leaked = [s for s in case.hostile_skus if s in after and s not in before]
        if leaked:
            problem = f"hostile skus stored: {leaked}"
        if outcome == "rejected" and after != before:
            problem = "a failed ingest changed the catalogue"
        wanted = {"reject": ("rejected",), "partial": ("partial",), "accept": ("stored",)}
        if case.expect != "either" and outcome not in wanted[case.expect] and problem is None:
            problem = f"expected {case.expect}, got {outcome}: {message[:200]}"
        out.append(ManifestOutcome(case.name, case.expect, outcome, message[:300], problem))
    return out


def _skus_in(case: ManifestCase) -> set[str]:
    """Skus an accepted manifest may legitimately update (none of the hostile ones)."""
    return set() if not case.path.is_file() else _manifest_skus(case.path)


def _manifest_skus(path: Path) -> set[str]:
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")[:1_000_000]
    except OSError:
        return set()
    return {line.split(",", 1)[0] for line in text.splitlines()[1:] if "," in line}
