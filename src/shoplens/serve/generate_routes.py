"""Image generation over HTTP: ``POST /v1/generate`` and the ``/generate`` web page.

Both run :meth:`shoplens.generate.pipeline.Generator.generate` in the thread pool, at most
``generate_concurrency`` at once: a request that finds every slot taken waits up to
``generate_wait_s`` and then gets 503 with ``Retry-After``, so none hangs. The model
(setting ``generator``) is loaded on first use and cached; without one the API answers
503 ``no_model`` and the page says how to train one. Everything generated says so:
``"generated": true`` in JSON, provenance tEXt chunks in every PNG (the grid too), a
visible label and alt text on the page. Nothing generated is stored in a catalogue.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from shoplens.config import runs_dir, shoplens_home
from shoplens.errors import (
    InvalidInputError,
    NotFoundError,
    ServiceUnavailableError,
    ShoplensError,
)
from shoplens.generate import PROVENANCE_KEY
from shoplens.serve.app import ERRORS, require
from shoplens.serve.settings import ServiceSettings

if TYPE_CHECKING:
    from shoplens.generate.pipeline import GeneratedImage, Generator
    from shoplens.serve.metrics import Metrics

log = logging.getLogger("shoplens.serve")
DEFAULT_MODEL = "fm-diffusion"
TRAIN_HINT = "train one with `shoplens train --config fmnist-diffusion`"
RETRY_LOAD_S = 10.0  # a missing model is looked for again after this long
BUSY_RETRY_AFTER_S = 5
RESULTS_KEPT = 32  # page results whose PNGs stay downloadable (the oldest go first)
RESULTS_TTL_S = 3600.0
Scheduler = Literal["ddim", "dpm", "ddpm"]


class NoGeneratorError(ServiceUnavailableError):
    """No diffusion model to generate with (none trained, or it cannot be loaded)."""

    code = "no_model"


class GeneratorBusyError(ServiceUnavailableError):
    """Every generation slot stayed taken for ``generate_wait_s``."""

    code = "busy"


# ---- request and response ------------------------------------------------------------------
class GenerateRequest(BaseModel):
    """What to generate: a prompt, a category and/or a customer's taste (all optional)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(default=None, max_length=500, examples=["ankle boot"])
    category: str | None = Field(default=None, max_length=200, examples=["Ankle boot"])
    customer: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="A customer id: images follow the taste pooled from their stored events.",
    )
    n: int = Field(
        default=4, ge=1, description="Images to make (at most the service's generate_max_n)."
    )
    guidance: float = Field(
        default=3.0, ge=0.0, le=20.0, description="Classifier-free guidance scale."
    )
    steps: int = Field(default=50, ge=1, description="Sampling steps (at most generate_max_steps).")
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="Image i uses seed + i.")
    scheduler: Scheduler = "ddpm"
    init_image: str | None = Field(
        default=None, description="Base64 image to start from (image-to-image, SDEdit)."
    )
    strength: float = Field(
        default=0.6, ge=0.0, le=1.0, description="How much of init_image to redo."
    )
    mask: str | None = Field(
        default=None,
        description="Base64 mask, same size as init_image: white pixels are regenerated, the "
        "others are returned unchanged.",
    )


class GeneratedOut(BaseModel):
    seed: int
    png_base64: str = Field(description="PNG with provenance tEXt chunks.")
    info: dict[str, str]


class GenerateResponse(BaseModel):
    generated: bool = Field(default=True, description="Always true: these are not product photos.")
    model: dict[str, Any]
    count: int
    seconds: float
    images: list[GeneratedOut]
    grid_png_base64: str


@dataclass
class Generation:
    """One finished request: its images, the grid PNG and which model made them."""

    images: list[GeneratedImage]
    grid_png: bytes
    model: dict[str, Any]
    seconds: float
    token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    created: float = field(default_factory=time.monotonic)


def decode_b64_image(data: str, what: str, max_bytes: int) -> Image.Image:
    """A base64 (or data: URL) image, decoded with the upload safety limits."""
    from shoplens.data.images import decode_image

    payload = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"{what} is not valid base64") from None
    return decode_image(raw, source=what, max_bytes=max_bytes)


def grid_png(images: list[GeneratedImage]) -> bytes:
    """The images side by side (``make_grid``) as a PNG with their shared provenance."""
    from shoplens.generate.pipeline import make_grid

    grid = make_grid([g.image for g in images])
    meta = PngInfo()
    info = dict(images[0].info)
    info["seed"] = f"{images[0].seed}..{images[-1].seed}"
    info["images"] = str(len(images))
    for key, value in info.items():
        meta.add_text(key, value)
    meta.add_text(PROVENANCE_KEY, "true")
    buf = io.BytesIO()
    grid.save(buf, format="PNG", pnginfo=meta)
    return buf.getvalue()


def default_generator_spec() -> str:
    """``fm-diffusion@champion`` when the registry has it, else ``runs/fm-diffusion/model``."""
    if os.environ.get("SHOPLENS_TRACKING_URI") or (shoplens_home() / "mlflow.db").is_file():
        from shoplens.training.tracking import MlflowTracker

        try:
            MlflowTracker().get_model_version_by_alias(DEFAULT_MODEL, "champion")
            return f"{DEFAULT_MODEL}@champion"
        except NotFoundError:
            pass
    return str(runs_dir() / DEFAULT_MODEL / "model")


# ---- the shared engine of the API and the page ----------------------------------------------
class GenerateService:
    """The lazily loaded generator, the generation slots and recent page results."""

    def __init__(self, settings: ServiceSettings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.slots = threading.BoundedSemaphore(settings.generate_concurrency)
        self._lock = threading.Lock()
        self._generator: Generator | None = None
        self.spec: str | None = None
        self._failed: tuple[str, float] | None = None  # (why, when)
        self._results: OrderedDict[str, Generation] = OrderedDict()

    def generator(self) -> Generator:
        """The loaded generator (NoGeneratorError, retried after RETRY_LOAD_S, when none)."""
        with self._lock:
            if self._generator is not None:
                return self._generator
            if self._failed and time.monotonic() - self._failed[1] < RETRY_LOAD_S:
                raise NoGeneratorError(self._failed[0])
            try:
                from shoplens.generate.pipeline import Generator

                spec = self.settings.generator or default_generator_spec()
                gen = Generator.load(spec)
            except Exception as e:
                if isinstance(e, ShoplensError):
                    why = e.message
                else:
                    log.exception("loading the diffusion model failed")
                    why = f"{type(e).__name__}: {e}"
                hint = "" if "shoplens train" in why else f"; {TRAIN_HINT}"
                msg = f"no diffusion model to generate with: {why}{hint}"
                self._failed = (msg, time.monotonic())
                raise NoGeneratorError(msg) from None
            self._generator, self.spec, self._failed = gen, spec, None
            log.info("generating with %s (%s)", gen.name, spec)
            return gen

    def describe(self, gen: Generator) -> dict[str, Any]:
        return {"name": gen.name, "spec": self.spec, "cond_encoder": gen.cond_encoder}

    def check_bounds(self, n: int, steps: int) -> None:
        """The service's limits, stricter than the library's (InvalidInputError)."""
        s = self.settings
        if not 1 <= n <= s.generate_max_n:
            raise InvalidInputError(f"n must be 1 to {s.generate_max_n} images, got {n}")
        if not 1 <= steps <= s.generate_max_steps:
            raise InvalidInputError(f"steps must be 1 to {s.generate_max_steps}, got {steps}")

    def customer_taste(self, customer: str, gen: Generator) -> np.ndarray:
        """(E,) the taste of ``customer`` in the served catalogue, computed like
        ``shoplens generate --customer`` does (NotFoundError for an unknown customer)."""
        from shoplens.catalog.store import Catalog
        from shoplens.generate.cli import customer_taste

        try:
            Catalog.open(self.settings.catalog).close()
        except NotFoundError as e:
            raise ServiceUnavailableError(
                f"customer tastes are not available: {e.message}"
            ) from None
        return customer_taste(self.settings.catalog, customer, gen.cond_encoder)

    def run(self, req: GenerateRequest) -> Generation:
        """Generate for ``req`` (blocking: call it in the thread pool)."""
        self.check_bounds(req.n, req.steps)
        limit = self.settings.max_upload_bytes
        init = decode_b64_image(req.init_image, "init_image", limit) if req.init_image else None
        mask = decode_b64_image(req.mask, "mask", limit) if req.mask else None
        gen = self.generator()
        if not self.slots.acquire(timeout=self.settings.generate_wait_s):
            self._observe("busy", 0.0, 0)
            raise GeneratorBusyError(
                "the image generator is busy with other requests; "
                f"try again in {BUSY_RETRY_AFTER_S} seconds"
            )
        t0 = time.perf_counter()
        try:
            taste = self.customer_taste(req.customer, gen) if req.customer is not None else None
            images = gen.generate(
                n=req.n,
                prompt=req.prompt,
                category=req.category,
                taste=taste,
                customer=req.customer,
                guidance=req.guidance,
                steps=req.steps,
                seed=req.seed,
                scheduler=req.scheduler,
                init_image=init,
                strength=req.strength,
                mask=mask,
            )
        except ShoplensError:
            self._observe("invalid", time.perf_counter() - t0, 0)
            raise
        finally:
            self.slots.release()
        seconds = time.perf_counter() - t0
        self._observe("ok", seconds, len(images))
        return Generation(images, grid_png(images), self.describe(gen), seconds)

    def _observe(self, outcome: str, seconds: float, images: int) -> None:
        if self.metrics is not None:
            self.metrics.observe_generate(outcome, seconds, images)

    # ---- page results (their PNGs are fetched by the browser after the page) ---------------
    def keep(self, result: Generation) -> None:
        with self._lock:
            self._results[result.token] = result
            while len(self._results) > RESULTS_KEPT:
                self._results.popitem(last=False)

    def result(self, token: str) -> Generation:
        with self._lock:
            found = self._results.get(token)
        if found is None or time.monotonic() - found.created > RESULTS_TTL_S:
            raise NotFoundError("these generated images are no longer kept; generate them again")
        return found


def _wants_png(accept: str) -> bool:
    """True when ``Accept`` prefers image/png over JSON."""
    q: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        weight = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    weight = float(p[2:])
                except ValueError:
                    weight = 0.0
        q[media.lower()] = max(weight, q.get(media.lower(), 0.0))
    png = q.get("image/png", 0.0)
    return png > 0 and png > max(q.get("application/json", 0.0), q.get("*/*", 0.0) - 1e-9)


def _busy(e: ServiceUnavailableError) -> JSONResponse:
    headers = {"Retry-After": str(BUSY_RETRY_AFTER_S)} if isinstance(e, GeneratorBusyError) else {}
    return JSONResponse(e.to_dict(), status_code=503, headers=headers)


api = APIRouter(tags=["generation"])


@api.post(
    "/v1/generate",
    response_model=GenerateResponse,
    responses={
        **ERRORS,
        200: {"content": {"image/png": {}}, "description": "JSON, or the grid PNG"},
    },
    dependencies=[require("write")],
)
async def generate(req: GenerateRequest, request: Request) -> Any:
    """Generate images (needs a write key). ``Accept: image/png`` returns the grid PNG.

    Every PNG carries provenance tEXt chunks (model, seed, prompt, ...,
    ``shoplens:generated``); generated images are never added to a catalogue.
    """
    service: GenerateService = request.app.state.generate
    try:
        result = await run_in_threadpool(service.run, req)
    except (NoGeneratorError, GeneratorBusyError) as e:
        return _busy(e)
    if _wants_png(request.headers.get("accept", "")):
        return Response(
            result.grid_png,
            media_type="image/png",
            headers={"Content-Disposition": 'inline; filename="generated-grid.png"'},
        )
    return GenerateResponse(
        model=result.model,
        count=len(result.images),
        seconds=round(result.seconds, 3),
        images=[
            GeneratedOut(
                seed=g.seed, png_base64=base64.b64encode(g.png_bytes()).decode(), info=g.info
            )
            for g in result.images
        ],
        grid_png_base64=base64.b64encode(result.grid_png).decode(),
    )


def install_generate_routes(app: FastAPI) -> None:
    """Add ``POST /v1/generate``, the ``/generate`` page and its images to ``app``."""
    from shoplens.serve.generate_page import page

    state = app.state.shoplens
    app.state.generate = GenerateService(state.settings, state.metrics)
    app.include_router(api)
    app.include_router(page)  # the /generate web page (generate_page.py)
