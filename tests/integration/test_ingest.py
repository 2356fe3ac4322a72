from __future__ import annotations

import csv
import gzip
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from shoplens.catalog.ingest import ingest_fashion_mnist, ingest_manifest
from shoplens.catalog.store import Catalog
from shoplens.errors import InvalidInputError

from ..conftest import make_product_image


def append_rows(manifest: Path, rows: list[dict[str, str]]) -> None:
    with manifest.open("a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["sku", "title", "category", "image", "color", "size"])
        w.writerows(rows)


def test_ingest_manifest_and_reingest_is_idempotent(home: Path, catalog_dir: Path) -> None:
    report = ingest_manifest(catalog_dir, "shop")
    assert (report.added, report.updated, report.rejected) == (24, 0, [])
    cat = Catalog.open("shop")
    p = cat.get("SKU-000")
    assert p.category == "Red circle" and p.attributes == {"color": "red", "size": "small"}
    assert cat.load_image(p).size == (32, 32)
    assert len(p.phash) == 16
    again = ingest_manifest(catalog_dir, "shop")
    assert (again.added, again.updated, again.unchanged) == (0, 0, 24)
    assert Catalog.open("shop").count() == 24


def test_bad_rows_are_reported_with_line_numbers_and_good_rows_kept(
    home: Path, catalog_dir: Path
) -> None:
    (catalog_dir.parent / "img" / "text.jpg").write_text("this is not an image")
    (catalog_dir.parent / "img" / "trunc.png").write_bytes(
        (catalog_dir.parent / "img" / "SKU-000.png").read_bytes()[:60]
    )
    append_rows(
        catalog_dir,
        [
            {"sku": "BAD-1", "title": "t", "category": "c", "image": "img/text.jpg"},
            {"sku": "BAD-2", "title": "t", "category": "c", "image": "img/missing.png"},
            {"sku": "BAD-3", "title": "t", "category": "c", "image": "../../etc/passwd"},
            {"sku": "BAD-4", "title": "t", "category": "c", "image": "img/trunc.png"},
            {"sku": "SKU-000", "title": "dup", "category": "c", "image": "img/SKU-000.png"},
        ],
    )
    report = ingest_manifest(catalog_dir, "shop")
    assert report.added == 24
    lines = {e.line: e for e in report.rejected}
    assert sorted(lines) == [26, 27, 28, 29, 30]
    assert "not an image" in lines[26].message.lower()
    assert "escapes" in lines[28].message
    assert "duplicate" in lines[30].message
    rejects = [json.loads(x) for x in Path(report.rejects_file or "").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [26, 27, 28, 29, 30]


def test_strict_mode_stores_nothing(home: Path, catalog_dir: Path) -> None:
    append_rows(catalog_dir, [{"sku": "X", "title": "t", "category": "c", "image": "img/no.png"}])
    with pytest.raises(InvalidInputError, match="strict"):
        ingest_manifest(catalog_dir, "shop", strict=True)
    assert Catalog.create("shop").count() == 0


def test_failed_ingest_keeps_existing_catalogue(
    home: Path, catalog_dir: Path, tmp_path: Path
) -> None:
    ingest_manifest(catalog_dir, "shop")
    before = Catalog.open("shop").version()
    bad = tmp_path / "bad.csv"
    bad.write_text("sku,title,category,image\nA,t,c,nothing.png\n")
    with pytest.raises(InvalidInputError, match="no valid products"):
        ingest_manifest(bad, "shop")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InvalidInputError):
        ingest_manifest(empty, "shop")
    cat = Catalog.open("shop")
    assert cat.count() == 24 and cat.version() == before


class _Handler(http.server.BaseHTTPRequestHandler):
    images: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        body = self.images.get(self.path)
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def image_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    import io

    buf = io.BytesIO()
    make_product_image("Blue square", 1).save(buf, format="PNG")
    _Handler.images = {"/a.png": buf.getvalue(), "/text.png": b"hello"}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("SHOPLENS_ALLOW_PRIVATE_URLS", "1")
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_ingest_from_urls(home: Path, tmp_path: Path, image_server: str) -> None:
    manifest = tmp_path / "urls.jsonl"
    rows = [
        {
            "sku": "U1",
            "title": "Blue square from the web",
            "category": "Blue square",
            "image": f"{image_server}/a.png",
            "attributes": {"brand": "acme"},
        },
        {"sku": "U2", "title": "missing", "category": "x", "image": f"{image_server}/nope.png"},
        {
            "sku": "U3",
            "title": "not an image",
            "category": "x",
            "image": f"{image_server}/text.png",
        },
    ]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = ingest_manifest(manifest, "web", timeout=2, retries=0)
    assert report.added == 1
    assert [e.sku for e in report.rejected] == ["U2", "U3"]
    p = Catalog.open("web").get("U1")
    assert p.attributes == {"brand": "acme"} and p.image_source.endswith("/a.png")


def test_url_to_loopback_refused_by_default(
    home: Path, tmp_path: Path, image_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHOPLENS_ALLOW_PRIVATE_URLS")
    manifest = tmp_path / "urls.csv"
    manifest.write_text(f"sku,title,category,image\nU1,t,c,{image_server}/a.png\n")
    with pytest.raises(InvalidInputError, match="no valid products"):
        ingest_manifest(manifest, "web", timeout=2, retries=0)


def _idx_gz(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_ingest_from_a_generated_copy(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loader reads IDX files, checks sha256, and ingests with stable skus and titles."""
    import shoplens.data.fashion_mnist as fm

    rng = np.random.default_rng(0)
    files = {}
    for prefix, n in (("train", 6), ("t10k", 4)):
        files[f"{prefix}-images-idx3-ubyte.gz"] = _idx_gz(rng.integers(0, 256, (n, 28, 28)))
        files[f"{prefix}-labels-idx1-ubyte.gz"] = _idx_gz(np.arange(n) % 10)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    monkeypatch.setattr(fm, "FILES", {n: hashlib.sha256(d).hexdigest() for n, d in files.items()})
    report = ingest_fashion_mnist("fm", data_dir=tmp_path)
    assert report.added == 10
    cat = Catalog.open("fm")
    p = cat.get("fm-test-00003")
    assert p.category == "Dress" and p.attributes["split"] == "test"
    assert p.title == "Dress (Fashion-MNIST test photo)"
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(_idx_gz(np.zeros(6)))
    with pytest.raises(InvalidInputError, match="sha256"):
        fm.load_fashion_mnist("train", tmp_path)
