"""``run_model_eval``: evaluate one model (a shoplens encoder spec) on Fashion-MNIST.

Reads the Fashion-MNIST arrays directly (test split = queries, train split = gallery and
linear-probe data; not via a catalogue), runs the tasks of :mod:`shoplens.eval.tasks`,
writes the metrics JSON under ``SHOPLENS_HOME/evals/``, logs to MLflow and appends a row
to the "## Trained models" table of ``docs/RESULTS.md``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, get_args, overload

import numpy as np
from PIL import Image

from shoplens.config import shoplens_home
from shoplens.errors import InvalidInputError, ShoplensError
from shoplens.eval.context import (
    DEFAULT_TEMPLATES,
    Classifier,
    EvalContext,
    EvalData,
    check_classes,
)
from shoplens.eval.report import machine_info
from shoplens.eval.results_md import (
    IN_DOMAIN_NOTE,
    append_trained_row,
    headline,
    trained_row,
    write_atomic,
)
from shoplens.eval.tasks import check_tasks, run_tasks
from shoplens.models.base import Encoder

DataName = Literal["fashion-mnist"]
DATASETS: tuple[DataName, ...] = get_args(DataName)


class ArrayImages(Sequence[Image.Image]):
    """(N, H, W) uint8 grey arrays seen as RGB PIL images, converted on access."""

    def __init__(self, arrays: np.ndarray) -> None:
        self.arrays = arrays

    def __len__(self) -> int:
        return int(self.arrays.shape[0])

    @overload
    def __getitem__(self, i: int) -> Image.Image: ...

    @overload
    def __getitem__(self, i: slice) -> list[Image.Image]: ...

    def __getitem__(self, i: int | slice) -> Image.Image | list[Image.Image]:
        if isinstance(i, slice):
            return [self[n] for n in range(*i.indices(len(self)))]
        return Image.fromarray(self.arrays[i], mode="L").convert("RGB")


def load_data(data: str, limit: int | None = None) -> EvalData:
    """Fashion-MNIST test (queries) and train (gallery); ``limit``: first N of each split."""
    if data not in DATASETS:
        raise InvalidInputError(f"unknown data {data!r}; choose from {', '.join(DATASETS)}")
    if limit is not None and limit < 1:
        raise InvalidInputError(f"limit must be >= 1, got {limit}")
    from shoplens.data.fashion_mnist import CLASSES, load_fashion_mnist

    test, train = load_fashion_mnist("test"), load_fashion_mnist("train")
    return EvalData(
        classes=CLASSES,
        test_images=ArrayImages(test.images[:limit]),
        test_labels=test.labels[:limit],
        train_images=ArrayImages(train.images[:limit]),
        train_labels=train.labels[:limit],
        name=data,
        texts_from_labels=True,
    )


def load_model(spec: str) -> Encoder:
    """The encoder of ``spec``; any failure to load becomes a one-line user error."""
    from shoplens.registry import get_encoder

    try:
        return get_encoder(spec)
    except ShoplensError:
        raise
    except Exception as e:  # a checkpoint that does not load: corrupt, wrong format, ...
        raise InvalidInputError(f"cannot load model {spec!r}: {type(e).__name__}: {e}") from e


def model_classifier(encoder: Encoder, classes: Sequence[str]) -> Classifier | None:
    """The model's own head, if it has one: ``classify_images(images) -> (N, C_model)``.

    With a ``classes`` attribute the columns are matched to ``classes`` by name (a class the
    model lacks, e.g. one held out of training, gets -inf); without it they must match.
    """
    head = getattr(encoder, "classify_images", None)
    if not callable(head):
        return None
    model_classes = list(getattr(encoder, "classes", None) or classes)
    check_classes(model_classes, classes, f"the classes of model {encoder.name!r}")
    cols = [classes.index(c) for c in model_classes]

    def logits(images: Sequence[Image.Image]) -> np.ndarray:
        raw = np.asarray(head(images), dtype=np.float32)  # (N, C_model)
        if raw.ndim != 2 or raw.shape[1] != len(cols):
            raise InvalidInputError(
                f"model {encoder.name!r} returned logits {raw.shape}; expected (N, {len(cols)})"
            )
        out = np.full((len(raw), len(classes)), -np.inf, np.float32)  # (N, C)
        out[:, cols] = raw
        return out

    return logits


def _held_out(held_out: str | Iterable[str], classes: Sequence[str]) -> tuple[str, ...]:
    names = held_out.split(",") if isinstance(held_out, str) else held_out
    return check_classes((n.strip() for n in names if n.strip()), classes, "held-out classes")


def _run_name(model_spec: str, folder: Path) -> str:
    from shoplens.index.store import slug

    base = f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{slug(model_spec)}"
    name, n = base, 1
    while (folder / f"{name}.json").exists():
        n += 1
        name = f"{base}-{n}"
    return name


def _describe(data: EvalData, limit: int | None) -> str:
    cut = f"[:{limit}]" if limit else ""
    return (
        f"{data.name} test{cut} ({len(data.test_images)}) vs train{cut} ({len(data.train_images)})"
    )


def run_model_eval(
    model_spec: str,
    *,
    tasks: Iterable[str] | None = None,
    data: str = "fashion-mnist",
    limit: int | None = None,
    seed: int = 0,
    held_out: str | Iterable[str] = (),
    classifier: Classifier | None = None,
    out: Path | None = Path("docs/RESULTS.md"),
    json_out: Path | None = None,
    mlflow_run_id: str | None = None,
    track: bool = True,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    n_aug: int = 1000,
    dedupe_base: int = 2000,
    dedupe_copies: int = 200,
) -> dict[str, Any]:
    """Evaluate model ``model_spec`` and publish the figures.

    Args:
        model_spec: encoder spec (``trained:/path``, ``test-tiny``, ``hf-clip:PATH``, ...).
        tasks: task names (default: all; those the model cannot do are skipped with a reason).
        data: dataset (``fashion-mnist``).
        limit: first N images of each split (a quick run).
        seed: seed of the altered-copy and near-duplicate samples.
        held_out: classes the model was trained without (names, or "A,B"); default: the
            model's ``held_out_classes`` attribute if it has one.
        classifier: images -> (N, C) logits; default: the model's ``classify_images``.
        out: Markdown file whose "## Trained models" table gets a row (None: no row).
        json_out: metrics JSON path (default ``SHOPLENS_HOME/evals/<run-name>.json``).
        mlflow_run_id: log into this MLflow run instead of a new one.
        track: log to MLflow at all.
        templates: prompt templates with ``{c}`` for the class name.
        n_aug, dedupe_base, dedupe_copies: sizes of the robustness and near-duplicate parts.

    Returns:
        ``{"meta", "tasks", "headline"}``, as written to the JSON file.
    """
    from shoplens.data.fashion_mnist import CLASSES

    task_names = check_tasks(tasks)
    held = _held_out(held_out, CLASSES)
    if data not in DATASETS:
        raise InvalidInputError(f"unknown data {data!r}; choose from {', '.join(DATASETS)}")
    if track and mlflow_run_id:
        from shoplens.eval.tracking import check_run

        check_run(mlflow_run_id)
    encoder = load_model(model_spec)
    held = held or _held_out(getattr(encoder, "held_out_classes", ()), CLASSES)
    t0 = time.time()
    ds = load_data(data, limit)
    ctx = EvalContext(
        ds, encoder, classifier or model_classifier(encoder, ds.classes), held_out=held,
        seed=seed, templates=templates, n_aug=n_aug, dedupe_base=dedupe_base,
        dedupe_copies=dedupe_copies,
    )  # fmt: skip
    results: dict[str, Any] = {"meta": {}, "tasks": run_tasks(ctx, task_names)}
    results["headline"] = headline(results)
    folder = shoplens_home() / "evals"
    run_name = _run_name(model_spec, folder)
    results["meta"] = {
        "model": model_spec,
        "encoder": encoder.name,
        "modalities": sorted(encoder.modalities),
        "dim": encoder.dim,
        "data": data,
        "data_description": _describe(ds, limit),
        "limit": limit,
        "test_images": len(ds.test_images),
        "train_images": len(ds.train_images),
        "seed": seed,
        "tasks": list(task_names),
        "held_out": list(held),
        "templates": list(templates),
        "note": IN_DOMAIN_NOTE,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "eval_s": round(time.time() - t0, 1),
        "machine": machine_info(),
        "run_name": run_name,
        "mlflow_run_id": None,
    }
    path = Path(json_out) if json_out else folder / f"{run_name}.json"
    results["meta"]["json"] = str(path)
    if track:
        from shoplens.eval.tracking import log_eval

        params = {k: results["meta"][k] for k in ("model", "data", "limit", "seed", "held_out")}
        params["tasks"] = ",".join(task_names)
        results["meta"]["mlflow_run_id"] = log_eval(results, params, run_name, mlflow_run_id)
    write_atomic(path, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    if out is not None:
        append_trained_row(Path(out), trained_row(results))
    return results
