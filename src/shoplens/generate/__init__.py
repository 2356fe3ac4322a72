"""Image generation with shoplens's own diffusion models (inference only) and its checks.

:mod:`shoplens.generate.pipeline` samples images (:class:`~shoplens.generate.pipeline.Generator`);
every PNG it writes carries provenance tEXt chunks, among them ``shoplens:generated=true``
(:data:`PROVENANCE_KEY`), by which ingest refuses generated images as products. This
module itself imports neither torch nor diffusers.
"""

from __future__ import annotations

from typing import Any

PROVENANCE_KEY = "shoplens:generated"  # PNG tEXt keyword on every generated image


def is_generated(image: Any) -> bool:
    """True when a decoded PIL image carries shoplens's generated-image provenance chunk."""
    info = getattr(image, "info", None) or {}
    return str(info.get(PROVENANCE_KEY, "")).strip().lower() == "true"


__all__ = ["PROVENANCE_KEY", "is_generated"]
