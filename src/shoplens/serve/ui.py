"""Server-rendered web UI for shoppers: search by words or by photo, product pages.

Every page works without JavaScript: text search is a GET form (bookmarkable results),
photo search a multipart POST, and ``static/ui.js`` only adds drag-and-drop and an early
size check. On UI paths errors are HTML pages (:func:`error_page`); the ``/v1`` API and
the ops endpoints keep their JSON errors (:func:`is_ui_request`).

Extending: append a :class:`NavLink` to :data:`NAV` for a new top-level page, extend
``base.html`` and reuse the macros of ``_macros.html``; ``product.html`` has an empty
``complete_the_look`` block (filled when ``complete_the_look`` hits are in the context).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol
from urllib.parse import quote, urlencode

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from shoplens import __version__
from shoplens.data.images import ALLOWED_FORMATS, decode_image
from shoplens.errors import (
    ImageError,
    InvalidInputError,
    NotFoundError,
    NotReadyError,
    PayloadTooLargeError,
)
from shoplens.search.engine import (
    MAX_QUERY_CHARS,
    Filters,
    Hit,
    SearchEngine,
    product_image_url,
)
from shoplens.serve.app import Engine, parse_attr_params
from shoplens.serve.limits import read_upload

HERE = Path(__file__).parent
PAGE_SIZE = 24
SIMILAR_K = 8
RETRY_AFTER_S = 5
#: Paths that answer JSON (API, ops, OpenAPI docs); every other path is a UI page.
JSON_PATHS = ("/v1", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc")
#: Attributes that say nothing about what a product looks like (kept out of alt texts).
NON_VISUAL_ATTRIBUTES = frozenset({"split", "source", "sku", "id", "url", "image", "image_url"})
MAX_ALT_ATTRIBUTES = 4
PHOTO_FIELDS = ("image", "photo-q", "photo-category")
FORMATS_TEXT = "JPEG, PNG, WebP, GIF, BMP or TIFF"
ACCEPT = ",".join(f"image/{f.lower()}" for f in sorted(ALLOWED_FORMATS))


@dataclass(frozen=True)
class NavLink:
    """One entry of the main navigation."""

    label: str
    href: str


#: Main navigation; later pages (personalization, generation) append their entry here.
NAV: list[NavLink] = [
    NavLink("Search", "/"),
    NavLink("Customers", "/customers"),
    NavLink("Generate", "/generate"),
]


class ProductLike(Protocol):
    """What :func:`alt_text` reads: a catalogue ``Product`` or a search ``Hit``."""

    @property
    def title(self) -> str: ...
    @property
    def category(self) -> str: ...
    @property
    def attributes(self) -> dict[str, str]: ...


def alt_text(product: ProductLike) -> str:
    """Alt text from category, title and visual attributes.

    ``"Ankle boot: black leather ankle boot, size 42"``; the category is left out when the
    title starts with it, and attributes whose value the title already says are skipped.
    """
    title = " ".join(product.title.split())
    category = " ".join(product.category.split())
    lead = title or category or "Product photo"
    if category and title and not title.lower().startswith(category.lower()):
        lead = f"{category}: {title}"
    details = [
        f"{key.replace('_', ' ')} {value}"
        for key, value in sorted(product.attributes.items())
        if key.lower() not in NON_VISUAL_ATTRIBUTES
        and str(value).strip()
        and not re.search(rf"\b{re.escape(str(value))}\b", title, re.IGNORECASE)
    ]
    return ", ".join([lead, *details[:MAX_ALT_ATTRIBUTES]])


def product_url(sku: str) -> str:
    """Path of a product's page."""
    return f"/products/{quote(sku, safe='')}"


def human_bytes(n: int) -> str:
    """``10.4 MB``, ``200 kB``: decimal units as file managers show them, rounded down."""
    if n >= 1_000_000:
        return f"{math.floor(n / 1e5) / 10:g} MB"
    return f"{max(1, n // 1000)} kB"


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


@dataclass
class SearchQuery:
    """What a shopper asked for: words and/or a photo, narrowed by category and attributes."""

    text: str = ""
    category: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    photo: bool = False

    def describe(self) -> str:
        """``'bag'``, ``your photo`` or ``your photo and 'bag'``."""
        words = f"'{_shorten(self.text)}'" if self.text else ""
        if self.photo:
            return f"your photo and {words}" if words else "your photo"
        return words

    def where(self) -> str:
        """`` in Bags with colour red`` (empty without filters)."""
        out = f" in {self.category}" if self.category else ""
        attrs = " and ".join(f"{k} {v}" for k, v in self.attributes.items())
        return f"{out} with {attrs}" if attrs else out

    def filters(self) -> Filters:
        return Filters([self.category] if self.category else [], dict(self.attributes))

    def url(self, *, category: str | None = None, attributes: dict[str, str] | None = None) -> str:
        """GET URL of this text search, optionally with other filters."""
        attrs = self.attributes if attributes is None else attributes
        params: list[tuple[str, str]] = [("q", self.text)]
        cat = self.category if category is None else category
        if cat:
            params.append(("category", cat))
        params += [("attr", f"{k}={v}") for k, v in attrs.items()]
        return "/search?" + urlencode(params)


templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals.update(
    nav=NAV,
    version=__version__,
    alt_text=alt_text,
    product_url=product_url,
    accept=ACCEPT,
    formats_text=FORMATS_TEXT,
)
router = APIRouter(include_in_schema=False)


def install_ui(app: FastAPI) -> None:
    """Add the pages and ``/static`` to ``app``."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")


def is_ui_request(request: Request) -> bool:
    """True for web UI paths (HTML errors), False for the JSON API and ops endpoints."""
    path = request.url.path
    return not any(path == p or path.startswith(p + "/") for p in JSON_PATHS)


ERROR_COPY: dict[int, tuple[str, str]] = {
    400: ("That request did not work", "Check what you typed and try again."),
    404: ("Page not found", "The link may be out of date or mistyped. Try a search instead."),
    405: ("That action is not possible here", "Go back to the search page and try again."),
    409: ("Search is not set up yet", "Ask the shop owner to build the catalogue's index."),
    413: ("That file is too large", "Choose a smaller photo and try again."),
    414: ("That search is too long", "Use fewer words and try again."),
    429: ("Too many requests", "Wait a few seconds, then try again."),
    431: ("That request did not work", "Clear this site's cookies, then try again."),
    422: ("That request did not work", "Check what you typed and try again."),
    503: ("The catalogue is still loading", "Wait a few seconds, then try again."),
}
SERVER_ERROR = ("Something went wrong on our side", "Please try again in a minute.")
RECS_NOT_READY = (
    "Recommendations are not set up yet",
    "Ask the shop owner to load customer events and fit the recommender. Search works already.",
)
UNAVAILABLE = ("Search is not available", "The catalogue could not be loaded. Try again later.")


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    """An HTML error page that says what happened and what to do next."""
    heading, advice = ERROR_COPY.get(status, SERVER_ERROR)
    if status == 404 and request.url.path.startswith("/products/"):
        heading = "Product not found"
    if status == 409 and request.url.path.startswith("/customers"):
        heading, advice = RECS_NOT_READY
    if status == 503 and request.app.state.shoplens.error:
        heading, advice = UNAVAILABLE
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    query = request.url.query
    context = {
        "title": f"{heading} ({status})",
        "heading": heading,
        "message": message[:1].upper() + message[1:],
        "advice": advice,
        "retry": status == 503,
        "retry_url": request.url.path + (f"?{query}" if query else ""),
    }
    return templates.TemplateResponse(
        request, "error.html", context, status_code=status, headers=headers
    )


# ---- search --------------------------------------------------------------------------------
def _check_query(
    query: SearchQuery, categories: dict[str, int], *, text_id: str, category_id: str
) -> dict[str, str]:
    """Field id -> error message for what the shopper typed or chose."""
    errors: dict[str, str] = {}
    if not query.text and not query.photo:
        errors[text_id] = "Enter what you are looking for, for example 'red dress'."
    elif len(query.text) > MAX_QUERY_CHARS:
        errors[text_id] = f"Use at most {MAX_QUERY_CHARS} characters (this has {len(query.text)})."
    if query.category and query.category not in categories:
        names = ", ".join(list(categories)[:12]) + (", …" if len(categories) > 12 else "")
        errors[category_id] = (
            f"There is no category '{_shorten(query.category)}'. Choose one of: {names}, "
            "or All categories."
        )
    return errors


def _run_search(
    request: Request, engine: SearchEngine, query: SearchQuery, image: Image.Image | None
) -> list[Hit]:
    """Search (in a worker thread) and record its time like the API does."""
    kind = "image+text" if image and query.text else "image" if image else "text"
    k = min(PAGE_SIZE, request.app.state.shoplens.settings.max_k)
    t0 = time.perf_counter()
    hits = engine.search(image=image, text=query.text or None, k=k, filters=query.filters())
    request.app.state.metrics.search_seconds.labels(kind).observe(time.perf_counter() - t0)
    return hits


def _summary(query: SearchQuery, hits: list[Hit]) -> str:
    n = len(hits)
    if n:
        matches = "1 product matches" if n == 1 else f"{n} products match"
        return f"{matches} {query.describe()}{query.where()}."
    retry = "Try another photo" if query.photo and not query.text else "Try a shorter query"
    if query.filters():
        drop = "remove the filters" if query.attributes else "remove the category filter"
        retry = f"{retry} or {drop}"
    return f"No products match {query.describe()}{query.where()}. {retry}."


def _search_page(
    request: Request,
    engine: SearchEngine,
    query: SearchQuery,
    *,
    hits: list[Hit] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    """The search page: the home page, a results page, or the form with its errors."""
    errors = errors or {}
    if errors:
        heading = "Check your search"
        title = f"Error: {heading}"
    elif hits is not None:
        heading = title = f"Results for {query.describe()}"
    else:
        heading, title = "Find products by words or by photo", "Search the catalogue"
    context: dict[str, Any] = {
        "title": title,
        "heading": heading,
        "query": query,
        "hits": hits,
        "summary": _summary(query, hits) if hits is not None else "",
        "errors": errors,
        "first_error": next(iter(errors), None),
        "categories": engine.catalog.categories(),
        "photo_open": hits is None or query.photo or any(f in errors for f in PHOTO_FIELDS),
        "max_upload": request.app.state.shoplens.settings.max_upload_bytes,
        "max_upload_text": human_bytes(request.app.state.shoplens.settings.max_upload_bytes),
    }
    return templates.TemplateResponse(request, "search.html", context, status_code=status)


@router.get("/", response_class=HTMLResponse)
def home(request: Request, engine: Engine) -> HTMLResponse:
    """Search forms (words, photo) and the category filter."""
    return _search_page(request, engine, SearchQuery())


@router.get("/search", response_class=HTMLResponse)
def search_words(
    request: Request,
    engine: Engine,
    q: str = "",
    category: str = "",
    attr: Annotated[list[str] | None, Query()] = None,
) -> HTMLResponse:
    """Results of a text search (GET, so results can be bookmarked and shared)."""
    query = SearchQuery(q.strip(), category, parse_attr_params(attr or []))
    errors = _check_query(query, engine.catalog.categories(), text_id="q", category_id="category")
    if errors:
        return _search_page(request, engine, query, errors=errors, status=400)
    return _search_page(request, engine, query, hits=_run_search(request, engine, query, None))


async def _read_photo_form(request: Request, limit: int) -> tuple[SearchQuery, bytes]:
    """The photo form's fields and the photo's bytes (PayloadTooLargeError over ``limit``).

    A body far over the limit is stopped by ``RequestSizeLimitMiddleware`` (which also
    reads and drops the rest, so the browser sees this page); the photo itself here.
    """
    too_large = f"The photo is over the limit of {human_bytes(limit)}."
    try:
        form = await request.form(max_files=1, max_fields=10)
    except PayloadTooLargeError:
        raise PayloadTooLargeError(too_large) from None
    text, category = form.get("q"), form.get("category")
    query = SearchQuery(
        text.strip() if isinstance(text, str) else "",
        category if isinstance(category, str) else "",
        photo=True,
    )
    upload = form.get("image")
    data = await read_upload(upload, limit, too_large) if isinstance(upload, UploadFile) else b""
    return query, data


@router.post("/search", response_class=HTMLResponse)
async def search_photo(request: Request, engine: Engine) -> HTMLResponse:
    """Results for an uploaded photo (multipart form POST), optionally with words."""
    limit = request.app.state.shoplens.settings.max_upload_bytes
    try:
        query, data = await _read_photo_form(request, limit)
    except PayloadTooLargeError as e:
        query = SearchQuery(photo=True)
        errors = {"image": f"{e.message} Choose a smaller photo."}
        return _search_page(request, engine, query, errors=errors, status=413)
    errors = _check_query(
        query, engine.catalog.categories(), text_id="photo-q", category_id="photo-category"
    )
    if not data:
        errors = {"image": f"Choose a photo ({FORMATS_TEXT}) to search with.", **errors}
    if errors:
        return _search_page(request, engine, query, errors=errors, status=400)

    def run() -> list[Hit]:
        image = decode_image(data, source="The file you chose", max_bytes=limit)
        return _run_search(request, engine, query, image)

    try:
        hits = await run_in_threadpool(run)
    except ImageError as e:
        errors = {"image": f"{e.message}. Choose a {FORMATS_TEXT} photo."}
        return _search_page(request, engine, query, errors=errors, status=400)
    return _search_page(request, engine, query, hits=hits)


# ---- products ------------------------------------------------------------------------------
@router.get("/products/{sku:path}", response_class=HTMLResponse)
def product_page(request: Request, engine: Engine, sku: str) -> HTMLResponse:
    """A product: photo, facts, and visually similar products."""
    try:
        product = engine.catalog.get(sku)
    except NotFoundError:  # shown to shoppers: say it in their words (-> 404 page)
        raise NotFoundError(f"No product has the code '{_shorten(sku)}'.") from None
    context = {
        "title": f"{_shorten(product.title)} ({product.sku})",
        "product": product,
        "image_url": product_image_url(product.sku),
        "attributes": sorted(product.attributes.items()),
        "similar": engine.similar(product.sku, k=SIMILAR_K),
        "category_url": SearchQuery(product.category, product.category).url(),
        "complete_the_look": _complete_the_look(request, engine, product.sku),
    }
    return templates.TemplateResponse(request, "product.html", context)


# ---- personalization -----------------------------------------------------------------------
LOOK_K = 4
RECS_K = 12
DEMO_CUSTOMERS = 12


@dataclass
class Card:
    """What ``product_grid`` shows for a recommended product."""

    sku: str
    title: str
    category: str
    attributes: dict[str, str]
    image_url: str


def _card(product: Any) -> Card:
    return Card(
        product.sku,
        product.title,
        product.category,
        product.attributes,
        product_image_url(product.sku),
    )


def _recs(request: Request, engine: SearchEngine) -> Any:
    return request.app.state.recs.get(engine)


def _complete_the_look(request: Request, engine: SearchEngine, sku: str) -> list[dict[str, Any]]:
    """Groups of products that go with ``sku`` (none while no recommender is fitted)."""
    try:
        look = _recs(request, engine).complete_the_look(sku, LOOK_K)
    except (NotReadyError, NotFoundError):
        return []
    return [
        {"category": g["category"], "hits": [_card(r.product) for r in g["results"]]}
        for g in look["groups"]
        if g["results"]
    ]


@router.get("/customers", response_class=HTMLResponse)
def customers_page(request: Request, engine: Engine, id: str = "") -> Response:
    """Pick a customer: a form for an id, and links to some (simulated) demo customers."""
    customer = id.strip()
    errors: dict[str, str] = {}
    if customer:
        if len(customer) <= 128:
            return RedirectResponse(customer_url(customer), status_code=303)
        errors["customer-id"] = "Use at most 128 characters for a customer id."
    recs = _recs(request, engine)
    ids = recs.events.customer_ids(limit=DEMO_CUSTOMERS)
    demo = [(c, recs.events.is_simulated_customer(c)) for c in ids]
    context = {
        "title": ("Error: " if errors else "") + "Customers",
        "demo": demo,
        "any_simulated": any(sim for _, sim in demo),
        "errors": errors,
        "first_error": next(iter(errors), None),
        "value": customer,
    }
    return templates.TemplateResponse(
        request, "customers.html", context, status_code=400 if errors else 200
    )


def customer_url(customer_id: str) -> str:
    return f"/customers/{quote(customer_id, safe='')}"


@router.get("/customers/{customer_id:path}", response_class=HTMLResponse)
def customer_page(request: Request, engine: Engine, customer_id: str) -> HTMLResponse:
    """Recommendations for one customer, with what they did recently."""
    recs = _recs(request, engine)
    try:
        out = recs.for_customer(customer_id, RECS_K)
    except InvalidInputError as e:
        raise InvalidInputError(f"That customer id cannot be used: {e.message}.") from None
    recent = recs.events.customer_events(customer_id, limit=30)
    seen: list[Any] = []
    for event in reversed(recent):
        if event.sku not in {c.sku for c in seen}:
            try:
                seen.append(_card(engine.catalog.get(event.sku)))
            except NotFoundError:
                continue
        if len(seen) == 6:
            break
    context = {
        "title": f"Recommendations for {_shorten(customer_id, 40)}",
        "customer_id": customer_id,
        "out": out,
        "hits": [_card(r.product) for r in out["results"]],
        "recent": seen,
    }
    return templates.TemplateResponse(request, "customer.html", context)
