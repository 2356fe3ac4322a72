"""Service settings from the environment (``SHOPLENS_*``) or keyword arguments."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

HttpParser = Literal["httptools", "h11"]  # see serve/protocol.py

MiB = 1024 * 1024


def _split_list(value: Any) -> Any:
    """``"a, b"`` (an environment variable) -> ``["a", "b"]``; JSON lists also work."""
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            return json.loads(value)
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class ServiceSettings(BaseSettings):
    """Settings of one service process."""

    model_config = SettingsConfigDict(env_prefix="SHOPLENS_", extra="ignore")

    catalog: str = "fashion-mnist"
    encoder: str | None = None
    # A registered model "NAME@ALIAS" (alias champion when left out): the service serves
    # its version (as encoder trained:DIR) and follows the alias, swapping models live.
    model: str | None = None
    registry_poll_s: Annotated[float, Field(gt=0)] = 5.0  # how often the alias is checked
    # How often the served indexes' `current` builds are checked: a build published by
    # `shoplens index build` (any process) is loaded then; 0: only POST /v1/index/reload.
    index_poll_s: Annotated[float, Field(ge=0)] = 5.0
    max_upload_bytes: Annotated[int, Field(ge=1)] = 10 * MiB  # one uploaded image
    max_k: int = 100
    load_in_background: bool = True
    read_requires_key: bool = False  # true: search/recommendation routes need a read key
    max_events_per_request: int = 10_000
    # Image generation (POST /v1/generate, /generate): a Generator spec (folder, trained:DIR
    # or NAME@ALIAS; None: fm-diffusion@champion when registered, else runs/fm-diffusion/model),
    # bounds stricter than the library's, and at most generate_concurrency generations at
    # once; a request waits generate_wait_s for a free slot, then gets 503 + Retry-After.
    generator: str | None = None
    generate_max_n: Annotated[int, Field(ge=1, le=64)] = 16
    generate_max_steps: Annotated[int, Field(ge=1, le=200)] = 50
    generate_concurrency: Annotated[int, Field(ge=1)] = 1
    generate_wait_s: Annotated[float, Field(ge=0)] = 2.0
    # Micro-batching of concurrent query encodes into one forward pass.
    batching: bool = True
    batch_max_size: Annotated[int, Field(ge=1)] = 32
    batch_max_wait_ms: Annotated[float, Field(ge=0)] = 2.0
    # batched steps (forward passes, index searches, ranker passes) that may run at once,
    # per batcher (None: one per core the process may use). With one torch thread per
    # call, one per core lets the text query's step (MiniLM + text index) use both cores
    # of a 2-core machine; a single worker left one idle (docs/BENCHMARKS.md, micro-batching)
    batch_workers: Annotated[int | None, Field(ge=1)] = None
    # ranker passes of micro-batched recommendation requests that may run at once (None:
    # batch_workers). One: a pass is mostly Python and numpy holding the GIL, so two side
    # by side stretch each other; measured at concurrency 8, the same throughput with
    # p99 115-127 ms against 168-173 ms with two (docs/BENCHMARKS.md, micro-batching).
    recs_batch_workers: Annotated[int | None, Field(ge=1)] = 1
    # Threads per torch call and per FAISS / BLAS call (None: the libraries' defaults, one
    # per core). Many requests run at once, so one thread each keeps the cores busy
    # without oversubscribing them (docs/BENCHMARKS.md, "Service latency").
    torch_threads: Annotated[int | None, Field(ge=1)] = 1
    faiss_threads: Annotated[int | None, Field(ge=1)] = 1
    # Exact (Flat) FAISS search scans the vectors once per query, or, from queries x dim
    # >= this, once per batch with one BLAS matrix product. FAISS's default (128,000: 1,000
    # queries at dim 128) never lets a micro-batch use the product; 1024 does from 8
    # queries at dim 128 and 3 at dim 384 (measured faster from 8 queries at both dims:
    # docs/BENCHMARKS.md, "Cost per query by batch size"; 2-7 queries take shoplens's
    # own one-product path whatever this is, see index.faiss_index). None: FAISS's
    # default.
    faiss_blas_threshold: Annotated[int | None, Field(ge=1)] = 1024
    # After loading the index or a recommender: collect once, then keep everything loaded
    # out of the cyclic garbage collector's scans (gc.freeze). The demo catalogue loaded
    # is ~640,000 tracked objects; a full collection over them stops every request for
    # ~0.4 s (a 400 ms p99 under load). What requests allocate is still collected.
    gc_freeze: bool = True

    # ---- limits (shoplens.serve.limits); a rate of 0 turns that limit off ----------------
    # Token bucket per client address for requests without a valid API key: `per_s`
    # tokens a second, at most `burst` saved up. A results page with its 24 product
    # images takes about 30.
    rate_limit_per_s: Annotated[float, Field(ge=0)] = 50.0
    rate_limit_burst: Annotated[int, Field(ge=1)] = 200
    # Token bucket per API key (any live key; the routes still check its scope).
    rate_limit_key_per_s: Annotated[float, Field(ge=0)] = 250.0
    rate_limit_key_burst: Annotated[int, Field(ge=1)] = 1000
    # Tokens taken by an image search upload, an ingest, an index reload or a generation.
    rate_limit_expensive_cost: Annotated[float, Field(ge=1)] = 10.0
    # Most clients tracked at once (idle ones are dropped first); bounds the memory.
    rate_limit_max_clients: Annotated[int, Field(ge=1)] = 100_000
    # Proxies (IPs or networks, "a,b" or JSON list) whose X-Forwarded-For names the
    # client; empty: the connecting address is the client, forwarded headers are ignored.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Request sizes: a JSON (or other non-multipart) body, the events and ingest routes'
    # bodies, and a multipart body (max_upload_bytes plus 64 KiB for the form around it).
    max_json_bytes: Annotated[int, Field(ge=1)] = 1 * MiB
    max_events_bytes: Annotated[int, Field(ge=1)] = 16 * MiB
    max_ingest_bytes: Annotated[int, Field(ge=1)] = 64 * MiB  # base64 images included
    max_products_per_request: Annotated[int, Field(ge=1)] = 1000
    max_query_bytes: Annotated[int, Field(ge=1)] = 8 * 1024  # longer: 414
    max_header_bytes: Annotated[int, Field(ge=1)] = 16 * 1024  # all headers together: 431
    # uvicorn's HTTP/1.1 parser: httptools (C) or h11 (pure Python); both stop a request
    # whose line + headers pass max_header_bytes + max_query_bytes (431, or h11's 400).
    http: HttpParser = "httptools"
    # Browser origins allowed to call the API from their pages ("a,b" or JSON list);
    # empty (default): no CORS headers, so other sites' scripts cannot read responses.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_allow_credentials: bool = False  # never together with the origin "*"

    @field_validator("trusted_proxies", "cors_origins", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @model_validator(mode="after")
    def _check_cors(self) -> ServiceSettings:
        if self.cors_allow_credentials and "*" in self.cors_origins:
            raise ValueError("cors_origins '*' cannot be used with cors_allow_credentials")
        return self
