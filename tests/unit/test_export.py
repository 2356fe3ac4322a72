"""ONNX export: parity with PyTorch, dynamic batch, int8, onnx:/onnx-int8: encoders, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import shoplens.export.backends  # noqa: F401  (registers onnx: and onnx-int8:)
from shoplens.errors import InvalidInputError, NotFoundError
from shoplens.export.backends import EXPORT_JSON, INT8_FILES, OnnxEncoder
from shoplens.export.cli import export_app
from shoplens.export.onnx import TOLERANCE, export_onnx, measure_export
from shoplens.models.io import save_model
from shoplens.registry import create_encoder, create_model, get_encoder

from ..conftest import CATEGORIES, make_product_image, write_catalog


def _images(per_category: int, seed: int = 0) -> tuple[list[Image.Image], list[str]]:
    images, labels = [], []
    for c, category in enumerate(CATEGORIES):
        for i in range(per_category):
            images.append(make_product_image(category, seed=1000 * seed + 100 * c + i))
            labels.append(category)
    return images, labels


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    save_model(create_model("clip-test-tiny", class_names=list(CATEGORIES)), folder)
    return folder


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image-only model (no text tower: a fast export)."""
    folder = tmp_path_factory.mktemp("classifier")
    save_model(create_model("resnet-test-tiny"), folder)
    return folder


@pytest.fixture(scope="module")
def export_dir(clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export")
    calibration, _ = _images(8, seed=1)
    export_onnx(
        f"trained:{clip_dir}", out, int8=["dynamic", "static"], calibration_images=calibration
    )
    return out


def _unit_rows(x: np.ndarray) -> bool:
    return bool(np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5))


def test_export_writes_checked_files(export_dir: Path, clip_dir: Path) -> None:
    meta = json.loads((export_dir / EXPORT_JSON).read_text())
    assert meta["source"] == f"trained:{clip_dir.resolve()}" and meta["opset"] == 17
    assert meta["dim"] == 16 and meta["versions"]["onnxruntime"] and meta["created_at"]
    files = meta["files"]
    assert set(files) == {"image.onnx", "text.onnx", *INT8_FILES.values()}
    for name in ("image.onnx", "text.onnx"):
        assert files[name]["parity"]["max_abs_diff"] < TOLERANCE
        assert files[name]["parity"]["tolerance"] == TOLERANCE
    for name in INT8_FILES.values():
        assert (export_dir / name).is_file() and files[name]["precision"] == "int8"
    assert files["image.int8-static.onnx"]["quantization"]["int8_ops"] > 0
    assert meta["text"]["tokenizer"]["type"] == "hash-words" and meta["text_skipped"] is None
    # TorchScript bakes the sequence length into nn.MultiheadAttention: dynamo takes over
    assert files["text.onnx"]["exporter"] == "dynamo"


def test_dynamic_batch_matches_torch(export_dir: Path, clip_dir: Path) -> None:
    torch_enc = create_encoder(f"trained:{clip_dir}")
    enc = OnnxEncoder(export_dir)
    images, _ = _images(2)
    ref = torch_enc.encode_images(images[:7])
    for n in (1, 7):
        out = enc.run_images(enc._preprocess(images[:n]))  # raw graph output, batch n
        assert out.shape == (n, 16)
        assert np.abs(out - ref[:n]).max() < TOLERANCE
    texts = ["red circle", "a blue square product", ""]
    assert np.abs(enc.encode_texts(texts) - torch_enc.encode_texts(texts)).max() < TOLERANCE


def test_int8_models_stay_close_to_fp32(export_dir: Path) -> None:
    images, _ = _images(3, seed=2)
    fp32 = OnnxEncoder(export_dir).encode_images(images)
    for name in INT8_FILES.values():
        q = OnnxEncoder(export_dir, "int8", image_file=name).encode_images(images)
        assert q.shape == fp32.shape and _unit_rows(q)
        assert np.sum(q * fp32, axis=1).min() > 0.95, name
    assert OnnxEncoder(export_dir, "int8").image_file == INT8_FILES["static"]


def test_onnx_specs_encode_and_build_an_index(
    export_dir: Path, home: Path, catalog_dir: Path
) -> None:
    from shoplens.catalog.ingest import ingest_manifest
    from shoplens.catalog.store import Catalog
    from shoplens.index.build import build_indexes

    images, _ = _images(2)
    for spec in (f"onnx:{export_dir}", f"onnx-int8:{export_dir}"):
        enc: Any = get_encoder(spec)
        assert enc.name == spec and enc.shared_space and enc.dim == 16
        emb = enc.encode_images(images)
        assert emb.shape == (len(images), 16) and emb.dtype == np.float32 and _unit_rows(emb)
        txt = enc.encode_texts(["red circle", "red circle", "stripes"])
        assert txt.shape == (3, 16) and _unit_rows(txt) and np.allclose(txt[0], txt[1])
        assert enc.encode_images([]).shape == (0, 16)
    ingest_manifest(catalog_dir, "onnx")
    with Catalog.open("onnx") as cat:
        report = build_indexes(cat, f"onnx-int8:{export_dir}", text_encoder=f"onnx:{export_dir}")
        assert report.image["count"] == cat.count() and report.image["dim"] == 16
        assert report.text is not None and report.text["dim"] == 16


def test_measure_export_stores_accuracy(export_dir: Path) -> None:
    images, labels = _images(6, seed=3)
    acc = measure_export(export_dir, images, labels, data="tiny")
    assert acc["queries"] == 4 and acc["gallery"] == 20 and acc["top"] == 10
    torch_row = acc["variants"]["torch"]
    assert torch_row["recall_at_10"] == 1.0 and torch_row["knn_accuracy_change_points"] == 0.0
    assert set(acc["variants"]) == {"torch", "image.onnx", *INT8_FILES.values()}
    assert acc["variants"]["image.onnx"]["recall_at_10"] == 1.0
    for row in acc["variants"].values():
        assert 0.0 <= row["knn_accuracy"] <= 1.0 and 0.0 <= row["recall_at_10"] <= 1.0
    assert json.loads((export_dir / EXPORT_JSON).read_text())["accuracy"] == acc


def test_effnet_exports_without_a_text_tower(tmp_path: Path) -> None:
    images, _ = _images(1)
    meta = export_onnx("effnet-lite0@32", tmp_path, parity_images=images)
    assert meta["files"]["image.onnx"]["parity"]["max_abs_diff"] < TOLERANCE
    assert meta["text"] is None and "no trained text tower" in meta["text_skipped"]
    enc = OnnxEncoder(tmp_path)
    assert enc.modalities == frozenset({"image"}) and enc.dim == 1280
    with pytest.raises(InvalidInputError, match="does not encode text"):
        enc.encode_texts(["x"])


def test_bad_inputs(tmp_path: Path, clip_dir: Path) -> None:
    with pytest.raises(InvalidInputError, match="cannot be exported"):
        export_onnx("pixels", tmp_path / "a")
    with pytest.raises(InvalidInputError, match="cannot be exported"):
        export_onnx("test-tiny-text", tmp_path / "a")
    with pytest.raises(InvalidInputError, match="calibration"):
        export_onnx(f"trained:{clip_dir}", tmp_path / "a", int8=["static"])
    with pytest.raises(InvalidInputError, match="int8 mode"):
        export_onnx(f"trained:{clip_dir}", tmp_path / "a", int8=["fp16"])  # type: ignore[list-item]
    with pytest.raises(NotFoundError, match="not found"):
        create_encoder(f"onnx:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match=EXPORT_JSON):
        create_encoder(f"onnx-int8:{tmp_path / 'empty'}")


def test_int8_spec_needs_an_int8_file(tmp_path: Path, classifier_dir: Path) -> None:
    meta = export_onnx(f"trained:{classifier_dir}", tmp_path)
    assert meta["files"]["image.onnx"]["exporter"] == "torchscript"
    assert create_encoder(f"onnx:{tmp_path}").dim == 8
    with pytest.raises(NotFoundError, match="--int8"):
        create_encoder(f"onnx-int8:{tmp_path}")


def test_cli_exports_and_measures_on_a_catalogue(
    tmp_path: Path, home: Path, classifier_dir: Path
) -> None:
    from shoplens.catalog.ingest import ingest_manifest

    ingest_manifest(write_catalog(tmp_path / "src"), "shop")
    out = tmp_path / "out"
    spec = f"trained:{classifier_dir}"
    args = ["onnx", spec, "--out", str(out), "--int8", "static", "--catalog", "shop",
            "--calibration", "8", "--gallery", "19", "--queries", "5"]  # fmt: skip
    result = CliRunner().invoke(export_app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    meta = json.loads(result.output)
    assert set(meta["files"]) == {"image.onnx", "image.int8-static.onnx"}
    assert meta["text"] is None
    assert meta["accuracy"]["queries"] == 4 and meta["accuracy"]["gallery"] == 19
    human = CliRunner().invoke(export_app, [*args, "--no-measure"])
    assert human.exit_code == 0 and "image.int8-static.onnx" in human.output
    bad = CliRunner().invoke(export_app, [*args[:4], "--int8", "fp16"])
    assert isinstance(bad.exception, InvalidInputError)


def test_calibration_batches_are_equal_sized() -> None:
    from shoplens.export.onnx import calibration_batches

    images, _ = _images(18)  # 72 images: two batches of 32, 8 left out

    def preprocess(chunk: Any) -> np.ndarray:
        return np.zeros((len(chunk), 3, 4, 4), np.float32)

    batches, used = calibration_batches(preprocess, images)
    assert used == 64 and [b["pixels"].shape[0] for b in batches] == [32, 32]
    batches, used = calibration_batches(preprocess, images[:5])
    assert used == 5 and [b["pixels"].shape[0] for b in batches] == [5]
