"""Browser fixtures: the web UI served by uvicorn in a thread, headless Chromium, axe-core.

Browser tests skip (with the reason) only when Debian's Chromium or axe-core is missing;
``make browser`` installs both, and CI does.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from shoplens.serve import ServiceSettings, create_app
from shoplens.serve.screenshots import chromium_path, launch_chromium, serve_in_thread

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
UPLOAD_LIMIT = 200_000


@pytest.fixture(scope="session")
def browser_tools() -> None:
    """Skip browser tests, saying why, when Chromium, axe-core or Playwright is missing."""
    if not chromium_path().is_file():
        pytest.skip(f"no Chromium at {chromium_path()} (install it with 'make browser')")
    if not AXE.is_file():
        pytest.skip(f"no axe-core at {AXE} (run 'npm install' in the repository root)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("Playwright is not installed (pip install -e '.[dev]')")


@pytest.fixture(scope="session")
def recs_catalog(session_home: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny catalogue like ``built_catalog`` plus customer events (8 real customers, 4
    simulated ones whose events are stored as simulated) and a fitted recommender."""
    from shoplens.catalog.ingest import ingest_manifest
    from shoplens.catalog.store import Catalog
    from shoplens.index.build import build_indexes
    from shoplens.personalize.events import EventStore
    from shoplens.personalize.service import fit_recommendations

    from ..conftest import PER_CATEGORY, write_catalog
    from ..helpers import outfit_events

    name = "tiny-shop"
    ingest_manifest(write_catalog(tmp_path_factory.mktemp("tiny-shop-src")), name)
    with Catalog.open(name) as cat:
        build_indexes(cat, "test-tiny", text_encoder="test-tiny-text")
        with EventStore.open(cat) as store:
            store.add(outfit_events(8, PER_CATEGORY))
            store.add(outfit_events(4, PER_CATEGORY, prefix="sim-c"), simulated=True)
        fit_recommendations(cat)
    return name


@pytest.fixture(scope="session")
def ui_url(browser_tools: None, recs_catalog: str) -> Iterator[str]:
    """Base URL of the service (API + web UI) over the tiny test catalogue."""
    settings = ServiceSettings(
        catalog=recs_catalog, load_in_background=False, max_upload_bytes=UPLOAD_LIMIT
    )
    with serve_in_thread(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="session")
def browser(browser_tools: None) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = launch_chromium(pw)
        yield chromium
        chromium.close()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Factory of pages in fresh contexts (desktop size unless told); all closed after."""
    contexts = []

    def make(**options: Any) -> Page:
        options.setdefault("viewport", {"width": 1280, "height": 800})
        context = browser.new_context(**options)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        return page

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page: Callable[..., Page]) -> Page:
    return new_page()


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """Run axe-core on the page with the WCAG 2.0-2.2 A/AA rules; return its violations."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        # evaluated, not a <script> tag: the pages' CSP (rightly) blocks inline scripts
        page.evaluate(AXE.read_text(encoding="utf-8"))
    result = page.evaluate(
        "async (tags) => await axe.run(document, {runOnly: {type: 'tag', values: tags}})",
        AXE_TAGS,
    )
    return list(result["violations"])


def format_violations(violations: list[dict[str, Any]]) -> str:
    """One line per rule, then one per failing element with axe's explanation."""
    lines = []
    for v in violations:
        lines.append(f"- {v['id']} ({v['impact']}): {v['help']} <{v['helpUrl']}>")
        for node in v["nodes"][:5]:
            why = " ".join(str(node.get("failureSummary", "")).split())
            lines.append(f"    at {' '.join(map(str, node['target']))}: {why}")
    return "\n".join(lines)


def assert_accessible(page: Page, state: str) -> None:
    """No axe-core violation of WCAG 2.2 A/AA on the page as it is now."""
    violations = axe_violations(page)
    if violations:
        pytest.fail(f"axe found problems on {state}:\n{format_violations(violations)}")
