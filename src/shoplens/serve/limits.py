"""Request limits of the service: rate limits, body and header sizes, CORS, security headers.

Pure ASGI middleware (no ``BaseHTTPMiddleware``), installed by :func:`install_limits` and
:func:`install_edge` from :class:`~shoplens.serve.settings.ServiceSettings`:

* :class:`RateLimitMiddleware`: a token bucket per API key (a key that authenticates) or
  per client address; expensive routes (image uploads, ingest, generation) take
  ``rate_limit_expensive_cost`` tokens. Over the limit: 429 JSON with ``Retry-After``.
* :class:`RequestSizeLimitMiddleware`: 413 JSON for a body over its limit, from the
  ``Content-Length`` before a byte is read, or counted as a chunked body arrives; 414 and
  431 for an over-long query string or header block.
* :class:`SecurityHeadersMiddleware`: ``nosniff``, referrer policy, no framing, and a
  content security policy on the web pages.

The token bucket is written here: ``limits`` / ``slowapi`` count fixed or sliding
windows, and ``pyrate-limiter`` keeps a log of request timestamps per client (memory
grows with the rate); a token bucket needs two floats per client and gives the exact
wait until the next token, which is what ``Retry-After`` says.
"""

from __future__ import annotations

import ipaddress
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shoplens.errors import PayloadTooLargeError

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.datastructures import UploadFile
    from starlette.responses import Response

    from shoplens.serve.settings import ServiceSettings

#: ``(scope, status, message)`` -> an error page for web UI paths, None for a JSON error.
ErrorPage = Callable[[Scope, int, str], Optional["Response"]]

#: Never rate limited: probes, metrics scrapes and the UI's static files.
EXEMPT_PATHS = ("/healthz", "/readyz", "/metrics")
EXEMPT_PREFIXES = ("/static/",)
#: POST routes that cost ``rate_limit_expensive_cost`` tokens (image search uploads too).
EXPENSIVE_POSTS = ("/v1/products", "/v1/index/reload")
EXPENSIVE_POST_PREFIXES = ("/v1/generate", "/generate")
UPLOAD_PATHS = ("/v1/search", "/search")
#: Room for the multipart framing and form fields around an upload of max_upload_bytes.
MULTIPART_OVERHEAD = 64 * 1024
#: Web pages get this content security policy (the UI has no inline script or style).
UI_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
#: HTML that loads Swagger UI / ReDoc from a CDN with inline script: no CSP there.
NO_CSP_PATHS = ("/docs", "/redoc")


# ---- token buckets ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    """One rate-limit check: allowed or not, and what the RateLimit headers say."""

    allowed: bool
    limit: int  # the burst (bucket size)
    remaining: int  # whole tokens left after this request
    retry_after: float  # seconds until ``cost`` tokens are back (0 when allowed)
    reset: float  # seconds until the bucket is full again


class RateLimiter:
    """Token buckets by identity, thread-safe, at most ``max_buckets`` of them.

    A bucket holds up to ``burst`` tokens and gains ``rate`` per second; a request takes
    ``cost``. Buckets live in an LRU: a bucket that has refilled completely is the same as
    a new one and is dropped as it reaches the old end, and past ``max_buckets`` the least
    recently used one goes, so a flood of new addresses cannot grow memory without bound
    (an evicted client that was not idle starts again with a full bucket).

    Args:
        max_buckets: most identities tracked at once.
        clock: seconds, monotonic (injected in tests).
    """

    def __init__(
        self, max_buckets: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_buckets < 1:
            raise ValueError("max_buckets must be at least 1")
        self.max_buckets = max_buckets
        self.clock = clock
        self._lock = threading.Lock()
        # identity -> [tokens, last update, seconds to refill from empty]
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, identity: str, rate: float, burst: int, cost: float = 1.0) -> Decision:
        """Take ``cost`` tokens from ``identity``'s bucket if it has them."""
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        cost = min(float(cost), float(burst))  # a request dearer than the bucket never fits
        with self._lock:
            now = self.clock()
            bucket = self._buckets.get(identity)
            if bucket is None:
                tokens = float(burst)
            else:
                tokens = min(float(burst), bucket[0] + (now - bucket[1]) * rate)
                self._buckets.move_to_end(identity)
            allowed = tokens >= cost
            if allowed:
                tokens -= cost
            if bucket is None:
                self._buckets[identity] = [tokens, now, burst / rate]
                self._evict(now)
            else:
                bucket[0], bucket[1] = tokens, now
        wait = 0.0 if allowed else (cost - tokens) / rate
        return Decision(allowed, burst, int(tokens), wait, (burst - tokens) / rate)

    def _evict(self, now: float) -> None:
        """Drop full (idle) buckets at the LRU end, then the oldest past ``max_buckets``."""
        buckets = self._buckets
        while buckets:
            identity, (_, updated, refill) = next(iter(buckets.items()))
            if now - updated >= refill or len(buckets) > self.max_buckets:
                del buckets[identity]
            else:
                break


def api_key_from(headers: Headers) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or ``X-API-Key``."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return headers.get("x-api-key") or None


def client_address(scope: Scope) -> str:
    """The client's address; IPv6 clients by their /64 (one host owns a whole /64)."""
    client = scope.get("client")
    host = client[0] if client else "unknown"
    if ":" not in host:  # IPv4 or a name: as it is
        return str(host)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def is_expensive(scope: Scope) -> bool:
    """Image search uploads, catalogue ingest, index reloads and generation."""
    if scope["method"] != "POST":
        return False
    path: str = scope["path"]
    if path in EXPENSIVE_POSTS or path.startswith(EXPENSIVE_POST_PREFIXES):
        return True
    ctype = Headers(scope=scope).get("content-type", "")
    return path in UPLOAD_PATHS and ctype.startswith("multipart/")


def is_exempt(path: str) -> bool:
    return path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES)


async def send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    scope: Scope | None = None,
    page: ErrorPage | None = None,
) -> None:
    """Send ``{"error": {"code", "message"}}`` with ``status`` (or ``page``'s HTML page)."""
    html = page(scope, status, message) if page is not None and scope is not None else None
    if html is not None:
        html.headers.update(headers or {})

        async def nothing() -> Message:
            return {"type": "http.disconnect"}

        return await html(scope or {}, nothing, send)
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True)
class Rate:
    """``per_s`` tokens a second, ``burst`` at most."""

    per_s: float
    burst: int


class RateLimitMiddleware:
    """429 with ``Retry-After`` once a client's bucket is empty; RateLimit-* headers always.

    A request with a key that ``resolve_key`` accepts (returns an identity for) uses that
    key's bucket at ``keyed``; any other request its client address's at ``anonymous``.
    Either may be None: that kind of client is not limited.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        anonymous: Rate | None,
        keyed: Rate | None,
        expensive_cost: float = 1.0,
        resolve_key: Callable[[str], str | None] = lambda key: None,
        limiter: RateLimiter | None = None,
        page: ErrorPage | None = None,
    ) -> None:
        self.app = app
        self.anonymous, self.keyed = anonymous, keyed
        self.expensive_cost = expensive_cost
        self.resolve_key = resolve_key
        self.page = page
        self.limiter = limiter if limiter is not None else RateLimiter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_exempt(scope["path"]):
            return await self.app(scope, receive, send)
        key = api_key_from(Headers(scope=scope))
        # a database look-up (which may wait on a lock): off the event loop
        identity = await run_in_threadpool(self.resolve_key, key) if key else None
        rate, who = (self.keyed, "API key") if identity else (self.anonymous, "client address")
        if rate is None:
            return await self.app(scope, receive, send)
        identity = identity or f"addr:{client_address(scope)}"
        cost = self.expensive_cost if is_expensive(scope) else 1.0
        d = self.limiter.take(identity, rate.per_s, rate.burst, cost)
        headers = {
            "RateLimit-Limit": str(d.limit),
            "RateLimit-Remaining": str(d.remaining),
            "RateLimit-Reset": str(math.ceil(d.reset)),
            "RateLimit-Policy": f"{rate.burst};w={math.ceil(rate.burst / rate.per_s)}",
        }
        if not d.allowed:
            retry = max(1, math.ceil(d.retry_after))
            message = (
                f"too many requests for this {who} (about {rate.per_s:g} a second, "
                f"bursts of {rate.burst}); retry in {retry} s"
            )
            headers["Retry-After"] = str(retry)
            await send_error(
                send, 429, "rate_limited", message, headers, scope=scope, page=self.page
            )
            return

        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *raw]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# ---- body, query and header sizes ------------------------------------------------------------
class BodyTooLargeError(PayloadTooLargeError, HTTPException):
    """A request body over its limit, raised from ``receive``.

    A :class:`~shoplens.errors.ShoplensError` for the service's error handlers (JSON 413,
    or the photo form's own message in the web UI), and an ``HTTPException`` so that
    FastAPI's body parsing passes it on instead of answering 400.
    """

    def __init__(self, message: str) -> None:
        PayloadTooLargeError.__init__(self, message)
        self.status_code, self.detail, self.headers = 413, message, None


class RequestSizeLimitMiddleware:
    """413 / 414 / 431 for over-limit bodies, query strings and header blocks.

    Errors are JSON, or ``page``'s HTML page where it gives one (the web UI's paths).

    ``limit_for(scope)`` is the body limit of a request (None: unlimited). A body is
    never read whole to find out: an over-limit ``Content-Length`` fails the first
    ``receive`` (so the route never sees a byte), and a chunked body fails the ``receive``
    that crosses the limit. Before the error is sent, up to ``drain_factor`` times the
    limit is read and dropped, so a browser still uploading sees the answer rather than a
    reset connection (not with ``Expect: 100-continue``: that client has sent nothing).
    """

    def __init__(
        self,
        app: ASGIApp,
        limit_for: Callable[[Scope], int | None],
        *,
        max_query_bytes: int | None = 8 * 1024,
        max_header_bytes: int | None = 16 * 1024,
        drain_factor: int = 4,
        page: ErrorPage | None = None,
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        self.max_query_bytes = max_query_bytes
        self.max_header_bytes = max_header_bytes
        self.drain_factor = drain_factor
        self.page = page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        query = len(scope.get("query_string", b""))
        if self.max_query_bytes and query > self.max_query_bytes:
            message = f"query string of {query:,} bytes, over the limit of {self.max_query_bytes:,}"
            return await send_error(send, 414, "uri_too_long", message, scope=scope, page=self.page)
        head = sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        if self.max_header_bytes and head > self.max_header_bytes:
            message = f"headers of {head:,} bytes, over the limit of {self.max_header_bytes:,}"
            return await send_error(
                send, 431, "headers_too_large", message, scope=scope, page=self.page
            )
        limit = self.limit_for(scope)
        if limit is None:
            return await self.app(scope, receive, send)
        await _BodyLimit(self.app, scope, receive, send, limit, self.drain_factor, self.page).run()


class _BodyLimit:
    """One request under :class:`RequestSizeLimitMiddleware`."""

    def __init__(
        self,
        app: ASGIApp,
        scope: Scope,
        receive: Receive,
        send: Send,
        limit: int,
        drain: int,
        page: ErrorPage | None,
    ) -> None:
        self.app, self.scope, self._receive, self._send = app, scope, receive, send
        self.limit, self.page = limit, page
        headers = Headers(scope=scope)
        length = headers.get("content-length", "")
        self.length = int(length) if length.isdigit() else None
        self.drain_left = (
            0 if "100-continue" in headers.get("expect", "").lower() else drain * limit
        )
        self.received = 0
        self.complete = self.length == 0
        self.error: BodyTooLargeError | None = None
        self.started = False

    async def run(self) -> None:
        try:
            await self.app(self.scope, self.receive, self.send)
        except BodyTooLargeError as e:
            if self.started:
                raise
            await self.drain()
            await send_error(self._send, 413, e.code, e.message, scope=self.scope, page=self.page)

    def too_large(self, size: int, *, declared: bool) -> BodyTooLargeError:
        what = f"of {size:,} bytes" if declared else f"({size:,} bytes so far)"
        self.error = BodyTooLargeError(
            f"request body {what} is over the limit of {self.limit:,} bytes"
        )
        return self.error

    async def receive(self) -> Message:
        if self.error is not None:
            raise self.error
        if self.length is not None and self.length > self.limit:
            raise self.too_large(self.length, declared=True)
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
            if self.received > self.limit:
                raise self.too_large(self.received, declared=False)
        elif message["type"] == "http.disconnect":
            self.complete = True
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            if self.error is not None:
                await self.drain()
        await self._send(message)

    async def drain(self) -> None:
        """Read and drop the rest of a rejected body, up to the drain allowance."""
        while not self.complete and self.drain_left > 0:
            message = await self._receive()
            if message["type"] != "http.request":
                break
            self.drain_left -= len(message.get("body", b""))
            self.complete = not message.get("more_body", False)


def body_limit_for(settings: ServiceSettings) -> Callable[[Scope], int | None]:
    """The body limit of a request: uploads, the events and ingest routes, other JSON."""

    def limit_for(scope: Scope) -> int | None:
        ctype = Headers(scope=scope).get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            return settings.max_upload_bytes + MULTIPART_OVERHEAD
        if scope["path"] == "/v1/events":
            return settings.max_events_bytes
        if scope["path"] == "/v1/products":
            return settings.max_ingest_bytes
        return settings.max_json_bytes

    return limit_for


async def read_upload(upload: UploadFile, limit: int, message: str) -> bytes:
    """An uploaded file's bytes; PayloadTooLargeError(``message``) when over ``limit``."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLargeError(message)
    return data


# ---- security headers ------------------------------------------------------------------------
class SecurityHeadersMiddleware:
    """``nosniff``, a referrer policy and no framing on every response; a CSP on web pages."""

    HEADERS = (
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"strict-origin-when-cross-origin"),
        (b"x-frame-options", b"DENY"),
    )

    def __init__(self, app: ASGIApp, csp: str = UI_CSP) -> None:
        self.app = app
        self.csp = csp.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        page = scope["path"] not in NO_CSP_PATHS and not scope["path"].startswith("/docs/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in self.HEADERS if k not in names]
                html = any(
                    k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers
                )
                if html and page and b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", self.csp))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# ---- installing ------------------------------------------------------------------------------
def install_limits(
    app: FastAPI,
    settings: ServiceSettings,
    resolve_key: Callable[[str], str | None],
    page: ErrorPage | None = None,
) -> None:
    """Rate and size limits (inside the metrics middleware: 429s and 413s are counted).

    ``resolve_key``: rate-limit identity of a live API key (None: limit by address);
    ``page``: HTML error pages for web UI paths.
    """
    app.add_middleware(
        RequestSizeLimitMiddleware,
        limit_for=body_limit_for(settings),
        max_query_bytes=settings.max_query_bytes,
        max_header_bytes=settings.max_header_bytes,
        page=page,
    )
    anonymous = keyed = None
    if settings.rate_limit_per_s:
        anonymous = Rate(settings.rate_limit_per_s, settings.rate_limit_burst)
    if settings.rate_limit_key_per_s:
        keyed = Rate(settings.rate_limit_key_per_s, settings.rate_limit_key_burst)
    if anonymous or keyed:
        app.add_middleware(
            RateLimitMiddleware,
            anonymous=anonymous,
            keyed=keyed,
            expensive_cost=settings.rate_limit_expensive_cost,
            resolve_key=resolve_key,
            limiter=RateLimiter(settings.rate_limit_max_clients),
            page=page,
        )


def install_edge(app: FastAPI, settings: ServiceSettings) -> None:
    """CORS (only for ``cors_origins``), security headers, and trusted proxies (outermost)."""
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-api-key"],
            expose_headers=["retry-after", "ratelimit-limit", "ratelimit-remaining"],
        )
    app.add_middleware(SecurityHeadersMiddleware)
    if settings.trusted_proxies:
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
