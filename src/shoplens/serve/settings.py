"""Service settings from the environment (``SHOPLENS_*``) or keyword arguments."""

from __future__ import annotations

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
    registry_poll_s: float = Field(5.0, gt=0)  # how often the alias is checked
    max_upload_bytes: int = 10 * 1024 * 1024
    max_k: int = 100
    load_in_background: bool = True
    read_requires_key: bool = False  # true: search/recommendation routes need a read key
    max_events_per_request: int = 10_000
    # Micro-batching of concurrent query encodes into one forward pass.
    batching: bool = True
    batch_max_size: int = Field(32, ge=1)
    batch_max_wait_ms: float = Field(2.0, ge=0)
    # Threads per torch / FAISS call (None: leave the library defaults). Many requests run
    # at once, so one thread each avoids oversubscribing the cores.
    torch_threads: int | None = Field(None, ge=1)
    faiss_threads: int | None = Field(None, ge=1)
