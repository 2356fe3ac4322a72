"""``shoplens eval`` end to end on a tiny generated Fashion-MNIST copy (no real data)."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from shoplens.catalog.store import Catalog, list_catalogs
from shoplens.eval.foundation import DEDUPE_CATALOG, run_foundation_eval
from shoplens.index.build import default_image_encoder

TRAIN_PER_CLASS, TEST_PER_CLASS = 20, 10


def _idx_gz(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes(), mtime=0)


def class_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 28, 28): class c is a bright 10x5 block at its own place, jittered, plus noise."""
    out = np.clip(rng.normal(30, 20, (len(labels), 28, 28)), 0, 255)
    for n, c in enumerate(labels):
        y = 2 + 14 * (c // 5) + int(rng.integers(-1, 2))
        x = 1 + 5 * (c % 5) + int(rng.integers(0, 2))
        out[n, max(0, y) : y + 10, x : x + 5] = rng.uniform(180, 255)
    return out.astype(np.uint8)


@pytest.fixture
def fake_fashion_mnist(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, np.ndarray]:
    import shoplens.data.fashion_mnist as fm

    rng = np.random.default_rng(0)
    folder = tmp_path / "fm-data"
    folder.mkdir()
    files, labels = {}, {}
    for prefix, per in (("train", TRAIN_PER_CLASS), ("t10k", TEST_PER_CLASS)):
        lab = rng.permutation(np.repeat(np.arange(10), per))
        labels[prefix] = lab
        files[f"{prefix}-images-idx3-ubyte.gz"] = _idx_gz(class_images(lab, rng))
        files[f"{prefix}-labels-idx1-ubyte.gz"] = _idx_gz(lab)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    monkeypatch.setattr(fm, "FILES", {n: hashlib.sha256(d).hexdigest() for n, d in files.items()})
    monkeypatch.setenv("SHOPLENS_FASHION_MNIST_DIR", str(folder))
    return labels


def test_foundation_eval_writes_report_and_json(
    fake_fashion_mnist: dict[str, np.ndarray], tmp_path: Path
) -> None:
    out = tmp_path / "R.md"
    res = run_foundation_eval(
        encoders=("test-tiny", "pixels"),
        n_aug=20,
        limit=None,
        out=out,
        text_encoder="test-tiny-text",
        dedupe_base=60,
        dedupe_copies=15,
    )
    text = out.read_text()
    for heading in (
        "# shoplens: measured search quality on Fashion-MNIST",
        "## 1. Image-to-image 5-NN accuracy",
        "## 2. Text-query precision@10",
        "## 3. Altered-copy retrieval (R@1)",
        "## 4. Near-duplicate detection on injected copies",
        "derived from the labels",
        "not comparable",
    ):
        assert heading in text
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved == json.loads(json.dumps(res))
    meta = saved["meta"]
    assert (meta["train"], meta["test"], meta["products"]) == (200, 100, 300)
    assert "ingest_s" in meta["timings_s"] and meta["machine"]["nproc"] >= 1

    rates: list[float] = []
    for spec in ("test-tiny", "pixels"):
        knn = saved["knn"][spec]
        assert (knn["queries"], knn["gallery"], knn["index"]) == (100, 200, "built")
        rates += [knn["accuracy"], *knn["per_class"].values()]
        aug = saved["augmented"][spec]
        rates += [*aug["r_at_1"].values(), *aug["r_at_10"].values()]
        assert set(aug["r_at_1"]) == {"crop", "noise", "brightness", "blur-jpeg", "overall"}
        assert aug["r_at_1"]["noise"] >= 0.8  # near-identity alteration
    assert saved["knn"]["pixels"]["accuracy"] > 0.8
    assert saved["augmented"]["pixels"]["r_at_1"]["brightness"] >= 0.8  # scale-invariant
    assert saved["augmented"]["queries"] == 80
    t = saved["text"]
    rates += [t["mean_precision"], *(v["precision"] for v in t["per_class"].values())]
    assert t["mean_precision"] > 0.8  # titles and categories name the class
    d = saved["dedupe"]
    assert (d["originals"], d["injected"], d["encoder"]) == (60, 15, "test-tiny")
    rates += [d["precision"], d["recall"], d["recall_same_cluster"]]
    assert d["recall"] > 0.5
    assert all(isinstance(r, float) and 0.0 <= r <= 1.0 for r in rates)
    for v in saved["knn"].values():
        assert f"{v['accuracy']:.3f}" in text

    # the temporary dedupe catalogue is gone and the catalogue's default encoder is kept
    assert DEDUPE_CATALOG not in list_catalogs()
    with Catalog.open("fashion-mnist") as cat:
        assert default_image_encoder(cat) == "effnet-lite0@64"

    # a second run reuses the catalogue and its up-to-date indexes
    again = run_foundation_eval(
        encoders=("pixels",), n_aug=5, out=tmp_path / "R2.md", text_encoder="test-tiny-text"
    )
    assert "ingest_s" not in again["meta"]["timings_s"]
    assert again["knn"]["pixels"]["index"] == "reused"
    assert again["knn"]["pixels"]["accuracy"] == saved["knn"]["pixels"]["accuracy"]


def test_eval_command_prints_a_summary(
    fake_fashion_mnist: dict[str, np.ndarray], tmp_path: Path
) -> None:
    import typer
    from typer.testing import CliRunner

    from shoplens.eval.cli import eval_command

    app = typer.Typer()
    app.command("eval")(eval_command)
    app.command("noop")(lambda: None)  # keep "eval" a sub-command
    out = tmp_path / "docs" / "RESULTS.md"
    args = ["eval", "--out", str(out), "--n-aug", "5", "-e", "pixels", "--text-encoder"]
    result = CliRunner().invoke(app, [*args, "test-tiny-text", "--limit", "50"])
    assert result.exit_code == 0, result.output
    assert "5-NN accuracy" in result.output and "report:" in result.output
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert "fashion-mnist-50" in list_catalogs()
    result = CliRunner().invoke(app, [*args, "test-tiny-text", "--limit", "50", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["meta"]["test"] == 50
