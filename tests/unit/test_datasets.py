"""Datasets, collate, augmentations and training texts (tiny generated data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shoplens.data import datasets as ds_mod
from shoplens.data.datasets import (
    CatalogDataset,
    Collate,
    FashionMNISTDataset,
    batch_to,
    resolve_classes,
    stratified_split,
)
from shoplens.data.fashion_mnist import CLASSES, FashionMNIST
from shoplens.data.texts import (
    FASHION_MNIST_SYNONYMS,
    ProductTexts,
    article,
    modifier_text,
    plural,
    zero_shot_prompts,
    zero_shot_weights,
)
from shoplens.data.transforms import (
    AugmentConfig,
    BatchAugment,
    augment_preset,
    image_to_tensor,
    sample_transform,
)
from shoplens.errors import InvalidInputError

OFF = augment_preset("none")


def fake_arrays(per_class: int = 6, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Images whose pixel value encodes the class (class c -> 20 * c + 10)."""
    labels = np.repeat(np.arange(10), per_class)
    images = np.zeros((len(labels), size, size), np.uint8)
    images[:, 4:-4, 4:-4] = (20 * labels + 10)[:, None, None]
    return images, labels


# ---- Fashion-MNIST dataset ---------------------------------------------------------------


def test_items_are_dicts_with_float_images_labels_and_texts() -> None:
    images, labels = fake_arrays()
    data = FashionMNISTDataset(images, labels)
    item = data[13]
    assert item["image"].shape == (3, 28, 28) and item["image"].dtype == torch.float32
    assert float(item["image"].max()) == pytest.approx((20 * 2 + 10) / 255)
    assert item["label"] == 2 and item["index"] == 13
    nouns = FASHION_MNIST_SYNONYMS[CLASSES[2]]
    assert any(n in item["text"] or item["text"].startswith(n[:4]) for n in nouns)


def test_held_out_and_only_select_classes() -> None:
    images, labels = fake_arrays()
    seen = FashionMNISTDataset(images, labels, held_out=["Sandal", 9])
    assert set(seen.labels.tolist()) == set(range(10)) - {5, 9}
    assert len(seen) == 8 * 6
    unseen = FashionMNISTDataset(images, labels, only=["Sandal", "Ankle boot"])
    assert set(unseen.labels.tolist()) == {5, 9}
    assert all(labels[unseen[i]["index"]] == unseen[i]["label"] for i in range(len(unseen)))


def test_unknown_class_lists_the_valid_ones() -> None:
    with pytest.raises(InvalidInputError, match=r"unknown class 'Hat'.*Ankle boot.*0\.\.9"):
        resolve_classes(["Hat"], CLASSES)
    with pytest.raises(InvalidInputError, match="unknown class 12"):
        resolve_classes([12], CLASSES)


def test_stratified_split_is_disjoint_seeded_and_per_class() -> None:
    _, labels = fake_arrays(per_class=20)
    train, val = stratified_split(labels, 0.25, seed=3)
    assert not set(train) & set(val) and len(train) + len(val) == len(labels)
    assert np.bincount(labels[val]).tolist() == [5] * 10
    again, _ = stratified_split(labels, 0.25, seed=3)
    other, _ = stratified_split(labels, 0.25, seed=4)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    with pytest.raises(InvalidInputError, match="val_fraction"):
        stratified_split(labels, 1.0)


def test_load_splits_train_val_test(monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = fake_arrays(per_class=10)

    def fake_load(split: str, data_dir: Path | None = None) -> FashionMNIST:
        n = len(labels) if split == "train" else 20
        return FashionMNIST(split, images[:n], labels[:n])  # type: ignore[arg-type]

    monkeypatch.setattr(ds_mod, "load_fashion_mnist", fake_load)
    train = FashionMNISTDataset.load("train", val_fraction=0.2, held_out=["Bag"])
    val = FashionMNISTDataset.load("val", val_fraction=0.2)
    test = FashionMNISTDataset.load("test")
    assert len(train) == 9 * 8 and 8 not in train.labels and len(val) == 20 and len(test) == 20
    with pytest.raises(InvalidInputError, match="'train', 'val' or 'test'"):
        FashionMNISTDataset.load("dev")  # type: ignore[arg-type]


def test_texts_change_with_epoch_but_are_reproducible() -> None:
    images, labels = fake_arrays()
    data = FashionMNISTDataset(images, labels)
    first = [data[i]["text"] for i in range(len(data))]
    assert [data[i]["text"] for i in range(len(data))] == first
    data.set_epoch(1)
    second = [data[i]["text"] for i in range(len(data))]
    assert second != first
    assert len(set(first)) > 20


# ---- texts -------------------------------------------------------------------------------


def test_phrasings_are_varied_seeded_and_use_synonyms() -> None:
    texts = ProductTexts(seed=0)
    boots = {texts.sample(k, category="Ankle boot") for k in range(200)}
    assert len(boots) >= 30
    assert {"boot", "ankle boots"} & boots or any(t == "a photo of an ankle boot" for t in boots)
    sneakers = " ".join(texts.sample(k, category="Sneaker") for k in range(200))
    assert "trainer" in sneakers and "sneaker" in sneakers
    tees = " ".join(texts.sample(k, category="T-shirt/top") for k in range(200))
    assert "tee" in tees and "t-shirt" in tees
    assert [texts.sample(k, category="Bag") for k in range(20)] == [
        ProductTexts(seed=0).sample(k, category="Bag") for k in range(20)
    ]
    assert [texts.sample(k, category="Bag") for k in range(20)] != [
        ProductTexts(seed=1).sample(k, category="Bag") for k in range(20)
    ]


def test_phrasings_use_attributes_titles_and_other_categories() -> None:
    texts = ProductTexts(seed=0, title_p=0.3)
    attrs = {"color": "Black", "material": "leather", "split": "train"}
    got = {
        texts.sample(
            k, category="Ankle boot", title="Chelsea X (Fashion-MNIST photo)", attributes=attrs
        )
        for k in range(300)
    }
    assert "Chelsea X" in got  # the title, its parenthesis removed
    assert any("black leather" in t or "leather black" in t for t in got)
    assert not any("train" in t for t in got)  # bookkeeping attributes are ignored
    assert "black leather ankle boot" in texts.all_phrasings(
        "Ankle boot", {"c": "black", "m": "leather"}
    )
    lamp = {texts.sample(k, category="Desk Lamp") for k in range(50)}
    assert "desk lamps" in lamp and "an" not in " ".join(lamp).split()


def test_grammar_helpers() -> None:
    assert [plural(w) for w in ("dress", "boot", "trousers", "tote bag")] == [
        "dresses",
        "boots",
        "trousers",
        "tote bags",
    ]
    assert [article(w) for w in ("ankle boot", "bag", "jeans")] == ["an", "a", ""]


def test_zero_shot_prompts_and_class_weights() -> None:
    prompts = zero_shot_prompts("Ankle boot")
    assert "a photo of an ankle boot." in prompts and len(prompts) >= 3

    def encode(texts: list[str]) -> np.ndarray:
        return np.array([[len(t), 1.0] for t in texts], np.float32)

    w = zero_shot_weights(encode, ["Bag", "Ankle boot"])
    assert w.shape == (2, 2)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, rtol=1e-6)


def test_modifier_texts_name_the_target_category() -> None:
    rng = np.random.default_rng(0)
    got = {modifier_text("Ankle boot", rng) for _ in range(60)}
    assert "in the ankle boot category" in got
    nouns = FASHION_MNIST_SYNONYMS["Ankle boot"]
    assert all(any(n in t for n in nouns) for t in got)


# ---- transforms / collate ----------------------------------------------------------------


def test_batch_augment_identity_and_flip_are_exact() -> None:
    x = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(BatchAugment(OFF, seed=0)(x), x, atol=1e-5, rtol=0)
    flip = AugmentConfig(**{**OFF.__dict__, "flip_p": 1.0})
    torch.testing.assert_close(BatchAugment(flip, seed=0)(x), x.flip(-1), atol=1e-5, rtol=0)


def test_whole_pixel_shift_moves_pixels_without_resampling() -> None:
    """The ``shift`` preset copies pixels (pad-and-crop with edge replication, maybe
    mirrored): every output image is its input moved by whole pixels, <= 2 each way."""
    x = torch.rand(16, 3, 28, 20, generator=torch.Generator().manual_seed(0))
    out = BatchAugment(augment_preset("shift"), seed=1)(x)
    pad = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")  # (16, 3, 32, 24)
    moved = 0
    for img, src in zip(out, pad, strict=True):
        views = [
            v[:, 2 + dy : 2 + dy + 28, 2 + dx : 2 + dx + 20]
            for v in (src, src.flip(-1))
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        ]
        match = [i for i, v in enumerate(views) if torch.allclose(img, v, atol=1e-5)]
        assert match, "an output is not a whole-pixel shift of its input"
        moved += match[0] not in (12, 37)  # 12 / 37: unshifted, plain / mirrored
    assert moved >= 8  # most images moved
    with pytest.raises(InvalidInputError, match="whole_pixels"):
        AugmentConfig(whole_pixels=True)  # zoom and rotation resample


def test_random_erasing_zeroes_one_rectangle_in_about_half_the_images() -> None:
    x = torch.rand(200, 3, 28, 28, generator=torch.Generator().manual_seed(0)) + 0.05
    cfg = AugmentConfig(**{**OFF.__dict__, "erase_p": 0.5, "erase_scale": (0.05, 0.2)})
    out = BatchAugment(cfg, seed=0)(x)
    zero = out == 0  # (B, 3, H, W): the input has no zeros
    erased = zero.flatten(1).any(dim=1)
    assert 0.35 < erased.float().mean() < 0.65
    torch.testing.assert_close(out[~erased], x[~erased].clamp(0, 1))
    for img, z in zip(out[erased], zero[erased], strict=True):
        assert (z[0] == z[1]).all() and (z[0] == z[2]).all()  # all channels
        r, c = z[0].any(dim=1).nonzero().flatten(), z[0].any(dim=0).nonzero().flatten()
        box = z[0][r.min() : r.max() + 1, c.min() : c.max() + 1]
        assert box.all() and int(box.sum()) == int(z[0].sum())  # one filled rectangle
        assert 0.04 * 784 <= box.numel() <= 0.25 * 784
        assert (img[~z] > 0).all()
    with pytest.raises(InvalidInputError, match=r"augment\.erase_p"):
        AugmentConfig(erase_p=1.5)
    with pytest.raises(InvalidInputError, match=r"augment\.erase_scale"):
        AugmentConfig(erase_scale=(0.3, 0.1))


def test_batch_augment_changes_images_within_range_and_is_seeded() -> None:
    x = torch.rand(16, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    cfg = AugmentConfig(blur_p=0.5, jpeg_p=0.5, noise_p=0.5)
    a, b = BatchAugment(cfg, seed=5)(x), BatchAugment(cfg, seed=5)(x)
    assert a.shape == x.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    torch.testing.assert_close(a, b)
    per_image = (a - x).abs().flatten(1).mean(dim=1)
    assert bool((per_image > 1e-3).all())
    with pytest.raises(InvalidInputError, match=r"float images \(B, 3, H, W\)"):
        BatchAugment(cfg)(x[0])


def test_augment_config_validation_names_the_key() -> None:
    with pytest.raises(InvalidInputError, match=r"augment\.noise_p"):
        AugmentConfig(noise_p=2.0)
    with pytest.raises(InvalidInputError, match=r"augment\.crop_scale"):
        AugmentConfig(crop_scale=(0.9, 0.5))
    with pytest.raises(InvalidInputError, match="one of none, light, shift, shift-erase, robust"):
        augment_preset("strong")


def test_sample_transform_gives_float_images_of_the_size() -> None:
    img = (torch.rand(3, 28, 28) * 255).to(torch.uint8)
    out = sample_transform(AugmentConfig(jpeg_p=1.0, noise_p=1.0), 24)(img)
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_image_to_tensor_handles_modes_and_shapes() -> None:
    gray = Image.new("L", (40, 20), 128)
    rgba = Image.new("RGBA", (10, 30), (255, 0, 0, 0))  # transparent -> white
    a, b = image_to_tensor(gray, 16), image_to_tensor(rgba, 16)
    assert a.shape == b.shape == (3, 16, 16) and a.dtype == torch.uint8
    assert int(a[0, 8, 8]) == 128 and int(b.min()) == 255


def test_collate_batches_texts_and_applies_batch_augment() -> None:
    images, labels = fake_arrays()
    data = FashionMNISTDataset(images, labels)
    items = [data[i] for i in range(5)]
    batch = Collate()(items)
    assert batch["image"].shape == (5, 3, 28, 28) and batch["label"].tolist() == [0] * 5
    assert isinstance(batch["text"], list) and len(batch["text"]) == 5
    flipped = Collate(BatchAugment(AugmentConfig(**{**OFF.__dict__, "flip_p": 1.0})))(items)
    torch.testing.assert_close(flipped["image"], batch["image"].flip(-1), atol=1e-5, rtol=0)
    moved = batch_to(batch, "cpu")
    assert moved["text"] is batch["text"] and moved["image"].device.type == "cpu"
    with pytest.raises(InvalidInputError, match="empty batch"):
        Collate()([])


# ---- catalogue dataset -------------------------------------------------------------------


@pytest.fixture
def tiny_catalog(home: Path, catalog_dir: Path) -> object:
    from shoplens.catalog.ingest import ingest_manifest
    from shoplens.catalog.store import Catalog

    ingest_manifest(catalog_dir, "tiny-train")
    cat = Catalog.open("tiny-train")
    yield cat
    cat.close()


def test_catalog_dataset_items_labels_and_attributes(tiny_catalog: object) -> None:
    data = CatalogDataset(tiny_catalog, image_size=20)
    assert len(data) == 24 and data.classes == tuple(sorted(data.classes))
    assert set(data.attribute_names) >= {"size=large", "size=small", "color=red"}
    item = data[0]
    assert item["image"].shape == (3, 20, 20) and item["image"].dtype == torch.float32
    product = data.products[0]
    assert data.classes[item["label"]] == product.category
    names = data.attribute_names
    on = {names[j] for j in range(len(names)) if item["attributes"][j] == 1}
    assert on == {f"{k}={v}" for k, v in product.attributes.items() if f"{k}={v}" in names}
    assert bool((item["attribute_mask"] == 1).all())
    words = " ".join(data[i]["text"].lower() for i in range(len(data)))
    assert "circle" in words and "square" in words


def test_catalog_dataset_filters_and_errors(tiny_catalog: object) -> None:
    large = CatalogDataset(tiny_catalog, where={"size": "large"}, attribute_keys=["color"])
    assert len(large) == 12 and all(n.startswith("color=") for n in large.attribute_names)
    with pytest.raises(InvalidInputError, match=r"unknown attribute key\(s\) \['fabric'\]"):
        CatalogDataset(tiny_catalog, attribute_keys=["fabric"])
    with pytest.raises(InvalidInputError, match="no products matching"):
        CatalogDataset(tiny_catalog, where={"size": "huge"})


def test_every_class_name_is_among_its_training_nouns() -> None:
    # zero-shot prompts name a class as labelled ("a photo of a Trouser"): the training
    # texts must contain that word, else the prompt is out of the learned vocabulary
    for name in CLASSES:
        for part in name.lower().split("/"):
            assert part in FASHION_MNIST_SYNONYMS[name], (name, part)
