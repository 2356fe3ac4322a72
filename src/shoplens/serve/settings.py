"""Service settings from the environment (``SHOPLENS_*``) or keyword arguments."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Settings of one service process."""

    model_config = SettingsConfigDict(env_prefix="SHOPLENS_", extra="ignore")

    catalog: str = "fashion-mnist"
    encoder: str | None = None
    max_upload_bytes: int = 10 * 1024 * 1024
    max_k: int = 100
    load_in_background: bool = True
    read_requires_key: bool = False  # true: search/recommendation routes need a read key
    max_events_per_request: int = 10_000
