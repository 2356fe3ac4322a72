"""Paths and global settings.

All state lives under ``SHOPLENS_HOME`` (default ``~/.shoplens``)::

    catalogs/NAME/catalog.sqlite      product metadata
    catalogs/NAME/images/ab/abcd.png  normalised images, content addressed
    catalogs/NAME/indexes/...         embeddings and ANN indexes
    cache/                            downloaded datasets
    runs/RUN_ID/                      training runs: resolved config, checkpoints, metrics
    mlflow.db, mlartifacts/           MLflow tracking (SQLite backend) and its artefacts
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from shoplens.errors import InvalidInputError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def shoplens_home() -> Path:
    """Root folder for all shoplens state (``$SHOPLENS_HOME`` or ``~/.shoplens``)."""
    return Path(os.environ.get("SHOPLENS_HOME", Path.home() / ".shoplens")).expanduser()


def cache_dir() -> Path:
    """Folder for downloaded data (datasets fetched from their official URLs)."""
    return shoplens_home() / "cache"


def runs_dir() -> Path:
    """Folder of training runs (one sub-folder per run id)."""
    return shoplens_home() / "runs"


def tracking_uri() -> str:
    """MLflow tracking URI: ``$SHOPLENS_TRACKING_URI`` or SQLite under ``SHOPLENS_HOME``."""
    uri = os.environ.get("SHOPLENS_TRACKING_URI")
    if uri:
        return uri
    home = shoplens_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(home / 'mlflow.db').resolve()}"


def artifact_root() -> str:
    """Where MLflow stores run artefacts when the backend is the default SQLite file."""
    return (shoplens_home() / "mlartifacts").resolve().as_uri()


def check_name(name: str, what: str = "catalogue name") -> str:
    """Validate a user-chosen name used as a folder name; return it unchanged."""
    if not _NAME_RE.match(name) or ".." in name:
        raise InvalidInputError(
            f"invalid {what} {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name
