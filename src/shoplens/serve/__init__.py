"""FastAPI service: ``create_app(settings)``."""

from shoplens.serve.app import create_app
from shoplens.serve.settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]
