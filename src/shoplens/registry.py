"""Name -> factory registries: encoders (specs) and trained model families (configs).

Encoders are created from a *spec* string::

    effnet-lite0            a registered name
    effnet-lite0@96         a registered name at another input resolution (pixels)
    open_clip:ARCH:PATH     a prefixed adapter; the rest of the string is its argument
    hf-clip:PATH
    timm:NAME:PATH
    trained:DIR             a model shoplens trained and saved (``shoplens.models.io``)

Trained model families are created by name from ``models/configs/NAME.json``, see
:func:`create_model`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Literal,
    TypeVar,
    Union,
    cast,
    get_args,
    get_origin,
    get_type_hints,
)

from shoplens.errors import InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from shoplens.models.base import Encoder

EncoderFactory = Callable[..., "Encoder"]
C = TypeVar("C")

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
    import shoplens.export.backends  # (the ``onnx:DIR`` / ``onnx-int8:DIR`` adapters)
    import shoplens.models.encoders
    import shoplens.models.trained  # noqa: F401  (the ``trained:DIR`` adapter)


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


# --- trained model families: @register_model / create_model ---------------------------------
#
# A *family* is an ``nn.Module`` class with a ``config_class`` (a dataclass) and
# ``__init__(self, cfg)``. A *model name* is a JSON file in ``shoplens/models/configs/``
# holding ``{"family": ..., <config keys>}``; a family name alone means its defaults.

ModelClass = type
CONFIG_DIR = Path(__file__).parent / "models" / "configs"
_MODELS: dict[str, ModelClass] = {}


def register_model(name: str) -> Callable[[ModelClass], ModelClass]:
    """Register a model family class (with ``config_class`` and ``__init__(cfg)``)."""

    def deco(cls: ModelClass) -> ModelClass:
        if not dataclasses.is_dataclass(getattr(cls, "config_class", None)):
            raise TypeError(f"model family {name!r} needs a dataclass 'config_class'")
        _MODELS[name] = cls
        return cls

    return deco


def _ensure_models() -> None:
    # Importing the family modules runs their @register_model decorators.
    import shoplens.models.clip
    import shoplens.models.combiner
    import shoplens.models.diffusion
    import shoplens.models.heads
    import shoplens.models.ssl  # noqa: F401


def list_models() -> list[str]:
    """Model names with a JSON config (``create_model`` also accepts family names)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def list_model_families() -> list[str]:
    """Registered model families (``classifier``, ``clip``, ``combiner``, ...)."""
    _ensure_models()
    return sorted(_MODELS)


def _read_model_json(name: str) -> dict[str, Any]:
    path = CONFIG_DIR / f"{name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InvalidInputError(f"cannot read model config {path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("family"), str):
        raise InvalidInputError(f"model config {path} needs a 'family' key naming a model family")
    return data


def merge_overrides(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into a copy of ``base``; ``"a.b": v`` sets ``base["a"]["b"]``.

    A nested mapping replaces the section instead when it names another ``type``.
    """
    from shoplens.config import dotted_parent

    out = copy.deepcopy(base)
    for key, value in overrides.items():
        node, leaf = dotted_parent(out, str(key))
        old = node.get(leaf)
        if isinstance(old, dict) and _mergeable(old, value):
            node[leaf] = merge_overrides(old, value)
        else:
            node[leaf] = copy.deepcopy(value)
    return out


def _mergeable(old: dict[str, Any], new: Any) -> bool:
    """``new`` is a section that keeps ``old``'s ``type`` (or names none): merge, not replace."""
    return isinstance(new, Mapping) and new.get("type", old.get("type")) == old.get("type")


def resolve_model_config(name: str, **overrides: Any) -> tuple[str, dict[str, Any]]:
    """``(family, raw config dict)`` for a model name or family, with overrides applied."""
    from shoplens.config import check_name

    check_name(name, "model name")
    _ensure_models()
    if (CONFIG_DIR / f"{name}.json").is_file():
        data = _read_model_json(name)
    elif name in _MODELS:
        data = {"family": name}
    else:
        known = ", ".join(list_models() + list_model_families())
        raise NotFoundError(f"unknown model {name!r}; known: {known}")
    if "family" in overrides:
        raise InvalidInputError("'family' cannot be overridden; pick another model name")
    family = data.pop("family")
    return family, merge_overrides(data, overrides)


def build_model(name: str, family: str, config: Mapping[str, Any]) -> Any:
    """Build family ``family`` from a raw config; sets ``model_name`` / ``model_config``."""
    from shoplens.config import config_to_dict

    _ensure_models()
    if family not in _MODELS:
        raise NotFoundError(
            f"unknown model family {family!r}; known: {', '.join(list_model_families())}"
        )
    cls = _MODELS[family]
    cfg = parse_config(cls.config_class, dict(config))  # type: ignore[attr-defined]
    model = cls(cfg)
    model.model_name = name
    model.model_config = {"family": family, **config_to_dict(cfg)}
    return model


def create_model(name: str, **overrides: Any) -> Any:
    """A new model from its JSON config (or family defaults) and ``key=value`` overrides.

    ``create_model("clip-small", embed_dim=64)``; nested keys as a mapping or dotted:
    ``create_model("resnet-small", **{"image_tower.widths": [16, 32]})``. An unknown key
    raises ``InvalidInputError`` listing the valid ones.
    """
    family, config = resolve_model_config(name, **overrides)
    return build_model(name, family, config)


def parse_config(cls: type[C], data: Mapping[str, Any], prefix: str = "") -> C:
    """``config_from_dict`` that also resolves ``type``-tagged unions of dataclasses.

    A field typed ``A | B`` where each option has a ``type: Literal[...]`` field is parsed
    as the option its ``type`` names (default: the type of the field's default), so
    errors name the right keys and choices.
    """
    from shoplens.config import config_from_dict

    hints = get_type_hints(cls)
    rest = dict(data)
    tagged: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        options = _tagged_options(hints.get(f.name))
        if not options or not isinstance(rest.get(f.name), Mapping):
            continue
        value = rest.pop(f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        tag = value.get("type", getattr(default, "type", next(iter(options))))
        if tag not in options:
            raise InvalidInputError(
                f"{prefix}{f.name}.type: {tag!r} is not allowed; choose one of "
                f"{', '.join(repr(t) for t in options)}"
            )
        tagged[f.name] = parse_config(options[tag], value, prefix=f"{prefix}{f.name}.")
    cfg = config_from_dict(cls, rest, prefix=prefix)
    return dataclasses.replace(cfg, **tagged) if tagged else cfg  # type: ignore[type-var]


def _tagged_options(tp: Any) -> dict[str, type]:
    """For a union of dataclasses with a ``type`` Literal field: tag -> class; else {}."""
    if get_origin(tp) not in (Union, types.UnionType):
        return {}
    out: dict[str, type] = {}
    for option in get_args(tp):
        if not dataclasses.is_dataclass(option):
            continue
        tag_tp = get_type_hints(option).get("type")
        if get_origin(tag_tp) is Literal:
            out.update({str(tag): cast(type, option) for tag in get_args(tag_tp)})
    return out
