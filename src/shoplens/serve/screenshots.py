"""``python -m shoplens.serve.screenshots OUT_DIR``: screenshots of the web UI.

Starts the service in a background thread, on ``--catalog`` or on a small sample catalogue
that it draws and indexes in a temporary ``SHOPLENS_HOME``, opens Debian's Chromium through
Playwright and writes desktop, dark-mode and 320 px wide screenshots of the home, results,
product, customer and generate pages as palette PNGs under :data:`MAX_PNG_BYTES`. The
generate page shows generated images when ``--generator`` (or the service's default model)
can be loaded, made with a temporary write key; else it shows how to set generation up.

The server and browser helpers (:func:`serve_in_thread`, :func:`launch_chromium`) are shared
with the browser tests.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw

from shoplens.errors import NotReadyError, ShoplensError

if TYPE_CHECKING:
    from fastapi import FastAPI
    from playwright.sync_api import Browser, Page, Playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAX_PNG_BYTES = 150_000
SAMPLE_CATALOG = "ui-sample"
GENERATE_TIMEOUT_MS = 300_000  # generating the page's images on a busy CPU


@dataclass(frozen=True)
class Mode:
    """A browser setup to capture a page in."""

    width: int
    height: int
    dark: bool = False


MODES = {
    "desktop": Mode(1280, 800),
    "dark": Mode(1280, 800, dark=True),
    "320": Mode(320, 640),
}


# ---- server and browser (also used by tests/e2e) -------------------------------------------
@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1") -> Iterator[str]:
    """Run ``app`` with uvicorn in a daemon thread on a free port; yield its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="shoplens-ui", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise NotReadyError(f"the web server on port {port} did not start")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def chromium_path() -> Path:
    """Debian's Chromium (``$SHOPLENS_CHROMIUM`` overrides the path)."""
    return Path(os.environ.get("SHOPLENS_CHROMIUM", CHROMIUM))


def launch_chromium(playwright: Playwright) -> Browser:
    """Headless Chromium from the system (Playwright cannot download browsers here)."""
    path = chromium_path()
    if not path.is_file():
        raise NotReadyError(
            f"no Chromium at {path}: install it with 'make browser' "
            "(apt-get install chromium) or set SHOPLENS_CHROMIUM"
        )
    return playwright.chromium.launch(executable_path=str(path), headless=True, args=CHROMIUM_ARGS)


# ---- a sample catalogue --------------------------------------------------------------------
COLOURS = {
    "red": (200, 40, 40),
    "blue": (40, 80, 200),
    "green": (40, 140, 70),
    "yellow": (230, 185, 30),
    "black": (45, 45, 50),
}
KINDS = {  # category: (title noun, material)
    "T-shirts": ("T-shirt", "cotton"),
    "Tote bags": ("tote bag", "canvas"),
    "Sun hats": ("sun hat", "straw"),
    "Mugs": ("mug", "ceramic"),
}


def draw_product(category: str, rgb: tuple[int, int, int], size: int = 96) -> Image.Image:
    """A flat product drawing: a T-shirt, tote bag, sun hat or mug in ``rgb``."""
    img = Image.new("RGB", (size, size), (250, 250, 250))
    d = ImageDraw.Draw(img)
    s = size / 96
    if category == "T-shirts":
        pts = [(30, 14), (40, 20), (56, 20), (66, 14), (88, 30), (78, 44), (70, 38), (70, 84),
               (26, 84), (26, 38), (18, 44), (8, 30)]  # fmt: skip
        d.polygon([(x * s, y * s) for x, y in pts], fill=rgb)
    elif category == "Tote bags":
        d.arc((30 * s, 8 * s, 66 * s, 48 * s), 180, 360, fill=rgb, width=int(6 * s))
        d.rectangle((18 * s, 30 * s, 78 * s, 86 * s), fill=rgb)
    elif category == "Sun hats":
        d.ellipse((6 * s, 50 * s, 90 * s, 74 * s), fill=rgb)
        d.chord((28 * s, 22 * s, 68 * s, 78 * s), 180, 360, fill=rgb)
        d.rectangle((28 * s, 48 * s, 68 * s, 54 * s), fill=(250, 250, 250))
    else:
        d.ellipse((60 * s, 34 * s, 86 * s, 66 * s), outline=rgb, width=int(6 * s))
        d.rectangle((20 * s, 24 * s, 68 * s, 84 * s), fill=rgb)
    return img


def build_sample_catalog(name: str = SAMPLE_CATALOG) -> str:
    """Draw, ingest and index 20 products (4 categories x 5 colours) into catalogue ``name``."""
    from shoplens.catalog.ingest import ingest_manifest
    from shoplens.catalog.store import Catalog
    from shoplens.index.build import build_indexes

    with tempfile.TemporaryDirectory(prefix="shoplens-sample-") as tmp:
        root = Path(tmp)
        lines = ["sku,title,category,image,colour,material"]
        for c, (category, (noun, material)) in enumerate(KINDS.items()):
            for i, (colour, rgb) in enumerate(COLOURS.items()):
                sku = f"S-{c}{i}"
                draw_product(category, rgb).save(root / f"{sku}.png")
                lines.append(
                    f"{sku},{colour.title()} {noun},{category},{sku}.png,{colour},{material}"
                )
        (root / "catalog.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        ingest_manifest(root / "catalog.csv", name)
    with Catalog.open(name) as catalog:
        build_indexes(catalog)
        _simulated_customers(catalog)
    return name


def _simulated_customers(catalog: Any, n: int = 40) -> None:
    """SIMULATED customers over the sample catalogue and a fitted recommender."""
    from shoplens.personalize.events import EventStore
    from shoplens.personalize.items import item_space
    from shoplens.personalize.service import fit_recommendations
    from shoplens.personalize.simulate import preset_config, simulate

    sim = simulate(item_space(catalog, text=False), preset_config("balanced", n_customers=n))
    with EventStore.open(catalog) as store:
        store.add_simulated(sim.events)
    fit_recommendations(catalog)


def _a_customer(catalog: str) -> str | None:
    """A customer with events when the catalogue has a recommender build, else None."""
    from shoplens.catalog.store import Catalog
    from shoplens.personalize.events import EventStore
    from shoplens.personalize.service import recs_root

    with Catalog.open(catalog) as cat:
        if not (recs_root(cat) / "current").exists():
            return None
        with EventStore.open(cat) as store:
            ids = store.customer_ids(limit=1)
    return ids[0] if ids else None


@contextmanager
def temporary_home() -> Iterator[Path]:
    """Point ``SHOPLENS_HOME`` at a temporary folder for the duration."""
    old = os.environ.get("SHOPLENS_HOME")
    with tempfile.TemporaryDirectory(prefix="shoplens-home-") as tmp:
        os.environ["SHOPLENS_HOME"] = tmp
        try:
            yield Path(tmp)
        finally:
            if old is None:
                os.environ.pop("SHOPLENS_HOME", None)
            else:
                os.environ["SHOPLENS_HOME"] = old


# ---- screenshots ---------------------------------------------------------------------------
def load_all_images(page: Page) -> None:
    """Load lazy images too, so full-page screenshots show every product."""
    page.evaluate(
        """async () => {
          for (const img of document.images) img.loading = "eager";
          await Promise.all([...document.images].map((img) => img.complete ? null :
            new Promise((done) => { img.onload = img.onerror = done; })));
        }"""
    )


def small_png(data: bytes, limit: int = MAX_PNG_BYTES) -> bytes:
    """Re-encode a screenshot as a palette PNG, with fewer colours until under ``limit``."""
    rgb = Image.open(io.BytesIO(data)).convert("RGB")
    out = b""
    for colours in (256, 128, 64, 32):
        buf = io.BytesIO()
        rgb.quantize(colours, method=Image.Quantize.FASTOCTREE).save(buf, "PNG", optimize=True)
        out = buf.getvalue()
        if len(out) <= limit:
            break
    return out


def capture(
    browser: Browser,
    base_url: str,
    pages: dict[str, str],
    out_dir: Path,
    forms: dict[str, Callable[[Page], None]] | None = None,
) -> list[Path]:
    """Screenshot every page in every :data:`MODES` (``forms[name]`` fills and submits
    the page's form first); return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for mode_name, mode in MODES.items():
        context = browser.new_context(
            viewport={"width": mode.width, "height": mode.height},
            color_scheme="dark" if mode.dark else "light",
            reduced_motion="reduce",
        )
        page = context.new_page()
        for page_name, path in pages.items():
            page.goto(base_url + path, wait_until="load")
            if forms and page_name in forms:
                forms[page_name](page)
            load_all_images(page)
            path_out = out_dir / f"{page_name}-{mode_name}.png"
            path_out.write_bytes(small_png(page.screenshot(full_page=True)))
            written.append(path_out)
        context.close()
    return written


@contextmanager
def generate_form(app: FastAPI) -> Iterator[dict[str, Callable[[Page], None]]]:
    """When ``app`` can generate: a filler of the /generate form with a temporary write key
    (revoked afterwards). Else nothing: the page shows how to set generation up."""
    from shoplens.serve.generate_routes import NoGeneratorError

    try:
        category = app.state.generate.generator().categories[0]
    except NoGeneratorError:
        yield {}
        return
    record, key = app.state.keys.create("write", "screenshots (temporary)")

    def fill(page: Page) -> None:
        page.select_option("#category", category)
        page.fill("#api_key", key)
        with page.expect_navigation(timeout=GENERATE_TIMEOUT_MS):
            page.click("form[action='/generate'] button[type=submit]", no_wait_after=True)

    try:
        yield {"generate": fill}
    finally:
        app.state.keys.revoke(record.id)


def take_screenshots(
    catalog: str, out_dir: Path, query: str, generator: str | None = None
) -> list[Path]:
    """Serve ``catalog`` and capture the home, results, product, customer and generate
    pages (generated images when ``generator``, a model spec, can be loaded)."""
    from urllib.parse import quote, urlencode

    from playwright.sync_api import sync_playwright

    from shoplens.serve import ServiceSettings, create_app

    settings = ServiceSettings(catalog=catalog, load_in_background=False, generator=generator)
    app = create_app(settings)
    with serve_in_thread(app) as url, sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            results = "/search?" + urlencode({"q": query})
            probe = browser.new_page()
            probe.goto(url + results)
            product = probe.locator(".card-link").first.get_attribute("href")
            probe.close()
            if not product:
                raise NotReadyError(f"no results for {query!r} in catalogue {catalog!r}")
            pages = {"home": "/", "results": results, "product": product}
            customer = _a_customer(catalog)
            if customer:
                pages["customer"] = "/customers/" + quote(customer, safe="")
            pages["generate"] = "/generate"
            with generate_form(app) as forms:
                return capture(browser, url, pages, out_dir, forms)
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; exit 0, or 2 with a one-line error."""
    parser = argparse.ArgumentParser(
        prog="python -m shoplens.serve.screenshots", description="Screenshots of the web UI."
    )
    parser.add_argument("out_dir", type=Path, help="folder for the PNG files")
    parser.add_argument(
        "--catalog", help="catalogue in SHOPLENS_HOME (default: build a small sample one)"
    )
    parser.add_argument("--query", help="text search to show (default: the first category)")
    parser.add_argument(
        "--generator", help="diffusion model spec for the generate page (default: the service's)"
    )
    args = parser.parse_args(argv)
    try:
        import playwright  # noqa: F401
    except ImportError:
        print("error: screenshots need Playwright: pip install 'shoplens[dev]'", file=sys.stderr)
        return 2
    try:
        if args.catalog:
            paths = _run(args.catalog, args.out_dir, args.query, args.generator)
        else:
            with temporary_home():
                sample = build_sample_catalog()
                paths = _run(sample, args.out_dir, args.query or "blue", args.generator)
    except ShoplensError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    for p in paths:
        print(f"{p} ({p.stat().st_size / 1000:.0f} kB)")
    return 0


def _run(
    catalog: str, out_dir: Path, query: str | None, generator: str | None = None
) -> list[Path]:
    from shoplens.catalog.store import Catalog

    with Catalog.open(catalog) as cat:  # a clear error for an unknown catalogue
        query = query or next(iter(cat.categories()), "")
    return take_screenshots(catalog, out_dir, query, generator)


if __name__ == "__main__":
    sys.exit(main())
