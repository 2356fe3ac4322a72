"""The web UI in headless Chromium: axe-core (WCAG 2.2 A/AA) on every page and state in
light mode, dark mode and at 320 px, a keyboard-only journey, reflow, 200 % text, photo
upload, and the forms with JavaScript turned off."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("playwright", reason="Playwright is not installed (pip install -e '.[dev]')")
from playwright.sync_api import FilePayload, expect

from shoplens.serve import ServiceSettings, create_app
from shoplens.serve.keys import KeyStore
from shoplens.serve.screenshots import serve_in_thread

from ..helpers import png_bytes, tiny_generator
from .conftest import UPLOAD_LIMIT, assert_accessible

if TYPE_CHECKING:
    from playwright.sync_api import Page

STATES = {
    "home": "/",
    "results": "/search?q=yellow+stripes",
    "empty results": "/search?q=red&category=Red+circle&attr=color%3Dblue",
    "error 400 (empty query)": "/search?q=",
    "error 404 (unknown sku)": "/products/NOPE",
    "product": "/products/SKU-001",
    "customers": "/customers",
    "customer (simulated)": "/customers/sim-c1",
    "customer (real)": "/customers/c2",
    "customer (unknown: popular fallback)": "/customers/nobody",
    "error 400 (customer id too long)": "/customers?id=" + "x" * 300,
    "generate (no model yet)": "/generate",
}
MODES: dict[str, dict[str, Any]] = {
    "light": {"size": {"width": 1280, "height": 800}, "scheme": "light"},
    "dark": {"size": {"width": 1280, "height": 800}, "scheme": "dark"},
    "320 px": {"size": {"width": 320, "height": 640}, "scheme": "light"},
}
FOCUS_INFO = """() => {
  const el = document.activeElement;
  const box = el.getBoundingClientRect();
  const style = getComputedStyle(el);
  return {
    id: el.id, cls: el.className, href: el.getAttribute("href"),
    similar: !!el.closest("section[aria-labelledby=similar-h]"),
    inViewport: box.width > 0 && box.height > 0 && box.top >= 0 && box.left >= 0
      && box.bottom <= innerHeight && box.right <= innerWidth,
    ring: style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2,
  };
}"""


def photo(name: str, data: bytes) -> FilePayload:
    """A PNG file for set_input_files."""
    return {"name": name, "mimeType": "image/png", "buffer": data}


def check_every_mode(page: Page, state: str) -> None:
    """axe in light, dark and 320 px; no horizontal scrolling at 320 px (reflow)."""
    for mode, setup in MODES.items():
        page.set_viewport_size(setup["size"])
        page.emulate_media(color_scheme=setup["scheme"])
        assert_accessible(page, f"{state} ({mode})")
        if setup["size"]["width"] == 320:
            width = page.evaluate("document.scrollingElement.scrollWidth")
            assert width <= 320, f"{state} scrolls sideways at 320 px ({width} px wide)"


@pytest.mark.parametrize("state", list(STATES))
def test_pages_pass_axe_in_every_mode(page: Page, ui_url: str, state: str) -> None:
    response = page.goto(ui_url + STATES[state])
    assert response is not None
    expected = 400 if "400" in state else 404 if "404" in state else 200
    assert response.status == expected
    check_every_mode(page, state)


def tab_until(page: Page, wanted: Callable[[dict[str, Any]], bool], limit: int = 30) -> dict:
    """Press Tab until the focused element is ``wanted``; check its focus is visible."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        info: dict[str, Any] = page.evaluate(FOCUS_INFO)
        if wanted(info):
            if not info["inViewport"]:  # smooth scrolling may still be bringing it in
                # a function, not an expression string: the CSP forbids eval() of strings
                page.wait_for_function(f"() => ({FOCUS_INFO})().inViewport", timeout=3000)
                info = page.evaluate(FOCUS_INFO)
            assert info["inViewport"], f"focused element is off screen: {info}"
            assert info["ring"], f"focused element has no visible focus ring: {info}"
            return info
    raise AssertionError(f"Tab never reached the element ({limit} presses)")


def test_keyboard_only_journey(page: Page, ui_url: str) -> None:
    page.goto(ui_url + "/")
    skip = tab_until(page, lambda f: True, limit=1)
    assert skip["cls"] == "skip-link"
    tab_until(page, lambda f: f["id"] == "q")
    page.keyboard.type("yellow stripes")
    page.keyboard.press("Enter")
    page.wait_for_url("**/search?q=yellow+stripes&category=")
    expect(page.locator("[role=status]")).to_contain_text("products match 'yellow stripes'")
    result = tab_until(page, lambda f: f["cls"] == "card-link")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**{result['href']}")
    assert page.locator("h1").inner_text()
    similar = tab_until(page, lambda f: f["cls"] == "card-link" and f["similar"])
    assert similar["href"].startswith("/products/") and similar["href"] != result["href"]


@pytest.mark.parametrize(
    "path", ["/", "/search?q=yellow+stripes", "/products/SKU-001", "/customers/sim-c1"]
)
def test_text_at_200_percent_keeps_everything(page: Page, ui_url: str, path: str) -> None:
    page.goto(ui_url + path)
    before = page.evaluate("parseFloat(getComputedStyle(document.querySelector('h1')).fontSize)")
    page.evaluate("document.documentElement.style.fontSize = '200%'")
    report = page.evaluate(
        """() => {
          const root = document.scrollingElement;
          const clipped = [...document.querySelectorAll("body *")].filter((el) => {
            const s = getComputedStyle(el);
            const hides = [s.overflowX, s.overflowY].some((o) => o === "hidden" || o === "clip");
            return hides && !el.closest(".visually-hidden, .skip-link") &&
              (el.scrollWidth > el.clientWidth + 1 || el.scrollHeight > el.clientHeight + 1);
          }).map((el) => el.tagName + "." + el.className);
          return {h1: parseFloat(getComputedStyle(document.querySelector("h1")).fontSize),
                  overflow: root.scrollWidth - root.clientWidth, clipped};
        }"""
    )
    assert report["h1"] >= 2 * before - 0.5, "text did not grow (px font sizes?)"
    assert report["overflow"] <= 0 and report["clipped"] == [], report


def test_photo_upload_in_the_browser(page: Page, ui_url: str) -> None:
    page.goto(ui_url + "/")
    page.eval_on_selector(  # drag-and-drop (an extra) fills the real file input
        "[data-dropzone]",
        """(zone) => {
          const dt = new DataTransfer();
          dt.items.add(new File(["x"], "dropped.png", {type: "image/png"}));
          zone.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
        }""",
    )
    assert page.eval_on_selector("#image", "el => el.files[0].name") == "dropped.png"
    assert page.locator("#image-status").inner_text() == "Chosen: dropped.png"
    page.set_input_files("#image", files=[photo("q.png", png_bytes())])
    assert page.locator("#image-status").inner_text() == "Chosen: q.png"
    page.get_by_role("button", name="Search with this photo").click()
    page.wait_for_url("**/search")
    assert page.title() == "Results for your photo - shoplens"
    expect(page.locator("[role=status]")).to_contain_text("match your photo")
    assert page.locator(".card-link").first.get_attribute("href") == "/products/SKU-201"


def test_too_large_photo_is_stopped_early_and_by_the_server(page: Page, ui_url: str) -> None:
    page.goto(ui_url + "/")
    page.set_input_files("#image", files=[photo("big.png", b"\x89PNG" + b"0" * UPLOAD_LIMIT)])
    error = page.locator("#image-error")
    assert "over the limit of 200 kB" in error.inner_text()
    assert error.get_attribute("role") == "alert"
    assert page.locator("#image").get_attribute("aria-invalid") == "true"
    page.get_by_role("button", name="Search with this photo").click()
    assert page.url == ui_url + "/"  # the script kept the upload from being sent
    # without the early check (an old browser, say) the server answers 413 with the form
    page.eval_on_selector("#image", "el => el.removeAttribute('data-max-bytes')")
    with page.expect_navigation():
        page.get_by_role("button", name="Search with this photo").click()
    assert page.title().startswith("Error:")
    assert "over the limit of 200 kB" in page.locator("#image-error").inner_text()
    check_every_mode(page, "error 413 (photo too large)")


def test_forms_work_without_javascript(new_page: Callable[..., Page], ui_url: str) -> None:
    page = new_page(java_script_enabled=False)
    page.goto(ui_url + "/")
    page.fill("#q", "blue square")
    page.select_option("#category", "Blue square")
    page.press("#q", "Enter")
    page.wait_for_url("**/search?q=blue+square&category=Blue+square")
    categories = page.locator(".card-meta").all_inner_texts()
    assert categories and set(categories) == {"Blue square"}
    page.locator("summary").click()  # opens the <details> "Search by photo"
    page.set_input_files("#image", files=[photo("q.png", png_bytes())])
    page.get_by_role("button", name="Search with this photo").click()
    page.wait_for_url("**/search")
    assert page.locator(".card-link").first.get_attribute("href") == "/products/SKU-201"


def test_reduced_motion_turns_transitions_off(page: Page, ui_url: str) -> None:
    page.goto(ui_url + "/search?q=red")
    duration = "getComputedStyle(document.querySelector('.card')).transitionDuration"
    page.emulate_media(reduced_motion="no-preference")
    assert page.evaluate(duration) != "0s"
    page.emulate_media(reduced_motion="reduce")
    assert page.evaluate(duration) == "0s"


def test_customer_pages_say_what_is_simulated(page: Page, ui_url: str) -> None:
    page.goto(ui_url + "/customers")
    expect(page.locator(".notice")).to_contain_text("Simulated customers")
    page.get_by_label("Customer id").fill("sim-c1")
    page.get_by_role("button", name="Show recommendations").click()
    page.wait_for_url("**/customers/sim-c1")
    expect(page.locator(".notice")).to_contain_text("Simulated customer")
    expect(page.locator("[role=status]")).to_contain_text("picked from")
    assert page.locator("section[aria-labelledby=recs-h] .card").count() > 0
    page.goto(ui_url + "/customers/c2")
    assert page.locator(".notice").count() == 0  # real events: no simulated label
    page.goto(ui_url + "/products/SKU-000")
    look = page.locator("section[aria-labelledby=look-h]")
    expect(look.locator("h3").first).to_have_text("Blue square")  # learned from outfits


@pytest.fixture(scope="module")
def generate_url(
    browser_tools: None, recs_catalog: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The service with a diffusion-test-tiny generator trained for a few steps."""
    model = tiny_generator(tmp_path_factory.mktemp("generator"))
    settings = ServiceSettings(catalog=recs_catalog, load_in_background=False, generator=str(model))
    with serve_in_thread(create_app(settings)) as url:
        yield url


def test_generate_page_form_errors_and_results(page: Page, generate_url: str) -> None:
    store = KeyStore()
    key = store.create("write", "browser test")[1]
    store.close()
    page.goto(generate_url + "/generate")
    check_every_mode(page, "generate form")
    page.set_viewport_size(MODES["light"]["size"])
    page.get_by_label("What should the images show? (optional)").fill("red circle")
    page.get_by_label("Number of images").fill("99")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Generate images").click()
    page.wait_for_url("**/generate")
    assert page.title() == "Error: Generate product images - shoplens"
    assert page.evaluate("document.activeElement.id") == "n"  # focus on the first error
    expect(page.locator("#n-error")).to_contain_text("from 1 to 16")
    assert page.input_value("#prompt") == "red circle" and page.input_value("#api_key") == key
    check_every_mode(page, "generate error 400")
    page.set_viewport_size(MODES["light"]["size"])
    page.get_by_label("Number of images").fill("3")
    page.get_by_label("Steps").fill("3")
    page.get_by_role("button", name="Generate images").click()
    page.wait_for_url("**/generate")
    expect(page.locator("[role=status]")).to_contain_text("Generated 3 images of red circle")
    expect(page.locator(".notice")).to_contain_text("not a real product photo")
    images = page.locator("img[src^='/generate/results/']")
    assert images.count() == 3
    assert images.first.get_attribute("alt") == "Generated image 1 of 3: red circle, seed 0"
    assert page.evaluate(
        "[...document.querySelectorAll('img[src^=\"/generate/results/\"]')]"
        ".every((img) => img.complete && img.naturalWidth === 28)"
    )
    check_every_mode(page, "generated images")
