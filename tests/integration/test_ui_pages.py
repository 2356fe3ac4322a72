"""Web UI pages through TestClient (no browser, no JavaScript): status codes, landmarks,
labels, alt texts, errors tied to their fields, and JSON errors kept on the API."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Protocol

import pytest
from fastapi.testclient import TestClient

from shoplens.catalog.store import Catalog
from shoplens.serve import ServiceSettings, create_app
from shoplens.serve.ui import alt_text

from ..helpers import assert_error, png_bytes

VOID = {"img", "input", "meta", "link", "br", "hr", "source", "area", "base", "col", "wbr"}


@dataclass
class El:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    children: list[El] = field(default_factory=list)


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.all: list[El] = []
        self.open: list[El] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        el = El(tag, {k: v or "" for k, v in attrs})
        if self.open:
            self.open[-1].children.append(el)
        self.all.append(el)
        if tag not in VOID:
            self.open.append(el)

    def handle_endtag(self, tag: str) -> None:
        while self.open:
            if self.open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for el in self.open:
            el.text += data


class Page:
    """A parsed HTML page with a few queries."""

    def __init__(self, html: str) -> None:
        c = _Collector()
        c.feed(html)
        self.els = c.all

    def find(self, tag: str | None = None, **attrs: str) -> list[El]:
        want = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}
        return [
            e
            for e in self.els
            if (tag is None or e.tag == tag) and all(e.attrs.get(k) == v for k, v in want.items())
        ]

    def one(self, tag: str | None = None, **attrs: str) -> El:
        found = self.find(tag, **attrs)
        assert len(found) == 1, f"expected one <{tag} {attrs}>, found {len(found)}"
        return found[0]

    def text(self, tag: str | None = None, **attrs: str) -> str:
        return " ".join(self.one(tag, **attrs).text.split())

    def cards(self) -> list[El]:
        return self.find("li", class_="card")


class Response(Protocol):
    """What page_of reads of a TestClient response."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def text(self) -> str: ...


def page_of(resp: Response, status: int = 200) -> Page:
    """Parse an HTML response and check what every page must have."""
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["content-type"].startswith("text/html")
    page = Page(resp.text)
    assert page.one("html").attrs["lang"] == "en"
    assert page.text("title").endswith(" - shoplens")
    assert len(page.find("h1")) == 1
    for tag in ("header", "nav", "main", "footer"):
        assert len(page.find(tag)) == 1, tag
    assert page.find("a")[0].attrs == {"class": "skip-link", "href": "#main"}
    assert page.one("main").attrs["id"] == "main"
    levels = [int(e.tag[1]) for e in page.els if e.tag in {"h1", "h2", "h3", "h4"}]
    assert all(b <= a + 1 for a, b in itertools.pairwise(levels)), levels
    labelled = {e.attrs.get("for") for e in page.find("label")}
    for control in page.find("input") + page.find("select"):
        if control.attrs.get("type") != "hidden":
            assert control.attrs.get("id") in labelled, control.attrs
    for img in page.find("img"):
        assert "alt" in img.attrs, img.attrs
    return page


@pytest.fixture(scope="module")
def client(built_catalog: str) -> Iterator[TestClient]:
    settings = ServiceSettings(
        catalog=built_catalog, load_in_background=False, max_upload_bytes=200_000
    )
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def catalog(built_catalog: str) -> Iterator[Catalog]:
    with Catalog.open(built_catalog) as cat:
        yield cat


def field_error(page: Page, field_id: str) -> str:
    """The error of a field: aria-invalid, described by an alert that says what is wrong."""
    control = page.one(id=field_id)
    assert control.attrs.get("aria-invalid") == "true"
    assert f"{field_id}-error" in control.attrs["aria-describedby"].split()
    assert page.one(id=f"{field_id}-error").attrs["role"] == "alert"
    return page.text(id=f"{field_id}-error")


# ---- alt text --------------------------------------------------------------------------------
@dataclass
class _Item:
    title: str
    category: str
    attributes: dict[str, str]


def test_alt_text_names_category_title_and_visual_attributes() -> None:
    boot = _Item("black leather ankle boot", "Ankle boot", {"color": "black", "size": "42"})
    assert alt_text(boot) == "Ankle boot: black leather ankle boot, size 42"
    fm = _Item("Ankle boot (Fashion-MNIST train photo)", "Ankle boot", {"split": "train"})
    assert alt_text(fm) == "Ankle boot (Fashion-MNIST train photo)"
    many = {"fit_type": "slim", "a": "1", "b": "2", "c": "3", "d": "4", "source": "x"}
    assert alt_text(_Item("  Linen   shirt ", "Shirts", many)) == (
        "Shirts: Linen shirt, a 1, b 2, c 3, d 4"
    )
    assert alt_text(_Item("Scarf", "Accessories", {"fit_type": "long"})).endswith("fit type long")
    assert alt_text(_Item("", "Bags", {})) == "Bags"
    assert (
        alt_text(_Item("Bored cat tee", "Tops", {"color": "red"}))
        == "Tops: Bored cat tee, color red"
    )


# ---- pages -----------------------------------------------------------------------------------
def test_home_page_has_both_search_forms(client: TestClient, catalog: Catalog) -> None:
    page = page_of(client.get("/"))
    assert page.text("title") == "Search the catalogue - shoplens"
    words = page.one("form", method="get")
    assert words.attrs["action"] == "/search" and words.attrs["role"] == "search"
    photo = page.one("form", method="post")
    assert photo.attrs["enctype"] == "multipart/form-data"
    assert page.one("input", id="image").attrs["type"] == "file"
    options = [o.attrs["value"] for o in page.one("select", id="category").children]
    assert options == ["", *catalog.categories()]
    assert page.one("a", href="/", aria_current="page").text == "Search"
    assert not page.cards() and not page.find(role="status")


def test_text_results_are_bookmarkable_and_described(client: TestClient, catalog: Catalog) -> None:
    resp = client.get("/search", params={"q": "yellow stripes"})
    page = page_of(resp)
    assert page.text("title") == "Results for 'yellow stripes' - shoplens"
    cards = page.cards()
    status = page.one(role="status")
    assert status.attrs["aria-live"] == "polite"
    assert " ".join(status.text.split()) == f"{len(cards)} products match 'yellow stripes'."
    assert page.one("input", id="q").attrs["value"] == "yellow stripes"
    first = cards[0]
    link = next(e for e in first.children if e.tag == "h3").children[0]
    sku = link.attrs["href"].removeprefix("/products/")
    product = catalog.get(sku)
    assert product.category == "Yellow stripes"
    img = first.children[0]
    assert img.attrs["alt"] == alt_text(product) and img.attrs["src"].endswith(f"{sku}/image")

    filtered = page_of(client.get("/search", params={"q": "product", "category": "Red circle"}))
    assert {" ".join(c.children[2].text.split()) for c in filtered.cards()} == {"Red circle"}
    options = filtered.one("select", id="category").children
    assert [o.attrs["value"] for o in options if "selected" in o.attrs] == ["Red circle"]
    assert "in Red circle" in filtered.text(role="status")


def test_empty_results_say_what_to_do_next(client: TestClient) -> None:
    params = {"q": "red", "category": "Red circle", "attr": "color=blue"}
    page = page_of(client.get("/search", params=params))
    assert page.text(role="status") == (
        "No products match 'red' in Red circle with color blue. "
        "Try a shorter query or remove the filters."
    )
    assert not page.cards()
    hrefs = {a.attrs["href"] for a in page.find("a")}
    assert "/search?q=red&category=Red+circle" in hrefs  # attribute filter removed
    assert "/search?q=red&attr=color%3Dblue" in hrefs  # category removed
    assert page.one("input", type="hidden").attrs["value"] == "color=blue"


def test_form_errors_are_400_and_tied_to_their_field(client: TestClient) -> None:
    page = page_of(client.get("/search", params={"q": "   "}), 400)
    assert page.text("title") == "Error: Check your search - shoplens"
    assert "Enter what you are looking for" in field_error(page, "q")
    assert page.one("input", id="q").attrs.get("autofocus") == ""

    page = page_of(client.get("/search", params={"q": "x", "category": "Hats"}), 400)
    message = field_error(page, "category")
    assert "'Hats'" in message and "Blue square, Green triangle, Red circle" in message
    page = page_of(client.get("/search", params={"q": "x" * 1001}), 400)
    assert "at most 1000 characters" in field_error(page, "q")

    bad_attr = page_of(client.get("/search", params={"q": "x", "attr": "colour"}), 422)
    assert "key=value" in bad_attr.text("p", class_="error-message")


def test_product_page(client: TestClient, catalog: Catalog) -> None:
    page = page_of(client.get("/products/SKU-001"))
    product = catalog.get("SKU-001")
    assert page.text("h1") == product.title
    assert page.text("title") == f"{product.title} (SKU-001) - shoplens"
    assert page.one("img", class_="product-image").attrs["alt"] == alt_text(product)
    facts = page.one("dl")
    pairs = dict(
        zip(
            [" ".join(e.text.split()) for e in facts.children if e.tag == "dt"],
            [" ".join(e.text.split()) for e in facts.children if e.tag == "dd"],
            strict=True,
        )
    )
    assert pairs == {
        "Category": "Red circle",
        "Product code": "SKU-001",
        "Color": "red",
        "Size": "large",
    }
    similar = page.cards()
    assert len(similar) == 8
    skus = [c.children[1].children[0].attrs["href"] for c in similar]
    assert "/products/SKU-001" not in skus
    assert skus[0].startswith("/products/SKU-0")  # nearest neighbour is another red circle
    assert "Complete the look" not in client.get("/products/SKU-001").text


def test_unknown_pages_are_html_404_and_api_stays_json(client: TestClient) -> None:
    page = page_of(client.get("/products/NOPE"), 404)
    assert page.text("h1") == "Product not found"
    assert page.text("p", class_="error-message") == "No product has the code 'NOPE'."
    assert page.one("form", role="search").attrs["action"] == "/search"
    assert page.text("title") == "Product not found (404) - shoplens"
    assert page_of(client.get("/no-such-page"), 404).text("h1") == "Page not found"
    assert page_of(client.put("/search"), 405).text("h1") == "That action is not possible here"
    assert_error(client.get("/v1/products/NOPE"), 404, "not_found")
    assert_error(client.get("/v1/nope"), 404, "not_found")
    assert_error(client.post("/v1/search", json={"text": "  "}), 422, "invalid_input")


def test_photo_search_is_a_plain_form_post(client: TestClient) -> None:
    image = {"image": ("q.png", png_bytes(), "image/png")}
    page = page_of(client.post("/search", files=image))
    assert page.text("title") == "Results for your photo - shoplens"
    first = page.cards()[0].children[1].children[0]
    assert first.attrs["href"] == "/products/SKU-201"
    both = page_of(client.post("/search", files=image, data={"q": "red", "category": "Red circle"}))
    assert both.text("h1") == "Results for your photo and 'red'"
    assert {" ".join(c.children[2].text.split()) for c in both.cards()} == {"Red circle"}
    assert both.one("input", id="photo-q").attrs["value"] == "red"
    assert both.one("details").attrs.get("open") == ""


def test_bad_uploads_change_nothing(client: TestClient, catalog: Catalog) -> None:
    before = (catalog.count(), catalog.version())
    page = page_of(
        client.post("/search", files={"image": ("", b"", "application/octet-stream")}), 400
    )
    assert "Choose a photo" in field_error(page, "image")
    text = {"image": ("notes.txt", b"just text", "text/plain")}
    page = page_of(client.post("/search", files=text), 400)
    assert "not an image" in field_error(page, "image")
    big = {"image": ("big.png", b"\x89PNG" + b"0" * 300_000, "image/png")}
    page = page_of(client.post("/search", files=big), 413)
    assert "over the limit of 200 kB" in field_error(page, "image")
    just_over = {"image": ("big.png", b"\x89PNG" + b"0" * 200_000, "image/png")}
    assert "over the limit" in field_error(
        page_of(client.post("/search", files=just_over), 413), "image"
    )
    assert (catalog.count(), catalog.version()) == before
    assert client.get("/search", params={"q": "blue"}).status_code == 200


def test_loading_catalogue_is_503_with_retry_after(built_catalog: str) -> None:
    app = create_app(ServiceSettings(catalog=built_catalog))
    client = TestClient(app)  # no `with`: the lifespan never runs, so nothing is loaded yet
    resp = client.get("/search", params={"q": "bag"})
    page = page_of(resp, 503)
    assert resp.headers["retry-after"] == "5"
    assert page.text("h1") == "The catalogue is still loading"
    assert page.one("a", class_="button-link").text.strip() == "Try again"
    assert_error(client.get("/v1/catalog"), 503, "not_ready")

    broken = create_app(ServiceSettings(catalog="does-not-exist", load_in_background=False))
    with TestClient(broken) as c:
        page = page_of(c.get("/"), 503)
        assert page.text("h1") == "Search is not available"
        assert "unknown catalogue 'does-not-exist'" in page.text("p", class_="error-message")


def test_static_assets(client: TestClient) -> None:
    css = client.get("/static/ui.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    for needed in (
        "prefers-color-scheme: dark",
        "prefers-reduced-motion: reduce",
        ":focus-visible",
    ):
        assert needed in css.text
    assert client.get("/static/ui.js").status_code == 200
    page_of(client.get("/static/missing.css"), 404)
