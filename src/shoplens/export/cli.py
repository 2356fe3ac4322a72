"""``shoplens export``: the Typer app (registered in :mod:`shoplens.cli`).

``shoplens export onnx MODEL --out DIR [--int8 dynamic] [--int8 static]`` exports,
checks parity, quantises and (``--measure``, the default) measures the accuracy change.
Calibration, gallery and query images come from Fashion-MNIST (train split: the first
``--calibration`` images calibrate, the last ``--gallery`` are the gallery; test split:
the first ``--queries`` are the queries) or from a catalogue (``--catalog NAME``: products
with ``split=test`` are the queries, else every fifth product).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from shoplens.errors import InvalidInputError

export_app = typer.Typer(
    help="Export encoders to ONNX (fp32 and int8) for ONNX Runtime.", no_args_is_help=True
)


@export_app.callback()
def _group() -> None:
    """Export encoders to ONNX (fp32 and int8) for ONNX Runtime."""


@dataclass
class ExportData:
    """Images for calibration, and a labelled gallery and queries for measuring."""

    calibration: list[Any]
    gallery: list[Any]
    gallery_labels: list[Any]
    queries: list[Any]
    query_labels: list[Any]
    description: str


def fashion_mnist_data(calibration: int, gallery: int, queries: int) -> ExportData:
    """Fashion-MNIST: calibration = first train images, gallery = last, queries = test."""
    from shoplens.data.fashion_mnist import load_fashion_mnist
    from shoplens.eval.runner import ArrayImages

    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    if calibration + gallery > len(train):
        raise InvalidInputError(f"--calibration + --gallery must be <= {len(train)}")
    start = len(train) - gallery
    return ExportData(
        calibration=ArrayImages(train.images[:calibration])[:],
        gallery=ArrayImages(train.images[start:])[:],
        gallery_labels=train.labels[start:].tolist(),
        queries=ArrayImages(test.images[:queries])[:],
        query_labels=test.labels[:queries].tolist(),
        description=f"Fashion-MNIST ({gallery} train images as gallery, {queries} test queries)",
    )


def catalog_data(name: str, calibration: int, gallery: int, queries: int) -> ExportData:
    """A catalogue: ``split=test`` products (else every fifth) query the others."""
    from shoplens.catalog.store import Catalog

    with Catalog.open(name) as cat:
        products = list(cat.iter_products())
        if not products:
            raise InvalidInputError(f"catalogue {name!r} is empty")
        has_split = any(p.attributes.get("split") == "test" for p in products)
        is_q = [
            p.attributes.get("split") == "test" if has_split else i % 5 == 4
            for i, p in enumerate(products)
        ]
        q = [p for p, flag in zip(products, is_q, strict=True) if flag][:queries]
        g = [p for p, flag in zip(products, is_q, strict=True) if not flag]
        g_used = g[:gallery]
        cal = g[:calibration]
        load = cat.load_image
        return ExportData(
            calibration=[load(p) for p in cal],
            gallery=[load(p) for p in g_used],
            gallery_labels=[p.category for p in g_used],
            queries=[load(p) for p in q],
            query_labels=[p.category for p in q],
            description=f"catalogue {name} ({len(g_used)} gallery, {len(q)} query products)",
        )


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def summary_lines(meta: dict[str, Any], out: Path) -> list[str]:
    """Human summary of an export: files with parity, text tower, accuracy table."""
    lines = [f"exported {meta['source']} -> {out} (opset {meta['opset']}, dim {meta['dim']})"]
    rows = [["file", "precision", "size", "max |diff| vs torch", "min cosine"]]
    for name, f in meta["files"].items():
        p = f["parity"]
        rows.append([name, f["precision"], _size(f["bytes"]), f"{p['max_abs_diff']:.2e}",
                     f"{p['min_cosine']:.5f}"])  # fmt: skip
    lines += _table(rows)
    if meta.get("text_skipped"):
        lines.append(f"text tower not exported: {meta['text_skipped']}")
    acc = meta.get("accuracy")
    if acc:
        lines.append(f"accuracy vs PyTorch on {acc['data']}:")
        rows = [["model", "5-NN", "change", "R@10 vs torch", "loss (points)", "P@10", "cosine"]]
        for name, v in acc["variants"].items():
            change = v["knn_accuracy_change_points"]
            rows.append([name, f"{v['knn_accuracy']:.4f}", f"{change:+.2f}",
                         f"{v['recall_at_10']:.4f}", f"{v['recall_loss_points']:.2f}",
                         f"{v['precision_at_10']:.4f}", f"{v['mean_cosine']:.5f}"])  # fmt: skip
        lines += _table(rows)
    return lines


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]  # fmt: skip


@export_app.command("onnx")
def onnx_command(
    model: Annotated[str, typer.Argument(help="Encoder spec: trained:DIR or effnet-lite0[@SIZE].")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the ONNX files.")],
    int8: Annotated[
        list[str] | None,
        typer.Option("--int8", help="Also write an int8 model: dynamic or static (repeatable)."),
    ] = None,
    calibration: Annotated[
        int, typer.Option(min=1, help="Calibration images for static int8 (and parity).")
    ] = 500,
    gallery: Annotated[int, typer.Option(min=10, help="Gallery images for --measure.")] = 2000,
    queries: Annotated[int, typer.Option(min=1, help="Query images for --measure.")] = 500,
    measure: Annotated[
        bool, typer.Option("--measure/--no-measure", help="Measure 5-NN and R@10 changes.")
    ] = True,
    catalog: Annotated[
        str | None,
        typer.Option("--catalog", "-c", help="Take the images from this catalogue instead."),
    ] = None,
    calibration_method: Annotated[
        str, typer.Option(help="Static int8 activation ranges: minmax, percentile or entropy.")
    ] = "minmax",
    keep_ends: Annotated[
        bool,
        typer.Option(help="Static int8: keep the first and last Conv/MatMul/Gemm in fp32."),
    ] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    as_json: Annotated[
        bool, typer.Option("--json", help="Machine-readable JSON on stdout.")
    ] = False,
) -> None:
    """Export MODEL to ONNX (image and text towers), check it against PyTorch, quantise."""
    from shoplens.export.onnx import export_onnx, measure_export
    from shoplens.export.quantize import StaticOptions

    modes = list(dict.fromkeys(int8 or []))
    bad = [m for m in modes if m not in ("dynamic", "static")]
    if bad:
        raise InvalidInputError(f"--int8 {bad[0]!r} is not one of: dynamic, static")
    methods = ("minmax", "percentile", "entropy")
    if calibration_method not in methods:
        raise InvalidInputError(
            f"--calibration-method {calibration_method!r} is not one of: {', '.join(methods)}"
        )
    static = StaticOptions(calibration=calibration_method, exclude_first_last=keep_ends)  # type: ignore[arg-type]
    data = (
        catalog_data(catalog, calibration, gallery, queries)
        if catalog
        else fashion_mnist_data(calibration, gallery, queries)
    )
    meta = export_onnx(
        model, out, int8=modes, calibration_images=data.calibration, opset=opset,  # type: ignore[arg-type]
        static_options=static,
    )  # fmt: skip
    if measure:
        meta["accuracy"] = measure_export(
            out, data.gallery, data.gallery_labels, query_images=data.queries,
            query_labels=data.query_labels, data=data.description,
        )  # fmt: skip
    if as_json:
        typer.echo(json.dumps(meta, ensure_ascii=False, indent=2))
    else:
        typer.echo("\n".join(summary_lines(meta, out)))


__all__ = ["export_app", "onnx_command"]
