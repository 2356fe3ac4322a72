"""Service settings from the environment (``SHOPLENS_*``) or keyword arguments."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Settings of one service process."""

    model_config = SettingsConfigDict(env_prefix="SHOPLENS_", extra="ignore")

    catalog: str = "fashion-mnist"
    encoder: str | None = None
    # A registered model "NAME@ALIAS" (alias champion when left out): the service serves
    # its version (as encoder trained:DIR) and follows the alias, swapping models live.
    model: str | None = None
    registry_poll_s: Annotated[float, Field(gt=0)] = 5.0  # how often the alias is checked
    max_upload_bytes: int = 10 * 1024 * 1024
    max_k: int = 100
    load_in_background: bool = True
    read_requires_key: bool = False  # true: search/recommendation routes need a read key
    max_events_per_request: int = 10_000
    # Micro-batching of concurrent query encodes into one forward pass.
    batching: bool = True
    batch_max_size: Annotated[int, Field(ge=1)] = 32
    batch_max_wait_ms: Annotated[float, Field(ge=0)] = 2.0
    # Threads per torch call and per FAISS / BLAS call (None: the libraries' defaults, one
    # per core). Many requests run at once, so one thread each keeps the cores busy
    # without oversubscribing them (docs/BENCHMARKS.md, "Service latency").
    torch_threads: Annotated[int | None, Field(ge=1)] = 1
    faiss_threads: Annotated[int | None, Field(ge=1)] = 1
