"""The service's HTTP parsers under uvicorn: httptools with shoplens's bound on head bytes
(431 and the connection closed), h11 with its own (on a head it is still waiting for the
end of); requests under the bound are served.

A real uvicorn server runs in a thread on a free port; requests are raw bytes on a
socket, so heads can be any size and arrive in any number of pieces.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from shoplens.serve.protocol import HTTPTOOLS, http_protocol
from shoplens.serve.settings import ServiceSettings

from ..helpers import free_port

BOUND = 2048  # request target + headers, bytes


async def echo(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    """Answers with the number of headers it was given and the body's length."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    out = json.dumps({"headers": len(scope["headers"]), "body": len(body)}).encode()
    headers = [(b"content-length", str(len(out)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": out})


@pytest.fixture(params=["httptools", "h11"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    port = free_port()
    config = uvicorn.Config(
        echo,
        host="127.0.0.1",
        port=port,
        http=http_protocol(request.param),
        h11_max_incomplete_event_size=BOUND,
        log_level="warning",
        lifespan="off",
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    yield request.param, port
    srv.should_exit = True
    thread.join(10)


def _exchange(port: int, pieces: list[bytes], pause_s: float = 0.0) -> bytes:
    """Send ``pieces`` (one write each), then read until the server closes or 2 s pass."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for piece in pieces:
            try:
                sock.sendall(piece)
            except OSError:  # closed by the server halfway: its answer is still readable
                break
            time.sleep(pause_s)
        sock.settimeout(2)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            pass
        return out


def _request(
    target: str = "/x", headers: int = 1, value: int = 10, body: bytes = b"", close: bool = False
) -> bytes:
    lines = [f"POST {target} HTTP/1.1", "Host: t"] + (["Connection: close"] if close else [])
    lines += [f"X-Pad-{i}: {'v' * value}" for i in range(headers)]
    lines += [f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def _statuses(raw: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def test_heads_under_the_bound_are_served(server: tuple[str, int]) -> None:
    _, port = server
    body = b"b" * 100_000  # bodies do not count against the head bound
    first = _request(headers=20, value=50, body=body)
    raw = _exchange(port, [first + _request(headers=20, value=50, close=True)])
    assert _statuses(raw) == [200, 200]  # keep-alive: the count starts again per request
    assert b'"headers": 22, "body": 100000' in raw and b'"headers": 23, "body": 0' in raw


@pytest.mark.parametrize("server", ["httptools"], indirect=True)
@pytest.mark.parametrize(
    "request_bytes",
    [
        _request(headers=1, value=BOUND),  # one long header
        _request(headers=200, value=20),  # many short ones
        _request(target="/x?" + "q" * BOUND),  # a long request target
    ],
    ids=["long-header", "many-headers", "long-target"],
)
def test_heads_over_the_bound_are_refused(server: tuple[str, int], request_bytes: bytes) -> None:
    """(h11 bounds only a head it has not yet seen the end of: see the next test.)"""
    _, port = server
    raw = _exchange(port, [request_bytes])
    assert _statuses(raw) == [431]
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    assert json.loads(body)["error"]["code"] == "headers_too_large"


def test_a_head_dribbled_in_pieces_is_refused_once_over(server: tuple[str, int]) -> None:
    """A client that sends its head a few bytes at a time, never ending it (h11 answers
    every protocol error with 400)."""
    parser, port = server
    piece = b"X-Slow: " + b"s" * 60 + b"\r\n"
    raw = _exchange(port, [b"GET /x HTTP/1.1\r\nHost: t\r\n"] + [piece] * 200, pause_s=0.002)
    assert _statuses(raw) == [431 if parser == "httptools" else 400]


def test_the_setting_picks_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServiceSettings().http == "httptools"
    assert http_protocol(ServiceSettings().http) == HTTPTOOLS
    monkeypatch.setenv("SHOPLENS_HTTP", "h11")
    assert http_protocol(ServiceSettings().http) == "h11"
    monkeypatch.setenv("SHOPLENS_HTTP", "httpx")
    with pytest.raises(ValueError, match="http"):
        ServiceSettings()
