"""``shoplens demo`` on a generated stand-in for Fashion-MNIST (same file format).

The real dataset is for the demo itself; here 10 synthetic classes of 28 px images are
written as the four IDX .gz files, and the demo ingests them, trains its CLIP-style
model and combiner, registers the model, indexes and searches, then reuses it all.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shoplens.data.fashion_mnist as fm
from shoplens.data.fashion_mnist import CLASSES


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def fake_images(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class c: a bright bar at rows 2c..2c+3 on a dark, noisy background."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class)
    images = rng.integers(0, 40, (len(labels), 28, 28))
    for i, c in enumerate(labels):
        images[i, 2 * c + 2 : 2 * c + 6, 3:25] = rng.integers(170, 255)
    return images, labels


@pytest.fixture
def fake_fashion_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "fmnist"
    folder.mkdir()
    shas = {}
    for prefix, n, seed in (("train", 30, 0), ("t10k", 6, 1)):
        images, labels = fake_images(n, seed)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte.gz"
            (folder / name).write_bytes(_idx(arr))
            shas[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    monkeypatch.setattr(fm, "FILES", shas)
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("SHOPLENS_FASHION_MNIST_DIR", str(folder))
    return folder


def test_demo_trains_registers_indexes_searches_and_reuses(
    home: Path, fake_fashion_mnist: Path
) -> None:
    from shoplens.demo import DEMO_MODEL, run_demo
    from shoplens.training.tracking import MlflowTracker

    said: list[str] = []
    summary: dict[str, Any] = run_demo(echo=said.append, customers=60)
    assert summary["products"] == 360 and summary["encoder"].startswith("trained:")
    assert any("training shoplens's CLIP-style model" in s for s in said)
    info = MlflowTracker().get_model_version_by_alias(DEMO_MODEL, "champion")
    assert summary["encoder"] == f"trained:{info.source_dir}"
    assert (Path(info.source_dir) / "combiner" / "model.json").is_file()
    examples = summary["examples"]
    assert set(examples) >= {"text: ankle boot", "this sneaker, as an ankle boot"}
    assert all(len(hits) == 8 for hits in examples.values())
    # text search reaches the right category (BM25 + MiniLM + the trained text tower)
    assert {h["category"] for h in examples["text: bag"][:5]} == {"Bag"}
    assert Path(summary["grid"]).is_file()
    recs = summary["recommendations"]  # SIMULATED customers, a fitted recommender
    assert recs["simulated"] and recs["customers"] == 60
    assert recs["example_customer"].startswith("sim-")
    assert recs["complete_the_look"] == "fitted"  # Fashion-MNIST categories make outfits

    said.clear()
    again = run_demo(echo=said.append, customers=60)
    assert any("using the registered model" in s for s in said)
    # the stand-in dataset is re-ingested (it is not 70,000 products), so the recommender is
    # refitted, but the stored simulated events are reused
    assert not any("training" in s or "simulating" in s for s in said), said
    assert again["encoder"] == summary["encoder"]
    assert set(CLASSES) >= {h["category"] for h in again["examples"]["text: bag"]}
