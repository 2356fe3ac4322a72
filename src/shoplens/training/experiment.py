"""``shoplens train``: one experiment = a registered model + data + the training loop,
tracked in MLflow, saved as a ``trained:DIR`` model and optionally registered.

The config is one typed tree (defaults <- YAML <- ``section.key=value`` overrides)::

    model: clip-small            # a name from shoplens/models/configs/*.json
    model_overrides: {embed_dim: 64}
    data:  {source: fashion-mnist, held_out: [Sandal, Bag], limit: null}
    train: {epochs: 8, lr: 2e-3, batch_size: 256}
    tracking: {experiment: shoplens, register_as: fm-clip, alias: challenger}

The family of the model decides the data: a ``classifier`` learns category labels
(and attributes of a catalogue), a ``clip`` model learns from product texts (titles,
categories, attributes phrased many ways; on Fashion-MNIST they come from the labels,
so text results are in-domain), a ``combiner`` learns composed queries over the
embeddings of a trained ``clip`` model (``data.base_model``), a ``diffusion`` model learns
to generate product images conditioned on category, text and customer taste embedded by a
CLIP-style model (``data.cond_encoder``).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from shoplens.config import check_name, config_to_dict, runs_dir
from shoplens.errors import InvalidInputError, NotFoundError
from shoplens.training.config import RECIPES, TrainConfig, list_recipes

log = logging.getLogger("shoplens.training")
Alias = Literal["champion", "challenger"]


@dataclass
class DataConfig:
    """What the model learns from."""

    source: str = "fashion-mnist"  # "fashion-mnist" or "catalog:NAME"
    val_fraction: float = 0.1  # held out of training for the epoch-end metrics
    held_out: list[str] = field(default_factory=list)  # classes left out of training
    limit: int | None = None  # first N training items (quick runs)
    augment: str = "robust"  # preset: robust, light, shift, copy, none (AUGMENT_PRESETS)
    image_size: int = 28  # catalogue images are resized to this (Fashion-MNIST is 28)
    eval_items: int = 2000  # validation items scored at epoch ends
    base_model: str | None = None  # combiner: folder of the trained clip model
    cond_encoder: str | None = None  # diffusion: CLIP-style encoder spec or NAME@ALIAS


@dataclass
class TrackingConfig:
    """MLflow tracking and registry."""

    enabled: bool = True
    experiment: str = "shoplens"
    register_as: str | None = None  # registered model name; None = do not register
    alias: Alias = "challenger"


@dataclass
class ExperimentConfig:
    """Everything one ``shoplens train`` run needs; saved as ``config.yaml`` beside it."""

    model: str = "resnet-small"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run_name: str | None = None  # folder under SHOPLENS_HOME/runs (default: time + model)
    # Warm start: the weights of a trained model (folder or registered NAME@ALIAS) of the
    # same architecture, loaded before step 0 (a resumed run continues from its checkpoint).
    init_from: str | None = None
    # LiT from your own tower: the image tower weights of a trained model (a classifier or
    # clip-style model, folder or NAME@ALIAS) copied into this model's image tower before
    # step 0; the tower configs must give the same shapes. Pair with lock_image=true.
    init_image_tower_from: str | None = None


@dataclass
class ExperimentResult:
    """What a finished run produced."""

    run_name: str
    run_dir: Path
    model_dir: Path
    run_id: str | None  # MLflow run id (None when tracking is off)
    metrics: dict[str, float]
    wall_time_s: float
    samples_per_s: float
    registered: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_name": self.run_name,
            "run_dir": str(self.run_dir),
            "model_dir": str(self.model_dir),
            "model_spec": f"trained:{self.model_dir}",
            "run_id": self.run_id,
            "metrics": self.metrics,
            "wall_time_s": round(self.wall_time_s, 1),
            "samples_per_s": round(self.samples_per_s, 1),
            "registered": self.registered,
        }


# ---- data ---------------------------------------------------------------------------


@dataclass
class _Data:
    train: Dataset[Any]
    val: Dataset[Any] | None
    classes: tuple[str, ...]
    collate: Any
    attributes: tuple[str, ...] = ()  # "key=value" outputs of a multi-label head


def _fashion_mnist(cfg: ExperimentConfig, augment: Any) -> _Data:
    from shoplens.data.datasets import FashionMNISTDataset

    d = cfg.data
    train = FashionMNISTDataset.load(
        "train", val_fraction=d.val_fraction, seed=cfg.train.seed, held_out=d.held_out
    )
    if d.limit is not None:
        train = torch.utils.data.Subset(train, range(min(d.limit, len(train))))  # type: ignore[assignment]
    val = None
    if d.val_fraction > 0:
        val = FashionMNISTDataset.load(
            "val", val_fraction=d.val_fraction, seed=cfg.train.seed, held_out=d.held_out
        )
    from shoplens.data.fashion_mnist import CLASSES

    return _Data(train, val, tuple(CLASSES), augment)


def _catalog(cfg: ExperimentConfig, name: str, augment: Any) -> _Data:
    from shoplens.catalog.store import Catalog
    from shoplens.data.datasets import CatalogDataset, stratified_split

    d = cfg.data
    full = CatalogDataset(Catalog.open(name), image_size=d.image_size)
    keep = np.flatnonzero(~np.isin(np.array(full.classes)[full.labels], d.held_out))
    unknown = sorted(set(d.held_out) - set(full.classes))
    if unknown:
        raise InvalidInputError(
            f"data.held_out: {unknown} are not categories of {name!r} ({', '.join(full.classes)})"
        )
    labels = full.labels[keep]
    train_idx, val_idx = (
        stratified_split(labels, d.val_fraction, cfg.train.seed)
        if d.val_fraction > 0
        else (np.arange(len(keep)), np.zeros(0, np.int64))
    )
    train_rows = keep[train_idx][: d.limit] if d.limit else keep[train_idx]
    if len(train_rows) == 0:
        raise InvalidInputError(f"catalogue {name!r} has no products to train on")
    train = torch.utils.data.Subset(full, train_rows.tolist())
    val = torch.utils.data.Subset(full, keep[val_idx].tolist()) if len(val_idx) else None
    return _Data(train, val, full.classes, augment, full.attribute_names)


def load_data(cfg: ExperimentConfig, family: str = "") -> _Data:
    """Training and validation datasets for ``cfg.data`` (with batch augmentation).

    A ``copydetect`` model alters its images itself, so its batches stay clean.
    """
    from shoplens.data.datasets import Collate
    from shoplens.data.transforms import BatchAugment, augment_preset

    d = cfg.data
    if not 0 <= d.val_fraction < 1:
        raise InvalidInputError(f"data.val_fraction must be in [0, 1), got {d.val_fraction}")
    # Augmentations draw from the global torch RNG, which checkpoints restore (exact resume).
    preset = augment_preset(d.augment)
    clean = d.augment == "none" or family == "copydetect"
    collate = Collate(None if clean else BatchAugment(preset))
    if d.source == "fashion-mnist":
        return _fashion_mnist(cfg, collate)
    prefix, _, name = d.source.partition(":")
    if prefix == "catalog" and name:
        return _catalog(cfg, check_name(name), collate)
    raise InvalidInputError(
        f"data.source {d.source!r}: use 'fashion-mnist' or 'catalog:NAME' (an ingested catalogue)"
    )


# ---- models and their epoch-end metrics -----------------------------------------------


def build_model(
    cfg: ExperimentConfig, classes: tuple[str, ...], attributes: tuple[str, ...] = ()
) -> torch.nn.Module:
    """The registered model with the data's classes (and, for a classifier, the
    catalogue's attribute values) filled in where the family has them."""
    from shoplens.registry import create_model, resolve_model_config

    family, raw = resolve_model_config(cfg.model)
    overrides = dict(cfg.model_overrides)
    if family in ("classifier", "clip") and "num_classes" in raw:
        overrides.setdefault("num_classes", len(classes))
        overrides.setdefault("class_names", list(classes))
    if family == "classifier":
        overrides.setdefault("attribute_names", list(attributes))
    return create_model(cfg.model, **overrides)


def _subset(ds: Dataset[Any], n: int, seed: int) -> Dataset[Any]:
    size = len(ds)  # type: ignore[arg-type]
    if size <= n:
        return ds
    rows = np.sort(np.random.default_rng(seed).choice(size, n, replace=False))
    return torch.utils.data.Subset(ds, rows.tolist())


def _eval_fn(model: torch.nn.Module, val: Dataset[Any] | None, cfg: ExperimentConfig) -> Any:
    """Epoch-end validation metrics: accuracy (classifier), zero-shot accuracy (clip) or
    altered-copy R@1 among the validation items (copydetect)."""
    if val is None:
        return None
    from torch.utils.data import DataLoader

    from shoplens.data.texts import zero_shot_weights

    data = _subset(val, cfg.data.eval_items, cfg.train.seed)
    family = getattr(model, "family", "")

    def copy_r1(m: Any) -> dict[str, float]:
        device = next(m.parameters()).device
        clean = torch.stack([data[i]["image"] for i in range(len(data))])  # type: ignore[arg-type]
        gen = torch.random.fork_rng()  # the same copies every epoch, training RNG untouched
        with gen:
            torch.manual_seed(cfg.train.seed)
            altered = m.alter(clean)
        a = torch.cat([m.encode_image(x.to(device)) for x in clean.split(512)])  # (N, D)
        b = torch.cat([m.encode_image(x.to(device)) for x in altered.split(512)])  # (N, D)
        hit = (b @ a.T).argmax(1) == torch.arange(len(a), device=a.device)
        return {"val_copy_r1": float(hit.float().mean())}

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        device = next(m.parameters()).device
        correct = total = 0
        class_emb = None
        if family == "clip":
            names = list(getattr(m, "cfg").class_names)  # noqa: B009
            if not names:
                return {}
            class_emb = torch.from_numpy(
                zero_shot_weights(lambda t: m.encode_text(t).cpu().numpy(), names)  # type: ignore[operator]
            ).to(device)  # (C, D)
        for batch in DataLoader(data, batch_size=512):
            images, labels = batch["image"].to(device), batch["label"].to(device)
            if class_emb is not None:
                pred = (m.encode_image(images) @ class_emb.T).argmax(1)  # type: ignore[operator]
            else:
                pred = m(images)["logits"].argmax(1)
            correct += int((pred == labels).sum())
            total += len(labels)
        key = "val_zero_shot_accuracy" if family == "clip" else "val_accuracy"
        return {key: correct / max(total, 1)}

    if family == "copydetect":
        return copy_r1
    return evaluate if family in ("clip", "classifier") else None


# ---- combiner (composed queries) -------------------------------------------------------


def _combiner_data(cfg: ExperimentConfig) -> tuple[Dataset[Any], Dataset[Any] | None, Path]:
    """Triplet datasets built from the embeddings of the trained clip model."""
    from shoplens.data.datasets import FashionMNISTDataset, stratified_split
    from shoplens.models.combiner import embed_dataset, make_triplet_dataset
    from shoplens.models.io import load_model

    if not cfg.data.base_model:
        raise InvalidInputError(
            "a combiner learns over a trained clip model: set data.base_model=DIR "
            "(the model folder a clip run wrote)"
        )
    if cfg.data.source != "fashion-mnist":
        raise InvalidInputError("combiner training supports data.source=fashion-mnist for now")
    base_dir = Path(cfg.data.base_model).expanduser()
    if not base_dir.is_dir():
        raise NotFoundError(f"data.base_model: folder not found: {base_dir}")
    base: Any = load_model(base_dir)
    if not callable(getattr(base, "encode_text", None)):
        raise InvalidInputError(f"data.base_model {base_dir} is not a clip-style model")
    base.eval()
    names = list(base.cfg.class_names)
    # The clip model has seen the training split; its embeddings of unseen images are
    # spread differently, and a combiner fitted on seen ones does not transfer. So the
    # combiner learns on the split the clip run held out (same val_fraction and seed),
    # half for training and half for its own validation.
    held = FashionMNISTDataset.load(
        "val", val_fraction=cfg.data.val_fraction or 0.1, seed=cfg.train.seed
    )
    if cfg.data.limit is not None:
        held = _subset(held, cfg.data.limit, cfg.train.seed)  # type: ignore[assignment]
    emb, labels = embed_dataset(base, held)
    fit_rows, val_rows = stratified_split(labels, 0.5, cfg.train.seed)
    sets = []
    for rows, per_ref in ((fit_rows, 4), (val_rows[: cfg.data.eval_items], 1)):
        with torch.no_grad():
            sets.append(
                make_triplet_dataset(
                    emb[rows],
                    labels[rows],
                    names,
                    lambda t: base.encode_text(t),
                    seed=cfg.train.seed + per_ref,
                    per_reference=per_ref,
                )
            )
    return sets[0], sets[1], base_dir


def _combiner_eval(val: Any) -> Any:
    """Category R@1 of composed queries on held-out triplets: the nearest target to the
    query has the requested category; the text and the image alone are the baselines."""
    refs = val.image_emb[[t.reference for t in val.triplets]]  # (T, D)
    mods = val.text_emb[val.text_index]  # (T, D)
    target_cls = torch.tensor([t.target_class for t in val.triplets])  # (T,)
    labels = torch.full((len(val.image_emb),), -1, dtype=torch.long)  # gallery: the targets
    for t in val.triplets:
        labels[t.target] = t.target_class

    def r1(q: torch.Tensor) -> float:
        sims = q @ val.image_emb.T  # (T, N)
        sims[:, labels < 0] = -2.0
        return float((labels[sims.argmax(1)] == target_cls).float().mean())

    baselines = {"val_category_r1_text_only": r1(mods), "val_category_r1_image_only": r1(refs)}

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        return {"val_category_r1": r1(m(refs, mods)), **baselines}

    return evaluate


def _diffusion(cfg: ExperimentConfig, run_dir: Path) -> tuple[Dataset[Any], torch.nn.Module]:
    """Fashion-MNIST training images with phrasings and taste vectors embedded by the
    conditioning encoder (``data.cond_encoder``, image embeddings cached in the run folder)."""
    from shoplens.data import fashion_mnist
    from shoplens.models.diffusion import prepare_diffusion_data, resolve_cond_encoder
    from shoplens.registry import create_model, get_encoder

    if cfg.data.source != "fashion-mnist":
        raise InvalidInputError("diffusion training supports data.source=fashion-mnist for now")
    spec = resolve_cond_encoder(cfg.data.cond_encoder)
    encoder = get_encoder(spec)
    data = fashion_mnist.load_fashion_mnist("train")
    n = len(data.labels) if cfg.data.limit is None else min(cfg.data.limit, len(data.labels))
    classes = fashion_mnist.CLASSES
    train = prepare_diffusion_data(
        data.images[:n], data.labels[:n], classes, encoder, cache_dir=run_dir, seed=cfg.train.seed
    )
    overrides = {"cond_encoder": spec, "embed_dim": encoder.dim, "class_names": list(classes)}
    return train, create_model(cfg.model, **{**overrides, **cfg.model_overrides})


# ---- the run ----------------------------------------------------------------------------


def _tracker(cfg: ExperimentConfig, run_name: str) -> Any:
    if not cfg.tracking.enabled:
        return None
    from shoplens.training.tracking import MlflowTracker

    return MlflowTracker(
        cfg.tracking.experiment, run_name=run_name, tags={"shoplens.model": cfg.model}
    )


def run_experiment(cfg: ExperimentConfig, *, resume: bool = True) -> ExperimentResult:
    """Train ``cfg.model`` on ``cfg.data``; save, track and (optionally) register it.

    A run folder that already holds a checkpoint is resumed (``resume=False`` refuses
    to touch it). A failed run keeps its last good checkpoint, is marked FAILED in
    MLflow and is never registered.
    """
    from shoplens.registry import resolve_model_config
    from shoplens.training import distributed
    from shoplens.training.loop import fit

    family, _ = resolve_model_config(cfg.model)  # fail fast on an unknown model
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_name = check_name(cfg.run_name or f"{stamp}-{cfg.model}", "run name")
    run_dir = runs_dir() / run_name
    if not resume and (run_dir / "checkpoints").exists():
        raise InvalidInputError(f"run {run_name!r} exists; pick another run_name or resume it")
    t0 = time.time()
    install_into: Path | None = None
    if family == "combiner":
        train, val_triplets, install_into = _combiner_data(cfg)
        model = build_model(cfg, ())
        eval_fn = _combiner_eval(val_triplets)
        collate = None
    elif family == "diffusion":
        train, model = _diffusion(cfg, run_dir)
        eval_fn, collate = None, None
    else:
        data = load_data(cfg, family)
        model = build_model(cfg, data.classes, data.attributes)
        train, collate = data.train, data.collate
        eval_fn = _eval_fn(model, data.val, cfg)
    if cfg.init_from:
        warm_start(model, cfg.init_from)
    if cfg.init_image_tower_from:
        warm_start_image_tower(model, cfg.init_image_tower_from)
    tracker = _tracker(cfg, run_name)
    with distributed.session(cfg.train.device) as info:
        result = fit(
            model,
            train,
            cfg.train,
            run_dir=run_dir,
            eval_fn=eval_fn,
            tracker=tracker,
            resume=resume,
            run_config=cfg,
            collate_fn=collate,
        )
        registered = None
        if info.is_main:
            if install_into is not None:
                _install_combiner(result.model_dir, install_into)
            if tracker is not None and cfg.tracking.register_as and result.run_id:
                v = tracker.register_model(
                    result.run_id, "model", cfg.tracking.register_as, cfg.tracking.alias
                )
                registered = {"name": v.name, "version": v.version, "alias": cfg.tracking.alias}
    return ExperimentResult(
        run_name=run_name,
        run_dir=run_dir,
        model_dir=result.model_dir,
        run_id=result.run_id,
        metrics={k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))},
        wall_time_s=time.time() - t0,
        samples_per_s=result.samples_per_s,
        registered=registered,
    )


def resolve_model_folder(ref: str, what: str = "init_from") -> Path:
    """A trained model folder from a path, ``trained:DIR`` or a registered ``NAME@ALIAS``."""
    ref = ref.strip()
    if ref.startswith("trained:"):
        ref = ref.removeprefix("trained:")
    name, at, alias = ref.partition("@")
    if at and "/" not in ref and alias in ("champion", "challenger"):
        from shoplens.training.tracking import MlflowTracker

        return Path(MlflowTracker().get_model_version_by_alias(name, alias).source_dir)  # type: ignore[arg-type]
    folder = Path(ref).expanduser()
    if not (folder / "model.json").is_file():
        raise NotFoundError(
            f"{what}: {ref!r} is neither a trained model folder (with model.json) nor a "
            "registered NAME@champion|challenger"
        )
    return folder


def warm_start(model: torch.nn.Module, ref: str) -> Path:
    """Load the weights of the trained model ``ref`` into ``model`` (same architecture;
    config fields that do not change shapes, such as a diffusion model's prediction type,
    may differ). Raises ``InvalidInputError`` naming the keys that do not fit."""
    from shoplens.models.io import load_model, load_state

    folder = resolve_model_folder(ref)
    source = load_model(folder)
    load_state(model, source.state_dict(), f"init_from {folder}")
    log.info("warm start from %s", folder)
    return folder


def warm_start_image_tower(model: torch.nn.Module, ref: str) -> Path:
    """Copy the image tower of the trained model ``ref`` into ``model.image_tower``.

    Raises ``InvalidInputError`` when either model has no image tower or the towers'
    keys or shapes differ."""
    from shoplens.models.io import load_model, load_state

    folder = resolve_model_folder(ref, "init_image_tower_from")
    source = load_model(folder)
    src_tower = getattr(source, "image_tower", None)
    dst_tower = getattr(model, "image_tower", None)
    if not isinstance(src_tower, torch.nn.Module) or not isinstance(dst_tower, torch.nn.Module):
        raise InvalidInputError(
            f"init_image_tower_from: {folder} and the model being trained both need an "
            "image tower (classifier, clip or copydetect families)"
        )
    load_state(dst_tower, src_tower.state_dict(), f"init_image_tower_from {folder}")
    log.info("image tower from %s", folder)
    return folder


def _install_combiner(model_dir: Path, base_dir: Path) -> None:
    """Copy the trained combiner into ``base_dir/combiner`` (swapped in by a rename)."""
    tmp = base_dir / ".combiner.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp)
    old = base_dir / ".combiner.old"
    shutil.rmtree(old, ignore_errors=True)
    if (base_dir / "combiner").exists():
        (base_dir / "combiner").rename(old)
    tmp.rename(base_dir / "combiner")
    shutil.rmtree(old, ignore_errors=True)


def resolve_config_path(value: str | Path | None) -> Path | None:
    """A YAML path as given, or the built-in recipe of that name."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in str(value):
        return path  # load_config reports a missing file
    recipe = RECIPES / f"{value}.yaml"
    if recipe.is_file():
        return recipe
    raise NotFoundError(
        f"config {str(value)!r} is neither a file nor a built-in recipe "
        f"({', '.join(list_recipes())})"
    )


def describe(cfg: ExperimentConfig) -> dict[str, Any]:
    """The resolved config as plain data (what ``config.yaml`` holds)."""
    return config_to_dict(cfg)
