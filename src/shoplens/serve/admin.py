"""Write routes beside search: add products, promote a model version, reload the index.

Each needs an API key with scope ``write`` (``admin`` for the index reload).

``POST /v1/products`` goes through the catalogue's own ingest (:mod:`shoplens.catalog.
ingest`): the products are checked like manifest rows, their photos fetched (the
SSRF-guarded fetcher) or base64-decoded and decoded under the image limits, all before
anything is stored; then one transaction adds them. New products are not in the loaded
index: ``shoplens index build --catalog NAME`` and ``POST /v1/index/reload`` (or a
restart) make them searchable.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from shoplens.errors import InvalidInputError, PayloadTooLargeError, ShoplensError
from shoplens.serve.app import ERRORS, Engine, _validation_message, require
from shoplens.serve.schemas import (
    ProductIn,
    ProductRejection,
    ProductsRequest,
    ProductsResponse,
    PromoteRequest,
    PromoteResponse,
    ReloadResponse,
)

router = APIRouter()
FETCH_CONCURRENCY = 8
FETCH_TIMEOUT_S = 10.0
LINE_RE = re.compile(r"\bon line (\d+)")  # manifest messages name lines; products positions


class ProductsRejectedError(InvalidInputError):
    """Nothing stored: the products' problems, by position."""

    def __init__(self, message: str, rejected: list[ProductRejection]) -> None:
        super().__init__(message)
        self.rejected = rejected


def _image_bytes(products: dict[int, ProductIn], max_bytes: int) -> dict[int, bytes | str]:
    """Each product's photo file (downloaded or base64-decoded, then checked) or why not."""
    from shoplens.data.images import decode_image
    from shoplens.data.urls import fetch_many

    out: dict[int, bytes | str] = {}
    urls = {i: p.image for i, p in products.items() if p.image}
    fetched = fetch_many(
        list(urls.values()),
        concurrency=FETCH_CONCURRENCY,
        timeout=FETCH_TIMEOUT_S,
        retries=1,
        max_bytes=max_bytes,
    )
    for i, got in zip(urls, fetched, strict=True):
        out[i] = got.message if isinstance(got, ShoplensError) else got
    for i, p in products.items():
        if p.image_base64 is None:
            continue
        if len(p.image_base64) > 4 * (max_bytes // 3 + 1):
            out[i] = f"image_base64 is over the limit of {max_bytes:,} bytes"
            continue
        try:
            out[i] = base64.b64decode(p.image_base64, validate=True)
        except (binascii.Error, ValueError):
            out[i] = "image_base64 is not valid base64"
    for i, data in out.items():
        if isinstance(data, bytes):
            try:
                decode_image(data, source=f"the photo of product {i}", max_bytes=max_bytes)
            except ShoplensError as e:
                out[i] = e.message
    return out


def ingest_products(
    catalog: str, root: Path, raw: list[dict[str, Any]], *, strict: bool, max_image_bytes: int
) -> dict[str, Any]:
    """Add ``raw`` products to catalogue ``catalog`` (whose folder is ``root``).

    Every product is checked (fields, sku and attribute rules of manifests, the photo)
    before anything is stored. ``strict``: any rejection stores nothing
    (:class:`ProductsRejectedError`); else the good ones are stored in one transaction.
    """
    from shoplens.catalog.ingest import ingest_manifest
    from shoplens.data.manifest import read_manifest

    rejected: dict[int, ProductRejection] = {}
    valid: dict[int, ProductIn] = {}
    for i, item in enumerate(raw):
        sku = item.get("sku") if isinstance(item.get("sku"), str) else None
        try:
            p = ProductIn.model_validate(item)
        except ValidationError as e:
            rejected[i] = ProductRejection(
                position=i, sku=sku, reason=_validation_message(list(e.errors()))
            )
            continue
        if (p.image is None) == (p.image_base64 is None):
            reason = "give exactly one of image (an http(s) URL) or image_base64"
            rejected[i] = ProductRejection(position=i, sku=p.sku, reason=reason)
            continue
        valid[i] = p
    work = Path(tempfile.mkdtemp(prefix=".http-ingest-", dir=root))
    try:
        # The manifest rules (sku characters, attribute names, duplicates, URL schemes and
        # hosts) checked by the manifest reader: line i + 1 is product i.
        manifest = work / f"http-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        with manifest.open("w", encoding="utf-8") as f:
            for i in range(len(raw)):
                v = valid.get(i)
                row = {} if v is None else _row(v, v.image or f"img/{i}")
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        for err in read_manifest(manifest).errors:
            i = err.line - 1
            if i in valid:
                reason = LINE_RE.sub(lambda m: f"at position {int(m[1]) - 1}", err.message)
                rejected[i] = ProductRejection(position=i, sku=valid.pop(i).sku, reason=reason)
        (work / "img").mkdir()
        for i, data in _image_bytes(valid, max_image_bytes).items():
            if isinstance(data, str):
                rejected[i] = ProductRejection(position=i, sku=valid.pop(i).sku, reason=data)
            else:
                (work / "img" / str(i)).write_bytes(data)
        report = sorted(rejected.values(), key=lambda r: r.position)
        if report and (strict or not valid):
            first = report[0]
            raise ProductsRejectedError(
                f"no product stored: {len(report)} rejected; product {first.position}: "
                f"{first.reason}",
                report,
            )
        with manifest.open("w", encoding="utf-8") as f:
            for i, p in valid.items():
                f.write(json.dumps(_row(p, f"img/{i}"), ensure_ascii=False) + "\n")
        done = ingest_manifest(manifest, catalog, strict=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "catalog": catalog,
        "added": done.added,
        "updated": done.updated,
        "unchanged": done.unchanged,
        "total": done.total,
        "rejected": report,
    }


def _row(p: ProductIn, image: str) -> dict[str, Any]:
    """A manifest record (JSON lines) for product ``p`` with its photo at ``image``."""
    fields = {"sku": p.sku, "title": p.title, "category": p.category, "image": image}
    return {**fields, "attributes": p.attributes}


@router.post(
    "/v1/products",
    response_model=ProductsResponse,
    tags=["products"],
    responses=ERRORS,
    dependencies=[require("write")],
)
async def add_products(req: ProductsRequest, request: Request, engine: Engine) -> Any:
    """Add or update products of the served catalogue (needs a write key).

    All-or-nothing by default: one rejected product (reported with its position) and
    nothing is stored (422). With ``strict: false`` the valid ones are stored. Stored
    products are not searchable until the index is rebuilt and reloaded (``indexed``).
    """
    settings = request.app.state.shoplens.settings
    if len(req.products) > settings.max_products_per_request:
        raise PayloadTooLargeError(
            f"at most {settings.max_products_per_request} products per request"
        )
    catalog = engine.catalog
    try:
        out = await run_in_threadpool(
            ingest_products,
            catalog.name,
            catalog.root,
            req.products,
            strict=req.strict,
            max_image_bytes=settings.max_upload_bytes,
        )
    except ProductsRejectedError as e:
        body = {
            "error": {"code": e.code, "message": e.message},
            "rejected": [r.model_dump() for r in e.rejected],
        }
        return JSONResponse(body, status_code=e.http_status)
    stored = out["added"] + out["updated"]
    message = (
        f"{stored} product(s) stored; run 'shoplens index build --catalog {catalog.name}', "
        "then POST /v1/index/reload (admin key) to make them searchable"
        if stored
        else "nothing changed"
    )
    return ProductsResponse(**out, indexed=stored == 0, message=message)


@router.post(
    "/v1/models/{name}/aliases/{alias}",
    response_model=PromoteResponse,
    tags=["models"],
    responses=ERRORS,
    dependencies=[require("write")],
)
def promote_model(
    name: str, alias: Literal["champion", "challenger"], req: PromoteRequest
) -> PromoteResponse:
    """Point a registered model's alias at a version (``shoplens models promote``).

    The version it pointed at before is kept for ``shoplens models rollback``; a service
    serving ``NAME@ALIAS`` swaps to the new version within its poll interval.
    """
    from shoplens.training.tracking import MlflowTracker

    old, info = MlflowTracker().promote(name, req.version, alias)
    return PromoteResponse(
        name=info.name,
        alias=alias,
        previous_version=old,
        version=info.version,
        run_id=info.run_id,
    )


@router.post(
    "/v1/index/reload",
    response_model=ReloadResponse,
    tags=["ops"],
    responses=ERRORS,
    dependencies=[require("admin")],
)
async def reload_index(request: Request) -> ReloadResponse:
    """Load the served encoder's index again from disk (after ``shoplens index build``).

    Requests keep being served by the old index until the new one is loaded.
    """
    engine = await run_in_threadpool(request.app.state.shoplens.reload)
    return ReloadResponse(
        catalog=engine.catalog.name,
        encoder=engine.image_build.encoder,
        vectors=engine.image_build.index.ntotal,
        stale_index=engine.stale,
    )
