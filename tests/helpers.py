"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import io
from typing import Any

from .conftest import make_product_image


def png_bytes(category: str = "Green triangle", seed: int = 201) -> bytes:
    """A generated product photo of ``category`` as PNG bytes."""
    buf = io.BytesIO()
    make_product_image(category, seed).save(buf, format="PNG")
    return buf.getvalue()


def assert_error(resp: Any, status: int, code: str | None = None) -> None:
    """``resp`` (an httpx.Response) is a JSON error ``{"error": {"code", "message"}}``."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    if code:
        assert body["error"]["code"] == code
