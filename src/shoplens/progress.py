"""Progress for long steps: rich bars on a terminal, plain lines without one, or silent.

The library is silent by default; the CLI picks a mode with :func:`set_mode`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

Mode = Literal["auto", "rich", "plain", "off"]
_mode: Mode = "off"


def set_mode(mode: Mode) -> None:
    """``auto`` = rich on a terminal, plain lines otherwise (and always when ``CI`` is set)."""
    global _mode
    _mode = mode


def _resolved() -> Mode:
    if _mode == "auto":
        ci = os.environ.get("CI", "").lower() not in ("", "0", "false")
        return "rich" if sys.stderr.isatty() and not ci else "plain"
    return _mode


@contextmanager
def task(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """Context manager yielding ``advance(n)`` for a step of ``total`` units."""
    mode = _resolved()

    def noop(n: int = 1) -> None:
        return None

    if mode == "off":
        yield noop
        return
    if mode == "rich":
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        ) as bar:
            tid = bar.add_task(description, total=total)

            def advance_bar(n: int = 1) -> None:
                bar.advance(tid, n)

            yield advance_bar
        return
    # plain: a line at start, every 10 % (or 15 s), and at the end
    start = last = time.monotonic()
    done = 0
    next_pct = 10
    print(
        f"{description}: started" + (f" ({total} items)" if total else ""),
        file=sys.stderr,
        flush=True,
    )

    def advance(n: int = 1) -> None:
        nonlocal done, last, next_pct
        done += n
        now = time.monotonic()
        pct = 100 * done // total if total else 0
        if (total and pct >= next_pct) or now - last > 15:
            last = now
            while total and next_pct <= pct:
                next_pct += 10
            shown = f"{done}/{total} ({pct}%)" if total else str(done)
            print(f"{description}: {shown} {now - start:.0f}s", file=sys.stderr, flush=True)

    yield advance
    print(f"{description}: done in {time.monotonic() - start:.1f}s", file=sys.stderr, flush=True)
