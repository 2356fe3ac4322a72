"""Paths and global settings.

All state lives under ``SHOPLENS_HOME`` (default ``~/.shoplens``)::

    catalogs/NAME/catalog.sqlite      product metadata
    catalogs/NAME/images/ab/abcd.png  normalised images, content addressed
    catalogs/NAME/indexes/...         embeddings and ANN indexes
    cache/                            downloaded datasets
    runs/RUN_ID/                      training runs: resolved config, checkpoints, metrics
    mlflow.db, mlartifacts/           MLflow tracking (SQLite backend) and its artefacts

Typed configs are nested dataclasses filled by :func:`load_config` from defaults, then a
YAML file, then ``section.key=value`` overrides; :func:`save_config` writes the resolved
config next to the artefacts it produced.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tempfile
import types
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import (
    Any,
    BinaryIO,
    Literal,
    NoReturn,
    TypeVar,
    Union,
    cast,
    get_args,
    get_origin,
    get_type_hints,
)

import yaml

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


def index_uri() -> str | None:
    """Milvus address for the ``milvus`` index kind, ``$SHOPLENS_INDEX_URI``:
    ``http://host:19530`` for a Milvus server, a ``*.db`` path for one Milvus Lite folder,
    None (unset) for a Milvus Lite folder inside each index build."""
    return os.environ.get("SHOPLENS_INDEX_URI") or None


def index_token() -> str | None:
    """Token (``user:password`` or an API key) for the Milvus server, ``$SHOPLENS_INDEX_TOKEN``."""
    return os.environ.get("SHOPLENS_INDEX_TOKEN") or None


def database_url() -> str | None:
    """PostgreSQL URL for the catalogue and events stores, ``$SHOPLENS_DATABASE_URL``
    (``postgresql://user:password@host:5432/db``); None: SQLite files under SHOPLENS_HOME."""
    return os.environ.get("SHOPLENS_DATABASE_URL", "").strip() or None


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


# --- typed configs: defaults <- YAML file <- CLI overrides ---------------------------------

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build dataclass ``cls`` from its defaults, then a YAML file, then dotted overrides.

    Overrides look like ``train.lr=3e-4`` or ``data.held_out=[Sandal,Bag]``; each value is
    parsed with ``yaml.safe_load`` and checked against the field's type.
    """
    data: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(data, key, value)
    return config_from_dict(cls, data)


def config_from_dict(cls: type[T], data: Any, prefix: str = "", base: T | None = None) -> T:
    """Build dataclass ``cls`` from a (nested) mapping, checking keys and value types.

    Keys absent from ``data`` keep their value in ``base`` (default: the dataclass
    defaults, including a nested section's own default instance).
    """
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, Mapping):
        raise InvalidInputError(f"{where}: expected a mapping of keys, got {_describe(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            _unknown_key(f"{prefix}{key}", str(key), sorted(fields))
        current = getattr(base, key) if base is not None else _default(fields[key])
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            sub = f"{prefix}{key}."
            kwargs[key] = config_from_dict(type(current), value, sub, base=current)
        else:
            kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    if base is not None:
        return cast(T, dataclasses.replace(base, **kwargs))  # type: ignore[type-var]
    missing = [name for name, f in fields.items() if name not in kwargs and _default(f) is _NONE]
    if missing:
        raise InvalidInputError(f"{where}: missing required key(s) {', '.join(missing)}")
    return cls(**kwargs)


_NONE = object()


def _default(f: dataclasses.Field[Any]) -> Any:
    """A field's default value (a fresh one for default_factory), or ``_NONE``."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _NONE


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as plain YAML/JSON-safe types (tuples -> lists, paths -> str)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise InvalidInputError(f"expected a dataclass config instance, got {_describe(cfg)}")
    return cast(dict[str, Any], _plain(dataclasses.asdict(cfg)))


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically); returns the path."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)
    path = Path(path)
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))
    return path


@contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Open a temp file beside ``path`` for binary writing; fsync and rename it on success.

    Readers see the old file or the new one, never a half-written one; on error the old
    file is left untouched and the temp file removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InvalidInputError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise InvalidInputError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidInputError(f"config file {path}: expected a mapping, got {_describe(data)}")
    return data


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise InvalidInputError(
            f"invalid override {item!r}: use section.key=value, e.g. train.lr=3e-4"
        )
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise InvalidInputError(f"override {item!r}: value is not valid YAML: {e}") from None


def dotted_parent(data: dict[str, Any], key: str) -> tuple[dict[str, Any], str]:
    """For ``"a.b.c"``: the section ``data["a"]["b"]`` (created when missing) and ``"c"``.

    A section that already holds the rest of the path as one dotted key (a free-form
    mapping such as ``model_overrides: {"image_tower.widths": ...}``) gets that key
    replaced: ``model_overrides.image_tower.widths=[...]`` overrides the recipe's value
    instead of adding a second, nested one.
    """
    *parents, leaf = key.split(".")
    node = data
    for i, part in enumerate(parents):
        rest = ".".join([*parents[i:], leaf])
        if rest in node:
            return node, rest
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            section = ".".join(parents[: i + 1])
            raise InvalidInputError(f"override {key}: {section} is not a section")
        node = child
    return node, leaf


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node, leaf = dotted_parent(data, key)
    node[leaf] = value


def _unknown_key(dotted: str, key: str, valid: list[str]) -> NoReturn:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise InvalidInputError(
        f"unknown config key {dotted!r}{hint}; valid keys here: {', '.join(valid)}"
    )


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp`` (converting where lossless); raise on mismatch."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(value, args, key)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        allowed = ", ".join(repr(a) for a in args)
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InvalidInputError(f"{key}: {value!r} is not allowed{hint}; choose one of {allowed}")
    if dataclasses.is_dataclass(tp):
        return config_from_dict(cast(type, tp), value, prefix=f"{key}.")
    if origin in (list, tuple) or tp in (list, tuple):
        return _coerce_sequence(value, tp, key)
    if origin is dict or tp is dict:
        return _coerce_dict(value, args, key)
    if tp in (bool, int, float, str, Path):
        return _coerce_scalar(value, tp, key)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise _type_error(key, tp, value)
    return value


def _type_error(key: str, tp: Any, value: Any) -> InvalidInputError:
    return InvalidInputError(f"{key}: expected {_type_name(tp)}, got {_describe(value)}")


def _coerce_union(value: Any, args: tuple[Any, ...], key: str) -> Any:
    if value is None and type(None) in args:
        return None
    options = [a for a in args if a is not type(None)]
    for option in options:
        try:
            return _coerce(value, option, key)
        except InvalidInputError:
            continue
    if len(options) == 1:  # Optional[X]: report X's own, more precise error
        return _coerce(value, options[0], key)
    names = " or ".join(_type_name(a) for a in args)
    raise InvalidInputError(f"{key}: expected {names}, got {_describe(value)}")


def _coerce_sequence(value: Any, tp: Any, key: str) -> Any:
    origin, args = get_origin(tp) or tp, get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise InvalidInputError(f"{key}: expected a list like [a, b], got {_describe(value)}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise InvalidInputError(f"{key}: expected {len(args)} items, got {len(value)}")
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in pairs)
    item_tp = args[0] if args else Any
    items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _coerce_dict(value: Any, args: tuple[Any, ...], key: str) -> dict[Any, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{key}: expected a mapping like {{a: 1}}, got {_describe(value)}")
    key_tp, val_tp = args if args else (Any, Any)
    return {
        _coerce(k, key_tp, f"{key} key"): _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()
    }


def _coerce_scalar(value: Any, tp: type, key: str) -> Any:
    # YAML 1.1 reads "3e-4" as a string: accept numeric strings for numbers.
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif isinstance(value, bool):
        pass  # True is not a number or a name: a quoting mistake, reported below
    elif tp is int:
        number = _as_number(value)
        if isinstance(number, int) or (number is not None and number.is_integer()):
            return int(number)
    elif tp is float:
        number = _as_number(value)
        if number is not None:
            try:
                return float(number)
            except OverflowError:  # an integer beyond float range: reported below
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)):
            return str(value)
    elif tp is Path and isinstance(value, (str, Path)):
        return Path(value)
    raise _type_error(key, tp, value)


def _as_number(value: Any) -> int | float | None:
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            with suppress(ValueError):
                return float(value)
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
