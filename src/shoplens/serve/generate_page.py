"""The ``/generate`` web page: a plain form POST (no JavaScript needed) that shows the
images with alt text and a visible "generated" label, and links to their PNGs.

Without a model the page says politely how to set generation up. The form checks its
fields itself (errors tied to their field, values kept); the API key is checked like the
API's (write scope). Results stay downloadable for a while (:meth:`GenerateService.keep`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from shoplens.errors import (
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    ServiceUnavailableError,
    UnauthorizedError,
)
from shoplens.serve.generate_routes import (
    BUSY_RETRY_AFTER_S,
    GenerateRequest,
    GenerateService,
    Generation,
    GeneratorBusyError,
    NoGeneratorError,
)
from shoplens.serve.settings import ServiceSettings

if TYPE_CHECKING:
    from shoplens.generate.pipeline import Generator

FIELDS = ("prompt", "category", "customer", "n", "guidance", "steps", "seed", "api_key")
PAGE_DEFAULTS = {"n": "8", "guidance": "3", "steps": "50", "seed": "0"}
NO_STORE = {"Cache-Control": "no-store"}  # the form echoes the API key
page = APIRouter(include_in_schema=False)


@dataclass
class Shown:
    """One generated image as the page shows it."""

    url: str
    alt: str
    seed: int


def describe_request(prompt: str, category: str, customer: str) -> str:
    """``'ankle boot, category Ankle boot, for customer c-1's taste'`` (what was asked)."""
    subject = prompt or (category.lower() if category else "any product")
    if prompt and category:
        subject += f", category {category}"
    return subject + (f", for customer {customer}'s taste" if customer else "")


def _number(
    form: dict[str, str], key: str, low: float, high: float, errors: dict[str, str], *, what: str
) -> float:
    """``form[key]`` as a number in [low, high]; an error message for the field otherwise."""
    text = form[key].strip()
    integer = key != "guidance"
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        errors[key] = (
            f"Enter {what} as {kind} from {low:g} to {high:g}, for example {PAGE_DEFAULTS[key]}."
        )
        return low
    if not low <= value <= high:  # NaN fails too
        errors[key] = f"Enter {what} from {low:g} to {high:g} (this is {text})."
    return value


def _check_form(
    form: dict[str, str], gen: Generator, settings: ServiceSettings
) -> tuple[GenerateRequest | None, dict[str, str]]:
    """The request the form asks for, or field id -> error message."""
    errors: dict[str, str] = {}
    prompt, category, customer = (form[k].strip() for k in ("prompt", "category", "customer"))
    if len(prompt) > 500:
        errors["prompt"] = f"Use at most 500 characters (this has {len(prompt)})."
    if category and category not in gen.categories:
        errors["category"] = (
            f"There is no category '{category[:60]}'. Choose one of: "
            f"{', '.join(gen.categories)}, or Any category."
        )
    if len(customer) > 128:
        errors["customer"] = "Use at most 128 characters for a customer id."
    n = _number(form, "n", 1, settings.generate_max_n, errors, what="the number of images")
    guidance = _number(form, "guidance", 0, 20, errors, what="the guidance")
    steps = _number(form, "steps", 1, settings.generate_max_steps, errors, what="the steps")
    seed = _number(form, "seed", 0, 2**32 - 1, errors, what="the seed")
    if errors:
        return None, errors
    return GenerateRequest(
        prompt=prompt or None,
        category=category or None,
        customer=customer or None,
        n=int(n),
        guidance=guidance,
        steps=int(steps),
        seed=int(seed),
    ), {}


def _render(
    request: Request,
    *,
    values: dict[str, str],
    gen: Generator | None = None,
    errors: dict[str, str] | None = None,
    form_error: str = "",
    result: Generation | None = None,
    status: int = 200,
) -> HTMLResponse:
    from shoplens.serve.ui import templates

    settings: ServiceSettings = request.app.state.shoplens.settings
    errors = errors or {}
    shown: list[Shown] = []
    summary = ""
    if result is not None:
        asked = describe_request(*(values[k].strip() for k in ("prompt", "category", "customer")))
        n = len(result.images)
        for i, g in enumerate(result.images, 1):
            url = f"/generate/results/{result.token}/{i}.png"
            shown.append(Shown(url, f"Generated image {i} of {n}: {asked}, seed {g.seed}", g.seed))
        images = "1 image" if n == 1 else f"{n} images"
        seeds = f"seed {shown[0].seed}" if n == 1 else f"seeds {shown[0].seed} to {shown[-1].seed}"
        summary = f"Generated {images} of {asked} ({seeds}) in {result.seconds:.1f} seconds."
    failed = bool(errors or form_error)
    heading = "Generate product images"
    context = {
        "title": ("Error: " if failed else "") + heading,
        "heading": heading,
        "no_model": gen is None,
        "categories": gen.categories if gen is not None else [],
        "values": values,
        "errors": errors,
        "first_error": next(iter(errors), None),
        "form_error": form_error,
        "summary": summary,
        "shown": shown,
        "grid_url": f"/generate/results/{result.token}/grid.png" if result else "",
        "max_n": settings.generate_max_n,
        "max_steps": settings.generate_max_steps,
    }
    headers = dict(NO_STORE)
    if status == 503:
        headers["Retry-After"] = str(BUSY_RETRY_AFTER_S)
    return templates.TemplateResponse(
        request, "generate.html", context, status_code=status, headers=headers
    )


@page.get("/generate", response_class=HTMLResponse)
async def generate_form(request: Request) -> HTMLResponse:
    """The form (or, without a model, how to set generation up)."""
    values = {k: PAGE_DEFAULTS.get(k, "") for k in FIELDS}
    service: GenerateService = request.app.state.generate
    try:
        gen = await run_in_threadpool(service.generator)
    except NoGeneratorError:
        return _render(request, values=values)
    return _render(request, values=values, gen=gen)


@page.post("/generate", response_class=HTMLResponse)
async def generate_submit(request: Request) -> HTMLResponse:
    """Generate from the form (a plain POST: works without JavaScript)."""
    form = await request.form(max_files=0, max_fields=20)
    values = {k: v if isinstance(v := form.get(k), str) else "" for k in FIELDS}
    service: GenerateService = request.app.state.generate
    try:
        gen = await run_in_threadpool(service.generator)
    except NoGeneratorError:
        return _render(request, values=values, status=503)
    req, errors = _check_form(values, gen, service.settings)
    status = 400
    try:
        request.app.state.keys.authenticate(values["api_key"].strip() or None, "write")
    except (UnauthorizedError, ForbiddenError) as e:
        status = e.http_status if not errors else 400
        errors["api_key"] = (
            "Enter an API key with write access."
            if not values["api_key"].strip()
            else "This key cannot generate images: "
            + ("it needs write access." if isinstance(e, ForbiddenError) else "it is not valid.")
        )
        values["api_key"] = ""  # never echo a key that does not work
    if req is None or errors:
        return _render(request, values=values, gen=gen, errors=errors, status=status)
    try:
        result = await run_in_threadpool(service.run, req)
    except NoGeneratorError:
        return _render(request, values=values, status=503)
    except GeneratorBusyError:
        busy = (
            "The image generator is busy with other requests. "
            f"Try again in {BUSY_RETRY_AFTER_S} seconds."
        )
        return _render(request, values=values, gen=gen, form_error=busy, status=503)
    except NotFoundError:
        errors["customer"] = (
            f"No events are stored for customer '{values['customer'].strip()[:60]}'. "
            "Check the id, or leave this empty."
        )
        return _render(request, values=values, gen=gen, errors=errors, status=404)
    except ServiceUnavailableError:
        errors["customer"] = (
            "Customer tastes are still loading. Try again soon, or leave this empty."
        )
        return _render(request, values=values, gen=gen, errors=errors, status=503)
    except InvalidInputError as e:
        return _render(request, values=values, gen=gen, form_error=e.message, status=400)
    service.keep(result)
    return _render(request, values=values, gen=gen, result=result)


@page.get("/generate/results/{token}/{name}")
def generated_png(request: Request, token: str, name: str) -> Response:
    """A generated image (``1.png`` ...) or the grid (``grid.png``) of a page result."""
    result: Generation = request.app.state.generate.result(token)
    stem = name.removesuffix(".png")
    if stem == "grid":
        data = result.grid_png
    elif stem.isdigit() and 1 <= int(stem) <= len(result.images) and name.endswith(".png"):
        data = result.images[int(stem) - 1].png_bytes()
    else:
        raise NotFoundError(f"no generated image {name[:40]!r}")
    return Response(
        data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"}
    )
