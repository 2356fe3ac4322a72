"""Token buckets (with an injected clock), their memory bound, and the limit middleware."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from shoplens.serve.limits import (
    Rate,
    RateLimiter,
    RateLimitMiddleware,
    RequestSizeLimitMiddleware,
    SecurityHeadersMiddleware,
    client_address,
    is_expensive,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- token bucket maths ----------------------------------------------------------------------
def test_bucket_allows_the_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    got = [limiter.take("a", rate=2.0, burst=3) for _ in range(4)]
    assert [d.allowed for d in got] == [True, True, True, False]
    assert [d.remaining for d in got] == [2, 1, 0, 0]
    assert got[3].retry_after == pytest.approx(0.5)  # 1 token at 2 a second
    assert got[2].reset == pytest.approx(1.5)  # 3 tokens to refill
    clock.now += 0.25
    assert not limiter.take("a", 2.0, 3).allowed  # half a token
    clock.now += 0.25
    assert limiter.take("a", 2.0, 3).allowed
    clock.now += 100  # refills up to the burst, not beyond
    assert [limiter.take("a", 2.0, 3).allowed for _ in range(4)] == [True] * 3 + [False]


def test_cost_takes_several_tokens_and_never_exceeds_the_bucket() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    assert limiter.take("a", rate=1.0, burst=25, cost=10).remaining == 15
    assert limiter.take("a", 1.0, 25, cost=10).remaining == 5
    denied = limiter.take("a", 1.0, 25, cost=10)
    assert not denied.allowed and denied.retry_after == pytest.approx(5.0)
    assert limiter.take("a", 1.0, 25, cost=1).allowed  # cheap requests still fit
    # a cost above the burst is capped at the burst, so it can pass once full
    assert limiter.take("b", 1.0, 5, cost=50).allowed
    assert not limiter.take("b", 1.0, 5, cost=50).allowed


def test_buckets_are_per_identity() -> None:
    limiter = RateLimiter(clock=Clock())
    assert limiter.take("a", 1.0, 1).allowed and not limiter.take("a", 1.0, 1).allowed
    assert limiter.take("b", 1.0, 1).allowed


def test_memory_is_bounded_and_idle_buckets_go_first() -> None:
    clock = Clock()
    limiter = RateLimiter(max_buckets=50, clock=clock)
    for i in range(10_000):  # a flood of distinct addresses
        limiter.take(f"10.0.{i // 256}.{i % 256}", rate=1.0, burst=10)
        assert len(limiter) <= 50
    assert len(limiter) == 50
    # the most recently used keep their state: an exhausted one stays exhausted
    for _ in range(10):
        limiter.take("busy", 1.0, 10)
    assert not limiter.take("busy", 1.0, 10).allowed
    # once everything has had time to refill, old buckets are equal to new ones: dropped
    clock.now += 10
    limiter.take("new", 1.0, 10)
    assert len(limiter) == 1


def test_bucket_is_thread_safe() -> None:
    limiter = RateLimiter(clock=Clock())  # frozen clock: exactly the burst passes
    allowed: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(500):
            ok = limiter.take("shared", rate=1.0, burst=1000).allowed
            with lock:
                allowed.append(ok)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(allowed) == 4000 and sum(allowed) == 1000


def test_client_address_groups_ipv6_by_64() -> None:
    scope = {"client": ("2001:db8:1:2:aaaa::1", 5)}
    assert client_address(scope) == "2001:db8:1:2::/64"
    assert client_address({"client": ("::ffff:10.1.2.3", 5)}) == "10.1.2.3"
    assert client_address({"client": ("10.1.2.3", 5)}) == "10.1.2.3"
    assert client_address({"client": None}) == "unknown"


# ---- a tiny ASGI harness ---------------------------------------------------------------------
class Result:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.pulled = 0  # body messages the client had to hand over

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    app: Any,
    *,
    method: str = "POST",
    path: str = "/x",
    chunks: list[bytes] = (),  # type: ignore[assignment]
    headers: dict[str, str] | None = None,
    query: bytes = b"",
    client: str = "1.2.3.4",
) -> Result:
    """Run one request through ``app``; the body arrives in ``chunks``."""
    out = Result()
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": raw,
        "client": (client, 1234),
    }
    pending = list(chunks)

    async def receive() -> Message:
        if not pending:
            return {"type": "http.disconnect"}
        out.pulled += 1
        body = pending.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            out.status = message["status"]
            out.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        else:
            out.body += message.get("body", b"")

    # a fresh loop in its own thread: other tests (browser ones) may leave this thread's
    # event loop running
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, app(scope, receive, send)).result()
    return out


async def echo_length(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body, answers its length."""
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = json.dumps({"size": size}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def sized(limit: int | None = 100, **kw: Any) -> RequestSizeLimitMiddleware:
    return RequestSizeLimitMiddleware(echo_length, lambda scope: limit, **kw)


# ---- body, query and header limits -----------------------------------------------------------
def test_body_under_the_limit_passes_whole() -> None:
    r = call(sized(100), chunks=[b"a" * 60, b"b" * 40], headers={"content-length": "100"})
    assert r.status == 200 and r.json() == {"size": 100}


def test_content_length_over_the_limit_is_refused_before_reading() -> None:
    chunks = [b"x" * 100] * 50  # 5,000 bytes announced and sent
    r = call(sized(100), chunks=chunks, headers={"content-length": "5000"})
    assert r.status == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert r.headers["content-type"] == "application/json"
    # the app read nothing; the rest was drained (at most 4 x the limit) for the client
    assert r.pulled == 4


def test_chunked_body_is_counted_as_it_arrives() -> None:
    chunks = [b"x" * 30] * 100  # no Content-Length: a chunked upload of 3,000 bytes
    r = call(sized(100), chunks=chunks)
    assert r.status == 413 and "over the limit of 100 bytes" in r.json()["error"]["message"]
    assert r.pulled == 4 + 14  # stopped on crossing 100 bytes, then the 400-byte drain


def test_expect_continue_is_not_drained() -> None:
    headers = {"content-length": "5000", "expect": "100-continue"}
    r = call(sized(100), chunks=[b"x" * 100] * 50, headers=headers)
    assert r.status == 413 and r.pulled == 0


def test_no_limit_passes_anything() -> None:
    r = call(sized(None), chunks=[b"x" * 1000] * 5)
    assert r.status == 200 and r.json() == {"size": 5000}


def test_long_query_and_headers_are_refused() -> None:
    app = sized(100, max_query_bytes=50, max_header_bytes=200)
    r = call(app, method="GET", query=b"q=" + b"a" * 60)
    assert r.status == 414 and r.json()["error"]["code"] == "uri_too_long"
    r = call(app, method="GET", headers={"x-big": "b" * 300})
    assert r.status == 431 and r.json()["error"]["code"] == "headers_too_large"
    assert call(app, method="GET", query=b"q=ok").status == 200


def test_ui_paths_can_get_html_error_pages() -> None:
    from starlette.responses import HTMLResponse

    def page(scope: Scope, status: int, message: str) -> HTMLResponse | None:
        return HTMLResponse(f"<html>{message}</html>", status) if scope["path"] == "/" else None

    app = sized(100, max_query_bytes=10, page=page)
    r = call(app, method="GET", path="/", query=b"q=" + b"a" * 20)
    assert r.status == 414 and r.body.startswith(b"<html>query string of 22 bytes")
    r = call(app, path="/", chunks=[b"x" * 500], headers={"content-length": "500"})
    assert r.status == 413 and b"over the limit of 100 bytes" in r.body
    assert call(app, method="GET", path="/v1/x", query=b"q=" + b"a" * 20).json()["error"]


# ---- rate limit middleware -------------------------------------------------------------------
def limited(clock: Clock, **kw: Any) -> RateLimitMiddleware:
    return RateLimitMiddleware(
        echo_length,
        anonymous=kw.pop("anonymous", Rate(1.0, 3)),
        keyed=kw.pop("keyed", Rate(10.0, 20)),
        limiter=RateLimiter(clock=clock),
        **kw,
    )


def test_rate_limit_answers_429_with_retry_after() -> None:
    clock = Clock()
    app = limited(clock)
    ok = [call(app, method="GET", path="/v1/catalog") for _ in range(3)]
    assert [r.status for r in ok] == [200] * 3
    assert [r.headers["ratelimit-remaining"] for r in ok] == ["2", "1", "0"]
    assert ok[0].headers["ratelimit-limit"] == "3"
    r = call(app, method="GET", path="/v1/catalog")
    assert r.status == 429 and r.json()["error"]["code"] == "rate_limited"
    assert r.headers["retry-after"] == "1"
    clock.now += 1
    assert call(app, method="GET", path="/v1/catalog").status == 200
    # probes, metrics and static files are never limited
    for path in ("/healthz", "/readyz", "/metrics", "/static/ui.css"):
        assert call(app, method="GET", path=path).status == 200
    # another address has its own bucket
    assert call(app, method="GET", path="/v1/catalog", client="5.6.7.8").status == 200


def test_keys_get_their_own_bucket_and_unknown_keys_do_not() -> None:
    clock = Clock()
    app = limited(clock, resolve_key=lambda key: f"key:{key}" if key == "good" else None)
    for _ in range(3):
        call(app, method="GET")
    assert call(app, method="GET").status == 429
    good = call(app, method="GET", headers={"authorization": "Bearer good"})
    assert good.status == 200 and good.headers["ratelimit-limit"] == "20"
    # a made-up key does not buy a fresh bucket: it counts as its address
    assert call(app, method="GET", headers={"x-api-key": "forged"}).status == 429


def test_expensive_requests_cost_more() -> None:
    clock = Clock()
    app = limited(clock, anonymous=Rate(1.0, 25), expensive_cost=10)
    upload = {"content-type": "multipart/form-data; boundary=x"}
    statuses = [call(app, path="/v1/search", headers=upload).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    r = call(app, path="/v1/search", headers=upload)
    assert r.headers["retry-after"] == "5"  # 5 tokens left, 10 needed, 1 a second
    assert call(app, path="/v1/search", headers={"content-type": "application/json"}).status == 200


def test_which_requests_are_expensive() -> None:
    def scope(method: str, path: str, ctype: str = "application/json") -> Scope:
        return {"method": method, "path": path, "headers": [(b"content-type", ctype.encode())]}

    assert is_expensive(scope("POST", "/v1/search", "multipart/form-data; boundary=a"))
    assert is_expensive(scope("POST", "/search", "multipart/form-data; boundary=a"))
    assert is_expensive(scope("POST", "/v1/products"))
    assert is_expensive(scope("POST", "/v1/generate"))
    assert not is_expensive(scope("POST", "/v1/search"))
    assert not is_expensive(scope("GET", "/v1/products/a/similar"))


# ---- security headers ------------------------------------------------------------------------
def test_security_headers_and_csp_on_pages_only() -> None:
    def answer(ctype: str) -> Any:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            headers = [(b"content-type", ctype.encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"x"})

        return SecurityHeadersMiddleware(app)

    page = call(answer("text/html; charset=utf-8"), method="GET", path="/")
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    assert "referrer-policy" in page.headers
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    api = call(answer("application/json"), method="GET", path="/v1/catalog")
    assert api.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in api.headers
    docs = call(answer("text/html"), method="GET", path="/docs")  # Swagger UI from its CDN
    assert "content-security-policy" not in docs.headers
