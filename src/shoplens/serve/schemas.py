"""Request and response models of the HTTP API (v1)."""

from __future__ import annotations

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
