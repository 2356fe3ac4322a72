"""Hostile payloads for :mod:`shoplens.reliability.hostile`: images, URLs and manifests.

Every payload says what a correct service does with it: ``"reject"`` (a 4xx / an input
error), ``"accept"`` (legitimately usable, e.g. a polyglot whose image part decodes) or
``"either"`` (acceptance is a fair choice either way; ``why`` says why).
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image, ImageDraw

Expect = Literal["reject", "accept", "either"]

__all__ = [
    "Expect",
    "ImagePayload",
    "ManifestCase",
    "UrlCase",
    "image_payloads",
    "manifest_cases",
    "png_dims",
    "sample_image",
    "url_cases",
]


@dataclass(frozen=True)
class ImagePayload:
    """An upload: file bytes, the name and content type it claims, and the expectation."""

    name: str
    data: bytes
    filename: str
    content_type: str
    expect: Expect
    why: str = ""


# ---- image builders ------------------------------------------------------------------------


def sample_image(seed: int = 0, size: int = 32, mode: str = "RGB") -> Image.Image:
    """A small product-like picture (a coloured disc on a light background)."""
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), (245, 245, 245))
    colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    m = size // 5
    ImageDraw.Draw(img).ellipse((m, m, size - m, size - m), fill=colour)
    return img.convert(mode) if mode != "RGB" else img


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    """A PNG chunk with a correct CRC."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_dims(width: int, height: int, idat: bytes | None = None, ctype: int = 2) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (the pixel data need not match)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, ctype, 0, 0, 0)
    idat = idat if idat is not None else zlib.compress(b"\0" * 64)
    return PNG_MAGIC + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_zero_bomb(side: int = 8000) -> bytes:
    """A real decompression bomb: ``side``^2 grey pixels of zeros, deflated to a few KiB."""
    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    parts = [comp.compress(row * 500) for _ in range(side // 500)]
    parts.append(comp.flush())
    return png_dims(side, side, b"".join(parts), ctype=0)


def gif_dims(width: int, height: int) -> bytes:
    """A GIF whose screen and first frame declare ``width`` x ``height``."""
    screen = struct.pack("<HHBBB", width, height, 0, 0, 0)
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return b"GIF89a" + screen + frame + b"\x02\x02\x44\x01\x00;"


def tiff_dims(width: int, height: int) -> bytes:
    """A little-endian TIFF whose tags declare ``width`` x ``height`` and one strip."""
    tags = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8),
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, 1),
    ]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags)
    return b"II*\x00" + struct.pack("<I", 9) + b"\0" + ifd + b"\0\0\0\0"


def webp_dims(width: int, height: int) -> bytes:
    """An extended WebP (VP8X) declaring a ``width`` x ``height`` canvas, no image data."""
    w, h = max(1, min(width, 2**24)) - 1, max(1, min(height, 2**24)) - 1
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0" + w.to_bytes(3, "little")
    body = b"WEBP" + vp8x + h.to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def jpeg_dims(width: int, height: int) -> bytes:
    """A baseline JPEG of 8x8 pixels whose frame header claims ``width`` x ``height``."""
    data = bytearray(encode(sample_image(1, 8), "JPEG"))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, min(height, 65535), min(width, 65535))
    return bytes(data)


def bmp_dims(width: int, height: int) -> bytes:
    """A 2x2 BMP whose info header claims ``width`` x ``height``."""
    data = bytearray(encode(sample_image(2, 2), "BMP"))
    struct.pack_into("<ii", data, 18, width, height)
    return bytes(data)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def animated_gif(frames: int, size: int = 16) -> bytes:
    imgs = [sample_image(i, size) for i in range(min(frames, 8))]
    seq = [imgs[i % len(imgs)] for i in range(frames)]
    return encode(seq[0], "GIF", save_all=True, append_images=seq[1:], duration=1, loop=0)


def animated_png(frames: int, size: int = 16) -> bytes:
    seq = [sample_image(i, size) for i in range(frames)]
    return encode(seq[0], "PNG", save_all=True, append_images=seq[1:], duration=1)


def png_with_chunk(kind: bytes, payload: bytes) -> bytes:
    """A valid PNG with an extra ancillary chunk before IEND."""
    base = encode(sample_image(3), "PNG")
    return base[:-12] + _chunk(kind, payload) + base[-12:]


def _zip_bytes() -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("payload.sh", "#!/bin/sh\necho pwned\n")
    return buf.getvalue()


SVG = (
    b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32"><text>&xxe;</text>'
    b"<script>alert(1)</script></svg>"
)
HTML = b"<!doctype html><html><body><script>fetch('/v1/events')</script></body></html>"
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n(/etc/passwd) run\n"


def image_payloads(seed: int = 0) -> list[ImagePayload]:
    """The hostile (and legitimate-but-odd) image uploads, seeded."""
    rng = random.Random(seed)
    out: list[ImagePayload] = []

    def add(name: str, data: bytes, expect: Expect, why: str = "", ext: str = "png") -> None:
        ctype = f"image/{'jpeg' if ext == 'jpg' else ext}"
        out.append(ImagePayload(name, data, f"{name}.{ext}", ctype, expect, why))

    # Decompression bombs: huge declared sizes, refused from the header.
    for w, h in ((100_000, 100_000), (65_535, 65_535), (7_000, 7_000), (2**31 - 1, 1)):
        add(f"bomb-png-{w}x{h}", png_dims(w, h), "reject")
        add(f"bomb-tiff-{w}x{h}", tiff_dims(w, h), "reject", ext="tiff")
        add(f"bomb-bmp-{w}x{h}", bmp_dims(w, h), "reject", ext="bmp")
        if w < 2**16:
            add(f"bomb-gif-{w}x{h}", gif_dims(w, h), "reject", ext="gif")
            add(f"bomb-jpeg-{w}x{h}", jpeg_dims(w, h), "reject", ext="jpg")
            add(f"bomb-webp-{w}x{h}", webp_dims(w, h), "reject", ext="webp")
    add("bomb-png-real-8000x8000", png_zero_bomb(), "reject")
    add("png-zero-width", png_dims(0, 5), "reject")
    # Animated: only the first frame is decoded.
    add("animated-gif-2000-frames", animated_gif(2000), "accept", "first frame only", "gif")
    add("animated-png-200-frames", animated_png(200), "accept", "first frame only")
    # Legitimate colour modes and bit depths.
    for mode, fmt, ext in (
        ("CMYK", "JPEG", "jpg"),
        ("L", "JPEG", "jpg"),
        ("I;16", "PNG", "png"),
        ("P", "PNG", "png"),
        ("LA", "PNG", "png"),
        ("RGBA", "PNG", "png"),
        ("1", "PNG", "png"),
        ("RGBA", "WEBP", "webp"),
        ("P", "GIF", "gif"),
        ("RGB", "BMP", "bmp"),
        ("CMYK", "TIFF", "tiff"),
        ("I", "TIFF", "tiff"),
        ("F", "TIFF", "tiff"),
        ("I;16", "TIFF", "tiff"),
        ("LAB", "TIFF", "tiff"),
        ("YCbCr", "TIFF", "tiff"),
    ):
        img = sample_image(5, 24, mode) if mode not in ("I;16", "I", "F") else _deep(mode)
        add(f"mode-{mode.replace(';', '')}-{fmt}", encode(img, fmt), "accept", ext=ext)
    pal = sample_image(6, 24, "P")
    add("mode-P-transparency", encode(pal, "PNG", transparency=0), "accept")
    # EXIF orientation, valid and not.
    for orient in (1, 2, 3, 4, 5, 6, 7, 8, 0, 9, 65535):
        data = encode(sample_image(7, 24), "JPEG", exif=_exif(orient))
        add(f"exif-orientation-{orient}", data, "accept", "bad tags are ignored", "jpg")
    jpeg = encode(sample_image(8, 24), "JPEG")
    broken_exif = jpeg[:2] + b"\xff\xe1\x00\x20Exif\x00\x00" + os.urandom(0)[:0] + b"\x11" * 24
    add("exif-broken-block", broken_exif + jpeg[2:], "either", "a garbage APP1 block", "jpg")
    # Huge metadata.
    add("png-text-150k", png_with_chunk(b"tEXt", b"Comment\0" + b"A" * 150_000), "accept")
    ztxt_bomb = b"Comment\0\0" + zlib.compress(b"A" * 5_000_000, 9)
    add("png-ztxt-bomb", png_with_chunk(b"zTXt", ztxt_bomb), "either", "text chunk bomb")
    add("png-iccp-junk", png_with_chunk(b"iCCP", b"icc\0\0" + b"\x78" * 4000), "either")
    com = b"".join(b"\xff\xfe\xff\xf0" + bytes([rng.randrange(256)]) * 65_518 for _ in range(3))
    add("jpeg-200k-comments", jpeg[:2] + com + jpeg[2:], "accept", ext="jpg")
    add("png-unknown-critical-chunk", png_with_chunk(b"ZZZZ", b"x" * 100), "either")
    # Empty and tiny.
    add("empty", b"", "reject")
    add("one-byte", b"\x89", "reject")
    add("whitespace", b" \n\t ", "reject")
    add("png-magic-only", PNG_MAGIC, "reject")
    # Disguised documents and formats outside the allow-list.
    for name, data in (("svg", SVG), ("html", HTML), ("pdf", PDF), ("eps", EPS)):
        add(f"disguised-{name}-as-png", data, "reject")
    for fmt in ("ICO", "PPM", "TGA", "PCX", "XBM", "IM", "SGI", "DDS", "QOI"):
        img = sample_image(9, 16, "1" if fmt == "XBM" else "RGB")
        add(f"format-{fmt.lower()}", encode(img, fmt), "reject", "not in the allow-list")
    add("ico-with-png-inside", encode(sample_image(9, 16), "ICO", sizes=[(16, 16)]), "reject")
    # Polyglots: the image part decodes; what follows it is dropped by re-encoding.
    png = encode(sample_image(10, 24), "PNG")
    gif = encode(sample_image(11, 24, "P"), "GIF")
    add("polyglot-png-zip", png + _zip_bytes(), "accept", "trailing zip is ignored")
    add("polyglot-png-html", png + HTML, "accept", "trailing HTML is ignored")
    add("polyglot-gif-js", gif[:-1] + b"*/=1;alert(1)//;", "either", "GIF trailer replaced")
    add("polyglot-jpeg-php", jpeg + b"<?php system($_GET['c']); ?>", "accept", ext="jpg")
    add("polyglot-zip-then-png", _zip_bytes() + png, "reject", "not an image at the start")
    add("polyglot-html-then-png", HTML + png, "reject")
    # Wrong extension / content type: the content decides.
    add("png-named-jpg", png, "accept", "format is sniffed", "jpg")
    out.append(
        ImagePayload("png-named-exe", png, "photo.exe", "application/x-msdownload", "accept")
    )
    out.append(ImagePayload("text-named-png", b"hello world", "a.png", "image/png", "reject"))
    why = "a part without a file name is a form field (what browsers send for no file)"
    out.append(ImagePayload("no-filename", png, "", "application/octet-stream", "either", why))
    # Truncated files, cut inside the pixel data.
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("TIFF", "tiff")):
        data = encode(sample_image(12, 48), fmt)
        for frac in (0.05, 0.3, 0.6, 0.85):
            add(f"truncated-{ext}-{int(frac * 100)}", data[: int(len(data) * frac)], "reject")
    for fmt, ext in (("GIF", "gif"), ("BMP", "bmp")):
        data = encode(sample_image(12, 48), fmt)
        for frac in (0.05, 0.3, 0.6):
            why = "decoders may pad a short last scan line" if frac > 0.1 else ""
            add(f"truncated-{ext}-{int(frac * 100)}", data[: int(len(data) * frac)], "either", why)
    # Corrupt: flipped bytes in the body (may still decode) and in the signature (cannot).
    for i in range(12):
        fmt, ext = (("PNG", "png"), ("JPEG", "jpg"), ("GIF", "gif"))[i % 3]
        flipped = bytearray(encode(sample_image(20 + i, 32), fmt))
        for _ in range(1 + i):
            pos = rng.randrange(len(flipped) // 3, len(flipped))
            flipped[pos] = rng.randrange(256)
        add(f"corrupt-body-{ext}-{i}", bytes(flipped), "either", "corrupt but maybe decodable", ext)
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("GIF", "gif"), ("WEBP", "webp")):
        magic = bytearray(encode(sample_image(30, 32), fmt))
        magic[1] ^= 0xFF
        add(f"corrupt-magic-{ext}", bytes(magic), "reject", ext=ext)
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # IHDR CRC
    add("png-bad-ihdr-crc", bytes(bad_crc), "reject")
    add("random-bytes", bytes(rng.randrange(256) for _ in range(2048)), "reject")
    return out


def _deep(mode: str) -> Image.Image:
    """A 24x24 gradient in a 16/32-bit integer or float mode."""
    img = Image.linear_gradient("L").resize((24, 24))
    if mode == "F":
        return img.convert("F")
    wide = Image.eval(img.convert("I"), lambda v: v * 257)
    return wide if mode == "I" else wide.convert("I;16")


# ---- URLs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UrlCase:
    """A URL for an image-URL field; ``forbidden`` URLs must never be fetched."""

    name: str
    url: str
    forbidden: bool = True


def url_cases(port: int, redirect_base: str | None = None) -> list[UrlCase]:
    """Hostile image URLs aimed at a sentinel server on ``127.0.0.1:port``.

    ``redirect_base`` is a URL whose host the fetcher may reach and which answers
    ``?to=URL`` with a redirect (the redirect target must still be refused).
    """
    p = port
    loopback = [
        f"http://127.0.0.1:{p}/a.png",
        f"http://127.1:{p}/a.png",
        f"http://127.0.1:{p}/a.png",
        f"http://0x7f000001:{p}/a.png",
        f"http://0x7f.0.0.1:{p}/a.png",
        f"http://2130706433:{p}/a.png",
        f"http://017700000001:{p}/a.png",
        f"http://0177.0.0.1:{p}/a.png",
        f"http://[::1]:{p}/a.png",
        f"http://[::ffff:127.0.0.1]:{p}/a.png",
        f"http://[::ffff:7f00:1]:{p}/a.png",
        f"http://[0:0:0:0:0:ffff:127.0.0.1]:{p}/a.png",
        f"http://0.0.0.0:{p}/a.png",
        f"http://0:{p}/a.png",
        f"http://[::]:{p}/a.png",
        f"http://localhost:{p}/a.png",
        f"http://LOCALHOST:{p}/a.png",
        f"http://localhost.:{p}/a.png",
        f"http://127.0.0.1.:{p}/a.png",
        f"https://127.0.0.1:{p}/a.png",
        f"http://user:pass@127.0.0.1:{p}/a.png",
        f"http://example.com@127.0.0.1:{p}/a.png",
        f"http://127.0.0.1:{p}#@example.com/a.png",
        f"http://127.0.0.1:{p}?@example.com/a.png",
        f"http://%31%32%37.0.0.1:{p}/a.png",
        f"http://127.0.0.1:{p}/" + "a" * 10_000 + ".png",
        f"HTTP://127.0.0.1:{p}/a.png",
        f" http://127.0.0.1:{p}/a.png",
    ]
    private = [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://2852039166/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[fe80::1]/a.png",
        "http://10.0.0.1/a.png",
        "http://172.16.0.1/a.png",
        "http://192.168.1.1/a.png",
        "http://100.64.0.1/a.png",
        "http://[fc00::1]/a.png",
        "http://224.0.0.1/a.png",
        "http://255.255.255.255/a.png",
        "http://240.0.0.1/a.png",
        "http://198.18.0.1/a.png",
    ]
    schemes = [
        "file:///etc/passwd",
        "file://localhost/etc/passwd",
        f"gopher://127.0.0.1:{p}/_GET%20/%20HTTP/1.0",
        f"ftp://127.0.0.1:{p}/a.png",
        f"dict://127.0.0.1:{p}/info",
        "ldap://127.0.0.1/",
        "jar:http://127.0.0.1/a.jar!/a.png",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        f"ws://127.0.0.1:{p}/",
        "http:///a.png",
        "http://:80/a.png",
        "http://127.0.0.1:99999/a.png",
        "http://[::1/a.png",
        "http://" + "a" * 300 + ".example/a.png",
        "http://exa mple.com/a.png",
    ]
    cases = [UrlCase(f"loopback-{i}", u) for i, u in enumerate(loopback)]
    cases += [UrlCase(f"private-{i}", u) for i, u in enumerate(private)]
    cases += [UrlCase(f"scheme-{i}", u) for i, u in enumerate(schemes)]
    if redirect_base:
        targets = [
            f"http://127.0.0.1:{p}/a.png",
            f"http://localhost:{p}/a.png",
            f"http://[::1]:{p}/a.png",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/a.png",
            "file:///etc/passwd",
            f"gopher://127.0.0.1:{p}/_x",
        ]
        for i, target in enumerate(targets):
            from urllib.parse import quote

            cases.append(UrlCase(f"redirect-{i}", f"{redirect_base}?to={quote(target, safe='')}"))
        cases.append(UrlCase("redirect-chain", f"{redirect_base}?hops=20", forbidden=False))
    return cases


# ---- manifests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestCase:
    """A manifest file written under a folder, and what ingesting it must do.

    ``expect``: "reject" (the whole ingest fails with an input error, nothing stored),
    "partial" (the hostile rows are rejected with their lines, the good ones stored) or
    "accept" (stored as given) or "either". ``hostile_skus`` must never end up in the catalogue.
    """

    name: str
    path: Path
    expect: Literal["reject", "partial", "accept", "either"]
    hostile_skus: tuple[str, ...] = ()
    why: str = ""


HEADER = "sku,title,category,image\n"


def manifest_cases(folder: Path, outside: Path, seed: int = 0) -> list[ManifestCase]:
    """Write the hostile manifests into ``folder``; ``outside`` is a folder next to it.

    ``folder/img/ok.png`` is a good image; ``outside/secret.png`` an image the manifests
    must not be able to reach.
    """
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "img").mkdir(exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    ok_png = encode(sample_image(40), "PNG")
    (folder / "img" / "ok.png").write_bytes(ok_png)
    secret = outside / "secret.png"
    secret.write_bytes(encode(sample_image(41), "PNG"))
    link = folder / "img" / "link.png"
    if not link.exists():
        os.symlink(secret, link)
    linkdir = folder / "linkdir"
    if not linkdir.exists():
        os.symlink(outside, linkdir)
    cases: list[ManifestCase] = []
    counter = iter(range(10_000))

    def write(name: str, data: bytes | str, ext: str = "csv") -> Path:
        path = folder / f"{next(counter):03d}-{name}.{ext}"
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        return path

    def csv_one(name: str, image: str, expect: str = "reject") -> None:
        sku = f"H-{name}"
        path = write(name, HEADER + f"{sku},Hostile,Cat,{image}\n")
        cases.append(ManifestCase(name, path, expect, (sku,)))  # type: ignore[arg-type]

    rel_secret = os.path.relpath(secret, folder)
    for i, image in enumerate(
        (
            rel_secret,
            "../" * 12 + "etc/passwd",
            "img/../../" + os.path.basename(outside) + "/secret.png",
            str(secret),
            "/etc/passwd",
            "/dev/zero",
            "/proc/self/environ",
            "img/link.png",
            "linkdir/secret.png",
            "~/.ssh/id_rsa",
            "..%2f..%2fetc%2fpasswd",
            "file:///etc/passwd",
            "gopher://127.0.0.1/x",
            "C:\\Windows\\win.ini",
            "\\\\server\\share\\a.png",
            "img/ok.png\0.jpg",
            "img",
            "",
        )
    ):
        csv_one(f"path-{i}", json.dumps(image) if "," in image else image)
    # Good rows mixed with hostile ones: the good ones stay, the hostile ones are refused.
    mixed = HEADER + "H-good-1,Good,Cat,img/ok.png\n" + f"H-bad-1,Bad,Cat,{rel_secret}\n"
    cases.append(ManifestCase("mixed-traversal", write("mixed", mixed), "partial", ("H-bad-1",)))
    # Malformed CSV.
    for name, text in (
        ("unterminated-quote", HEADER + 'H-q1,"never closed,Cat,img/ok.png\n'),
        ("header-only", HEADER),
        ("no-header", "H-n1,Title,Cat,img/ok.png\n"),
        ("duplicate-column", "sku,sku,title,category,image\nH-d1,H-d1,T,C,img/ok.png\n"),
        ("missing-column", "sku,title,image\nH-m1,T,img/ok.png\n"),
        ("bad-column-name", 'sku,title,category,image,"=cmd()"\nH-b1,T,C,img/ok.png,x\n'),
        ("wrong-field-count", HEADER + "H-w1,T\nH-w2,T,C,img/ok.png,extra,extra\n"),
        ("empty-file", ""),
        ("blank-lines", "\n\n\n"),
        ("binary-garbage", bytes(rng.randrange(256) for _ in range(4096)).decode("latin-1")),
    ):
        skus = tuple(
            s for s in ("H-q1", "H-n1", "H-d1", "H-m1", "H-b1", "H-w1", "H-w2") if s in text
        )
        cases.append(ManifestCase(f"csv-{name}", write(name, text), "reject", skus))
    # Huge fields, NUL bytes and control characters.
    for name, row in (
        ("huge-sku", "H" * 10_000 + ",T,C,img/ok.png"),
        ("huge-title", "H-ht,{},C,img/ok.png".format("T" * 2_000_000)),
        ("huge-category", "H-hc,T,{},img/ok.png".format("C" * 20_000)),
        ("nul-in-sku", "H-nul\0x,T,C,img/ok.png"),
        ("newline-in-sku", '"H-nl\nx",T,C,img/ok.png'),
        ("slash-in-sku", "H/../x,T,C,img/ok.png"),
        ("space-sku", " H-sp ,T,C,img/ok.png"),
        ("empty-sku", ",T,C,img/ok.png"),
        ("empty-title", "H-et,,C,img/ok.png"),
    ):
        sku = row.split(",")[0].strip('"')
        cases.append(
            ManifestCase(f"field-{name}", write(name, HEADER + row + "\n"), "reject", (sku,))
        )
    nul_file = HEADER.encode() + b"H-nf,T\x00itle,C,img/ok.png\n"
    cases.append(ManifestCase("nul-byte-file", write("nul-file", nul_file), "either", ()))
    # Encodings.
    rows = HEADER + "H-enc,Caf\u00e9 \u2603,C,img/ok.png\n"
    for name, data, expect in (
        ("utf16-le-bom", rows.encode("utf-16"), "reject"),
        ("utf16-be", rows.encode("utf-16-be"), "reject"),
        ("latin1", rows.encode("utf-8").replace("\u00e9".encode(), b"\xe9"), "reject"),
        ("utf8-bom", b"\xef\xbb\xbf" + rows.encode("utf-8"), "accept"),
        ("utf32", rows.encode("utf-32"), "reject"),
    ):
        cases.append(ManifestCase(f"enc-{name}", write(name, data), expect, ()))  # type: ignore[arg-type]
    # CSV injection cells: stored verbatim as text (escaping them is an export's job).
    inject = HEADER + "".join(
        f"H-inj-{i},{cell},C,img/ok.png\n"
        for i, cell in enumerate(("=1+1", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\t=x"))
    )
    cases.append(ManifestCase("csv-injection", write("inject", inject), "accept", ()))
    # JSON / JSON lines.
    for name, text, ext in (
        (
            "json-truncated",
            '[{"sku": "H-j1", "title": "T", "category": "C", "image": "img/ok',
            "json",
        ),
        ("json-object", '{"sku": "H-j2"}', "json"),
        (
            "json-trailing",
            '[{"sku":"H-j3","title":"T","category":"C","image":"img/ok.png"}] x',
            "json",
        ),
        ("json-deep", "[" * 100_000 + "]" * 100_000, "json"),
        (
            "json-deep-in-row",
            '[{"sku":"H-j4","title":"T","category":"C","image":"img/ok.png","a":'
            + "[" * 50_000
            + "]" * 50_000
            + "}]",
            "json",
        ),
        ("json-nan", '[{"sku":NaN,"title":Infinity,"category":"C","image":"img/ok.png"}]', "json"),
        (
            "json-huge-number",
            '[{"sku":' + "9" * 5000 + ',"title":"T","category":"C","image":"img/ok.png"}]',
            "json",
        ),
        ("json-wrong-types", '[{"sku":["H"],"title":{},"category":true,"image":null}]', "json"),
        (
            "json-attributes-array",
            '[{"sku":"H-j5","title":"T","category":"C","image":"img/ok.png","attributes":[1]}]',
            "json",
        ),
        (
            "json-bad-attr-name",
            '[{"sku":"H-j6","title":"T","category":"C","image":"img/ok.png","<script>":1}]',
            "json",
        ),
        ("jsonl-garbage", '{"sku":"H-l1"\nnot json\n[1,2]\n' + "[" * 100_000 + "\n", "jsonl"),
        (
            "jsonl-invalid-utf8",
            b'{"sku":"H-l2","title":"\xff\xfe","category":"C","image":"img/ok.png"}\n'.decode(
                "latin-1"
            ),
            "jsonl",
        ),
        ("json-empty-array", "[]", "json"),
        (
            "json-dup-keys",
            '[{"sku":"H-j7","sku":"../x","title":"T","category":"C","image":"img/ok.png"}]',
            "json",
        ),
    ):
        content = text.encode("latin-1") if name == "jsonl-invalid-utf8" else text
        skus = tuple(
            f"H-{x}"
            for x in ("j1", "j2", "j3", "j4", "j5", "j6", "j7", "l1", "l2")
            if f'"H-{x}"' in text
        )
        cases.append(ManifestCase(name, write(name, content, ext), "reject", skus))
    # Unsupported manifest types and odd files.
    cases.append(ManifestCase("xml-manifest", write("xml", "<products/>", "xml"), "reject"))
    cases.append(ManifestCase("no-such-file", folder / "does-not-exist.csv", "reject"))
    fifo = folder / "fifo.csv"
    if not fifo.exists():
        os.mkfifo(fifo)
    cases.append(ManifestCase("fifo", fifo, "reject", why="not a regular file"))
    return cases
