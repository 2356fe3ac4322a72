"""int8 quantisation of an exported fp32 ONNX model with ONNX Runtime.

* **dynamic** (:func:`quantize_dynamic_file`): int8 weights, activations quantised at run
  time. Only ``MatMul`` / ``Gemm`` by default: ONNX Runtime runs a dynamically quantised
  ``Conv`` as ``ConvInteger``, which on CPU was 4x *slower* than the fp32 convolution and
  broke EfficientNet-Lite0's embeddings (cosine to fp32 down to 0.4) when measured here,
  so on a convolution net this variant mostly leaves the model as it is.
* **static** (:func:`quantize_static_file`): QDQ format, int8 weights (per output channel
  by default) and uint8 activations with ranges calibrated on real images (preprocessed
  by the encoder's own preprocessing), which is what gives convolution nets a speed-up.

Both first run ``quant_pre_process`` (symbolic shape inference and graph clean-up), as
ONNX Runtime recommends; if that fails the model is quantised as exported.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from shoplens.errors import InvalidInputError

DYNAMIC_OPS: tuple[str, ...] = ("MatMul", "Gemm")
_COMPUTE_OPS = ("Conv", "MatMul", "Gemm")
Calibration = Literal["minmax", "entropy", "percentile"]


@dataclass(frozen=True)
class StaticOptions:
    """Static QDQ settings.

    ``per_channel``: one weight scale per output channel; ``activations``: uint8
    (asymmetric, the fast path on x86) or int8; ``calibration``: how activation ranges
    are chosen; ``exclude_first_last``: keep the first and last Conv/MatMul/Gemm in fp32
    (they are usually the most sensitive to quantisation).
    """

    per_channel: bool = True
    activations: Literal["uint8", "int8"] = "uint8"
    calibration: Calibration = "minmax"
    exclude_first_last: bool = False


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the quantisation tools' logging, warnings and prints (stdout stays JSON)."""
    import warnings

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


@contextlib.contextmanager
def preprocessed(src: Path) -> Iterator[tuple[Path, bool]]:
    """``quant_pre_process``-ed copy of ``src`` (a temp file) and whether it worked."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fd, tmp = tempfile.mkstemp(dir=src.parent, prefix=f".{src.stem}.", suffix=".pre.onnx")
    os.close(fd)
    try:
        try:
            with _quiet():
                quant_pre_process(str(src), tmp, skip_symbolic_shape=False)
            model, ok = Path(tmp), True
        except Exception:  # quantise the model as exported instead
            model, ok = src, False
        yield model, ok
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def count_quantized(path: Path) -> dict[str, int]:
    """Nodes of ``path``: ``int8_ops`` (integer kernels or QDQ-wrapped weights), ``total``."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    integer = {
        "MatMulInteger",
        "ConvInteger",
        "QLinearConv",
        "QLinearMatMul",
        "DynamicQuantizeLinear",
    }
    ops = [n.op_type for n in graph.node]
    qdq_weights = sum(op == "DequantizeLinear" for op in ops)
    return {"int8_ops": sum(op in integer for op in ops) + qdq_weights, "total": len(ops)}


def quantize_dynamic_file(src: Path, dst: Path, *, op_types: Iterable[str] = DYNAMIC_OPS) -> dict:
    """Dynamic int8 quantisation of ``src`` into ``dst``; returns the settings used."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = list(op_types)
    with preprocessed(src) as (model, pre_ok), _quiet():
        quantize_dynamic(
            str(model), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=ops
        )
    return {"mode": "dynamic", "weights": "int8", "op_types": ops, "pre_process": pre_ok}


class BatchReader(CalibrationDataReader):  # type: ignore[misc]
    """Calibration data: ``{input_name: (B, ...) float32}`` batches, read once."""

    def __init__(self, batches: Iterable[dict[str, np.ndarray]]) -> None:
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _first_last(path: Path) -> list[str]:
    """Names of the first and last compute nodes (Conv / MatMul / Gemm) in graph order."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    names = [n.name for n in graph.node if n.op_type in _COMPUTE_OPS and n.name]
    return sorted({names[0], names[-1]}) if names else []


def quantize_static_file(
    src: Path,
    dst: Path,
    batches: Iterable[dict[str, np.ndarray]],
    options: StaticOptions | None = None,
) -> dict[str, Any]:
    """Static QDQ int8 quantisation of ``src`` into ``dst``, calibrated on ``batches``.

    ``batches``: dicts of the model's input name -> preprocessed (B, 3, S, S) float32,
    all of one batch size (the histogram calibrations stack them). Returns the settings
    used (JSON-able).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    opts = options or StaticOptions()
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if opts.calibration not in methods:
        raise InvalidInputError(f"calibration must be one of {', '.join(methods)}")
    reader = BatchReader(batches)
    act = QuantType.QUInt8 if opts.activations == "uint8" else QuantType.QInt8
    with preprocessed(src) as (model, pre_ok):
        exclude = _first_last(model) if opts.exclude_first_last else []
        with _quiet():
            quantize_static(
                str(model),
                str(dst),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=opts.per_channel,
                activation_type=act,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[opts.calibration],
                nodes_to_exclude=exclude,
            )
    return {"mode": "static", "format": "QDQ", **asdict(opts), "excluded": exclude,
            "pre_process": pre_ok}  # fmt: skip


__all__ = [
    "DYNAMIC_OPS",
    "StaticOptions",
    "count_quantized",
    "quantize_dynamic_file",
    "quantize_static_file",
]
