"""Evaluation tasks on tiny generated data, with a fake shared-space encoder.

``ColourEncoder`` embeds an image by its mean colour and a text by the colour word it
names, in one 4-d space (RGB + an "unknown" axis), so the expected figures follow by hand:
it knows "red", "green" and "blue" but not "yellow", whose prompts land on the unknown
axis (cosine 0 with every image), so yellow images are zero-shot classified red.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression

from shoplens.errors import InvalidInputError
from shoplens.eval.cli import model_table
from shoplens.eval.context import EvalContext, EvalData
from shoplens.eval.probe import linear_probe
from shoplens.eval.results_md import (
    IN_DOMAIN_NOTE,
    TRAINED_HEADING,
    append_trained_row,
    headline,
    trained_row,
    write_foundation_report,
)
from shoplens.eval.tasks import TASK_NAMES, check_tasks, run_tasks
from shoplens.models.base import Encoder, Modality, l2_normalize
from shoplens.models.encoders import HashTextEncoder, PixelsEncoder

CLASSES = ("red", "green", "blue", "yellow")
RGB = {
    "red": (200, 20, 20),
    "green": (20, 200, 20),
    "blue": (20, 20, 200),
    "yellow": (200, 180, 20),
}
KNOWN = {"red": 0, "green": 1, "blue": 2}
PER_CLASS = 5


class ColourEncoder(Encoder):
    """Images -> mean RGB; texts -> the axis of the first known colour word, else axis 3."""

    modalities: ClassVar[frozenset[Modality]] = frozenset({"image", "text"})
    name = "test-colour"
    dim = 4

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        means = [np.asarray(im.convert("RGB"), np.float32).mean(axis=(0, 1)) for im in images]
        x = np.zeros((len(images), 4), np.float32)  # (N, 4)
        if means:
            x[:, :3] = np.stack(means)
        return l2_normalize(x)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        x = np.zeros((len(texts), 4), np.float32)  # (N, 4)
        for n, t in enumerate(texts):
            axes = [KNOWN[w] for w in t.lower().split() if w in KNOWN]
            x[n, axes[0] if axes else 3] = 1.0
        return x


def solid(colour: tuple[int, int, int], seed: int, size: int = 12) -> Image.Image:
    """A flat colour with +-6 grey levels of noise."""
    noise = np.random.default_rng(seed).integers(-6, 7, (size, size, 3))
    return Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8))


def colour_data(per_class: int = PER_CLASS, *, train: bool = True) -> EvalData:
    """Class-major test images (all red first, ...) and a train split of 6 per class."""
    test_labels = np.repeat(np.arange(len(CLASSES)), per_class)
    train_labels = np.repeat(np.arange(len(CLASSES)), 6) if train else np.zeros(0, np.int64)
    return EvalData(
        classes=CLASSES,
        test_images=[solid(RGB[CLASSES[c]], n) for n, c in enumerate(test_labels)],
        test_labels=test_labels,
        train_images=[solid(RGB[CLASSES[c]], 1000 + n) for n, c in enumerate(train_labels)],
        train_labels=train_labels,
        name="colours",
    )


def pattern_data(n_test: int = 12, n_train: int = 12) -> EvalData:
    """Distinct smooth random grey patterns (upsampled 7x7 noise); test 0 == train 0."""
    rng = np.random.default_rng(0)

    def pattern() -> Image.Image:
        small = Image.fromarray(rng.integers(0, 256, (7, 7), dtype=np.uint8), mode="L")
        return small.resize((28, 28), Image.Resampling.BILINEAR).convert("RGB")

    test = [pattern() for _ in range(n_test)]
    train = [test[0].copy()] + [pattern() for _ in range(n_train - 1)]
    return EvalData(
        classes=("a", "b"),
        test_images=test,
        test_labels=np.arange(n_test) % 2,
        train_images=train,
        train_labels=np.arange(n_train) % 2,
        name="patterns",
    )


def test_zero_shot_by_hand() -> None:
    got = run_tasks(EvalContext(colour_data(), ColourEncoder()), ["zero_shot"])["zero_shot"]
    # red, green, blue right; yellow -> red (cosine 0.74 with red, 0 with the unknown axis)
    assert got["accuracy"] == pytest.approx(0.75)
    assert got["per_class"]["red"]["precision"] == pytest.approx(0.5)
    assert got["per_class"]["yellow"]["recall"] == 0.0
    assert got["weighted_f1"] == pytest.approx((2 / 3 + 1 + 1 + 0) / 4)
    assert got["confusion_matrix"][3] == [PER_CLASS, 0, 0, 0]
    assert got["templates"] == ["a photo of a {c}", "{c}", "a product photo of {c}"]


def test_text_to_image_by_hand() -> None:
    got = run_tasks(EvalContext(colour_data(), ColourEncoder()), ["text_to_image"])
    t = got["text_to_image"]["by_label"]
    # 12 queries (4 classes x 3 templates); the 3 yellow ones score every image 0 and the
    # stable ranking keeps gallery order (red images first): a miss at every cut-off
    assert t["queries"] == 12
    assert t["recall_at_k"] == pytest.approx({"1": 0.75, "5": 0.75, "10": 0.75})
    assert t["precision_at_k"]["5"] == pytest.approx(0.75)  # 5 images of each class
    assert t["precision_at_k"]["10"] == pytest.approx(9 * 0.5 / 12)
    assert got["text_to_image"]["captions"] == {
        "skipped": "data 'colours' has no per-item captions"
    }


def test_per_item_caption_retrieval() -> None:
    colours = [(200, 0, 20), (20, 200, 100), (20, 20, 200)]  # reddish, greenish, bluish
    data = EvalData(
        classes=CLASSES,
        test_images=[Image.new("RGB", (8, 8), c) for c in colours],
        test_labels=np.array([0, 1, 2]),
        captions=["a red dress", "a blue coat", "green trousers"],  # 2nd and 3rd swapped
    )
    got = run_tasks(EvalContext(data, ColourEncoder()), ["text_to_image"])["text_to_image"]
    caps = got["captions"]
    assert caps["recall_at_k"]["1"] == pytest.approx(1 / 3)
    assert caps["recall_at_k"]["5"] == 1.0  # the gallery holds 3 images
    # blue axis: bluish 0.99 > greenish 0.44 > reddish 0.1 -> its target (greenish) 2nd;
    # green axis: greenish 0.89 > bluish 0.1 > reddish 0 -> its target (bluish) 2nd
    assert caps["map"] == pytest.approx((1 + 1 / 2 + 1 / 2) / 3)


def test_held_out_among_all_and_among_held_out() -> None:
    ctx = EvalContext(colour_data(), ColourEncoder(), held_out=("blue", "yellow"))
    got = run_tasks(ctx, ["held_out"])["held_out"]
    assert got["images"] == 2 * PER_CLASS
    # among all classes: blue right, yellow -> red
    assert got["all_classes"]["accuracy"] == pytest.approx(0.5)
    assert got["all_classes"]["recall"] == {"blue": 1.0, "yellow": 0.0}
    assert got["all_classes"]["chance_accuracy"] == 0.25
    # among blue and yellow only: yellow (cosine 0.07 with blue, 0 with unknown) -> blue
    assert got["held_out_only"]["accuracy"] == pytest.approx(0.5)
    assert got["held_out_only"]["candidates"] == 2
    assert got["predicted_as_seen_class"] == pytest.approx(0.5)
    assert "note" not in got
    one = run_tasks(EvalContext(colour_data(), ColourEncoder(), held_out=["yellow"]), ["held_out"])
    assert one["held_out"]["held_out_only"]["accuracy"] == 1.0
    assert "trivial" in one["held_out"]["note"]


def test_image_retrieval_train_gallery_and_leave_one_out() -> None:
    got = run_tasks(EvalContext(colour_data(), ColourEncoder()), ["image_retrieval"])
    r = got["image_retrieval"]
    assert (r["gallery_split"], r["queries"], r["gallery"]) == ("train", 20, 24)
    assert r["knn_accuracy"] == 1.0 and r["map"] == 1.0  # same colour always ranks first
    assert r["recall_at_k"] == {"1": 1.0, "5": 1.0, "10": 1.0}
    loo = run_tasks(EvalContext(colour_data(train=False), ColourEncoder()), ["image_retrieval"])
    r = loo["image_retrieval"]
    assert (r["gallery_split"], r["gallery"]) == ("test, leave-one-out", 20)
    assert r["precision_at_k"]["5"] == pytest.approx(4 / 5)  # 4 other images of the class
    assert r["map"] == 1.0


def test_classification_with_a_head_and_with_a_linear_probe() -> None:
    data = colour_data()

    def always_red(images: Sequence[Image.Image]) -> np.ndarray:
        return np.tile([1.0, 0.0, 0.0, 0.0], (len(images), 1))  # (N, 4)

    got = run_tasks(EvalContext(data, classifier=always_red), ["classification"])
    c = got["classification"]
    assert c["method"] == "classifier head"
    assert c["accuracy"] == 0.25
    assert c["weighted_f1"] == pytest.approx(0.25 * (2 * 0.25 / 1.25))  # red: P 1/4, R 1

    class FlipTTAEncoder(ColourEncoder):
        tta = "flip"  # a trained classifier whose head averages each image's mirror

    tta = run_tasks(EvalContext(data, FlipTTAEncoder(), always_red), ["classification"])
    assert tta["classification"]["method"] == "classifier head (flip TTA)"
    meta = {"date": "d", "model": "m", "data_description": "x", "seed": 0, "eval_s": 1.0}
    meta["machine"] = {"nproc": 2, "cpu": "cpu"}
    assert trained_row({"meta": meta, "tasks": tta})[4] == "0.2500 (head, flip TTA)"
    assert trained_row({"meta": meta, "tasks": got})[4] == "0.2500 (head)"
    run = {"meta": {**meta, "json": "m.json", "mlflow_run_id": None}, "tasks": got}
    run["headline"] = headline(run)
    assert model_table([run])[1].split()[1] == "0.2500"  # the console table: 4 places too

    probe = run_tasks(EvalContext(data, ColourEncoder()), ["classification"])["classification"]
    assert probe["method"].startswith("linear probe")
    assert probe["accuracy"] == 1.0  # the four colours are linearly separable

    def wrong_shape(images: Sequence[Image.Image]) -> np.ndarray:
        return np.zeros((len(images), 3))

    with pytest.raises(InvalidInputError, match=r"expected \(20, 4\)"):
        run_tasks(EvalContext(data, classifier=wrong_shape), ["classification"])


def test_linear_probe_agrees_with_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 6))
    y = rng.integers(0, 3, 300)
    x = centres[y] + 1.2 * rng.normal(size=(300, 6))
    ours = linear_probe(x[:200], y[:200], x[200:], 3)
    theirs = LogisticRegression(C=1.0, max_iter=1000).fit(x[:200], y[:200]).predict(x[200:])
    assert np.mean(ours == theirs) >= 0.97
    assert 0.6 < np.mean(ours == y[200:]) <= 1.0


def test_robustness_finds_the_original_or_an_identical_image() -> None:
    data = pattern_data()
    ctx = EvalContext(data, PixelsEncoder(), n_aug=6, seed=1)
    got = run_tasks(ctx, ["robustness"])["robustness"]
    assert (got["originals"], got["queries"], got["gallery"]) == (6, 24, 24)
    assert set(got["r_at_1"]) == {"crop", "noise", "brightness", "blur-jpeg", "overall"}
    assert got["r_at_1"]["noise"] == 1.0 and got["r_at_1"]["brightness"] == 1.0
    assert all(0.0 <= v <= 1.0 for v in got["r_at_10"].values())
    assert got["r_at_10"]["overall"] >= got["r_at_1"]["overall"]


def test_near_duplicates_on_injected_copies(home: Path) -> None:
    data = pattern_data(n_test=20)
    ctx = EvalContext(data, PixelsEncoder(), dedupe_base=20, dedupe_copies=6)
    got = run_tasks(ctx, ["near_duplicates"])["near_duplicates"]
    assert (got["originals"], got["injected"], got["encoder"]) == (20, 6, "pixels")
    assert got["recall_by_alteration"]["brightness"] == 1.0  # pixels are brightness-invariant
    assert got["recall"] is not None and got["recall"] >= 0.5


def test_tasks_a_model_cannot_do_are_skipped_with_a_reason() -> None:
    data = colour_data()
    image_only = run_tasks(EvalContext(data, PixelsEncoder(image_size=12)))
    for name in ("text_to_image", "zero_shot", "held_out"):
        assert "no shared image-text space" in image_only[name]["skipped"]
    assert image_only["classification"]["method"].startswith("linear probe")
    assert "skipped" not in image_only["image_retrieval"]

    text_only = run_tasks(EvalContext(data, HashTextEncoder()), ["image_retrieval", "robustness"])
    assert all("does not encode images" in v["skipped"] for v in text_only.values())
    text_only = run_tasks(EvalContext(data, HashTextEncoder()), ["classification"])
    assert "classifier head" in text_only["classification"]["skipped"]

    head_only = run_tasks(EvalContext(data, classifier=lambda ims: np.eye(4)[[0] * len(ims)]))
    assert "skipped" not in head_only["classification"]
    assert all(
        "only a classifier" in v["skipped"] for k, v in head_only.items() if k != "classification"
    )

    clip = run_tasks(EvalContext(data, ColourEncoder()), ["held_out", "near_duplicates"])
    assert "no held-out classes given" in clip["held_out"]["skipped"]
    assert "'test-colour' is not a loadable spec" in clip["near_duplicates"]["skipped"]


def test_bad_task_names_and_classes_are_user_errors() -> None:
    assert check_tasks(None) == TASK_NAMES
    assert check_tasks(["zero_shot", "classification"]) == ("classification", "zero_shot")
    with pytest.raises(InvalidInputError, match="unknown task 'zero-shot'; choose from"):
        check_tasks(["zero-shot"])
    with pytest.raises(InvalidInputError, match="unknown class 'purple' in held-out"):
        EvalContext(colour_data(), ColourEncoder(), held_out=["purple"])
    with pytest.raises(InvalidInputError, match="give an encoder, a classifier or both"):
        EvalContext(colour_data())
    with pytest.raises(InvalidInputError, match="needs a '\\{c\\}'"):
        EvalContext(colour_data(), ColourEncoder(), templates=["a photo"])
    with pytest.raises(InvalidInputError, match="3 images but 2 labels"):
        EvalData(CLASSES, [solid(RGB["red"], 0)] * 3, np.array([0, 1]))
    with pytest.raises(InvalidInputError, match=r"class indices 0\.\.3"):
        EvalData(CLASSES, [solid(RGB["red"], 0)], np.array([4]))


def test_trained_rows_are_appended_and_survive_the_foundation_report(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    out.write_text("# Results\n\n## 1. Something\n\ntext | with a pipe\n\n## Context\n\nend\n")
    append_trained_row(out, ["2026-01-01", "`a`", *["x"] * 10])
    append_trained_row(out, ["2026-01-02", "`b|c`", *["y"] * 10])
    text = out.read_text()
    assert text.startswith(
        "# Results\n\n## 1. Something\n\ntext | with a pipe\n\n## Context\n\nend"
    )
    assert IN_DOMAIN_NOTE in text and text.count(TRAINED_HEADING) == 1
    rows = [line for line in text.splitlines() if line.startswith("| 2026")]
    assert rows == [
        "| 2026-01-01 | `a` | " + " | ".join(["x"] * 10) + " |",
        "| 2026-01-02 | `b\\|c` | " + " | ".join(["y"] * 10) + " |",
    ]
    # the foundation writer regenerates its part and keeps the trained-models section
    write_foundation_report(out, "# Results v2\n\n## Context\n\nnew\n")
    again = out.read_text()
    assert again.startswith("# Results v2\n\n## Context\n\nnew\n\n## Trained models")
    assert "Something" not in again
    assert [line for line in again.splitlines() if line.startswith("| 2026")] == rows
    # a section in the middle of a file: the row goes into its table, the rest is kept
    out.write_text(f"# R\n\n{TRAINED_HEADING}\n\n| h |\n|---|\n| old |\n\n## After\n\nkept\n")
    append_trained_row(out, ["new"])
    assert (
        out.read_text()
        == f"# R\n\n{TRAINED_HEADING}\n\n| h |\n|---|\n| old |\n| new |\n\n## After\n\nkept\n"
    )


def test_a_models_own_head_is_matched_to_the_data_classes_by_name() -> None:
    from shoplens.eval.runner import model_classifier

    class Head(ColourEncoder):
        classes = ("green", "red", "blue")  # trained without yellow, in its own order

        def classify_images(self, images: Sequence[Image.Image]) -> np.ndarray:
            return self.encode_images(images)[:, [1, 0, 2]]  # (N, 3) logits: green red blue

    head = model_classifier(Head(), CLASSES)
    assert head is not None and model_classifier(ColourEncoder(), CLASSES) is None
    logits = head([solid(RGB["green"], 0), solid(RGB["yellow"], 1)])  # (2, 4)
    assert logits.shape == (2, 4) and np.isinf(logits[:, 3]).all()
    assert np.argmax(logits, axis=1).tolist() == [1, 0]  # green; yellow -> red
    got = run_tasks(EvalContext(colour_data(), classifier=head), ["classification"])
    assert got["classification"]["accuracy"] == 0.75

    class Stranger(Head):
        classes = ("green", "purple")

    with pytest.raises(InvalidInputError, match="unknown class 'purple'"):
        model_classifier(Stranger(), CLASSES)
