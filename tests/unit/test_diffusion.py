"""The diffusion family: config checks, conditioning tokens and dropout, the training data
(phrasings, taste vectors), training with the loop, and the recipe / experiment wiring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from shoplens.config import load_config
from shoplens.data import fashion_mnist
from shoplens.errors import InvalidInputError
from shoplens.models.diffusion import (
    DiffusionDataset,
    DiffusionModel,
    class_phrasings,
    prepare_diffusion_data,
    same_class_neighbours,
    to_model_pixels,
)
from shoplens.models.io import load_model, save_model
from shoplens.registry import create_model, get_encoder
from shoplens.training import TrainConfig, fit
from shoplens.training.experiment import ExperimentConfig, resolve_config_path, run_experiment

CLASSES = ("Bag", "Sneaker", "Trouser")


@pytest.fixture(scope="module")
def cond_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An (untrained) clip-test-tiny saved as ``trained:DIR``: image and text embeddings."""
    folder = tmp_path_factory.mktemp("cond") / "clip"
    torch.manual_seed(0)
    save_model(create_model("clip-test-tiny"), folder)
    return f"trained:{folder}"


def fake_images(per_class: int = 4, classes: int = len(CLASSES)) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 images whose brightness pattern depends on the class."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), per_class)
    images = np.zeros((len(labels), 28, 28), np.uint8)
    for i, c in enumerate(labels):
        images[i, 4 + 6 * c : 10 + 6 * c, 4:24] = 200 + rng.integers(0, 50)
    return images, labels


def tiny(cond_spec: str, **kw: Any) -> DiffusionModel:
    torch.manual_seed(0)
    model: DiffusionModel = create_model(
        "diffusion-test-tiny", class_names=list(CLASSES), cond_encoder=cond_spec, **kw
    )
    return model


def test_configs_build_and_bad_ones_fail() -> None:
    model = create_model("diffusion-test-tiny")
    assert model.family == "diffusion" and model.image_size == 32 and model.cfg.crop_size == 28
    with pytest.raises(InvalidInputError, match="attention_levels"):
        create_model("diffusion-test-tiny", attention_levels=[True])
    with pytest.raises(InvalidInputError, match="norm_num_groups"):
        create_model("diffusion-test-tiny", block_out_channels=[12, 24])
    with pytest.raises(InvalidInputError, match="p_drop_text"):
        create_model("diffusion-test-tiny", p_drop_text=1.5)


def test_absent_conditions_become_their_null_tokens(cond_spec: str) -> None:
    model = tiny(cond_spec)
    emb = torch.nn.functional.normalize(torch.randn(3, model.embed_dim), dim=1)
    category = torch.tensor([0, -1, 2])
    text = emb.clone()
    text[1] = 0.0  # row 1: no text
    tokens = model.tokens(category, text, None)  # (3, 3, D)
    null = model.null_tokens.detach()
    assert tokens.shape == (3, 3, model.cfg.token_dim)
    assert torch.equal(tokens[1, 0], null[0]) and torch.equal(tokens[1, 1], null[1])
    assert torch.equal(tokens[:, 2], null[2].expand(3, -1))  # no taste at all
    assert not torch.equal(tokens[0, 0], null[0]) and not torch.equal(tokens[0, 1], null[1])
    assert torch.equal(tokens[0, 0], model.category_embed.weight[0])
    assert torch.equal(model.null_like(tokens), null.expand(3, -1, -1))


def test_condition_dropout_all_or_nothing(cond_spec: str) -> None:
    emb = torch.nn.functional.normalize(torch.randn(64, 16), dim=1)
    batch = {"label": torch.arange(64) % 3, "text_emb": emb, "taste": emb}
    cat, text, taste = tiny(cond_spec, p_drop_all=1.0)._dropped(batch)
    assert (cat == -1).all() and not text.any() and not taste.any()
    keep = tiny(cond_spec, p_drop_all=0.0, p_drop_category=0.0, p_drop_text=0.0, p_drop_taste=0.0)
    cat, text, taste = keep._dropped(batch)
    assert torch.equal(cat, batch["label"]) and torch.equal(text, emb)
    torch.manual_seed(1)
    cat, text, _ = tiny(cond_spec, p_drop_all=0.0, p_drop_text=0.5)._dropped(batch)
    dropped = int((text.abs().sum(1) == 0).sum())
    assert 16 < dropped < 48  # about half of the 64 texts


def test_pixels_are_padded_and_scaled() -> None:
    images = np.full((2, 28, 28), 255, np.uint8)
    x = to_model_pixels(torch.from_numpy(images), 32)  # (2, 1, 32, 32)
    assert x.shape == (2, 1, 32, 32)
    assert torch.all(x[:, :, 2:30, 2:30] == 1.0) and x[:, :, :2].eq(-1).all()
    assert x[:, :, :, 30:].eq(-1).all()


def test_training_items_phrasings_and_tastes(cond_spec: str) -> None:
    images, labels = fake_images()
    encoder = get_encoder(cond_spec)
    data = prepare_diffusion_data(images, labels, CLASSES, encoder, neighbours=2, seed=3)
    texts, owner = class_phrasings(CLASSES)
    pool = encoder.encode_texts(texts)
    item = data[5]
    assert item["image"].shape == (1, 32, 32) and item["label"] == labels[5]
    assert float(item["image"].min()) >= -1.0 and float(item["image"].max()) <= 1.0
    # the text is one of the phrasings of the item's own class
    sims = pool @ item["text_emb"].numpy()
    assert owner[int(np.argmax(sims))] == labels[5] and np.isclose(sims.max(), 1.0, atol=1e-5)
    taste = item["taste"].numpy()
    assert np.isclose(np.linalg.norm(taste), 1.0, atol=1e-5)
    # a taste looks like its own class more than like the others
    per_class = np.stack([data.image_emb[labels == c].mean(0) for c in range(len(CLASSES))])
    assert int(np.argmax(per_class @ taste)) == labels[5]
    # seeded per (index, epoch)
    assert torch.equal(data[5]["taste"], item["taste"])
    data.set_epoch(1)
    assert not torch.equal(data[5]["taste"], item["taste"])
    near = same_class_neighbours(data.image_emb, labels, 2)
    assert (labels[near] == labels[:, None]).all()
    assert (near != np.arange(len(labels))[:, None]).all()


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_trains_with_the_loop_and_round_trips(
    cond_spec: str, tmp_path: Path, prediction: str
) -> None:
    images, labels = fake_images(per_class=3)
    data = prepare_diffusion_data(images[:8], labels[:8], CLASSES, get_encoder(cond_spec))
    repeated = Subset(data, [i % 8 for i in range(8 * 30)])  # the same 8 items, 30 batches
    model = tiny(cond_spec, prediction_type=prediction)
    assert model.noise_scheduler.config.prediction_type == prediction
    losses: list[float] = []
    cfg = TrainConfig(epochs=1, batch_size=8, lr=3e-3, weight_decay=0.0, ema_decay=0.9)
    result = fit(
        model, repeated, cfg, run_dir=tmp_path, on_step=lambda s, m: losses.append(m["loss"])
    )
    assert result.steps == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5])
    loaded = load_model(result.model_dir)
    assert isinstance(loaded, DiffusionModel) and loaded.cfg.cond_encoder == cond_spec
    assert loaded.noise_scheduler.config.prediction_type == prediction
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([10, 90])
    tokens = loaded.tokens(torch.tensor([0, -1]))
    assert loaded(x, t, tokens).shape == (2, 1, 32, 32)


def test_recipe_runs_with_the_experiment(
    cond_spec: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, labels = fake_images(per_class=4, classes=10)

    def fake_load(split: str, data_dir: Path | None = None) -> fashion_mnist.FashionMNIST:
        return fashion_mnist.FashionMNIST(split, images, labels)  # type: ignore[arg-type]

    monkeypatch.setattr(fashion_mnist, "load_fashion_mnist", fake_load)
    overrides = [
        "model=diffusion-test-tiny",
        f"data.cond_encoder={cond_spec}",
        "data.limit=24",
        "train.max_steps=2",
        "train.batch_size=8",
        "train.warmup_steps=1",
        "tracking.enabled=false",
        "run_name=diffusion-smoke",
    ]
    cfg = load_config(ExperimentConfig, resolve_config_path("fmnist-diffusion"), overrides)
    assert cfg.tracking.register_as == "fm-diffusion" and cfg.train.max_minutes is not None
    result = run_experiment(cfg)
    model = load_model(result.model_dir)
    assert model.cfg.cond_encoder == cond_spec and model.cfg.embed_dim == 16
    assert model.class_names == fashion_mnist.CLASSES
    assert list(result.run_dir.glob("cond-image-emb-*.npy"))  # cached in the run folder


def test_dataset_checks_its_inputs() -> None:
    images, labels = fake_images()
    emb = np.eye(len(labels), 4, dtype=np.float32)
    with pytest.raises(InvalidInputError, match="differ in length"):
        DiffusionDataset(images[:3], labels, emb, np.zeros((len(labels), 1)), emb, labels)
    with pytest.raises(InvalidInputError, match="no phrasings"):
        DiffusionDataset(
            images, labels, emb, np.zeros((len(labels), 1)), emb[:1], np.zeros(1, np.int64)
        )
