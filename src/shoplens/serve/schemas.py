"""Request and response models of the HTTP API (v1)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SearchRequest(BaseModel):
    """JSON search: exactly one of ``text`` or ``sku`` (images go as multipart ``image``)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, max_length=1000, examples=["ankle boot"])
    sku: str | None = Field(None, max_length=128, examples=["fm-test-00000"])
    k: int = Field(10, ge=1, le=1000)
    categories: list[str] = Field(default_factory=list, max_length=50)
    attributes: dict[str, str] = Field(default_factory=dict)
    dedupe: bool = True
    text_weight: float = Field(
        1.0,
        ge=0,
        le=10,
        description="Weight of the text signal when an image and a text are given together.",
    )
    image_weight: float = Field(1.0, ge=0, le=10)
    compose: bool | None = Field(
        None,
        description="Image + text: use the model's learned combiner ('like this, but ...'). "
        "Default: when the model has one; false fuses the image and text rankings instead.",
    )


class HitOut(BaseModel):
    sku: str
    score: float
    title: str
    category: str
    attributes: dict[str, str]
    image_url: str


class SearchResponse(BaseModel):
    query: dict[str, object]
    count: int
    results: list[HitOut]
    stale_index: bool = False


class ProductOut(BaseModel):
    sku: str
    title: str
    category: str
    attributes: dict[str, str]
    width: int
    height: int
    image_url: str


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class EventsRequest(BaseModel):
    """A batch of customer events; each is validated on its own (see the response)."""

    model_config = ConfigDict(extra="forbid")

    events: list[dict[str, Any]] = Field(
        ...,
        min_length=1,
        description="Events with event_id, customer_id, sku, type (view, click, add_to_cart, "
        "purchase) and timestamp (Unix seconds or ISO 8601).",
        examples=[
            [
                {
                    "event_id": "e-1",
                    "customer_id": "c-42",
                    "sku": "fm-test-00000",
                    "type": "view",
                    "timestamp": "2026-01-01T12:00:00Z",
                }
            ]
        ],
    )
    strict: bool = Field(False, description="Store nothing when any event is rejected.")


class RejectionOut(BaseModel):
    position: int
    event_id: str | None = None
    reason: str


class EventsResponse(BaseModel):
    accepted: int
    duplicates: int
    rejected_count: int
    rejected: list[RejectionOut]
    simulated: bool = False


class RecommendedOut(HitOut):
    sources: list[str] = Field(default_factory=list, description="Retrievers that proposed it.")
    width: int = 0
    height: int = 0


class RecommendationsResponse(BaseModel):
    customer_id: str
    known_customer: bool
    history_events: int
    simulated: bool = Field(description="The customer's events come from the simulator.")
    personalized: bool
    fallback: str | None = Field(None, description="'popular' when not personalized.")
    model: dict[str, Any]
    count: int
    results: list[RecommendedOut]


class LookGroup(BaseModel):
    category: str
    results: list[RecommendedOut]


class CompleteTheLookResponse(BaseModel):
    sku: str
    category: str
    groups: list[LookGroup]


class ProductIn(BaseModel):
    """One product to add: like a manifest row, with its photo as a URL or base64 bytes."""

    model_config = ConfigDict(extra="forbid")

    sku: str = Field(..., min_length=1, max_length=128)
    title: str = Field(..., min_length=1, max_length=10_000)
    category: str = Field(..., min_length=1, max_length=10_000)
    attributes: dict[str, str | int | float | bool] = Field(default_factory=dict)
    image: str | None = Field(
        None, max_length=10_000, description="http(s) URL of the photo (public hosts only)."
    )
    image_base64: str | None = Field(None, description="The photo's file, base64-encoded.")


class ProductsRequest(BaseModel):
    """Products to add to (or update in) the served catalogue (needs a write key)."""

    model_config = ConfigDict(extra="forbid")

    products: list[dict[str, Any]] = Field(
        ...,
        min_length=1,
        description="Products with sku, title, category, optional attributes, and exactly "
        "one of image (an http(s) URL) or image_base64.",
        examples=[
            [
                {
                    "sku": "shoe-1",
                    "title": "Red running shoe",
                    "category": "Shoes",
                    "attributes": {"color": "red"},
                    "image": "https://example.com/shoe-1.jpg",
                }
            ]
        ],
    )
    strict: bool = Field(
        True, description="Store nothing when any product is rejected (false: store the rest)."
    )


class ProductRejection(BaseModel):
    position: int = Field(description="0-based position in 'products'.")
    sku: str | None = None
    reason: str


class ProductsResponse(BaseModel):
    catalog: str
    added: int
    updated: int
    unchanged: int
    total: int = Field(description="Products in the catalogue now.")
    rejected: list[ProductRejection]
    indexed: bool = Field(
        description="False: new products are stored but not searchable until the index is "
        "rebuilt ('shoplens index build') and reloaded (POST /v1/index/reload)."
    )
    message: str


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(..., ge=1, description="Registered version to point the alias at.")


class PromoteResponse(BaseModel):
    name: str
    alias: str
    previous_version: str | None
    version: str
    run_id: str | None


class ReloadResponse(BaseModel):
    catalog: str
    encoder: str
    vectors: int
    stale_index: bool
