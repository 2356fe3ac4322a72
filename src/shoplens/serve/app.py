"""App factory: ``create_app(settings)`` builds the shoplens HTTP service.

Start-up (lifespan) opens the catalogue and loads its indexes in a background thread, so
``/healthz`` answers at once and ``/readyz`` turns 200 when search can be served. Torch
and FAISS work runs in the thread pool, never on the event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from shoplens import __version__
from shoplens.errors import (
    InvalidInputError,
    NotReadyError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    ShoplensError,
)
from shoplens.search.engine import Filters, SearchEngine
from shoplens.serve.keys import KeyStore
from shoplens.serve.metrics import Metrics
from shoplens.serve.schemas import (
    CompleteTheLookResponse,
    ErrorResponse,
    EventsRequest,
    EventsResponse,
    HitOut,
    LookGroup,
    ProductOut,
    RecommendationsResponse,
    RecommendedOut,
    SearchRequest,
    SearchResponse,
)
from shoplens.serve.settings import ServiceSettings

log = logging.getLogger("shoplens.serve")
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 409, 413, 422, 503)
}


class ServiceState:
    """The loaded engine (or why it is not loaded yet), guarded by a lock."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self.engine: SearchEngine | None = None
        self.error: str | None = None
        self.loading = False

    def load(self) -> None:
        with self._lock:
            self.loading = True
        try:
            engine = SearchEngine.open(self.settings.catalog, self.settings.encoder)
        except ShoplensError as e:
            with self._lock:
                self.error, self.loading = e.message, False
            log.error("cannot load catalogue %s: %s", self.settings.catalog, e.message)
            return
        except Exception as e:  # a bug, but the service must still say why it isn't ready
            log.exception("loading failed")
            with self._lock:
                self.error, self.loading = f"loading failed: {e}", False
            return
        with self._lock:
            self.engine, self.error, self.loading = engine, None, False

    def get(self) -> SearchEngine:
        with self._lock:
            if self.engine is not None:
                return self.engine
            why = self.error or "the index is still loading"
        raise ServiceUnavailableError(f"service not ready: {why}")


class RecsState:
    """The catalogue's recommender build, loaded on first use and reloaded when a newer
    build is published (``shoplens recommend fit`` while the service runs)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.recs: Any = None  # shoplens.personalize.service.Recommendations

    def get(self, engine: SearchEngine) -> Any:
        from shoplens.personalize.service import Recommendations, recs_root

        current = recs_root(engine.catalog) / "current"
        target = current.resolve() if current.exists() else None
        with self._lock:
            if self.recs is not None and self.recs.path == target:
                return self.recs
            if target is None:
                raise NotReadyError(
                    f"no recommender for catalogue {engine.catalog.name!r}; run 'shoplens "
                    f"recommend fit --catalog {engine.catalog.name}'"
                )
            old, self.recs = self.recs, Recommendations(engine.catalog)
        if old is not None:
            old.close()
        return self.recs


def api_key(request: Request) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or ``X-API-Key``."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or None


def require(scope: str, *, optional_setting: str | None = None) -> Any:
    """Dependency: a live API key with ``scope`` (skipped when the named setting is off)."""

    def check(request: Request) -> None:
        settings: ServiceSettings = request.app.state.shoplens.settings
        if optional_setting is not None and not getattr(settings, optional_setting):
            return
        request.app.state.keys.authenticate(api_key(request), scope)

    return Depends(check)


def get_engine(request: Request) -> SearchEngine:
    """Dependency: the loaded engine, or 503 while it is loading / failed to load."""
    state: ServiceState = request.app.state.shoplens
    return state.get()


Engine = Annotated[SearchEngine, Depends(get_engine)]


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _validation_message(errors: list[Any]) -> str:
    parts = []
    for e in errors[:3]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    return "; ".join(parts) or "invalid request"


def _install_handlers(app: FastAPI) -> None:
    from shoplens.serve.ui import error_page, is_ui_request  # ui.py builds on this module

    def respond(request: Request, status: int, code: str, message: str) -> Response:
        """HTML error page on web UI paths, JSON error body on the API."""
        if is_ui_request(request):
            return error_page(request, status, message)
        return _error(status, code, message)

    @app.exception_handler(ShoplensError)
    async def shoplens_error(request: Request, exc: ShoplensError) -> Response:
        return respond(request, exc.http_status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return respond(request, 422, "invalid_input", _validation_message(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return respond(request, exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return respond(request, 500, "internal", "internal server error")


def _filters(categories: list[str], attributes: dict[str, str]) -> Filters:
    return Filters(categories=list(categories), attributes=dict(attributes))


def parse_attr_params(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"attribute filter {v!r} must look like key=value")
        out[key] = val
    return out


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the service for ``settings.catalog`` (see :class:`ServiceSettings`)."""
    settings = settings or ServiceSettings()
    state = ServiceState(settings)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.load_in_background:
            threading.Thread(target=state.load, name="shoplens-load", daemon=True).start()
        else:
            await run_in_threadpool(state.load)
        yield

    app = FastAPI(
        title="shoplens",
        version=__version__,
        lifespan=lifespan,
        description="Visual and text search over a retail catalogue.",
    )
    app.state.shoplens = state
    app.state.metrics = metrics
    app.state.keys = KeyStore()
    recs_state = RecsState()
    events_lock = threading.Lock()
    events_store: dict[str, Any] = {}

    def event_store(engine: SearchEngine) -> Any:
        from shoplens.personalize.events import EventStore

        with events_lock:
            if "store" not in events_store:
                events_store["store"] = EventStore.open(engine.catalog)
            return events_store["store"]

    def recommended_out(recs: list[Any]) -> list[RecommendedOut]:
        return [
            RecommendedOut(
                **r.product.to_dict(),
                score=r.score,
                sources=r.sources,
                image_url=f"/v1/products/{quote(r.product.sku, safe='')}/image",
            )
            for r in recs
        ]

    _install_handlers(app)

    @app.middleware("http")
    async def observe(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        response: Response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(request.method, path, str(response.status_code)).inc()
        metrics.latency.labels(request.method, path).observe(time.perf_counter() - start)
        return response

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: {"model": ErrorResponse}})
    def readyz() -> Any:
        try:
            engine = state.get()
        except ServiceUnavailableError as e:
            return _error(503, "not_ready", e.message)
        return {
            "status": "ready",
            "catalog": engine.catalog.name,
            "encoder": engine.image_build.encoder,
            "vectors": engine.image_build.index.ntotal,
        }

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def prometheus() -> Response:
        engine = state.engine
        metrics.ready.set(1 if engine else 0)
        if engine is not None:
            metrics.index_size.set(engine.image_build.index.ntotal)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def _read_search(request: Request) -> tuple[SearchRequest, bytes | None]:
        ctype = request.headers.get("content-type", "")
        length = request.headers.get("content-length")
        limit = settings.max_upload_bytes
        if length and length.isdigit() and int(length) > limit + 64 * 1024:
            raise PayloadTooLargeError(f"request body over {limit} bytes")
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=20)
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise InvalidInputError("multipart search needs a file field 'image'")
            data = await upload.read(limit + 1)
            if len(data) > limit:
                raise PayloadTooLargeError(f"image upload over {limit} bytes")
            fields: dict[str, Any] = {}
            for key in ("text", "k", "dedupe", "text_weight", "image_weight", "compose"):
                if isinstance(form.get(key), str) and form.get(key) != "":
                    fields[key] = form.get(key)
            fields["categories"] = [c for c in form.getlist("category") if isinstance(c, str) and c]
            fields["attributes"] = parse_attr_params(
                [a for a in form.getlist("attr") if isinstance(a, str) and a]
            )
            try:
                return SearchRequest.model_validate(fields), data
            except ValidationError as e:
                raise InvalidInputError(_validation_message(list(e.errors()))) from e
        if not ctype.startswith("application/json"):
            raise InvalidInputError("send JSON (text or sku) or multipart/form-data with 'image'")
        body = await request.body()
        try:
            return SearchRequest.model_validate_json(body), None
        except ValidationError as e:
            raise InvalidInputError(_validation_message(list(e.errors()))) from e

    read_key = require("read", optional_setting="read_requires_key")

    @app.post(
        "/v1/search",
        response_model=SearchResponse,
        tags=["search"],
        responses=ERRORS,
        dependencies=[read_key],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": SearchRequest.model_json_schema()},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["image"],
                            "properties": {
                                "image": {"type": "string", "format": "binary"},
                                "text": {"type": "string"},
                                "text_weight": {"type": "number"},
                                "image_weight": {"type": "number"},
                                "compose": {"type": "boolean"},
                                "k": {"type": "integer"},
                                "category": {"type": "array", "items": {"type": "string"}},
                                "attr": {"type": "array", "items": {"type": "string"}},
                            },
                        }
                    },
                },
            }
        },
    )
    async def search(request: Request) -> SearchResponse:
        """Search by text or sku (JSON) or by an uploaded image, optionally with text."""
        req, image_bytes = await _read_search(request)
        engine = state.get()
        if req.k > settings.max_k:
            raise InvalidInputError(f"k must be at most {settings.max_k}")
        if image_bytes is None and (req.text is None) == (req.sku is None):
            raise InvalidInputError("give exactly one of 'text' or 'sku' (or upload 'image')")

        def run() -> tuple[list[Any], str]:
            from shoplens.data.images import decode_image

            image = decode_image(image_bytes, source="uploaded image") if image_bytes else None
            kind = (
                "image+text"
                if image and req.text
                else "image"
                if image
                else "text"
                if req.text
                else "sku"
            )
            t0 = time.perf_counter()
            hits = engine.search(
                image=image,
                text=req.text,
                sku=req.sku,
                k=req.k,
                filters=_filters(req.categories, req.attributes),
                dedupe=req.dedupe,
                text_weight=req.text_weight,
                image_weight=req.image_weight,
                compose=req.compose,
            )
            metrics.search_seconds.labels(kind).observe(time.perf_counter() - t0)
            return hits, kind

        hits, kind = await run_in_threadpool(run)
        query: dict[str, object] = {"kind": kind, "k": req.k}
        if req.text:
            query["text"] = req.text
        if req.sku:
            query["sku"] = req.sku
        if kind == "image+text":
            query["composed"] = req.compose is not False and engine.composes
        return SearchResponse(
            query=query,
            count=len(hits),
            stale_index=engine.stale,
            results=[HitOut(**h.to_dict()) for h in hits],
        )

    @app.get("/v1/products/{sku}", response_model=ProductOut, tags=["products"], responses=ERRORS)
    def product(sku: str, engine: Engine) -> ProductOut:
        p = engine.catalog.get(sku)
        return ProductOut(**p.to_dict(), image_url=f"/v1/products/{quote(sku, safe='')}/image")

    @app.get(
        "/v1/products/{sku}/similar",
        response_model=SearchResponse,
        tags=["products"],
        responses=ERRORS,
        dependencies=[read_key],
    )
    def similar(
        sku: str,
        engine: Engine,
        k: Annotated[int, Query(ge=1, le=1000)] = 10,
        category: Annotated[list[str] | None, Query()] = None,
        attr: Annotated[list[str] | None, Query(description="key=value")] = None,
    ) -> SearchResponse:
        if k > settings.max_k:
            raise InvalidInputError(f"k must be at most {settings.max_k}")
        t0 = time.perf_counter()
        hits = engine.similar(
            sku, k=k, filters=_filters(category or [], parse_attr_params(attr or []))
        )
        metrics.search_seconds.labels("sku").observe(time.perf_counter() - t0)
        return SearchResponse(
            query={"kind": "sku", "sku": sku, "k": k},
            count=len(hits),
            stale_index=engine.stale,
            results=[HitOut(**h.to_dict()) for h in hits],
        )

    @app.get(
        "/v1/products/{sku}/image", tags=["products"], response_class=FileResponse, responses=ERRORS
    )
    def product_image(sku: str, engine: Engine) -> FileResponse:
        p = engine.catalog.get(sku)
        path = engine.catalog.image_path(p.image_key)
        media = "image/png" if path.suffix == ".png" else "image/jpeg"
        return FileResponse(
            path, media_type=media, headers={"Cache-Control": "public, max-age=86400"}
        )

    @app.get("/v1/catalog", tags=["products"], responses=ERRORS)
    def catalog_info(engine: Engine) -> dict[str, Any]:
        return {
            "catalog": engine.catalog.name,
            "products": engine.catalog.count(),
            "categories": engine.catalog.categories(),
            "encoder": engine.image_build.encoder,
        }

    @app.post(
        "/v1/events",
        response_model=EventsResponse,
        tags=["personalization"],
        responses=ERRORS,
        dependencies=[require("write")],
    )
    def post_events(req: EventsRequest, engine: Engine) -> Any:
        """Store a batch of customer events (idempotent by ``event_id``; needs a write key).

        Each event is validated: unknown sku, bad type or a future timestamp is reported
        in ``rejected`` and not stored; valid events are stored in one transaction. When
        no event could be stored the answer is 422 with the same report.
        """
        if len(req.events) > settings.max_events_per_request:
            raise PayloadTooLargeError(
                f"at most {settings.max_events_per_request} events per request"
            )
        report = event_store(engine).add(req.events, strict=req.strict, source="api")
        body = report.to_dict()
        metrics.events.labels("accepted").inc(report.accepted)
        metrics.events.labels("duplicate").inc(report.duplicates)
        metrics.events.labels("rejected").inc(report.rejected_count)
        if report.accepted == 0 and report.rejected_count > 0:
            first = report.rejected[0]
            msg = f"no event stored: event {first.position}: {first.reason}"
            return JSONResponse(
                {"error": {"code": "invalid_input", "message": msg}, "report": body},
                status_code=422,
            )
        return body

    @app.get(
        "/v1/customers/{customer_id}/recommendations",
        response_model=RecommendationsResponse,
        tags=["personalization"],
        responses=ERRORS,
        dependencies=[read_key],
    )
    def customer_recommendations(
        customer_id: str, engine: Engine, k: Annotated[int, Query(ge=1, le=100)] = 10
    ) -> RecommendationsResponse:
        """Products for a customer, from their stored events at request time.

        A customer without events gets popular products, ``personalized: false`` and
        ``fallback: "popular"``. ``simulated`` is true for the simulator's customers.
        """
        if k > settings.max_k:
            raise InvalidInputError(f"k must be at most {settings.max_k}")
        t0 = time.perf_counter()
        recs = recs_state.get(engine)
        out = recs.for_customer(customer_id, k)
        metrics.search_seconds.labels("recommend").observe(time.perf_counter() - t0)
        return RecommendationsResponse(
            **{key: v for key, v in out.items() if key != "results"},
            model={key: recs.meta.get(key) for key in ("fitted_at", "events", "simulated")},
            count=len(out["results"]),
            results=recommended_out(out["results"]),
        )

    @app.get(
        "/v1/products/{sku}/complete-the-look",
        response_model=CompleteTheLookResponse,
        tags=["personalization"],
        responses=ERRORS,
        dependencies=[read_key],
    )
    def complete_the_look(
        sku: str, engine: Engine, k: Annotated[int, Query(ge=1, le=20)] = 4
    ) -> CompleteTheLookResponse:
        """Compatible products from other categories (learned from items bought together)."""
        out = recs_state.get(engine).complete_the_look(sku, k)
        return CompleteTheLookResponse(
            sku=out["sku"],
            category=out["category"],
            groups=[
                LookGroup(category=g["category"], results=recommended_out(g["results"]))
                for g in out["groups"]
            ],
        )

    app.state.recs = recs_state
    from shoplens.serve.ui import install_ui  # ui.py builds on this module

    install_ui(app)  # web pages and /static, after the API routes
    return app
