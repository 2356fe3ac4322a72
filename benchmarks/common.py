"""Helpers shared by the benchmark scripts: machine line, doc sections, plots, raw JSON.

Every benchmark owns one ``## ...`` section of docs/BENCHMARKS.md and replaces only that
section, so the scripts can run in any order (or at the same time) without losing the
others' results. Files are written atomically (temporary file + rename) under a lock on
their folder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
DOC = DOCS / "BENCHMARKS.md"
PLOT_MAX_BYTES = 100_000  # plots in docs/img stay small


def load_average() -> float:
    """One-minute load average (work of other processes competing for the cores)."""
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this platform
        return float("nan")


def machine() -> dict[str, Any]:
    """CPU, cores, Python, torch and the git commit (see ``shoplens.eval.report``)."""
    from shoplens.eval.report import machine_info

    return machine_info()


def measured_line(
    script: str,
    setup: str,
    versions: str,
    load: float,
    m: dict[str, Any] | None = None,
    date: str | None = None,
) -> str:
    """The sentence opening every section: date, command, machine, load, versions, commit.

    Args:
        script: File name of the benchmark in benchmarks/, e.g. ``"bench_ann.py"``.
        setup: Thread settings etc., shown inside the machine brackets.
        versions: Library versions, e.g. ``"torch 2.14.1"``.
        load: Load average from other work while measuring.
        m: ``machine()``, computed when not given.
        date: ISO date of the measurement, default today.
    """
    m = m or machine()
    return (
        f"Measured {date or dt.date.today().isoformat()} with `python benchmarks/{script}` on "
        f"{m['cpu']} ({m['nproc']} cores available, {setup}, load average {load:.1f} from "
        f"other work), {versions}, Python {m['python']}, commit {m['commit']}."
    )


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (read-modify-write of a file in it)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock, still atomic
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def replace_section(text: str, section: str) -> str:
    """``text`` with the ``## `` section titled like ``section``'s first line replaced.

    The section is appended when the document has no such heading yet; the other
    sections keep their place and content.
    """
    heading = section.splitlines()[0].rstrip()
    if not heading.startswith("## "):
        raise ValueError(f"a section starts with '## ', got {heading!r}")
    section = section.rstrip("\n") + "\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == heading), None)
    if start is None:
        return text.rstrip("\n") + "\n\n" + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    rest = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + rest if rest else "")


def write_section(doc: Path, section: str) -> None:
    """Replace (or append) ``section`` in ``doc``, leaving the other sections as they are."""
    doc.parent.mkdir(parents=True, exist_ok=True)
    with _locked(doc.parent):
        text = doc.read_text(encoding="utf-8") if doc.is_file() else "# Benchmarks\n"
        _atomic_write(doc, replace_section(text, section).encode("utf-8"))


def rerender(
    docs: Path,
    name: str,
    render: Callable[[dict[str, Any]], str],
    *,
    write: bool = True,
    say: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """``--render-only``: rebuild a benchmark's section of BENCHMARKS.md from its saved raw
    numbers ``docs/bench/NAME.json`` (print it, and write it unless ``write`` is False)."""
    saved: dict[str, Any] = json.loads((docs / "bench" / f"{name}.json").read_text())
    section = render(saved)
    say(section)
    if write:
        write_section(docs / "BENCHMARKS.md", section)
    return saved


def write_json(path: Path, data: Any) -> None:
    """Raw results next to the docs (atomic, indented, stable key order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def save_plot(fig: Any, name: str, img_dir: Path = DOCS / "img") -> Path:
    """Save a matplotlib figure as ``img_dir/bench-NAME.png`` (small PNG) and close it."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    data = _quantize_png(buf.getvalue())
    if len(data) > PLOT_MAX_BYTES:
        warnings.warn(f"plot bench-{name}.png is {len(data):,} bytes", stacklevel=2)
    path = img_dir / f"bench-{name}.png"
    img_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, data)
    return path


def _quantize_png(png: bytes) -> bytes:
    """The same plot as a 64-colour palette PNG (a fraction of the size, no visible loss)."""
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=64)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue() if out.tell() < len(png) else png


def new_figure(width: float = 6.4, height: float = 4.0) -> tuple[Any, Any]:
    """A matplotlib figure and axes drawn off-screen (Agg), for :func:`save_plot`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


# ---- a service under test ----
def free_port() -> int:
    """A loopback TCP port free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(
    proc: subprocess.Popen[bytes],
    base: str,
    timeout: float,
    output: Callable[[], str],
    poll_s: float = 0.5,
) -> None:
    """Wait until ``base``/readyz answers 200; RuntimeError (with the tail of
    ``output()``) when the process exits first, or after ``timeout`` seconds."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited: {output()[-2000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the service did not become ready")
        time.sleep(poll_s)
