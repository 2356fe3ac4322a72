"""Train -> evaluate -> save -> register -> load -> serve, through the installed CLI.

A tiny CLIP-style model learns a generated catalogue (4 categories of shapes and
colours) from its titles and categories; its epoch-end zero-shot accuracy is checked,
MLflow registers it as champion, the catalogue is indexed with the registered model
(``trained:DIR``) and a real server answers image and text queries with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ..conftest import CATEGORIES, write_catalog
from ..helpers import run_cli, serve_process


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    home = tmp_path_factory.mktemp("train-home")
    manifest = write_catalog(tmp_path_factory.mktemp("train-src"), per_category=12)
    run_cli(home, "ingest", str(manifest), "--name", "shapes", "--json")
    return home, manifest


def test_train_evaluate_register_load_serve(world: tuple[Path, Path]) -> None:
    home, manifest = world
    out = json.loads(
        run_cli(
            home,
            "train",
            "model=clip-test-tiny",
            "data.source=catalog:shapes",
            "data.val_fraction=0.25",
            "data.image_size=32",
            "train.epochs=25",
            "train.batch_size=12",
            "train.lr=3e-3",
            "run_name=shapes-clip",
            "tracking.register_as=shapes-clip",
            "tracking.alias=champion",
            "--json",
        ).stdout
    )
    # evaluate: zero-shot accuracy on the held-out quarter (chance is 0.25)
    assert out["metrics"]["eval/val_zero_shot_accuracy"] >= 0.75, out["metrics"]
    assert out["run_id"] and out["registered"]["alias"] == "champion"
    run_dir = Path(out["run_dir"])
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.pt").is_file()
    assert (
        "train:" in (run_dir / "config.yaml").read_text()
        and "lr: 0.003" in (run_dir / "config.yaml").read_text()
    )

    # load: the registry's champion resolves to a loadable model folder
    shown = json.loads(run_cli(home, "models", "show", "shapes-clip", "--json").stdout)
    assert shown["version"] == out["registered"]["version"]
    spec = shown["encoder_spec"]
    assert (Path(spec.removeprefix("trained:")) / "model.json").is_file()

    run_cli(home, "index", "build", "--catalog", "shapes", "--encoder", spec, "--json")
    with serve_process(home, "--catalog", "shapes", "--encoder", spec) as base:
        img = (manifest.parent / "img" / "SKU-105.png").read_bytes()
        r = httpx.post(
            f"{base}/v1/search", files={"image": ("q.png", img, "image/png")}, timeout=30
        )
        assert r.status_code == 200, r.text
        assert [h["category"] for h in r.json()["results"][:5]] == ["Blue square"] * 5
        for category in CATEGORIES:
            r = httpx.post(f"{base}/v1/search", json={"text": category.lower(), "k": 5}, timeout=30)
            assert [h["category"] for h in r.json()["results"]] == [category] * 5


def test_train_under_torchrun_ddp(world: tuple[Path, Path]) -> None:
    """The same `shoplens train` command trains with DDP under torchrun (gloo on CPU)."""
    home, _ = world
    torchrun = str(Path(sys.executable).parent / "torchrun")
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "shoplens", "train",
         "model=resnet-test-tiny", "data.source=catalog:shapes", "data.image_size=32",
         "train.epochs=2", "train.batch_size=8", "run_name=shapes-ddp", "--json"],
        env={**os.environ, "SHOPLENS_HOME": str(home), "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = proc.stdout.index("{")
    out = json.loads(proc.stdout[start:])  # rank 0 alone reports
    assert out["run_name"] == "shapes-ddp" and "{" not in proc.stdout[:start]
    assert (Path(out["model_dir"]) / "model.json").is_file()
    assert out["metrics"]["train/loss"] > 0


@pytest.mark.parametrize(
    "args,needle",
    [
        (("model=nope",), "unknown model"),
        (("trian.lr=1",), "train"),
        (("train.lr=abc",), "train.lr"),
        (("train.lr=-1",), "train.lr"),
        (("data.source=catalog:missing", "model=resnet-test-tiny"), "missing"),
        (("--config", "/no/such.yaml"), "not found"),
        (("data.base_model=/no/such", "model=combiner-test-tiny"), "not found"),
    ],
)
def test_bad_train_config_exits_2(
    world: tuple[Path, Path], args: tuple[str, ...], needle: str
) -> None:
    home, _ = world
    proc = run_cli(home, "train", *args, check=False)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and needle.lower() in last.lower(), proc.stderr
    assert "Traceback" not in proc.stderr
