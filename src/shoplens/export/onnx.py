"""Export an encoder to ONNX, check it against PyTorch, quantise it, measure the change.

:func:`export_onnx` writes into ``out_dir``:

* ``image.onnx``: the image tower on *preprocessed* pixels ``(batch, 3, S, S)`` ->
  ``(batch, D)`` (dynamic batch axis). Preprocessing stays in Python and is the source
  encoder's own (see :mod:`shoplens.export.backends`).
* ``text.onnx`` (+ ``tokenizer/``): the text tower with its projection, when the model has
  one: the hashed-word transformer of ``clip-*`` models (the ``EmbeddingBag`` becomes a
  padded gather-and-mean, same numbers) or MiniLM (transformer + mean pooling +
  normalisation + projection; the tokenizer is saved beside it). Dynamic batch and
  sequence axes.
* ``image.int8-dynamic.onnx`` / ``image.int8-static.onnx`` on request
  (:mod:`shoplens.export.quantize`).
* ``export.json``: source spec, opset, dim, versions, per file its size and its parity
  with PyTorch (max abs diff of the L2-normalised embeddings; fp32 files must stay under
  ``1e-4`` or the export fails), and after :func:`measure_export` the accuracy change.

Exportable: ``trained:DIR`` (any model with ``encode_image``) and ``effnet-lite0[@S]``.
Each graph is traced with the legacy TorchScript exporter first and checked on inputs of
other sizes; when the trace baked a size in (``nn.MultiheadAttention`` does for the
sequence length) the dynamo exporter (opset >= 18) is used instead. ``export.json`` names
the exporter and opset of every file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import shutil
import warnings
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from shoplens import __version__
from shoplens.config import atomic_write
from shoplens.errors import InvalidInputError, ShoplensError
from shoplens.export.backends import (
    EXPORT_JSON,
    IMAGE_FILE,
    INT8_FILES,
    TEXT_FILE,
    TOKENIZER_DIR,
    Int8Mode,
    OnnxEncoder,
    image_preprocessor,
    read_export,
    text_tokenizer,
)
from shoplens.export.quantize import (
    StaticOptions,
    count_quantized,
    quantize_dynamic_file,
    quantize_static_file,
)
from shoplens.models.base import Encoder

TOLERANCE = 1e-4  # max abs diff of fp32 ONNX vs PyTorch embeddings
SAMPLE_TEXTS = (
    "ankle boot",
    "a photo of a red summer dress",
    "Leather bag with a long strap, gold buckle and two inner pockets",
    "T-shirt/top",
    "sneaker",
    "warm wool coat for winter, size large, colour dark blue, slim fit",
    "",
)
CALIBRATION_BATCH = 32
TOP = 10  # neighbours compared by measure_export


class _EncodeImage(nn.Module):
    """A trained model's ``encode_image``: preprocessed (B, 3, S, S) -> (B, D)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)  # type: ignore[operator]


class _EffNetPooled(nn.Module):
    """EfficientNet-Lite0's pooled last conv, as ``EffNetLite0Encoder``: -> (B, 1280)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))  # type: ignore[operator]


class _TinyTextGraph(nn.Module):
    """``CLIPModel.encode_text`` for the tiny tower on ``bags`` (B, T, G), ``mask`` (B, T).

    ``EmbeddingBag(mode="mean", padding_idx=0)`` becomes a gather and a mean over the
    non-padding ids; the rest is :meth:`TinyTextTower.encode` step by step.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.tower: Any = model.text_tower

    def forward(self, bags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = self.tower
        e = F.embedding(bags, t.embed.weight)  # (B, T, G, W)
        valid = (bags != 0).unsqueeze(-1).to(e.dtype)  # (B, T, G, 1)
        x = (e * valid).sum(2) / valid.sum(2).clamp(min=1.0)  # (B, T, W)
        x = x + t.pos[:, : mask.shape[1]]
        x = t.norm(t.blocks(x, src_key_padding_mask=~mask))  # (B, T, W)
        m = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        pooled = (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)  # (B, W)
        return F.normalize(self.model.text_proj(t.head(pooled)), dim=-1)  # type: ignore[operator]


class _MiniLMTextGraph(nn.Module):
    """``CLIPModel.encode_text`` for a MiniLM tower on token arrays (named ``inputs``)."""

    def __init__(self, model: nn.Module, inputs: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        tower: Any = model.text_tower
        self.frozen = bool(tower.frozen)
        self.st = tower._encoder.model if tower.frozen else tower.st
        self.head = tower.head
        self.inputs = list(inputs)

    def forward(self, *arrays: torch.Tensor) -> torch.Tensor:
        feats = self.st(dict(zip(self.inputs, arrays, strict=True)))["sentence_embedding"]
        if self.frozen:  # the frozen tower takes MiniLMEncoder's normalised embeddings
            feats = F.normalize(feats, dim=-1)
        return F.normalize(self.model.text_proj(self.head(feats)), dim=-1)  # type: ignore[operator]


def image_graph(encoder: Encoder) -> tuple[nn.Module, dict[str, Any]]:
    """The image module to export and how to preprocess its input (``export.json``)."""
    from shoplens.models.encoders import EffNetLite0Encoder, TinyConvEncoder
    from shoplens.models.trained import TrainedEncoder

    if isinstance(encoder, TrainedEncoder):
        return _EncodeImage(encoder.model), {"encoder": "trained", "image_size": encoder.image_size}
    if isinstance(encoder, EffNetLite0Encoder):
        prep = {"encoder": "effnet-lite0", "image_size": encoder.image_size}
        return _EffNetPooled(encoder.model), prep
    why = "it has no PyTorch image tower"
    if isinstance(encoder, TinyConvEncoder):
        why = "its preprocessing is inline in encode_images (no _preprocess to reuse)"
    elif hasattr(encoder, "model") and "image" in encoder.modalities:
        why = "its preprocessing is not a separate function an exported encoder can reuse"
    raise InvalidInputError(
        f"encoder {encoder.name!r} cannot be exported to ONNX: {why}; exportable encoders: "
        "trained:DIR, effnet-lite0[@SIZE]"
    )


def text_graph(encoder: Encoder) -> tuple[nn.Module | None, dict[str, Any], str]:
    """``(module, tokenizer spec, reason)``: the text module to export, or None and why not."""
    from shoplens.models.text import MiniLMTower, TinyTextTower
    from shoplens.models.trained import TrainedCLIPEncoder

    if not isinstance(encoder, TrainedCLIPEncoder):
        return None, {}, "the encoder has no trained text tower"
    model = encoder.model
    tower = model.text_tower
    if isinstance(tower, TinyTextTower):
        cfg = model.cfg.text_tower
        spec = {"type": "hash-words", "buckets": cfg.buckets, "max_words": cfg.max_words}
        return _TinyTextGraph(model), spec, ""
    if isinstance(tower, MiniLMTower):
        st = tower._encoder.model if tower.frozen else tower.st
        prep = getattr(st, "preprocess", None) or st.tokenize
        inputs = [k for k, v in prep(["a"]).items() if isinstance(v, torch.Tensor)]
        spec = {"type": "hf", "max_length": int(st.max_seq_length or 512), "inputs": inputs,
                "lower": bool(getattr(st[0], "do_lower_case", False))}  # fmt: skip
        return _MiniLMTextGraph(model, inputs), spec, ""
    return None, {}, f"text tower {type(tower).__name__} is not supported"


@contextlib.contextmanager
def _no_feature_cache(model: nn.Module) -> Iterator[None]:
    """Trace a locked image tower without its per-image feature cache (a Python dict)."""
    from shoplens.models.common import FeatureCache

    cache = getattr(model, "image_cache", None)
    if cache is not None:
        setattr(model, "image_cache", FeatureCache(0))  # noqa: B010 (not a tensor/module)
    try:
        yield
    finally:
        if cache is not None:
            setattr(model, "image_cache", cache)  # noqa: B010


Feeds = tuple[torch.Tensor, ...]
Axes = dict[str, dict[int, str]]  # input name -> {axis: dynamic dim name}


def _run_exporter(exporter: str, module: nn.Module, example: Feeds, path: Path,
                  inputs: list[str], axes: Axes, opset: int) -> None:  # fmt: skip
    """One ``torch.onnx.export`` call, quietly (the dynamo exporter prints progress)."""
    inner = getattr(module, "model", None)
    # Traced with autograd on: with it off, nn.TransformerEncoderLayer takes its fused
    # fast path (aten::_transformer_encoder_layer_fwd), which has no ONNX export.
    with (
        torch.enable_grad(),
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        _no_feature_cache(inner) if inner is not None else contextlib.nullcontext(),
    ):
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(
                module, example, str(path), input_names=inputs, output_names=["vectors"],
                dynamic_axes={**axes, "vectors": {0: "batch"}}, opset_version=opset,
                dynamo=False, do_constant_folding=True,
            )  # fmt: skip
            return
        dims = {n: torch.export.Dim(n) for ax in axes.values() for n in ax.values()}
        shapes = tuple({i: dims[n] for i, n in axes[name].items()} for name in inputs)
        torch.onnx.export(
            module, example, str(path), input_names=inputs, output_names=["vectors"],
            dynamic_shapes=shapes, opset_version=max(opset, 18), dynamo=True,
        )  # fmt: skip


def _probe(path: Path, module: nn.Module, inputs: list[str], probes: list[Feeds]) -> None:
    """Raise unless ONNX Runtime matches PyTorch on ``probes`` (other batch / lengths)."""
    from shoplens.export.backends import new_session
    from shoplens.models.base import l2_normalize

    session = new_session(path, threads=1)
    for feeds in probes:
        with torch.inference_mode():
            ref = l2_normalize(module(*feeds).float().numpy())
        got = session.run(None, {n: t.numpy() for n, t in zip(inputs, feeds, strict=True)})[0]
        diff = float(np.abs(l2_normalize(got) - ref).max())
        if not diff <= TOLERANCE:
            shapes = [tuple(t.shape) for t in feeds]
            raise ValueError(f"output differs from PyTorch by {diff:.1e} for inputs {shapes}")


def export_module(module: nn.Module, example: Feeds, probes: list[Feeds], path: Path,
                  inputs: list[str], axes: Axes, opset: int) -> dict[str, Any]:  # fmt: skip
    """Export ``module`` to ``path`` with the legacy TorchScript exporter, else dynamo.

    Each result must match PyTorch on ``probes`` (inputs of other sizes than
    ``example``), as a trace can bake a size in: the TorchScript trace of
    ``nn.MultiheadAttention`` (the tiny text tower) keeps the example's sequence length,
    so that tower goes through dynamo. Returns ``{"exporter", "opset"}`` of the file
    written (atomically).
    """
    import onnx

    tmp = path.with_name(f".{path.name}.tmp")
    errors = []
    module = module.eval()
    for exporter in ("torchscript", "dynamo"):
        try:
            _run_exporter(exporter, module, example, tmp, inputs, axes, opset)
            _probe(tmp, module, inputs, probes)
        except Exception as e:
            errors.append(f"{exporter}: {type(e).__name__}: {str(e)[:300]}")
            tmp.unlink(missing_ok=True)
            continue
        os.replace(tmp, path)
        model = onnx.load(str(path), load_external_data=False)
        opsets = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
        return {"exporter": exporter, "opset": opsets[0] if opsets else opset}
    raise InvalidInputError(f"ONNX export of {path.name} failed: " + "; ".join(errors))


def synthetic_images(n: int = 16, size: int = 48, seed: int = 0) -> list[Image.Image]:
    """Deterministic noisy gradient images, for parity checks when none are given."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size)[None, :, None]  # (1, S, 1)
    out = []
    for _ in range(n):
        base = ramp * rng.random(3) + rng.integers(0, 120, 3)  # (1, S, 3)
        arr = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255)
        out.append(Image.fromarray(arr.astype(np.uint8)))
    return out


def _diff(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cos = np.sum(a * b, axis=1)  # both L2-normalised: (N,)
    return {
        "max_abs_diff": float(np.abs(a - b).max(initial=0.0)),
        "min_cosine": float(cos.min(initial=1.0)),
        "mean_cosine": float(cos.mean()),
    }


def _check_parity(what: str, stats: dict[str, float], tol: float) -> dict[str, Any]:
    if not stats["max_abs_diff"] <= tol:
        raise ShoplensError(
            f"{what} does not match PyTorch: max abs diff {stats['max_abs_diff']:.2e} > {tol:.0e}",
            code="export_parity",
        )
    return {**stats, "tolerance": tol}


def _clear(out: Path) -> None:
    """Remove a previous export's files (export.json first: never a stale pairing)."""
    for name in (EXPORT_JSON, IMAGE_FILE, TEXT_FILE, *INT8_FILES.values()):
        (out / name).unlink(missing_ok=True)
    if (out / TOKENIZER_DIR).is_dir():
        shutil.rmtree(out / TOKENIZER_DIR)


def _source(spec: str) -> tuple[str, Encoder]:
    """A canonical spec (``trained:`` paths made absolute) and a fresh encoder for it."""
    from shoplens.registry import create_encoder

    prefix, sep, rest = spec.strip().partition(":")
    if sep and prefix == "trained":
        spec = f"trained:{Path(rest).expanduser().resolve()}"
    try:
        return spec, create_encoder(spec)
    except ShoplensError:
        raise
    except Exception as e:  # a checkpoint that does not load
        raise InvalidInputError(f"cannot load model {spec!r}: {type(e).__name__}: {e}") from e


def _write_meta(out: Path, meta: dict[str, Any]) -> None:
    with atomic_write(out / EXPORT_JSON) as f:
        f.write(json.dumps(meta, indent=2, sort_keys=True).encode("utf-8"))


def export_onnx(
    spec: str,
    out_dir: str | Path,
    *,
    int8: Sequence[Int8Mode] = (),
    calibration_images: Sequence[Image.Image] | None = None,
    opset: int = 17,
    parity_images: Sequence[Image.Image] | None = None,
    static_options: StaticOptions | None = None,
) -> dict[str, Any]:
    """Export encoder ``spec`` into ``out_dir`` (see module docstring); returns export.json.

    ``int8``: ``"dynamic"`` and/or ``"static"`` (static needs ``calibration_images``).
    Parity is checked on ``parity_images`` (default: the first 32 calibration images, else
    synthetic ones) in batches of 7 and of 1, so the dynamic batch axis is exercised.
    """
    import onnx
    import onnxruntime

    modes = list(dict.fromkeys(int8))
    for m in modes:
        if m not in get_args(Int8Mode):
            raise InvalidInputError(f"int8 mode {m!r} is not one of: dynamic, static")
    if "static" in modes and not calibration_images:
        raise InvalidInputError("static int8 quantisation needs calibration images")
    if not 13 <= opset <= 20:
        raise InvalidInputError(f"opset must be 13..20, got {opset}")
    source, encoder = _source(spec)
    module, prep = image_graph(encoder)  # fails early for encoders that cannot be exported
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    _clear(out)
    sample = list(parity_images or (calibration_images or [])[:32] or synthetic_images())
    meta: dict[str, Any] = {
        "format": 1, "source": source, "name": encoder.name, "dim": int(encoder.dim),
        "opset": opset, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "versions": {"shoplens": __version__, "torch": torch.__version__,
                     "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "image": {"file": IMAGE_FILE, "input": "pixels", "preprocess": prep},
        "text": None, "text_skipped": None, "files": {},
    }  # fmt: skip
    preprocess = image_preprocessor(prep)  # what the exported encoder will run
    x = torch.from_numpy(preprocess((sample * 7)[:7]))  # (7, 3, S, S)
    how = export_module(module, (x[:5],), [(x[:1],), (x,)], out / IMAGE_FILE, ["pixels"],
                        {"pixels": {0: "batch"}}, opset)  # fmt: skip
    ref = encoder.encode_images(sample)  # (N, D)
    checker = OnnxEncoder(out, meta=meta, image_file=IMAGE_FILE, batch_size=7)
    stats = _diff(checker.encode_images(sample), ref)
    one = _diff(checker.encode_images(sample[:1]), ref[:1])
    stats["max_abs_diff"] = max(stats["max_abs_diff"], one["max_abs_diff"])
    parity = _check_parity("image.onnx", stats, TOLERANCE)
    meta["files"][IMAGE_FILE] = {**_file_info(out / IMAGE_FILE, "image", "fp32", parity), **how}
    _export_text(encoder, out, meta, opset)
    for mode in modes:
        dst = out / INT8_FILES[mode]
        if mode == "dynamic":
            how = quantize_dynamic_file(out / IMAGE_FILE, dst)
        else:
            batches, used = calibration_batches(preprocess, calibration_images or [])
            how = quantize_static_file(out / IMAGE_FILE, dst, batches, static_options)
            how["calibration_images"] = used
        q = OnnxEncoder(out, meta=meta, image_file=dst.name, batch_size=7)
        stats = _diff(q.encode_images(sample), ref)
        meta["files"][dst.name] = {**_file_info(dst, "image", "int8", stats),
                                   "quantization": {**how, **count_quantized(dst)}}  # fmt: skip
    _write_meta(out, meta)
    return meta


def calibration_batches(
    preprocess: Callable[[Sequence[Image.Image]], np.ndarray], images: Sequence[Image.Image]
) -> tuple[Iterator[dict[str, np.ndarray]], int]:
    """Equal batches ``{"pixels": (B, 3, S, S)}`` of preprocessed images (a remainder that
    does not fill a batch is left out) and the number of images they hold."""
    size = min(CALIBRATION_BATCH, len(images))
    used = len(images) // size * size if size else 0
    batches = ({"pixels": preprocess(images[s : s + size])} for s in range(0, used, size))
    return batches, used


def _file_info(path: Path, kind: str, precision: str, parity: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "precision": precision, "bytes": path.stat().st_size, "parity": parity}


def _export_text(encoder: Encoder, out: Path, meta: dict[str, Any], opset: int) -> None:
    """Export the text tower (or record why not) and check it on :data:`SAMPLE_TEXTS`."""
    module, tok_spec, why = text_graph(encoder)
    if module is None:
        meta["text_skipped"] = why
        return
    if tok_spec["type"] == "hf":
        tower: Any = getattr(encoder, "model").text_tower  # noqa: B009
        st = tower._encoder.model if tower.frozen else tower.st
        st.tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
    meta["text"] = {"file": TEXT_FILE, "tokenizer": tok_spec}
    tokenize = text_tokenizer(out, tok_spec)
    feeds = tokenize(list(SAMPLE_TEXTS[:5]))
    names = list(feeds)

    def tensors(f: dict[str, np.ndarray]) -> Feeds:
        return tuple(torch.from_numpy(f[n]) for n in names)

    probes = [tensors(tokenize([SAMPLE_TEXTS[0]])), tensors(tokenize(list(SAMPLE_TEXTS)))]
    axes = {n: {i: ("batch", "seq", "grams")[i] for i in range(v.ndim)} for n, v in feeds.items()}
    how = export_module(module, tensors(feeds), probes, out / TEXT_FILE, names, axes, opset)
    texts = list(SAMPLE_TEXTS)
    checker = OnnxEncoder(out, meta=meta, image_file=IMAGE_FILE, batch_size=3)
    stats = _diff(checker.encode_texts(texts), encoder.encode_texts(texts))
    parity = _check_parity("text.onnx", stats, TOLERANCE)
    meta["files"][TEXT_FILE] = {**_file_info(out / TEXT_FILE, "text", "fp32", parity), **how}


def measure_export(
    export_dir: str | Path,
    images: Sequence[Image.Image],
    labels: Sequence[Hashable] | np.ndarray,
    *,
    query_images: Sequence[Image.Image] | None = None,
    query_labels: Sequence[Hashable] | np.ndarray | None = None,
    k: int = 5,
    data: str = "custom",
    files: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy of each exported image model against the PyTorch source; saved in export.json.

    ``images`` / ``labels`` are the gallery; the queries are ``query_images`` /
    ``query_labels`` (default: every fifth gallery image, taken out of the gallery). Per
    variant (``torch`` and each image file):

    * ``recall_at_10``: share of the PyTorch model's 10 nearest gallery images (exact
      search) that the variant also returns in its top 10, averaged over queries
      (1.0 for PyTorch by definition); ``recall_loss_points`` = 100 x (1 - that). On
      galleries full of near-identical products this is very sensitive: neighbours 8-12
      are often separated by less than the int8 rounding noise;
    * label metrics, with "relevant" = same label (:func:`shoplens.eval.metrics.
      ranking_metrics`): ``knn_accuracy`` (``k``-NN majority vote), ``label_recall_at_10``
      (share of queries with a relevant image in the top 10, the R@10 of the eval
      reports), ``precision_at_10`` and ``ndcg_at_10``; ``*_change_points`` are
      100 x (variant - PyTorch);
    * ``mean_cosine``: mean cosine between the variant's and PyTorch's query embeddings.

    ``files``: the image model files of the folder to compare (default: every image file
    in export.json). Returns the ``accuracy`` section written into ``export.json``.
    """
    from shoplens.eval.metrics import ranking_metrics, top_k

    top = TOP
    folder = Path(export_dir).expanduser()
    meta = read_export(folder)
    gallery, g_lab = list(images), np.asarray(labels)
    if len(gallery) != len(g_lab) or not gallery:
        raise InvalidInputError(f"need one label per image, got {len(gallery)} / {len(g_lab)}")
    if query_images is None:
        is_q = np.arange(len(gallery)) % 5 == 4
        queries, q_lab = [im for im, q in zip(gallery, is_q, strict=True) if q], g_lab[is_q]
        gallery, g_lab = [im for im, q in zip(gallery, is_q, strict=True) if not q], g_lab[~is_q]
    else:
        queries, q_lab = list(query_images), np.asarray(query_labels)
    if not queries or len(queries) != len(q_lab) or len(gallery) < top:
        raise InvalidInputError(f"need labelled queries and at least {top} gallery images")
    _, torch_enc = _source(str(meta["source"]))
    encoders: dict[str, Encoder] = {"torch": torch_enc}
    listed = sorted(
        (n for n, info in meta.get("files", {}).items() if info.get("kind") == "image"),
        key=lambda n: (n != IMAGE_FILE, n),  # fp32 first
    )
    for name in listed if files is None else files:
        encoders[name] = OnnxEncoder(folder, meta=meta, image_file=name)
    variants: dict[str, dict[str, float]] = {}
    ref_q: np.ndarray | None = None
    ref_top: np.ndarray | None = None
    for name, enc in encoders.items():
        g, q = enc.encode_images(gallery), enc.encode_images(queries)  # (N, D), (M, D)
        found = top_k(q @ g.T, top)  # (M, top)
        if ref_q is None or ref_top is None:
            ref_q, ref_top = q, found
        overlap = np.mean([len(set(a) & set(b)) / top for a, b in zip(found, ref_top, strict=True)])
        ranks = ranking_metrics(q, q_lab, g, g_lab, ks=(top,), knn_k=k, ndcg_k=top, with_map=False)
        variants[name] = {
            "recall_at_10": float(overlap),
            "recall_loss_points": float(100.0 * (1.0 - overlap)),
            "mean_cosine": float(np.mean(np.sum(q * ref_q, axis=1))),
            "knn_accuracy": ranks["knn_accuracy"],
            "label_recall_at_10": ranks["recall_at_k"][str(top)],
            "precision_at_10": ranks["precision_at_k"][str(top)],
            "ndcg_at_10": ranks[f"ndcg_at_{top}"],
        }
    for key in ("knn_accuracy", "label_recall_at_10", "precision_at_10", "ndcg_at_10"):
        base = variants["torch"][key]
        for v in variants.values():
            v[f"{key}_change_points"] = 100.0 * (v[key] - base)
    result = {
        "data": data, "gallery": len(gallery), "queries": len(queries), "k": k, "top": top,
        "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(), "variants": variants,
    }  # fmt: skip
    meta["accuracy"] = result
    _write_meta(folder, meta)
    return result


__all__ = [
    "TOLERANCE",
    "calibration_batches",
    "export_onnx",
    "image_graph",
    "measure_export",
    "text_graph",
]
