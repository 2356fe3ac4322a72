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

#: Okabe & Ito (2008): distinguishable with the common colour-vision deficiencies; the
#: colours with >= 3:1 contrast on white first. Lines carry markers and bars hatches and
#: dark edges, so no plot relies on colour alone or on a light colour's contrast.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#000000", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442")
EDGE = "#1b1b1b"
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
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white", bbox_inches="tight", pad_inches=0.08)
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
        size = (max_width, round(img.height * max_width / img.width))
        img = img.resize(size, Image.Resampling.LANCZOS)
    return _shrink(img, alt, colors=256)


def _log_axis(ax: Axes, which: str) -> None:
    """A log-scale axis labelled with plain numbers (1,000 rather than 10^3)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _ink(rgb: Sequence[float]) -> str:
    """Black or white text, whichever contrasts more with a cell of colour ``rgb`` (0-1)."""

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    lum = 0.2126 * linear(rgb[0]) + 0.7152 * linear(rgb[1]) + 0.0722 * linear(rgb[2])
    return "black" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "white"


def _f(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def _value(x: float | None, digits: int) -> str:
    return "n/a" if x is None else _f(x, digits)


# --- training curves -----------------------------------------------------------------------


def training_curves(
    run: str,
    loss: Mapping[str, Sequence[tuple[float, float]]],
    quality: Mapping[str, Sequence[tuple[float, float]]],
) -> Plot:
    """Loss curves (left) and accuracy-like curves (right) of one run; x is the epoch."""
    panels = [p for p in ((loss, "loss"), (quality, "metric value")) if p[0]]
    from matplotlib.ticker import MaxNLocator

    rows = max(len(series) for series, _ in panels)
    fig, axes = _new_figure(3.4 * len(panels), 2.5 + 0.16 * rows, ncols=len(panels))
    parts = []
    for ax, (series, ylabel) in zip(axes, panels, strict=True):
        for i, (name, points) in enumerate(series.items()):
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            ax.plot(
                xs,
                ys,
                color=PALETTE[i % 8],
                marker=MARKERS[i % 8],
                markersize=4,
                markeredgecolor=EDGE,
                markeredgewidth=0.5,
                linewidth=1.4,
                label=name,
            )
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
        epochs = sorted({p[0] for points in series.values() for p in points})
        if len(epochs) == 1:  # one point: one tick, not a fractional axis around it
            ax.set_xticks(epochs)
        else:
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
    import matplotlib as mpl

    cmap, top = mpl.colormaps["cividis"], max(int(m.max()), 1)
    ax.imshow(m, cmap=cmap, vmin=0, vmax=top)
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted class", fontsize=9)
    ax.set_ylabel("true class", fontsize=9)
    ax.set_title(title, fontsize=9)
    for r in range(n):
        for c in range(n):
            if m[r, c]:
                color = _ink(cmap(m[r, c] / top)[:3])
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
    title: str,
    groups: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    ylabel: str,
    *,
    digits: int = 3,
) -> Plot:
    """Vertical bars: one cluster per group, one bar per series (None: no bar)."""
    fig, (ax,) = _new_figure(max(5.0, 2.0 + 0.3 * len(groups) * len(series)), 2.8)
    width = 0.8 / max(1, len(series))
    hatches = ("", "//", "..", "xx", "\\\\", "++", "--", "oo")
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        vals = [0.0 if v is None else v for v in values]
        ax.bar(
            xs,
            vals,
            width * 0.95,
            color=PALETTE[i % 8],
            hatch=hatches[i % 8],
            edgecolor=EDGE,
            linewidth=0.6,
            label=name,
        )
    ax.set_xticks(
        range(len(groups)),
        groups,
        rotation=20 if len(groups) > 4 else 0,
        ha="right" if len(groups) > 4 else "center",
        fontsize=8,
    )
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title(title, fontsize=9)
    if len(series) > 1:
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    parts = []
    for g, group in enumerate(groups):
        said = [f"{name} {_value(v[g], digits)}" for name, v in series.items()]
        parts.append(f"{group}: " + ", ".join(said))
    return _encode(fig, f"Bar chart, {title} ({ylabel}). " + "; ".join(parts) + ".")


# --- benchmarks ------------------------------------------------------------------------------


def recall_qps(
    title: str, curves: Mapping[str, Sequence[tuple[float, float]]], recall: str
) -> Plot:
    """QPS (log scale) against recall, one line per index configuration."""
    fig, (ax,) = _new_figure(5.0, 3.0)
    parts = []
    for i, (name, points) in enumerate(curves.items()):
        pts = sorted(points)
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            color=PALETTE[i % 8],
            marker=MARKERS[i % 8],
            markersize=5,
            markeredgecolor=EDGE,
            markeredgewidth=0.5,
            linewidth=1.4,
            label=name,
        )
        parts.append(f"{name}: " + ", ".join(f"{recall} {_f(r)} at {q:,.0f} QPS" for r, q in pts))
    _log_axis(ax, "y")
    ax.set_xlabel(recall, fontsize=9)
    ax.set_ylabel("queries per second (log scale)", fontsize=9)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    return _encode(fig, f"Line chart, {title}: " + "; ".join(parts) + ".")


def latency(
    title: str,
    samples: Mapping[str, Sequence[float]],
    percentiles: Mapping[str, Mapping[str, float]],
    unit: str = "ms",
) -> Plot:
    """Latency distributions: box plots of raw samples if given, else percentile bars."""
    if samples:
        import numpy as np

        fig, (ax,) = _new_figure(5.0, 1.2 + 0.5 * len(samples))
        names = list(samples)
        data = [list(samples[n]) for n in names]
        style: dict[str, Any] = {
            "flierprops": {"markersize": 2},
            "medianprops": {"color": PALETTE[1], "lw": 2},
        }
        try:
            ax.boxplot(data, orientation="horizontal", **style)
        except TypeError:  # matplotlib < 3.10
            ax.boxplot(data, vert=False, **style)
        ax.set_yticks(range(1, len(names) + 1), names, fontsize=8)
        values = [x for n in names for x in samples[n] if x > 0]
        log = bool(values) and max(values) > 20 * min(values)
        if log:
            _log_axis(ax, "x")
        ax.set_xlabel(f"latency ({unit}{', log scale' if log else ''})", fontsize=9)
        ax.set_title(title, fontsize=9)
        parts = []
        for n in names:
            p50, p95, p99 = np.percentile(np.asarray(samples[n], dtype=float), [50, 95, 99])
            stats = f"p50 {p50:.1f}, p95 {p95:.1f}, p99 {p99:.1f} {unit}"
            parts.append(f"{n}: {len(samples[n])} requests, {stats}")
        return _encode(fig, f"Box plot, {title}: " + "; ".join(parts) + ".")
    keys = sorted({k for p in percentiles.values() for k in p}, key=percentile_order)
    series = {k: [percentiles[n].get(k) for n in percentiles] for k in keys}
    return grouped_bars(title, list(percentiles), series, f"latency ({unit})", digits=1)


def percentile_order(key: str) -> float:
    digits = "".join(ch for ch in key if ch.isdigit() or ch == ".")
    try:
        return float(digits)
    except ValueError:
        return 1e9
