"""Small, accessible PNG plots for the research report, each with its alt text.

Every function returns a :class:`Plot`: the PNG as a ``data:`` URI and an alt text that
states the numbers the plot shows. Matplotlib is used through its object API with the Agg
canvas (no pyplot state, no display), with the Okabe-Ito colour-blind-safe palette,
labelled axes and a white background (readable in light and dark pages alike).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Okabe & Ito (2008): distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
DPI = 100
MAX_IMAGE_WIDTH = 960


@dataclass(frozen=True)
class Plot:
    """A PNG as a data URI, with its alt text and size in bytes."""

    uri: str
    alt: str
    size: int
    width: int
    height: int


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _new_figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, facecolor="white", layout="constrained")
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    for ax in axes:
        ax.set_facecolor("white")
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(True, color="#d0d0d0", linewidth=0.6)
        ax.set_axisbelow(True)
        ax.tick_params(labelsize=8)
    return fig, axes


def _encode(fig: Figure, alt: str) -> Plot:
    """Render ``fig`` and shrink it: an adaptive 128-colour palette, optimised PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return _shrink(Image.open(io.BytesIO(buf.getvalue())), alt)


def _shrink(img: Image.Image, alt: str, colors: int = 128) -> Plot:
    rgb = img.convert("RGB")
    out = io.BytesIO()
    rgb.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(out, "PNG", optimize=True)
    data = out.getvalue()
    return Plot(png_uri(data), alt, len(data), rgb.width, rgb.height)


def image_file(path: Path, alt: str, max_width: int = MAX_IMAGE_WIDTH) -> Plot:
    """A picture from disk, downscaled to ``max_width`` pixels and re-encoded small."""
    with Image.open(path) as im:
        img = im.convert("RGB")
    if img.width > max_width:
        img = img.resize((max_width, round(img.height * max_width / img.width)), Image.LANCZOS)
    return _shrink(img, alt, colors=256)


def _f(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


# --- training curves -----------------------------------------------------------------------


def training_curves(
    run: str, loss: Mapping[str, Sequence[tuple[float, float]]],
    quality: Mapping[str, Sequence[tuple[float, float]]],
) -> Plot:  # fmt: skip
    """Loss curves (left) and accuracy-like curves (right) of one run; x is the epoch."""
    panels = [p for p in ((loss, "loss"), (quality, "metric value")) if p[0]]
    from matplotlib.ticker import MaxNLocator

    rows = max(len(series) for series, _ in panels)
    fig, axes = _new_figure(3.4 * len(panels), 2.5 + 0.16 * rows, ncols=len(panels))
    parts = []
    for ax, (series, ylabel) in zip(axes, panels, strict=True):
        for i, (name, points) in enumerate(series.items()):
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            ax.plot(xs, ys, color=PALETTE[i % 8], marker=MARKERS[i % 8], markersize=3,
                    linewidth=1.4, label=name)  # fmt: skip
            best = max(ys) if ylabel != "loss" else min(ys)
            if len(ys) == 1:
                parts.append(f"{name} {_f(ys[0])} at epoch {xs[0]:g} (one epoch logged)")
                continue
            parts.append(
                f"{name} from {_f(ys[0])} at epoch {xs[0]:g} to {_f(ys[-1])} at epoch "
                f"{xs[-1]:g} ({'lowest' if ylabel == 'loss' else 'highest'} {_f(best)})"
            )
        ax.set_xlabel("epoch", fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.22))
    fig.suptitle(run, fontsize=10)
    return _encode(fig, f"Training curves of run {run}: " + "; ".join(parts) + ".")


# --- confusion matrix ------------------------------------------------------------------------


def confusion_matrix(title: str, classes: Sequence[str], matrix: Sequence[Sequence[int]]) -> Plot:
    """Counts of true (rows) x predicted (columns) classes, annotated, cividis colour map."""
    import numpy as np

    m = np.asarray(matrix, dtype=np.int64)  # (C, C)
    n = len(classes)
    fig, (ax,) = _new_figure(1.8 + 0.46 * n, 1.3 + 0.42 * n)
    ax.grid(False)
    ax.imshow(m, cmap="cividis", vmin=0)
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted class", fontsize=9)
    ax.set_ylabel("true class", fontsize=9)
    ax.set_title(title, fontsize=9)
    top = max(int(m.max()), 1)
    for r in range(n):
        for c in range(n):
            if m[r, c]:
                color = "black" if m[r, c] > 0.55 * top else "white"
                ax.text(c, r, str(m[r, c]), ha="center", va="center", fontsize=7, color=color)
    support = m.sum(axis=1)
    correct = ", ".join(f"{cls} {m[i, i]} of {support[i]}" for i, cls in enumerate(classes))
    off = [(int(m[r, c]), classes[r], classes[c]) for r in range(n) for c in range(n) if r != c]
    worst = sorted(off, reverse=True)[:3]
    confusions = "; ".join(f"{t} predicted as {p} {k} times" for k, t, p in worst if k)
    alt = (
        f"Confusion matrix, {title}: rows are true classes, columns predicted classes, "
        f"{int(m.sum())} images. Correct per class: {correct}."
        + (f" Most frequent confusions: {confusions}." if confusions else "")
    )
    return _encode(fig, alt)


# --- grouped bars (robustness, recommendations) ---------------------------------------------


def grouped_bars(
    title: str, groups: Sequence[str], series: Mapping[str, Sequence[float | None]],
    ylabel: str, *, digits: int = 3,
) -> Plot:  # fmt: skip
    """Vertical bars: one cluster per group, one bar per series (None: no bar)."""
    fig, (ax,) = _new_figure(max(5.0, 2.0 + 0.3 * len(groups) * len(series)), 2.8)
    width = 0.8 / max(1, len(series))
    hatches = ("", "//", "..", "xx", "\\\\", "++", "--", "oo")
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        vals = [0.0 if v is None else v for v in values]
        ax.bar(xs, vals, width * 0.95, color=PALETTE[i % 8], hatch=hatches[i % 8],
               edgecolor="white", label=name)  # fmt: skip
    ax.set_xticks(range(len(groups)), groups, rotation=20 if len(groups) > 4 else 0,
                  ha="right" if len(groups) > 4 else "center", fontsize=8)  # fmt: skip
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title(title, fontsize=9)
    if len(series) > 1:
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    parts = []
    for g, group in enumerate(groups):
        vals = [
            f"{name} {'n/a' if v[g] is None else _f(v[g], digits)}"  # type: ignore[arg-type]
            for name, v in series.items()
        ]
        parts.append(f"{group}: " + ", ".join(vals))
    return _encode(fig, f"Bar chart, {title} ({ylabel}). " + "; ".join(parts) + ".")


# --- benchmarks ------------------------------------------------------------------------------


def recall_qps(title: str, curves: Mapping[str, Sequence[tuple[float, float]]], recall: str) -> Plot:
    """QPS (log scale) against recall, one line per index configuration."""
    fig, (ax,) = _new_figure(5.0, 3.0)
    parts = []
    for i, (name, points) in enumerate(curves.items()):
        pts = sorted(points)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=PALETTE[i % 8],
                marker=MARKERS[i % 8], markersize=4, linewidth=1.4, label=name)  # fmt: skip
        parts.append(f"{name}: " + ", ".join(f"{recall} {_f(r)} at {q:,.0f} QPS" for r, q in pts))
    ax.set_yscale("log")
    ax.set_xlabel(recall, fontsize=9)
    ax.set_ylabel("queries per second (log scale)", fontsize=9)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    return _encode(fig, f"Line chart, {title}: " + "; ".join(parts) + ".")


def latency(title: str, samples: Mapping[str, Sequence[float]],
            percentiles: Mapping[str, Mapping[str, float]], unit: str = "ms") -> Plot:  # fmt: skip
    """Latency distributions: box plots of raw samples if given, else percentile bars."""
    if samples:
        import numpy as np

        fig, (ax,) = _new_figure(max(4.0, 1.2 * len(samples) + 1.5), 3.0)
        names = list(samples)
        ax.boxplot([list(samples[n]) for n in names], vert=False, showfliers=True,
                   flierprops={"markersize": 2})  # fmt: skip
        ax.set_yticks(range(1, len(names) + 1), names, fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(f"latency ({unit}, log scale)", fontsize=9)
        ax.set_title(title, fontsize=9)
        parts = []
        for n in names:
            p50, p95, p99 = np.percentile(np.asarray(samples[n], dtype=float), [50, 95, 99])
            parts.append(
                f"{n}: {len(samples[n])} requests, p50 {p50:.1f}, p95 {p95:.1f}, p99 {p99:.1f} {unit}"
            )
        return _encode(fig, f"Box plot, {title}: " + "; ".join(parts) + ".")
    keys = sorted({k for p in percentiles.values() for k in p}, key=_percentile_order)
    series = {k: [percentiles[n].get(k) for n in percentiles] for k in keys}
    return grouped_bars(title, list(percentiles), series, f"latency ({unit})", digits=1)


def _percentile_order(key: str) -> float:
    digits = "".join(ch for ch in key if ch.isdigit() or ch == ".")
    try:
        return float(digits)
    except ValueError:
        return 1e9


def describe_values(values: Mapping[str, Any]) -> str:
    """``{"a": 0.5}`` -> ``"a 0.500"`` (used in alt texts)."""
    return ", ".join(
        f"{k} {_f(v) if isinstance(v, float) else v}" for k, v in values.items() if v is not None
    )
