"""``POST /v1/generate`` on the real service with a diffusion-test-tiny model trained for a
few steps: keys, bounds, customers, provenance, PNG answers, busy and missing models."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from shoplens.catalog.ingest import ingest_manifest
from shoplens.catalog.store import Catalog
from shoplens.personalize.events import EventStore
from shoplens.serve.keys import KeyStore

from ..conftest import PER_CATEGORY, write_catalog
from ..helpers import assert_error, auth, make_client, outfit_events, tiny_generator
from .test_ui_pages import field_error, page_of

CATALOG = "gen-shop"
FAST = {"n": 2, "steps": 3}


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_generator(tmp_path_factory.mktemp("generator"))


@pytest.fixture(scope="module")
def shop(session_home: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny catalogue with the outfit events of customers c0..c3 (no index needed)."""
    ingest_manifest(write_catalog(tmp_path_factory.mktemp("gen-shop")), CATALOG)
    with Catalog.open(CATALOG) as cat, EventStore.open(cat) as store:
        store.add(outfit_events(4, PER_CATEGORY))
    return CATALOG


@pytest.fixture(scope="module")
def keys(session_home: Path) -> dict[str, str]:
    store = KeyStore()
    out = {scope: store.create(scope, f"generate {scope}")[1] for scope in ("read", "write")}
    store.close()
    return out


@pytest.fixture(scope="module")
def client(shop: str, generator_dir: Path) -> Iterator[TestClient]:
    with make_client(shop, generator=str(generator_dir), generate_wait_s=0.2) as c:
        yield c


def decode(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_generate_needs_a_write_key(client: TestClient, keys: dict[str, str]) -> None:
    body = {"prompt": "red circle", **FAST}
    assert_error(client.post("/v1/generate", json=body), 401, "unauthorized")
    assert_error(client.post("/v1/generate", json=body, headers=auth(keys["read"])), 403)
    r = client.post("/v1/generate", json=body, headers=auth(keys["write"]))
    assert r.status_code == 200, r.text
    assert r.json()["generated"] is True and r.json()["count"] == 2


def test_images_carry_provenance_and_seeds_reproduce(
    client: TestClient, keys: dict[str, str], generator_dir: Path
) -> None:
    body = {"prompt": "red circle", "category": "Red circle", "n": 3, "steps": 3, "seed": 5}
    out = client.post("/v1/generate", json=body, headers=auth(keys["write"])).json()
    assert out["model"]["name"] == str(generator_dir)
    assert [im["seed"] for im in out["images"]] == [5, 6, 7]
    for im in out["images"]:
        png = decode(im["png_base64"])
        assert png.format == "PNG" and png.size == (28, 28)
        chunks = png.info
        assert chunks["shoplens:generated"] == "true" and chunks["generator"] == "shoplens"
        assert chunks["seed"] == str(im["seed"]) and chunks["prompt"] == "red circle"
        assert chunks["category"] == "Red circle" and chunks["model"] == str(generator_dir)
        assert im["info"]["seed"] == str(im["seed"])
    grid = decode(out["grid_png_base64"])
    assert grid.info["shoplens:generated"] == "true" and grid.info["seed"] == "5..7"
    assert grid.width > 2 * 28 and grid.height > 2 * 28  # 2x2 cells of 2x-scaled images

    alone = client.post(
        "/v1/generate", json={**body, "n": 1, "seed": 6}, headers=auth(keys["write"])
    ).json()
    same = pixels(decode(alone["images"][0]["png_base64"]))
    assert np.array_equal(same, pixels(decode(out["images"][1]["png_base64"])))
    assert not np.array_equal(same, pixels(decode(out["images"][0]["png_base64"])))


def test_accept_image_png_returns_the_grid(client: TestClient, keys: dict[str, str]) -> None:
    body = {"category": "Blue square", **FAST, "seed": 3}
    as_json = client.post("/v1/generate", json=body, headers=auth(keys["write"])).json()
    r = client.post(
        "/v1/generate", json=body, headers={**auth(keys["write"]), "Accept": "image/png"}
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    grid = Image.open(io.BytesIO(r.content))
    assert grid.info["shoplens:generated"] == "true"
    assert np.array_equal(pixels(grid), pixels(decode(as_json["grid_png_base64"])))
    both = {**auth(keys["write"]), "Accept": "application/json, image/png;q=0.5"}
    assert client.post("/v1/generate", json=body, headers=both).json()["generated"] is True


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"n": 17}, "n must be 1 to 16"),
        ({"n": 0}, "n"),
        ({"steps": 51}, "steps must be 1 to 50"),
        ({"guidance": 25}, "guidance"),
        ({"strength": 1.5}, "strength"),
        ({"scheduler": "euler"}, "scheduler"),
        ({"colour": "red"}, "colour"),
        ({"prompt": "   "}, "prompt must not be empty"),
        ({"category": "Hats"}, "unknown category 'Hats'; known: Red circle, Blue square"),
        ({"init_image": "not base64!"}, "init_image is not valid base64"),
        ({"mask": png_b64(Image.new("L", (28, 28)))}, "a mask needs an init image"),
    ],
)
def test_bad_requests_are_json_4xx(
    client: TestClient, keys: dict[str, str], body: dict[str, Any], message: str
) -> None:
    r = client.post("/v1/generate", json={**FAST, **body}, headers=auth(keys["write"]))
    assert_error(r, 422, "invalid_input" if "base64" not in message else None)
    assert message in r.json()["error"]["message"]


def test_bounds_come_from_the_settings(
    shop: str, generator_dir: Path, keys: dict[str, str]
) -> None:
    with make_client(shop, generator=str(generator_dir), generate_max_n=2) as c:
        r = c.post("/v1/generate", json={"n": 3, "steps": 2}, headers=auth(keys["write"]))
        assert_error(r, 422, "invalid_input")
        assert "n must be 1 to 2 images" in r.json()["error"]["message"]


def test_customer_taste_conditions_the_images(client: TestClient, keys: dict[str, str]) -> None:
    assert_error(
        client.post(
            "/v1/generate", json={"customer": "nobody", **FAST}, headers=auth(keys["write"])
        ),
        404,
        "not_found",
    )
    plain = client.post("/v1/generate", json=FAST, headers=auth(keys["write"])).json()
    c0 = client.post("/v1/generate", json={"customer": "c0", **FAST}, headers=auth(keys["write"]))
    assert c0.status_code == 200, c0.text
    images = c0.json()["images"]
    assert decode(images[0]["png_base64"]).info["customer"] == "c0"
    assert not np.array_equal(  # same seed, the taste token instead of the null one
        pixels(decode(images[0]["png_base64"])), pixels(decode(plain["images"][0]["png_base64"]))
    )
    c1 = client.post("/v1/generate", json={"customer": "c1", **FAST}, headers=auth(keys["write"]))
    assert not np.array_equal(  # another customer, another taste
        pixels(decode(images[0]["png_base64"])),
        pixels(decode(c1.json()["images"][0]["png_base64"])),
    )


def test_inpainting_keeps_the_pixels_outside_the_mask(
    client: TestClient, keys: dict[str, str]
) -> None:
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8))
    mask = np.zeros((28, 28), np.uint8)
    mask[8:20, 8:20] = 255  # regenerate the middle
    body = {
        "init_image": png_b64(init),
        "mask": png_b64(Image.fromarray(mask)),
        "strength": 0.8,
        **FAST,
    }
    out = client.post("/v1/generate", json=body, headers=auth(keys["write"])).json()
    got = pixels(decode(out["images"][0]["png_base64"]))
    outside = mask == 0
    assert np.array_equal(got[outside], np.asarray(init)[outside])
    assert not np.array_equal(got[~outside], np.asarray(init)[~outside])
    assert out["images"][0]["info"]["mode"] == "inpaint"
    small = png_b64(Image.fromarray(mask[:10, :10]))
    r = client.post("/v1/generate", json={**body, "mask": small}, headers=auth(keys["write"]))
    assert_error(r, 422, "invalid_input")
    assert "same size" in r.json()["error"]["message"]


def test_busy_generator_answers_503_with_retry_after(
    client: TestClient, keys: dict[str, str]
) -> None:
    slots: threading.BoundedSemaphore = client.app.state.generate.slots  # type: ignore[attr-defined]
    assert slots.acquire(timeout=30)  # a generation in progress holds the only slot
    try:
        t0 = time.monotonic()
        r = client.post("/v1/generate", json=FAST, headers=auth(keys["write"]))
        assert time.monotonic() - t0 < 10
        assert_error(r, 503, "busy")
        assert r.headers["retry-after"] == "5"
    finally:
        slots.release()
    assert client.post("/v1/generate", json=FAST, headers=auth(keys["write"])).status_code == 200
    metrics = client.get("/metrics").text
    assert 'shoplens_generate_seconds_count{outcome="busy"} 1.0' in metrics
    assert 'shoplens_generate_seconds_count{outcome="ok"}' in metrics
    assert "shoplens_generated_images_total" in metrics


def test_no_model_is_a_503_that_says_how_to_train_one(
    shop: str, tmp_path: Path, keys: dict[str, str]
) -> None:
    with make_client(shop, generator=str(tmp_path / "missing")) as c:
        r = c.post("/v1/generate", json=FAST, headers=auth(keys["write"]))
        assert_error(r, 503, "no_model")
        assert "shoplens train --config fmnist-diffusion" in r.json()["error"]["message"]
        assert "/v1/generate" in c.get("/openapi.json").json()["paths"]


# ---- the /generate page ----------------------------------------------------------------------
def generated_images(page: Any) -> list[Any]:
    return [i for i in page.find("img") if i.attrs["src"].startswith("/generate/results/")]


FORM = {"prompt": "red circle", "category": "", "customer": "", "n": "3", "guidance": "3"}


def test_page_has_a_labelled_form(client: TestClient) -> None:
    page = page_of(client.get("/generate"))
    assert page.text("title") == "Generate product images - shoplens"
    assert page.one("a", href="/generate", aria_current="page").text == "Generate"
    form = page.one("form", method="post")
    assert form.attrs["action"] == "/generate"
    key = page.one("input", id="api_key")
    assert key.attrs["type"] == "password" and key.attrs["autocomplete"] == "off"
    assert key.attrs["aria-describedby"] == "api_key-hint"
    assert "write access" in page.text(id="api_key-hint")
    options = [o.attrs["value"] for o in page.one("select", id="category").children]
    assert options == ["", "Red circle", "Blue square", "Green triangle", "Yellow stripes"]
    assert page.one("input", id="n").attrs["value"] == "8"
    assert not page.find(role="status") and not generated_images(page)


def test_page_shows_generated_images_labelled_as_such(
    client: TestClient, keys: dict[str, str]
) -> None:
    data = {**FORM, "steps": "3", "seed": "7", "api_key": keys["write"]}
    resp = client.post("/generate", data=data)
    page = page_of(resp)
    assert resp.headers["cache-control"] == "no-store"
    assert page.text(role="status").startswith(
        "Generated 3 images of red circle (seeds 7 to 9) in "
    )
    assert "Generated by shoplens — not a real product photo." in page.text(class_="notice")
    imgs = generated_images(page)
    assert [i.attrs["alt"] for i in imgs] == [
        f"Generated image {i} of 3: red circle, seed {6 + i}" for i in (1, 2, 3)
    ]
    png = client.get(imgs[1].attrs["src"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    shown = Image.open(io.BytesIO(png.content))
    assert shown.info["shoplens:generated"] == "true" and shown.info["seed"] == "8"
    api = client.post(
        "/v1/generate",
        json={"prompt": "red circle", "n": 1, "steps": 3, "seed": 8},
        headers=auth(keys["write"]),
    ).json()
    assert np.array_equal(pixels(shown), pixels(decode(api["images"][0]["png_base64"])))
    grid = page.one("a", class_="button-link")
    assert grid.attrs["download"] == "generated-grid.png"
    assert client.get(grid.attrs["href"]).headers["content-type"] == "image/png"
    assert page.one("input", id="prompt").attrs["value"] == "red circle"  # ready to tweak
    page_of(client.get(imgs[0].attrs["src"].replace("/1.png", "/9.png")), 404)
    page_of(client.get("/generate/results/nope/grid.png"), 404)


def test_page_errors_are_tied_to_their_fields_and_keep_values(
    client: TestClient, keys: dict[str, str]
) -> None:
    bad = {**FORM, "n": "99", "guidance": "lots", "category": "Hats", "steps": "3", "seed": "1"}
    page = page_of(client.post("/generate", data={**bad, "api_key": ""}), 400)
    assert page.text("title") == "Error: Generate product images - shoplens"
    assert "from 1 to 16" in field_error(page, "n")
    assert "as a number" in field_error(page, "guidance")
    assert "There is no category 'Hats'" in field_error(page, "category")
    assert "Enter an API key" in field_error(page, "api_key")
    assert page.one("select", id="category").attrs["autofocus"] == ""  # first field in error
    assert page.one("input", id="n").attrs.get("autofocus") is None
    assert page.one("input", id="n").attrs["value"] == "99"
    assert page.one("input", id="prompt").attrs["value"] == "red circle"
    assert not generated_images(page)

    good = {**FORM, "steps": "3", "seed": "1"}
    page = page_of(client.post("/generate", data={**good, "api_key": keys["read"]}), 403)
    assert "needs write access" in field_error(page, "api_key")
    assert page.one("input", id="api_key").attrs["value"] == ""  # a key that fails is not echoed

    page = page_of(
        client.post("/generate", data={**good, "customer": "nobody", "api_key": keys["write"]}),
        404,
    )
    assert "No events are stored for customer 'nobody'" in field_error(page, "customer")
    assert page.one("input", id="api_key").attrs["value"] == keys["write"]


def test_page_says_when_the_generator_is_busy(client: TestClient, keys: dict[str, str]) -> None:
    slots: threading.BoundedSemaphore = client.app.state.generate.slots  # type: ignore[attr-defined]
    assert slots.acquire(timeout=30)
    try:
        data = {**FORM, "steps": "3", "seed": "1", "api_key": keys["write"]}
        resp = client.post("/generate", data=data)
    finally:
        slots.release()
    page = page_of(resp, 503)
    assert resp.headers["retry-after"] == "5"
    alert = page.one(id="form-error")
    assert alert.attrs["role"] == "alert" and "busy" in page.text(id="form-error")
    assert page.one("form", method="post").attrs["aria-describedby"] == "form-error"


def test_page_without_a_model_says_how_to_set_it_up(shop: str, tmp_path: Path) -> None:
    with make_client(shop, generator=str(tmp_path / "missing")) as c:
        page = page_of(c.get("/generate"))
        assert page.text("h2") == "Image generation is not set up yet"
        assert "shoplens train --config fmnist-diffusion" in page.text("code")
        assert not page.find("form")
        assert page_of(c.post("/generate", data=FORM), 503).text("h2") == (
            "Image generation is not set up yet"
        )
