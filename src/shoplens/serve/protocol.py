"""Which HTTP/1.1 parser uvicorn runs the service with, each with a bound on head bytes.

uvicorn parses requests with h11 (pure Python) or httptools (llhttp, in C). h11 buffers
at most ``h11_max_incomplete_event_size`` bytes of a request line + headers it has not
seen the end of (400 past it); httptools has no such bound, so
:class:`BoundedHttpToolsProtocol` adds one from the same setting (431 past it, whether
the head arrived whole or not). The app's own checks (414 for a long query, 431 for long
headers, see ``limits.py``) answer heads under that bound; this one stops a client that
never ends its head from growing a connection's memory without limit.

httptools is the default (``SHOPLENS_HTTP``): it takes the HTTP parsing, which runs
under the GIL on every request, from Python into C. uvicorn picks uvloop for the event
loop where it is installed (Linux and macOS; a dependency there).
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shoplens.serve.settings import HttpParser, ServiceSettings

H11 = "h11"
HTTPTOOLS = "shoplens.serve.protocol:BoundedHttpToolsProtocol"
DEFAULT_MAX_HEAD = 16 * 1024  # h11's own default for max_incomplete_event_size


class HeadTooLargeError(Exception):
    """A request line + headers over the bound (raised inside the parser's callbacks)."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol that answers 431 and closes the connection once a
    request's line + headers pass ``config.h11_max_incomplete_event_size`` bytes (counted
    as the app counts them: name + value + 4 per header, plus the request target)."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.max_head = config.h11_max_incomplete_event_size or DEFAULT_MAX_HEAD
        self.head_bytes = 0
        self.head_over = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_bytes = 0

    def _count(self, n: int) -> None:
        self.head_bytes += n
        if self.head_bytes > self.max_head:
            self.head_over = True
            raise HeadTooLargeError  # the parser fails: uvicorn calls send_400_response

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        """uvicorn answers any parser error (ours raised from a callback included) here."""
        if not self.head_over:
            return super().send_400_response(msg)
        message = f"request line and headers over the limit of {self.max_head:,} bytes"
        body = json.dumps({"error": {"code": "headers_too_large", "message": message}})
        head = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        for name, value in self.server_state.default_headers:  # date, server (as uvicorn)
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body.encode(),
        ]
        self.transport.write(b"".join(head))
        self.transport.close()


def http_protocol(parser: HttpParser) -> str:
    """uvicorn's ``http=`` for ``parser`` (both bounded, see the module docstring)."""
    return HTTPTOOLS if parser == "httptools" else H11


def server_options(settings: ServiceSettings) -> dict[str, Any]:
    """uvicorn options every way of serving shoplens runs with (one process, workers)."""
    return {
        "http": http_protocol(settings.http),
        # the request line + headers may be as long as the app allows (414 / 431 past it)
        "h11_max_incomplete_event_size": settings.max_header_bytes + settings.max_query_bytes,
        # X-Forwarded-For is trusted only from SHOPLENS_TRUSTED_PROXIES (the app's setting)
        "proxy_headers": False,
    }
