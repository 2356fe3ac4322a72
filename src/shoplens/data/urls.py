"""Guarded image downloads over http(s).

Only ``http``/``https`` URLs are fetched. Every host is resolved and refused when it
points at a loopback, private, link-local (cloud metadata), multicast, reserved or
unspecified address, unless private addresses are allowed (``allow_private=True`` or
``SHOPLENS_ALLOW_PRIVATE_URLS=1``). The check runs when the socket is opened and the
connection goes to the checked address, so DNS rebinding cannot slip past it.
Redirects are followed by hand (at most 5), each hop re-checked.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import socket
import ssl
import time
import typing
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpcore
import httpx

from shoplens.errors import ImageError, InvalidInputError, PayloadTooLargeError, ShoplensError

MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024
MAX_REDIRECTS = 5
ALLOWED_SCHEMES = ("http", "https")
ALLOW_PRIVATE_ENV = "SHOPLENS_ALLOW_PRIVATE_URLS"
_METADATA_IPS = frozenset({"169.254.169.254", "fd00:ec2::254"})
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
_USER_AGENT = "shoplens/0.1 (+image ingest)"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def url_scheme(ref: str) -> str | None:
    """Return the lower-cased URL scheme of ``ref``, or None for a plain path.

    One-letter schemes are treated as Windows drive letters (``C:\\x.jpg``).
    """
    m = _SCHEME_RE.match(ref)
    return m.group(1).lower() if m else None


def is_url(ref: str) -> bool:
    """True when ``ref`` looks like a URL (any scheme), not a local path."""
    return url_scheme(ref) is not None


def check_url(url: str) -> httpx.URL:
    """Parse ``url`` and make sure it is an http(s) URL with a host.

    Raises:
        InvalidInputError: another scheme, no host or unparsable.
    """
    scheme = url_scheme(url)
    if scheme not in ALLOWED_SCHEMES:
        raise InvalidInputError(
            f"unsupported URL scheme {scheme or 'none'!r} in {_short(url)}: "
            "only http and https URLs can be fetched"
        )
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise InvalidInputError(f"invalid URL {_short(url)}: {exc}") from None
    if not parsed.host:
        raise InvalidInputError(f"invalid URL {_short(url)}: no host name")
    return parsed


def private_allowed(allow_private: bool | None = None) -> bool:
    """Resolve the ``allow_private`` setting (None -> ``$SHOPLENS_ALLOW_PRIVATE_URLS``)."""
    if allow_private is not None:
        return allow_private
    return os.environ.get(ALLOW_PRIVATE_ENV, "").strip().lower() in ("1", "true", "yes")


def is_forbidden_ip(ip: IPAddress) -> bool:
    """True for addresses a server-side fetch must not reach (SSRF targets)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return is_forbidden_ip(ip.ipv4_mapped)
    return (
        str(ip) in _METADATA_IPS
        or ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def check_host(host: str, port: int, *, allow_private: bool) -> list[str]:
    """Resolve ``host`` and return the IP addresses a connection may use.

    Raises:
        InvalidInputError: the host resolves to a forbidden address.
        httpcore.ConnectError: the host cannot be resolved (retried by the caller).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise httpcore.ConnectError(f"cannot resolve host {host!r}: {exc}") from None
    addrs: list[str] = []
    for info in infos:
        addr = str(info[4][0]).split("%", 1)[0]
        if addr not in addrs:
            addrs.append(addr)
    if not allow_private:
        for addr in addrs:
            if is_forbidden_ip(ipaddress.ip_address(addr)):
                raise InvalidInputError(
                    f"refusing to fetch from host {host!r}: it resolves to the private or "
                    f"reserved address {addr} (set {ALLOW_PRIVATE_ENV}=1 to allow)"
                )
    return addrs


class _GuardedBackend(httpcore.SyncBackend):
    """Network backend that checks the resolved address right before connecting."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        addrs = check_host(host, port, allow_private=self.allow_private)
        last: Exception | None = None
        for addr in addrs:  # connect to the checked address, not a fresh lookup
            try:
                return super().connect_tcp(addr, port, timeout, local_address, socket_options)
            except httpcore.ConnectTimeout:
                raise
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"no address for host {host!r}")


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One verifying TLS context for every fetch (loading the CA bundle takes ~50 ms)."""
    return httpx.create_ssl_context()


def _make_client(timeout: float, allow_private: bool) -> httpx.Client:
    transport = httpx.HTTPTransport(retries=0, verify=_ssl_context())
    pool = getattr(transport, "_pool", None)
    if isinstance(pool, httpcore.ConnectionPool):
        transport._pool = httpcore.ConnectionPool(
            ssl_context=_ssl_context(),
            network_backend=_GuardedBackend(allow_private),
        )
    return httpx.Client(
        transport=transport,
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"},
    )


def _check_url_host(url: httpx.URL) -> None:
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        check_host(url.host, port, allow_private=False)
    except httpcore.ConnectError as exc:  # unresolvable: an httpx error, retried like one
        raise httpx.ConnectError(str(exc)) from None


class _Retryable(Exception):
    """A failure worth another attempt (timeouts, connection errors, 5xx)."""


def _get_once(client: httpx.Client, url: str, max_bytes: int, allow_private: bool) -> bytes:
    current = check_url(url)
    if not allow_private:  # early, clear error; the backend re-checks on connect
        _check_url_host(current)
    for _ in range(MAX_REDIRECTS + 1):
        with client.stream("GET", current) as resp:
            if resp.is_redirect and "location" in resp.headers:
                nxt = str(current.join(resp.headers["location"]))
                current = check_url(nxt)
                if not allow_private:
                    _check_url_host(current)
                continue
            if resp.status_code >= 500:
                raise _Retryable(f"HTTP {resp.status_code} {resp.reason_phrase}".strip())
            if resp.status_code >= 400:
                raise ImageError(
                    f"could not download URL {_short(url)}: "
                    f"HTTP {resp.status_code} {resp.reason_phrase}".strip()
                )
            length = resp.headers.get("content-length", "")
            if length.isdigit() and int(length) > max_bytes:
                raise _too_large(url, max_bytes)
            chunks: list[bytes] = []
            total = 0
            for chunk in resp.iter_bytes():
                total += len(chunk)
                if total > max_bytes:
                    raise _too_large(url, max_bytes)
                chunks.append(chunk)
            return b"".join(chunks)
    raise ImageError(f"could not download URL {_short(url)}: more than {MAX_REDIRECTS} redirects")


def fetch_url(
    url: str,
    *,
    timeout: float = 10.0,
    retries: int = 2,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
    allow_private: bool | None = None,
) -> bytes:
    """Download ``url`` and return its body.

    Args:
        url: an http or https URL.
        timeout: seconds allowed for connecting and for each read.
        retries: extra attempts after timeouts, connection errors or 5xx answers
            (backoff 0.2 s, 0.4 s, ...); 4xx answers are not retried.
        max_bytes: largest body accepted.
        allow_private: allow loopback/private hosts; None reads
            ``$SHOPLENS_ALLOW_PRIVATE_URLS``.

    Raises:
        InvalidInputError: not http(s), or a forbidden host (also after a redirect).
        PayloadTooLargeError: the body is larger than ``max_bytes``.
        ImageError: the download failed.
    """
    allow = private_allowed(allow_private)
    check_url(url)
    reason = "unknown error"
    with _make_client(timeout, allow) as client:
        for attempt in range(max(0, retries) + 1):
            if attempt:
                time.sleep(0.2 * 2 ** (attempt - 1))
            try:
                return _get_once(client, url, max_bytes, allow)
            except _Retryable as exc:
                reason = str(exc)
            except httpx.TimeoutException:
                reason = f"timed out after {timeout:g} s"
            except httpx.TransportError as exc:
                reason = f"connection failed ({str(exc) or type(exc).__name__})"
            except httpx.HTTPError as exc:  # e.g. invalid redirect target
                raise ImageError(f"could not download URL {_short(url)}: {exc}") from None
    raise ImageError(f"could not download URL {_short(url)}: {reason}")


def fetch_many(
    urls: Sequence[str], *, concurrency: int = 8, **kw: typing.Any
) -> list[bytes | ShoplensError]:
    """Download many URLs in parallel threads; one result per URL, in order.

    A failed URL yields its error object instead of bytes, so one bad URL never stops
    the others. ``kw`` is passed to :func:`fetch_url`.
    """

    def one(url: str) -> bytes | ShoplensError:
        try:
            return fetch_url(url, **kw)
        except ShoplensError as exc:
            return exc
        except Exception as exc:  # isolate anything unexpected too
            return ImageError(f"could not download URL {_short(url)}: {exc}")

    if not urls:
        return []
    workers = max(1, min(concurrency, len(urls)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shoplens-fetch") as pool:
        return list(pool.map(one, urls))


def _too_large(url: str, max_bytes: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"download from {_short(url)} is larger than the limit of {_fmt_bytes(max_bytes)}"
    )


def _fmt_bytes(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n} bytes"


def _short(url: str, limit: int = 200) -> str:
    return url if len(url) <= limit else url[: limit - 3] + "..."
