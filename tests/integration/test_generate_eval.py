"""``shoplens generate eval`` end to end on a tiny generated Fashion-MNIST copy: a tiny
diffusion model trained a few steps, a tiny classifier trained in the test, a catalogue
with SIMULATED customers -> the JSON with every field, grids, the RESULTS.md section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shoplens.catalog.ingest import ingest_fashion_mnist
from shoplens.catalog.store import Catalog
from shoplens.cli import main
from shoplens.data.fashion_mnist import CLASSES, load_fashion_mnist
from shoplens.eval.results_md import GEN_HEADING, TRAINED_HEADING
from shoplens.generate.fidelity_report import update_results_md
from shoplens.index.build import build_image_index
from shoplens.models.diffusion import to_model_pixels
from shoplens.models.io import save_model
from shoplens.personalize.events import EventStore
from shoplens.personalize.items import item_space
from shoplens.personalize.simulate import preset_config, simulate
from shoplens.registry import create_model

from .test_eval import fake_fashion_mnist  # noqa: F401  (the tiny Fashion-MNIST fixture)


def tiny_classifier(folder: Path) -> str:
    """A test-tiny CNN classifier of the 10 classes, trained a few steps on the fake train
    split (its accuracy does not matter here: the plumbing does)."""
    torch.manual_seed(0)
    model = create_model(
        "resnet-test-tiny",
        num_classes=len(CLASSES),
        class_names=list(CLASSES),
        attribute_names=[],
        **{"image_tower.image_size": 28},
    )
    ds = load_fashion_mnist("train")
    x = torch.from_numpy(ds.images.copy()).float().div(255)[:, None].expand(-1, 3, -1, -1)
    y = torch.from_numpy(ds.labels)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(10):
        loss = torch.nn.functional.cross_entropy(model(x)["logits"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_model(model.eval(), folder)
    return f"trained:{folder}"


def tiny_generator(folder: Path, steps: int = 5) -> Path:
    """diffusion-test-tiny conditioned on a (random) clip-test-tiny, trained a few steps."""
    torch.manual_seed(0)
    clip = save_model(create_model("clip-test-tiny"), folder / "clip")
    model = create_model("diffusion-test-tiny", cond_encoder=f"trained:{clip}")
    ds = load_fashion_mnist("train")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(steps):
        rows = slice(32 * step, 32 * step + 32)
        batch = {
            "image": to_model_pixels(torch.from_numpy(ds.images[rows].copy()), 32),
            "label": torch.from_numpy(ds.labels[rows]),
        }
        loss = model.training_step(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save_model(model.eval(), folder / "diffusion")


def simulated_catalog(n_customers: int = 6) -> None:
    """The fake Fashion-MNIST as catalogue ``fashion-mnist`` with SIMULATED customers."""
    ingest_fashion_mnist("fashion-mnist")
    with Catalog.open("fashion-mnist") as cat:
        build_image_index(cat, "test-tiny")
        sim = simulate(
            item_space(cat, "test-tiny", text=False),
            preset_config("balanced", n_customers=n_customers, seed=0),
        )
        with EventStore.open(cat) as store:
            store.add_simulated(sim.events)


@pytest.fixture
def setup(fake_fashion_mnist: dict[str, np.ndarray], tmp_path: Path) -> dict[str, str]:  # noqa: F811
    simulated_catalog()
    return {
        "classifier": tiny_classifier(tmp_path / "cls"),
        "model": str(tiny_generator(tmp_path / "gen")),
    }


def test_generate_eval_command(
    setup: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    md = tmp_path / "docs" / "RESULTS.md"
    md.parent.mkdir()
    md.write_text(f"# Results\n\n{TRAINED_HEADING}\n\nkept row\n")
    args = [
        "generate", "eval", "--model", setup["model"], "--classifier", setup["classifier"],
        "--n-per-class", "4", "--steps", "2", "--customers", "3", "--per-customer", "2",
        "--sweep-per-class", "2", "--prompt-per-class", "1", "--json", "--results",
        "--results-md", str(md), "--img-dir", str(tmp_path / "docs" / "img"),
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    out = json.loads(capsys.readouterr().out)
    saved = json.loads(Path(out["meta"]["json"]).read_text())
    assert Path(out["meta"]["json"]).name.startswith("generate-") and saved == out

    assert out["features"] == setup["classifier"] and "not Inception" in out["feature_note"]
    assert out["samples"]["n"] == 40 and out["data"] == {"test_images": 100, "train_images": 200}
    fid = out["fid"]
    assert fid["value"] > 0 and fid["real_floor"] >= 0 and fid["samples"] == 40
    assert fid["real_floor_train_images"] == 40 and fid["test_images"] == 100
    assert set(fid["by_guidance"]) == {"0", "1", "3"}
    assert all(v["samples"] == 20 and v["fid"] > 0 for v in fid["by_guidance"].values())
    pr = out["precision_recall"]
    assert 0 <= pr["precision"] <= 1 and 0 <= pr["recall"] <= 1 and pr["k"] == 3
    assert pr["real_floor"]["precision"] > 0.5  # train vs test images: the same distribution
    acc = out["conditional_accuracy"]
    assert list(acc["per_class"]) == list(CLASSES) and acc["samples"] == 40
    assert acc["overall"] == pytest.approx(np.mean(list(acc["per_class"].values())))
    assert 0 <= out["classifier_test_accuracy"] <= 1
    assert out["prompt_accuracy"]["samples"] == 10
    assert out["prompt_accuracy"]["prompts"]["Ankle boot"] == "a photo of an ankle boot."
    for view in ("features", "pixels"):
        m = out["memorisation"][view]
        assert m["threshold"] > 0 and 0 <= m["share"] <= 1 and m["samples"] == 40
        assert m["train_images"] == 200 and "_nearest" not in m
    c = out["customers"]
    assert c["simulated"] is True and len(c["customers"]) == 3
    assert all(cid.startswith("sim-") for cid in c["customers"])
    assert set(c["settings"]) == {"any category", "top category"}
    for r in c["settings"].values():
        assert r["pairs"] == 3 and -1 <= r["mean_conditioned"] <= 1
    assert out["edits"]["inpainting_outside_mask_identical"] == 1.0
    assert set(out["grids"]) == {"classes", "img2img", "inpainting", "customers", "nearest"}
    for path in out["grids"].values():
        assert Path(path).parent == tmp_path / "docs" / "img"
        assert Path(path).stat().st_size < 150_000
    with Image.open(out["grids"]["classes"]) as im:  # 10 rows (categories) of 4 samples
        assert im.height > 2 * im.width

    text = md.read_text()
    assert "kept row" in text and text.count(GEN_HEADING) == 1
    for needle in (
        "not Inception", "SIMULATED customers", "derived from the class labels",
        "](img/generate-classes.png)", "conditional accuracy", "memorised share",
        "shoplens generate eval --model", f"{fid['value']:.2f}", f"{acc['overall']:.3f}",
    ):  # fmt: skip
        assert needle in text, needle

    out["fid"]["value"] = 123.456  # a second run replaces the section, keeps the rest
    text = (md.read_text() + "\n## Later section\n\nlater text\n").replace("kept row", "kept")
    md.write_text(text)
    update_results_md(md, out)
    text = md.read_text()
    assert text.count(GEN_HEADING) == 1 and "| 123 (floor" in text
    assert "kept" in text and text.index("later text") > text.index(GEN_HEADING)

    with pytest.raises(SystemExit) as exit_info:  # bad input: exit 2, one line, no work
        main(["generate", "eval", "--model", setup["model"], "--classifier",
              setup["classifier"], "--n-per-class", "1"])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: n_per_class") and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:  # an unknown catalogue: before sampling
        main(["generate", "eval", "--model", setup["model"], "--classifier",
              setup["classifier"], "--catalog", "no-such-shop", "--n-per-class", "4",
              "--steps", "2"])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no-such-shop" in err and "generating" not in err
