"""Exported encoders on ONNX Runtime: specs ``onnx:DIR`` (fp32) and ``onnx-int8:DIR``.

``DIR`` is a folder written by :func:`shoplens.export.onnx.export_onnx`: ``export.json``,
``image.onnx`` [, ``image.int8-static.onnx``, ``image.int8-dynamic.onnx``, ``text.onnx``
and ``tokenizer/``]. ``onnx-int8:DIR`` runs the static int8 image model when there is one,
else the dynamic one; texts always run the fp32 ``text.onnx``.

Only the network runs in ONNX Runtime. Image preprocessing is the source encoder's own
``_preprocess`` (its class is named in ``export.json``, see :data:`PREPROCESSORS`), and
tokenisation is the source text tower's own, so an exported encoder sees exactly the
tensors the PyTorch one does. Sessions use ``CPUExecutionProvider`` (CUDA first when
ONNX Runtime has it) with ``$SHOPLENS_ONNX_THREADS`` or ``torch.get_num_threads()``
intra-op threads. This module is imported with the registry, so it imports onnxruntime,
torch and transformers only when an encoder is created.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, Literal, get_args

import numpy as np
from PIL import Image

from shoplens.errors import InvalidInputError, NotFoundError
from shoplens.models.base import Encoder, Modality, l2_normalize
from shoplens.registry import register_adapter

Int8Mode = Literal["dynamic", "static"]
Variant = Literal["fp32", "int8"]
INT8_MODES: tuple[Int8Mode, ...] = get_args(Int8Mode)
EXPORT_JSON = "export.json"
IMAGE_FILE = "image.onnx"
TEXT_FILE = "text.onnx"
TOKENIZER_DIR = "tokenizer"
INT8_FILES: dict[Int8Mode, str] = {
    "static": "image.int8-static.onnx",
    "dynamic": "image.int8-dynamic.onnx",
}
THREADS_ENV = "SHOPLENS_ONNX_THREADS"

# export.json "preprocess.encoder" -> (module, class) whose ``_preprocess(images)`` is used.
PREPROCESSORS: dict[str, tuple[str, str]] = {
    "trained": ("shoplens.models.trained", "TrainedEncoder"),
    "effnet-lite0": ("shoplens.models.encoders", "EffNetLite0Encoder"),
}


def read_export(folder: str | Path) -> dict[str, Any]:
    """The validated ``export.json`` of an export folder."""
    path = Path(folder).expanduser() / EXPORT_JSON
    if not path.parent.is_dir():
        raise NotFoundError(f"ONNX export folder not found: {path.parent}")
    if not path.is_file():
        raise NotFoundError(f"no ONNX export in {path.parent} ({EXPORT_JSON} missing)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InvalidInputError(f"cannot read {path}: {e}") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("image"), dict):
        raise InvalidInputError(f"{path} is not a shoplens ONNX export (no 'image' section)")
    return meta


def image_file_for(folder: Path, variant: Variant) -> str:
    """The image model file of ``variant``: fp32, or int8 static (preferred) / dynamic."""
    if variant == "fp32":
        names = [IMAGE_FILE]
    elif variant == "int8":
        names = [INT8_FILES["static"], INT8_FILES["dynamic"]]
    else:
        raise InvalidInputError(f"variant must be 'fp32' or 'int8', got {variant!r}")
    for name in names:
        if (folder / name).is_file():
            return name
    hint = " (export with --int8 static or --int8 dynamic)" if variant == "int8" else ""
    raise NotFoundError(f"no {' or '.join(names)} in {folder}{hint}")


def image_preprocessor(spec: dict[str, Any]) -> Callable[[Sequence[Image.Image]], np.ndarray]:
    """The source encoder's ``_preprocess`` as ``images -> (B, 3, S, S) float32``.

    It is called on a stand-in that holds only what it reads (``image_size``, a CPU
    ``model.device``, ``_torch``), so the export needs no copy of the preprocessing code.
    """
    import importlib

    import torch

    kind = str(spec.get("encoder"))
    if kind not in PREPROCESSORS:
        raise InvalidInputError(
            f"unknown image preprocessing {kind!r} in {EXPORT_JSON}; known: "
            + ", ".join(sorted(PREPROCESSORS))
        )
    module, cls_name = PREPROCESSORS[kind]
    method = getattr(getattr(importlib.import_module(module), cls_name), "_preprocess", None)
    if method is None:
        raise InvalidInputError(f"{cls_name} has no _preprocess method to reuse")
    stand_in = SimpleNamespace(
        image_size=int(spec["image_size"]),
        model=SimpleNamespace(device=torch.device("cpu")),
        _torch=torch,
    )

    def run(images: Sequence[Image.Image]) -> np.ndarray:
        x = method(stand_in, list(images))  # (B, 3, S, S)
        return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)

    return run


class HashWordsTokenizer:
    """Texts -> ``bags`` (B, T, G) int64 (0 = padding) and ``mask`` (B, T) bool.

    The same word / trigram ids as the tiny text tower (:func:`shoplens.models.text.
    word_bags`), padded into a dense array an ONNX graph can take.
    """

    def __init__(self, buckets: int, max_words: int) -> None:
        self.buckets, self.max_words = int(buckets), int(max_words)

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        from shoplens.models.text import word_bags

        bags = [word_bags(t, self.buckets, self.max_words) for t in texts]
        t_max = max(len(b) for b in bags)
        g_max = max(len(bag) for text_bags in bags for bag in text_bags)
        ids = np.zeros((len(texts), t_max, g_max), np.int64)  # (B, T, G)
        mask = np.zeros((len(texts), t_max), np.bool_)  # (B, T)
        for row, text_bags in enumerate(bags):
            mask[row, : len(text_bags)] = True
            for col, bag in enumerate(text_bags):
                ids[row, col, : len(bag)] = bag
        return {"bags": ids, "mask": mask}


class HFTokenizer:
    """Hugging Face tokenizer saved with the export, called as sentence-transformers does.

    Texts are stripped (and lower-cased when the model did that), padded to the longest
    and truncated to ``max_length``; returns the arrays named in ``inputs``.
    """

    def __init__(self, folder: Path, max_length: int, lower: bool, inputs: Sequence[str]) -> None:
        from shoplens.models.encoders import quiet_hf_progress, set_offline_env

        set_offline_env()
        from transformers import AutoTokenizer

        with quiet_hf_progress():
            self.tok = AutoTokenizer.from_pretrained(str(folder))
        self.max_length, self.lower, self.inputs = int(max_length), bool(lower), list(inputs)

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        items = [t.strip().lower() if self.lower else t.strip() for t in texts]
        enc = self.tok(
            items,
            padding=True,
            truncation="longest_first",
            max_length=self.max_length,
            return_tensors="np",
        )
        return {k: np.asarray(enc[k], np.int64) for k in self.inputs}


def text_tokenizer(folder: Path, spec: dict[str, Any]) -> Callable[[Sequence[str]], dict]:
    """The tokenizer an exported text tower needs (``export.json`` ``text.tokenizer``)."""
    kind = spec.get("type")
    if kind == "hash-words":
        return HashWordsTokenizer(spec["buckets"], spec["max_words"])
    if kind == "hf":
        return HFTokenizer(
            folder / TOKENIZER_DIR, spec["max_length"], spec.get("lower", False), spec["inputs"]
        )
    raise InvalidInputError(f"unknown text tokenizer {kind!r} in {folder / EXPORT_JSON}")


def default_threads() -> int:
    """``$SHOPLENS_ONNX_THREADS``, else torch's intra-op thread count."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise InvalidInputError(f"{THREADS_ENV} must be a positive integer, got {value!r}")
        return int(value)
    import torch

    return int(torch.get_num_threads())


def new_session(path: Path, threads: int | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` (all graph optimisations, CUDA when present)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as e:  # a corrupt or foreign file
        raise InvalidInputError(f"cannot load ONNX model {path}: {type(e).__name__}: {e}") from e


class OnnxEncoder(Encoder):
    """The :class:`Encoder` contract over exported ONNX models (see module docstring).

    ``variant`` picks the image file (``image_file`` names one directly); ``threads``:
    intra-op threads (default :func:`default_threads`); ``meta``: an ``export.json`` dict
    to use instead of the file (the exporter checks its files before writing it).
    """

    modalities: ClassVar[frozenset[Modality]] = frozenset({"image"})

    def __init__(
        self,
        folder: str | Path,
        variant: Variant = "fp32",
        *,
        image_file: str | None = None,
        name: str | None = None,
        threads: int | None = None,
        batch_size: int = 64,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.folder = Path(folder).expanduser()
        self.meta = meta if meta is not None else read_export(self.folder)
        self.variant = variant
        self.image_file = image_file or image_file_for(self.folder, variant)
        if not (self.folder / self.image_file).is_file():
            raise NotFoundError(f"no {self.image_file} in {self.folder}")
        prefix = "onnx" if variant == "fp32" else "onnx-int8"
        self.name = name or f"{prefix}:{folder}"
        self.dim = int(self.meta["dim"])
        self.batch_size = batch_size
        self.threads = threads
        image = self.meta["image"]
        self.image_size = int(image["preprocess"]["image_size"])
        self._preprocess = image_preprocessor(image["preprocess"])
        self._image = new_session(self.folder / self.image_file, threads)
        self._image_input = str(image.get("input", "pixels"))
        text = self.meta.get("text")
        self._text_meta: dict[str, Any] | None = text if isinstance(text, dict) else None
        if self._text_meta is not None:
            # An instance attribute: this encoder also encodes texts (a shared space).
            self.modalities = frozenset({"image", "text"})  # type: ignore[misc]
        self._text: Any = None
        self._tokenize: Callable[[Sequence[str]], dict[str, np.ndarray]] | None = None
        self._lock = threading.Lock()

    def run_images(self, pixels: np.ndarray) -> np.ndarray:
        """Preprocessed (B, 3, S, S) float32 -> raw model output (B, dim)."""
        return np.asarray(self._image.run(None, {self._image_input: pixels})[0], np.float32)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed images -> (N, dim) float32, L2-normalised."""
        items = list(images)
        if not items:
            return np.zeros((0, self.dim), np.float32)
        out = [
            self.run_images(self._preprocess(items[s : s + self.batch_size]))
            for s in range(0, len(items), self.batch_size)
        ]
        return l2_normalize(np.concatenate(out))

    def _text_session(self) -> tuple[Any, Callable[[Sequence[str]], dict[str, np.ndarray]]]:
        """The text session and tokenizer, created on first use (text models are large)."""
        if self._text_meta is None:
            raise InvalidInputError(f"encoder {self.name!r} does not encode text")
        with self._lock:
            if self._text is None or self._tokenize is None:
                file = self.folder / str(self._text_meta.get("file", TEXT_FILE))
                self._tokenize = text_tokenizer(self.folder, self._text_meta["tokenizer"])
                self._text = new_session(file, self.threads)
            return self._text, self._tokenize

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts -> (N, dim) float32, L2-normalised; each distinct text once."""
        from shoplens.models.encoders import check_texts, dedupe

        session, tokenize = self._text_session()
        items = check_texts(texts)
        if not items:
            return np.zeros((0, self.dim), np.float32)
        unique, idx = dedupe(items)
        out = []
        for s in range(0, len(unique), self.batch_size):
            feeds = tokenize(unique[s : s + self.batch_size])
            out.append(np.asarray(session.run(None, feeds)[0], np.float32))
        return l2_normalize(np.concatenate(out))[idx]


def load_onnx_encoder(
    folder: str | Path, variant: Variant = "fp32", *, name: str | None = None
) -> OnnxEncoder:
    """An :class:`OnnxEncoder` over the export in ``folder`` (``variant`` fp32 or int8)."""
    return OnnxEncoder(folder, variant, name=name)


@register_adapter("onnx")
def _onnx(arg: str) -> Encoder:
    return OnnxEncoder(arg, "fp32")


@register_adapter("onnx-int8")
def _onnx_int8(arg: str) -> Encoder:
    return OnnxEncoder(arg, "int8")


__all__ = [
    "EXPORT_JSON",
    "IMAGE_FILE",
    "INT8_FILES",
    "TEXT_FILE",
    "OnnxEncoder",
    "load_onnx_encoder",
    "read_export",
]
