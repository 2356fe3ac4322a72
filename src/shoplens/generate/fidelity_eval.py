"""``evaluate_generator``: the fidelity checks of a diffusion model on Fashion-MNIST.

Features for FID, precision / recall and memorisation come from shoplens's OWN trained
image tower (by default the trained ResNet classifier's penultimate features), NOT from
Inception: the values measure distances in that tower's space and are not comparable
with published Inception FIDs. Real features of the Fashion-MNIST splits are cached under
``$SHOPLENS_HOME/cache/fidelity/`` (keyed by the weights' sha256 and the images).

* FID: generated samples vs the 10,000 test images; floor: as many TRAIN images vs test.
* Precision / recall (k = 3): samples vs the same number of random test images.
* Conditional accuracy: the classifier labels each sample; share equal to the category
  asked for (and to the class a text prompt names).
* Memorisation: nearest-training-image distances vs the 1% quantile of test images'
  nearest-training distances, in the tower's L2-normalised feature space and, as a
  second view, in pixel space.
* Customer conditioning (SIMULATED customers): cosine of samples to the customer's taste
  (pooled history embedding in the conditioning encoder's image space), with vs without
  the taste, same seeds, paired Wilcoxon test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from shoplens.data.fashion_mnist import CLASSES as FM_CLASSES
from shoplens.data.fashion_mnist import FashionMNIST
from shoplens.errors import InvalidInputError
from shoplens.generate.fidelity import (
    conditional_accuracy,
    frechet_distance,
    l2_rows,
    memorisation_threshold,
    nearest_neighbours,
    precision_recall,
)
from shoplens.generate.fidelity_customers import customers_check
from shoplens.generate.fidelity_features import (
    ImageTower,
    pixel_vectors,
    real_features,
    to_array,
)

if TYPE_CHECKING:
    from shoplens.generate.pipeline import Generator

Say = Callable[[str], None]
MAX_N = 64  # images per Generator.generate call (its n limit)
FEATURE_NOTE = (
    "shoplens's own trained image tower (not Inception): values are distances in that "
    "tower's feature space and are not comparable with published Inception FIDs"
)


def _quiet(_: str) -> None:
    return None


# --- generation -------------------------------------------------------------------------


def generate_many(generator: Generator, n: int, *, seed: int, **kwargs: Any) -> list[Image.Image]:
    """``n`` images in chunks of at most 64; image i uses ``seed + i`` as in one call."""
    out: list[Image.Image] = []
    for start in range(0, n, MAX_N):
        chunk = generator.generate(n=min(MAX_N, n - start), seed=seed + start, **kwargs)
        out += [g.image for g in chunk]
    return out


def class_samples(
    generator: Generator, classes: Sequence[str], per_class: int, *, seed: int, **kwargs: Any
) -> tuple[list[Image.Image], list[str]]:
    """``per_class`` images of each class; class c uses seeds ``seed + c * 10_000 + i``, so
    the first m images of a larger run equal an m-image run."""
    images: list[Image.Image] = []
    requested: list[str] = []
    for c, name in enumerate(classes):
        images += generate_many(
            generator, per_class, seed=seed + c * 10_000, category=name, **kwargs
        )
        requested += [name] * per_class
    return images, requested


# --- the evaluation ---------------------------------------------------------------------


def _subset(n_total: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted random indices: ``n`` of ``range(n_total)`` (all when n >= n_total)."""
    if n >= n_total:
        return np.arange(n_total)
    return np.sort(rng.choice(n_total, size=n, replace=False))


def _prompt(category: str) -> str:
    from shoplens.data.texts import zero_shot_prompts

    return zero_shot_prompts(category)[0]  # e.g. "a photo of an ankle boot."


def memorisation(
    sample: np.ndarray,
    test: np.ndarray,
    train: np.ndarray,
    *,
    quantile: float,
    space: str,
) -> dict[str, Any]:
    """Memorised share of ``sample`` rows vs ``train``, threshold calibrated on ``test``."""
    thr = memorisation_threshold(test, train, quantile)
    dist, idx = nearest_neighbours(sample, train)
    return {
        "space": space,
        "quantile": quantile,
        "threshold": thr,
        "calibration_images": len(test),
        "train_images": len(train),
        "samples": len(sample),
        "share": float((dist < thr).mean()),
        "flagged": int((dist < thr).sum()),
        "min_distance": float(dist.min()),
        "median_distance": float(np.median(dist)),
        "_nearest": (dist, idx),  # dropped before the JSON is written
    }


def edit_examples(
    generator: Generator,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    classes: Sequence[str],
    steps: int,
    guidance: float,
    seed: int,
    scheduler: str,
    examples: int = 4,
    strengths: Sequence[float] = (0.3, 0.6, 0.9),
) -> tuple[dict[str, Any], dict[str, list[list[Image.Image]]]]:
    """Image-to-image (SDEdit) at several strengths and inpainting (lower half masked,
    strength 1) of a few test images of different categories; checks that inpainting
    keeps the pixels outside the mask.

    Returns the JSON block and grid rows: [original, one image per strength] and
    [original, mask, one inpainted image per strength's seed].
    """
    size = test_images.shape[1]
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[size // 2 :] = 255  # white = regenerate: the lower half
    mask_img = Image.fromarray(mask)
    rows: dict[str, list[list[Image.Image]]] = {"img2img": [], "inpainting": []}
    kept: list[bool] = []
    labels = np.unique(test_labels)
    spread = labels[np.unique(np.linspace(0, len(labels) - 1, examples).round().astype(int))]
    picks = [int(np.flatnonzero(test_labels == c)[0]) for c in spread]  # a test image each
    for j, i in enumerate(picks):
        init = Image.fromarray(test_images[i]).convert("RGB")
        name = FM_CLASSES[int(test_labels[i])]
        kw: dict[str, Any] = {
            "category": name if name in classes else None,
            "guidance": guidance,
            "steps": steps,
            "scheduler": scheduler,
            "init_image": init,
        }
        row = [init]
        for s in strengths:
            row.append(generator.generate(n=1, seed=seed + j, strength=s, **kw)[0].image)
        rows["img2img"].append(row)
        filled = [
            g.image
            for g in generator.generate(
                n=len(strengths), seed=seed + j, mask=mask_img, strength=1.0, **kw
            )
        ]
        rows["inpainting"].append([init, mask_img.convert("RGB"), *filled])
        orig = np.asarray(init)
        kept += [
            bool(np.array_equal(np.asarray(f.convert("RGB"))[mask == 0], orig[mask == 0]))
            for f in filled
        ]
    info = {
        "examples": len(picks),
        "img2img_strengths": list(strengths),
        "inpainting_mask": "lower half of the image regenerated (white in the mask)",
        "inpainted_images": len(kept),
        "inpainting_outside_mask_identical": float(np.mean(kept)) if kept else None,
    }
    return info, rows


def check_settings(
    *,
    n_per_class: int,
    guidance: float,
    steps: int,
    customers: int,
    per_customer: int,
    sweep: Sequence[float],
    sweep_per_class: int,
    prompt_per_class: int,
    quantile: float,
) -> None:
    """Fail early (before any sampling) on out-of-range evaluation settings."""
    from shoplens.generate.pipeline import LIMITS

    ranges: dict[str, tuple[float, float, float]] = {
        "n_per_class": (n_per_class, 2, 5000),
        "guidance": (guidance, *LIMITS["guidance"]),
        "steps": (steps, *LIMITS["steps"]),
        "customers": (customers, 0, 10_000),
        "per_customer": (per_customer, 1, MAX_N),
        "sweep_per_class": (sweep_per_class, 0, 5000),
        "prompt_per_class": (prompt_per_class, 0, 5000),
        **{f"sweep guidance {g}": (g, *LIMITS["guidance"]) for g in sweep},
    }
    for name, (value, lo, hi) in ranges.items():
        if not lo <= value <= hi:
            raise InvalidInputError(f"{name} must be {lo:g} to {hi:g}, got {value:g}")
    if sweep_per_class == 1:
        raise InvalidInputError("sweep_per_class must be 0 (skip) or >= 2")
    if not 0.0 < quantile < 1.0:
        raise InvalidInputError(f"quantile must be in (0, 1), got {quantile}")


@dataclass
class Reference:
    """The real images and the towers every check compares samples with."""

    classes: list[str]  # the generator's categories
    ctower: ImageTower  # labels images
    ftower: ImageTower  # features of FID, precision / recall, memorisation
    test: FashionMNIST
    train: FashionMNIST
    test_f: np.ndarray  # (N_test, D)
    train_f: np.ndarray  # (N_train, D)
    classifier_accuracy: float  # of the classifier on the real test images

    def embed(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, list[str]]:
        """Features (N, D) and classifier labels of (generated) images."""
        arr = to_array(images)
        feats, logits = self.ftower(arr)
        if self.ctower is not self.ftower:
            _, logits = self.ctower(arr)
        return feats, self.ctower.labels(logits)


def load_reference(
    generator: Generator,
    classifier: str,
    features: str | None,
    data_dir: Path | None = None,
    say: Say = _quiet,
) -> Reference:
    """Towers (checked against the generator's categories) and cached real features."""
    from shoplens.data.fashion_mnist import load_fashion_mnist

    ctower = ImageTower(classifier)
    ftower = ctower if features in (None, classifier) else ImageTower(str(features))
    classes = list(generator.categories)
    missing = [c for c in classes if c not in ctower.classes]
    if not ctower.can_classify or missing:
        raise InvalidInputError(
            f"classifier {classifier!r} must label the generator's categories; it has "
            f"{list(ctower.classes) or 'no category head'}, missing {missing}"
        )
    test, train = load_fashion_mnist("test", data_dir), load_fashion_mnist("train", data_dir)
    test_f, logits = real_features(ftower, test.images, say)
    train_f, _ = real_features(ftower, train.images, say)
    if ctower is not ftower:
        _, logits = real_features(ctower, test.images, say)
    truth = [FM_CLASSES[int(y)] for y in test.labels]
    acc = conditional_accuracy(ctower.labels(logits), truth, classes)["overall"]
    return Reference(classes, ctower, ftower, test, train, test_f, train_f, acc)


def sample_quality(
    ref: Reference, fake_f: np.ndarray, k: int, rng: np.random.Generator
) -> tuple[dict[str, Any], dict[str, Any]]:
    """FID vs all test images and precision / recall vs as many random test images as
    samples, each with a real-vs-real floor (as many random TRAIN images as samples)."""
    n = len(fake_f)
    floor = ref.train_f[_subset(len(ref.train_f), n, rng)]
    real = ref.test_f[_subset(len(ref.test_f), n, rng)]
    fid = {
        "value": frechet_distance(ref.test_f, fake_f),
        "samples": n,
        "test_images": len(ref.test_f),
        "real_floor": frechet_distance(ref.test_f, floor),
        "real_floor_train_images": len(floor),
    }
    pr = precision_recall(real, fake_f, k)
    pr["real_floor"] = precision_recall(real, floor, k)
    return fid, pr


def guidance_sweep(
    generator: Generator,
    ref: Reference,
    main: tuple[np.ndarray, list[str], list[str]],
    *,
    guidance: float,
    sweep: Sequence[float],
    per_class: int,
    seed: int,
    say: Say,
    **gen_kw: Any,
) -> dict[str, Any]:
    """FID and conditional accuracy at each guidance scale on ``per_class`` samples per
    category; the main guidance reuses the main run's first samples (same seeds)."""
    fake_f, predicted, requested = main
    n_main = len(requested) // len(ref.classes)
    first = [c * n_main + i for c in range(len(ref.classes)) for i in range(per_class)]
    out = {
        f"{guidance:g}": {
            "samples": len(first),
            "fid": frechet_distance(ref.test_f, fake_f[first]),
            "accuracy": conditional_accuracy(
                [predicted[i] for i in first], [requested[i] for i in first], ref.classes
            )["overall"],
        }
    }
    for g in sorted(set(sweep) - {guidance}):
        say(f"guidance {g:g}: {per_class} x {len(ref.classes)} samples ...")
        imgs, req = class_samples(
            generator, ref.classes, per_class, seed=seed, guidance=g, **gen_kw
        )
        feats, labels = ref.embed(imgs)
        out[f"{g:g}"] = {
            "samples": len(imgs),
            "fid": frechet_distance(ref.test_f, feats),
            "accuracy": conditional_accuracy(labels, req, ref.classes)["overall"],
        }
    return dict(sorted(out.items(), key=lambda kv: float(kv[0])))


def prompt_accuracy(
    generator: Generator, ref: Reference, per_class: int, *, seed: int, **gen_kw: Any
) -> dict[str, Any]:
    """Share of samples generated from a text prompt naming a class (no category given)
    that the classifier labels as that class."""
    prompts = {name: _prompt(name) for name in ref.classes}
    images: list[Image.Image] = []
    requested: list[str] = []
    for c, name in enumerate(ref.classes):
        images += generate_many(
            generator, per_class, seed=seed + c * 10_000, prompt=prompts[name], **gen_kw
        )
        requested += [name] * per_class
    _, labels = ref.embed(images)
    return {**conditional_accuracy(labels, requested, ref.classes), "prompts": prompts}


def evaluate_generator(
    generator: Generator,
    *,
    classifier: str,
    features: str | None = None,
    catalog: str | None = "fashion-mnist",
    n_per_class: int = 100,
    guidance: float = 3.0,
    steps: int = 50,
    seed: int = 0,
    customers: int = 20,
    per_customer: int = 2,
    scheduler: str = "ddpm",
    sweep: Sequence[float] = (0.0, 1.0),
    sweep_per_class: int = 20,
    prompt_per_class: int = 10,
    k: int = 3,
    quantile: float = 0.01,
    pixel_calibration: int = 2000,
    img_dir: Path | None = None,
    data_dir: Path | None = None,
    say: Say = _quiet,
) -> dict[str, Any]:
    """Every fidelity check of ``generator`` against Fashion-MNIST; JSON-able result.

    ``classifier`` labels samples (a trained shoplens classifier spec); ``features`` (default:
    the classifier) is the tower whose features FID, precision / recall and memorisation use.
    With ``img_dir`` the sample grids are written there as ``generate-*.png``.
    """
    from shoplens.generate.fidelity_report import write_grids

    settings: dict[str, Any] = {
        "n_per_class": n_per_class, "guidance": guidance, "steps": steps, "seed": seed,
        "scheduler": scheduler, "k": k, "quantile": quantile, "customers": customers,
        "catalog": catalog, "per_customer": per_customer, "sweep": sorted({*sweep, guidance}),
        "sweep_per_class": sweep_per_class, "prompt_per_class": prompt_per_class,
    }  # fmt: skip
    check_settings(
        n_per_class=n_per_class, guidance=guidance, steps=steps, customers=customers,
        per_customer=per_customer, sweep=sweep, sweep_per_class=sweep_per_class,
        prompt_per_class=prompt_per_class, quantile=quantile,
    )  # fmt: skip
    generator.make_scheduler(scheduler)  # an unknown sampler fails before any work
    if customers and catalog:  # so does an unknown catalogue (not after the sampling)
        from shoplens.catalog.store import Catalog

        with Catalog.open(catalog):
            pass
    timings: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        timings[name] = round(time.perf_counter() - clock[0], 2)
        clock[0] = time.perf_counter()

    ref = load_reference(generator, classifier, features, data_dir, say)
    classes, rng = ref.classes, np.random.default_rng(seed)
    lap("real_features")
    say(f"generating {n_per_class} x {len(classes)} samples at guidance {guidance:g} ...")
    gen_kw: dict[str, Any] = {"steps": steps, "scheduler": scheduler}
    images, requested = class_samples(
        generator, classes, n_per_class, seed=seed, guidance=guidance, **gen_kw
    )
    lap("generate")
    fake_f, predicted = ref.embed(images)
    fid, pr = sample_quality(ref, fake_f, k, rng)
    by_guidance: dict[str, Any] = {}
    if sweep_per_class:
        by_guidance = guidance_sweep(
            generator, ref, (fake_f, predicted, requested), guidance=guidance, sweep=sweep,
            per_class=min(sweep_per_class, n_per_class), seed=seed, say=say, **gen_kw,
        )  # fmt: skip
    lap("fid_pr_sweep")
    prompts = None
    if prompt_per_class:
        say(f"text prompts: {prompt_per_class} x {len(classes)} samples ...")
        prompts = prompt_accuracy(
            generator, ref, prompt_per_class, seed=seed, guidance=guidance, **gen_kw
        )
    lap("prompts")

    say("memorisation: nearest training images ...")
    mem_f = memorisation(
        l2_rows(fake_f), l2_rows(ref.test_f), l2_rows(ref.train_f), quantile=quantile,
        space=f"L2-normalised features of {ref.ftower.spec}",
    )  # fmt: skip
    calib = ref.test.images[_subset(len(ref.test), pixel_calibration, rng)]
    mem_p = memorisation(
        pixel_vectors(to_array(images)), pixel_vectors(calib), pixel_vectors(ref.train.images),
        quantile=quantile, space="pixels (grayscale, 0..1)",
    )  # fmt: skip
    settings["pixel_calibration"] = len(calib)
    nearest, _ = mem_f.pop("_nearest"), mem_p.pop("_nearest")
    lap("memorisation")
    cust, cust_imgs = customers_check(
        generator, catalog, customers, seed=seed, say=say, per_customer=per_customer,
        guidance=guidance, **gen_kw,
    )  # fmt: skip
    lap("customers")
    edits, edit_imgs = edit_examples(
        generator, ref.test.images, ref.test.labels, classes=classes, guidance=guidance,
        seed=seed, **gen_kw,
    )  # fmt: skip
    lap("edits")
    grids: dict[str, str] = {}
    if img_dir is not None:
        grids = write_grids(
            Path(img_dir), classes=classes, samples=images, per_class=n_per_class,
            edits=edit_imgs, customers=cust_imgs, nearest=(nearest, ref.train.images),
        )  # fmt: skip
    lap("grids")
    return {
        "model": generator.name,
        "classifier": classifier,
        "features": ref.ftower.spec,
        "feature_note": FEATURE_NOTE,
        "settings": settings,
        "data": {"test_images": len(ref.test), "train_images": len(ref.train)},
        "samples": {
            "n": len(images),
            "seconds": timings["generate"],
            "images_per_s": len(images) / max(timings["generate"], 1e-9),
        },
        "fid": {**fid, "by_guidance": by_guidance},
        "precision_recall": pr,
        "conditional_accuracy": conditional_accuracy(predicted, requested, classes),
        "classifier_test_accuracy": ref.classifier_accuracy,
        "prompt_accuracy": prompts,
        "memorisation": {"features": mem_f, "pixels": mem_p},
        "customers": cust,
        "edits": edits,
        "grids": grids,
        "timings_s": {**timings, "total": round(sum(timings.values()), 2)},
    }
