"""``Generator`` end to end on a diffusion-test-tiny model trained a few steps: loading,
seeds, guidance, samplers, image-to-image, inpainting, provenance, bad input, ingest
refusing generated images, and the ``shoplens generate`` CLI."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shoplens.catalog.ingest import ingest_manifest
from shoplens.catalog.store import Catalog
from shoplens.cli import main
from shoplens.errors import ImageError, InvalidInputError, NotFoundError
from shoplens.generate import PROVENANCE_KEY, is_generated
from shoplens.generate.pipeline import LIMITS, GeneratedImage, Generator, make_grid
from shoplens.models.io import load_model, save_model
from shoplens.personalize.events import EventStore

from ..conftest import CATEGORIES, PER_CATEGORY, make_product_image, write_catalog
from ..helpers import outfit_events, tiny_generator

FAST: dict[str, Any] = {"steps": 3}
CAT = next(iter(CATEGORIES))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_generator(tmp_path_factory.mktemp("gen"))


@pytest.fixture(scope="module")
def gen(model_dir: Path) -> Generator:
    return Generator.load(str(model_dir))


@pytest.fixture(scope="module")
def shop(session_home: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny catalogue with the events of customers c0, c1."""
    ingest_manifest(write_catalog(tmp_path_factory.mktemp("gen-cli")), "gen-cli")
    with Catalog.open("gen-cli") as cat, EventStore.open(cat) as store:
        store.add(outfit_events(2, PER_CATEGORY))
    return "gen-cli"


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.int16)


def same(a: list[GeneratedImage], b: list[GeneratedImage]) -> bool:
    return all(np.array_equal(pixels(x.image), pixels(y.image)) for x, y in zip(a, b, strict=True))


def test_load_specs_and_save_load_round_trip(
    gen: Generator, model_dir: Path, tmp_path: Path
) -> None:
    assert gen.categories == list(CATEGORIES) and gen.image_size == 28
    assert gen.cond_encoder.startswith("trained:")
    model = load_model(model_dir)
    copy = save_model(model, tmp_path / "copy")
    kw = {"n": 2, "category": CAT, "prompt": "a red circle", "seed": 3, **FAST}
    in_memory = Generator(model, "in-memory").generate(**kw)
    assert same(in_memory, Generator.load(f"trained:{copy}").generate(**kw))
    assert same(in_memory, Generator.load(str(model_dir.parent)).generate(**kw))  # run folder
    assert in_memory[0].image.size == (28, 28) and in_memory[0].image.mode == "RGB"
    with pytest.raises(NotFoundError, match="fmnist-diffusion"):
        Generator.load(str(tmp_path / "missing"))
    with pytest.raises(InvalidInputError, match="not a diffusion model"):
        Generator.load(str(model_dir.parent / "clip"))


def test_seeds_reproduce_single_images(gen: Generator) -> None:
    three = gen.generate(n=3, seed=5, category=CAT, **FAST)
    assert [g.seed for g in three] == [5, 6, 7]
    alone = gen.generate(n=1, seed=6, category=CAT, **FAST)
    assert np.array_equal(pixels(three[1].image), pixels(alone[0].image))  # bit-identical
    assert not np.array_equal(pixels(three[0].image), pixels(three[1].image))
    small_batches = gen.generate(n=3, seed=5, category=CAT, batch_size=2, **FAST)
    assert same(three, small_batches)


def test_guidance_and_conditions_change_the_output(gen: Generator) -> None:
    base = {"n": 2, "seed": 1, **FAST}
    guided = gen.generate(category=CAT, guidance=3.0, **base)
    assert not same(guided, gen.generate(category=CAT, guidance=0.0, **base))
    assert not same(guided, gen.generate(category=list(CATEGORIES)[1], guidance=3.0, **base))
    # without any condition the guidance has nothing to mix: the same images
    assert same(gen.generate(guidance=0.0, **base), gen.generate(guidance=5.0, **base))
    taste = np.ones(gen.model.embed_dim, np.float32)
    assert not same(guided, gen.generate(category=CAT, taste=taste, guidance=3.0, **base))


@pytest.mark.parametrize("scheduler", ["ddim", "dpm", "ddpm"])
def test_every_sampler_runs_and_is_seeded(gen: Generator, scheduler: str) -> None:
    a = gen.generate(n=2, seed=9, prompt="a blue square", scheduler=scheduler, **FAST)
    assert len(a) == 2 and all(g.image.size == (28, 28) for g in a)
    assert a[0].info["scheduler"] == scheduler
    assert same(a, gen.generate(n=2, seed=9, prompt="a blue square", scheduler=scheduler, **FAST))


def test_v_prediction_models_sample_with_every_sampler(model_dir: Path) -> None:
    from shoplens.registry import create_model

    base = load_model(model_dir)
    config = {k: v for k, v in base.model_config.items() if k != "family"}
    v_model = create_model("diffusion-test-tiny", **{**config, "prediction_type": "v_prediction"})
    v_gen = Generator(v_model, "v")
    for scheduler in ("ddim", "dpm", "ddpm"):
        a = v_gen.generate(n=2, seed=1, category=CAT, scheduler=scheduler, steps=2)
        b = v_gen.generate(n=1, seed=2, category=CAT, scheduler=scheduler, steps=2)
        assert np.array_equal(pixels(a[1].image), pixels(b[0].image))


def test_img2img_strength(gen: Generator) -> None:
    init = make_product_image(CAT, 7).convert("L").resize((28, 28)).convert("RGB")
    kw = {"n": 2, "seed": 0, "init_image": init, "category": CAT, "steps": 10}
    kept = gen.generate(strength=0.0, **kw)
    assert np.abs(pixels(kept[0].image) - pixels(init)).max() <= 1  # the init, unchanged
    assert kept[0].info["mode"] == "img2img" and kept[0].info["strength"] == "0"
    light = np.mean(
        [np.abs(pixels(g.image) - pixels(init)).mean() for g in gen.generate(strength=0.3, **kw)]
    )
    full = np.mean(
        [np.abs(pixels(g.image) - pixels(init)).mean() for g in gen.generate(strength=1.0, **kw)]
    )
    assert 0 < light < full


def test_inpainting_keeps_every_pixel_outside_the_mask(gen: Generator) -> None:
    init = make_product_image("Blue square", 3).resize((40, 36))  # colour, not 28x28
    mask = np.zeros((36, 40), bool)
    mask[8:24, 10:30] = True
    mask_img = Image.fromarray(mask.astype(np.uint8) * 255)
    out = gen.generate(n=2, seed=2, init_image=init, mask=mask_img, strength=1.0, **FAST)
    original = np.asarray(init)
    for g in out:
        decoded = Image.open(io.BytesIO(g.png_bytes()))
        got = np.asarray(decoded.convert("RGB"))
        assert got.shape == original.shape
        assert np.array_equal(got[~mask], original[~mask])  # bit-identical outside
        assert (got[mask] != original[mask]).any()  # regenerated inside
        assert decoded.info["mode"] == "inpaint"


def test_png_provenance_chunks(gen: Generator) -> None:
    g = gen.generate(n=1, seed=4, prompt="yellow stripes", customer="c7", **FAST)[0]
    decoded = Image.open(io.BytesIO(g.png_bytes()))
    assert decoded.format == "PNG" and is_generated(decoded)
    info = decoded.info
    assert info[PROVENANCE_KEY] == "true" and info["generator"] == "shoplens"
    assert info["seed"] == "4" and info["prompt"] == "yellow stripes" and info["customer"] == "c7"
    for key in ("model", "category", "guidance", "steps", "scheduler", "strength", "created"):
        assert key in info
    assert not is_generated(make_product_image(CAT, 1))


def bad_inputs(gen: Generator) -> list[tuple[dict[str, Any], str]]:
    init = make_product_image(CAT, 1)  # 32x32
    return [
        ({"n": 0}, "n must be"),
        ({"n": LIMITS["n"][1] + 1}, "n must be"),
        ({"n": 2.5}, "n must be an integer"),
        ({"steps": 0}, "steps must be"),
        ({"steps": 201}, "steps must be"),
        ({"guidance": -0.5}, "guidance must be"),
        ({"guidance": 20.5}, "guidance must be"),
        ({"init_image": init, "strength": 1.5}, "strength must be"),
        ({"prompt": ""}, "prompt must not be empty"),
        ({"prompt": "   "}, "prompt must not be empty"),
        ({"category": "Unicorn"}, "known: Red circle, Blue square"),
        ({"scheduler": "euler"}, "scheduler must be one of"),
        ({"taste": np.ones(3)}, "taste must be"),
        ({"taste": np.zeros(gen.model.embed_dim)}, "taste must be"),
        ({"mask": np.ones((32, 32), bool)}, "mask needs an init image"),
        ({"init_image": init, "mask": np.ones((28, 28), bool)}, "must be the same size"),
        ({"init_image": b"not an image at all"}, "not an image"),
        ({"batch_size": 0}, "batch_size"),
    ]


def test_every_bad_input_is_a_clear_error(gen: Generator) -> None:
    for kwargs, message in bad_inputs(gen):
        with pytest.raises(InvalidInputError, match=message):
            gen.generate(**{**FAST, **kwargs})
    with pytest.raises(ImageError):
        gen.generate(init_image=b"\x89PNG\r\n\x1a\n truncated", **FAST)


def test_make_grid() -> None:
    cells = [Image.new("RGB", (28, 28), (i * 40, 0, 0)) for i in range(5)]
    grid = make_grid(cells, scale=2)  # 3 columns, 2 rows
    assert grid.size == (3 * 58 + 2, 2 * 58 + 2)
    assert grid.getpixel((2 + 58 + 5, 2 + 5)) == (40, 0, 0)
    with pytest.raises(InvalidInputError):
        make_grid([])


def test_ingest_refuses_generated_images(gen: Generator, tmp_path: Path, home: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "gen.png").write_bytes(gen.generate(n=1, **FAST)[0].png_bytes())
    make_product_image(CAT, 2).save(tmp_path / "img" / "real.png")
    manifest = tmp_path / "catalog.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sku", "title", "category", "image"])
        w.writerow(["GEN-1", "generated bag", CAT, "img/gen.png"])
        w.writerow(["REAL-1", "real product", CAT, "img/real.png"])
    report = ingest_manifest(manifest, "provenance")
    assert report.added == 1 and [e.sku for e in report.rejected] == ["GEN-1"]
    assert "generated by shoplens" in report.rejected[0].message
    with Catalog.open("provenance") as cat:
        assert cat.count() == 1 and cat.get("REAL-1")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(["generate", *args])
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_writes_grid_and_singles(
    model_dir: Path, shop: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = ["--model", str(model_dir), "--n", "3", "--steps", "2", "--out", str(out), "--json"]
    code, stdout, err = run(capsys, *args, "--category", CAT, "--customer", "c1", "-c", shop)
    assert code == 0, err
    result = json.loads(stdout)
    assert Path(result["grid"]) == out / "grid.png" and len(result["images"]) == 3
    for item in result["images"]:
        with Image.open(item["path"]) as im:
            assert im.size == (28, 28) and is_generated(im) and im.info["customer"] == "c1"
    with Image.open(out / "grid.png") as grid:
        assert is_generated(grid) and grid.info["seeds"] == "0,1,2"
    code, stdout, _ = run(capsys, "--model", str(model_dir), "--n", "1", "--steps", "1",
                          "--out", str(tmp_path / "human"))  # fmt: skip
    assert code == 0 and "grid: " in stdout and (tmp_path / "human" / "00-seed0.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "steps must be"),
        (["--category", "Unicorn"], "unknown category"),
        (["--prompt", " "], "prompt must not be empty"),
        (["--customer", "nobody", "-c", "gen-cli"], "unknown customer 'nobody'"),
        (["--customer", "c1", "-c", "no-such-shop"], "no-such-shop"),
        (["--init-image", "MISSING"], "not found"),
        (["--mask", "MASK"], "mask needs an init image"),
    ],
)
def test_cli_bad_input_exits_2(
    model_dir: Path,
    shop: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    mask = tmp_path / "mask.png"
    Image.new("L", (28, 28), 255).save(mask)
    swap = {"MASK": str(mask), "MISSING": str(tmp_path / "missing.png")}
    args = [swap.get(a, a) for a in args]
    code, _, err = run(capsys, "--model", str(model_dir), "--out", str(tmp_path), *args)
    assert code == 2 and err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_without_a_model_says_how_to_train_one(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "--out", str(tmp_path))
    assert code == 2 and "shoplens train --config fmnist-diffusion" in err
