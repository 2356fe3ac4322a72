from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from shoplens.catalog.ingest import ingest_manifest
from shoplens.catalog.store import Catalog
from shoplens.index.build import build_image_index
from shoplens.search.dedupe import find_duplicates


def distinct_product(seed: int, size: int = 48) -> Image.Image:
    """A product unlike the others: three random shapes in random colours."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(180, 256, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = (int(v) for v in rng.integers(0, size - 16, 2))
        w, h = (int(v) for v in rng.integers(8, 24, 2))
        fill = tuple(int(c) for c in rng.integers(0, 200, 3))
        if rng.random() < 0.5:
            d.ellipse((x0, y0, x0 + w, y0 + h), fill=fill)
        else:
            d.rectangle((x0, y0, x0 + w, y0 + h), fill=fill)
    return img


def write_distinct_catalog(folder: Path, n: int) -> tuple[Path, list[dict[str, str]]]:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        distinct_product(i).save(folder / "img" / f"P{i:03d}.png")
        rows.append(
            {
                "sku": f"P{i:03d}",
                "title": f"product {i}",
                "category": "misc",
                "image": f"img/P{i:03d}.png",
            }
        )
    return folder / "catalog.csv", rows


def write_rows(manifest: Path, rows: list[dict[str, str]]) -> None:
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def alter(img: Image.Image, kind: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if kind == "crop":
        w, h = img.size
        return img.crop((1, 1, w - 1, h - 1)).resize((w, h))
    if kind == "brightness":
        return ImageEnhance.Brightness(img).enhance(1.15)
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-6, 7, (*img.size[::-1], 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def test_injected_altered_copies_are_found(home: Path, tmp_path: Path) -> None:
    manifest, rows = write_distinct_catalog(tmp_path, 40)
    kinds = ["crop", "brightness", "noise"]
    injected = {}
    for n, row in enumerate(list(rows[::3])):
        copy_sku = f"COPY-{row['sku']}"
        img = Image.open(tmp_path / row["image"]).convert("RGB")
        alter(img, kinds[n % 3], n).save(tmp_path / "img" / f"{copy_sku}.png")
        injected[copy_sku] = row["sku"]
        rows.append({**row, "sku": copy_sku, "image": f"img/{copy_sku}.png"})
    write_rows(manifest, rows)
    ingest_manifest(manifest, "dd")
    cat = Catalog.open("dd")
    build = build_image_index(cat, "test-tiny")
    report = find_duplicates(cat, build, threshold=0.95)
    truth = {frozenset((c, o)) for c, o in injected.items()}
    found = {frozenset((p.sku_a, p.sku_b)) for p in report.pairs}
    recall = len(truth & found) / len(truth)
    precision = len(truth & found) / max(1, len(found))
    assert recall >= 0.8, (recall, report.pairs)
    assert precision >= 0.8, (precision, report.pairs)
    assert all(len(c) >= 2 for c in report.clusters)


def test_identical_images_always_pair(home: Path, tmp_path: Path) -> None:
    manifest, rows = write_distinct_catalog(tmp_path, 10)
    rows.append({**rows[0], "sku": "TWIN", "title": "same photo, other sku"})
    write_rows(manifest, rows)
    ingest_manifest(manifest, "twins")
    cat = Catalog.open("twins")
    report = find_duplicates(cat, build_image_index(cat, "test-tiny"), threshold=0.999)
    pair = next(p for p in report.pairs if {p.sku_a, p.sku_b} == {"P000", "TWIN"})
    assert pair.reason == "identical image" and pair.similarity == 1.0
    assert ["P000", "TWIN"] in report.clusters
