"""``shoplens eval`` end to end on a tiny generated Fashion-MNIST copy (no real data):
the foundation report, and ``--model`` runs that append to its "## Trained models" table."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from shoplens.catalog.store import Catalog, list_catalogs
from shoplens.cli import main
from shoplens.eval.foundation import run_foundation_eval
from shoplens.eval.results_md import TRAINED_HEADING
from shoplens.eval.robustness import DEDUPE_CATALOG
from shoplens.eval.runner import run_model_eval
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


@pytest.fixture(scope="session")
def tracking_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow SQLite store for the session (creating its tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def tracking(tracking_db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SHOPLENS_TRACKING_URI", tracking_db)
    return tracking_db


def _rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| 20")]


def test_model_eval_writes_json_mlflow_and_a_results_row(
    fake_fashion_mnist: dict[str, np.ndarray], tracking: str, home: Path, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    out = tmp_path / "RESULTS.md"
    before = "# shoplens: measured search quality\n\n## 1. Image-to-image\n\n| a | b |\n|---|---|\n"
    out.write_text(before)
    res = run_model_eval("test-tiny", limit=50, out=out, n_aug=10, dedupe_base=30)
    m, t = res["meta"], res["tasks"]
    assert (m["test_images"], m["train_images"], m["limit"]) == (50, 50, 50)
    assert m["data_description"] == "fashion-mnist test[:50] (50) vs train[:50] (50)"
    for name in ("text_to_image", "zero_shot", "held_out"):
        assert "no shared image-text space" in t[name]["skipped"]
    assert t["classification"]["method"].startswith("linear probe")
    assert t["classification"]["n"] == 50 and len(t["classification"]["confusion_matrix"]) == 10
    assert t["image_retrieval"]["gallery"] == 50 and t["robustness"]["queries"] == 40
    assert t["near_duplicates"]["originals"] == 30
    assert res["headline"]["knn_accuracy"] == t["image_retrieval"]["knn_accuracy"]
    assert json.loads(Path(m["json"]).read_text()) == json.loads(json.dumps(res))
    assert Path(m["json"]).parent == home / "evals"

    run = MlflowClient(tracking_uri=tracking).get_run(m["mlflow_run_id"])
    assert run.data.params["eval.model"] == "test-tiny" and run.data.params["eval.limit"] == "50"
    metric = run.data.metrics["eval/tasks/image_retrieval/knn_accuracy"]
    assert metric == pytest.approx(t["image_retrieval"]["knn_accuracy"])

    text = out.read_text()
    assert text.startswith(before) and TRAINED_HEADING in text
    assert "texts are derived from the class labels, so text metrics are in-domain" in text
    (row,) = _rows(text)
    assert "| `test-tiny` | fashion-mnist test[:50] (50) vs train[:50] (50) | 0 |" in row
    assert f"| {t['image_retrieval']['knn_accuracy']:.3f} |" in row and "CPU cores" in row

    # a second run logs into the first run and adds a second row below the first
    again = run_model_eval(
        "test-tiny",
        tasks=["image_retrieval"],
        limit=50,
        seed=3,
        out=out,
        mlflow_run_id=m["mlflow_run_id"],
    )
    assert again["meta"]["mlflow_run_id"] == m["mlflow_run_id"]
    assert set(again["tasks"]) == {"image_retrieval"}
    tags = MlflowClient(tracking_uri=tracking).get_run(m["mlflow_run_id"]).data.tags
    assert tags["eval.seed"] == "3"
    rows = _rows(out.read_text())
    assert rows[0] == row and "| 3 | - |" in rows[1]

    # the foundation report regenerates the file and keeps both rows
    run_foundation_eval(
        encoders=("pixels",),
        n_aug=5,
        out=out,
        text_encoder="test-tiny-text",
        limit=50,
        dedupe_base=20,
        dedupe_copies=5,
    )
    text = out.read_text()
    assert text.startswith("# shoplens: measured search quality on Fashion-MNIST")
    assert _rows(text) == rows and text.count(TRAINED_HEADING) == 1


def test_eval_cli_with_a_model(
    fake_fashion_mnist: dict[str, np.ndarray],
    home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "R.md"
    args = ["eval", "--model", "test-tiny", "--limit", "50", "--out", str(out), "--n-aug", "5"]
    with pytest.raises(SystemExit) as e:
        main([*args, "--no-mlflow"])
    assert e.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["model", "accuracy", "5-NN", "R@1"]
    assert lines[1].startswith("test-tiny ")
    assert any("skipped zero_shot: encoder 'test-tiny' has no shared" in x for x in lines)
    with pytest.raises(SystemExit) as e:
        main([*args, "--no-mlflow", "--json", "--task", "image_retrieval"])
    assert e.value.code == 0
    payload = json.loads(capsys.readouterr().out)
    assert list(payload["tasks"]) == ["image_retrieval"] and payload["meta"]["limit"] == 50
    assert len(_rows(out.read_text())) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "test-tiny", "--task", "zero-shot"], "unknown task 'zero-shot'; choose from"),
        (
            ["--model", "test-tiny", "--held-out", "Sandal,Bagz"],
            "unknown class 'Bagz' in --held-out",
        ),
        (["--model", "trained:/no/such/model"], "trained model folder not found"),
        (["--model", "nope"], "unknown encoder 'nope'"),
        (["--model", "test-tiny", "-e", "pixels"], "--encoder is for the foundation eval"),
        (["--task", "zero_shot"], "--task, --held-out and --mlflow-run need --model"),
        (["--model", "test-tiny", "--mlflow-run", "0123abc"], "MLflow run '0123abc' not found"),
    ],
)
def test_eval_cli_bad_input_exits_2_with_one_line(
    extra: list[str],
    message: str,
    home: Path,
    tracking: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["eval", *extra])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
