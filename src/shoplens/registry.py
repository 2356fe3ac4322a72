"""Name -> factory registries (encoders now; trained model families later).

Encoders are created from a *spec* string::

    effnet-lite0            a registered name
    effnet-lite0@96         a registered name at another input resolution (pixels)
    open_clip:ARCH:PATH     a prefixed adapter; the rest of the string is its argument
    hf-clip:PATH
    timm:NAME:PATH
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from shoplens.errors import InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from shoplens.models.base import Encoder

EncoderFactory = Callable[..., "Encoder"]

_ENCODERS: dict[str, EncoderFactory] = {}
_ADAPTERS: dict[str, EncoderFactory] = {}
_CACHE: dict[str, Encoder] = {}
_LOCK = threading.Lock()


def register_encoder(name: str) -> Callable[[EncoderFactory], EncoderFactory]:
    """Register ``factory(image_size: int | None = None) -> Encoder`` under ``name``."""

    def deco(fn: EncoderFactory) -> EncoderFactory:
        _ENCODERS[name] = fn
        return fn

    return deco


def register_adapter(prefix: str) -> Callable[[EncoderFactory], EncoderFactory]:
    """Register ``factory(arg: str) -> Encoder`` for specs ``prefix:arg``."""

    def deco(fn: EncoderFactory) -> EncoderFactory:
        _ADAPTERS[prefix] = fn
        return fn

    return deco


def _ensure_builtin() -> None:
    # Importing the modules runs their @register_* decorators.
    import shoplens.adapters
    import shoplens.models.encoders  # noqa: F401


def list_encoders() -> list[str]:
    """Registered encoder names and adapter prefixes (``prefix:...``)."""
    _ensure_builtin()
    return sorted(_ENCODERS) + sorted(f"{p}:..." for p in _ADAPTERS)


def create_encoder(spec: str) -> Encoder:
    """Build a new encoder from its spec (see module docstring)."""
    _ensure_builtin()
    spec = spec.strip()
    if not spec:
        raise InvalidInputError("empty encoder spec")
    prefix, sep, rest = spec.partition(":")
    if sep:
        if prefix not in _ADAPTERS:
            raise NotFoundError(
                f"unknown encoder adapter {prefix!r}; known: {', '.join(sorted(_ADAPTERS))}"
            )
        if not rest:
            raise InvalidInputError(f"encoder spec {spec!r} needs an argument after ':'")
        return _ADAPTERS[prefix](rest)
    name, at, size = spec.partition("@")
    if name not in _ENCODERS:
        raise NotFoundError(f"unknown encoder {name!r}; known: {', '.join(list_encoders())}")
    if at:
        if not size.isdigit() or not 16 <= int(size) <= 1024:
            raise InvalidInputError(f"encoder resolution in {spec!r} must be 16..1024 pixels")
        return _ENCODERS[name](image_size=int(size))
    return _ENCODERS[name]()


def get_encoder(spec: str) -> Encoder:
    """Shared, cached encoder instance for ``spec`` (thread-safe)."""
    with _LOCK:
        enc = _CACHE.get(spec)
        if enc is None:
            enc = create_encoder(spec)
            _CACHE[spec] = enc
        return enc
