"""App factory: ``create_app(settings)`` builds the shoplens HTTP service.

Start-up (lifespan) opens the catalogue and loads its indexes in a background thread, so
``/healthz`` answers at once and ``/readyz`` turns 200 when search can be served. Torch
and FAISS work runs in the thread pool, never on the event loop.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from shoplens import __version__
from shoplens.errors import (
    InvalidInputError,
    NotReadyError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    ShoplensError,
)
from shoplens.search.engine import Filters, SearchEngine, product_image_url
from shoplens.serve.batching import (
    BatchingEncoder,
    BatchingIndex,
    DenseRankingBatcher,
    MicroBatcher,
)
from shoplens.serve.keys import KeyStore
from shoplens.serve.limits import api_key_from, install_edge, install_limits, read_upload
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
from shoplens.training.tracking import ModelVersionInfo

log = logging.getLogger("shoplens.serve")
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 409, 413, 422, 429, 503)
}


class ServiceState:
    """The served engine (or why there is none yet), guarded by a lock.

    With ``settings.model`` ("NAME@ALIAS") the engine serves that registered model's
    version and a watcher thread follows the alias: a new version is loaded (its
    catalogue index built first when missing) while the old one keeps serving, then the
    engine reference is swapped under the lock. A request takes the engine once
    (:meth:`get`) and finishes with it, so no request fails during a swap.
    """

    def __init__(self, settings: ServiceSettings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()  # one load / swap at a time
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._index_watcher: threading.Thread | None = None
        self.engine: SearchEngine | None = None
        self.error: str | None = None
        self.loading = False
        self.model: ModelVersionInfo | None = None  # the served registered version
        self.alias: str | None = None
        self.swaps = 0
        self.swap_error: str | None = None  # why the last alias change is not served
        self.building: str | None = None  # encoder spec whose index is being built
        self._failed: tuple[str, str, float] | None = None  # (version, source, when)
        self._tracker: Any = None

    # ---- loading -----------------------------------------------------------------------
    def load(self) -> None:
        """First load (in a background thread or at start-up); never raises."""
        with self._lock:
            self.loading = True
        try:
            if self.settings.model:
                self.refresh()
            else:
                self._install(self._open_engine(self.settings.encoder), None)
        except ShoplensError as e:
            with self._lock:
                self.error = e.message
            log.error("cannot load catalogue %s: %s", self.settings.catalog, e.message)
        except Exception as e:  # a bug, but the service must still say why it isn't ready
            log.exception("loading failed")
            with self._lock:
                self.error = f"loading failed: {e}"
        finally:
            with self._lock:
                self.loading = False

    def _registry(self) -> Any:
        if self._tracker is None:
            from shoplens.training.tracking import MlflowTracker

            self._tracker = MlflowTracker()
        return self._tracker

    def refresh(self) -> bool:
        """Serve the version the model alias points at now; True when it was swapped in.

        Loads (and when needed indexes) the new version completely before the swap; on
        failure the current engine stays and the reason is kept in ``swap_error``.
        """
        from shoplens.training.tracking import parse_model_ref

        assert self.settings.model
        name, alias = parse_model_ref(self.settings.model)
        with self._refresh_lock:
            info = self._registry().get_model_version_by_alias(name, alias)
            current = self.model
            if (
                self.engine is not None
                and current is not None
                and (current.version, current.source) == (info.version, info.source)
            ):
                return False
            failed = self._failed
            if (
                failed is not None
                and failed[:2] == (info.version, info.source)
                and time.monotonic() - failed[2] < max(60.0, 10 * self.settings.registry_poll_s)
            ):
                return False  # failed recently: retry later, not at every poll
            try:
                engine = self._open_engine(f"trained:{info.source_dir}")
            except Exception as e:
                self._failed = (info.version, info.source, time.monotonic())
                why = e.message if isinstance(e, ShoplensError) else f"{type(e).__name__}: {e}"
                with self._lock:
                    self.swap_error = f"{name}@{alias} version {info.version}: {why}"
                raise
            self._failed = None
            self._install(engine, info, alias)
            log.info("serving %s@%s version %s", name, alias, info.version)
            return True

    def _open_engine(self, spec: str | None) -> SearchEngine:
        """A loaded engine for ``spec`` (encoders wrapped for micro-batching)."""
        from shoplens.catalog.store import Catalog
        from shoplens.index.store import read_meta

        settings = self.settings
        _set_threads(settings)
        current = self.engine
        catalog = current.catalog if current is not None else Catalog.open(settings.catalog)
        try:
            if spec is not None and read_meta(catalog, spec) is None:
                self._build_index(spec)
            engine = SearchEngine(catalog, spec)
        except BaseException:
            if current is None:
                catalog.close()
            raise
        raw_text_encoder = getattr(engine, "text_encoder", None)
        raw_encoder = engine.encoder
        engine.encoder = self._wrap(engine.encoder)
        if raw_text_encoder is not None and engine.text_build is not None:
            engine.text_encoder = self._wrap(raw_text_encoder)
        if settings.faiss_threads is not None:
            for build in (engine.image_build, engine.text_build):
                if build is not None and hasattr(build.index, "_index"):  # a FAISS index
                    build.index = _ThreadLimitedIndex(build.index, settings.faiss_threads)
        if settings.batching:
            # a query's dense rankings (encoder passes and index searches) as one step: for
            # a text query in the order SearchEngine.text_rankings computes them
            signals: list[tuple[Any, Any]] = []
            if raw_text_encoder is not None and engine.text_build is not None:
                signals.append((raw_text_encoder, engine.text_build.index))
            if raw_encoder.shared_space:
                signals.append((raw_encoder, engine.image_build.index))
            threads = settings.faiss_threads

            def dense(signals: list[tuple[Any, Any]], modality: str) -> DenseRankingBatcher:
                return DenseRankingBatcher(
                    signals,
                    modality=modality,
                    max_batch=settings.batch_max_size,
                    max_wait_ms=settings.batch_max_wait_ms,
                    workers=settings.batch_workers,
                    on_encode=self.metrics.observe_encode if self.metrics is not None else None,
                    prepare=lambda: faiss_threads_here(threads),
                )

            if signals:
                engine.dense_text = dense(signals, "text")
            if "image" in raw_encoder.modalities:
                engine.dense_image = dense([(raw_encoder, engine.image_build.index)], "image")
            # the product page's concurrent searches by a stored vector share one image
            # index pass too; the text index needs no such wrapper: its unfiltered searches
            # run in dense_text, filtered ones bypass a BatchingIndex anyway
            engine.image_build.index = BatchingIndex(
                engine.image_build.index,
                max_batch=settings.batch_max_size,
                max_wait_ms=settings.batch_max_wait_ms,
                workers=settings.batch_workers,
            )
        return engine

    def _build_index(self, spec: str) -> None:
        """Index the catalogue for ``spec`` (its own connection; the default stays)."""
        from shoplens.catalog.store import Catalog
        from shoplens.index.build import build_image_index

        with self._lock:
            self.building = spec
        log.info("building the catalogue index for %s", spec)
        try:
            with Catalog.open(self.settings.catalog) as cat:
                default = cat.get_meta("default_encoder")
                build_image_index(cat, spec)
                if default is not None and default != spec:
                    cat.set_meta("default_encoder", default)  # serving is not choosing
        finally:
            with self._lock:
                self.building = None

    def _wrap(self, encoder: Any) -> Any:
        s = self.settings
        return BatchingEncoder(
            encoder,
            max_batch=s.batch_max_size,
            max_wait_ms=s.batch_max_wait_ms,
            workers=s.batch_workers,
            enabled=s.batching,
            on_encode=self.metrics.observe_encode if self.metrics is not None else None,
        )

    def _install(
        self,
        engine: SearchEngine,
        info: ModelVersionInfo | None,
        alias: str | None = None,
        *,
        swap: bool = True,
    ) -> None:
        with self._lock:
            old = self.engine
            self.engine, self.model, self.alias = engine, info, alias
            self.error = self.swap_error = None
            swap = swap and old is not None
            if swap:
                self.swaps += 1
        if self.metrics is not None:
            self.metrics.set_model(
                engine.image_build.encoder,
                info.name if info else "",
                info.version if info else "",
                alias or "",
            )
            self.metrics.index_size.set(engine.image_build.index.ntotal)
            self.metrics.ready.set(1)
            if swap:
                self.metrics.model_swaps.inc()
        if old is not None:
            # Requests still running with the old engine finish with it: its encoders
            # answer directly once their batchers are closed.
            _close_encoders(old)
        freeze_heap(self.settings)

    # ---- following the alias -------------------------------------------------------------
    def start_watching(self) -> None:
        """Poll the model alias every ``registry_poll_s`` and the served indexes' builds
        every ``index_poll_s``, each in a daemon thread."""
        if self.settings.index_poll_s and self._index_watcher is None:
            self._index_watcher = threading.Thread(
                target=self._follow_index, name="shoplens-index", daemon=True
            )
            self._index_watcher.start()
        if not self.settings.model or self._watcher is not None:
            return
        self._watcher = threading.Thread(target=self._watch, name="shoplens-registry", daemon=True)
        self._watcher.start()

    def _follow_index(self) -> None:
        """Reload when another build became ``current`` (``shoplens index build`` in any
        process): every worker process of a service picks it up by itself."""
        last = None  # log a failure once, not at every poll
        while not self._stop.wait(self.settings.index_poll_s):
            engine = self.engine
            if engine is None or not _index_moved(engine):
                continue
            try:
                self.reload()
                log.info("loaded the new index build of catalogue %s", engine.catalog.name)
                last = None
            except Exception as e:
                why = e.message if isinstance(e, ShoplensError) else f"{type(e).__name__}: {e}"
                if why != last:
                    log.warning("loading the new index build failed: %s", why)
                last = why

    def _watch(self) -> None:
        last = None  # log a failure once, not at every poll
        while not self._stop.wait(self.settings.registry_poll_s):
            try:
                self.refresh()
                last = None
            except ShoplensError as e:
                if e.message != last:
                    log.warning("model %s: %s", self.settings.model, e.message)
                last = e.message
                if self.engine is None:
                    with self._lock:
                        self.error = e.message
            except Exception as e:
                if str(e) != last:
                    log.exception("checking model %s failed", self.settings.model)
                last = str(e)

    def reload(self) -> SearchEngine:
        """Load the served encoder's index from disk again (after ``shoplens index build``).

        The old engine serves until the new one is loaded, as in a model swap.
        """
        with self._refresh_lock:
            current = self.get()
            spec = f"trained:{self.model.source_dir}" if self.model else current.image_build.encoder
            engine = self._open_engine(spec)
            self._install(engine, self.model, self.alias, swap=False)
        return engine

    def close(self) -> None:
        """Stop the watcher and the batchers (at shutdown)."""
        self._stop.set()
        for watcher in (self._watcher, self._index_watcher):
            if watcher is not None:
                watcher.join(timeout=30)
        if self.engine is not None:
            _close_encoders(self.engine)

    # ---- serving -------------------------------------------------------------------------
    def get(self) -> SearchEngine:
        with self._lock:
            if self.engine is not None:
                return self.engine
            why = self.error or (
                f"building the index for {self.building}" if self.building else None
            )
            why = why or "the index is still loading"
        raise ServiceUnavailableError(f"service not ready: {why}")

    def describe_model(self) -> dict[str, Any] | None:
        """The served registered model (None when serving a plain encoder spec)."""
        with self._lock:
            info, alias = self.model, self.alias
            swaps, swap_error, building = self.swaps, self.swap_error, self.building
        if info is None:
            return None
        return {
            "name": info.name,
            "version": info.version,
            "alias": alias,
            "run_id": info.run_id,
            "swaps": swaps,
            "pending": swap_error or (f"building the index for {building}" if building else None),
        }


def _index_moved(engine: SearchEngine) -> bool:
    """True when an index of ``engine`` has another ``current`` build than the loaded one."""
    for build in (engine.image_build, getattr(engine, "text_build", None)):
        if build is None:
            continue
        try:  # builds live in ROOT/builds/ID, and ROOT/current links to the served one
            now = (build.path.parent.parent / "current").resolve(strict=True)
        except OSError:
            continue
        if now != build.path:
            return True
    return False


def freeze_heap(settings: ServiceSettings | None) -> None:
    """Collect once, then move every object alive now out of the cyclic garbage
    collector's generations (``gc.freeze``), when ``settings.gc_freeze``.

    A loaded catalogue index with its recommender is hundreds of thousands of tracked
    objects (~640,000 for the 70,000-product demo): a full collection over them holds the
    GIL for ~0.4 s and stalls every request. Run after each load (rare); objects that
    requests allocate are collected as usual. ``gc.unfreeze()`` at shutdown.
    """
    if settings is None or not settings.gc_freeze:
        return
    gc.unfreeze()  # what an earlier load froze and has since been dropped can go now
    gc.collect()
    gc.freeze()


def _close_encoders(engine: SearchEngine) -> None:
    for attr in ("encoder", "text_encoder", "dense_text", "dense_image"):
        enc = getattr(engine, attr, None)
        if isinstance(enc, BatchingEncoder | DenseRankingBatcher):
            enc.close()
    for build in (engine.image_build, getattr(engine, "text_build", None)):
        if build is not None and isinstance(build.index, BatchingIndex):
            build.index.close()


class ObserveMiddleware:
    """Request count and latency per route in /metrics, and the service's own time in a
    ``Server-Timing: app;dur=MS`` header (from the request reaching this middleware to
    the response starting).

    Pure ASGI: ``@app.middleware("http")`` (Starlette's BaseHTTPMiddleware) costs an
    extra task and a response stream per request on the event loop's thread.
    """

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def send_observed(message: Any) -> None:
            if message["type"] == "http.response.start":
                seconds = time.perf_counter() - start
                path = getattr(scope.get("route"), "path", "unmatched")  # set by the router
                method = scope["method"]
                self.metrics.requests.labels(method, path, str(message["status"])).inc()
                self.metrics.latency.labels(method, path).observe(seconds)
                MutableHeaders(scope=message).append(
                    "Server-Timing", f"app;dur={seconds * 1000:.2f}"
                )
            await send(message)

        await self.app(scope, receive, send_observed)


def _set_threads(settings: ServiceSettings) -> None:
    """Threads per torch call, BLAS (numpy) call and FAISS call in this process, and
    the batch size from which exact FAISS search uses BLAS.

    torch and OpenBLAS keep one process-wide setting. FAISS's OpenMP setting belongs to
    the thread that makes it, so request threads make it themselves
    (:class:`_ThreadLimitedIndex`).
    """
    if settings.torch_threads is not None:
        import torch

        torch.set_num_threads(settings.torch_threads)
    if settings.faiss_blas_threshold is not None:
        import faiss

        faiss.cvar.distance_compute_blas_threshold = settings.faiss_blas_threshold
    if settings.faiss_threads is not None:
        import faiss

        faiss.omp_set_num_threads(settings.faiss_threads)
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - installed with the recommenders
            return
        threadpool_limits(settings.faiss_threads, user_api="blas")


_thread_settings = threading.local()


def faiss_threads_here(threads: int | None) -> None:
    """Give FAISS ``threads`` OpenMP threads in the calling thread (an OpenMP setting
    belongs to the thread that makes it; None: leave it)."""
    if threads is None or getattr(_thread_settings, "faiss", None) == threads:
        return
    import faiss

    faiss.omp_set_num_threads(threads)
    _thread_settings.faiss = threads


class _ThreadLimitedIndex:
    """A FAISS index whose searches run with ``threads`` OpenMP threads in any thread."""

    def __init__(self, index: Any, threads: int) -> None:
        self.index = index
        self.threads = threads

    def search(self, vectors: Any, k: int, allowed_ids: Any = None) -> Any:
        faiss_threads_here(self.threads)
        return self.index.search(vectors, k, allowed_ids)

    def __getattr__(self, name: str) -> Any:
        if name == "index":
            raise AttributeError(name)
        return getattr(self.index, name)


class RecsState:
    """The catalogue's recommender build, loaded on first use and reloaded when a newer
    build is published (``shoplens recommend fit`` while the service runs)."""

    def __init__(
        self, settings: ServiceSettings | None = None, metrics: Metrics | None = None
    ) -> None:
        self._lock = threading.Lock()
        self.recs: Any = None  # shoplens.personalize.service.Recommendations
        self.settings = settings
        self.metrics = metrics

    def _open(self, catalog: Any) -> Any:
        """The build, with concurrent requests micro-batched into one ranker pass when
        the service batches (``SHOPLENS_BATCHING``; same max batch and wait as encoders)."""
        from shoplens.personalize.service import Recommendations

        recs = Recommendations(catalog)
        s = self.settings
        if s is not None and s.batching and recs.can_batch:
            threads = s.faiss_threads

            def rank(requests: list[Any]) -> list[dict[str, Any]]:
                faiss_threads_here(threads)  # the batcher's own thread too (IVF candidates)
                return list(recs.rank_many(requests))

            recs.batcher = MicroBatcher(
                rank,
                max_batch=s.batch_max_size,
                max_wait_ms=s.batch_max_wait_ms,
                on_batch=self.metrics.observe_recommend if self.metrics is not None else None,
                name="shoplens-recs-batcher",
                workers=s.batch_workers if s.recs_batch_workers is None else s.recs_batch_workers,
            )
        freeze_heap(s)
        return recs

    def get(self, engine: SearchEngine) -> Any:
        from shoplens.personalize.service import recs_root

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
            old, self.recs = self.recs, self._open(engine.catalog)
        if old is not None:
            old.close()
        return self.recs

    def describe(self) -> dict[str, Any] | None:
        """The loaded recommender build (None until the first recommendation request)."""
        recs = self.recs
        if recs is None:
            return None
        return {"build": recs.path.name, "candidates": recs.candidates}


def api_key(request: Request) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or ``X-API-Key``."""
    return api_key_from(request.headers)


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
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
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
    metrics = Metrics()
    state = ServiceState(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        def load_then_watch() -> None:
            state.load()
            state.start_watching()

        if settings.load_in_background:
            threading.Thread(target=load_then_watch, name="shoplens-load", daemon=True).start()
        else:
            await run_in_threadpool(load_then_watch)
        try:
            yield
        finally:
            await run_in_threadpool(state.close)
            if settings.gc_freeze:
                gc.unfreeze()

    app = FastAPI(
        title="shoplens",
        version=__version__,
        lifespan=lifespan,
        description="Visual and text search over a retail catalogue.",
    )
    app.state.shoplens = state
    app.state.metrics = metrics
    app.state.keys = KeyStore()
    recs_state = RecsState(settings, metrics)
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
                image_url=product_image_url(r.product.sku),
            )
            for r in recs
        ]

    _install_handlers(app)

    def key_identity(key: str) -> str | None:
        """Rate-limit identity of a live key (any scope); None: limit by address."""
        try:
            return f"key:{app.state.keys.authenticate(key, 'read').id}"
        except ShoplensError:
            return None

    def ui_error_page(scope: Any, status: int, message: str) -> Response | None:
        """The web UI's HTML error page on UI paths; None (a JSON error) elsewhere."""
        from shoplens.serve.ui import error_page, is_ui_request

        request = Request(scope)
        return error_page(request, status, message) if is_ui_request(request) else None

    install_limits(app, settings, key_identity, ui_error_page)  # inside `observe`

    app.add_middleware(ObserveMiddleware, metrics=metrics)

    install_edge(app, settings)  # CORS, security headers, trusted proxies: outermost

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
            "model": state.describe_model(),
            "batching": settings.batching,
            "recommendations": recs_state.describe(),
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
        limit = settings.max_upload_bytes  # the whole body: RequestSizeLimitMiddleware
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=20)
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise InvalidInputError("multipart search needs a file field 'image'")
            data = await read_upload(upload, limit, f"image upload over {limit} bytes")
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
        return ProductOut(**p.to_dict(), image_url=product_image_url(sku))

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
        # 422 when the request stored nothing and had bad events; a retry whose good events
        # were all stored before (duplicates) is answered 200 with the rejects listed
        nothing = report.accepted == 0 and (req.strict or report.duplicates == 0)
        if nothing and report.rejected_count > 0:
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
        faiss_threads_here(settings.faiss_threads)  # the candidates' IVF searches
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
    from shoplens.serve.admin import router as admin_router  # builds on this module
    from shoplens.serve.generate_routes import install_generate_routes
    from shoplens.serve.ui import install_ui  # ui.py builds on this module

    app.include_router(admin_router)  # POST /v1/products, model promote, index reload
    install_generate_routes(app)  # POST /v1/generate and the /generate page
    install_ui(app)  # web pages and /static, after the API routes
    from shoplens.serve.workers import WorkerHeaderMiddleware

    app.add_middleware(WorkerHeaderMiddleware)  # outermost: on every response
    return app
