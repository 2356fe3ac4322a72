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
