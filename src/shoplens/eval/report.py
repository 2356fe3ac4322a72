"""Markdown rendering of the figures measured by :mod:`shoplens.eval.foundation`.

Only wording and layout live here: every number comes from the ``results`` dict.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Set
from pathlib import Path
from typing import Any

from shoplens.data.fashion_mnist import CLASSES

PUBLISHED_CONTEXT = (
    "Published figures, for context only: FashionCLIP 2.0 reaches a zero-shot weighted "
    "macro-F1 of 0.83 on Fashion-MNIST, OpenAI CLIP 0.66 (FashionCLIP README, "
    "github.com/patrickjohncyh/fashion-clip). Those are zero-shot classification scores of "
    "CLIP-style vision-language models prompted with the class names; the figures above are "
    "k-NN accuracy against a labelled gallery, copy retrieval and text search over "
    "label-derived titles, with other models. Different tasks and models: not comparable "
    "numbers."
)


def vector_units(flags: Set[str]) -> str:
    """The widest vector units among /proc/cpuinfo ``flags`` that timings depend on:
    "AVX-512 with BF16" (native bfloat16), "AVX-512", "AVX2", "Arm BF16", or ""."""
    if flags & {"avx512_bf16", "amx_bf16"}:
        return "AVX-512 with BF16"
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags:
        return "AVX2"
    if "bf16" in flags:  # Arm's Features line
        return "Arm BF16"
    return ""


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, GPU (or None), torch and Python versions, git commit (or "unknown")."""
    cores = cpu_cores()
    from shoplens.models.hardware import cpu_info

    model, flags = cpu_info()
    cpu = model or platform.processor() or "unknown"
    vector = vector_units(flags)
    if vector:  # CPUs sold under one name differ here, and so do their timings
        cpu = f"{cpu}, {vector}"
    gpu = None
    try:
        import torch

        torch_version = str(torch.__version__)
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        torch_version = "not installed"
    return {
        "nproc": cores,
        "cpu": cpu,
        "gpu": gpu,
        "torch": torch_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": git_commit(),
    }


def git_commit() -> str:
    """Short hash of the checkout shoplens runs from, or "unknown" (not a git clone)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def json_default(x: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars and arrays in run results."""
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON-able: {type(x)}")


def cpu_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 0


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f} s"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def _header(r: dict[str, Any], json_name: str) -> list[str]:
    m = r["meta"]
    mc, t = m["machine"], m["timings_s"]
    enc = ", ".join(f"`{e}`" for e in m["encoders"])
    parts = [
        ("ingest", t.get("ingest_s")),
        ("1. 5-NN (incl. embedding)", t.get("knn_s")),
        ("2. text (incl. text index)", t.get("text_s")),
        ("3. altered copies", t.get("augmented_s")),
        ("4. near-duplicates", t.get("dedupe_s")),
    ]
    timing = ", ".join(f"{n} {_s(v)}" for n, v in parts if v is not None)
    return [
        "# shoplens: measured search quality on Fashion-MNIST",
        "",
        "Written by `shoplens eval`. It measures, on the Fashion-MNIST test split: image-to-image "
        "5-NN accuracy, text-query precision@10 for the ten class names, retrieval of altered "
        "copies (R@1) and near-duplicate detection on injected copies. Every figure in the "
        f"tables comes from this run; the same figures are in `{json_name}`.",
        "",
        f"- date: {m['date']}; git commit: `{mc['commit']}`",
        f"- machine: {mc['nproc']} CPU cores ({mc['cpu']}), torch {mc['torch']}, "
        f"Python {mc['python']}, {mc['platform']}",
        f"- catalogue `{m['catalog']}`: {m['products']} products ({m['train']} train, "
        f"{m['test']} test), Zalando Fashion-MNIST, 28x28 grey product photos, MIT licence",
        f"- image encoders: {enc} (`effnet-lite0@64` is the demo's encoder: ImageNet "
        "EfficientNet-Lite0 at 64 px; `pixels` is the raw-pixel baseline); text encoder: "
        f"`{m['text_encoder']}`",
        f"- seed {m['seed']}; wall time {_s(t['total_s'])} in all: {timing}",
    ]


def _knn(r: dict[str, Any]) -> list[str]:
    knn = r["knn"]
    specs = list(knn)
    first = knn[specs[0]]
    lines = [
        "",
        f"## 1. Image-to-image {first['k']}-NN accuracy",
        "",
        f"Each of the {first['queries']} test images queries the {first['gallery']} train "
        "images by cosine similarity of its embedding; its predicted class is the majority "
        f"of the {first['k']} nearest (a tie goes to the nearest). Accuracy = share of test "
        "images whose predicted class is their label.",
        "",
    ]
    lines += _table(
        ["encoder", f"{first['k']}-NN accuracy", "index", "embedding time", "k-NN time"],
        [
            [
                f"`{s}`",
                _f(v["accuracy"]),
                v["index"],
                _s(v["embed_s"]) if v["embed_s"] is not None else "reused",
                _s(v["knn_s"]),
            ]
            for s, v in knn.items()
        ],
    )
    lines += ["", "Per class:", ""]
    lines += _table(
        ["class", *(f"`{s}`" for s in specs)],
        [
            [c, *(_f(knn[s]["per_class"].get(c)) for s in specs)]
            for c in CLASSES
            if c in first["per_class"]
        ],
    )
    return lines


def _text(r: dict[str, Any]) -> list[str]:
    t = r["text"]
    lines = [
        "",
        f"## 2. Text-query precision@{t['k']}",
        "",
        f'Each class name (e.g. "{CLASSES[9]}", "{CLASSES[0]}") is a text query over the '
        f"whole catalogue; precision@{t['k']} = share of the top {t['k']} results whose category "
        'is that class. Fashion-MNIST titles are derived from the labels ("Ankle boot, '
        'Fashion-MNIST test #42") and the category is part of the product text, so this '
        f"measures the text-search plumbing (BM25 + `{t['text_encoder']}` dense text, fused by "
        "reciprocal rank), not open-vocabulary understanding.",
        "",
    ]
    lines += _table(
        ["query", f"P@{t['k']}", "other categories in the top results"],
        [
            [
                f'"{c}"',
                _f(v["precision"]),
                ", ".join(f"{k} x{n}" for k, n in v["others"].items()) or "-",
            ]
            for c, v in t["per_class"].items()
        ],
    )
    lines += ["", f"Mean precision@{t['k']}: **{_f(t['mean_precision'])}**."]
    return lines


def _augmented(r: dict[str, Any]) -> list[str]:
    a = r["augmented"]
    specs = list(r["knn"])
    kinds = list(a[specs[0]]["r_at_1"])
    lines = [
        "",
        "## 3. Altered-copy retrieval (R@1)",
        "",
        f"{a['originals']} test images sampled with the seed, each altered 4 ways: `crop` (random "
        "80-90 % crop resized back), `noise` (gaussian, sigma 10 grey levels), `brightness` "
        "(x1.3 or x0.7), `blur-jpeg` (gaussian blur radius 1, then JPEG quality 30, decoded "
        f"again): {a['queries']} queries, each against the whole catalogue image index "
        f"({r['meta']['products']} products). R@1 = share whose top hit is the original.",
        "",
        "Fashion-MNIST holds some byte-identical images under different products; a top hit "
        "whose stored image is identical to the original's (same content hash) counts as "
        "correct, and the last column says how many hits that affected.",
        "",
    ]
    lines += _table(
        ["encoder", *(f"R@1 {k}" for k in kinds), "R@10 overall", "top hit an identical image"],
        [
            [
                f"`{s}`",
                *(_f(a[s]["r_at_1"][k]) for k in kinds),
                _f(a[s]["r_at_10"]["overall"]),
                str(a[s]["top1_identical_image"]),
            ]
            for s in specs
        ],
    )
    return lines


def _dedupe(r: dict[str, Any]) -> list[str]:
    d = r["dedupe"]
    reasons = ", ".join(f"{k}: {n}" for k, n in d["other_by_reason"].items()) or "none"
    lines = [
        "",
        "## 4. Near-duplicate detection on injected copies",
        "",
        f"A temporary catalogue of {d['originals']} test images plus {d['injected']} mildly "
        "altered copies of some of them (cycling: random 92-95 % crop resized back, brightness "
        "x1.1 or x0.9, gaussian noise sigma 4), embedded with "
        f"`{d['encoder']}`; `find_duplicates` with its defaults (cosine >= 0.95, or perceptual "
        "hash within 6 bits and cosine >= 0.85, or identical image). The catalogue is deleted "
        "afterwards.",
        "",
        "A reported pair counts as correct when it is an injected original-copy pair, when "
        "the two images are byte-identical, or when one is a copy of an image byte-identical "
        "to the other. Precision = correct pairs / reported pairs; recall = injected pairs "
        "reported / injected pairs.",
        "",
    ]
    lines += _table(
        ["reported pairs", "precision", "recall", "recall (same cluster)", "other pairs"],
        [
            [
                str(d["reported_pairs"]),
                _f(d["precision"]),
                _f(d["recall"]),
                _f(d["recall_same_cluster"]),
                str(d["other_pairs"]),
            ]
        ],
    )
    lines += [
        "",
        "Recall by alteration: "
        + ", ".join(f"{k} {_f(v)}" for k, v in d["recall_by_alteration"].items())
        + f". Identical-image pairs (not injected): {d['identical_or_copy_of_identical']}.",
        "",
        f"The {d['other_pairs']} other pairs (by reason: {reasons}) are neither injected nor "
        "identical; they can be real near-duplicates already in Fashion-MNIST (the same "
        "garment photographed alike), so this precision is a lower bound.",
    ]
    return lines


def render_report(results: dict[str, Any], *, json_name: str) -> str:
    """The Markdown report for the figures in ``results``."""
    lines = _header(results, json_name)
    lines += _knn(results) + _text(results) + _augmented(results) + _dedupe(results)
    lines += ["", "## Context", "", PUBLISHED_CONTEXT, ""]
    return "\n".join(lines)
