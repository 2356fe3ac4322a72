"""Safe image decoding, local files, storage normalisation and guarded downloads."""

from __future__ import annotations

import hashlib
import io
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from shoplens.data import images, urls
from shoplens.data.images import (
    StoredImage,
    decode_image,
    encode_for_store,
    fetch_many,
    fetch_url,
    image_to_png_bytes,
    load_image_ref,
    read_image_file,
)
from shoplens.errors import (
    ImageError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    ShoplensError,
)


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr)


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares a huge size (decompression bomb shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


# --- decode_image ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_allowed_formats_decode_to_rgb(fmt: str) -> None:
    img = decode_image(encode(Image.new("RGB", (30, 20), (200, 10, 10)), fmt))
    assert img.mode == "RGB"
    assert img.size == (30, 20)
    r, g, b = img.getpixel((5, 5))  # type: ignore[misc]
    assert r > 150 and g < 60 and b < 60


def test_grayscale_and_16bit_converted() -> None:
    gray = decode_image(encode(Image.new("L", (8, 8), 77), "PNG"))
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (77, 77, 77)
    deep = decode_image(encode(Image.new("I;16", (8, 8), 65535), "PNG"))
    assert deep.mode == "RGB" and deep.getpixel((0, 0)) == (255, 255, 255)


def test_alpha_flattened_onto_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (0, 0, 0, 255))
    rgba.putpixel((2, 2), (0, 0, 0, 128))
    img = decode_image(encode(rgba, "PNG"))
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((1, 1)) == (0, 0, 0)
    assert 120 <= img.getpixel((2, 2))[0] <= 135  # type: ignore[index]


def test_exif_orientation_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW
    data = encode(Image.new("RGB", (40, 20), "red"), "JPEG", exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).size == (40, 20)
    assert decode_image(data).size == (20, 40)


def test_animated_gif_first_frame() -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    img = decode_image(buf.getvalue())
    r, _, b = img.getpixel((5, 5))  # type: ignore[misc]
    assert r > 200 and b < 50


def test_truncated_jpeg_rejected() -> None:
    data = encode(noise(64, 64), "JPEG")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2], source="cut.jpg")


def test_text_saved_as_jpg_is_not_an_image(tmp_path: Path) -> None:
    p = tmp_path / "photo.jpg"
    p.write_text("sku,title\nthis is not a picture\n")
    with pytest.raises(ImageError, match=r"photo\.jpg: not an image"):
        read_image_file(p)
    with pytest.raises(ImageError, match="not an image"):
        decode_image(b"")


@pytest.mark.parametrize("side", [7000, 50000])
def test_pixel_bomb_fails_fast(side: int) -> None:
    data = png_header_only(side, side)
    assert len(data) < 100
    start = time.perf_counter()
    with pytest.raises(ImageError, match="pixels"):
        decode_image(data, source="bomb.png")
    assert time.perf_counter() - start < 1.0


def test_max_pixels_override() -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageError, match="over the limit of 5,000"):
        decode_image(data, max_pixels=5000)
    assert decode_image(data, max_pixels=10_000).size == (100, 100)


@pytest.mark.parametrize("fmt", ["PCX", "ICO", "PPM"])
def test_disallowed_format(fmt: str) -> None:
    data = encode(Image.new("RGB", (16, 16)), fmt)
    with pytest.raises(ImageError, match=f"unsupported image format {fmt}"):
        decode_image(data)


def test_over_max_bytes() -> None:
    data = encode(noise(32, 32), "PNG")
    with pytest.raises(PayloadTooLargeError):
        decode_image(data, max_bytes=len(data) - 1)


# --- local files -----------------------------------------------------------------------


def test_read_image_file_paths(tmp_path: Path) -> None:
    root = tmp_path / "shop"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(encode(Image.new("RGB", (5, 5)), "PNG"))
    outside = tmp_path / "secret.png"
    outside.write_bytes(encode(Image.new("RGB", (5, 5)), "PNG"))
    (root / "link.png").symlink_to(outside)

    assert read_image_file("a/x.png", root=root).size == (5, 5)
    assert load_image_ref("a/x.png", root=root).size == (5, 5)
    with pytest.raises(InvalidInputError, match="escapes the manifest folder"):
        read_image_file("../secret.png", root=root)
    with pytest.raises(InvalidInputError, match="escapes the manifest folder"):
        read_image_file(outside, root=root)
    with pytest.raises(InvalidInputError, match="escapes the manifest folder"):
        read_image_file("link.png", root=root)
    assert read_image_file("link.png", root=root, allow_outside_root=True).size == (5, 5)
    with pytest.raises(NotFoundError):
        read_image_file("a/missing.png", root=root)
    with pytest.raises(InvalidInputError, match="directory"):
        read_image_file("a", root=root)
    with pytest.raises(PayloadTooLargeError):
        read_image_file("a/x.png", root=root, max_bytes=10)
    with pytest.raises(InvalidInputError, match="scheme"):
        load_image_ref("file:///etc/passwd", root=root)


# --- storage normalisation -------------------------------------------------------------


def test_encode_for_store_deterministic_and_capped() -> None:
    big = noise(3000, 1000)
    a, b = encode_for_store(big), encode_for_store(big.copy())
    assert isinstance(a, StoredImage)
    assert a == b
    assert (a.width, a.height, a.ext) == (1024, 341, "jpg")
    assert a.sha256 == hashlib.sha256(a.data).hexdigest()
    assert Image.open(io.BytesIO(a.data)).format == "JPEG"
    small = encode_for_store(noise(3000, 1000), max_side=256)
    assert (small.width, small.height, small.ext) == (256, 85, "png")


@pytest.mark.parametrize(
    ("size", "ext"), [((100, 100), "png"), ((256, 256), "png"), ((257, 256), "jpg")]
)
def test_encode_for_store_format_choice(size: tuple[int, int], ext: str) -> None:
    stored = encode_for_store(noise(*size))
    assert stored.ext == ext
    assert (stored.width, stored.height) == size


def test_encode_for_store_strips_metadata_and_payloads() -> None:
    exif = Image.Exif()
    exif[0x010E] = "secret description"
    data = encode(noise(300, 300), "JPEG", exif=exif.tobytes()) + b"<?php evil(); ?>"
    stored = encode_for_store(decode_image(data))
    assert b"secret" not in stored.data and b"php" not in stored.data
    assert "exif" not in Image.open(io.BytesIO(stored.data)).info
    png = image_to_png_bytes(Image.new("RGB", (3, 3)))
    assert png.startswith(b"\x89PNG")


# --- downloads -------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    counts: ClassVar[dict[str, int]] = {}
    png = encode(Image.new("RGB", (6, 4), "green"), "PNG")

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {"Content-Length": str(len(body))}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        n = self.counts[path] = self.counts.get(path, 0) + 1
        if path.startswith("/ok"):
            self._send(200, self.png)
        elif path == "/missing":
            self._send(404, b"nope")
        elif path == "/flaky":
            self._send(500 if n == 1 else 200, b"boom" if n == 1 else self.png)
        elif path == "/slow":
            time.sleep(1.5)
            self._send(200, self.png)
        elif path == "/big":
            self._send(200, b"x" * 5000)
        elif path == "/big-unsized":
            self._send(200, b"x" * 5000, headers={"Connection": "close"})
        elif path == "/redirect-ok":
            self._send(302, headers={"Location": "/ok", "Content-Length": "0"})
        elif path == "/redirect-metadata":
            loc = "http://169.254.169.254/latest/meta-data/"
            self._send(302, headers={"Location": loc, "Content-Length": "0"})
        elif path == "/redirect-loop":
            self._send(302, headers={"Location": "/redirect-loop", "Content-Length": "0"})
        else:
            self._send(404)


@pytest.fixture(scope="module")
def _server_url() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture()
def server(_server_url: str) -> str:
    _Handler.counts = {}
    return _server_url


def test_fetch_success_and_redirect(server: str) -> None:
    assert fetch_url(f"{server}/ok", allow_private=True) == _Handler.png
    assert fetch_url(f"{server}/redirect-ok", allow_private=True) == _Handler.png
    img = load_image_ref(f"{server}/ok", root=None, allow_private=True)
    assert img.size == (6, 4)
    with pytest.raises(ImageError, match="redirects"):
        fetch_url(f"{server}/redirect-loop", allow_private=True)


def test_fetch_404_not_retried(server: str) -> None:
    with pytest.raises(ImageError, match=r"could not download URL.*404"):
        fetch_url(f"{server}/missing", allow_private=True, retries=3)
    assert _Handler.counts["/missing"] == 1


def test_fetch_retries_5xx(server: str) -> None:
    assert fetch_url(f"{server}/flaky", allow_private=True) == _Handler.png
    assert _Handler.counts["/flaky"] == 2


def test_fetch_timeout(server: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ImageError, match="timed out"):
        fetch_url(f"{server}/slow", allow_private=True, timeout=0.5, retries=1)
    assert time.perf_counter() - start < 2.5
    assert _Handler.counts["/slow"] == 2


@pytest.mark.parametrize("path", ["/big", "/big-unsized"])
def test_fetch_body_limit(server: str, path: str) -> None:
    with pytest.raises(PayloadTooLargeError):
        fetch_url(f"{server}{path}", allow_private=True, max_bytes=1000)


def test_private_hosts_refused_by_default(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(urls.ALLOW_PRIVATE_ENV, raising=False)
    with pytest.raises(InvalidInputError, match=r"private or reserved address 127\.0\.0\.1"):
        fetch_url(f"{server}/ok")
    assert _Handler.counts == {}
    for bad in ("file:///etc/passwd", "ftp://example.com/a.jpg", "gopher://x"):
        with pytest.raises(InvalidInputError, match="scheme"):
            fetch_url(bad)
    monkeypatch.setenv(urls.ALLOW_PRIVATE_ENV, "1")
    assert fetch_url(f"{server}/ok") == _Handler.png


def test_redirect_to_private_refused(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = urls.check_host

    def pretend_local_server_is_public(host: str, port: int, *, allow_private: bool) -> list[str]:
        if host == "127.0.0.1":
            return ["127.0.0.1"]
        return real(host, port, allow_private=allow_private)

    monkeypatch.setattr(urls, "check_host", pretend_local_server_is_public)
    assert fetch_url(f"{server}/ok", allow_private=False) == _Handler.png
    with pytest.raises(InvalidInputError, match=r"169\.254\.169\.254"):
        fetch_url(f"{server}/redirect-metadata", allow_private=False)


def test_forbidden_ip_classes() -> None:
    import ipaddress

    for addr in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1", "0.0.0.0",
                 "224.0.0.1", "::ffff:10.0.0.1", "100.64.0.1", "fe80::1"):  # fmt: skip
        assert urls.is_forbidden_ip(ipaddress.ip_address(addr)), addr
    assert not urls.is_forbidden_ip(ipaddress.ip_address("93.184.216.34"))


def test_fetch_many_order_and_isolation(server: str) -> None:
    refs = [f"{server}/ok?1", f"{server}/missing", "ftp://x/y.jpg", f"{server}/ok?2"]
    out = fetch_many(refs, concurrency=3, allow_private=True, retries=0)
    assert len(out) == 4
    assert out[0] == _Handler.png and out[3] == _Handler.png
    assert isinstance(out[1], ImageError) and isinstance(out[2], InvalidInputError)
    assert all(isinstance(o, (bytes, ShoplensError)) for o in out)
    assert fetch_many([]) == []
    assert images.fetch_many is fetch_many


def test_connect_time_guard(server: str) -> None:
    """The client itself refuses private addresses (DNS-rebinding defence)."""
    with (
        urls._make_client(1.0, allow_private=False) as client,
        pytest.raises(InvalidInputError, match="private or reserved"),
    ):
        client.get(f"{server}/ok")
    assert _Handler.counts == {}
