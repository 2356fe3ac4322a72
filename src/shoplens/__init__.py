"""shoplens: image-based search and personalization for retail catalogues.

Quick start (see :mod:`shoplens.api`)::

    import shoplens
    shoplens.ingest("catalog.csv", name="shop")
    shoplens.build_index("shop")
    shoplens.open_search("shop").search(text="ankle boot")
"""

from __future__ import annotations

from typing import Any

from shoplens.errors import ShoplensError

__version__ = "0.1.0"
__all__ = ["ShoplensError", "__version__", "build_index", "ingest", "open_search"]


def __getattr__(name: str) -> Any:
    # The API pulls in numpy, PIL and faiss: import it on first use, not with the package.
    if name in ("ingest", "build_index", "open_search"):
        from shoplens import api

        return getattr(api, name)
    raise AttributeError(f"module 'shoplens' has no attribute {name!r}")
