"""Evaluation tasks of one model on labelled images (and texts), each -> a JSON-able dict.

A task takes an :class:`~shoplens.eval.context.EvalContext` (the data, an
:class:`~shoplens.models.base.Encoder` and/or a classifier, options) and returns its
figures. :func:`run_tasks` runs a list of them, skipping with a reason
(``{"skipped": "..."}``) those the model cannot do, such as text tasks for an image-only
encoder. Embeddings are computed once per context.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, get_args

import numpy as np
from PIL import Image

from shoplens.errors import InvalidInputError, ShoplensError
from shoplens.eval.context import EvalContext, apply_in_batches, embed_images
from shoplens.eval.metrics import (
    MAX_SCORES,
    classification_metrics,
    ranking_metrics,
    score_batches,
    top_k,
    zero_shot_predict,
)

TaskName = Literal[
    "classification",
    "image_retrieval",
    "text_to_image",
    "zero_shot",
    "held_out",
    "robustness",
    "near_duplicates",
]
TASK_NAMES: tuple[TaskName, ...] = get_args(TaskName)
KNN_K = 5


def _logits(ctx: EvalContext) -> np.ndarray:
    """The classifier's logits for the test images, in batches. (N, C)."""
    if ctx.classifier is None:
        raise InvalidInputError("this task needs a classifier")
    images, n_classes = ctx.data.test_images, len(ctx.data.classes)
    logits = np.concatenate(apply_in_batches(ctx.classifier, images, "classify test images"))
    if logits.shape != (len(images), n_classes):
        raise InvalidInputError(
            f"the classifier returned logits of shape {logits.shape}; expected "
            f"({len(images)}, {n_classes}), one column per class of the data"
        )
    return logits


def classification(ctx: EvalContext) -> dict[str, Any]:
    """Classifier head (argmax of logits), else a linear probe on the train embeddings."""
    d = ctx.data
    tta = None
    if ctx.classifier is not None:
        method, pred = "classifier head", np.argmax(_logits(ctx), axis=1)
        tta = getattr(ctx.encoder, "tta", None)  # e.g. "flip": the head averages a mirror
        if tta:
            method += f" ({tta} TTA)"
    else:
        from shoplens.eval.probe import linear_probe

        method = "linear probe (logistic regression, C=1) on train-split embeddings"
        pred = linear_probe(ctx.train_emb, d.train_labels, ctx.test_emb, len(d.classes))
    metrics = classification_metrics(d.test_labels, pred, d.classes)
    return {"method": method, "tta": tta, **metrics}


def image_retrieval(ctx: EvalContext) -> dict[str, Any]:
    """Test images query the train gallery (else the test set itself, leaving each query out)."""
    d = ctx.data
    if len(d.train_images):
        gallery, labels, loo = ctx.train_emb, d.train_labels, False
    else:
        gallery, labels, loo = ctx.test_emb, d.test_labels, True
    metrics = ranking_metrics(
        ctx.test_emb, d.test_labels, gallery, labels, knn_k=KNN_K, exclude_self=loo
    )
    return {"gallery_split": "test, leave-one-out" if loo else "train", **metrics}


def text_to_image(ctx: EvalContext) -> dict[str, Any]:
    """Class prompts query the test images (relevant: images of that class); captions too."""
    d = ctx.data
    texts = ctx.prompts(d.classes)
    labels = np.repeat(np.arange(len(d.classes)), len(ctx.templates))  # (C * T,)
    query = ctx.require_encoder().encode_texts(texts)  # (C * T, D)
    out: dict[str, Any] = {
        "by_label": {
            "templates": list(ctx.templates),
            **ranking_metrics(query, labels, ctx.test_emb, d.test_labels, knn_k=None),
        },
        "texts_from_labels": d.texts_from_labels,
    }
    if d.captions is None:
        out["captions"] = {"skipped": f"data {d.name!r} has no per-item captions"}
    else:
        ids = np.arange(len(d.captions))
        caption_emb = ctx.require_encoder().encode_texts(list(d.captions))  # (N, D)
        out["captions"] = ranking_metrics(caption_emb, ids, ctx.test_emb, ids, knn_k=None)
    return out


def zero_shot(ctx: EvalContext) -> dict[str, Any]:
    """Argmax over prompt-ensemble class embeddings, scored like a classifier."""
    d = ctx.data
    pred = zero_shot_predict(ctx.test_emb, ctx.class_emb(d.classes))
    metrics = classification_metrics(d.test_labels, pred, d.classes)
    return {"templates": list(ctx.templates), **metrics}


def _held_out_scores(
    y: np.ndarray, pred: np.ndarray, classes: Sequence[str], held: Sequence[int]
) -> dict[str, Any]:
    m = classification_metrics(y, pred, classes)
    return {
        "candidates": len(classes),
        "chance_accuracy": 1.0 / len(classes),
        "accuracy": m["accuracy"],
        "weighted_f1": m["weighted_f1"],
        "recall": {classes[c]: m["per_class"].get(classes[c], {}).get("recall") for c in held},
    }


def held_out(ctx: EvalContext) -> dict[str, Any]:
    """Zero-shot on the test images of classes left out of training: among all classes and
    among the held-out ones only."""
    d = ctx.data
    held = [d.classes.index(c) for c in ctx.held_out]
    mask = np.isin(d.test_labels, held)
    emb, y = ctx.test_emb[mask], d.test_labels[mask]  # (M, D), (M,)
    among_all = zero_shot_predict(emb, ctx.class_emb(d.classes))  # (M,) in 0..C-1
    held_names = [d.classes[c] for c in held]
    among_held = zero_shot_predict(emb, ctx.class_emb(held_names))  # (M,) in 0..H-1
    code = {c: n for n, c in enumerate(held)}
    out = {
        "held_out": held_names,
        "images": int(mask.sum()),
        "all_classes": _held_out_scores(y, among_all, d.classes, held),
        "held_out_only": _held_out_scores(
            np.array([code[int(c)] for c in y]), among_held, held_names, range(len(held))
        ),
        "predicted_as_seen_class": float(np.mean(~np.isin(among_all, held))),
    }
    if len(held) == 1:
        out["note"] = "one held-out class: choosing among the held-out classes only is trivial"
    return out


def content_key(img: Image.Image) -> str:
    """Hash of the decoded pixels: byte-identical images share it."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{img.mode}{img.size}".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def robustness(ctx: EvalContext) -> dict[str, Any]:
    """Altered copies of test images query test + train images; R@1/R@10 of the original."""
    from shoplens.eval.robustness import altered_copies, copy_recall

    d = ctx.data
    test = d.test_images
    origin, kinds, images = altered_copies(len(test), lambda n: test[n], ctx.n_aug, ctx.seed)
    query = embed_images(ctx.require_encoder(), images, "embed altered copies")  # (Q, D)
    parts = [ctx.test_emb, ctx.train_emb] if len(d.train_images) else [ctx.test_emb]
    gallery = np.concatenate(parts)  # (N_test + N_train, D)
    keys = [content_key(im) for part in (test, d.train_images) for im in part]
    batches = score_batches(query, gallery, MAX_SCORES // len(gallery))
    top = np.concatenate([top_k(scores, 10) for _, scores in batches])  # (Q, 10)
    retrieved = [[keys[i] for i in row] for row in top]
    targets = [keys[n] for n in origin]
    twin = sum(
        int(top[n, 0]) != pos and retrieved[n][0] == targets[n] for n, pos in enumerate(origin)
    )
    return {
        "originals": len(set(origin)),
        "queries": len(images),
        "gallery": len(gallery),
        **copy_recall(targets, kinds, retrieved),
        "top1_identical_image": int(twin),
    }


def near_duplicates(ctx: EvalContext) -> dict[str, Any]:
    """Injected mildly altered copies of test images, found by ``find_duplicates``."""
    from shoplens.eval.robustness import dedupe_eval

    test = ctx.data.test_images
    return dedupe_eval(
        ctx.data.test_items(), lambda n: test[n], ctx.require_encoder().name, ctx.seed,
        ctx.dedupe_base, ctx.dedupe_copies,
    )  # fmt: skip


def _needs_images(ctx: EvalContext) -> str | None:
    if ctx.encodes_images:
        return None
    if ctx.encoder is None:
        return "needs an image encoder; only a classifier was given"
    return f"encoder {ctx.encoder.name!r} does not encode images"


def _needs_shared_space(ctx: EvalContext) -> str | None:
    if ctx.shared_space:
        return None
    if ctx.encoder is None:
        return "needs an encoder with a shared image-text space; only a classifier was given"
    kinds = "+".join(sorted(ctx.encoder.modalities)) or "none"
    return f"encoder {ctx.encoder.name!r} has no shared image-text space (modalities: {kinds})"


def _needs_classifier_or_probe(ctx: EvalContext) -> str | None:
    if ctx.classifier is not None:
        return None
    if not ctx.encodes_images:
        return "needs a classifier head, or an image encoder for a linear probe"
    if len(np.unique(ctx.data.train_labels)) < 2:
        return "no classifier head, and no labelled train split (>= 2 classes) for a linear probe"
    return None


def _needs_held_out(ctx: EvalContext) -> str | None:
    if reason := _needs_shared_space(ctx):
        return reason
    if not ctx.held_out:
        return "no held-out classes given (classes the model was trained without)"
    if not np.isin(ctx.data.test_labels, [ctx.data.classes.index(c) for c in ctx.held_out]).any():
        return f"no test images of the held-out classes {', '.join(ctx.held_out)}"
    return None


def _needs_registered_encoder(ctx: EvalContext) -> str | None:
    if reason := _needs_images(ctx):
        return reason
    from shoplens.registry import get_encoder

    name = ctx.require_encoder().name
    try:
        get_encoder(name)  # the temporary catalogue's index is built by encoder spec
    except ShoplensError as e:
        return f"encoder name {name!r} is not a loadable spec ({e.message})"
    return None


TaskFn = Callable[[EvalContext], dict[str, Any]]
TASKS: dict[TaskName, tuple[TaskFn, Callable[[EvalContext], str | None]]] = {
    "classification": (classification, _needs_classifier_or_probe),
    "image_retrieval": (image_retrieval, _needs_images),
    "text_to_image": (text_to_image, _needs_shared_space),
    "zero_shot": (zero_shot, _needs_shared_space),
    "held_out": (held_out, _needs_held_out),
    "robustness": (robustness, _needs_images),
    "near_duplicates": (near_duplicates, _needs_registered_encoder),
}


def check_tasks(tasks: Iterable[str] | None) -> tuple[TaskName, ...]:
    """Validated task names in :data:`TASK_NAMES` order (None or empty: all of them)."""
    names = list(dict.fromkeys(tasks or ()))
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise InvalidInputError(f"unknown task {unknown[0]!r}; choose from {', '.join(TASK_NAMES)}")
    return tuple(t for t in TASK_NAMES if not names or t in names)


def run_tasks(ctx: EvalContext, tasks: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Run the tasks (default: all) in order; those the model cannot do say why they skipped."""
    out: dict[str, dict[str, Any]] = {}
    for name in check_tasks(tasks):
        fn, needs = TASKS[name]
        if reason := needs(ctx):
            out[name] = {"skipped": reason}
            continue
        t0 = time.time()
        out[name] = fn(ctx)
        out[name]["seconds"] = round(time.time() - t0, 2)
    return out
