"""End to end through the installed CLI and a real HTTP server process.

Generated catalogue -> `shoplens ingest` -> `shoplens index build` (real EfficientNet-Lite0
and MiniLM weights) -> `shoplens search` finds the right sku -> `shoplens serve` finds it
over HTTP.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..conftest import write_catalog
from ..helpers import run_cli as run
from ..helpers import serve_process


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    home = tmp_path_factory.mktemp("e2e-home")
    manifest = write_catalog(tmp_path_factory.mktemp("e2e-src"))
    out = json.loads(run(home, "ingest", str(manifest), "--name", "e2e", "--json").stdout)
    assert out["added"] == 24 and out["rejected"] == []
    build = json.loads(
        run(
            home, "index", "build", "--catalog", "e2e", "--encoder", "effnet-lite0@64", "--json"
        ).stdout
    )
    assert build["image"]["count"] == 24 and build["text"]["encoder"] == "minilm"
    return home, manifest


def test_cli_search_finds_the_right_sku(world: tuple[Path, Path]) -> None:
    home, manifest = world
    query = manifest.parent / "img" / "SKU-203.png"
    res = json.loads(
        run(home, "search", "--catalog", "e2e", "--image", str(query), "--k", "3", "--json").stdout
    )
    assert res["results"][0]["sku"] == "SKU-203"
    res = json.loads(run(home, "search", "-c", "e2e", "--text", "green triangle", "--json").stdout)
    assert {h["category"] for h in res["results"][:6]} == {"Green triangle"}
    res = json.loads(
        run(
            home,
            "search",
            "-c",
            "e2e",
            "--sku",
            "SKU-300",
            "-k",
            "3",
            "--category",
            "Yellow stripes",
            "--json",
        ).stdout
    )
    assert [h["category"] for h in res["results"]] == ["Yellow stripes"] * 3
    human = run(home, "search", "-c", "e2e", "--text", "red circle").stdout
    assert "SKU-0" in human and "Red circle" in human
    dd = json.loads(run(home, "dedupe", "-c", "e2e", "--json").stdout)
    assert dd["products"] == 24


@pytest.mark.parametrize(
    "args,needle",
    [
        (("search", "-c", "nope", "--text", "x"), "unknown catalogue"),
        (("search", "-c", "e2e"), "give --image, --text or --sku"),
        (("search", "-c", "e2e", "--text", "x", "-k", "0"), "-k"),
        (("search", "-c", "e2e", "--image", "/no/such.png"), "not found"),
        (("search", "-c", "e2e", "--sku", "NOPE"), "unknown sku"),
        (("ingest", "/no/such.csv", "--name", "x"), "not found"),
        (("ingest", "fashion-mnist", "--name", "../x"), "invalid catalogue name"),
        (("index", "build", "-c", "e2e", "--factory", "Bogus12"), "factory"),
        (("index", "build", "-c", "e2e", "--encoder", "nope"), "unknown encoder"),
    ],
)
def test_user_errors_exit_2_with_one_line(
    world: tuple[Path, Path], args: tuple[str, ...], needle: str
) -> None:
    home, _ = world
    proc = run(home, *args, check=False)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert needle.lower() in errors[0].lower()
    assert "Traceback" not in proc.stderr


@pytest.fixture
def server(world: tuple[Path, Path]) -> Iterator[str]:
    with serve_process(world[0], "--catalog", "e2e") as base:
        yield base


def test_http_finds_the_right_sku(world: tuple[Path, Path], server: str) -> None:
    _, manifest = world
    data = (manifest.parent / "img" / "SKU-104.png").read_bytes()
    r = httpx.post(
        f"{server}/v1/search",
        files={"image": ("q.png", data, "image/png")},
        data={"k": "3"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["sku"] == "SKU-104"
    r = httpx.post(f"{server}/v1/search", json={"text": "blue square", "k": 3}, timeout=30)
    assert [h["category"] for h in r.json()["results"]] == ["Blue square"] * 3
    img = httpx.get(f"{server}{r.json()['results'][0]['image_url']}", timeout=30)
    assert img.status_code == 200 and img.content[:4] == b"\x89PNG"
    assert httpx.get(f"{server}/v1/products/NOPE", timeout=30).status_code == 404


def test_a_head_that_never_ends_is_cut_off(server: str) -> None:
    """`shoplens serve` runs the bounded parser: a client that keeps sending header lines
    gets 431 once past max_header_bytes + max_query_bytes (24 KiB), not a server that
    buffers until it runs out of memory."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        sent, answer = 0, b""
        with contextlib.suppress(OSError):  # the server may close while we still send
            while sent < 1_000_000 and not answer:
                sock.sendall(b"X-Pad: " + b"p" * 1000 + b"\r\n")
                sent += 1009
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    answer = sock.recv(4096)
                sock.setblocking(True)
        sock.settimeout(10)
        with contextlib.suppress(OSError):
            answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert 24 * 1024 <= sent < 1_000_000  # not before the bound; well before 1 MB
