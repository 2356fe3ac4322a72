"""ONNX export, int8 quantisation and ONNX Runtime backends for shoplens encoders.

* :func:`export_onnx` (:mod:`shoplens.export.onnx`): image (and text) towers to ONNX,
  checked against PyTorch, optionally quantised to int8;
* :func:`measure_export`: the accuracy change of each exported file, kept in export.json;
* :class:`OnnxEncoder` (:mod:`shoplens.export.backends`): encoder specs ``onnx:DIR`` and
  ``onnx-int8:DIR``;
* ``shoplens export onnx MODEL`` (:mod:`shoplens.export.cli`).

Importing the package is cheap: torch and onnxruntime load with the names that need them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OnnxEncoder", "export_onnx", "load_onnx_encoder", "measure_export"]


def __getattr__(name: str) -> Any:
    if name in ("export_onnx", "measure_export"):
        from shoplens.export import onnx

        return getattr(onnx, name)
    if name in ("OnnxEncoder", "load_onnx_encoder"):
        from shoplens.export import backends

        return getattr(backends, name)
    raise AttributeError(f"module 'shoplens.export' has no attribute {name!r}")
